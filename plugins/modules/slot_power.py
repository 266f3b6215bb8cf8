#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_power
short_description: Stop, start or reboot the VM of an allocated slot
version_added: 0.1.0
description:
  - Acts on the libvirt domain (C(gpuaas-{slot_id})) an allocation already runs in; it never defines,
    redefines or undefines it. A stopped slot keeps its devices bound to vfio-pci, its domain (UUID,
    UEFI variable store), its network, disk, seed and lease.
  - The slot's lease must be held by O(allocation_id) in phase V(running) or V(stopped); any other
    holder, phase or a missing lease is refused before libvirt is contacted. The lease records the
    power state (phase V(stopped) after a stop, V(running) after a start or a reboot).
  - A stop presses the ACPI power button (again every 5 s, for a guest that was still booting) and
    powers the VM off (C(destroy)) when it still runs after O(stop_timeout); RV(shutdown) says which.
  - A reboot asks libvirt for an ACPI reboot (the power button, after which libvirt resets the guest
    instead of powering it off) and waits for the domain's reset event. A guest that does not answer
    within O(stop_timeout) (no ACPI handler) is powered off and started again; RV(reboot) says which.
  - Before a start the domain's passed-through devices must be bound to vfio-pci with their whole
    IOMMU groups, and its tap device (C(<interface type='ethernet'>)) must exist.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.libvirt
attributes:
  check_mode:
    support: full
    details: Reads the lease and the domain and reports what it would do; changes nothing.
  diff_mode:
    support: full
    details: The domain's power state and the lease's phase before and after.
  idempotent:
    support: partial
    details: V(running) and V(stopped) are idempotent; V(rebooted) reboots at every run (it is an action).
options:
  slot_id:
    description: The slot, C({node_id}-s{slot_index}).
    type: str
    required: true
  allocation_id:
    description: The allocation that holds the slot (its lease must name it).
    type: str
    required: true
  state:
    description:
      - V(stopped) shuts the VM down; V(running) starts it; V(rebooted) reboots a running VM (a stopped one
        is refused, start it first).
    type: str
    choices: [running, stopped, rebooted]
    required: true
  lease_dir:
    description: Where the slots' leases are.
    type: path
    default: /var/lib/gpuaas/node-scheduler/leases
  stop_timeout:
    description: Seconds the guest gets to answer the ACPI power button (a stop) or an ACPI reboot, from 1 to 3600.
    type: int
    default: 120
  sysfs_root:
    description: Where sysfs is mounted; the checks before a start read the devices and IOMMU groups there.
    type: path
    default: /sys
seealso:
  - module: gpuaas.slice.slot_vm
  - module: gpuaas.slice.slot_console_info
'''

EXAMPLES = r'''
- name: Stop the VM of allocation alloc-7f3a
  gpuaas.slice.slot_power:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    state: stopped
    stop_timeout: 60

- name: Reboot it
  gpuaas.slice.slot_power:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    state: rebooted
'''

RETURN = r'''
slot_id:
  description: The slot.
  returned: success
  type: str
  sample: gpu-node-01-s0
allocation_id:
  description: The allocation holding it.
  returned: success
  type: str
  sample: alloc-7f3a
name:
  description: The domain's name.
  returned: success
  type: str
  sample: gpuaas-gpu-node-01-s0
domain_state:
  description: V(running) or V(shut off) after the run (predicted in check mode).
  returned: success
  type: str
  sample: shut off
phase:
  description: The lease's phase after the run, V(running) or V(stopped).
  returned: success
  type: str
  sample: stopped
actions:
  description: What was done (or would be), in order.
  returned: success
  type: list
  elements: str
  sample: [shutdown, record stopped in the lease]
shutdown:
  description: How a stop went, V(acpi) (the guest powered off) or V(forced) (powered off after O(stop_timeout)); null without one.
  returned: success
  type: str
  sample: acpi
reboot:
  description: How a reboot went, V(acpi) (the guest reset after the ACPI reboot) or V(forced) (powered off and started); null without one.
  returned: success
  type: str
  sample: acpi
timings:
  description: Seconds spent shutting down, starting or rebooting.
  returned: success
  type: dict
  sample: {shutdown_s: 2.4}
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import engine_of, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import require_libvirt
from ansible_collections.gpuaas.slice.plugins.module_utils._power import SlotPower, SlotPowerError, argument_spec


def main():
    run_module(argument_spec(), engine_of(SlotPower, SlotPowerError, require_libvirt))


if __name__ == '__main__':
    main()
