# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit ledger: every privileged mutation is an entry; editing or removing one behind
the control plane's back (with the append-only triggers dropped, as someone with the
database's owner rights could) is detected. Rewinding, truncating or re-hashing the whole
chain, which leaves it consistent with itself, is detected against its checkpoint, the
anchor kept outside the database."""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from gpuaas_control import api, audit, cli, service
from gpuaas_control.config import Settings, SettingsError
from gpuaas_control.db import Database
from gpuaas_control.models import AuditEntry
from tests.controlplane.helpers import OPERATOR, make_token


_tenants = itertools.count()


def _entries(db, n=5):
    """``n`` commits, an entry each (a new tenant's quota)."""
    for _entry in range(n):
        db.transact(service.set_quota, OPERATOR, 'tenant%d' % next(_tenants), 1)


def _tamper(db, *statements, params=()):
    """Statements run with the append-only triggers off, as the database's owner can."""
    with db.write() as session:
        if db.is_postgres:
            session.execute(text('ALTER TABLE audit_log DISABLE TRIGGER USER'))
        else:
            session.execute(text('DROP TRIGGER IF EXISTS audit_log_no_update'))
            session.execute(text('DROP TRIGGER IF EXISTS audit_log_no_delete'))
        for statement in statements:
            session.execute(text(statement), list(params) or None)


def _verify(db, anchor=None):
    with db.read() as session:
        return audit.verify(session, anchor)


def test_a_clean_chain_verifies(db):
    _entries(db)
    result = _verify(db)
    assert result.ok and result.entries == 5 and result.head_seq == 5
    with db.read() as session:
        rows = session.execute(text('SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq')).all()
    assert rows[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:]))


@pytest.mark.parametrize('statements, expect', [
    (["UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3"],
     'entry 3: its content does not match its hash'),
    (["UPDATE audit_log SET after = '{\"max_gpus\": 99}' WHERE seq = 2"],
     'entry 2: its content does not match its hash'),
    (['DELETE FROM audit_log WHERE seq = 3'], 'entries 3 to 3 are missing'),
    (['DELETE FROM audit_log WHERE seq = 5'], 'the chain ends at entry 4 but the head records entry 5'),
    (['DELETE FROM audit_log'], 'the chain ends at entry 0 but the head records entry 5'),
])
def test_tampering_is_detected(db, statements, expect):
    _entries(db)
    _tamper(db, *statements)
    result = _verify(db)
    assert not result.ok
    assert any(expect in problem for problem in result.problems), result.problems


def test_rewriting_one_entry_with_its_hash_still_breaks_the_next_link(db):
    _entries(db)
    with db.read() as session:
        entry = session.get(service.audit.AuditEntry, 3)
        entry.actor = 'mallory'
        forged = audit.entry_hash(entry.prev_hash, entry)
    _tamper(db, "UPDATE audit_log SET actor = 'mallory', hash = '%s' WHERE seq = 3" % forged)
    problems = _verify(db).problems
    assert problems == ['entry 4: prev_hash does not match the entry before it (an entry before '
                        'it was changed or removed)']


# -- the checkpoint --------------------------------------------------------------------------

@pytest.fixture(name='checkpoint')
def _checkpoint(tmp_path):
    return str(tmp_path / 'anchor' / 'audit-head.json')


@pytest.fixture(name='anchored')
def _anchored(db_url, checkpoint):
    """The database as the API and the worker open it: with its checkpoint."""
    database = Database(db_url, audit_checkpoint=checkpoint)
    yield database
    database.dispose()


def _head(db):
    with db.read() as session:
        return tuple(session.execute(text('SELECT seq, hash FROM audit_head')).one())


def _read(path):
    with open(path, encoding='ascii') as stream:
        return json.load(stream)


@pytest.mark.parametrize('swap', ['exchange', 'rename'])
def test_every_commit_that_appends_moves_the_checkpoint_and_logs_it(anchored, checkpoint, caplog,
                                                                    monkeypatch, swap):
    if swap == 'rename':   # no renameat2 (an older C library): os.replace
        monkeypatch.setattr(audit, '_renameat2', None)
    caplog.set_level(logging.INFO, logger='gpuaas_control.audit')
    _entries(anchored)
    seq, hash_ = _head(anchored)
    assert seq == 5 and {k: v for k, v in _read(checkpoint).items() if k != 'at'} == \
        {'seq': 5, 'hash': hash_}
    assert os.path.getsize(checkpoint) == 192
    assert stat.S_IMODE(os.stat(os.path.dirname(checkpoint)).st_mode) == 0o700
    for name in os.listdir(os.path.dirname(checkpoint)):
        assert stat.S_IMODE(os.stat(os.path.join(os.path.dirname(checkpoint), name)).st_mode) == 0o600
    names = sorted(os.listdir(os.path.dirname(checkpoint)))
    assert names[:2] == ['audit-head.json', 'audit-head.json.lock']
    lines = [r.getMessage() for r in caplog.records if r.name == 'gpuaas_control.audit']
    assert len(lines) == 5 and lines[-1] == 'audit checkpoint: entry 5 %s' % hash_
    result = _verify(anchored, anchored.anchor)
    assert result.ok and (result.checkpoint_seq, result.checkpoint_hash) == (5, hash_)


