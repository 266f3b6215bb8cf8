#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_lease
short_description: Take, advance, query and free a slot's file lease on its node
version_added: 0.1.0
description:
  - A slot's lease is C({lease_dir}/{slot_id}.json). It names the allocation that holds the slot,
    the phase it reached (V(reserved), V(provisioning), V(running), V(stopped) (its VM stopped by
    M(gpuaas.slice.slot_power)), V(releasing), V(wiping), or V(quarantined) with a reason) and what the allocation needs to be undone (its devices, its
    wipe policy), so a release or a reconcile after a crash knows what to clean.
  - Every change happens under an exclusive C(flock) on C({lease_dir}/.{slot_id}.lock) and
    replaces the file atomically. Check mode and O(state=query) read the lease without the lock
    and create nothing, not even the lock file or O(lease_dir). Two allocations racing for one slot get exactly one lease; the
    other fails, naming the holder.
  - A lease held by another allocation is never changed or removed unless O(force=true). A
    quarantined lease only changes with O(force=true), once an operator has dealt with the slot.
  - Phases only move forward. Asking for a phase the allocation already passed (V(provisioning)
    when it is V(running), V(releasing) when it is V(wiping)) keeps the lease as it is, so a
    re-run of allocate or release reports no change. A slot being released cannot be allocated
    again by the same allocation.
  - A lease file that is not valid JSON is treated as held, never as free.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.lease
attributes:
  check_mode:
    support: full
    details: Says whether the lease would change; writes nothing.
  diff_mode:
    support: full
    details: The lease file before and after.
  idempotent:
    support: full
options:
  slot_id:
    description: The slot, C({node_id}-s{index}).
    type: str
    required: true
  allocation_id:
    description:
      - The allocation that holds or takes the lease. Required except for O(state=query) and a
        forced removal.
    type: str
  state:
    description:
      - V(present) takes the lease or moves it to O(phase); V(absent) frees it; V(query) only reads it.
    type: str
    choices: [present, absent, query]
    default: present
  phase:
    description: The phase to record with O(state=present).
    type: str
    choices: [reserved, provisioning, running, stopped, releasing, wiping, quarantined]
    default: provisioning
  data:
    description:
      - What the allocation needs recorded (devices, MAC/IP, wipe policy, domain name). Merged into
        the lease's data (a key given replaces that key), so a re-run of an earlier step keeps what a
        later one added. At most 64 KiB as JSON.
    type: dict
  reason:
    description: Why the slot is quarantined (required with O(phase=quarantined)); shown to operators.
    type: str
  force:
    description:
      - Act on a lease held by another allocation, on a quarantined lease, or on a damaged one.
        For operators clearing a slot, never for the normal path.
    type: bool
    default: false
  missing_ok:
    description:
      - With O(state=present), a slot that has no lease stays without one (the module returns
        RV(lease=null)) instead of getting a new lease. Release uses it to clean a slot whose
        allocation never got as far as its lease.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Take slot 0's lease for an allocation
  gpuaas.slice.slot_lease:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    phase: provisioning
    data:
      devices: ["0000:1b:00.0", "0000:1c:00.0"]
      destructive_wipe_policy: nvme-format

- name: Quarantine the slot after a failed reset
  gpuaas.slice.slot_lease:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    phase: quarantined
    reason: "pci_reset: the GPU did not come back after a secondary bus reset"

- name: Who holds slot 0?
  gpuaas.slice.slot_lease:
    slot_id: gpu-node-01-s0
    state: query
  register: lease

- name: An operator clears a quarantined slot
  gpuaas.slice.slot_lease:
    slot_id: gpu-node-01-s0
    state: absent
    force: true
'''

RETURN = r'''
lease:
  description: The lease after the change (null when there is none).
  returned: always
  type: dict
  sample:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    phase: running
    created_at: "2026-11-22T10:00:00Z"
    updated_at: "2026-11-22T10:01:12Z"
    data: {devices: ["0000:1b:00.0"]}
previous:
  description: The lease before the change (null when there was none).
  returned: always
  type: dict
path:
  description: The lease file.
  returned: always
  type: str
  sample: /var/lib/gpuaas/node-scheduler/leases/gpu-node-01-s0.json
actions:
  description: What the module changed (in check mode, would change); empty when nothing.
  returned: always
  type: list
  elements: str
  sample: [write the lease]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import LEASE_ARGS, PHASES, converge

ARGUMENT_SPEC = dict(
    LEASE_ARGS,
    slot_id=dict(type='str', required=True),
    allocation_id=dict(type='str'),
    state=dict(type='str', choices=['present', 'absent', 'query'], default='present'),
    phase=dict(type='str', choices=list(PHASES), default='provisioning'),
    data=dict(type='dict'),
    reason=dict(type='str'),
    force=dict(type='bool', default=False),
    missing_ok=dict(type='bool', default=False),
)


def engine(module):
    p = module.params
    return converge(module, p['lease_dir'], p['slot_id'], p['allocation_id'], state=p['state'],
                    phase=p['phase'], data=p['data'], reason=p['reason'], force=p['force'],
                    missing_ok=p['missing_ok'], timeout=p['lock_timeout'])


def main():
    run_module(ARGUMENT_SPEC, engine)


if __name__ == '__main__':
    main()
