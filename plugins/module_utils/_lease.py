# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: a slot's file lease on its node.

``{lease_dir}/{slot_id}.json`` says which allocation holds the slot and how far it got.
Every read-modify-write happens under an exclusive ``flock`` on ``{lease_dir}/.{slot_id}.lock``
and the file is replaced atomically, so two allocates racing for one slot see each other:
exactly one takes the lease, the other fails naming the holder. The lease lives as long as
the allocation, not as long as the lock, so a crashed playbook leaves a lease that a re-run
with the same allocation id picks up and a release or reconcile cleans.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import json
import os
import time

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    StateFileError, atomic_write, check_dir, ensure_dir, has_control_chars, read_json, remove)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ALLOCATION_ID, PCI_ADDRESS, GpuaasError, Slot, check_int, show)

# The phases of a lease, in the order an allocation goes through them.
ALLOCATE_PHASES = ('reserved', 'provisioning', 'running')
# A running allocation whose VM its tenant stopped (slot_power): devices, domain, network, disk
# and lease stay; only the power state differs from running.
STOPPED = 'stopped'
POWER_PHASES = ('running', STOPPED)
# The phases in which an allocation holds the slot: its tenant's flows, fabric VLAN and
# partition stay while the VM is stopped, so that starting it needs nothing but the VM.
HOLDING_PHASES = ALLOCATE_PHASES + (STOPPED,)
RELEASE_PHASES = ('releasing', 'wiping')
PHASES = HOLDING_PHASES + RELEASE_PHASES + ('quarantined',)
MAX_DATA_BYTES = 64 * 1024
LOCK_TIMEOUT = 30
# The options of a module that takes the lease (doc fragment gpuaas.slice.lease).
LEASE_ARGS = dict(lease_dir=dict(type='path', default='/var/lib/gpuaas/node-scheduler/leases'),
                  lock_timeout=dict(type='int', default=LOCK_TIMEOUT))
HELD = 'the slot is treated as held; an operator must look at it and remove it with force=true'


class LeaseError(GpuaasError, ValueError):
    """A lease request the module refuses; the message says why and what to do."""


def lease_path(lease_dir, slot_id):
    return Slot.parse(slot_id).file(check_dir(lease_dir, 'lease_dir'), '.json')


class LeaseLock(object):
    """An exclusive flock on the slot's lock file, waited for up to ``timeout`` seconds."""

    def __init__(self, lease_dir, slot_id, timeout=LOCK_TIMEOUT):
        self.path = os.path.join(lease_dir, '.%s.lock' % slot_id)
        self.timeout = timeout
        self.handle = None

    def __enter__(self):
        self.handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    os.close(self.handle)
                    raise LeaseError('the lease lock %s is held by another process for more than '
                                     '%ds' % (show(self.path, 4096), self.timeout))
                time.sleep(0.05)

    def __exit__(self, *exc):
        os.close(self.handle)  # closing the descriptor drops the flock


def read_lease(path):
    """The lease at ``path`` as a dict, or None; a damaged lease is an error, never 'free'."""
    try:
        lease = read_json(path, 'lease')
    except StateFileError as exc:
        raise LeaseError('%s: %s' % (exc, HELD))
    problem = lease_problem(lease) if lease is not None else None
    if problem:
        raise LeaseError('lease %s %s: %s' % (show(path, 4096), problem, HELD))
    return lease


def lease_problem(lease):
    """What makes a lease read back unusable (None when it is whole)."""
    if not isinstance(lease.get('allocation_id'), str):
        return 'has no allocation_id'
    if lease.get('phase') not in PHASES:
        return 'has the unknown phase %s' % show(lease.get('phase'))
    data = lease.get('data', {})
    if not isinstance(data, dict):
        return 'has data that is not a mapping'
    for key in ('devices', 'companions'):
        if not isinstance(data.get(key) or [], list) or not all(PCI_ADDRESS.matches(a) for a in data.get(key) or []):
            return 'has data.%s that is not a list of PCI addresses' % key
    for key in ('gpu_address', 'nvme_address', 'fabric_vf_pci_address'):
        if data.get(key) not in (None, '') and not PCI_ADDRESS.matches(data[key]):
            return 'has data.%s %s, not a PCI address' % (key, show(data[key]))
    return None


