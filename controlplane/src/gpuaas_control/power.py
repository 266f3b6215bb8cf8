# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stop, start and reboot a running allocation's VM (issue 18, item 5).

A request (``POST /v1/allocations/{id}/stop|start|reboot``, the allocation's tenant or an
operator) checks the allocation's state against ``lifecycle.POWER`` (409 when it does not
allow the action; asking again for what is under way or done changes nothing), moves it to
its transitional state (stopping, starting, rebooting: audited) and queues a job of that kind
in the outbox. The worker runs the node's playbook (``playbooks/stop.yml``, ``start.yml``,
``reboot.yml``: ``gpuaas.slice.slot_power``), and :func:`done` moves the allocation on once
the node confirms it; a job that fails for good leaves it in the state the node last
confirmed (:func:`failed`). A stop confirmed by the node opens a stopped period in the
allocation's usage record and the start that ends it closes it, so running time is not
billed while the VM is off (allocated time is)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from gpuaas_control import audit, lifecycle, service
from gpuaas_control.models import JOB_PENDING, JOB_STOP, Allocation, OutboxJob, UsageRecord, utcnow
from gpuaas_control.runs import Claim, Outcome, short

# What the node's playbook reports as the VM's state after each job.
NODE_STATE = {'stop': 'stopped', 'start': 'running', 'reboot': 'running'}
HOW = {
    'acpi': {'stop': 'the guest shut down', 'reboot': 'the guest rebooted'},
    'forced': {'stop': 'the guest did not answer the ACPI power button: powered off',
               'reboot': 'the guest did not answer the ACPI reboot: powered off and started again'},
}


def request(session, actor: audit.Actor, allocation_id: str, action: str) -> Allocation:
    """Ask for ``action`` (stop, start, reboot); the allocation as it is then."""
    allocation = service.get_allocation(session, actor, allocation_id, lock=True)
    if not lifecycle.check_power(allocation, action):
        return allocation
    spec = lifecycle.POWER[action]
    now = utcnow()
    session.add(OutboxJob(allocation_id=allocation.id, kind=spec['job'], status=JOB_PENDING, attempts=0,
                          available_at=now, created_at=now, updated_at=now))
    lifecycle.move(session, actor, allocation, spec['via'], '%s: %s requested by %s'
                   % (spec['via'], action, actor.role), now=now)
    return allocation


def check_result(claim: Claim, result) -> str | None:
    """Why the node's answer to a power job is not the one asked for, or None."""
    action = lifecycle.POWER_BY_JOB[claim.kind]
    if not isinstance(result, dict):
        return 'the %s playbook returned no gpuaas_result (set_stats)' % action
    expected = {'allocation_id': claim.allocation_id, 'slot_id': claim.slot_id, 'state': NODE_STATE[action]}
    wrong = ['%s is %r, not %r' % (key, result.get(key), value)
             for key, value in expected.items() if result.get(key) != value]
    return 'the node reported another result than asked: ' + '; '.join(wrong) if wrong else None


def _usage(session, allocation_id):
    return session.execute(select(UsageRecord).where(UsageRecord.allocation_id == allocation_id)).scalar_one()


def open_stop(session, allocation_id, now):
    usage = _usage(session, allocation_id)
    periods = list(usage.stopped_periods or [])
    if not periods or periods[-1].get('to') is not None:
        periods.append({'from': now.isoformat(), 'to': None})
    usage.stopped_periods = periods


def close_stop(session, allocation_id, now):
    usage = _usage(session, allocation_id)
    periods = [dict(period) for period in usage.stopped_periods or []]
    if periods and periods[-1].get('to') is None:
        periods[-1]['to'] = now.isoformat()
        usage.stopped_periods = periods


def stopped_seconds(periods, end, now, since, until) -> float:
    """Seconds of ``periods`` (the usage record's stopped periods) within [since, until), none
    after ``end`` (the running end, when there is one)."""
    total = 0.0
    for period in periods or []:
        start = dt.datetime.fromisoformat(period['from'])
        stop = dt.datetime.fromisoformat(period['to']) if period.get('to') else (end or now)
        if end is not None:
            stop = min(stop, end)
        total += service.seconds_between(start, stop, now, since, until)
    return total


def done(session, actor: audit.Actor, claim: Claim, allocation: Allocation, outcome: Outcome, now):
    """The node did it: the allocation moves on (unless a release overtook it)."""
    action = lifecycle.POWER_BY_JOB[claim.kind]
    spec = lifecycle.POWER[action]
    result = outcome.result or {}
    how = result.get('shutdown') if action == 'stop' else result.get('reboot')
    text = HOW.get(how, {}).get(action, 'done')
    if allocation.state != spec['via']:
        service.add_event(session, allocation.id, 'progress', '%s done on the node (%s), but the allocation is %s'
                          % (action, text, allocation.state))
        return
    if claim.kind == JOB_STOP:
        open_stop(session, allocation.id, now)
    elif action == 'start':
        close_stop(session, allocation.id, now)
    lifecycle.move(session, actor, allocation, spec['to'], '%s: %s' % (spec['to'], text),
                   data={'how': how, 'timings': result.get('timings') or {}, 'runner': round(outcome.seconds, 3)},
                   now=now)


def failed(session, actor: audit.Actor, claim: Claim, allocation: Allocation, error, now):
    """The job failed for good: back to the state the node last confirmed."""
    action = lifecycle.POWER_BY_JOB[claim.kind]
    spec = lifecycle.POWER[action]
    if allocation.state != spec['via']:
        service.add_event(session, allocation.id, 'error', '%s failed after %d attempts (the allocation is %s)'
                          % (action, claim.attempts, allocation.state), {'detail': short(error, 500)})
        return
    lifecycle.move(session, actor, allocation, spec['failed'], '%s: %s failed after %d attempts; the VM is as it '
                   'was' % (spec['failed'], action, claim.attempts), kind='error',
                   data={'detail': short(error, 500)}, now=now)


def close_on_release(session, allocation_id, now):
    """A released allocation's open stopped period ends with it."""
    close_stop(session, allocation_id, now)

