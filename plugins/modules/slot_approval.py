#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_approval
short_description: Validate an operator's approved slot map against a discovery result
version_added: 0.1.0
description:
  - Checks the operator's approved slot map (kept in host vars, see C(docs/approved-slot-map.md))
    against a M(gpuaas.slice.slot_discovery_info) result of the same host and returns the approved
    slots, each with its discovery data, its wipe policy and its device fingerprint.
  - It refuses, listing every problem and approving nothing, when a slot is unknown, approved
    twice, not eligible, or its GPU address no longer matches; when C(destructive_wipe_policy) is
    missing or not one of V(nvme-format), V(blkdiscard), V(zero) (the first two need the slot's own
    NVMe drive); when C(capacity_metadata) lacks C(storage_ownership=slice),
    C(fabric_claim_mode=per_slot_vf) or the slot's C(fabric_vf_pci_address) (where the slot has a
    fabric PF); when an entry has keys the format does not know; or when a recorded
    C(fingerprint) is not one discovery could have written.
  - A fault of the hardware is one slot's, not the map's. An approved slot whose GPU is gone from
    the PCI bus (discovery lists it in its C(absent), see the O(discovery) option), or whose devices
    no longer match the C(fingerprint) recorded in its entry (a GPU replaced by another, at the same
    address), is not approved and is listed in RV(absent) with the reason; the other slots are
    approved as usual and keep their ids, MACs and IPs. The operator's entry of an absent slot is
    still checked for mistakes (keys, policy, texts).
  - The discovery is not taken on trust. Every slot in it must be what M(gpuaas.slice.slot_discovery_info)
    could have reported (its C(slot_id), C(mac) and C(ip) those of its node and index, PCI addresses,
    a NUMA node and a bounded C(cpulist), a fingerprint of PCI ids), else the map is refused naming
    the field. Every value in a message is quoted, so no value can start a line of its own.
  - Changes nothing on the host.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.attributes.read_only
options:
  discovery:
    description:
      - The registered result of M(gpuaas.slice.slot_discovery_info) for this host, run with this same
        map as its O(gpuaas.slice.slot_discovery_info#module:approved_slots), so that every approved
        slot keeps its index with its GPU address and a slot whose GPU is gone is reported
        absent rather than renumbering the others.
    type: dict
    required: true
  approved_slots:
    description:
      - The operator's approved slot map for this host.
      - Each entry has C(slot_id), C(gpu_address), C(destructive_wipe_policy) and
        C(capacity_metadata), and optionally C(approved_by), C(approved_at), C(note) and the
        C(fingerprint) recorded at approval.
      - Each entry must be a mapping; any other item is refused naming its position (it is not
        converted).
    type: list
    elements: raw
    required: true
seealso:
  - module: gpuaas.slice.slot_discovery_info
'''

EXAMPLES = r'''
- name: Discover
  gpuaas.slice.slot_discovery_info:
    node_id: "{{ gpuaas_node_id }}"
  register: discovery

- name: Check the operator's approvals against what is really there
  gpuaas.slice.slot_approval:
    discovery: "{{ discovery }}"
    approved_slots: "{{ gpuaas_approved_slots }}"
  register: approval

# host_vars/gpu-node-01.yml
# gpuaas_node_id: gpu-node-01
# gpuaas_approved_slots:
#   - slot_id: gpu-node-01-s0
#     gpu_address: "0000:18:00.0"
#     destructive_wipe_policy: nvme-format
#     capacity_metadata:
#       storage_ownership: slice
#       fabric_claim_mode: per_slot_vf
#       fabric_vf_pci_address: "0000:1a:00.1"
#     approved_by: alice
#     approved_at: "2026-11-22T10:00:00Z"
'''

RETURN = r'''
slots:
  description: The approved slots, each the discovery slot plus the approval.
  returned: success
  type: list
  elements: dict
  sample:
    - slot_id: gpu-node-01-s0
      slot_index: 0
      node_id: gpu-node-01
      gpu_address: "0000:18:00.0"
      companions: []
      numa_node: 0
      cpulist: "0-55,112-167"
      nvme_address: "0000:1c:00.0"
      fabric_pf_address: "0000:1a:00.0"
      fabric_vf_pci_address: "0000:1a:00.1"
      mac: "52:54:4f:3c:9e:0a"
      ip: 10.100.0.10
      capacity_metadata: {storage_ownership: slice, fabric_claim_mode: per_slot_vf,
                          fabric_vf_pci_address: "0000:1a:00.1"}
      fingerprint: {}
      destructive_wipe_policy: nvme-format
      approved_by: alice
      approved_at: "2026-11-22T10:00:00Z"
absent:
  description:
    - The approved slots that cannot be used now and are not in RV(slots), in slot index order, each
      with the reason; empty when every approved slot is there.
    - A slot is absent when its GPU is gone from the PCI bus (it fell off the bus, Xid 79, or was
      removed), or when its devices no longer match the fingerprint taken at approval. It comes back
      by itself when its GPU returns to its address (with a matching fingerprint).
  returned: success
  type: list
  elements: dict
  sample:
    - slot_id: gpu-node-01-s3
      slot_index: 3
      gpu_address: "0000:3a:00.0"
      reason: "GPU 0000:3a:00.0 of approved slot gpu-node-01-s3 is not on the PCI bus (it fell off the bus,
        e.g. Xid 79, or was removed): the slot is absent until the GPU is back at this address"
problems:
  description: Every reason the map was refused.
  returned: failure
  type: list
  elements: str
  sample: ["slot gpu-node-01-s3: destructive_wipe_policy must be set (one of nvme-format, blkdiscard, zero)"]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._approval import review
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module

ARGUMENT_SPEC = dict(
    discovery=dict(type='dict', required=True),
    approved_slots=dict(type='list', elements='raw', required=True),
)


def main():
    run_module(ARGUMENT_SPEC, lambda module: dict(
        changed=False, **review(module.params['discovery'], module.params['approved_slots'])))


if __name__ == '__main__':
    main()
