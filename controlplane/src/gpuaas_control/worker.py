# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The outbox worker: claims jobs, runs the collection's playbooks through ansible-runner,
records what came back.

* **Claiming** is a transaction: the oldest runnable job (pending and due, or running with an
  expired lease: its worker died) whose allocation has no earlier unfinished job, locked with
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite's write lock serializes claims), gets a
  fresh claim token and a lease. Several workers may run at once.
* **Running** (``runs``): ansible-runner in a fresh private data directory, cancelled on a
  release request, a stop or a lost lease; progress becomes allocation events.
* **Recording** (``outcomes``) is fenced by the claim token: a worker that lost its claim
  records nothing.
  A failure is retried with exponential backoff; an allocation that cannot be built after
  ``max_attempts`` is compensated by a release, so no half-built slot stays behind; a
  release that cannot finish blocks its slot for an operator.
* **Crash recovery** is the lease: a job whose worker died is claimed again when its lease
  expires and re-run; the playbooks are idempotent per allocation id, so a re-run completes
  the job (allocate) or the compensation (release).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased

from gpuaas_control import audit, collection, console, fleet, lifecycle, networks, outcomes, power, service, telemetry
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import (
    JOB_ALLOCATE,
    JOB_CANCELLED,
    JOB_DONE,
    JOB_FAILED,
    JOB_NETWORK,
    JOB_PENDING,
    JOB_RUNNING,
    POWER_JOBS,
    PROVISIONING,
    REQUESTED,
    Allocation,
    Node,
    OutboxJob,
    Slot,
    utcnow,
)
from gpuaas_control.runs import CANCEL_LOST, CANCEL_RELEASE, CANCEL_STOP, Claim, Outcome, Run, seconds, short

log = logging.getLogger('gpuaas_control.worker')

MAX_BACKOFF = 300.0


class WorkerError(RuntimeError):
    """The worker cannot run with this configuration."""


SLOT_RECORD = ('slot_index', 'gpu_address', 'companions', 'nvme_address', 'fabric_pf_address',
               'fabric_vf_index', 'fabric_vf_pci_address', 'numa_node', 'cpulist', 'vcpus', 'memory_mib', 'host_cpulist',
               'bar_mib', 'destructive_wipe_policy', 'mac', 'ip', 'fingerprint')


def slot_record(slot: Slot) -> dict:
    """The slot's approved record as the node's slot_check_info takes it (the job's gpuaas_slot)."""
    return dict({key: getattr(slot, key) for key in SLOT_RECORD}, slot_id=slot.id)


def backoff(attempts: int, base: float) -> float:
    delay = min(MAX_BACKOFF, base * (2 ** max(0, attempts - 1)))
    return delay * random.uniform(0.8, 1.2)


# How many candidates a claim reads at once: enough to find a job of an idle node behind
# jobs of nodes that other claims are locking right now.
CANDIDATES = 16


def _runnable(job, now):
    """Pending and due, or running with an expired lease (its worker died)."""
    return or_(and_(job.status == JOB_PENDING, job.available_at <= now),
               and_(job.status == JOB_RUNNING, job.lease_expires_at < now))


def _job_node_of(job_allocation, cleanup_slot):
    """The node a job runs on: the slot a cleanup releases is on its own node; any other job
    runs on its allocation's node."""
    return func.coalesce(cleanup_slot.node_id, job_allocation.node_id)


_BUSY = (aliased(Allocation), aliased(Slot))
_BUSY_JOB = aliased(OutboxJob)


def _busy_nodes(now):
    """The nodes that run a job now (running, its lease live)."""
    job_allocation, cleanup_slot = _BUSY
    return (select(_job_node_of(job_allocation, cleanup_slot)).select_from(_BUSY_JOB)
            .join(job_allocation, job_allocation.id == _BUSY_JOB.allocation_id)
            .outerjoin(cleanup_slot, cleanup_slot.id == _BUSY_JOB.slot_id)
            .where(_BUSY_JOB.status == JOB_RUNNING, _BUSY_JOB.lease_expires_at >= now))


