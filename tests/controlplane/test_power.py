# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stop, start and reboot of an allocation, and its console (issue 18, item 5): the API's
requests and refusals, the jobs the worker runs (the real ansible-runner against the stand-in
project tests/controlplane/fake_node), usage that does not count stopped time as running, and
the console read through the worker without a run per request."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import select, update

from gpuaas_control import console, power, service
from gpuaas_control.models import Allocation, AllocationConsole, AuditEntry, Event, OutboxJob, UsageRecord, utcnow
from gpuaas_control.worker import Worker
from tests.controlplane.helpers import OPERATOR, tenant
from tests.controlplane.test_worker import node  # noqa: F401 (fixtures) pylint: disable=unused-import


def auth(headers):
    return headers


def _state(db, allocation_id):
    with db.read() as session:
        return session.get(Allocation, allocation_id).state


def _jobs(db, allocation_id):
    with db.read() as session:
        return [(j.kind, j.status) for j in session.execute(select(OutboxJob).where(
            OutboxJob.allocation_id == allocation_id).order_by(OutboxJob.id)).scalars()]


def _last_audit(db):
    with db.read() as session:
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).scalar_one()
        return entry.action, entry.actor, entry.before, entry.after['state']


def test_the_api_stops_starts_and_reboots_through_the_lifecycle(client, db, tokens, running_allocation):
    path = '/v1/allocations/%s' % running_allocation.id
    stopped = client.post(path + '/stop', headers=auth(tokens['acme']))
    assert stopped.status_code == 202 and stopped.json()['state'] == 'stopping'
    assert _last_audit(db)[0] == 'allocation.stop' and _last_audit(db)[2] == {'state': 'running'}
    again = client.post(path + '/stop', headers=auth(tokens['acme']))
    assert again.status_code == 202 and again.json()['state'] == 'stopping'
    assert _jobs(db, running_allocation.id) == [('allocate', 'pending'), ('stop', 'pending')]

    refused = client.post(path + '/start', headers=auth(tokens['acme']))
    assert refused.status_code == 409
    assert 'allocation %s is stopping: it can be started only when it is stopped' % running_allocation.id \
        in refused.text
    refused = client.post(path + '/reboot', headers=auth(tokens['acme']))
    assert refused.status_code == 409 and 'it can be rebooted only when it is running' in refused.text

    # Another tenant sees nothing; an operator may.
    assert client.post(path + '/stop', headers=auth(tokens['globex'])).status_code == 404
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == running_allocation.id)
                                    .values(state='stopped')))
    started = client.post(path + '/start', headers=auth(tokens['operator']))
    assert started.status_code == 202 and started.json()['state'] == 'starting'
    assert _last_audit(db)[0] == 'allocation.start' and _last_audit(db)[2] == {'state': 'stopped'}
    assert client.post(path + '/start', headers=auth(tokens['acme'])).json()['state'] == 'starting'
    assert client.post(path + '/bogus', headers=auth(tokens['acme'])).status_code in (404, 405)


@pytest.mark.parametrize('state, action, message', [
    ('requested', 'stop', 'is requested: it can be stopped only when it is running'),
    ('provisioning', 'reboot', 'is provisioning: it can be rebooted only when it is running'),
    ('stopped', 'reboot', 'is stopped: it can be rebooted only when it is running'),
    ('releasing', 'start', 'is releasing: it can be started only when it is stopped'),
    ('released', 'stop', 'is released: it can be stopped only when it is running'),
    ('running', 'start', None),
    ('stopped', 'stop', None),
    ('rebooting', 'reboot', None),
])
def test_what_each_state_allows(db, running_allocation, state, action, message):
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == running_allocation.id)
                                    .values(state=state)))
    if message is None:   # under way or done: nothing happens
        allocation = db.transact(power.request, tenant('acme'), running_allocation.id, action)
        assert allocation.state == state and _jobs(db, running_allocation.id) == [('allocate', 'pending')]
        return
    with pytest.raises(Exception) as info:
        db.transact(power.request, tenant('acme'), running_allocation.id, action)
    assert getattr(info.value, 'status', None) == 409 and message in str(info.value)
    assert _state(db, running_allocation.id) == state


