#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: node_state_info
short_description: Compare what a node holds for its slots with its slot leases
version_added: 0.1.0
description:
  - Reads everything a slot leaves on a node, namely its libvirt domain (C(gpuaas-{slot_id})),
    its tap port on the slot bridge, its OpenFlow rules (by cookie), its SSH rules (their chains in the
    nftables table and their file), its dnsmasq host entry, its
    telemetry token, its boot disk, its cloud-init seed and the vfio-pci binding records, and
    compares them with the slot leases in O(lease_dir).
  - Only the slots of O(node_id) are judged; another node's slots on the same host are left alone.
  - Read-only; the C(gpuaas.slice.slot_reconcile) role acts on what it reports.
  - Anything that cannot be read (libvirt down, the bridge missing, C(ovs-vsctl) or C(ovs-ofctl) not
    installed, C(nft) not installed or unable to list O(nft_table), a directory that cannot be listed, the host's PCI devices under O(sysfs_root) not
    readable, a vfio_bind record that is not JSON of the expected shape) is listed in RV(blind); a caller must then remove nothing, because cleaning what it
    cannot see is how a GPU in use is handed out twice.
  - A leased, running passthrough slot whose domain lacks some of the slot's hostdevs (its GPU, the
    GPU's companion functions, its NVMe, its fabric VF) is listed in RV(hostdev_drift), with whether
    the C(gpuaas.slice.slot_reconcile) role may repair it (not when another domain holds the device).
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.attributes.read_only
options:
  node_id:
    description: The node's id; slot ids are C({node_id}-s{index}).
    type: str
    required: true
  uri:
    description: The libvirt URI.
    type: str
    default: qemu:///system
  bridge:
    description: The slot bridge (empty to skip the Open vSwitch checks on a node without one).
    type: str
    default: br-gpuaas
  lease_dir:
    description: The slot leases.
    type: path
    default: /var/lib/gpuaas/node-scheduler/leases
  hosts_dir:
    description: dnsmasq's per-slot host entries.
    type: path
    default: /var/lib/gpuaas/network/dhcp-hosts.d
  token_dir:
    description: The telemetry tokens.
    type: path
    default: /var/lib/gpuaas/telemetry/tokens
  disk_dir:
    description: The slots' boot disks.
    type: path
    default: /var/lib/gpuaas/disks
  seed_dir:
    description: The slots' seeds.
    type: path
    default: /var/lib/gpuaas/seeds
  vfio_state_dir:
    description: The vfio_bind records.
    type: path
    default: /var/lib/gpuaas/vfio
  ssh_dir:
    description: Where the slots' SSH rules are kept (C({slot_id}.nft), M(gpuaas.slice.slot_network)).
    type: path
    default: /etc/gpuaas/ssh.d
  nft_table:
    description:
      - The slot network's nftables table, whose C(ssh_dnat_{slot_id}) and C(ssh_fwd_{slot_id}) chains are the slots'
        SSH rules. Empty to skip it; a table that does not exist holds none.
    type: str
    default: gpuaas
  sysfs_root:
    description: Where sysfs is mounted; the host's PCI devices must be readable there.
    type: path
    default: /sys
requirements:
  - libvirt-python
  - Open vSwitch's ovs-vsctl and ovs-ofctl (unless O(bridge) is empty)
'''

EXAMPLES = r'''
- name: What does this node hold that no lease explains?
  gpuaas.slice.node_state_info:
    node_id: gpu-node-01
  register: node

- name: Show the orphans
  ansible.builtin.debug:
    var: node.orphans
'''

RETURN = r'''
leases:
  description: The leases, by slot id.
  returned: always
  type: dict
damaged_leases:
  description: Lease files that cannot be read; their slots count as held.
  returned: always
  type: list
  elements: dict
domains:
  description: The slot domains, by slot id, with C(active) and C(hostdevs).
  returned: always
  type: dict
other_nodes_domains:
  description:
    - Slot domains of other nodes on the same libvirt (a lab host can carry several nodes). They are
      never this node's orphans; the devices they hold count as held.
  returned: always
  type: list
  elements: str
  sample: [gpuaas-sample-hgx-s0]
orphans:
  description: "Slots that hold something but have no lease: slot id -> kinds (domain, port, flows, dhcp_host, token, disk, seed, ssh)."
  returned: always
  type: dict
  sample: {gpu-node-01-s3: [disk, domain, port]}
orphan_slots:
  description: The keys of RV(orphans), sorted.
  returned: always
  type: list
  elements: str
unknown_ports:
  description: Slot-like tap ports on the bridge that belong to no slot of this node (reported, never removed).
  returned: always
  type: list
  elements: str
