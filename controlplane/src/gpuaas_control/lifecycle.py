# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The allocation and slot lifecycles: one table of allowed state transitions and the one
function that performs them, for the API, the CLI and the worker alike.

``move`` checks the edge against the table, writes the allocation's state (and its slot's,
when the slot is still held by it), appends the allocation's event and the audit entry,
all in the caller's transaction: a state change exists exactly when its audit entry does.
A reservation takes its slot with ``take_slot`` (a conditional UPDATE, the free ->
reserved edge) and records the new allocation with ``move`` from no state.
"""

from __future__ import annotations

from sqlalchemy import update

from gpuaas_control import audit, networks
from gpuaas_control.errors import Conflict
from gpuaas_control.models import (
    ACTIVE_STATES,
    FAILED,
    JOB_REBOOT,
    JOB_START,
    JOB_STOP,
    PROVISIONING,
    REBOOTING,
    RELEASED,
    RELEASING,
    REQUESTED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    SLOT_BLOCKED,
    SLOT_FREE,
    SLOT_RESERVED,
    TERMINAL_STATES,
    Event,
    Slot,
    utcnow,
)

# (from, to) -> the audit action. None is "no row yet".
ALLOCATION_TRANSITIONS = {
    (None, REQUESTED): 'allocation.create',
    (REQUESTED, PROVISIONING): 'allocation.provision',
    (REQUESTED, RELEASING): 'allocation.release',
    (PROVISIONING, RUNNING): 'allocation.run',
    # Its node stopped answering (fleet.py, GPUAAS_UNREACHABLE_POLICY=fail): the slot stays
    # blocked until the node answers and a release cleaned it.
    (PROVISIONING, FAILED): 'allocation.fail',
    (PROVISIONING, RELEASING): 'allocation.release',
    (RUNNING, RELEASING): 'allocation.release',
    # The tenant's power requests, and the node's answers (a power job that fails for good
    # goes back to the state the node last confirmed: stop_failed, start_failed).
    (RUNNING, STOPPING): 'allocation.stop',
    (STOPPING, STOPPED): 'allocation.stopped',
    (STOPPING, RUNNING): 'allocation.stop_failed',
    (STOPPED, STARTING): 'allocation.start',
    (STARTING, RUNNING): 'allocation.started',
    (STARTING, STOPPED): 'allocation.start_failed',
    (RUNNING, REBOOTING): 'allocation.reboot',
    (REBOOTING, RUNNING): 'allocation.rebooted',
    # Released whatever its power: the release job runs after the power job.
    (STOPPING, RELEASING): 'allocation.release',
    (STOPPED, RELEASING): 'allocation.release',
    (STARTING, RELEASING): 'allocation.release',
    (REBOOTING, RELEASING): 'allocation.release',
    # A failed allocation whose release could not finish, released again by an operator.
    (FAILED, RELEASING): 'allocation.release',
    (RELEASING, RELEASED): 'allocation.released',
    (RELEASING, FAILED): 'allocation.fail',
}
SLOT_TRANSITIONS = {
    (SLOT_FREE, SLOT_RESERVED): 'slot.reserve',
    (SLOT_RESERVED, SLOT_FREE): 'slot.free',
    (SLOT_RESERVED, SLOT_BLOCKED): 'slot.block',
    (SLOT_BLOCKED, SLOT_FREE): 'slot.free',
}


# The power actions of a running allocation: the state it must be in, the state the request
# moves it to (its job runs the node's playbook), the state the node's success moves it to,
# the state a failure for good leaves it in, and the states in which asking again changes
# nothing (the request is already under way or done).
POWER = {
    'stop': {'job': JOB_STOP, 'from': RUNNING, 'via': STOPPING, 'to': STOPPED, 'failed': RUNNING,
             'done': (STOPPING, STOPPED)},
    'start': {'job': JOB_START, 'from': STOPPED, 'via': STARTING, 'to': RUNNING, 'failed': STOPPED,
              'done': (STARTING, RUNNING)},
    'reboot': {'job': JOB_REBOOT, 'from': RUNNING, 'via': REBOOTING, 'to': RUNNING, 'failed': RUNNING,
               'done': (REBOOTING,)},
}
POWER_BY_JOB = {spec['job']: action for action, spec in POWER.items()}


def check_power(allocation, action: str) -> bool:
    """Whether ``action`` must be started (False: it is under way or done already); a
    TransitionError saying why when the allocation's state does not allow it."""
    spec = POWER[action]
    if allocation.state in spec['done']:
        return False
    if allocation.state != spec['from']:
        raise TransitionError('allocation %s is %s: it can be %s only when it is %s'
                              % (allocation.id, allocation.state,
                                 {'stop': 'stopped', 'start': 'started', 'reboot': 'rebooted'}[action],
                                 spec['from']))
    return True