@pytest.mark.slow
def test_the_worker_runs_stop_start_reboot_and_release(db, settings, project, node):  # noqa: F811
    allocation, _created = db.transact(service.reserve, tenant('acme'), _request())
    worker = Worker(db, settings)
    assert worker.drain() == 1 and _state(db, allocation.id) == 'running'
    db.transact(power.request, tenant('acme'), allocation.id, 'stop')
    assert worker.drain() == 1 and _state(db, allocation.id) == 'stopped'
    with db.read() as session:
        usage = session.execute(select(UsageRecord).where(UsageRecord.allocation_id == allocation.id)).scalar_one()
        events = [e.message for e in session.execute(select(Event).where(
            Event.allocation_id == allocation.id).order_by(Event.id)).scalars()]
    assert len(usage.stopped_periods) == 1 and usage.stopped_periods[0]['to'] is None
    assert events[-1] == 'stopped: the guest did not answer the ACPI power button: powered off'
    db.transact(power.request, tenant('acme'), allocation.id, 'start')
    assert worker.drain() == 1 and _state(db, allocation.id) == 'running'
    db.transact(power.request, tenant('acme'), allocation.id, 'reboot')
    assert worker.drain() == 1 and _state(db, allocation.id) == 'running'
    db.transact(power.request, tenant('acme'), allocation.id, 'stop')
    assert worker.drain() == 1
    db.transact(service.request_release, tenant('acme'), allocation.id)
    assert worker.drain() == 1 and _state(db, allocation.id) == 'released'
    slot = allocation.slot_id
    assert project.runs() == [['allocate', allocation.id, slot], ['stop', allocation.id, slot],
                              ['start', allocation.id, slot], ['reboot', allocation.id, slot],
                              ['stop', allocation.id, slot], ['release', allocation.id, slot]]
    with db.read() as session:
        usage = session.execute(select(UsageRecord).where(UsageRecord.allocation_id == allocation.id)).scalar_one()
        actions = [e.action for e in session.execute(select(AuditEntry).where(
            AuditEntry.target_id == allocation.id).order_by(AuditEntry.seq)).scalars()]
    assert [p['to'] is not None for p in usage.stopped_periods] == [True, True]
    assert usage.stopped_periods[-1]['to'] == usage.running_end.isoformat()
    assert actions == ['allocation.create', 'allocation.provision', 'allocation.run', 'allocation.stop',
                       'allocation.stopped', 'allocation.start', 'allocation.started', 'allocation.reboot',
                       'allocation.rebooted', 'allocation.stop', 'allocation.stopped', 'allocation.release',
                       'allocation.released']
    with db.read() as session:
        report = {r['allocation_id']: r for r in service.usage(session)}[allocation.id]
    assert report['stopped_seconds'] > 0 and report['running_seconds'] + report['stopped_seconds'] == \
        pytest.approx((usage.running_end - usage.running_start).total_seconds(), abs=0.01)


@pytest.mark.slow
def test_a_power_job_that_fails_for_good_leaves_the_state_the_node_confirmed(db, settings, project, node):  # noqa: F811
    allocation, _created = db.transact(service.reserve, tenant('acme'), _request())
    worker = Worker(db, settings)
    worker.drain()
    project.set_modes(n1='ok')
    _power_mode(project, 'fail')
    db.transact(power.request, tenant('acme'), allocation.id, 'stop')
    deadline = time.monotonic() + 60
    while _jobs(db, allocation.id)[-1][1] == 'pending' and time.monotonic() < deadline:
        worker.drain(timeout=60)   # the retry waits for its backoff
        time.sleep(0.1)
    assert _state(db, allocation.id) == 'running'
    assert _jobs(db, allocation.id)[-1] == ('stop', 'failed')
    with db.read() as session:
        last = session.execute(select(Event).where(Event.allocation_id == allocation.id)
                               .order_by(Event.id.desc()).limit(1)).scalar_one()
    assert last.kind == 'error' and last.message == 'running: stop failed after 2 attempts; the VM is as it was'
    assert 'fake stop failure' in last.data['detail']


def _request():
    from tests.controlplane.helpers import request
    return request()


def _power_mode(project, mode):
    import yaml
    path = project.inventory
    with open(path) as handle:
        inventory = yaml.safe_load(handle)
    for host in inventory['all']['hosts'].values():
        host['fake_power_mode'] = mode
    with open(path, 'w') as handle:
        yaml.safe_dump(inventory, handle)


