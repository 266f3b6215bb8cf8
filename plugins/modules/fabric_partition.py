#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: fabric_partition
short_description: Keep a slot's InfiniBand VF in its tenant's partition, in the subnet manager
version_added: 0.1.0
description:
  - Runs on the subnet manager's host (the allocate and release roles delegate it there).
  - "O(state=present): the port GUID O(port_guid) becomes a full member of the tenant's
    partition O(pkey), and of no other tenant's partition. O(state=absent): it is in no tenant
    partition (O(tenant) and O(pkey) are not needed). A tenant partition left without members
    is dropped."
  - "O(state=converged) (the reconcile role): one node's membership made exactly what its live
    leases say. Every GUID in O(port_guids) (the fabric VFs of the node's slots, which
    M(gpuaas.slice.fabric_vlan) O(state=reconciled) returns) is a full member of the partition its
    O(members) entry names and of no other tenant partition, or of none without an entry; GUIDs
    of other nodes are left as they are. RV(changes) names each GUID whose membership changed."
  - "The OpenSM backend owns O(conf) (OpenSM's C(--Pconfig), C(partitions.conf)): it writes it
    whole, atomically - the default partition (0x7fff) with O(default_members), then one line
    per tenant partition, C(tenant_<tenant>=0x<pkey>, ipoib : 0x<guid>=full, ... ;) (the grammar
    of opensm(8), PARTITION CONFIGURATION) - reads it back, and runs O(reload) to make OpenSM
    re-read it (a SIGHUP starts a heavy sweep, which parses the file)."
  - A file it did not write is refused, not overwritten; so is a partition key the file holds
    for another tenant.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Returns the partitions it would write and the command it would run.
  diff_mode:
    support: full
    details: The tenant partitions before and after, under C(partitions).
  idempotent:
    support: full
