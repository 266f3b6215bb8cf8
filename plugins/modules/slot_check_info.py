#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_check_info
short_description: Check one approved slot record against the host before it is allocated
version_added: 0.1.0
description:
  - Checks ONE slot, as its approved record names it, against sysfs, without discovering the
    whole host. The record is the one the control plane reserved (O(slot)) or, without a control
    plane, the slot's entry of the node's approved slot map (O(approved_slots), see
    C(docs/approved-slot-map.md)); the record must carry the C(fingerprint) taken at approval.
  - "Refused, naming the field and the device, every problem at once: a slot id that is not
    C({node_id}-s{index}) of this node, or a record whose C(slot_index), C(mac) or C(ip) is not the
    slot's; a GPU, companion, NVMe or fabric PF that is missing or whose vendor, device, subsystem
    ids, serial or PCIe path differ from the fingerprint; a fabric VF that is not VF
    C(fabric_vf_index) of its PF (by the PF's C(sriov_offset)/C(sriov_stride)), or, in a record
    without C(fabric_vf_index), none of the PF's C(sriov_totalvfs) VFs; an IOMMU group of the GPU that holds another device than the GPU and its companions
    (bridges aside), or no IOMMU at all; a GPU that is the host console or drives a framebuffer,
    an NVMe the host mounts, swaps on or stacks device-mapper/md on; a NUMA node that is not the
    GPU's; an unknown wipe policy, or a block wipe policy without an NVMe drive."
  - "The slot's share (C(cpulist), C(vcpus), C(memory_mib), C(host_cpulist), see
    M(gpuaas.slice.slot_discovery_info)) is checked too: a cpulist off the GPU's NUMA node or splitting a
    core, a host_cpulist that overlaps it, a vcpus that is not its CPU count, a memory_mib above
    the node's MemTotal. A record without them was approved before slots had their own share (its
    cpulist was the whole node, shared by every slot of the node) and is refused: approve it again."
  - With O(vcpus) and O(memory_mib), the allocation's shape must fit the slot's share; one that does
    not is refused, naming both numbers, before the allocation takes the slot's lease.
  - "The slot's C(bar_mib) (its devices' 64-bit BARs, as M(gpuaas.slice.slot_discovery_info) computes it) is read from
    the devices' C(resource) files; a record's own C(bar_mib) must agree. The allocation's memory (else the slot's
    share) plus C(bar_mib) must fit a guest's physical address space on this host's CPU (the address sizes line
    of C(cpuinfo) under O(proc_root)), or the shape is refused with the bits it needs."
  - Returns the complete checked record (RV(slot)), which the allocation goes on with.
  - Changes nothing on the host.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.attributes.read_only
  - gpuaas.slice.sysfs
options:
  node_id:
    description: The node this runs on; the slot id must be C({node_id}-s{index}).
    type: str
    required: true
  slot_id:
    description: The slot to check.
    type: str
    required: true
  slot:
    description:
      - The slot's approved record as the control plane stores it (C(gpuaas_slot), sent by its
        worker) - C(slot_index), C(gpu_address), C(companions), C(nvme_address),
        C(fabric_pf_address), C(fabric_vf_index), C(fabric_vf_pci_address), C(numa_node), C(cpulist), C(vcpus),
        C(memory_mib), C(host_cpulist), C(bar_mib), C(mac), C(ip), C(destructive_wipe_policy) and C(fingerprint).
      - Without it, the slot's entry of O(approved_slots) is checked.
    type: dict
  approved_slots:
    description: The node's approved slot map; used when O(slot) is not given.
    type: list
    elements: dict
    default: []
  vcpus:
    description: The allocation's vCPUs (1 to 256); at most the slot's C(vcpus) (in RV(slot)).
    type: int
  memory_mib:
    description: The allocation's memory in MiB (1 to 4194304); at most the slot's C(memory_mib) (in RV(slot)).
    type: int
seealso:
  - module: gpuaas.slice.slot_approval
  - module: gpuaas.slice.slot_discovery_info
'''

EXAMPLES = r'''
- name: Check the slot the control plane reserved (or the approved map's entry)
  gpuaas.slice.slot_check_info:
    node_id: "{{ gpuaas_node_id }}"
    slot_id: "{{ gpuaas_slot_id }}"
    slot: "{{ gpuaas_slot | default(omit) }}"
    approved_slots: "{{ gpuaas_approved_slots | default([]) }}"
    vcpus: 16
    memory_mib: 131072
  register: checked
'''

RETURN = r'''
slot:
  description: The checked record, complete (fields the map entry leaves out come from its fingerprint and the GPU).
  returned: success
  type: dict
  sample:
    slot_id: gpu-node-01-s0
    node_id: gpu-node-01
    slot_index: 0
    mac: "52:54:1f:9e:3a:07"
    ip: 10.100.0.10
    gpu_address: "0000:18:00.0"
    companions: ["0000:18:00.1"]
    nvme_address: "0000:1c:00.0"
    fabric_pf_address: "0000:1a:00.0"
    fabric_vf_index: 0
    fabric_vf_pci_address: "0000:1a:00.1"
    numa_node: 0
    cpulist: "1-14,113-126"
    vcpus: 28
    memory_mib: 252928
    bar_mib: 131106
    host_cpulist: "0,56,112,168"
    iommu_group: "21"
    destructive_wipe_policy: nvme-format
    fingerprint: {gpu: {address: "0000:18:00.0", vendor_id: 10de}}
    devices: ["0000:18:00.0", "0000:1c:00.0", "0000:1a:00.1"]
seconds:
  description: How long the check took.
  returned: success
  type: float
  sample: 0.004
started_at:
  description: When the check started (epoch seconds), the allocation's first time mark.
  returned: success
  type: float
  sample: 1764651600.25
problems:
  description: Every mismatch between the record and the host.
  returned: failure
  type: list
  elements: str
  sample: ["nvme 0000:1c:00.0: no such PCI device on this host (removed, or moved to another address): inspect the host, then re-approve"]
'''

import time

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_path
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_check import SlotCheck, pick_record


def check(module):
    started, clock = time.time(), time.monotonic()
    params = module.params
    record = pick_record(params['slot_id'], params['node_id'], params['slot'], params['approved_slots'])
    slot = SlotCheck(params['node_id'], params['slot_id'], record, check_path(params['sysfs_root'], 'sysfs_root'),
                     check_path(params['proc_root'], 'proc_root'), params['vcpus'], params['memory_mib']).run()
    return dict(changed=False, slot=slot, started_at=started, seconds=round(time.monotonic() - clock, 4))


def main():
    run_module(with_sysfs_args(dict(
        node_id=dict(type='str', required=True),
        slot_id=dict(type='str', required=True),
        slot=dict(type='dict'),
        approved_slots=dict(type='list', elements='dict', default=[]),
        vcpus=dict(type='int'),
        memory_mib=dict(type='int'),
    )), check)


if __name__ == '__main__':
    main()
