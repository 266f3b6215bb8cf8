# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane over a fleet: nodes that stop answering, and how they come back.

* **Unreachable.** A run whose node could not be reached (ansible-runner's
  ``runner_on_unreachable`` for the claim's host) marks the node unreachable (since when,
  what ansible said; audited ``node.unreachable``). Reservation skips it and its jobs wait
  (``worker._claim``); the attempt is not counted against the job.
* **Its jobs.** A release (or any job but an allocate) goes back to the outbox and runs when
  the node answers: its slot stays reserved, never free, since what the node holds is not
  known. An allocate ends: by ``GPUAAS_UNREACHABLE_POLICY`` the allocation moves to a free
  slot of another node that fits (``reschedule``, the default; audited
  ``allocation.reschedule``) or fails (``fail``; and when it named its node or nothing else
  fits), its error ``node unreachable: ...``. Either way the slot it leaves is blocked and a
  *cleanup* job (an outbox release naming that slot) releases it once the node answers: the
  run may have built part of the VM before the node went away. Under ``reschedule`` the
  node's allocations still ``requested`` (their job never ran: their slots are untouched,
  and freed) move too rather than wait for the node.
* **Answering again.** The worker probes an unreachable node with ``ansible.builtin.ping``
  (ad hoc, through ansible-runner, the worker's inventory) when ``next_probe_at`` is due:
  every ``GPUAAS_PROBE_INTERVAL`` seconds, doubled after each probe without an answer, up to
  300. The first answer makes it reachable (audited ``node.reachable``); its waiting jobs
  and cleanups run then.
* **By hand.** A cleanup that fails ``max_attempts`` times leaves its slot blocked. An operator
  sees those slots (``blocked_cleanups``: ``GET /v1/cleanups``, ``gpuaas slot cleanups``),
  queues the cleanup again (``retry_cleanup``), or, having cleaned the node by hand, marks the
  slot clean with a reason (``mark_clean``: free again). Both are audited and refused while
  the slot's cleanup runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from sqlalchemy import or_, select

from gpuaas_control import audit, lifecycle, networks, service
from gpuaas_control.config import Settings
from gpuaas_control.errors import Conflict, Invalid, NotFound
from gpuaas_control.models import (
    FAILED,
    JOB_ALLOCATE,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_NETWORK,
    JOB_PENDING,
    JOB_RELEASE,
    JOB_RUNNING,
    PROVISIONING,
    REQUESTED,
    SLOT_BLOCKED,
    SLOT_FREE,
    Allocation,
    Node,
    OutboxJob,
    Slot,
    UsageRecord,
    utcnow,
)
from gpuaas_control.outcomes import close_usage
from gpuaas_control.runs import Claim, Outcome, seconds, short
from gpuaas_control.validation import NOTE_RE, show

log = logging.getLogger('gpuaas_control.worker')

MAX_PROBE_INTERVAL = 300.0
PROBE_PREFIX = 'probe-'


def _when(value):
    return value.isoformat() if value else None


# -- reachability -----------------------------------------------------------------------------

def node_unreachable(session, actor: audit.Actor, settings: Settings, node_id: str, error: str, now) -> None:
    """Mark the node unreachable (audited when it was reachable); keep its newest error."""
    node = session.get(Node, node_id, with_for_update=True)
    if node is None:
        return
    error = short(error or 'unreachable', 1000)
    if node.unreachable_since is None:
        node.unreachable_since, node.probe_failures = now, 0
        node.next_probe_at = now + seconds(settings.probe_interval)
        audit.append(session, actor, 'node.unreachable', 'node', node_id, {'reachable': True},
                     {'reachable': False, 'since': _when(now), 'error': error})
        log.warning('node %s is unreachable: %s', node_id, error)
    node.unreachable_error = error
    node.updated_at = now


def node_answered(session, actor: audit.Actor, node_id: str, now, via: str) -> bool:
    """Mark the node reachable again (audited); False if it was not unreachable."""
    node = session.get(Node, node_id, with_for_update=True)
    if node is None or node.unreachable_since is None:
        return False
    before = {'reachable': False, 'since': _when(node.unreachable_since),
              'error': node.unreachable_error, 'probe_failures': node.probe_failures}
    node.unreachable_since = node.unreachable_error = node.next_probe_at = None
    node.probe_failures = 0
    node.updated_at = now
    audit.append(session, actor, 'node.reachable', 'node', node_id, before, {'reachable': True, 'via': via})
    log.warning('node %s answers again (%s)', node_id, via)
    return True


def probe_delay(settings: Settings, failures: int) -> float:
    return min(MAX_PROBE_INTERVAL, settings.probe_interval * (2 ** max(0, failures)))


def claim_probe(session, settings: Settings) -> str | None:
    """The unreachable node whose probe is due first, held for this worker (its next probe
    moved past this one's timeout, so another worker skips it); None when none is due."""
    now = utcnow()
    node = session.execute(
        select(Node).where(Node.unreachable_since.is_not(None),
                           or_(Node.next_probe_at.is_(None), Node.next_probe_at <= now))
        .order_by(Node.next_probe_at).limit(1).with_for_update(skip_locked=True)).scalar_one_or_none()
    if node is None:
        return None
    node.next_probe_at = now + seconds(settings.probe_timeout + probe_delay(settings, node.probe_failures))
    return node.id


def probe(settings: Settings, node_id: str) -> str | None:
    """Ask the node whether it answers (ansible.builtin.ping through the worker's inventory):
    None when it did, else what ansible said."""
    import ansible_runner  # imported here: the API process never needs it

    seen = {'ok': False, 'error': None}

    def on_event(event):
        data = event.get('event_data') or {}
        if data.get('host') == node_id:
            if event.get('event') == 'runner_on_ok':
                seen['ok'] = True
            elif event.get('event') in ('runner_on_unreachable', 'runner_on_failed'):
                result = data.get('res') or {}
                seen['error'] = short(result.get('msg') or result.get('stderr') or event['event'], 1000)
        return True

    os.makedirs(settings.runs_dir, mode=0o700, exist_ok=True)
    private = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=settings.runs_dir)
    status = rc = None
    try:
        runner = ansible_runner.run(
            private_data_dir=private, host_pattern=node_id, module='ansible.builtin.ping',
            inventory=os.path.abspath(settings.inventory), timeout=settings.probe_timeout,
            event_handler=on_event, quiet=True,
            settings={'pexpect_timeout': 0.5, 'suppress_ansible_output': True})
        status, rc = runner.status, runner.rc
    except Exception as exc:  # noqa: BLE001 - ansible-runner raises bare exceptions
        return 'ansible-runner: %s' % exc
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if seen['ok']:
        return None
    return seen['error'] or ('no answer from the probe (%s, rc %s): is %s a host of the inventory?'
                             % (status, rc, node_id))


