# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reservation: one transaction, on SQLite and PostgreSQL; under a race of threads and of
processes, exactly as many reservations succeed as there are slots, no slot twice, and a
quota holds."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from gpuaas_control import service
from gpuaas_control.collection import contract
from gpuaas_control.db import Database
from gpuaas_control.models import Allocation, Event, OutboxJob, Slot, UsageRecord
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, request, tenant


@pytest.fixture
def node(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    add_tenant(db, 'globex')
    return discovery


def test_a_reservation_is_slot_allocation_outbox_usage_and_audit(db, node):
    allocation, created = db.transact(service.reserve, tenant('acme'), request())
    assert created and allocation.state == 'requested'
    with db.read() as session:
        slot = session.get(Slot, allocation.slot_id)
        assert (slot.state, slot.allocation_id) == ('reserved', allocation.id)
        assert allocation.mac == contract.Slot('n1', slot.slot_index).mac == slot.mac
        jobs = session.execute(select(OutboxJob)).scalars().all()
        assert [(j.kind, j.status, j.allocation_id) for j in jobs] == [
            ('allocate', 'pending', allocation.id)]
        usage = session.execute(select(UsageRecord)).scalar_one()
        assert usage.allocation_id == allocation.id and usage.allocated_end is None
        entries = service.audit.verify(session)
        assert entries.ok
        # The allocation returned is built from what was inserted: it is what was stored.
        stored = session.get(Allocation, allocation.id)
        columns = [c.key for c in Allocation.__table__.columns]
        assert {k: getattr(allocation, k) for k in columns} == {k: getattr(stored, k) for k in columns}
        event = session.execute(select(Event)).scalar_one()
        assert (event.allocation_id, event.data) == (allocation.id, {'state': 'requested',
                                                                     'slot_id': slot.id})


def test_nothing_fits_is_a_conflict_and_changes_nothing(db, node):
    for _attempt in range(8):
        db.transact(service.reserve, tenant('acme'), request())
    with pytest.raises(service.Conflict, match='no free, approved slot'):
        db.transact(service.reserve, tenant('acme'), request())
    with db.read() as session:
        assert session.execute(select(func.count()).select_from(Allocation)).scalar() == 8


def test_constraints_gpu_model_node_and_numa_preference(db, node):
    alloc, _created = db.transact(service.reserve, tenant('acme'), request(numa_node=1, gpu_model='10de:2330'))
    with db.read() as session:
        assert session.get(Slot, alloc.slot_id).numa_node == 1
    with pytest.raises(service.Invalid, match='no approved slot has GPU model 10de:ffff'):
        db.transact(service.reserve, tenant('acme'), request(gpu_model='10de:ffff'))
    with pytest.raises(service.Invalid, match='unknown node'):
        db.transact(service.reserve, tenant('acme'), request(node_id='nope'))
    # A NUMA preference is a preference: when its node is full, another one serves.
    for _attempt in range(7):
        db.transact(service.reserve, tenant('acme'), request(numa_node=1, node_id='n1'))
    with db.read() as session:
        numas = session.execute(select(Slot.numa_node).where(Slot.state == 'reserved')).scalars().all()
    assert sorted(numas) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_a_drained_node_and_an_unapproved_slot_are_not_scheduled(db, node):
    db.transact(service.set_drain, OPERATOR, 'n1', True, 'maintenance')
    with pytest.raises(service.Conflict):
        db.transact(service.reserve, tenant('acme'), request())
    db.transact(service.set_drain, OPERATOR, 'n1', False)
    # Withdraw every slot but s3.
    db.transact(service.approve, OPERATOR, 'n1', approved_map(node, only={'n1-s3'}))
    alloc, _created = db.transact(service.reserve, tenant('acme'), request())
    assert alloc.slot_id == 'n1-s3'
    with pytest.raises(service.Conflict):
        db.transact(service.reserve, tenant('acme'), request())


def test_quota(db, node):
    db.transact(service.set_quota, OPERATOR, 'acme', 2)
    for _attempt in range(2):
        db.transact(service.reserve, tenant('acme'), request())
    with pytest.raises(service.Conflict, match='2 of 2 GPUs'):
        db.transact(service.reserve, tenant('acme'), request())
    db.transact(service.reserve, tenant('globex'), request())
    db.transact(service.set_quota, OPERATOR, 'acme', 0)
    with pytest.raises(service.Conflict, match='quota'):
        db.transact(service.reserve, tenant('acme'), request())


def test_idempotency_key_returns_the_same_allocation(db, node):
    first, created = db.transact(service.reserve, tenant('acme'), request(idempotency_key='k1'))
    again, created_again = db.transact(service.reserve, tenant('acme'), request(idempotency_key='k1'))
    assert created and not created_again and again.id == first.id
    other, _created = db.transact(service.reserve, tenant('globex'), request(idempotency_key='k1'))
    assert other.id != first.id


def test_operators_do_not_allocate(db, node):
    with pytest.raises(service.Forbidden):
        db.transact(service.reserve, OPERATOR, request())


def _check_consistent(db, slots=8):
    with db.read() as session:
        active = session.execute(select(Allocation).where(Allocation.state == 'requested')).scalars().all()
        reserved = session.execute(select(Slot).where(Slot.state == 'reserved')).scalars().all()
        jobs = session.execute(select(func.count()).select_from(OutboxJob)).scalar()
    assert len(active) == len(reserved) == jobs == slots
    assert len({a.slot_id for a in active}) == slots
    assert {s.id: s.allocation_id for s in reserved} == {a.slot_id: a.id for a in active}


def _race_one(db, who):
    try:
        allocation, _created = db.transact(service.reserve, tenant(who), request())
        return allocation.slot_id
    except service.Conflict:
        return None


def test_threads_race_for_fewer_slots(db, node):
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: _race_one(db, ('acme', 'globex')[i % 2]), range(48)))
    won = [r for r in results if r]
    assert len(won) == 8 and len(set(won)) == 8
    _check_consistent(db)


