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
  - "O(state=reconciled) (the reconcile role): every fabric VF of the node's slots - those of
    O(slots) and of every live lease in O(lease_dir) (phase reserved, provisioning, running or stopped) -
    is converged to the live leases. A slot whose live lease has passthrough gets the lease's
    C(data.network.vlan) (0 without one), every other slot's VF VLAN 0; each with spoof checking on
    and trust off, read back. RV(vlans) names each VF that differed, what was found and what was
    set. On InfiniBand PFs nothing changes: RV(port_guids) and RV(members) are the node's GUIDs
    and the memberships its live leases ask for, for M(gpuaas.slice.fabric_partition)
    O(state=converged)."
  - "A lease that cannot be read or carries an invalid tenant, VLAN or partition key puts its VF
    on no tenant's segment; such a lease, and a VF that cannot be found or read back, is named in
    RV(problems) (the other VFs are still converged)."
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
  state:
    description:
      - V(present) puts the VF O(vf_address) on O(vlan); V(reconciled) converges every fabric VF of
        the node's slots to the node's live leases.
    type: str
    choices: [present, reconciled]
    default: present
  vf_address:
    description:
      - Full PCI address of the slot's fabric VF, for example V(0000:1a:00.2). Required with O(state=present).
    type: str
  vlan:
    description:
      - The tenant's VLAN, 2 to 4094 (V(1) is the default VLAN of every untagged port); V(0)
        takes the VF off every VLAN. Required with O(state=present).
    type: int
  node_id:
    description:
      - The host's node id; with it the VF's derived MAC (Ethernet) or port GUID (InfiniBand) is returned.
        Required with O(state=reconciled).
    type: str
  lease_dir:
    description: With O(state=reconciled), the node's slot leases.
    type: path
    default: /var/lib/gpuaas/node-scheduler/leases
  slots:
    description:
      - With O(state=reconciled), the node's slots - entries of its approved slot map (the VF in
        C(capacity_metadata.fabric_vf_pci_address)) or discovered slots (C(fabric_vf_pci_address)),
        each with its C(slot_id). A slot without a VF is skipped.
    type: list
    elements: dict
    default: []
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

- name: Reconcile - every slot's VF as its live lease says (VLAN 0 without one)
  gpuaas.slice.fabric_vlan:
    state: reconciled
    node_id: "{{ gpuaas_node_id }}"
    slots: "{{ gpuaas_approved_slots }}"
  register: gpuaas_fabric_node

- name: Off the tenant's VLAN, before the slot is wiped
  gpuaas.slice.fabric_vlan:
    vf_address: "0000:1a:00.2"
    vlan: 0
'''

RETURN = r'''
kind:
  description: V(ethernet) (the VLAN was converged) or V(infiniband) (nothing changed, see RV(port_guid)).
  returned: with state=present
  type: str
  sample: ethernet
pf_address:
  description: The VF's PF.
  returned: with state=present
  type: str
  sample: "0000:1a:00.0"
vf_index:
  description: The VF's index on its PF.
  returned: with state=present
  type: int
  sample: 1
netdev:
  description: The PF's network interface, or null when it has none.
  returned: with state=present
  type: str
  sample: enp26s0f0np0
vlan:
  description: The VF's VLAN now (V(0) none); null on an InfiniBand PF.
  returned: with state=present
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
  returned: with state=present
  type: str
  sample: "96:bf:df:86:c9:f5"
port_guid:
  description: The InfiniBand VF's port GUID, with O(node_id); null otherwise.
  returned: with state=present
  type: str
  sample: "e2:ad:1b:cf:24:48:10:6c"
actions:
  description: The commands, in order.
  returned: always
  type: list
  elements: str
vlans:
  description: With O(state=reconciled), each Ethernet VF that differed from its live lease, what was found and what was set.
  returned: with state=reconciled
  type: list
  elements: dict
  sample: [{slot_id: gpu-node-01-s0, vf_address: "0000:1a:00.2", found: {vlan: 101, spoofchk: true, trust: false},
            set: {vlan: 0, spoofchk: true, trust: false}}]
problems:
  description: Leases and VFs that could not be read or verified (their VFs join no tenant).
  returned: with state=reconciled
  type: list
  elements: str
port_guids:
  description: The port GUIDs of the node's InfiniBand slot VFs (OpenSM's form).
  returned: with state=reconciled
  type: list
  elements: str
guid_slots:
  description: The slot of each of RV(port_guids).
  returned: with state=reconciled
  type: dict
members:
  description: The memberships the live leases ask for, C({slot_id, port_guid, tenant, pkey}).
  returned: with state=reconciled
  type: list
  elements: dict
commands:
  description: The argv of every command the module ran (or would run).
  returned: when RV(kind=ethernet) or with state=reconciled
  type: list
  elements: list
  sample: [["/usr/sbin/ip", "link", "set", "dev", "enp26s0f0np0", "vf", "1", "vlan", "101",
            "spoofchk", "on", "trust", "off"]]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import engine_of
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._fabric_vlan import FabricVlan, NodeFabric

ARGUMENT_SPEC = with_sysfs_args(dict(
    state=dict(type='str', choices=['present', 'reconciled'], default='present'),
    vf_address=dict(type='str'),
    vlan=dict(type='int'),
    node_id=dict(type='str'),
    lease_dir=dict(type='path', default='/var/lib/gpuaas/node-scheduler/leases'),
    slots=dict(type='list', elements='dict', default=[]),
    timeout=dict(type='float', default=10.0),
))


def engine(module):
    return engine_of(NodeFabric if module.params['state'] == 'reconciled' else FabricVlan)(module)


def main():
    run_module(ARGUMENT_SPEC, engine, required_if=[('state', 'present', ['vf_address', 'vlan']),
                                                   ('state', 'reconciled', ['node_id'])])


if __name__ == '__main__':
    main()