def record_probe(session, actor: audit.Actor, settings: Settings, node_id: str, error: str | None) -> None:
    now = utcnow()
    node = session.get(Node, node_id, with_for_update=True)
    if node is None:
        return
    node.last_probe_at = now
    if error is None:
        node_answered(session, actor, node_id, now, 'probe')
        return
    if node.unreachable_since is None:
        return
    node.probe_failures += 1
    node.unreachable_error = short(error, 1000)
    node.next_probe_at = now + seconds(probe_delay(settings, node.probe_failures))
    node.updated_at = now


# -- a job whose node did not answer ----------------------------------------------------------

def unreachable(session, actor: audit.Actor, settings: Settings, claim: Claim, job: OutboxJob,
                allocation: Allocation, outcome: Outcome, now) -> None:
    """Record a run that could not reach its node (``outcome.unreachable``)."""
    node_unreachable(session, actor, settings, claim.node_id, outcome.unreachable, now)
    if settings.unreachable_policy == 'reschedule':
        move_waiting(session, actor, claim.node_id, now)
    detail = short(outcome.unreachable, 500)
    job.attempts = max(0, job.attempts - 1)   # the node's absence, not the job's failure
    job.last_error = short('the node did not answer: %s' % outcome.unreachable)
    if claim.kind != JOB_ALLOCATE:
        job.status, job.claim_token, job.available_at = JOB_PENDING, None, now
        service.add_event(session, allocation.id, 'error',
                          'the node did not answer; the %s runs when it does'
                          % {JOB_RELEASE: 'release', JOB_NETWORK: 'tenant network update'}.get(claim.kind, claim.kind),
                          {'detail': detail, 'slot_id': claim.slot_id})
        return
    job.status, job.finished_at = JOB_FAILED, now
    if allocation.state != PROVISIONING:
        return   # a release was asked for meanwhile: it waits for the node
    if settings.unreachable_policy == 'reschedule' and _reschedule(session, actor, claim, allocation, now):
        return
    allocation.error = short('%s: %s' % (lifecycle.NODE_UNREACHABLE, outcome.unreachable))
    close_usage(session, allocation, now)
    reason = _blocked_reason(allocation.id, claim.node_id)
    lifecycle.move(session, actor, allocation, FAILED,
                   '%s: the node did not answer; the allocation failed' % lifecycle.NODE_UNREACHABLE,
                   slot_to=SLOT_BLOCKED, kind='error', reason=reason, data={'detail': detail}, now=now)
    _add_cleanup(session, allocation.id, claim.slot_id, now)