# What a tenant reads of a failure (Allocation.error starts with one of them); the rest of
# the text (a playbook's msg or stderr) is for operators.
PROVISIONING_FAILED = 'provisioning failed'
RELEASE_FAILED = 'release failed'
NODE_UNREACHABLE = 'node unreachable'
REASONS = (PROVISIONING_FAILED, RELEASE_FAILED, NODE_UNREACHABLE)


def public_reason(error: str | None) -> str | None:
    """The stable reason of an allocation's error text, never the text itself."""
    if error is None:
        return None
    return next((reason for reason in REASONS if error.startswith(reason)), 'failed')


class TransitionError(Conflict):
    """A state change the lifecycle does not allow (409 through the API)."""


def check(table: dict, what: str, frm, to) -> str:
    """The audit action of the edge frm -> to, or TransitionError."""
    action = table.get((frm, to))
    if action is None:
        allowed = sorted(str(t) for f, t in table if f == frm)
        raise TransitionError('%s cannot go from %s to %s (from %s it can go to: %s)'
                              % (what, frm or 'nothing', to, frm or 'nothing',
                                 ', '.join(allowed) or 'nothing'))
    return action


def take_slot(session, slot_id: str, allocation_id: str, now) -> bool:
    """free -> reserved as one conditional UPDATE; False when another transaction took it."""
    check(SLOT_TRANSITIONS, 'slot %s' % slot_id, SLOT_FREE, SLOT_RESERVED)
    return session.execute(
        update(Slot).where(Slot.id == slot_id, Slot.state == SLOT_FREE)
        .values(state=SLOT_RESERVED, allocation_id=allocation_id, updated_at=now)
        .execution_options(synchronize_session=False)).rowcount == 1


def move(session, actor: audit.Actor, allocation, to: str, message: str, *, frm=...,
         slot_to: str | None = None, reason: str | None = None, data: dict | None = None,
         kind: str = 'state', now=None) -> Event:
    """Move ``allocation`` to ``to`` (and its slot to ``slot_to`` if it still holds it):
    check, write, event, audit. ``frm`` is given only for a row being created (None)."""
    frm = allocation.state if frm is ... else frm
    action = check(ALLOCATION_TRANSITIONS, 'allocation %s' % allocation.id, frm, to)
    now = now or utcnow()
    before, after = {'state': frm}, {'state': to}
    slot = None
    if slot_to is not None:
        slot = session.get(Slot, allocation.slot_id, with_for_update=True)
        if slot is not None and slot.allocation_id == allocation.id:
            check(SLOT_TRANSITIONS, 'slot %s' % slot.id, slot.state, slot_to)
            before['slot_state'], after['slot_state'] = slot.state, slot_to
        else:
            slot = None
    allocation.state = to
    allocation.updated_at = now
    if slot is not None:
        slot.state = slot_to
        slot.allocation_id = None if slot_to == SLOT_FREE else allocation.id
        slot.state_reason = reason if slot_to == SLOT_BLOCKED else None
        slot.updated_at = now
    event = Event(allocation_id=allocation.id, at=now, kind=kind, message=message,
                  data=dict(data or {}, state=to))
    session.add(event)
    audit.append(session, actor, action, 'allocation', allocation.id,
                 before if frm is not None else None,
                 dict(after, tenant=allocation.tenant_id, slot_id=allocation.slot_id))
    # The tenant's other nodes learn a node that joined or left its overlay.
    if frm is None or (frm in ACTIVE_STATES and to in TERMINAL_STATES):
        networks.announce(session, actor, allocation.tenant_id, allocation.node_id,
                          'joined' if frm is None else 'left', allocation.id, now)
    return event
