# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane over a fleet: jobs of one node one at a time and of different nodes at
once (claims racing on PostgreSQL included); a node that does not answer (a real
ansible-runner run against an SSH host whose port answers nothing) fails its job cleanly,
is skipped by reservation, probed, and cleaned up once it answers; drain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml
from sqlalchemy import select, update

from gpuaas_control import audit, fleet, lifecycle, service
from gpuaas_control.errors import Conflict
from gpuaas_control.models import Allocation, AuditEntry, Node, OutboxJob, Slot, utcnow
from gpuaas_control.schemas.fleet import NodeView
from gpuaas_control.worker import Worker, _candidates
from tests.controlplane.conftest import approved_map, worker_settings
from tests.controlplane.helpers import (
    OPERATOR, add_node, add_tenant, allocation_state, make_token, no_leaks, request, tenant, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def project(project):
    """Nodes n1 and n2 in mode ok, every one reached first (fake_connect); a node in mode
    ``down`` answers nothing."""
    project.connect = True
    project.set_modes(n2='ok')
    return project


@pytest.fixture
def settings(db_url, project, tmp_path):
    return worker_settings(db_url, project, tmp_path, lease_seconds=5.0, probe_interval=0.2, probe_timeout=30,
                           telemetry_interval=0)


@pytest.fixture
def nodes(db, hgx_discovery_factory):
    for node_id in ('n1', 'n2'):
        discovery = hgx_discovery_factory(node_id)
        add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')


def _reserve(db, **constraints):
    return db.transact(service.reserve, tenant('acme'), request(**constraints))[0]


def _node(db, node_id):
    with db.read() as session:
        return session.get(Node, node_id)


def _slot(db, slot_id):
    with db.read() as session:
        return session.get(Slot, slot_id)


def _actions(db, target_id):
    with db.read() as session:
        return [e.action for e in session.execute(select(AuditEntry).where(
            AuditEntry.target_id == target_id).order_by(AuditEntry.seq)).scalars()]


# -- claiming: one job per node at a time ------------------------------------------------------

def test_a_claim_takes_one_job_per_node(db, settings, project, nodes):
    """Three jobs on n1, one on n2: two claims run (one per node); the others wait until a
    node's job is done. A job's claim is held by its live lease, not by its worker."""
    on_n1 = [_reserve(db, node_id='n1').id for _index in range(3)]
    on_n2 = _reserve(db, node_id='n2').id
    worker = Worker(db, settings, worker_id='w')
    first, second = db.transact(worker._claim), db.transact(worker._claim)
    assert (first.allocation_id, first.node_id) == (on_n1[0], 'n1')
    assert (second.allocation_id, second.node_id) == (on_n2, 'n2')
    assert db.transact(worker._claim) is None
    # The n1 job's worker died: once its lease ran out, it is claimed again, and still alone.
    with db.write() as session:
        session.execute(update(OutboxJob).where(OutboxJob.id == first.job_id)
                        .values(lease_expires_at=utcnow()))
    again = db.transact(worker._claim)
    assert (again.job_id, again.attempts) == (first.job_id, 2)
    assert db.transact(worker._claim) is None


@pytest.mark.backends('postgresql')
def test_two_claims_racing_for_two_jobs_of_one_node_take_one(db, settings, project, nodes):
    """PostgreSQL, two connections. (1) While one claim holds n1's row, the other skips n1
    and takes the n2 job (it then waits for the audit ledger's head, which the first holds to
    its commit). (2) A claim that read both n1 jobs as runnable before the other
    committed finds n1 busy once it holds n1's row, and takes nothing there."""
    on_n1 = [_reserve(db, node_id='n1').id for _index in range(2)]
    on_n2 = _reserve(db, node_id='n2').id
    a, b = Worker(db, settings, worker_id='a'), Worker(db, settings, worker_id='b')
    got = {}
    with db.write() as session_a:
        got['a'] = a._claim(session_a)
        thread = threading.Thread(target=lambda: got.update(b=db.transact(b._claim)))
        thread.start()
        time.sleep(2)
    thread.join(30)
    assert not thread.is_alive()
    assert got['a'].allocation_id == on_n1[0] and got['b'].allocation_id == on_n2
    assert db.transact(b._claim) is None

    # (2): release the claims (done), add two more n1 jobs; b reads them before a commits.
    with db.write() as session:
        session.execute(update(OutboxJob).values(status='done'))
    more = [_reserve(db, node_id='n1').id for _index in range(2)]
    with db.write() as session_b:
        seen = session_b.execute(_candidates(utcnow())).all()
        assert [node for _job, node in seen] == ['n1', 'n1']
        assert db.transact(a._claim).allocation_id == more[0]   # committed meanwhile
        assert [b._take(session_b, job, node, utcnow()) for job, node in seen] == [None, None]


@pytest.mark.backends('postgresql')
def test_many_threads_claiming_at_once_take_one_job_per_node(db, settings, project, nodes):
    for node_id in ('n1', 'n2'):
        for _index in range(4):
            _reserve(db, node_id=node_id)
    workers = [Worker(db, settings, worker_id='w%d' % i) for i in range(8)]
    barrier = threading.Barrier(len(workers))
    claims = []

    def claim(worker):
        barrier.wait()
        claims.append(db.transact(worker._claim))
    threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    taken = sorted(c.node_id for c in claims if c is not None)
    assert taken == ['n1', 'n2'], claims
    with db.read() as session:
        running = session.execute(select(OutboxJob.id).where(OutboxJob.status == 'running')).all()
    assert len(running) == 2


@pytest.mark.slow
def test_nodes_run_in_parallel_and_each_node_one_job_at_a_time(db, settings, project, nodes):
    project.set_modes(n1='slow', n2='slow')
    ids = [_reserve(db, node_id=node_id).id for node_id in ('n1', 'n2', 'n1', 'n2')]
    worker = Worker(db, settings.model_copy(update={'worker_concurrency': 4}))
    runner = threading.Thread(target=worker.run_forever)
    runner.start()
    try:
        wait_for(lambda: all(allocation_state(db, i)[0].state == 'running' for i in ids),
                 timeout=120, what='four allocations to run')
    finally:
        worker.stop()
        runner.join(60)
    intervals = project.intervals()
    assert sorted(alloc for _node, alloc, _start, _end in intervals) == sorted(ids)
    by_node = {}
    for node, _alloc, start, end in intervals:
        by_node.setdefault(node, []).append((start, end))
    for node, spans in by_node.items():
        (_s1, end1), (start2, _e2) = sorted(spans)
        assert end1 <= start2, '%s ran two jobs at once: %s' % (node, spans)
    # Four threads, two nodes: the nodes' runs overlapped.
    assert any(s1 < e2 and s2 < e1 for s1, e1 in by_node['n1'] for s2, e2 in by_node['n2']), by_node
    no_leaks(db)


# -- reservation skips unreachable and drained nodes -------------------------------------------

def test_reservation_skips_unreachable_and_drained_nodes(db, settings, nodes):
    now = utcnow()
    db.transact(fleet.node_unreachable, audit.SYSTEM, settings, 'n1', 'ssh: connect refused', now)
    assert _reserve(db).node_id == 'n2'
    with pytest.raises(Conflict, match='no free, approved slot on a schedulable node'):
        _reserve(db, node_id='n1')
    db.transact(service.set_drain, OPERATOR, 'n2', True, 'bios')
    with pytest.raises(Conflict):
        _reserve(db)
    # A second report keeps the first time and audits nothing new; the answer is audited.
    db.transact(fleet.node_unreachable, audit.SYSTEM, settings, 'n1', 'timed out', utcnow())
    node = _node(db, 'n1')
    assert node.unreachable_since == now and node.unreachable_error == 'timed out'
    view = NodeView.model_validate(node)
    assert (view.reachable, view.unreachable_error) == (False, 'timed out')
    assert db.transact(fleet.node_answered, audit.SYSTEM, 'n1', utcnow(), 'probe') is True
    assert db.transact(fleet.node_answered, audit.SYSTEM, 'n1', utcnow(), 'probe') is False
    assert NodeView.model_validate(_node(db, 'n1')).reachable is True
    assert _reserve(db).node_id == 'n1'
    assert _actions(db, 'n1')[-2:] == ['node.unreachable', 'node.reachable']
    assert _actions(db, 'n2')[-1] == 'node.drain'


def test_a_drained_node_keeps_its_allocations_and_refuses_new_ones(db, client, tokens, settings, nodes):
    kept = _reserve(db, node_id='n1')
    op = tokens['operator']
    assert client.post('/v1/nodes/n1/drain', json={'reason': 'firmware'}, headers=op).status_code == 200
    with pytest.raises(Conflict):
        _reserve(db, node_id='n1')
    assert _reserve(db).node_id == 'n2'
    with db.read() as session:
        assert session.get(Allocation, kept.id).state == 'requested'
    # The worker still runs the drained node's jobs (its allocations are served).
    claim = db.transact(Worker(db, settings)._claim)
    assert claim.allocation_id == kept.id
    listed = {n['id']: n for n in client.get('/v1/nodes', headers=op).json()['nodes']}
    assert listed['n1']['schedulable'] is False and listed['n1']['drain_reason'] == 'firmware'
    assert listed['n1']['reachable'] is True and listed['n1']['unreachable_since'] is None
    db.transact(fleet.node_unreachable, audit.SYSTEM, settings, 'n2', 'no route to host', utcnow())
    shown = client.get('/v1/nodes/n2', headers=op).json()
    assert shown['reachable'] is False and shown['unreachable_error'] == 'no route to host'
    assert shown['unreachable_since'] and shown['next_probe_at']


# -- a node that does not answer ---------------------------------------------------------------

def _recover(db, worker, project, node_id, **modes):
    project.set_modes(**modes)
    wait_for(lambda: worker.drain() >= 0 and _node(db, node_id).unreachable_since is None,
             timeout=60, what='%s to answer a probe' % node_id)
    worker.drain()


@pytest.mark.slow
def test_an_unreachable_node_moves_the_allocation_and_is_cleaned_when_it_answers(db, settings, project, nodes):
    project.set_modes(n1='down', n2='ok')
    allocation = _reserve(db)
    assert allocation.node_id == 'n1'
    worker = Worker(db, settings)
    worker.drain()
    got, slot, jobs, usage, events = allocation_state(db, allocation.id)
    assert got.state == 'running' and got.node_id == 'n2' and slot.id == 'n2-s0', (jobs, events)
    assert (usage.node_id, usage.slot_id) == ('n2', 'n2-s0')
    assert jobs == [('allocate', 'failed', 0), ('allocate', 'done', 1), ('release', 'pending', 0)]
    assert 'provisioning: the node did not answer; moved to slot n2-s0' in events
    left = _slot(db, 'n1-s0')
    assert left.state == 'blocked' and left.allocation_id == allocation.id
    assert 'did not answer' in left.state_reason
    node = _node(db, 'n1')
    assert node.unreachable_since is not None and 'Connection refused' in node.unreachable_error
    with db.read() as session:
        cleanup = session.execute(select(OutboxJob).where(OutboxJob.slot_id == 'n1-s0')).scalar_one()
    assert (cleanup.kind, cleanup.status) == ('release', 'pending')
    assert _actions(db, 'n1')[-1] == 'node.unreachable'
    assert 'allocation.reschedule' in _actions(db, allocation.id)
    # The node answers again: the probe says so, then the cleanup releases the slot it left.
    _recover(db, worker, project, 'n1', n1='ok')
    assert _slot(db, 'n1-s0').state == 'free' and _slot(db, 'n1-s0').allocation_id is None
    assert ['release', allocation.id, 'n1-s0'] in project.runs()
    assert _actions(db, 'n1')[-1] == 'node.reachable' and _actions(db, 'n1-s0') == ['slot.block', 'slot.free']
    assert allocation_state(db, allocation.id)[0].state == 'running'
    with db.read() as session:
        assert audit.verify(session).ok
    no_leaks(db)


@pytest.mark.slow
@pytest.mark.backends('sqlite')
def test_an_unreachable_node_fails_the_allocation_under_the_fail_policy(db, settings, project, nodes):
    project.set_modes(n1='down', n2='ok')
    allocation = _reserve(db)
    worker = Worker(db, settings.model_copy(update={'unreachable_policy': 'fail'}))
    worker.drain()
    got, slot, jobs, usage, events = allocation_state(db, allocation.id)
    assert got.state == 'failed' and got.error.startswith('node unreachable: ')
    assert lifecycle.public_reason(got.error) == 'node unreachable'    # what the tenant reads
    assert slot.state == 'blocked' and usage.allocated_end is not None
    assert 'node unreachable: the node did not answer; the allocation failed' in events
    assert _slot(db, 'n2-s0').state == 'free'
    _recover(db, worker, project, 'n1', n1='ok')
    got, slot, _jobs, _usage, _events = allocation_state(db, allocation.id)
    assert got.state == 'failed' and slot.state == 'free'
    assert [r[0] for r in project.runs()] == ['release']
    no_leaks(db)


@pytest.mark.slow
@pytest.mark.backends('sqlite')
def test_an_allocation_that_named_its_node_fails_rather_than_moves(db, settings, project, nodes):
    project.set_modes(n1='down', n2='ok')
    allocation = _reserve(db, node_id='n1')
    Worker(db, settings).drain()
    got, _slot_row, _jobs, _usage, _events = allocation_state(db, allocation.id)
    assert got.state == 'failed' and got.node_id == 'n1'


@pytest.mark.slow
@pytest.mark.backends('sqlite')
def test_a_release_on_an_unreachable_node_keeps_the_slot_until_it_answers(db, settings, project, nodes):
    allocation = _reserve(db, node_id='n1')
    worker = Worker(db, settings)
    worker.drain()
    assert allocation_state(db, allocation.id)[0].state == 'running'
    project.set_modes(n1='down', n2='ok')
    db.transact(service.request_release, tenant('acme'), allocation.id)
    worker.drain()
    got, slot, jobs, usage, events = allocation_state(db, allocation.id)
    assert got.state == 'releasing' and slot.state == 'reserved' and slot.allocation_id == allocation.id
    assert jobs[-1] == ('release', 'pending', 0)
    assert 'the node did not answer; the release runs when it does' in events
    assert _reserve(db).node_id == 'n2'     # n1 is skipped
    _recover(db, worker, project, 'n1', n1='ok', n2='ok')
    got, slot, jobs, _usage, _events = allocation_state(db, allocation.id)
    assert got.state == 'released' and slot.state == 'free' and jobs[-1] == ('release', 'done', 1)


@pytest.mark.backends('sqlite')
def test_probes_are_claimed_once_when_due_and_back_off(db, settings, project, nodes):
    project.set_modes(n1='down')
    assert db.transact(fleet.claim_probe, settings) is None       # nothing unreachable
    db.transact(fleet.node_unreachable, audit.SYSTEM, settings, 'n1', 'refused', utcnow())
    assert db.transact(fleet.claim_probe, settings) is None       # not due for 0.2 s
    time.sleep(0.3)
    assert db.transact(fleet.claim_probe, settings) == 'n1'
    assert db.transact(fleet.claim_probe, settings) is None       # held by the first
    error = fleet.probe(settings, 'n1')
    assert 'Connection refused' in error
    before = utcnow()
    db.transact(fleet.record_probe, audit.SYSTEM, settings, 'n1', error)
    node = _node(db, 'n1')
    assert node.probe_failures == 1 and node.unreachable_error == error
    assert before <= node.last_probe_at <= utcnow()
    assert 0.39 < (node.next_probe_at - before).total_seconds() < 3   # 0.2 s doubled
    assert fleet.probe_delay(settings, 20) == fleet.MAX_PROBE_INTERVAL
    # A host the inventory does not have never counts as an answer.
    assert 'is n9 a host of the inventory?' in fleet.probe(settings, 'n9')
    project.set_modes(n1='ok')
    assert fleet.probe(settings, 'n1') is None
    db.transact(fleet.record_probe, audit.SYSTEM, settings, 'n1', None)
    node = _node(db, 'n1')
    assert node.unreachable_since is None and node.probe_failures == 0 and node.next_probe_at is None
    assert node.last_probe_at > before    # the probe that found it answering
    with db.read() as session:
        entry = session.execute(select(AuditEntry).where(AuditEntry.target_id == 'n1')
                                .order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
    assert (entry.action, entry.before['probe_failures'], entry.after) == (
        'node.reachable', 1, {'reachable': True, 'via': 'probe'})


@pytest.mark.slow
@pytest.mark.backends('sqlite')
def test_allocations_waiting_on_a_node_that_stops_answering_move_before_they_run(db, settings, project, nodes):
    """Three allocations reserved on n1 (one job at a time there); the first run finds n1
    down: it moves, and so do the two still requested, whose untouched slots are freed."""
    project.set_modes(n1='down', n2='ok')
    ids = [_reserve(db).id for _index in range(3)]
    pinned = _reserve(db, node_id='n1').id
    worker = Worker(db, settings)
    worker.drain()
    states = {i: allocation_state(db, i)[0] for i in ids}
    assert {(a.state, a.node_id) for a in states.values()} == {('running', 'n2')}, states
    assert _slot(db, 'n1-s0').state == 'blocked'                     # the one a run touched
    assert [_slot(db, 'n1-s%d' % i).state for i in (1, 2)] == ['free', 'free']
    assert _actions(db, 'n1-s1') == ['slot.free']
    # One that named its node waits for it (requested, its job pending).
    got, slot, jobs, _usage, _events = allocation_state(db, pinned)
    assert got.state == 'requested' and jobs == [('allocate', 'pending', 0)]
    _recover(db, worker, project, 'n1', n1='ok')
    assert allocation_state(db, pinned)[0].state == 'running'
    assert _slot(db, 'n1-s0').state == 'free'    # its cleanup ran
    no_leaks(db)


# -- a cleanup that fails for good: the operator's hand -----------------------------------------

def _release_fails_on(project, node_id, fails):
    with open(project.inventory) as stream:
        inventory = yaml.safe_load(stream)
    inventory['all']['hosts'][node_id]['fake_release_mode'] = 'fail' if fails else 'ok'
    with open(project.inventory, 'w') as stream:
        yaml.safe_dump(inventory, stream)


@pytest.mark.slow
def test_a_cleanup_that_fails_for_good_is_retried_or_marked_clean_by_an_operator(
        db, client, tokens, settings, project, nodes):
    """n1 stops answering while it provisions: the allocation moves to n2 and n1-s0 waits for
    its cleanup. Operators see it (a reader too), may not retry what is queued or running, nor
    mark it clean without a reason; the cleanup fails every attempt once n1 answers; a retry
    runs it again (and it fails again); marked clean with a reason, the slot is free."""
    op, reader = tokens['operator'], make_token(db, 'reader')
    project.set_modes(n1='down', n2='ok')
    allocation = _reserve(db)
    worker = Worker(db, settings)
    worker.drain()
    listed = client.get('/v1/cleanups', headers=reader)
    assert listed.status_code == 200, listed.text
    [row] = listed.json()['cleanups']
    assert (row['slot_id'], row['node_id'], row['allocation_id'], row['status'], row['node_reachable']) == (
        'n1-s0', 'n1', allocation.id, 'pending', False)
    assert client.get('/v1/cleanups', headers=tokens['acme']).status_code == 403
    # Fail closed: a reader changes nothing; nothing without a reason; nothing queued twice.
    for path, body in (('retry', None), ('mark-clean', {'reason': 'reimaged'})):
        assert client.post('/v1/cleanups/n1-s0/%s' % path, json=body, headers=reader).status_code == 403
    retried = client.post('/v1/cleanups/n1-s0/retry', headers=op)
    assert retried.status_code == 409 and 'already queued' in retried.json()['detail'], retried.text
    assert 'runs when node n1 answers' in retried.json()['detail']
    for body in (None, {}, {'reason': ''}, {'reason': 'two\nlines'}, {'reason': 'x' * 256},
                 {'reason': 'ok', 'force': True}):
        assert client.post('/v1/cleanups/n1-s0/mark-clean', json=body, headers=op).status_code == 422, body
    assert client.post('/v1/cleanups/n1-s0/mark-clean', json={'reason': '   '}, headers=op).status_code == 422
    for slot_id, status in (('n2-s0', 409), ('n2-s1', 409), ('n9-s0', 404)):   # reserved, free, none
        assert client.post('/v1/cleanups/%s/retry' % slot_id, headers=op).status_code == status
        assert client.post('/v1/cleanups/%s/mark-clean' % slot_id, json={'reason': 'x'},
                           headers=op).status_code == status
    # While the cleanup runs, neither.
    with db.write() as session:
        session.execute(update(OutboxJob).where(OutboxJob.slot_id == 'n1-s0').values(status='running'))
    for path, body in (('retry', None), ('mark-clean', {'reason': 'reimaged'})):
        refused = client.post('/v1/cleanups/n1-s0/%s' % path, json=body, headers=op)
        assert refused.status_code == 409 and 'runs now' in refused.json()['detail']
    with db.write() as session:
        session.execute(update(OutboxJob).where(OutboxJob.slot_id == 'n1-s0').values(status='pending'))
    assert _slot(db, 'n1-s0').state == 'blocked' and 'slot.cleanup_retry' not in _actions(db, 'n1-s0')

    # n1 answers, but its release fails every attempt.
    project.set_modes(n1='ok')
    _release_fails_on(project, 'n1', True)

    def cleanup():
        worker.drain()
        return client.get('/v1/cleanups', headers=op).json()['cleanups'][0]
    wait_for(lambda: cleanup()['status'] == 'failed', what='the cleanup to fail')
    row = cleanup()
    assert row['attempts'] == settings.max_attempts and row['node_reachable'] is True
    assert 'fake release failure' in row['last_error'] and 'after 2 attempts' in row['reason']
    assert 'gpuaas slot retry-cleanup' in row['reason']
    # A retry runs it again, attempts afresh.
    retried = client.post('/v1/cleanups/n1-s0/retry', headers=op)
    assert retried.status_code == 200, retried.text
    assert (retried.json()['status'], retried.json()['attempts']) == ('pending', 0)
    assert retried.json()['job_id'] > row['job_id']
    wait_for(lambda: cleanup()['status'] == 'failed', what='the retried cleanup to fail')
    assert [r[:1] + r[2:] for r in project.runs()].count(['release', 'n1-s0']) == 2 * settings.max_attempts
    # The operator reimaged the node: marked clean, the slot is free for the next tenant.
    marked = client.post('/v1/cleanups/n1-s0/mark-clean', json={'reason': 'reimaged n1, ticket 42'}, headers=op)
    assert marked.status_code == 200, marked.text
    assert (marked.json()['state'], marked.json()['allocation_id'], marked.json()['state_reason']) == (
        'free', None, None)
    assert client.get('/v1/cleanups', headers=op).json()['cleanups'] == []
    assert client.post('/v1/cleanups/n1-s0/mark-clean', json={'reason': 'again'}, headers=op).status_code == 409
    assert _actions(db, 'n1-s0') == ['slot.block', 'slot.cleanup_retry', 'slot.free']
    with db.read() as session:
        entry = session.execute(select(AuditEntry).where(AuditEntry.target_id == 'n1-s0')
                                .order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        assert audit.verify(session).ok
    assert entry.after == {'state': 'free', 'allocation_id': None, 'via': 'marked clean',
                           'reason': 'reimaged n1, ticket 42'}
    assert entry.before['allocation_id'] == allocation.id and 'failed after 2 attempts' in entry.before['reason']
    assert allocation_state(db, allocation.id)[0].state == 'running'   # the allocation on n2 is untouched
    assert _reserve(db, node_id='n1').slot_id == 'n1-s0'


@pytest.mark.backends('sqlite')
def test_the_cli_marks_clean_the_slot_of_a_node_that_never_answers(db, settings, nodes, api_url):
    """`gpuaas slot cleanups | retry-cleanup | mark-clean` against a real `gpuaas serve`: the
    queued cleanup of a node that never answers is cancelled when the slot is marked clean."""
    allocation = _reserve(db, node_id='n1')
    now = utcnow()
    with db.write() as session:   # as fleet.unreachable leaves a failed allocate on n1
        session.get(Slot, 'n1-s0').state = 'blocked'
        fleet._add_cleanup(session, allocation.id, 'n1-s0', now)
    db.transact(fleet.node_unreachable, audit.SYSTEM, settings, 'n1', 'no route to host', now)
    operator = make_token(db, 'operator')['Authorization'].split()[1]
    reader = make_token(db, 'reader')['Authorization'].split()[1]

    def gpuaas(*argv, token=operator):
        return subprocess.run([os.path.join(os.path.dirname(sys.executable), 'gpuaas'), '--api', api_url] + list(argv),
                              env=dict(os.environ, GPUAAS_TOKEN=token), capture_output=True, text=True, timeout=60,
                              check=False)
    listed = gpuaas('slot', 'cleanups', token=reader)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ['SLOT', 'LEFT', 'BY']
    assert row.split()[:5] == ['n1-s0', allocation.id, 'pending', '0', 'no']
    assert json.loads(gpuaas('--json', 'slot', 'cleanups').stdout)['cleanups'][0]['node_id'] == 'n1'
    refused = gpuaas('slot', 'mark-clean', 'n1-s0', '--reason', 'scrapped', token=reader)
    assert refused.returncode == 1 and refused.stderr.startswith('gpuaas: 403: ')
    queued = gpuaas('slot', 'retry-cleanup', 'n1-s0')
    assert queued.returncode == 1 and 'already queued' in queued.stderr and 'runs when node n1 answers' in queued.stderr
    assert gpuaas('slot', 'mark-clean', 'n1-s0').returncode == 2     # --reason is required
    marked = gpuaas('slot', 'mark-clean', 'n1-s0', '--reason', 'n1 is scrapped')
    assert marked.returncode == 0 and marked.stdout == 'slot n1-s0 marked clean: free again\n', marked.stderr
    with db.read() as session:
        job = session.execute(select(OutboxJob).where(OutboxJob.slot_id == 'n1-s0')).scalar_one()
        assert fleet.blocked_cleanups(session) == [] and session.get(Slot, 'n1-s0').state == 'free'
    assert job.status == 'cancelled' and job.last_error.startswith('the slot was marked clean by ')
    assert gpuaas('slot', 'cleanups').stdout.splitlines()[-1] == '(none)'
