# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The outbox worker: claims jobs, runs the collection's playbooks through ansible-runner,
records what came back.

* **Claiming** is a transaction: the oldest runnable job (pending and due, or running with an
  expired lease: its worker died) whose allocation has no earlier unfinished job, locked with
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite's write lock serializes claims), gets a
  fresh claim token and a lease. Several workers may run at once.
* **Running**: a fresh private data directory per run, ``ident`` = the job id, a timeout,
  and a cancel callback that fires when the allocation's release is requested, when the
  worker is asked to stop, or when the lease was lost. A monitor thread renews the lease.
  Progress (task starts, failures) becomes allocation events as it happens.
* **Recording** is fenced by the claim token: a worker that lost its claim records nothing.
  A failure is retried with exponential backoff; an allocation that cannot be built after
  ``max_attempts`` is compensated by a release, so no half-built slot stays behind; a
  release that cannot finish blocks its slot for an operator.
* **Crash recovery** is the lease: a job whose worker died is claimed again when its lease
  expires and re-run; the playbooks are idempotent per allocation id, so a re-run completes
  the job (allocate) or the compensation (release).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased

from gpuaas_control import service
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import (
    FAILED,
    JOB_ALLOCATE,
    JOB_CANCELLED,
    JOB_DONE,
    JOB_FAILED,
    JOB_PENDING,
    JOB_RELEASE,
    JOB_RUNNING,
    PROVISIONING,
    RELEASED,
    RELEASING,
    REQUESTED,
    RUNNING,
    SLOT_BLOCKED,
    SLOT_FREE,
    Allocation,
    OutboxJob,
    Slot,
    UsageRecord,
    utcnow,
)

log = logging.getLogger('gpuaas_control.worker')

MAX_BACKOFF = 300.0
CANCEL_RELEASE = 'release requested'
CANCEL_STOP = 'worker stopping'
CANCEL_LOST = 'claim lost'


class WorkerError(RuntimeError):
    """The worker cannot run with this configuration."""


@dataclasses.dataclass
class Claim:
    """A claimed job and what running it needs (a snapshot: no session is kept open)."""

    job_id: int
    kind: str
    attempts: int
    token: str
    allocation_id: str
    tenant: str
    node_id: str
    slot_id: str
    slot_mac: str
    slot_ip: str
    allocation: dict
    # The approved slot record reserved for the allocation, as the slot table holds it: the node
    # checks this one slot against the host instead of discovering it whole.
    slot: dict
    queued_seconds: float


@dataclasses.dataclass
class Outcome:
    status: str                  # successful, failed, timeout, canceled
    rc: int | None
    result: dict | None
    error: str | None
    seconds: float
    cancel_reason: str | None = None


SLOT_RECORD = ('slot_index', 'gpu_address', 'companions', 'nvme_address', 'fabric_pf_address',
               'fabric_vf_pci_address', 'numa_node', 'cpulist', 'destructive_wipe_policy', 'mac', 'ip',
               'fingerprint')


def _slot_record(slot: Slot) -> dict:
    """The slot's approved record as the node's slot_check takes it (gpuaas_slot)."""
    return dict({key: getattr(slot, key) for key in SLOT_RECORD}, slot_id=slot.id)


def backoff(attempts: int, base: float) -> float:
    delay = min(MAX_BACKOFF, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)


def _short(text, limit=2000):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + '...'


