# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a finished run means for its allocation: the node's answer checked against the
claim, then running, released, compensated by a release (it could not be built) or failed
with its slot blocked (its release could not finish). Every state change goes through
``lifecycle``."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select

from gpuaas_control import audit, lifecycle, networks, power, service
from gpuaas_control.models import (
    FAILED,
    JOB_PENDING,
    JOB_RELEASE,
    PROVISIONING,
    RELEASED,
    RELEASING,
    RUNNING,
    SLOT_BLOCKED,
    SLOT_FREE,
    Allocation,
    OutboxJob,
    Slot,
    UsageRecord,
)
from gpuaas_control.runs import Claim, Outcome, short
from gpuaas_control.validation import access_problem


def check_allocate_result(claim: Claim, result):
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
    if result.get('access') is not None and access_problem(result['access']):
        wrong.append(access_problem(result['access']))
    if wrong:
        return 'the node reported another allocation than asked: ' + '; '.join(wrong), True
    return None, False


def check_release_result(claim: Claim, result):
    if not isinstance(result, dict):
        return 'the release playbook returned no gpuaas_result (set_stats)'
    if result.get('state') != 'released' or result.get('slot_id', claim.slot_id) != claim.slot_id:
        return 'the release playbook reported %r' % ({k: result.get(k) for k in ('state', 'slot_id')},)
    return None


def allocated(session, actor: audit.Actor, claim: Claim, allocation: Allocation, outcome: Outcome, now):
    result = outcome.result
    ssh = result.get('ssh') if isinstance(result.get('ssh'), dict) else {}
    allocation.address = str(result['address'])
    allocation.ssh = {'user': str(ssh.get('user') or 'root'),
                      'host': str(ssh.get('host') or result['address']),
                      'port': int(ssh.get('port') or 22)}
    access = result.get('access')
    allocation.access = ({'ssh_host': access['ssh_host'], 'ssh_port': access['ssh_port'], 'user': access['user']}
                         if isinstance(access, dict) else None)
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
    networks.audit_membership(session, actor, allocation, session.get(Slot, allocation.slot_id), joined=True)
    if allocation.address != claim.slot_ip:
        service.add_event(session, allocation.id, 'progress',
                          'warning: the node reports address %s, the layout says %s'
                          % (allocation.address, claim.slot_ip))
    if allocation.state != PROVISIONING:
        service.add_event(session, allocation.id, 'progress',
                          'provisioned, but the allocation is %s: not running it'
                          % allocation.state)
        return
    allocation.running_at = now
    usage = session.execute(select(UsageRecord).where(
        UsageRecord.allocation_id == allocation.id)).scalar_one()
    usage.running_start = now
    lifecycle.move(session, actor, allocation, RUNNING, 'running: %s, ssh %s'
                   % (allocation.address, '%(user)s@%(ssh_host)s -p %(ssh_port)d' % allocation.access
                      if allocation.access else '%(user)s@%(host)s' % allocation.ssh),
                   data={'timings': allocation.timings}, now=now)


def compensate(session, actor: audit.Actor, claim: Claim, allocation: Allocation, error, now):
    """The allocation cannot be built: release whatever part of it exists."""
    allocation.error = short('%s: %s' % (lifecycle.PROVISIONING_FAILED, error))
    allocation.updated_at = now
    service.add_event(session, allocation.id, 'error',
                      '%s after %d attempts; releasing the slot'
                      % (lifecycle.PROVISIONING_FAILED, claim.attempts),
                      {'detail': short(error, 500)})
    if allocation.state != RELEASING:
        session.add(OutboxJob(allocation_id=allocation.id, kind=JOB_RELEASE, status=JOB_PENDING,
                              attempts=0, available_at=now, created_at=now, updated_at=now))
        lifecycle.move(session, actor, allocation, RELEASING, 'releasing: compensating',
                       now=now)


def released(session, actor: audit.Actor, claim: Claim, allocation: Allocation, outcome: Outcome, now):
    final = FAILED if (allocation.error and allocation.running_at is None) else RELEASED
    allocation.ended_at = now
    allocation.timings = dict(allocation.timings or {}, release={
        'node': (outcome.result or {}).get('timings') or {},
        'runner': round(outcome.seconds, 3)})
    close_usage(session, allocation, now)
    networks.audit_membership(session, actor, allocation, session.get(Slot, allocation.slot_id), joined=False)
    lifecycle.move(session, actor, allocation, final, '%s: slot %s is free again'
                   % (final, claim.slot_id), slot_to=SLOT_FREE, now=now)


def release_failed(session, actor: audit.Actor, claim: Claim, allocation: Allocation, error, now):
    allocation.error = short('%s: %s' % (lifecycle.RELEASE_FAILED, error))
    allocation.ended_at = allocation.ended_at or now
    close_usage(session, allocation, now)
    lifecycle.move(session, actor, allocation, FAILED,
                   '%s after %d attempts; slot %s is blocked for an operator'
                   % (lifecycle.RELEASE_FAILED, claim.attempts, claim.slot_id),
                   slot_to=SLOT_BLOCKED, kind='error', data={'detail': short(error, 500)},
                   reason=short('release of %s failed after %d attempts: %s (fix the node, '
                                 'then release the allocation again)'
                                 % (allocation.id, claim.attempts, error)), now=now)


def close_usage(session, allocation: Allocation, now):
    usage = session.execute(select(UsageRecord).where(
        UsageRecord.allocation_id == allocation.id)).scalar_one()
    usage.allocated_end = usage.allocated_end or now
    if usage.running_start is not None:
        usage.running_end = usage.running_end or now
    power.close_on_release(session, allocation.id, now)
