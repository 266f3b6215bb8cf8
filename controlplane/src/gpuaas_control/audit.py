# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit ledger: every privileged mutation, append-only and hash-chained.

Each entry's ``hash`` is ``sha256(prev_hash + canonical JSON of the entry)``, where the
canonical JSON has sorted keys, no spaces and ASCII only, and the entry's time is ISO 8601
UTC with microseconds. ``audit_head`` holds the last link, so removing the newest entries
is caught as well as editing or removing one in the middle. Appends are serialized by the
head row's lock (``SELECT ... FOR UPDATE``; SQLite's write lock does the same).

Someone who can write to the database can still rewind it, truncate the chain, or re-hash
it whole and move the head: the chain agrees with itself. The anchor is kept outside: after
every commit that appended, the new head's seq and hash go to a checkpoint file (only ever
forward, and only when the chain still holds the last anchored entry) and to a log line on
``gpuaas_control.audit``; ``verify`` requires the chain to hold the checkpoint's entry with
its hash.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import re

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from gpuaas_control.models import AuditEntry, AuditHead, utcnow

GENESIS = '0' * 64
log = logging.getLogger('gpuaas_control.audit')


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who did it: a token's name and role (``system`` for the worker and migrations)."""

    name: str
    role: str
    tenant: str | None = None


SYSTEM = Actor('system', 'system')


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=True)


_HASHED = ('seq', 'at', 'actor', 'role', 'action', 'target_type', 'target_id', 'before', 'after')


def entry_document(entry) -> dict:
    """What an entry's hash covers; ``entry`` is an AuditEntry or a dict of its columns."""
    get = entry.get if isinstance(entry, dict) else functools.partial(getattr, entry)
    document = {name: get(name) for name in _HASHED}
    document['at'] = document['at'].isoformat(timespec='microseconds')
    return document


def entry_hash(prev_hash: str, entry) -> str:
    return hashlib.sha256((prev_hash + canonical(entry_document(entry))).encode('ascii')).hexdigest()


def _plain(value):
    """JSON round trip: what the database will give back is what gets hashed."""
    return None if value is None else json.loads(canonical(value))


_HEAD = AuditHead.__table__
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_SET_HEAD = update(_HEAD).where(_HEAD.c.id == 1)
_INSERT = insert(AuditEntry.__table__)
# PostgreSQL: lock the head, insert the entry hashed by the server (its sha256 of the same
# text), move the head, in one statement.
_APPEND_PG = text("""
WITH head AS (SELECT seq + 1 AS seq, hash AS prev_hash FROM audit_head WHERE id = 1 FOR UPDATE),
entry AS (
  INSERT INTO audit_log (seq, at, actor, role, action, target_type, target_id, before, after,
                         prev_hash, hash)
  SELECT head.seq, :at, :actor, :role, :action, :target_type, :target_id,
         CAST(:before AS json), CAST(:after AS json), head.prev_hash,
         encode(sha256(convert_to(head.prev_hash || :text_before_seq || head.seq || :text_after_seq,
                                  'UTF8')), 'hex')
  FROM head RETURNING seq, hash, prev_hash)
UPDATE audit_head SET seq = entry.seq, hash = entry.hash FROM entry WHERE audit_head.id = 1
RETURNING entry.seq, entry.hash, entry.prev_hash
""")
# session.info key: what this transaction appended, for the checkpoint written after commit.
PENDING = 'gpuaas_audit_pending'


def _around_seq(document: dict) -> tuple[str, str]:
    """``canonical(document)`` in two parts, before and after the value of its ``seq``: the
    entry's number is known only once the head is locked, in the database."""
    items = sorted(dict(document, seq=None).items())
    position = [key for key, _value in items].index('seq')
    pairs = ['%s:%s' % (canonical(key), canonical(value)) for key, value in items]
    return ('{' + ''.join(pair + ',' for pair in pairs[:position]) + '"seq":',
            ''.join(',' + pair for pair in pairs[position + 1:]) + '}')