def _truncate(db, _checkpoint):
    """Remove the newest two entries and move the head back to the third."""
    _tamper(db, 'DELETE FROM audit_log WHERE seq > 3',
            'UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)')


def _snapshot(db):
    _tamper(db, 'CREATE TABLE old_log AS SELECT * FROM audit_log',
            'CREATE TABLE old_head AS SELECT * FROM audit_head')


def _restore(db):
    _tamper(db, 'DELETE FROM audit_log', 'INSERT INTO audit_log SELECT * FROM old_log',
            'UPDATE audit_head SET seq = (SELECT seq FROM old_head), '
            'hash = (SELECT hash FROM old_head)')


def _rehash(db, _checkpoint):
    """Edit entry 2, then compute every hash from it on again and move the head: the chain
    is consistent with itself."""
    with db.read() as session:
        rows = [{c.name: getattr(e, c.name) for c in AuditEntry.__table__.columns}
                for e in session.query(AuditEntry).order_by(AuditEntry.seq)]
    rows[1]['actor'] = 'mallory'
    prev = audit.GENESIS
    for row in rows:
        row['prev_hash'], row['hash'] = prev, audit.entry_hash(prev, row)
        prev = row['hash']
    _tamper(db, 'UPDATE audit_log SET actor = :actor, prev_hash = :prev_hash, hash = :hash '
                'WHERE seq = :seq', params=[{k: r[k] for k in ('actor', 'prev_hash', 'hash', 'seq')}
                                            for r in rows])
    _tamper(db, "UPDATE audit_head SET seq = 5, hash = '%s'" % prev)


def _delete_checkpoint(_db, checkpoint):
    os.remove(checkpoint)


def _garble_checkpoint(_db, checkpoint):
    with open(checkpoint, 'w', encoding='ascii') as stream:
        stream.write('{"seq": 2}')


# Each: what someone with access to the database (or, last, to the file) does once the
# ledger holds 5 entries anchored at entry 5 (the rewinds were copied at entry 3); what
# verify says; whether the chain alone still looks fine (so only the anchor tells).
TAMPERING = {
    'truncate the newest entries and move the head': (
        _truncate, 'the ledger ends at entry 3, but its checkpoint', True),
    'rewind to an older copy': (
        lambda db, _cp: _restore(db), 'the ledger ends at entry 3, but its checkpoint', True),
    're-hash the whole chain after editing entry 2': (
        _rehash, 'entry 5 has hash', True),
    'delete the checkpoint': (
        _delete_checkpoint, 'is missing, and the ledger has entries up to 5', True),
    'garble the checkpoint': (_garble_checkpoint, 'is not a checkpoint', True),
}


@pytest.mark.parametrize('name', TAMPERING)
def test_tampering_behind_the_anchor_is_detected(anchored, name):
    tamper, expect, chain_alone_ok = TAMPERING[name]
    _entries(anchored, 3)
    _snapshot(anchored)
    _entries(anchored, 2)
    tamper(anchored, anchored.anchor.path)
    assert _verify(anchored).ok is chain_alone_ok
    result = _verify(anchored, anchored.anchor)
    assert not result.ok
    assert any(expect in problem for problem in result.problems), result.problems


