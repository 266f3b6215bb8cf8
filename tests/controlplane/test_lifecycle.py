# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle table: every allowed edge performed by ``lifecycle.move`` (state written,
event and audit entry appended, slot moved with its allocation), every other edge refused
with nothing written."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select, update

from gpuaas_control import audit, lifecycle, service
from gpuaas_control.models import (
    ALLOCATION_STATES,
    SLOT_STATES,
    Allocation,
    AuditEntry,
    Event,
    Slot,
)
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, request, tenant

ALLOCATION_EDGES = sorted(lifecycle.ALLOCATION_TRANSITIONS, key=str)
FORBIDDEN = [(frm, to) for frm, to in itertools.product((None,) + ALLOCATION_STATES, ALLOCATION_STATES)
             if (frm, to) not in lifecycle.ALLOCATION_TRANSITIONS]
SLOT_FORBIDDEN = [(frm, to) for frm, to in itertools.product(SLOT_STATES, SLOT_STATES)
                  if (frm, to) not in lifecycle.SLOT_TRANSITIONS]


@pytest.fixture
def allocation(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    made, _created = db.transact(service.reserve, tenant('acme'), request())
    return made


def _force(db, allocation_id, state, slot_state=None):
    """Put the rows in a state directly (a test's setup, not a transition)."""
    with db.write() as session:
        session.execute(update(Allocation).where(Allocation.id == allocation_id).values(state=state))
        if slot_state:
            session.execute(update(Slot).where(Slot.allocation_id == allocation_id)
                            .values(state=slot_state))


def _snapshot(db, allocation_id):
    with db.read() as session:
        allocation = session.get(Allocation, allocation_id)
        slot = session.get(Slot, allocation.slot_id)
        return (allocation.state, slot.state, slot.allocation_id,
                session.execute(select(func.count()).select_from(Event)).scalar(),
                session.execute(select(func.count()).select_from(AuditEntry)).scalar())


def _move(db, allocation_id, to, **kwargs):
    def run(session):
        row = session.get(Allocation, allocation_id, with_for_update=True)
        return lifecycle.move(session, OPERATOR, row, to, 'to %s' % to, **kwargs)
    return db.transact(run)


def test_the_reservation_goes_through_the_table(db, allocation):
    with db.read() as session:
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        slot = session.get(Slot, allocation.slot_id)
    assert (entry.action, entry.before, entry.after) == (
        'allocation.create', None, {'state': 'requested', 'tenant': 'acme', 'slot_id': slot.id})
    assert (slot.state, slot.allocation_id) == ('reserved', allocation.id)


@pytest.mark.parametrize('frm, to', [edge for edge in ALLOCATION_EDGES if edge[0] is not None])
def test_every_allowed_allocation_edge(db, allocation, frm, to):
    _force(db, allocation.id, frm)
    before = _snapshot(db, allocation.id)
    event = _move(db, allocation.id, to, data={'why': 'test'})
    after = _snapshot(db, allocation.id)
    assert after == (to,) + before[1:3] + (before[3] + 1, before[4] + 1)
    assert event.kind == 'state' and event.data == {'why': 'test', 'state': to}
    with db.read() as session:
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        assert audit.verify(session).ok
    assert entry.action == lifecycle.ALLOCATION_TRANSITIONS[(frm, to)]
    assert (entry.before, entry.after['state'], entry.actor) == ({'state': frm}, to, OPERATOR.name)


@pytest.mark.parametrize('frm, to', FORBIDDEN)
def test_a_forbidden_allocation_edge_is_refused_and_writes_nothing(db, allocation, frm, to):
    if frm is None:
        with pytest.raises(lifecycle.TransitionError, match='cannot go from nothing to %s' % to):
            db.transact(lambda session: lifecycle.move(
                session, OPERATOR, session.get(Allocation, allocation.id), to, 'x', frm=None))
        return
    _force(db, allocation.id, frm)
    before = _snapshot(db, allocation.id)
    with pytest.raises(lifecycle.TransitionError) as info:
        _move(db, allocation.id, to)
    assert 'cannot go from %s to %s' % (frm, to) in str(info.value)
    assert info.value.status == 409
    assert _snapshot(db, allocation.id) == before


@pytest.mark.parametrize('slot_from, to, slot_to', [
    ('reserved', 'released', 'free'), ('blocked', 'released', 'free'),
    ('reserved', 'failed', 'blocked')])
def test_every_allowed_slot_edge_moves_with_its_allocation(db, allocation, slot_from, to, slot_to):
    assert (slot_from, slot_to) in lifecycle.SLOT_TRANSITIONS
    _force(db, allocation.id, 'releasing', slot_from)
    _move(db, allocation.id, to, slot_to=slot_to, reason='wipe failed')
    state, slot_state, holder, _events, _entries = _snapshot(db, allocation.id)
    assert (state, slot_state) == (to, slot_to)
    assert holder == (None if slot_to == 'free' else allocation.id)
    with db.read() as session:
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        reason = session.get(Slot, allocation.slot_id).state_reason
    assert (entry.before['slot_state'], entry.after['slot_state']) == (slot_from, slot_to)
    assert reason == ('wipe failed' if slot_to == 'blocked' else None)


def test_take_slot_is_the_free_to_reserved_edge(db, allocation):
    with db.write() as session:
        free = session.execute(select(Slot.id).where(Slot.state == 'free').limit(1)).scalar_one()
        assert lifecycle.take_slot(session, free, allocation.id, allocation.created_at)
        assert not lifecycle.take_slot(session, free, allocation.id, allocation.created_at)
        session.rollback()


@pytest.mark.parametrize('slot_from, slot_to', SLOT_FORBIDDEN)
def test_a_forbidden_slot_edge_is_refused_and_writes_nothing(db, allocation, slot_from, slot_to):
    _force(db, allocation.id, 'releasing', slot_from)
    before = _snapshot(db, allocation.id)
    with pytest.raises(lifecycle.TransitionError, match='cannot go from %s to %s' % (slot_from, slot_to)):
        _move(db, allocation.id, 'released', slot_to=slot_to)
    assert _snapshot(db, allocation.id) == before


def test_a_slot_another_allocation_holds_is_left_alone(db, allocation):
    _force(db, allocation.id, 'releasing')
    with db.write() as session:
        session.execute(update(Slot).where(Slot.id == allocation.slot_id).values(allocation_id='alloc-other'))
    _move(db, allocation.id, 'released', slot_to='free')
    assert _snapshot(db, allocation.id)[:3] == ('released', 'reserved', 'alloc-other')