def append(session, actor: Actor, action: str, target_type: str, target_id: str,
           before=None, after=None) -> None:
    """Append an entry in the caller's transaction. The head's lock serializes appends and is
    held to the commit (callers append last), so the time it is held is kept short: on
    PostgreSQL one statement (the server hashes), elsewhere three prebuilt Core statements
    (SQLite's write lock already serializes the whole transaction). The new head is noted in
    ``session.info`` for the checkpoint (``Database`` writes it once the commit is done);
    no savepoints: one rolled back would leave a head noted there that is not in the chain."""
    connection = session.connection()
    row = {'at': utcnow(), 'actor': actor.name, 'role': actor.role, 'action': action,
           'target_type': target_type, 'target_id': str(target_id),
           'before': _plain(before), 'after': _plain(after)}
    text_before_seq, text_after_seq = _around_seq(entry_document(dict(row, seq=0)))
    if connection.dialect.name == 'postgresql':
        # .one(): without its head row the statement would insert nothing.
        seq, hash_, prev_hash = connection.execute(_APPEND_PG, dict(
            row, before=None if before is None else canonical(row['before']),
            after=None if after is None else canonical(row['after']),
            text_before_seq=text_before_seq, text_after_seq=text_after_seq)).one()
    else:
        seq, prev_hash = connection.execute(_LOCK_HEAD).one()
        seq += 1
        hash_ = hashlib.sha256((prev_hash + text_before_seq + str(seq) + text_after_seq)
                               .encode('ascii')).hexdigest()
        connection.execute(_INSERT, dict(row, seq=seq, prev_hash=prev_hash, hash=hash_))
        connection.execute(_SET_HEAD, {'seq': seq, 'hash': hash_})
    pending = session.info.get(PENDING)
    if pending is None:
        session.info[PENDING] = [seq - 1, prev_hash, seq, hash_]
    else:
        pending[2:] = seq, hash_


# -- the anchor: the head, kept where the database's users cannot rewrite it -------------------

_HASH = re.compile(r'[0-9a-f]{64}')
_MAX_SEQ = 2 ** 63 - 1
_RECORD = 192   # bytes: {"at":...,"hash":...,"seq":...} padded with spaces, and a newline
_RENAME_EXCHANGE = 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), 'renameat2', None)   # glibc 2.28


def _exchange(old: str, new: str) -> bool:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE); False where the C library,
    the kernel or the file system cannot, or ``new`` is missing: then rename."""
    if _renameat2 is None:
        return False
    if _renameat2(-100, os.fsencode(old), -100, os.fsencode(new), _RENAME_EXCHANGE) == 0:  # AT_FDCWD
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), new)


class CheckpointError(Exception):
    """The checkpoint file is there but cannot be read, or is not a checkpoint."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str