def test_quota_holds_under_the_race(db, node):
    db.transact(service.set_quota, OPERATOR, 'acme', 3)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: _race_one(db, 'acme'), range(32)))
    assert len([r for r in results if r]) == 3
    with db.read() as session:
        assert service.active_count(session, 'acme') == 3


def test_an_idempotency_key_holds_under_the_race(db, node):
    def one(_index):
        return db.transact(service.reserve, tenant('acme'),
                           request(idempotency_key='race-1'))[0].id
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(one, range(16)))
    assert len(ids) == 1
    with db.read() as session:
        assert service.active_count(session, 'acme') == 1


def _process_worker(url, who, count, start_at):
    db = Database(url)
    time.sleep(max(0.0, start_at - time.time()))
    won = [_race_one(db, who) for _attempt in range(count)]
    db.dispose()
    return won


def test_processes_race_for_fewer_slots(db, db_url, node):
    db.transact(service.set_quota, OPERATOR, 'globex', 2)
    context = multiprocessing.get_context('spawn')
    start_at = time.time() + 3.0
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
        futures = [pool.submit(_process_worker, db_url, ('acme', 'globex')[i % 2], 8, start_at)
                   for i in range(4)]
        results = [slot for f in futures for slot in f.result(timeout=120)]
    won = [r for r in results if r]
    assert len(won) == 8 and len(set(won)) == 8
    _check_consistent(db)
    with db.read() as session:
        assert service.active_count(session, 'globex') <= 2


def _drop_connections(pg_cluster, db_url):
    """What a server restart does to the pool: every connection to the database is gone."""
    pg_cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'"
                    % make_url(db_url).database)


@pytest.mark.backends('postgresql')
def test_a_dropped_connection_is_pinged_when_idle_and_retried_when_busy(db_url, node, pg_cluster):
    # A connection used within ping_after_idle seconds is handed out unchecked (no round trip
    # per checkout): a read on it fails once the server dropped it, a transaction is retried.
    busy = Database(db_url, ping_after_idle=3600)
    idle = Database(db_url, ping_after_idle=0)
    try:
        for database in (busy, idle):
            with database.read() as session:
                session.execute(select(1))
        _drop_connections(pg_cluster, db_url)
        allocation, created = busy.transact(service.reserve, tenant('acme'), request())
        assert created and allocation.slot_id
        with idle.read() as session:
            assert session.execute(select(1)).scalar() == 1
        _drop_connections(pg_cluster, db_url)
        with pytest.raises(OperationalError), busy.read() as session:
            session.execute(select(1))
    finally:
        busy.dispose()
        idle.dispose()