options:
  port_guid:
    description:
      - The VF's port GUID, as M(gpuaas.slice.sriov_vfs) set it (V(e2:ad:1b:cf:24:48:10:6c) or
        V(0xe2ad1bcf2448106c)); M(gpuaas.slice.fabric_vlan) returns it for the slot's VF.
        Required with O(state=present) and O(state=absent).
    type: str
  state:
    description:
      - V(present) makes O(port_guid) a full member of O(pkey); V(absent) takes it out of every tenant
        partition; V(converged) makes the node's O(port_guids) members of exactly O(members).
    type: str
    choices: [present, absent, converged]
    default: present
  port_guids:
    description:
      - With O(state=converged), the node's own port GUIDs (every fabric VF of its slots), whose
        membership this run owns.
    type: list
    elements: str
  members:
    description:
      - With O(state=converged), the memberships the node's live leases ask for, each
        C({port_guid, tenant, pkey}) with a GUID of O(port_guids), at most one entry per GUID.
    type: list
    elements: dict
  tenant:
    description: The tenant (the partition's name is C(tenant_<tenant>)); required with O(state=present).
    type: str
  pkey:
    description:
      - The tenant's partition key, V(0x0001) to V(0x7ffe), or its full-member form (V(0x8001)),
        as the control plane's C(network.pkey) has it. Required with O(state=present).
    type: str
  backend:
    description: The subnet manager. Only V(opensm) ships.
    type: str
    choices: [opensm]
    default: opensm
  conf:
    description: OpenSM's partition configuration file.
    type: path
    default: /etc/opensm/partitions.conf
  default_members:
    description:
      - The default partition's members, keywords with their membership. The default keeps every
        port a limited member (it reaches the SM and the switches, not the other ports) and the
        SM's own port a full one.
    type: str
    default: ALL=limited, SELF=full
  reload:
    description:
      - The command that makes OpenSM re-read O(conf) after a change; V([]) runs none.
    type: list
    elements: str
    default: [systemctl, kill, --signal=HUP, opensm.service]
notes:
  - Debian's opensm parses C(partitions.conf) only in a heavy sweep, which needs an InfiniBand
    port; there is no option to check a file without one.
seealso:
  - module: gpuaas.slice.fabric_vlan
  - module: gpuaas.slice.sriov_vfs
'''

EXAMPLES = r'''
- name: The slot's VF into its tenant's partition, before the VM starts
  gpuaas.slice.fabric_partition:
    port_guid: "{{ gpuaas_fabric.port_guid }}"
    tenant: acme
    pkey: "0x8100"
  delegate_to: "{{ gpuaas_sm_host }}"

- name: Reconcile - the node's VFs in exactly the partitions of its live leases
  gpuaas.slice.fabric_partition:
    state: converged
    port_guids: "{{ gpuaas_fabric_node.port_guids }}"
    members: "{{ gpuaas_fabric_node.members }}"
  delegate_to: "{{ gpuaas_sm_host }}"

- name: Out of every tenant partition, before the slot is wiped
  gpuaas.slice.fabric_partition:
    port_guid: "e2:ad:1b:cf:24:48:10:6c"
    state: absent
  delegate_to: "{{ gpuaas_sm_host }}"
'''

RETURN = r'''
where:
  description: Where the partitions are kept.
  returned: always
  type: str
  sample: OpenSM partitions /etc/opensm/partitions.conf
pkey:
  description: The partition key (15 bits); null with O(state=absent) and no O(pkey).
  returned: with state=present or state=absent
  type: str
  sample: "0x0100"
port_guid:
  description: The port GUID as OpenSM writes it.
  returned: with state=present or state=absent
  type: str
  sample: "0xe2ad1bcf2448106c"
port_guids:
  description: The node's port GUIDs, as OpenSM writes them.
  returned: with state=converged
  type: list
  elements: str
changes:
  description: Each of the node's GUIDs whose membership changed (or would), with the partition keys it was found in and is now in.
  returned: with state=converged
  type: list
  elements: dict
  sample: [{port_guid: "0xe2ad1bcf2448106c", found: ["0x0100"], set: []}]
partitions:
  description: Every tenant partition now, by partition key, with its tenant and full members.
  returned: always
  type: dict
  sample: {"0x0100": {tenant: acme, port_guids: ["0xe2ad1bcf2448106c"]}}
actions:
  description: The write and the reload, in order.
  returned: always
  type: list
  elements: str
commands:
  description: The argv of every command the module ran (or would run).
  returned: always
  type: list
  elements: list
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._subnet_manager import (
    DEFAULT_MEMBERS, OpenSM, SubnetManagerError, run, run_node)

ARGUMENT_SPEC = dict(
    port_guid=dict(type='str'),
    state=dict(type='str', choices=['present', 'absent', 'converged'], default='present'),
    port_guids=dict(type='list', elements='str'),
    members=dict(type='list', elements='dict'),
    tenant=dict(type='str'),
    pkey=dict(type='str', no_log=False),   # a partition key names a partition: no secret
    backend=dict(type='str', choices=['opensm'], default='opensm'),
    conf=dict(type='path', default='/etc/opensm/partitions.conf'),
    default_members=dict(type='str', default=DEFAULT_MEMBERS),
    reload=dict(type='list', elements='str', default=['systemctl', 'kill', '--signal=HUP', 'opensm.service']),
)


def engine(module):
    p = module.params
    runner = Runner(module, SubnetManagerError)
    reload = list(p['reload'])
    if reload:
        reload[0] = runner.path(reload[0])
    backend = OpenSM(module, runner, p['conf'], p['default_members'], reload)
    if p['state'] == 'converged':
        return run_node(module, backend, p['port_guids'], p['members'])
    return run(module, backend, p['port_guid'], p['state'], p['tenant'], p['pkey'])


def main():
    run_module(ARGUMENT_SPEC, engine, required_if=[('state', 'present', ['port_guid']), ('state', 'absent', ['port_guid']),
                                                   ('state', 'converged', ['port_guids', 'members'])])


if __name__ == '__main__':
    main()
