#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: tenant_network
short_description: Make a node's tenant flows and VXLAN tunnel port match its live leases
version_added: 0.2.0
description:
  - Reads the node's leases (C({lease_dir}/{slot_id}.json), phases C(reserved), C(provisioning), C(running), C(stopped)) and
    their C(data.tenant) and C(data.network) (the tenant's overlay plan from the control plane,
    C({tenant, vni, mtu, peers})), and gives the bridge exactly the tenant flows they explain, one set per
    tenant under the tenant's cookie (C(0x677074) and 40 bits of the tenant id's SHA-256).
  - Slots of one tenant on the node reach each other on the slot network (IPv4 and ARP, from the sender's own
    port, MAC and address to the other's); slots of different tenants never do. With an overlay plan,
    the tenant's IPv4 and ARP for slot-network addresses that are not its slots here go through the tunnel
    port C(gpuaas-vxlan) (VXLAN, OpenFlow port 99) in the tenant's VNI to each of its peers, and only frames
    in that VNI from those peers' underlay addresses reach the tenant's slots here.
  - Tenant flows whose cookie no live lease's tenant explains, and the tunnel port when no tenant here has
    an overlay, are removed and reported (RV(tenant_removed)). The reconcile role runs it.
    M(gpuaas.slice.slot_network) does the same for one slot's tenant when given O(lease_dir).
  - A lease that cannot be read, or whose tenant or plan is invalid, joins no tenant (it is named in
    RV(tenant_problems)) - what cannot be seen stays isolated.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Reports the flows and port it would change; changes nothing.
  diff_mode:
    support: full
    details: The number of each tenant's flows before and after; the tunnel port's settings.
  idempotent:
    support: full
requirements:
  - Open vSwitch (ovs-vsctl, ovs-ofctl)
options:
  node_id:
    description: The node whose slots' leases count (a lab host can carry several nodes' slots).
    type: str
    required: true
  bridge:
    description: The slot network's bridge (made by M(gpuaas.slice.host_network)).
    type: str
    default: br-gpuaas
  lease_dir:
    description: The node's lease directory (M(gpuaas.slice.slot_lease)).
    type: path
    default: /var/lib/gpuaas/node-scheduler/leases
  gateway:
    description: The gateway address on the slot network (never reached through a tenant's overlay).
    type: str
    default: 10.100.0.1
  plan:
    description:
      - The tenant's new overlay plan from the control plane, C({tenant, vni, mtu, peers}) with C(peers) a list of
        C({node_id, underlay_ip}) (other keys are ignored), when the tenant's set of nodes changed and this node, already holding slots of
        the tenant, must learn it without any slot being touched.
      - It is written into C(data.network) of each of the tenant's live leases on the node whose plan differs
        (under the lease's lock; the fabric keys C(pkey), C(vlan), C(fabric) of each lease are kept), so the leases
        stay the node's one record of the plan, and the flows are made from it. A tenant without a live lease here
        has nothing to update. A plan that is not valid fails the task and changes nothing.
    type: dict
  state:
    description: V(present), the only state - the tenant flows exactly as the leases say (none for a tenant without live leases).
    type: str
    choices: [present]
    default: present
'''

EXAMPLES = r'''
- name: Make the tenant flows match the leases (reconcile)
  gpuaas.slice.tenant_network:
    node_id: gpu-node-01
  register: tenants

- name: Give the node a tenant's new overlay peers (the control plane's network job)
  gpuaas.slice.tenant_network:
    node_id: gpu-node-01
    plan: {tenant: acme, vni: 4096, mtu: 1450, peers: [{node_id: gpu-node-02, underlay_ip: 192.0.2.12}]}
'''

RETURN = r'''
node_id:
  description: The node.
  returned: always
  type: str
bridge:
  description: The bridge.
  returned: always
  type: str
tenants:
  description: Each tenant with slots on the node, its slots, its flows' cookie, its VNI and peers' underlay addresses.
  returned: always
  type: dict
  sample: {"tenant-a": {"slots": ["gpu-node-01-s0", "gpu-node-01-s1"], "cookie": "0x677074a1b2c3d4e5", "vni": 5001,
           "peers": ["192.0.2.12"]}}
tenant_problems:
  description: Leases that joined no tenant, and why.
  returned: always
  type: list
  elements: str
tenant_removed:
  description: Cookies of tenant flows no live lease explains, and the tunnel port when no tenant needs it, removed.
  returned: always
  type: list
  elements: str
  sample: ["0x6770749f00112233"]
leases_updated:
  description: The slots whose lease got the new O(plan) (empty without one, or when each had it already).
  returned: always
  type: list
  elements: str
  sample: ["gpu-node-01-s0"]
changes:
  description: What changed (or would change in check mode).
  returned: always
  type: list
  elements: str
'''

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._tenant import ARGUMENT_SPEC, TenantNetwork


def main():
    run_module(dict(ARGUMENT_SPEC, state=dict(type='str', choices=['present'], default='present')),
               net.engine(TenantNetwork))


if __name__ == '__main__':
    main()