def _candidates(now):
    """(job id, node id) of the oldest runnable jobs whose allocation has no earlier
    unfinished job (of the same slot: a cleanup waits for no other job), on reachable nodes
    that run no job now. Read without locks: ``Worker._take`` locks and checks again."""
    cleanup_slot = aliased(Slot)
    node = _job_node_of(Allocation, cleanup_slot)
    earlier = aliased(OutboxJob)
    blocked = select(earlier.id).where(
        earlier.allocation_id == OutboxJob.allocation_id, earlier.id < OutboxJob.id,
        earlier.status.in_((JOB_PENDING, JOB_RUNNING)),
        func.coalesce(earlier.slot_id, '') == func.coalesce(OutboxJob.slot_id, '')).exists()
    unreachable = select(Node.id).where(Node.unreachable_since.is_not(None))
    return (select(OutboxJob.id, node).join(Allocation, Allocation.id == OutboxJob.allocation_id)
            .outerjoin(cleanup_slot, cleanup_slot.id == OutboxJob.slot_id)
            .where(_runnable(OutboxJob, now), ~blocked, node.not_in(unreachable), node.not_in(_busy_nodes(now)))
            .order_by(OutboxJob.id).limit(CANDIDATES))


class Worker:
    def __init__(self, db: Database, settings: Settings, worker_id: str | None = None):
        self.db = db
        self.settings = settings
        self.worker_id = worker_id or '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                                                    secrets.token_hex(3))
        self.actor = audit.Actor(('worker:' + self.worker_id)[:128], 'system')
        self.stopping = threading.Event()
        self._check_settings()

    def _check_settings(self):
        project = self.settings.project_dir
        if not project or not os.path.isdir(project):
            raise WorkerError('the project directory %r does not exist: set GPUAAS_PROJECT_DIR to '
                              'the gpuaas.slice checkout (or --project-dir)' % project)
        for playbook in (self.settings.allocate_playbook, self.settings.release_playbook, self.settings.stop_playbook,
                         self.settings.start_playbook, self.settings.reboot_playbook, self.settings.network_playbook):
            if not os.path.isfile(os.path.join(project, playbook)):
                raise WorkerError('%s is not in the project directory %s' % (playbook, project))
        inventory = self.settings.inventory
        if not inventory or not os.path.exists(inventory):
            raise WorkerError('the inventory %r does not exist: set GPUAAS_INVENTORY (or '
                              '--inventory) to an inventory whose hosts are the node ids' % inventory)
        self._check_collection()

    def _check_collection(self):
        """The playbooks must run the collection this worker's own code comes from."""
        mine = str(collection.collection_root())
        try:
            theirs, searched = collection.ansible_finds(self.settings.project_dir, self.settings.allocate_playbook)
        except Exception as exc:  # noqa: BLE001 - Ansible's configuration raises its own errors
            raise WorkerError('cannot tell which gpuaas.slice the playbooks would load: %s' % exc) from None
        if theirs is None:
            raise WorkerError('ansible-playbook would not find the gpuaas.slice collection (searched %s): put '
                              'the directory that holds ansible_collections/gpuaas/slice on ANSIBLE_COLLECTIONS_PATH'
                              % ', '.join(searched))
        if theirs != mine:
            raise WorkerError('ansible-playbook would load gpuaas.slice from %s, but this worker runs the copy in %s: '
                              'the playbooks and the control plane must be one copy. Put %s first on '
                              'ANSIBLE_COLLECTIONS_PATH, or remove the other copy'
                              % (theirs, mine, collection.collections_dir()))

    # -- the loop ----------------------------------------------------------------------------

    def stop(self):
        self.stopping.set()

    def run_forever(self, concurrency: int | None = None):
        """Run jobs on ``concurrency`` threads (GPUAAS_WORKER_CONCURRENCY when None): jobs of
        different nodes at once, of one node one at a time (``_claim``)."""
        concurrency = concurrency or self.settings.worker_concurrency
        threads = [threading.Thread(target=self._loop, name='gpuaas-worker-%d' % i, daemon=True)
                   for i in range(max(1, concurrency))]
        if self.settings.telemetry_interval:
            threads.append(threading.Thread(target=self._telemetry_loop, name='gpuaas-telemetry', daemon=True))
        if self.settings.console_poll_interval:
            threads.append(threading.Thread(target=self._console_loop, name='gpuaas-console', daemon=True))
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

    def _telemetry_loop(self):
        """Collect the running allocations' telemetry every ``telemetry_interval`` seconds."""
        while not self.stopping.wait(self.settings.telemetry_interval):
            try:
                telemetry.collect(self.db, self.settings, self.actor)
            except (SQLAlchemyError, OSError):
                log.exception('telemetry not collected (the database, or the runs directory); '
                              'trying again next interval')

    def _console_loop(self):
        """Read the consoles tenants asked for, each node once per ``console_poll_interval``."""
        while not self.stopping.wait(self.settings.console_poll_interval):
            try:
                console.collect(self.db, self.settings)
            except (SQLAlchemyError, OSError):
                log.exception('consoles not read (the database, or the runs directory); trying again')

    def run_once(self) -> bool:
        """Probe an unreachable node whose probe is due, or claim and run one job; False when
        there was nothing to do."""
        node_id = self.db.transact(fleet.claim_probe, self.settings)
        if node_id is not None:
            error = fleet.probe(self.settings, node_id)
            self.db.transact(fleet.record_probe, self.actor, self.settings, node_id, error)
            return True
        claim = self.db.transact(self._claim)
        if claim is None:
            return False
        if claim is True:   # a job was settled without running anything
            return True
        outcome = Run(self.db, self.settings, self.stopping, claim).execute()
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
        """The oldest runnable job whose node is free, claimed; None when there is none, True
        when one was settled without running anything."""
        now = utcnow()
        for job_id, node_id in session.execute(_candidates(now)).all():
            job = self._take(session, job_id, node_id, now)
            if job is not None:
                return self._claimed(session, job, node_id, now)
        return None

    @staticmethod
    def _take(session, job_id: int, node_id: str, now):
        """The candidate job locked for this claim, or None: its node is locked by another
        claim right now (skipped: PostgreSQL), or, read again under the node's lock, runs a
        job with a live lease or stopped answering, or the job was taken meanwhile.

        The node's row lock is what serializes claims per node: two workers that both saw
        two jobs of an idle node in their snapshots meet on it, and the second, reading
        after the first committed (READ COMMITTED: a new snapshot per statement), sees the
        first job running. SQLite's write transaction serializes the claims whole."""
        locked = session.execute(select(Node.id, Node.unreachable_since).where(Node.id == node_id)
                                 .with_for_update(skip_locked=True)).first()
        if locked is None or locked.unreachable_since is not None:
            return None
        if session.execute(_busy_nodes(now).where(_job_node_of(*_BUSY) == node_id).limit(1)).first():
            return None
        return session.execute(select(OutboxJob).where(OutboxJob.id == job_id, _runnable(OutboxJob, now))
                               .with_for_update(skip_locked=True)).scalar_one_or_none()

    def _claimed(self, session, job, node_id, now):
        allocation = session.get(Allocation, job.allocation_id, with_for_update=True)
        cleanup = job.slot_id is not None
        slot = fleet.cleanup_slot(session, job) if cleanup else session.get(Slot, allocation.slot_id)
        resumed = job.status == JOB_RUNNING
        if cleanup and slot is None:
            job.status, job.finished_at, job.updated_at = JOB_CANCELLED, now, now
            job.last_error = 'the slot is no longer blocked by this allocation: nothing to release'
            return True
        if job.kind == JOB_ALLOCATE and allocation.state not in (REQUESTED, PROVISIONING):
            job.status, job.finished_at, job.updated_at = JOB_CANCELLED, now, now
            job.last_error = 'allocation is %s: nothing to provision' % allocation.state
            return True
        if job.kind == JOB_NETWORK:
            return self._claimed_network(session, job, allocation, now)
        power_action = lifecycle.POWER_BY_JOB.get(job.kind)
        if power_action and allocation.state != lifecycle.POWER[power_action]['via']:
            # A release overtook it: its VM goes with the slot.
            job.status, job.finished_at, job.updated_at = JOB_CANCELLED, now, now
            job.last_error = 'allocation is %s: nothing to %s' % (allocation.state, power_action)
            return True
        # Before any audit entry of this transaction: fabric_host may roll back a savepoint.
        network = networks.plan(session, self.settings, allocation, slot, job.kind == JOB_ALLOCATE)
        token = secrets.token_hex(8)
        job.status = JOB_RUNNING
        job.claimed_by = self.worker_id
        job.claim_token = token
        job.lease_expires_at = now + seconds(self.settings.lease_seconds)
        job.attempts += 1
        job.updated_at = now
        note = ' (resumed: the worker before stopped answering)' if resumed else ''
        if job.kind == JOB_ALLOCATE:
            message = 'provisioning: attempt %d on %s%s' % (job.attempts, self.worker_id, note)
            if allocation.state == REQUESTED:
                lifecycle.move(session, self.actor, allocation, PROVISIONING, message,
                               data={'attempt': job.attempts}, now=now)
            else:
                service.add_event(session, allocation.id, 'state', message,
                                  {'state': PROVISIONING, 'attempt': job.attempts})
        else:
            service.add_event(session, allocation.id, 'progress',
                              '%s: attempt %d on %s%s' % ('releasing slot %s' % slot.id if cleanup else allocation.state,
                                                          job.attempts, self.worker_id, note),
                              {'state': allocation.state, 'attempt': job.attempts})
        spec = {
            'id': allocation.id,
            'tenant': allocation.tenant_id,
            'image': os.path.join(self.settings.image_dir, allocation.image),
            'image_checksum': allocation.image_checksum,
            'image_format': allocation.image_format,
            'ssh_keys': list(allocation.ssh_keys),
            'ssh_source_cidrs': list(allocation.ssh_source_cidrs or []),
            'vcpus': allocation.vcpus,
            'memory_mib': allocation.memory_mib,
            'disk_gib': allocation.disk_gib,
        }
        if allocation.hostname:
            spec['hostname'] = allocation.hostname
        if network is not None:
            spec['network'] = network
        node = session.get(Node, node_id)
        facts = telemetry.approved_facts(slot, node.discovery if node is not None else None)
        if facts is not None:
            spec['approved_facts'] = facts
        return Claim(job_id=job.id, kind=job.kind, attempts=job.attempts, token=token,
                     allocation_id=allocation.id, tenant=allocation.tenant_id,
                     node_id=slot.node_id, slot_id=slot.id, slot_mac=slot.mac,
                     slot_ip=slot.ip, allocation=spec, slot=slot_record(slot),
                     queued_seconds=(now - job.created_at).total_seconds(), cleanup=cleanup)

    def _claimed_network(self, session, job, allocation, now):
        """A network job: the tenant's plan for its carrier's node, computed now (the newest
        word); cancelled when the node holds none of the tenant's allocations any more."""
        carrier = networks.carrier(session, allocation)
        plan = networks.overlay_plan(session, self.settings, carrier) if carrier is not None else None
        if plan is None:
            job.status, job.finished_at, job.updated_at = JOB_CANCELLED, now, now
            job.last_error = ('node %s holds no live allocation of tenant %s any more: nothing to update'
                              % (allocation.node_id, allocation.tenant_id))
            return True
        slot = session.get(Slot, carrier.slot_id)
        job.allocation_id = carrier.id
        job.status, job.claimed_by, job.claim_token = JOB_RUNNING, self.worker_id, secrets.token_hex(8)
        job.lease_expires_at = now + seconds(self.settings.lease_seconds)
        job.attempts += 1
        job.updated_at = now
        return Claim(job_id=job.id, kind=job.kind, attempts=job.attempts, token=job.claim_token,
                     allocation_id=carrier.id, tenant=carrier.tenant_id, node_id=slot.node_id, slot_id=slot.id,
                     slot_mac=slot.mac, slot_ip=slot.ip, allocation={'id': carrier.id, 'network': plan},
                     slot=slot_record(slot), queued_seconds=(now - job.created_at).total_seconds())

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

        if outcome.unreachable is not None:
            fleet.unreachable(session, self.actor, self.settings, claim, job, allocation, outcome, now)
            return
        error, permanent = outcome.error, False
        power_job = claim.kind in POWER_JOBS
        if claim.kind == JOB_NETWORK:
            self._record_network(session, claim, job, outcome, now)
            return
        if outcome.status == 'successful':
            if claim.kind == JOB_ALLOCATE:
                error, permanent = outcomes.check_allocate_result(claim, outcome.result)
            elif power_job:
                error = power.check_result(claim, outcome.result)
            else:
                error = outcomes.check_release_result(claim, outcome.result)
        if error is None:
            job.status, job.finished_at, job.last_error = JOB_DONE, now, None
            if claim.cleanup:
                fleet.cleaned(session, self.actor, claim, now)
            elif claim.kind == JOB_ALLOCATE:
                outcomes.allocated(session, self.actor, claim, allocation, outcome, now)
            elif power_job:
                power.done(session, self.actor, claim, allocation, outcome, now)
            else:
                outcomes.released(session, self.actor, claim, allocation, outcome, now)
            return

        job.last_error = short(error)
        if not permanent and job.attempts < self.settings.max_attempts:
            delay = backoff(job.attempts, self.settings.retry_base)
            job.status, job.claim_token = JOB_PENDING, None
            job.available_at = now + seconds(delay)
            service.add_event(session, allocation.id, 'error',
                              'attempt %d of %d failed; retrying in %.1fs'
                              % (job.attempts, self.settings.max_attempts, delay),
                              {'attempt': job.attempts, 'retry_in': round(delay, 3),
                               'detail': short(error, 500)})
            return
        job.status, job.finished_at = JOB_FAILED, now
        if claim.cleanup:
            fleet.cleanup_failed(session, claim, error, now)
        elif claim.kind == JOB_ALLOCATE:
            outcomes.compensate(session, self.actor, claim, allocation, error, now)
        elif power_job:
            power.failed(session, self.actor, claim, allocation, error, now)
        else:
            outcomes.release_failed(session, self.actor, claim, allocation, error, now)

    def _record_network(self, session, claim: Claim, job, outcome: Outcome, now):
        """A network job's run: audited when the node applied the plan; retried with backoff
        otherwise, and left failed for an operator after ``max_attempts`` (the node's next
        network job brings the plan again)."""
        error = outcome.error if outcome.status != 'successful' else networks.check_result(claim, outcome.result)
        if error is None:
            job.status, job.finished_at, job.last_error = JOB_DONE, now, None
            networks.updated(session, self.actor, claim, outcome.result)
            return
        job.last_error = short(error)
        if job.attempts < self.settings.max_attempts:
            job.status, job.claim_token = JOB_PENDING, None
            job.available_at = now + seconds(backoff(job.attempts, self.settings.retry_base))
            return
        job.status, job.finished_at = JOB_FAILED, now
        log.warning('network job %d: node %s did not take tenant %s\'s new plan after %d attempts: %s',
                    claim.job_id, claim.node_id, claim.tenant, job.attempts, error)