def _blocked_reason(allocation_id: str, node_id: str) -> str:
    return ('node %s did not answer while allocation %s was provisioned: its release runs when '
            'the node answers again' % (node_id, allocation_id))


def _add_cleanup(session, allocation_id: str, slot_id: str, now) -> None:
    session.add(OutboxJob(allocation_id=allocation_id, kind=JOB_RELEASE, slot_id=slot_id,
                          status=JOB_PENDING, attempts=0, available_at=now, created_at=now, updated_at=now))


def _reschedule(session, actor: audit.Actor, claim: Claim, allocation: Allocation, now) -> bool:
    """Move the allocation whose run could not reach its node to a free slot of another node
    that fits it; False when it named its node or nothing fits."""
    return _move(session, actor, allocation, claim.slot_id, claim.node_id, now, touched=True)


def move_waiting(session, actor: audit.Actor, node_id: str, now) -> int:
    """Move the allocations still ``requested`` on the node (their allocate job never ran:
    their slots are untouched) to other nodes that fit them; how many moved."""
    waiting = session.execute(select(Allocation).where(
        Allocation.node_id == node_id, Allocation.state == REQUESTED)
        .order_by(Allocation.created_at, Allocation.id).with_for_update()).scalars().all()
    return sum(_move(session, actor, allocation, allocation.slot_id, node_id, now, touched=False)
               for allocation in waiting)


def _move(session, actor: audit.Actor, allocation: Allocation, old_slot_id: str, old_node_id: str, now,
          touched: bool) -> bool:
    """Move the allocation to a free slot of another node that fits it (False when it named its
    node or nothing fits; the node it leaves is marked unreachable, so it is skipped). The slot
    it leaves is blocked for a cleanup release if a run may have touched it, else free."""
    asked = allocation.request or {}
    if asked.get('node_id'):
        return False
    request = service.AllocationRequest(
        image=allocation.image, image_checksum=allocation.image_checksum, ssh_keys=allocation.ssh_keys,
        vcpus=allocation.vcpus, memory_mib=allocation.memory_mib,
        gpu_model=asked.get('gpu_model'), numa_node=asked.get('numa_node'))
    session.flush()   # the node's mark, which the statement below reads past the ORM
    taken = service.take_slot(session, request, allocation.id, now, allocation.tenant_id)
    if taken is None:
        return False
    old = session.get(Slot, old_slot_id, with_for_update=True)
    before = {'state': old.state, 'allocation_id': old.allocation_id}
    if touched:
        reason = _blocked_reason(allocation.id, old_node_id)
        lifecycle.check(lifecycle.SLOT_TRANSITIONS, 'slot %s' % old.id, old.state, SLOT_BLOCKED)
        old.state, old.state_reason = SLOT_BLOCKED, reason
        audit.append(session, actor, 'slot.block', 'slot', old.id, before,
                     {'state': SLOT_BLOCKED, 'allocation_id': allocation.id, 'reason': reason})
        session.add(OutboxJob(allocation_id=allocation.id, kind=JOB_ALLOCATE, status=JOB_PENDING, attempts=0,
                              available_at=now, created_at=now, updated_at=now))
        _add_cleanup(session, allocation.id, old.id, now)
    else:
        lifecycle.check(lifecycle.SLOT_TRANSITIONS, 'slot %s' % old.id, old.state, SLOT_FREE)
        old.state, old.allocation_id, old.state_reason = SLOT_FREE, None, None
        audit.append(session, actor, 'slot.free', 'slot', old.id, before,
                     {'state': SLOT_FREE, 'allocation_id': None, 'via': 'moved before it ran'})
    old.updated_at = now
    allocation.slot_id, allocation.node_id, allocation.mac = taken.id, taken.node_id, taken.mac
    allocation.updated_at = now
    usage = session.execute(select(UsageRecord).where(UsageRecord.allocation_id == allocation.id)).scalar_one()
    usage.slot_id, usage.node_id, usage.gpu_model = taken.id, taken.node_id, taken.gpu_model
    service.add_event(session, allocation.id, 'state',
                      '%s: the node did not answer; moved to slot %s' % (allocation.state, taken.id),
                      {'state': allocation.state, 'slot_id': taken.id, 'left_slot_id': old.id})
    audit.append(session, actor, 'allocation.reschedule', 'allocation', allocation.id,
                 {'slot_id': old.id, 'node_id': old_node_id},
                 {'slot_id': taken.id, 'node_id': taken.node_id, 'tenant': allocation.tenant_id,
                  'reason': 'node %s unreachable' % old_node_id})
    networks.announce(session, actor, allocation.tenant_id, old_node_id, 'left', allocation.id, now)
    networks.announce(session, actor, allocation.tenant_id, taken.node_id, 'joined', allocation.id, now)
    return True


