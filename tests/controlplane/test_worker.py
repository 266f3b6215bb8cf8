# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The outbox worker, driving the real ansible-runner and ansible-playbook against a small
stand-in project (tests/controlplane/fake_node: the allocate/release contract, with a mode
per node that sleeps, fails once, fails always or reports a wrong MAC).

Killing a worker mid-run and starting another leaves no allocation stuck and no slot
leaked; a failed allocation is compensated by a release; several workers share the outbox
without running a job twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import select

from gpuaas_control import audit, service
from gpuaas_control.config import Settings
from gpuaas_control.models import Allocation, AuditEntry, Event, OutboxJob
from gpuaas_control.worker import Worker, WorkerError
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import (
    OPERATOR, add_node, add_tenant, allocation_state, no_leaks, request, tenant, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow


@pytest.fixture
def node(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    return discovery


def _events(db, allocation_id):
    with db.read() as session:
        return session.execute(select(Event).where(Event.allocation_id == allocation_id)
                               .order_by(Event.id)).scalars().all()


def test_allocate_then_release(db, settings, project, node):
    allocation, _created = db.transact(service.reserve, tenant('acme'), request(hostname='train-1'))
    worker = Worker(db, settings)
    assert worker.drain() == 1
    got, slot, jobs, usage, events = allocation_state(db, allocation.id)
    assert got.state == 'running' and jobs == [('allocate', 'done', 1)]
    assert got.address == slot.ip and got.mac == slot.mac
    assert got.ssh == {'user': 'root', 'host': slot.ip, 'port': 22}
    assert got.access == {'ssh_host': '203.0.113.1', 'ssh_port': 22000 + int(slot.id.rsplit('-s', 1)[1]),
                          'user': 'gpuaas'}
    assert got.telemetry_token == 'tok-' + allocation.id
    assert got.timings['node'] == {'image': 0.5, 'seed': 0.1, 'vm': 1.0, 'total': 1.6}
    assert got.timings['control_plane']['attempts'] == 1
    assert usage.running_start == got.running_at
    assert 'task: Fail' in events and events[-1].startswith('running: ')
    # The node got the image as a file in the image directory, never a tenant's path.
    assert project.runs() == [['allocate', allocation.id, slot.id]]
    assert (project.state_dir / 'runs.log').read_text().split() == [
        'allocate', allocation.id, slot.id, '/var/lib/gpuaas/images/debian-12.qcow2']

    db.transact(service.request_release, tenant('acme'), allocation.id)
    assert worker.drain() == 1
    got, slot, jobs, usage, events = allocation_state(db, allocation.id)
    assert got.state == 'released' and slot.state == 'free' and slot.allocation_id is None
    assert jobs == [('allocate', 'done', 1), ('release', 'done', 1)]
    assert usage.allocated_end == usage.running_end == got.ended_at
    assert got.timings['release']['node'] == {'wipe': 0.2, 'total': 0.3}
    assert not os.listdir(settings.runs_dir)   # each run's private data dir is removed
    # Each state change, the worker's too, is an audit entry (one lifecycle table).
    with db.read() as session:
        entries = session.execute(select(AuditEntry).where(AuditEntry.target_id == allocation.id)
                                  .order_by(AuditEntry.seq)).scalars().all()
        assert audit.verify(session).ok
    assert [(e.action, e.actor.split(':')[0], e.after.get('slot_state')) for e in entries] == [
        ('allocation.create', 'test-acme', None), ('allocation.provision', 'worker', None),
        ('allocation.run', 'worker', None), ('allocation.release', 'test-acme', None),
        ('allocation.released', 'worker', 'free')]
    no_leaks(db)


def _files_holding(root, secret):
    """Every file under ``root`` whose bytes hold ``secret``."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, 'rb') as handle:
                if secret.encode() in handle.read():
                    found.append(path)
    return found


@pytest.mark.backends('sqlite')
def test_no_run_file_or_log_holds_the_telemetry_token(db, settings, project, node, caplog):
    """The stand-in's set_stats is not no_log, so its task result and the stats event both
    carry the token: the worker keeps it for the allocation row and writes neither."""
    caplog.set_level('DEBUG')
    settings = settings.model_copy(update={'keep_runs': 5})
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    worker = Worker(db, settings)
    assert worker.drain() == 1
    db.transact(service.request_release, tenant('acme'), allocation.id)
    assert worker.drain() == 1
    token = 'tok-' + allocation.id
    with db.read() as session:
        assert session.get(Allocation, allocation.id).telemetry_token == token
        details = [repr((e.message, e.data)) for e in session.execute(select(Event)).scalars()]
    kept = sorted(os.listdir(settings.runs_dir))
    assert len(kept) == 2 and all(name.startswith('done-job-') for name in kept), kept
    # ansible-runner's artifacts are all there (the events, stdout), and private.
    events = [path for path in _walk(settings.runs_dir) if '/job_events/' in path]
    assert events and any(path.endswith('/stdout') for path in _walk(settings.runs_dir))
    assert any(b'"telemetry_token": "********"' in open(path, 'rb').read() for path in events)
    for path in [settings.runs_dir] + [os.path.join(settings.runs_dir, name) for name in kept]:
        assert os.stat(path).st_mode & 0o777 == 0o700, path
    assert _files_holding(settings.runs_dir, token) == []
    assert token not in caplog.text and not [d for d in details if token in d]


def _walk(root):
    return [os.path.join(d, name) for d, _dirs, files in os.walk(root) for name in files]


@pytest.mark.backends('sqlite')
def test_kept_runs_are_pruned_to_the_newest_and_the_runs_directory_made_private(db, settings, project, node):
    os.makedirs(settings.runs_dir, mode=0o755)
    os.chmod(settings.runs_dir, 0o755)
    settings = settings.model_copy(update={'keep_runs': 1})
    worker = Worker(db, settings)
    for _run in range(2):
        allocation, _created = db.transact(service.reserve, tenant('acme'), request())
        assert worker.drain() == 1
    kept = os.listdir(settings.runs_dir)
    assert len(kept) == 1 and kept[0].startswith('done-job-2-'), kept
    assert os.stat(settings.runs_dir).st_mode & 0o777 == 0o700


@pytest.mark.backends('sqlite')
def test_a_transient_failure_is_retried(db, settings, project, node):
    project.set_modes(n1='flaky')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    worker = Worker(db, settings)
    worker.drain()
    time.sleep(0.4)   # the backoff
    worker.drain()
    got, _slot, jobs, _usage, events = allocation_state(db, allocation.id)
    assert got.state == 'running' and jobs == [('allocate', 'done', 2)]
    # The event says that it failed; what the playbook said is the operator's detail.
    failed = [e for e in _events(db, allocation.id) if e.message.startswith('attempt 1 of 2 failed')]
    assert failed[0].message.startswith('attempt 1 of 2 failed; retrying in ')
    assert failed[0].data['detail'] == 'failed: Fail on n1: fake node failure (flaky)'
    assert not any('fake node failure' in e for e in events)
    assert got.timings['control_plane']['attempts'] == 2


@pytest.mark.backends('sqlite')
@pytest.mark.parametrize('mode, runs, reason', [
    ('fail', 2, 'failed: Fail on n1: fake node failure (fail)'),
    ('badmac', 1, "the node reported another allocation than asked: mac is '52:54:00:00:00:00'"),
    ('badaccess', 1, "the node reported another allocation than asked: access.user 'Root; reboot' is not a valid"),
])
def test_a_failed_allocation_is_compensated_by_a_release(db, settings, project, node, mode, runs, reason):
    project.set_modes(n1=mode)
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    worker = Worker(db, settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        worker.drain()
        if allocation_state(db, allocation.id)[0].state == 'failed':
            break
        time.sleep(0.2)
    got, slot, jobs, usage, events = allocation_state(db, allocation.id)
    assert got.state == 'failed' and slot.state == 'free'
    assert jobs == [('allocate', 'failed', runs), ('release', 'done', 1)]
    assert 'provisioning failed after %d attempts; releasing the slot' % runs in events, events
    assert got.error.startswith('provisioning failed: ' + reason[:40])
    details = [e.data.get('detail', '') for e in _events(db, allocation.id)]
    assert any(d.startswith(reason) for d in details), details
    assert not any(reason[:30] in e for e in events)
    assert [r[0] for r in project.runs()] == ['allocate'] * runs + ['release']
    assert usage.running_start is None and usage.allocated_end is not None
    no_leaks(db)


@pytest.mark.backends('sqlite')
def test_a_release_that_cannot_finish_blocks_the_slot_until_an_operator_retries(db, settings, project, node):
    project.set_modes(n1='ok/fail')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    worker = Worker(db, settings)
    worker.drain()
    db.transact(service.request_release, tenant('acme'), allocation.id)
    worker.drain()
    time.sleep(0.4)
    worker.drain()
    got, slot, jobs, _usage, _events = allocation_state(db, allocation.id)
    assert got.state == 'failed' and got.error.startswith('release failed: failed: Fail on n1')
    assert slot.state == 'blocked' and slot.allocation_id == allocation.id
    assert jobs[-1] == ('release', 'failed', 2)
    # Nothing schedules a blocked slot; a tenant's repeated DELETE does nothing; an
    # operator's, once the node is fixed, releases it.
    db.transact(service.request_release, tenant('acme'), allocation.id)
    assert allocation_state(db, allocation.id)[2] == jobs
    project.set_modes(n1='ok/ok')
    db.transact(service.request_release, OPERATOR, allocation.id)
    worker.drain()
    got, slot, _jobs, _usage, _events = allocation_state(db, allocation.id)
    assert slot.state == 'free' and got.state == 'released'
    no_leaks(db)


def _processes_mentioning(text):
    """Processes whose command line holds ``text`` (the stand-in's long task names its
    state directory)."""
    found = []
    for entry in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                if text.encode() in handle.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def _sleeping(db, allocation_id):
    return lambda: 'task: Take long the first time' in allocation_state(db, allocation_id)[4]


def _run_into_the_long_task(db, settings, project):
    """An allocation whose allocate run (mode sleep) sits in its long task, run by a worker in
    a thread: (allocation, worker, thread)."""
    project.set_modes(n1='sleep')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    worker = Worker(db, settings)
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    wait_for(_sleeping(db, allocation.id), what='the long task')
    return allocation, worker, runner


def test_killing_the_worker_mid_run_then_another_resumes(db, db_url, settings, project, node):
    project.set_modes(n1='sleep')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    code = ('import sys; from gpuaas_control.config import Settings; '
            'from gpuaas_control.db import Database; from gpuaas_control.worker import Worker; '
            'Worker(Database(sys.argv[1]), Settings(db_url=sys.argv[1], project_dir=sys.argv[2], '
            'inventory=sys.argv[3], runs_dir=sys.argv[4], lease_seconds=2.0, poll_interval=0.2)'
            ', worker_id="doomed").run_forever()')
    doomed = subprocess.Popen([sys.executable, '-c', code, db_url, project.dir, project.inventory,
                               settings.runs_dir], start_new_session=True)
    try:
        wait_for(_sleeping(db, allocation.id), what='the first run to reach its long task')
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    got, slot, jobs, _usage, _events = allocation_state(db, allocation.id)
    assert got.state == 'provisioning' and jobs == [('allocate', 'running', 1)]

    # Another worker takes the job over once the dead one's lease runs out, and re-runs it.
    worker = Worker(db, settings, worker_id='survivor')
    wait_for(worker.run_once, timeout=30, what='the lease to expire')
    got, slot, jobs, _usage, events = allocation_state(db, allocation.id)
    assert got.state == 'running' and slot.allocation_id == allocation.id
    assert jobs == [('allocate', 'done', 2)]
    assert any('resumed: the worker before stopped answering' in e for e in events)
    assert [r[0] for r in project.runs()] == ['allocate', 'allocate']
    no_leaks(db)


@pytest.mark.backends('sqlite')
def test_releasing_while_it_provisions_cancels_the_run(db, settings, project, node):
    started = time.monotonic()
    allocation, worker, runner = _run_into_the_long_task(db, settings, project)
    db.transact(service.request_release, tenant('acme'), allocation.id)
    runner.join(60)
    assert time.monotonic() - started < 60   # cancelled, not waited out (the task sleeps 120 s)
    # Nothing of the cancelled run is left: not ansible-playbook's forked task worker, not
    # the task's own process.
    assert _processes_mentioning(str(project.state_dir)) == []
    worker.drain()
    got, slot, jobs, _usage, events = allocation_state(db, allocation.id)
    assert jobs == [('allocate', 'cancelled', 1), ('release', 'done', 1)]
    assert got.state == 'released' and slot.state == 'free'
    assert 'provisioning cancelled: the release was requested' in events
    no_leaks(db)


@pytest.mark.backends('sqlite')
def test_a_stopping_worker_hands_its_job_back(db, settings, project, node):
    allocation, worker, runner = _run_into_the_long_task(db, settings, project)
    worker.stop()
    runner.join(60)
    assert allocation_state(db, allocation.id)[2] == [('allocate', 'pending', 0)]
    assert _processes_mentioning(str(project.state_dir)) == []
    Worker(db, settings).drain()
    assert allocation_state(db, allocation.id)[0].state == 'running'


def test_several_workers_share_the_outbox(db, settings, project, node):
    ids = [db.transact(service.reserve, tenant('acme'), request())[0].id for _index in range(4)]
    workers = [Worker(db, settings, worker_id='w%d' % i) for i in range(2)]
    threads = [threading.Thread(target=w.run_forever) for w in workers]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(allocation_state(db, i)[0].state == 'running' for i in ids),
                 timeout=90, what='four allocations to run')
    finally:
        for w in workers:
            w.stop()
        for thread in threads:
            thread.join(60)
    runs = project.runs()
    assert sorted(r[1] for r in runs) == sorted(ids)     # each job ran exactly once
    with db.read() as session:
        claimed_by = set(session.execute(select(OutboxJob.claimed_by)).scalars())
    assert claimed_by <= {'w0', 'w1'}
    no_leaks(db)


@pytest.mark.backends('sqlite')
def test_configuration_is_checked_first(settings, db, tmp_path):
    for change, message in (({'project_dir': str(tmp_path / 'nope')}, 'project directory'),
                            ({'inventory': ''}, 'inventory'),
                            ({'release_playbook': 'playbooks/nope.yml'}, 'nope.yml')):
        bad = Settings(**dict(vars(settings), **change))
        with pytest.raises(WorkerError, match=message):
            Worker(db, bad)


@pytest.mark.backends('sqlite')
def test_the_worker_refuses_when_the_playbooks_would_load_another_copy_of_the_collection(
        settings, db, tmp_path, monkeypatch):
    """ansible-playbook loads the first gpuaas.slice on its search path; an older copy there
    (an earlier ansible-galaxy install in ~/.ansible/collections) would run old modules under
    this control plane."""
    from gpuaas_control import collection
    mine = str(collection.collection_root())
    assert Worker(db, settings).settings is settings   # this checkout's copy, through the suite's own path
    other = tmp_path / 'other'
    (other / 'ansible_collections' / 'gpuaas' / 'slice').mkdir(parents=True)
    monkeypatch.setenv('ANSIBLE_COLLECTIONS_PATH', '%s:%s' % (other, collection.collections_dir()))
    with pytest.raises(WorkerError, match='would load gpuaas.slice from %s/ansible_collections/gpuaas/slice, but '
                                          'this worker runs the copy in %s' % (other, mine)):
        Worker(db, settings)
    # The same copy reached through another link is the same copy.
    (tmp_path / 'linked' / 'ansible_collections' / 'gpuaas').mkdir(parents=True)
    os.symlink(mine, tmp_path / 'linked' / 'ansible_collections' / 'gpuaas' / 'slice')
    monkeypatch.setenv('ANSIBLE_COLLECTIONS_PATH', str(tmp_path / 'linked'))
    Worker(db, settings)
    # A copy beside the playbooks comes before every configured path.
    (tmp_path / 'project' / 'playbooks' / 'collections' / 'ansible_collections' / 'gpuaas' / 'slice').mkdir(
        parents=True)
    with pytest.raises(WorkerError, match='from %s/project/playbooks/collections/' % tmp_path):
        Worker(db, settings)


@pytest.mark.backends('sqlite')
def test_the_worker_refuses_when_the_playbooks_would_find_no_collection_or_ansible_cfg_is_broken(
        settings, db, tmp_path, monkeypatch):
    monkeypatch.setenv('ANSIBLE_COLLECTIONS_PATH', str(tmp_path / 'empty'))
    monkeypatch.setenv('ANSIBLE_COLLECTIONS_SCAN_SYS_PATH', 'false')
    with pytest.raises(WorkerError, match='would not find the gpuaas.slice collection .searched .*/empty'):
        Worker(db, settings)
    monkeypatch.delenv('ANSIBLE_COLLECTIONS_PATH')
    monkeypatch.delenv('ANSIBLE_COLLECTIONS_SCAN_SYS_PATH')
    broken = tmp_path / 'ansible.cfg'
    broken.write_text('[defaults\ncollections_path = /x\n')
    monkeypatch.setenv('ANSIBLE_CONFIG', str(broken))
    with pytest.raises(WorkerError, match='cannot tell which gpuaas.slice the playbooks would load'):
        Worker(db, settings)