@pytest.mark.parametrize('one_transaction', [False, True], ids=['commit by commit', 'in one commit'])
def test_a_rewound_ledger_that_grows_past_its_checkpoint_is_not_anchored(anchored, one_transaction,
                                                                         caplog):
    """The rewound chain's new entries 4 to 6 are not the anchored entry 5's successors: the
    checkpoint stays where it was (checked against the entry before the commit's first, or
    looked up in the database), and says so loudly."""
    _entries(anchored, 3)
    _snapshot(anchored)
    _entries(anchored, 2)
    anchored_before = _read(anchored.anchor.path)
    _restore(anchored)
    caplog.set_level(logging.INFO, logger='gpuaas_control.audit')
    if one_transaction:
        anchored.transact(lambda session: [service.set_quota(session, OPERATOR, 'again%d' % i, i)
                                           for i in range(3)])
    else:
        for i in range(3):
            anchored.transact(service.set_quota, OPERATOR, 'again%d' % i, i)
    assert _head(anchored)[0] == 6 and _verify(anchored).ok
    assert _read(anchored.anchor.path) == anchored_before
    assert any(r.levelno == logging.CRITICAL and 'NOT moved to entry 6' in r.getMessage()
               for r in caplog.records), caplog.text
    problems = _verify(anchored, anchored.anchor).problems
    assert len(problems) == 1 and problems[0].startswith('entry 5 has hash'), problems


def test_a_deleted_checkpoint_is_not_created_again(anchored, db_url, checkpoint, capsys, caplog):
    """Only the ledger's first entry creates it: a deleted checkpoint stays missing (and
    verify failing) until an operator anchors the head again."""
    _entries(anchored, 2)
    os.remove(checkpoint)
    caplog.set_level(logging.INFO, logger='gpuaas_control.audit')
    _entries(anchored, 2)
    assert not os.path.exists(checkpoint)
    assert any(r.levelno == logging.CRITICAL and 'missing, and the ledger held 2 entries before '
               'entry 3: not created' in r.getMessage() for r in caplog.records), caplog.text
    assert 'is missing, and the ledger has entries up to 4' in _verify(anchored, anchored.anchor).problems[0]
    assert _cli(capsys, db_url, checkpoint, '--reanchor')[0] == 0
    _entries(anchored, 1)
    assert _read(checkpoint)['seq'] == 5 and _verify(anchored, anchored.anchor).ok


def test_a_rolled_back_transaction_does_not_move_the_checkpoint(anchored):
    _entries(anchored, 2)
    with open(anchored.anchor.path, 'rb') as stream:
        before = stream.read()

    def append_then_fail(session):
        service.set_quota(session, OPERATOR, 'rolled-back', 1)
        raise RuntimeError('after the append')
    with pytest.raises(RuntimeError):
        anchored.transact(append_then_fail)
    with open(anchored.anchor.path, 'rb') as stream:
        assert stream.read() == before
    assert _head(anchored)[0] == 2 and _verify(anchored, anchored.anchor).ok
    _entries(anchored, 1)
    assert _read(anchored.anchor.path)['seq'] == 3 and _verify(anchored, anchored.anchor).ok