devices_to_return:
  description: Devices vfio_bind moved to vfio-pci that no lease lists and no domain holds.
  returned: always
  type: list
  elements: str
devices_kept_for_domains:
  description: Devices no lease lists that a domain still holds; never returned to the host while it does.
  returned: always
  type: list
  elements: str
mismatches:
  description: Leased running slots whose domain is missing, stopped, or lacks the lease's devices.
  returned: always
  type: list
  elements: dict
lost_gpus:
  description:
    - Leased passthrough slots whose GPU is not on the PCI bus (it fell off the bus, Xid 79, or was removed), each
      with C(slot_id), C(allocation_id), C(phase) and C(gpu_address); empty when O(sysfs_root) is not given.
      Reported, nothing is removed; the node is not RV(clean).
  returned: always
  type: list
  elements: dict
  sample: [{slot_id: gpu-node-01-s2, allocation_id: alloc-7f3a, phase: running, gpu_address: "0000:3a:00.0"}]
hostdev_drift:
  description:
    - Leased running passthrough slots whose domain lacks some of the slot's hostdevs, each with
      C(slot_id), C(allocation_id), C(domain), C(active), C(missing) (addresses), the slot's
      C(gpu_address), C(companions), C(nvme_address) and C(fabric_vf_pci_address), C(repairable), and
      C(blocked) (why not) when it is not.
  returned: always
  type: list
  elements: dict
  sample: [{slot_id: gpu-node-01-s0, allocation_id: alloc-7f3a, domain: gpuaas-gpu-node-01-s0, active: false,
            missing: ["0000:1b:00.0", "0000:1b:00.1"], gpu_address: "0000:1b:00.0", companions: ["0000:1b:00.1"],
            nvme_address: null, fabric_vf_pci_address: null, repairable: true}]
incomplete:
  description: Leases not in phase running (an allocate or release that has not finished, or a quarantine).
  returned: always
  type: list
  elements: dict
blind:
  description: What could not be read. Non-empty means nothing may be cleaned.
  returned: always
  type: list
  elements: str
clean:
  description: Whether the node agrees with its leases.
  returned: always
  type: bool
'''

import functools

from ansible_collections.gpuaas.slice.plugins.module_utils import _libvirt
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_dir, check_path
from ansible_collections.gpuaas.slice.plugins.module_utils._node_state import NodeState
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import IFNAME, NFT_TABLE, NODE_ID

DIRS = dict(
    lease_dir='/var/lib/gpuaas/node-scheduler/leases',
    hosts_dir='/var/lib/gpuaas/network/dhcp-hosts.d',
    token_dir='/var/lib/gpuaas/telemetry/tokens',
    disk_dir='/var/lib/gpuaas/disks',
    seed_dir='/var/lib/gpuaas/seeds',
    vfio_state_dir='/var/lib/gpuaas/vfio',
)
ARGUMENT_SPEC = dict(
    node_id=dict(type='str', required=True),
    uri=dict(type='str', default=_libvirt.DEFAULT_URI),
    bridge=dict(type='str', default='br-gpuaas'),
    sysfs_root=dict(type='path', default='/sys'),
    ssh_dir=dict(type='path', default='/etc/gpuaas/ssh.d'),
    nft_table=dict(type='str', default='gpuaas'),
    **dict((name, dict(type='path', default=default)) for name, default in DIRS.items())
)


def libvirt_domains(uri):
    def listed():
        with _libvirt.Connection(uri) as conn:
            return [(dom.name(), dom.isActive(), dom.XMLDesc(0)) for dom in conn.conn.listAllDomains(0)]
    return listed


def engine(module):
    p = module.params
    NODE_ID.check(p['node_id'], 'node_id')
    if p['bridge']:
        IFNAME.check(p['bridge'], 'bridge')
    if p['nft_table']:
        NFT_TABLE.check(p['nft_table'], 'nft_table')
    dirs = [check_dir(p[name], name) for name in DIRS]
    _libvirt.require_libvirt(module)
    state = NodeState(functools.partial(Runner(module), check=False), p['node_id'], *dirs, bridge=p['bridge'],
                      libvirt_domains=libvirt_domains(p['uri']), sysfs_root=check_path(p['sysfs_root'], 'sysfs_root'),
                      bin_path=module.get_bin_path, ssh_dir=check_dir(p['ssh_dir'], 'ssh_dir'),
                      nft_table=p['nft_table'] or None)
    return dict(changed=False, **state.report())


def main():
    run_module(ARGUMENT_SPEC, engine)


if __name__ == '__main__':
    main()