def test_usage_does_not_count_stopped_time_as_running(db, running_allocation):
    t0 = (utcnow() - dt.timedelta(days=2)).replace(microsecond=0)

    def at(hours):
        return t0 + dt.timedelta(hours=hours)
    with db.write() as session:
        record = session.execute(select(UsageRecord).where(
            UsageRecord.allocation_id == running_allocation.id)).scalar_one()
        record.allocated_start, record.running_start, record.running_end, record.allocated_end = at(0), at(1), at(10), at(10)
        # stopped 2h-4h and 6h- (until the end at 10h)
        record.stopped_periods = [{'from': at(2).isoformat(), 'to': at(4).isoformat()},
                                  {'from': at(6).isoformat(), 'to': None}]
    with db.read() as session:
        whole = service.usage(session, 'acme')[0]
        window = service.usage(session, 'acme', since=at(3), until=at(7))[0]
    assert (whole['allocated_seconds'], whole['running_seconds'], whole['stopped_seconds']) == (
        10 * 3600.0, 3 * 3600.0, 6 * 3600.0)
    assert (window['allocated_seconds'], window['running_seconds'], window['stopped_seconds']) == (
        4 * 3600.0, 2 * 3600.0, 2 * 3600.0)


def test_the_console_is_read_through_the_worker_once_per_node(client, db, tokens, running_allocation, settings,  # noqa: F811
                                                              project):  # noqa: F811
    path = '/v1/allocations/%s/console' % running_allocation.id
    first = client.get(path, headers=auth(tokens['acme']))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body['text'] is None and body['refreshing'] is True and 'error' not in body
    # A storm of reads asks once.
    for _number in range(20):
        assert client.get(path, headers=auth(tokens['acme'])).json()['refreshing'] is True
    with db.read() as session:
        assert console.requested_by_node(session) == {'n1': {running_allocation.slot_id: running_allocation.id}}
    report = console.collect(db, settings)
    assert report == {'n1': {'recorded': 1, 'refused': 0}}
    assert console.collect(db, settings) == {}          # nothing asked since
    assert project.runs() == [['console', running_allocation.slot_id]]
    read = client.get(path, headers=auth(tokens['acme'])).json()
    assert read['text'] == 'boot 1\n' and read['refreshing'] is False and read['size'] == 100
    assert read['truncated'] is False and read['modified_at'].startswith('2025-12-02T')
    assert client.get(path, headers=auth(tokens['globex'])).status_code == 404
    assert 'error' in client.get(path, headers=auth(tokens['operator'])).json()


@pytest.mark.parametrize('entry, error', [
    (None, 'the entry is not an object'),
    ({'error': 'slot n1-s0 is not held by allocation x'}, 'the node could not read the console: slot n1-s0'),
    ({'allocation_id': 'other', 'text': '', 'size': 0, 'truncated': False, 'modified_at': 1764676830},
     'the entry names allocation'),
    ({'allocation_id': 'A', 'text': 'x' * (64 * 1024 + 1), 'size': 0, 'truncated': False, 'modified_at': 1764676830},
     'text is not a string of at most 65536 characters'),
    ({'allocation_id': 'A', 'text': '', 'size': -1, 'truncated': False, 'modified_at': 1764676830},
     'size -1 is not a byte count'),
    ({'allocation_id': 'A', 'text': '', 'size': 1, 'truncated': 'yes', 'modified_at': 1764676830},
     'truncated is not true or false'),
    ({'allocation_id': 'A', 'text': '', 'size': 1, 'truncated': True, 'modified_at': float('nan')},
     'modified_at nan is not a time'),
])
@pytest.mark.backends('sqlite')
def test_what_a_node_returns_for_a_console_is_checked(db, entry, error):
    with pytest.raises(console.BadConsole, match=None) as info:
        console.check_entry('A', entry)
    assert error in str(info.value)
    assert console.check_entry('A', {'missing': True})['text'] is None


def test_a_released_allocations_console_is_not_read_again(db, running_allocation):
    db.transact(console.get, tenant('acme'), running_allocation.id, 5.0)
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == running_allocation.id)
                                    .values(state='released')))
    with db.read() as session:
        assert console.requested_by_node(session) == {}
        assert session.get(AllocationConsole, running_allocation.id) is not None
    _allocation, _row, refreshing = db.transact(console.get, OPERATOR, running_allocation.id, 5.0)
    assert refreshing is False