def test_concurrent_appenders_never_move_it_backwards(db_url, checkpoint):
    """Four processes' worth of Database objects (each its own pool and lock) commit at once;
    a reader watches the file (under its shared lock): its seq only grows, and ends at the
    head."""
    databases = [Database(db_url, audit_checkpoint=checkpoint) for _copy in range(4)]
    _entries(databases[0], 1)   # the first entry creates the checkpoint (see advance)
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            current = audit.Anchor(checkpoint).read()
            if current is not None:
                seen.append(current.seq)

    def append(index, database):
        for i in range(10):
            database.transact(service.set_quota, OPERATOR, 'w%d-%d' % (index, i), i)
    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=append, args=(i, d)) for i, d in enumerate(databases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    seen.append(_read(checkpoint)['seq'])
    assert seen == sorted(seen) and seen[-1] == 41
    assert _read(checkpoint)['hash'] == _head(databases[0])[1]
    assert _verify(databases[0], databases[0].anchor).ok
    for database in databases:
        database.dispose()


def test_it_only_moves_forward(anchored):
    _entries(anchored, 3)
    before = _read(anchored.anchor.path)
    with anchored.read() as session:
        old = session.get(AuditEntry, 2)
    assert not anchored.anchor.advance([1, 'x' * 64, 2, old.hash], anchored._hash_at)  # pylint: disable=protected-access
    assert _read(anchored.anchor.path) == before


def test_a_checkpoint_that_cannot_be_written_does_not_fail_the_request(db_url, tmp_path, caplog):
    """The commit is done: the request succeeds, the failure is logged, and verify, failing
    closed, reports the checkpoint it cannot read."""
    (tmp_path / 'not-a-dir').write_text('')
    path = str(tmp_path / 'not-a-dir' / 'audit-head.json')
    database = Database(db_url, audit_checkpoint=path)
    caplog.set_level(logging.INFO, logger='gpuaas_control.audit')
    _entries(database, 1)
    assert _head(database)[0] == 1
    assert any(r.levelno == logging.ERROR and 'NOT moved to entry 1' in r.getMessage()
               for r in caplog.records), caplog.text
    assert _verify(database, database.anchor).problems == [
        'the audit checkpoint %s cannot be read: Not a directory' % path]
    database.dispose()


# -- gpuaas audit verify, and the API's verify ----------------------------------------------

def _cli(capsys, db_url, checkpoint, *argv, top=()):
    os.environ['GPUAAS_AUDIT_CHECKPOINT'] = checkpoint
    try:
        code = cli.main(['--db', db_url] + list(top) + ['audit', 'verify'] + list(argv))
    finally:
        del os.environ['GPUAAS_AUDIT_CHECKPOINT']
    return code, capsys.readouterr().out


def test_the_cli_checks_the_checkpoint_by_default(anchored, db_url, checkpoint, capsys):
    _entries(anchored)
    head = _head(anchored)[1]
    assert _cli(capsys, db_url, checkpoint) == (
        0, 'audit chain ok: 5 entries, checkpoint at entry 5, head 5 %s\n' % head)
    os.rename(checkpoint, checkpoint + '.copy')
    code, out = _cli(capsys, db_url, checkpoint)
    assert code == 1 and 'audit-head.json is missing, and the ledger has entries up to 5' in out
    assert '--no-checkpoint checks the chain alone' in out
    assert _cli(capsys, db_url, checkpoint, '--checkpoint', checkpoint + '.copy')[0] == 0
    code, out = _cli(capsys, db_url, checkpoint, '--no-checkpoint')
    assert code == 0 and out.startswith('audit chain ok: 5 entries, checkpoint not checked, head 5')
    _truncate(anchored, checkpoint)
    code, out = _cli(capsys, db_url, checkpoint, '--checkpoint', checkpoint + '.copy')
    assert code == 1 and '  - the ledger ends at entry 3, but its checkpoint' in out
    code, out = _cli(capsys, db_url, checkpoint, '--reanchor')
    assert code == 0 and out.startswith('audit checkpoint %s: now entry 3 (it held nothing)\n'
                                        % checkpoint)
    assert _cli(capsys, db_url, checkpoint)[0] == 0
    code, out = _cli(capsys, db_url, checkpoint, top=['--json'])
    assert code == 0 and json.loads(out)['checkpoint_seq'] == 3


def test_reanchor_refuses_a_broken_chain(anchored, db_url, checkpoint, capsys):
    _entries(anchored, 3)
    before = _read(checkpoint)
    _tamper(anchored, "UPDATE audit_log SET actor = 'x' WHERE seq = 2")
    code, out = _cli(capsys, db_url, checkpoint, '--reanchor')
    assert code == 1 and 'entry 2: its content does not match its hash' in out
    assert _read(checkpoint) == before


def test_the_api_verifies_against_its_checkpoint(db_url, checkpoint):
    database = Database(db_url, audit_checkpoint=checkpoint)
    operator = make_token(database, 'operator')
    with TestClient(api.create_app(Settings(db_url=db_url, audit_checkpoint=checkpoint),
                                   database)) as client:
        reply = client.get('/v1/audit/verify', headers=operator).json()
        assert reply['ok'] and reply['checkpoint_seq'] == reply['head_seq'] == 1
        _entries(database, 3)
        _truncate(database, checkpoint)
        reply = client.get('/v1/audit/verify', headers=operator).json()
        assert not reply['ok'] and reply['checkpoint_seq'] == 4 and reply['head_seq'] == 3
        assert reply['problems'][0].startswith('the ledger ends at entry 3, but its checkpoint')
    database.dispose()


@pytest.mark.parametrize('db_url_, expect', [
    ('sqlite:////srv/control/gpuaas.db', '/srv/control/audit-head.json'),
    ('postgresql://gpuaas@db.example.com/gpuaas', '/var/lib/gpuaas/control/audit-head.json'),
    ('sqlite:////var/lib/gpuaas/control/gpuaas.db', '/var/lib/gpuaas/control/audit-head.json'),
])
def test_the_checkpoint_is_next_to_the_database_by_default(db_url_, expect):
    assert Settings(db_url=db_url_).audit_checkpoint == expect


@pytest.mark.parametrize('value', ['audit-head.json', './audit-head.json', '/var/lib/gpuaas/', '/x\0y'])
def test_a_checkpoint_path_that_is_not_an_absolute_file_is_refused(value):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(audit_checkpoint=value)
    assert str(refused.value) == "bad settings: GPUAAS_AUDIT_CHECKPOINT=%r: Value error, must be the " \
        "absolute path of a file" % value