class Anchor:
    """The checkpoint file at ``path``: seq and hash of the newest anchored head.

    Its writers (the API's processes, the workers, the CLI) serialize on an flock of
    ``path + '.lock'``; it is replaced whole (``path + '.tmp'`` swapped in), mode 0600, its
    directory created 0700. Not synced to disk, as SQLite's commits are not (WAL with
    ``synchronous=NORMAL``): a power loss may take back both, or leave the checkpoint older;
    a synced checkpoint would outlive the commits it anchors and read as a rewind."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> Checkpoint | None:
        """The checkpoint, None when there is no file; CheckpointError when it is unusable.
        Under a shared lock once writers have made their lock file (opened, never created,
        here: a reader of another user must not own it): the file a writer swaps out is
        the one it writes the next record into."""
        try:
            fd = os.open(self.path + '.lock', os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self._read()
        except OSError as exc:
            raise CheckpointError('the audit checkpoint %s cannot be read: %s'
                                  % (self.path, exc.strerror)) from None
        with os.fdopen(fd, 'rb'):
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._read()

    def _read(self) -> Checkpoint | None:
        try:
            with open(self.path, 'rb') as stream:
                data = stream.read(_RECORD * 2)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError('the audit checkpoint %s cannot be read: %s'
                                  % (self.path, exc.strerror)) from None
        try:
            document = json.loads(data)
            seq, hash_ = document['seq'], document['hash']
        except (ValueError, TypeError, KeyError):
            seq = hash_ = None
        if type(seq) is not int or not 1 <= seq <= _MAX_SEQ or not isinstance(hash_, str) \
                or not _HASH.fullmatch(hash_):
            raise CheckpointError('the audit checkpoint %s is not a checkpoint (JSON with an entry '
                                  'number "seq" and its sha256 "hash"): %r' % (self.path, data[:200]))
        return Checkpoint(seq, hash_)

    def _locked(self):
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path + '.lock', flags, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or '.', mode=0o700, exist_ok=True)
            fd = os.open(self.path + '.lock', flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        return os.fdopen(fd, 'rb')   # closing it releases the lock

    def _replace(self, seq: int, hash_: str):
        """Write the record to ``path.tmp`` and swap it in. A rename over the old file would
        make ext4 write the new one out first (its replace-via-rename heuristic), a
        millisecond per commit; exchanging the two names does not, and the next write
        reuses the old file's blocks in place (a record of fixed length: no truncation)."""
        record = canonical({'seq': seq, 'hash': hash_, 'at': utcnow().isoformat(timespec='seconds')})
        record = record.ljust(_RECORD - 1).encode('ascii') + b'\n'
        tmp = self.path + '.tmp'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.pwrite(fd, record, 0)
            if os.fstat(fd).st_size != len(record):
                os.ftruncate(fd, len(record))
        finally:
            os.close(fd)
        if not _exchange(tmp, self.path):
            os.replace(tmp, self.path)

    def advance(self, pending, lookup) -> bool:
        """After a commit that appended (``pending``: seq and hash before its first entry, seq
        and hash of its last): move the checkpoint to the new head, and log it. Only forward,
        and only when the chain still holds the anchored entry: the entry before this
        commit's first, or else ``lookup(seq)`` (its hash in the database, None when there is
        none). A rewound or re-hashed chain is not anchored, even once it grows past the
        checkpoint, and a missing checkpoint is created only with the ledger's first entry (a
        deleted one stays missing, until ``reset``). A failure is logged, never raised: the
        commit is done, the request with it, and the next commit tries again."""
        prev_seq, prev_hash, seq, hash_ = pending
        try:
            with self._locked():
                current = self._read()
                # (Two first commits racing can meet this too: the second's writer coming
                # first finds no checkpoint yet. The first's creates it, and the rest follow.)
                if current is None and prev_seq > 0:
                    log.critical('audit checkpoint %s missing, and the ledger held %d entries '
                                 'before entry %d: not created (deleted, or the first commit since '
                                 'an upgrade); check with gpuaas audit verify, then anchor with '
                                 'gpuaas audit verify --reanchor', self.path, prev_seq, seq)
                    return False
                if current is not None and current.seq >= seq:
                    return False   # a later commit's writer came first
                if current is not None and current.hash != (
                        prev_hash if current.seq == prev_seq else lookup(current.seq)):
                    log.critical('audit checkpoint %s NOT moved to entry %d: the ledger no longer '
                                 'holds entry %d with hash %s (rewound, truncated or re-hashed); '
                                 'run gpuaas audit verify', self.path, seq, current.seq, current.hash)
                    return False
                self._replace(seq, hash_)
        except (OSError, CheckpointError, SQLAlchemyError) as exc:
            log.error('audit checkpoint %s NOT moved to entry %d: %s', self.path, seq,
                      getattr(exc, 'strerror', None) or exc)
            return False
        log.info('audit checkpoint: entry %d %s', seq, hash_)
        return True

    def reset(self, seq: int, hash_: str) -> Checkpoint | None:
        """Anchor this head whatever the file held (backwards too); the checkpoint replaced."""
        with self._locked():
            try:
                previous = self._read()
            except CheckpointError:
                previous = None
            self._replace(seq, hash_)
        log.warning('audit checkpoint %s reset to entry %d %s (it held %s)', self.path, seq, hash_,
                    '%d %s' % (previous.seq, previous.hash) if previous else 'nothing usable')
        return previous