# -- cleanups ---------------------------------------------------------------------------------

def cleanup_slot(session, job: OutboxJob):
    """The slot a cleanup job releases, locked, if the allocation still leaves it blocked;
    None when something else freed it meanwhile."""
    slot = session.get(Slot, job.slot_id, with_for_update=True)
    if slot is None or slot.state != SLOT_BLOCKED or slot.allocation_id != job.allocation_id:
        return None
    return slot


def cleaned(session, actor: audit.Actor, claim: Claim, now) -> None:
    """A cleanup's release ran: the slot it left is free again."""
    slot = session.get(Slot, claim.slot_id, with_for_update=True)
    if slot is None or slot.state != SLOT_BLOCKED or slot.allocation_id != claim.allocation_id:
        return
    _free(session, actor, slot, now, via='cleanup of %s' % claim.allocation_id)
    service.add_event(session, claim.allocation_id, 'progress',
                      'slot %s, left when its node did not answer, is released' % slot.id,
                      {'slot_id': slot.id})


def _free(session, actor: audit.Actor, slot: Slot, now, **after) -> None:
    """The blocked slot is free again (audited ``slot.free``, with ``after``)."""
    lifecycle.check(lifecycle.SLOT_TRANSITIONS, 'slot %s' % slot.id, SLOT_BLOCKED, SLOT_FREE)
    before = {'state': slot.state, 'allocation_id': slot.allocation_id, 'reason': slot.state_reason}
    slot.state, slot.allocation_id, slot.state_reason, slot.updated_at = SLOT_FREE, None, None, now
    audit.append(session, actor, 'slot.free', 'slot', slot.id, before,
                 dict({'state': SLOT_FREE, 'allocation_id': None}, **after))


def cleanup_failed(session, claim: Claim, error, now) -> None:
    """A cleanup that cannot finish leaves its slot blocked, saying why, for an operator."""
    slot = session.get(Slot, claim.slot_id, with_for_update=True)
    if slot is None or slot.state != SLOT_BLOCKED or slot.allocation_id != claim.allocation_id:
        return
    slot.state_reason = short('release of the slot left by %s failed after %d attempts (the slot stays blocked: '
                              'fix the node and gpuaas slot retry-cleanup, or clean it by hand and gpuaas slot '
                              'mark-clean): %s' % (claim.allocation_id, claim.attempts, error))
    slot.updated_at = now
    service.add_event(session, claim.allocation_id, 'error',
                      'the release of slot %s failed after %d attempts; it stays blocked for an operator'
                      % (slot.id, claim.attempts), {'detail': short(error, 500)})


# -- an operator's hand on a cleanup ----------------------------------------------------------

def _cleanup_jobs(session, slot: Slot):
    """The cleanup jobs of the slot for the allocation that left it, newest first."""
    return session.execute(select(OutboxJob).where(
        OutboxJob.slot_id == slot.id, OutboxJob.allocation_id == slot.allocation_id)
        .order_by(OutboxJob.id.desc())).scalars().all()