def check_data(data):
    """The lease's free-form data: JSON-serialisable, small, no control characters in keys."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise LeaseError('data must be a dictionary')
    for key in data:
        if not isinstance(key, str) or has_control_chars(key):
            raise LeaseError('data key %s is not a plain string' % show(key))
    try:
        size = len(json.dumps(data, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise LeaseError('data cannot be stored as JSON: %s' % exc)
    if size > MAX_DATA_BYTES:
        raise LeaseError('data is %d bytes of JSON, more than the %d a lease holds'
                         % (size, MAX_DATA_BYTES))
    return data


def plan(current, slot_id, allocation_id, state, phase, data, reason, force, missing_ok, now):
    """(new lease or None, message): what the lease should become. Raises LeaseError to refuse."""
    if state == 'query':
        return current, None
    holder = current.get('allocation_id') if current else None
    if current and holder != allocation_id and not force:
        raise LeaseError('slot %s is held by allocation %s (phase %s since %s), not by %s'
                         % (slot_id, holder, current.get('phase'), current.get('updated_at'),
                            allocation_id))
    if current and current.get('phase') == 'quarantined' and not force and \
            not (state == 'present' and phase == 'quarantined'):
        raise LeaseError('slot %s is quarantined: %s. Clear it with force=true once an operator has '
                         'dealt with it' % (slot_id, current.get('reason') or 'no reason recorded'))
    if state == 'absent':
        return None, None
    if current is None and missing_ok:
        return None, 'slot %s has no lease: nothing to record' % slot_id
    if phase == 'quarantined' and not reason:
        raise LeaseError('a quarantined lease needs a reason, for the operator')
    have = current.get('phase') if current and holder == allocation_id else None
    # A phase the allocation already went past is satisfied: re-running allocate on a running
    # slot keeps it running; releasing a slot that is already wiping keeps it wiping.
    if have and phase != 'quarantined' and not force:
        for chain in (ALLOCATE_PHASES, RELEASE_PHASES):
            if have in chain and phase in chain and chain.index(phase) < chain.index(have):
                phase = have
        # A stopped allocation went past provisioning: a re-run of allocate's early steps keeps it stopped.
        if have == STOPPED and phase in ALLOCATE_PHASES[:-1]:
            phase = have
        if have in RELEASE_PHASES and (phase in ALLOCATE_PHASES or phase == STOPPED):
            raise LeaseError('allocation %s on slot %s is being released (phase %s): it cannot be '
                             '%s again; finish the release first'
                             % (allocation_id, slot_id, have, 'stopped' if phase == STOPPED else 'allocated'))
    lease = dict(current) if current and holder == allocation_id else {
        'slot_id': slot_id, 'allocation_id': allocation_id, 'created_at': now, 'data': {}}
    lease['phase'] = phase
    if data is not None:
        # Merged, so a re-run of an earlier step (allocate again) keeps what a later one added.
        lease['data'] = dict(lease.get('data') or {}, **data)
    if phase == 'quarantined':
        lease['reason'] = reason
    elif reason:
        lease['reason'] = reason
    else:
        lease.pop('reason', None)
    unchanged = current is not None and {k: v for k, v in lease.items() if k != 'updated_at'} == \
        {k: v for k, v in current.items() if k != 'updated_at'}
    if unchanged:
        return current, None
    lease['updated_at'] = now
    return lease, None


def converge(module, lease_dir, slot_id, allocation_id, state='present', phase='provisioning',
             data=None, reason=None, force=False, missing_ok=False, timeout=LOCK_TIMEOUT):
    """Apply one lease request; returns the module result.

    The lease is read and the change planned without the lock (a lease is replaced by an
    atomic rename, so a reader sees a whole one): check mode and state=query create nothing,
    not even the lock file. Applying takes the lock, reads the lease again and plans again,
    so of two racing requests the second sees the first's lease.
    """
    path = lease_path(lease_dir, slot_id)
    lease_dir = os.path.dirname(path)
    check_int(timeout, 'lock_timeout', 1, 3600)
    if state != 'query':
        if allocation_id is None and not (state == 'absent' and force):
            raise LeaseError('allocation_id is required to take, change or free a lease')
        if allocation_id is not None:
            ALLOCATION_ID.check(allocation_id, 'allocation_id')
        if phase not in PHASES:
            raise LeaseError('phase must be one of %s, not %s' % (', '.join(PHASES), show(phase)))
        if reason is not None and (has_control_chars(reason.replace('\n', ' ')) or len(reason) > 4096):
            raise LeaseError('reason must be at most 4096 characters of text')
        check_data(data)
    read = _read_any if force and state == 'absent' else read_lease

    def decide(current):
        return plan(current, slot_id, allocation_id, state, phase, data, reason, force, missing_ok, now_iso())

    current = read(path)
    new, message = decide(current)
    seen = {'current': current, 'new': new}

    def apply():
        ensure_dir(lease_dir, 0o700)
        with LeaseLock(lease_dir, slot_id, timeout=timeout):
            seen['current'] = read(path)
            seen['new'] = decide(seen['current'])[0]
            if seen['new'] == seen['current']:
                return
            if seen['new'] is None:
                remove(path)
            else:
                atomic_write(module, path, _render(seen['new']).encode('utf-8'), mode=0o600)

    steps = Plan(module, error=LeaseError)
    if state != 'query' and new != current:
        steps.change('remove the lease' if new is None else 'write the lease', apply)
    steps.execute()
    result = finish(module, path, seen['current'], seen['new'], state, message)
    result['actions'] = steps.actions()
    return result


def rewrite(module, lease_dir, slot_id, change, timeout=LOCK_TIMEOUT):
    """Rewrite one lease's data under its lock: ``change(lease)`` returns the new data, or None to
    leave the lease as it is (read again under the lock, it is no longer the one planned for).
    True when the lease was written."""
    path = lease_path(lease_dir, slot_id)
    with LeaseLock(os.path.dirname(path), slot_id, timeout=timeout):
        lease = read_lease(path)
        data = change(lease) if lease is not None else None
        if data is None or data == lease.get('data'):
            return False
        lease = dict(lease, data=check_data(data), updated_at=now_iso())
        atomic_write(module, path, _render(lease).encode('utf-8'), mode=0o600)
        return True


def _read_any(path):
    """For a forced removal: whatever is there, damaged or not."""
    try:
        return read_lease(path)
    except LeaseError:
        return {'allocation_id': None, 'damaged': True}


def finish(module, path, current, new, state, message=None):
    result = dict(changed=(state != 'query' and new != current), path=path,
                  lease=new if state != 'absent' else None, previous=current)
    if message:
        result['msg'] = message
    if module._diff and state != 'query':
        result['diff'] = dict(before=_render(current), after=_render(new),
                              before_header=path, after_header=path)
    return result


def _render(lease):
    return '' if lease is None else json.dumps(lease, indent=2, sort_keys=True) + '\n'


def now_iso():
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