def hash_at(connection, seq: int) -> str | None:
    return connection.execute(select(AuditEntry.hash).where(AuditEntry.seq == seq)).scalar()


@dataclasses.dataclass
class Verification:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list
    checkpoint_seq: int | None = None
    checkpoint_hash: str | None = None

    def as_dict(self):
        return dataclasses.asdict(self)


def verify(session, anchor: Anchor | None = None, limit_problems: int = 50) -> Verification:
    """Walk the chain from the start; report every broken link (up to ``limit_problems``).
    With ``anchor``: the chain must hold the checkpoint's entry with its hash, and go on to
    at least it; no checkpoint while the ledger has entries is a problem too."""
    problems = []
    checkpoint = None
    if anchor is not None:
        try:
            checkpoint = anchor.read()
        except CheckpointError as exc:
            problems.append(str(exc))
            anchor = None   # nothing to compare with
    anchored_seq = checkpoint.seq if checkpoint else None
    anchored_hash = None
    prev_hash, prev_seq, count = GENESIS, 0, 0
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
    for entry in rows:
        count += 1
        if entry.seq != prev_seq + 1:
            problems.append('entries %d to %d are missing (deleted?)' % (prev_seq + 1, entry.seq - 1))
        if entry.prev_hash != prev_hash:
            problems.append('entry %d: prev_hash does not match the entry before it '
                            '(an entry before it was changed or removed)' % entry.seq)
        if entry_hash(entry.prev_hash, entry) != entry.hash:
            problems.append('entry %d: its content does not match its hash (edited after '
                            'it was written)' % entry.seq)
        if entry.seq == anchored_seq:
            anchored_hash = entry.hash
        prev_hash, prev_seq = entry.hash, entry.seq
        if len(problems) >= limit_problems:
            break
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None:
        problems.append('the audit head row is missing')
        head_seq, head_hash = 0, GENESIS
    else:
        head_seq, head_hash = head.seq, head.hash
        if len(problems) < limit_problems and (head.seq != prev_seq or head.hash != prev_hash):
            problems.append('the chain ends at entry %d but the head records entry %d: the newest '
                            'entries were removed or the head was changed' % (prev_seq, head.seq))
    if len(problems) < limit_problems:
        problems.extend(_against(anchor, checkpoint, anchored_hash, min(prev_seq, head_seq)))
    return Verification(ok=not problems, entries=count, head_seq=head_seq, head_hash=head_hash,
                        problems=problems, checkpoint_seq=anchored_seq,
                        checkpoint_hash=checkpoint.hash if checkpoint else None)


def _against(anchor, checkpoint, anchored_hash, end):
    """What the checkpoint says about a chain that ends at entry ``end`` and holds
    ``anchored_hash`` as the checkpoint's entry."""
    if anchor is None:
        return []
    if checkpoint is None:
        if end == 0:
            return []
        return ['the audit checkpoint %s is missing, and the ledger has entries up to %d: it was '
                'deleted, or never written (the log of gpuaas_control.audit says why)'
                % (anchor.path, end)]
    if end < checkpoint.seq:
        return ['the ledger ends at entry %d, but its checkpoint %s anchors entry %d: the newest '
                'entries were removed (truncated) or the database was rewound to an older copy'
                % (end, anchor.path, checkpoint.seq)]
    if anchored_hash is None:
        return ['entry %d, which the checkpoint %s anchors, is missing' % (checkpoint.seq, anchor.path)]
    if anchored_hash != checkpoint.hash:
        return ['entry %d has hash %s, but the checkpoint %s anchors %s: the chain was re-hashed '
                '(rewritten from an earlier entry on) or rewound and grown again'
                % (checkpoint.seq, anchored_hash, anchor.path, checkpoint.hash)]
    return []