def blocked_cleanups(session) -> list[dict]:
    """The slots a cleanup keeps blocked (left by an allocation on a node that did not
    answer), each with its newest cleanup job and its node's reachability."""
    rows = session.execute(select(Slot, OutboxJob, Node).join(OutboxJob, (OutboxJob.slot_id == Slot.id) & (
        OutboxJob.allocation_id == Slot.allocation_id)).join(Node, Node.id == Slot.node_id)
        .where(Slot.state == SLOT_BLOCKED).order_by(Slot.node_id, Slot.slot_index, OutboxJob.id.desc())).all()
    seen, answer = set(), []
    for slot, job, node in rows:
        if slot.id in seen:
            continue
        seen.add(slot.id)
        answer.append({'slot_id': slot.id, 'node_id': slot.node_id, 'allocation_id': slot.allocation_id,
                       'reason': slot.state_reason, 'node_reachable': node.unreachable_since is None,
                       'job_id': job.id, 'status': job.status, 'attempts': job.attempts,
                       'last_error': job.last_error, 'updated_at': job.updated_at})
    return answer


def _blocked_by_cleanup(session, slot_id: str):
    """The slot (locked: a worker's claim of its cleanup locks it too) and its cleanup jobs;
    NotFound/Conflict unless a cleanup keeps it blocked and none of them runs now."""
    slot = session.get(Slot, slot_id, with_for_update=True)
    if slot is None:
        raise NotFound('no slot %s' % show(slot_id))
    jobs = _cleanup_jobs(session, slot) if slot.state == SLOT_BLOCKED else []
    if not jobs:
        raise Conflict('slot %s is %s, not blocked by a cleanup (gpuaas slot cleanups lists those; a failed '
                       "release is released again: gpuaas allocation release)" % (slot.id, slot.state))
    if jobs[0].status == JOB_RUNNING:
        raise Conflict('the cleanup of slot %s runs now (job %d): wait for it to end' % (slot.id, jobs[0].id))
    return slot, jobs


def retry_cleanup(session, actor: audit.Actor, slot_id: str) -> dict:
    """Queue the cleanup of a slot whose cleanup failed again (attempts afresh); audited
    ``slot.cleanup_retry``. Conflict while one is queued or running."""
    slot, jobs = _blocked_by_cleanup(session, slot_id)
    if jobs[0].status == JOB_PENDING:
        raise Conflict('the cleanup of slot %s is already queued (job %d)%s' % (
            slot.id, jobs[0].id, '' if session.get(Node, slot.node_id).unreachable_since is None
            else ': it runs when node %s answers' % slot.node_id))
    now = utcnow()
    _add_cleanup(session, slot.allocation_id, slot.id, now)
    audit.append(session, actor, 'slot.cleanup_retry', 'slot', slot.id,
                 {'job_id': jobs[0].id, 'status': jobs[0].status, 'last_error': jobs[0].last_error},
                 {'allocation_id': slot.allocation_id, 'status': JOB_PENDING})
    service.add_event(session, slot.allocation_id, 'progress',
                      'the release of slot %s is retried by an operator' % slot.id, {'slot_id': slot.id})
    session.flush()
    return next(row for row in blocked_cleanups(session) if row['slot_id'] == slot.id)


def mark_clean(session, actor: audit.Actor, slot_id: str, reason: str) -> Slot:
    """An operator cleaned the node by hand: the slot is free, its queued cleanups are
    cancelled; audited ``slot.free`` with the reason. Conflict while its cleanup runs."""
    if not isinstance(reason, str) or not reason.strip() or not NOTE_RE.match(reason):
        raise Invalid('a reason is required: what was done on the node (at most 255 characters on one line)')
    slot, jobs = _blocked_by_cleanup(session, slot_id)
    now = utcnow()
    for job in jobs:
        if job.status == JOB_PENDING:
            job.status, job.finished_at, job.updated_at = JOB_CANCELLED, now, now
            job.last_error = 'the slot was marked clean by %s' % actor.name
    allocation_id = slot.allocation_id
    _free(session, actor, slot, now, via='marked clean', reason=reason)
    service.add_event(session, allocation_id, 'progress',
                      'slot %s, left when its node did not answer, was marked clean by an operator' % slot.id,
                      {'slot_id': slot.id, 'reason': reason})
    return slot
