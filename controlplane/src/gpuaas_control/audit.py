# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit ledger: every privileged mutation, append-only and hash-chained.

Each entry's ``hash`` is ``sha256(prev_hash + canonical JSON of the entry)``, where the
canonical JSON has sorted keys, no spaces and ASCII only, and the entry's time is ISO 8601
UTC with microseconds. ``audit_head`` holds the last link, so removing the newest entries
is caught as well as editing or removing one in the middle. Appends are serialized by the
head row's lock (``SELECT ... FOR UPDATE``; SQLite's write lock does the same).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from sqlalchemy import insert, select, text, update

from gpuaas_control.models import AuditEntry, AuditHead, utcnow

GENESIS = '0' * 64


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
  FROM head RETURNING seq, hash)
UPDATE audit_head SET seq = entry.seq, hash = entry.hash FROM entry WHERE audit_head.id = 1
""")


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
    (SQLite's write lock already serializes the whole transaction)."""
    connection = session.connection()
    row = {'at': utcnow(), 'actor': actor.name, 'role': actor.role, 'action': action,
           'target_type': target_type, 'target_id': str(target_id),
           'before': _plain(before), 'after': _plain(after)}
    text_before_seq, text_after_seq = _around_seq(entry_document(dict(row, seq=0)))
    if connection.dialect.name == 'postgresql':
        connection.execute(_APPEND_PG, dict(
            row, before=None if before is None else canonical(row['before']),
            after=None if after is None else canonical(row['after']),
            text_before_seq=text_before_seq, text_after_seq=text_after_seq))
        return
    seq, prev_hash = connection.execute(_LOCK_HEAD).one()
    row.update(seq=seq + 1, prev_hash=prev_hash, hash=hashlib.sha256(
        (prev_hash + text_before_seq + str(seq + 1) + text_after_seq).encode('ascii')).hexdigest())
    connection.execute(_INSERT, row)
    connection.execute(_SET_HEAD, {'seq': row['seq'], 'hash': row['hash']})


@dataclasses.dataclass
class Verification:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list

    def as_dict(self):
        return dataclasses.asdict(self)


def verify(session, limit_problems: int = 50) -> Verification:
    """Walk the chain from the start; report every broken link (up to ``limit_problems``)."""
    problems = []
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
    return Verification(ok=not problems, entries=count, head_seq=head_seq, head_hash=head_hash,
                        problems=problems)