class Worker:
    def __init__(self, db: Database, settings: Settings, worker_id: str | None = None):
        self.db = db
        self.settings = settings
        self.worker_id = worker_id or '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                                                    secrets.token_hex(3))
        self.stopping = threading.Event()
        self._check_settings()

    def _check_settings(self):
        project = self.settings.project_dir
        if not project or not os.path.isdir(project):
            raise WorkerError('the project directory %r does not exist: set GPUAAS_PROJECT_DIR to '
                              'the gpuaas.slice checkout (or --project-dir)' % project)
        for playbook in (self.settings.allocate_playbook, self.settings.release_playbook):
            if not os.path.isfile(os.path.join(project, playbook)):
                raise WorkerError('%s is not in the project directory %s' % (playbook, project))
        inventory = self.settings.inventory
        if not inventory or not os.path.exists(inventory):
            raise WorkerError('the inventory %r does not exist: set GPUAAS_INVENTORY (or '
                              '--inventory) to an inventory whose hosts are the node ids' % inventory)

    # -- the loop ----------------------------------------------------------------------------

    def stop(self):
        self.stopping.set()

    def run_forever(self, concurrency: int = 1):
        threads = [threading.Thread(target=self._loop, name='gpuaas-worker-%d' % i, daemon=True)
                   for i in range(max(1, concurrency))]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)

    def _loop(self):
        while not self.stopping.is_set():
            try:
                worked = self.run_once()
            except SQLAlchemyError:
                log.exception('database error; retrying')
                worked = False
            if not worked:
                self.stopping.wait(self.settings.poll_interval)

    def run_once(self) -> bool:
        """Claim and run one job; False when there was none."""
        claim = self.db.transact(self._claim)
        if claim is None:
            return False
        if claim is True:   # a job was settled without running anything
            return True
        outcome = self._execute(claim)
        self.db.transact(self._record, claim, outcome)
        return True

    def drain(self, timeout: float = 120.0) -> int:
        """Run jobs until none is runnable (tests and ``gpuaas worker --once``)."""
        done, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline and self.run_once():
            done += 1
        return done

    # -- claiming ----------------------------------------------------------------------------

    def _claim(self, session):
        now = utcnow()
        earlier = aliased(OutboxJob)
        blocked = select(earlier.id).where(
            earlier.allocation_id == OutboxJob.allocation_id, earlier.id < OutboxJob.id,
            earlier.status.in_((JOB_PENDING, JOB_RUNNING))).exists()
        job = session.execute(
            select(OutboxJob).where(
                or_(and_(OutboxJob.status == JOB_PENDING, OutboxJob.available_at <= now),
                    and_(OutboxJob.status == JOB_RUNNING, OutboxJob.lease_expires_at < now)),
                ~blocked)
            .order_by(OutboxJob.id).limit(1)
            .with_for_update(skip_locked=True, of=OutboxJob)).scalar_one_or_none()
        if job is None:
            return None
        allocation = session.get(Allocation, job.allocation_id, with_for_update=True)
        slot = session.get(Slot, allocation.slot_id)
        resumed = job.status == JOB_RUNNING
        if job.kind == JOB_ALLOCATE and allocation.state not in (REQUESTED, PROVISIONING):
            job.status, job.finished_at, job.updated_at = JOB_CANCELLED, now, now
            job.last_error = 'allocation is %s: nothing to provision' % allocation.state
            return True
        token = secrets.token_hex(8)
        job.status = JOB_RUNNING
        job.claimed_by = self.worker_id
        job.claim_token = token
        job.lease_expires_at = now + _seconds(self.settings.lease_seconds)
        job.attempts += 1
        job.updated_at = now
        note = ' (resumed: the worker before stopped answering)' if resumed else ''
        if job.kind == JOB_ALLOCATE:
            if allocation.state == REQUESTED:
                allocation.state = PROVISIONING
                allocation.updated_at = now
            service.add_event(session, allocation.id, 'state',
                              'provisioning: attempt %d on %s%s' % (job.attempts, self.worker_id, note),
                              {'state': PROVISIONING, 'attempt': job.attempts})
        else:
            service.add_event(session, allocation.id, 'progress',
                              'releasing: attempt %d on %s%s' % (job.attempts, self.worker_id, note),
                              {'state': allocation.state, 'attempt': job.attempts})
        spec = {
            'id': allocation.id,
            'tenant': allocation.tenant_id,
            'image': os.path.join(self.settings.image_dir, allocation.image),
            'image_checksum': allocation.image_checksum,
            'image_format': allocation.image_format,
            'ssh_keys': list(allocation.ssh_keys),
            'vcpus': allocation.vcpus,
            'memory_mib': allocation.memory_mib,
            'disk_gib': allocation.disk_gib,
        }
        if allocation.hostname:
            spec['hostname'] = allocation.hostname
        return Claim(job_id=job.id, kind=job.kind, attempts=job.attempts, token=token,
                     allocation_id=allocation.id, tenant=allocation.tenant_id,
                     node_id=allocation.node_id, slot_id=allocation.slot_id, slot_mac=slot.mac,
                     slot_ip=slot.ip, allocation=spec, slot=_slot_record(slot),
                     queued_seconds=(now - job.created_at).total_seconds())

    # -- running -----------------------------------------------------------------------------

    def _extravars(self, claim: Claim) -> dict:
        if claim.kind == JOB_ALLOCATE:
            return {'gpuaas_hosts': claim.node_id, 'gpuaas_slot_id': claim.slot_id,
                    'gpuaas_allocation': claim.allocation, 'gpuaas_slot': claim.slot}
        return {'gpuaas_hosts': claim.node_id, 'gpuaas_slot_id': claim.slot_id,
                'gpuaas_allocation_id': claim.allocation_id}

    def _execute(self, claim: Claim) -> Outcome:
        import ansible_runner  # imported here: the API process never needs it

        cancel = {'reason': None}
        done = threading.Event()
        monitor = threading.Thread(target=self._monitor, args=(claim, cancel, done), daemon=True)
        captured = {'result': None, 'error': None}

        def on_event(event):
            self._on_event(claim, event, captured)
            return True

        os.makedirs(self.settings.runs_dir, mode=0o700, exist_ok=True)
        private = tempfile.mkdtemp(prefix='job-%d-' % claim.job_id, dir=self.settings.runs_dir)
        playbook = (self.settings.allocate_playbook if claim.kind == JOB_ALLOCATE
                    else self.settings.release_playbook)
        started = time.monotonic()
        monitor.start()
        try:
            runner = ansible_runner.run(
                private_data_dir=private,
                ident=str(claim.job_id),
                project_dir=os.path.abspath(self.settings.project_dir),
                playbook=playbook,
                inventory=os.path.abspath(self.settings.inventory),
                extravars=self._extravars(claim),
                cancel_callback=lambda: cancel['reason'] is not None,
                event_handler=on_event,
                timeout=self.settings.job_timeout,
                settings={'pexpect_timeout': 0.5, 'suppress_ansible_output': True},
                quiet=True,
            )
            status, rc = runner.status, runner.rc
        except Exception as exc:  # noqa: BLE001 - ansible-runner raises bare exceptions
            # (CallbackError, ConfigurationError, OSError): any is a failed attempt, not a crash.
            log.exception('job %d: ansible-runner failed', claim.job_id)
            status, rc = 'failed', None
            captured['error'] = captured['error'] or 'ansible-runner: %s' % exc
        finally:
            done.set()
            monitor.join()
            _end_leftovers(private)
            if not self.settings.keep_runs:
                shutil.rmtree(private, ignore_errors=True)
        seconds = time.monotonic() - started
        error = captured['error']
        if status == 'timeout':
            error = 'the playbook ran past the job timeout (%ds)' % self.settings.job_timeout
        elif status == 'failed' and not error:
            error = 'the playbook failed (rc %s)' % rc
        return Outcome(status=status, rc=rc, result=captured['result'], error=error,
                       seconds=seconds, cancel_reason=cancel['reason'])

    def _monitor(self, claim: Claim, cancel: dict, done: threading.Event):
        """Renew the lease; cancel the run on a release request, a stop or a lost claim."""
        interval = max(0.2, min(1.0, self.settings.lease_seconds / 3))
        while not done.wait(interval):
            if self.stopping.is_set():
                cancel['reason'] = CANCEL_STOP
                continue
            try:
                with self.db.write() as session:
                    renewed = session.execute(
                        update(OutboxJob).where(OutboxJob.id == claim.job_id,
                                                OutboxJob.claim_token == claim.token)
                        .values(lease_expires_at=utcnow() + _seconds(self.settings.lease_seconds))
                        .execution_options(synchronize_session=False)).rowcount
                    state = session.execute(select(Allocation.state).where(
                        Allocation.id == claim.allocation_id)).scalar_one()
            except SQLAlchemyError:
                log.exception('job %d: could not renew the lease', claim.job_id)
                continue
            if not renewed:
                cancel['reason'] = CANCEL_LOST
            elif claim.kind == JOB_ALLOCATE and state == RELEASING:
                cancel['reason'] = CANCEL_RELEASE

    def _on_event(self, claim: Claim, event: dict, captured: dict):
        kind = event.get('event')
        data = event.get('event_data') or {}
        message = None
        if kind == 'playbook_on_task_start':
            message, level = 'task: %s' % (data.get('task') or data.get('name') or '?'), 'progress'
        elif kind in ('runner_on_failed', 'runner_on_unreachable') and not data.get('ignore_errors'):
            result = data.get('res') or {}
            reason = result.get('msg') or result.get('stderr') or 'failed'
            message = '%s: %s on %s: %s' % ('unreachable' if kind == 'runner_on_unreachable'
                                            else 'failed', data.get('task') or '?',
                                            data.get('host') or '?', _short(reason, 500))
            level = 'error'
            captured['error'] = message
        elif kind == 'playbook_on_stats':
            artifact = data.get('artifact_data') or {}
            captured['result'] = artifact.get('gpuaas_result')
        if message is None:
            return
        try:
            self.db.transact(lambda s: service.add_event(s, claim.allocation_id, level, message,
                                                         {'job': claim.job_id,
                                                          'attempt': claim.attempts}))
        except SQLAlchemyError:
            log.exception('job %d: could not record an event', claim.job_id)

    # -- recording ---------------------------------------------------------------------------

    def _record(self, session, claim: Claim, outcome: Outcome):
        job = session.execute(select(OutboxJob).where(
            OutboxJob.id == claim.job_id, OutboxJob.claim_token == claim.token,
            OutboxJob.status == JOB_RUNNING).with_for_update()).scalar_one_or_none()
        if job is None:
            log.warning('job %d: the claim was lost while it ran; its result is dropped '
                        '(the job runs again)', claim.job_id)
            return
        allocation = session.get(Allocation, claim.allocation_id, with_for_update=True)
        now = utcnow()
        job.updated_at = now
        job.lease_expires_at = None

        if outcome.cancel_reason == CANCEL_STOP or outcome.cancel_reason == CANCEL_LOST:
            # Handed back: the next worker runs it again from the start (idempotent).
            job.status, job.claim_token, job.available_at = JOB_PENDING, None, now
            job.attempts = max(0, job.attempts - 1)
            service.add_event(session, allocation.id, 'progress',
                              'attempt interrupted (%s); it will run again' % outcome.cancel_reason)
            return
        if outcome.cancel_reason == CANCEL_RELEASE:
            job.status, job.finished_at = JOB_CANCELLED, now
            job.last_error = 'cancelled: the release was requested while it ran'
            service.add_event(session, allocation.id, 'progress',
                              'provisioning cancelled: the release was requested')
            return

        error, permanent = outcome.error, False
        if outcome.status == 'successful':
            if claim.kind == JOB_ALLOCATE:
                error, permanent = self._check_allocate_result(claim, outcome.result)
            else:
                error = self._check_release_result(claim, outcome.result)
        if error is None:
            job.status, job.finished_at, job.last_error = JOB_DONE, now, None
            if claim.kind == JOB_ALLOCATE:
                self._allocated(session, claim, allocation, outcome, now)
            else:
                self._released(session, claim, allocation, outcome, now)
            return

        job.last_error = _short(error)
        if not permanent and job.attempts < self.settings.max_attempts:
            delay = backoff(job.attempts, self.settings.retry_base)
            job.status, job.claim_token = JOB_PENDING, None
            job.available_at = now + _seconds(delay)
            service.add_event(session, allocation.id, 'error',
                              'attempt %d of %d failed: %s; retrying in %.1fs'
                              % (job.attempts, self.settings.max_attempts, _short(error, 500), delay),
                              {'attempt': job.attempts, 'retry_in': round(delay, 3)})
            return
        job.status, job.finished_at = JOB_FAILED, now
        if claim.kind == JOB_ALLOCATE:
            self._compensate(session, claim, allocation, error, now)
        else:
            self._release_failed(session, claim, allocation, error, now)

    def _check_allocate_result(self, claim: Claim, result):
        if not isinstance(result, dict):
            return 'the allocate playbook returned no gpuaas_result (set_stats)', False
        expected = {'allocation_id': claim.allocation_id, 'slot_id': claim.slot_id,
                    'node_id': claim.node_id, 'state': 'running', 'mac': claim.slot_mac}
        wrong = ['%s is %r, not %r' % (key, result.get(key), value)
                 for key, value in expected.items() if result.get(key) != value]
        try:
            ipaddress.IPv4Address(str(result.get('address')))
        except ValueError:
            wrong.append('address %r is not an IPv4 address' % (result.get('address'),))
        if wrong:
            return 'the node reported another allocation than asked: ' + '; '.join(wrong), True
        return None, False

    def _check_release_result(self, claim: Claim, result):
        if not isinstance(result, dict):
            return 'the release playbook returned no gpuaas_result (set_stats)'
        if result.get('state') != 'released' or result.get('slot_id', claim.slot_id) != claim.slot_id:
            return 'the release playbook reported %r' % ({k: result.get(k) for k in ('state', 'slot_id')},)
        return None

    def _allocated(self, session, claim: Claim, allocation: Allocation, outcome: Outcome, now):
        result = outcome.result
        ssh = result.get('ssh') if isinstance(result.get('ssh'), dict) else {}
        allocation.address = str(result['address'])
        allocation.ssh = {'user': str(ssh.get('user') or 'root'),
                          'host': str(ssh.get('host') or result['address']),
                          'port': int(ssh.get('port') or 22)}
        allocation.telemetry_token = (str(result['telemetry_token'])
                                      if result.get('telemetry_token') else None)
        allocation.hostdevs_attached = bool(result.get('hostdevs_attached'))
        allocation.timings = dict(allocation.timings or {}, node=result.get('timings') or {},
                                  control_plane={
                                      'queued': round(claim.queued_seconds, 3),
                                      'attempts': claim.attempts,
                                      'runner': round(outcome.seconds, 3),
                                      'total': round((now - allocation.created_at).total_seconds(), 3),
                                  })
        allocation.updated_at = now
        if allocation.address != claim.slot_ip:
            service.add_event(session, allocation.id, 'progress',
                              'warning: the node reports address %s, the layout says %s'
                              % (allocation.address, claim.slot_ip))
        if allocation.state != PROVISIONING:
            service.add_event(session, allocation.id, 'progress',
                              'provisioned, but the allocation is %s: not running it'
                              % allocation.state)
            return
        allocation.state = RUNNING
        allocation.running_at = now
        usage = session.execute(select(UsageRecord).where(
            UsageRecord.allocation_id == allocation.id)).scalar_one()
        usage.running_start = now
        service.add_event(session, allocation.id, 'state', 'running: %s, ssh %s@%s'
                          % (allocation.address, allocation.ssh['user'], allocation.ssh['host']),
                          {'state': RUNNING, 'timings': allocation.timings})

    def _compensate(self, session, claim: Claim, allocation: Allocation, error, now):
        """The allocation cannot be built: release whatever part of it exists."""
        allocation.error = _short(error)
        allocation.updated_at = now
        service.add_event(session, allocation.id, 'error',
                          'provisioning failed after %d attempts: %s; releasing the slot'
                          % (claim.attempts, _short(error, 500)))
        if allocation.state != RELEASING:
            allocation.state = RELEASING
            session.add(OutboxJob(allocation_id=allocation.id, kind=JOB_RELEASE, status=JOB_PENDING,
                                  attempts=0, available_at=now, created_at=now, updated_at=now))
            service.add_event(session, allocation.id, 'state', 'releasing: compensating',
                              {'state': RELEASING})

    def _released(self, session, claim: Claim, allocation: Allocation, outcome: Outcome, now):
        final = FAILED if (allocation.error and allocation.running_at is None) else RELEASED
        allocation.state = final
        allocation.ended_at = now
        allocation.updated_at = now
        allocation.timings = dict(allocation.timings or {}, release={
            'node': (outcome.result or {}).get('timings') or {},
            'runner': round(outcome.seconds, 3)})
        slot = session.get(Slot, claim.slot_id, with_for_update=True)
        if slot.allocation_id == allocation.id:
            slot.state, slot.allocation_id, slot.state_reason = SLOT_FREE, None, None
            slot.updated_at = now
        self._close_usage(session, allocation, now)
        service.add_event(session, allocation.id, 'state', '%s: slot %s is free again'
                          % (final, claim.slot_id), {'state': final})

    def _release_failed(self, session, claim: Claim, allocation: Allocation, error, now):
        allocation.state = FAILED
        allocation.error = _short('release failed: %s' % error)
        allocation.ended_at = allocation.ended_at or now
        allocation.updated_at = now
        slot = session.get(Slot, claim.slot_id, with_for_update=True)
        if slot.allocation_id == allocation.id:
            slot.state = SLOT_BLOCKED
            slot.state_reason = _short('release of %s failed after %d attempts: %s (fix the node, '
                                       'then release the allocation again)'
                                       % (allocation.id, claim.attempts, error))
            slot.updated_at = now
        self._close_usage(session, allocation, now)
        service.add_event(session, allocation.id, 'error',
                          'release failed after %d attempts: %s; slot %s is blocked for an operator'
                          % (claim.attempts, _short(error, 500), claim.slot_id), {'state': FAILED})

    @staticmethod
    def _close_usage(session, allocation: Allocation, now):
        usage = session.execute(select(UsageRecord).where(
            UsageRecord.allocation_id == allocation.id)).scalar_one()
        usage.allocated_end = usage.allocated_end or now
        if usage.running_start is not None:
            usage.running_end = usage.running_end or now


def _leftovers(marker: str) -> set:
    """The processes of a run that outlived it. On a cancel or a timeout ansible-runner kills
    ansible-playbook's process group, but ansible-playbook's forked task workers run in a
    session of their own, so they (and the task they run) would carry on. Their command line
    is still ansible-playbook's, naming the run's private data directory; everything they
    started is found through the parent links."""
    table = {}
    try:
        entries = os.listdir('/proc')
    except OSError:
        return set()
    needle = marker.encode()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                cmdline = handle.read()
            with open('/proc/%s/stat' % entry, encoding='ascii', errors='replace') as handle:
                ppid = int(handle.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, needle in cmdline)
    found = {pid for pid, (_ppid, named) in table.items() if named}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _named) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(os.getpid())
    return found


def _end_leftovers(marker: str):
    for pid in _leftovers(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            log.warning('killed process %d left over by a run in %s', pid, marker)
        except OSError:
            pass


def _seconds(value):
    import datetime as dt
    return dt.timedelta(seconds=value)
