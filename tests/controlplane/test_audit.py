# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit ledger: every privileged mutation is an entry; editing or removing one behind
the control plane's back (with the append-only triggers dropped, as someone with the
database's owner rights could) is detected."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from gpuaas_control import audit, service
from tests.controlplane.helpers import OPERATOR


def _entries(db, n=5):
    for i in range(n):
        db.transact(service.set_quota, OPERATOR, 'tenant%d' % i, i)


def _tamper(db, *statements):
    with db.write() as session:
        if db.is_postgres:
            session.execute(text('ALTER TABLE audit_log DISABLE TRIGGER USER'))
        else:
            session.execute(text('DROP TRIGGER audit_log_no_update'))
            session.execute(text('DROP TRIGGER audit_log_no_delete'))
        for statement in statements:
            session.execute(text(statement))


def _verify(db):
    with db.read() as session:
        return audit.verify(session)


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
