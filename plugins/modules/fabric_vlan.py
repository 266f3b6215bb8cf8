#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: fabric_vlan
short_description: Put a slot's fabric VF on its tenant's VLAN (RoCE), or report its port GUID (InfiniBand)
version_added: 0.1.0
description:
  - Finds the PF and VF index of the VF at O(vf_address) in sysfs (its C(physfn) link and the
    PF's C(virtfnN) link back to it).
  - "On an Ethernet PF (RoCE): sets the VF's VLAN to O(vlan) with spoof checking on and trust off,
    through the PF where the tenant cannot touch it
    (C(ip link set dev PF vf N vlan V spoofchk on trust off)), then reads the three back from the
    kernel (C(ip -j -d link show dev PF), the VF's C(vfinfo_list) entry) and fails if they differ."
  - O(vlan=0) is the release, before the slot is wiped - the VF leaves its tenant's segment.
  - "Fails closed: a VF the kernel does not report, or reports without its spoof checking and trust,
    cannot be verified, and the module fails rather than take it as isolated."
  - "On an InfiniBand PF it changes nothing: a VF's isolation there is its partition, kept by the
    subnet manager (M(gpuaas.slice.fabric_partition)). It returns the VF's port GUID (the one
    M(gpuaas.slice.sriov_vfs) set, derived from O(node_id), the PF address and the VF index)."
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.sysfs
attributes:
  check_mode:
    support: full
    details: Returns the command it would run.
  diff_mode:
    support: full
    details: The VF's C(vlan), C(spoofchk) and C(trust) before and after, under C(vf N).
  idempotent:
    support: full
options:
  vf_address:
    description:
      - Full PCI address of the slot's fabric VF, for example V(0000:1a:00.2).
    type: str
    required: true
  vlan:
    description:
      - The tenant's VLAN, 2 to 4094 (V(1) is the default VLAN of every untagged port); V(0)
        takes the VF off every VLAN.
    type: int
    required: true
  node_id:
    description:
      - The host's node id; with it the VF's derived MAC (Ethernet) or port GUID (InfiniBand) is returned.
    type: str
  timeout:
    description:
      - Seconds a step may take; a finite number from 0.001 to 3600.
    type: float
    default: 10
seealso:
  - module: gpuaas.slice.sriov_vfs
  - module: gpuaas.slice.fabric_partition
notes:
  - Needs root and C(ip) from iproute2; the switch ports must carry the tenant VLANs tagged.
'''

EXAMPLES = r'''
- name: The slot's VF on its tenant's VLAN, before the VM starts
  gpuaas.slice.fabric_vlan:
    vf_address: "0000:1a:00.2"
    vlan: 101
    node_id: "{{ inventory_hostname_short }}"

- name: Off the tenant's VLAN, before the slot is wiped
  gpuaas.slice.fabric_vlan:
    vf_address: "0000:1a:00.2"
    vlan: 0
'''

RETURN = r'''
kind:
  description: V(ethernet) (the VLAN was converged) or V(infiniband) (nothing changed, see RV(port_guid)).
  returned: always
  type: str
  sample: ethernet
pf_address:
  description: The VF's PF.
  returned: always
  type: str
  sample: "0000:1a:00.0"
vf_index:
  description: The VF's index on its PF.
  returned: always
  type: int
  sample: 1
netdev:
  description: The PF's network interface, or null when it has none.
  returned: always
  type: str
  sample: enp26s0f0np0
vlan:
  description: The VF's VLAN now (V(0) none); null on an InfiniBand PF.
  returned: always
  type: int
  sample: 101
spoofchk:
  description: Spoof checking (always true on Ethernet).
  returned: when RV(kind=ethernet)
  type: bool
trust:
  description: Trust (always false on Ethernet).
  returned: when RV(kind=ethernet)
  type: bool
mac:
  description: The Ethernet VF's MAC (as M(gpuaas.slice.sriov_vfs) set it), with O(node_id); null otherwise.
  returned: always
  type: str
  sample: "96:bf:df:86:c9:f5"
port_guid:
  description: The InfiniBand VF's port GUID, with O(node_id); null otherwise.
  returned: always
  type: str
  sample: "e2:ad:1b:cf:24:48:10:6c"
actions:
  description: The commands, in order.
  returned: always
  type: list
  elements: str
commands:
  description: The argv of every command the module ran (or would run).
  returned: when RV(kind=ethernet)
  type: list
  elements: list
  sample: [["/usr/sbin/ip", "link", "set", "dev", "enp26s0f0np0", "vf", "1", "vlan", "101",
            "spoofchk", "on", "trust", "off"]]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import engine_of
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._fabric_vlan import FabricVlan

ARGUMENT_SPEC = with_sysfs_args(dict(
    vf_address=dict(type='str', required=True),
    vlan=dict(type='int', required=True),
    node_id=dict(type='str'),
    timeout=dict(type='float', default=10.0),
))


def main():
    run_module(ARGUMENT_SPEC, engine_of(FabricVlan))


if __name__ == '__main__':
    main()
