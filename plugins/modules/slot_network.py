#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_network
short_description: Wire one slot into the slot network (dnsmasq entry, port, OpenFlow rules, SSH port)
version_added: 0.1.0
description:
  - For one slot, whose MAC and IP come from the layout (never from the caller), makes
    the dnsmasq host entry C({hosts_dir}/{slot_id}) (C(MAC,IP,HOSTNAME)), the slot's port on the
    bridge and the OpenFlow rules of that port, tagged with the slot's cookie.
  - The rules let out of the port only the slot's MAC with the slot's IP (ARP included), and only
    to the gateway's DHCP, ping and telemetry sink, or past the slot network (NAT). Towards the
    port they let in only what the gateway sends to the slot's MAC or asks about its IP. No rule
    forwards between two slot ports unless both slots' leases name one tenant (below), and a port no slot
    owns matches no rule.
  - With O(lease_dir) (M(gpuaas.slice.slot_provision) and M(gpuaas.slice.slot_release) give it), the flows of
    the slot's tenant follow the node's live leases as M(gpuaas.slice.tenant_network) makes them. The slots
    of one tenant on the node reach each other (IPv4 and ARP, each from its own port, MAC and address), other
    tenants' never, and a tenant with an overlay plan in its leases (C(data.network)) reaches its slots on
    other nodes through the VXLAN tunnel port in its VNI. V(absent) takes the slot out of its tenant's flows
    first. The slot's guest is told the overlay's MTU by DHCP (option 26), from the slot's options file
    C({opts_dir}/{slot_id}), which matches the tag (the slot id) that M(gpuaas.slice.host_network) with the
    slot's node among its O(gpuaas.slice.host_network#module:node_ids) gives the slot's MAC; the file goes with the plan, and with
    V(absent). The host entry itself never sets a tag (dnsmasq 2.90 dies at the C(SIGHUP) after it answered
    a slot whose entry did). While dnsmasq runs with a configuration that does not tag the slot, an MTU is
    refused.
  - With O(port_type=tap) (the default) the port is a persistent tap device the slot's VM opens
    later (M(gpuaas.slice.slot_vm) with C(bridge_type=ethernet)), so the VM never sits on the bridge
    before its rules exist. With V(existing), the device exists already (a veth end in tests).
  - Last, the slot's SSH port, C(ssh_port_base + slot index) on the node's public address, by nftables
    rules in the table O(nft_table) (made by M(gpuaas.slice.host_network)) that forward that TCP port, and
    only it, to the slot's port 22 (a C(dnat) in the nat prerouting chain and the matching C(accept) in the
    forward chain, nothing else), from O(ssh_source_cidrs) only. They are added in one C(nft) transaction
    and kept in C({ssh_dir}/{slot_id}.nft), which the table's ruleset includes.
  - V(absent) first closes the slot's SSH port (its rules, then their file), then removes exactly that
    slot's entry, rules, port and tap (and a DHCP group bucket an earlier version left); other slots are untouched.
  - dnsmasq reads a new entry by itself (inotify on its C(dhcp-hostsdir)) but serves a changed or
    removed entry's old record until it gets C(SIGHUP); the module sends it one, through
    O(dnsmasq_pid_file), whenever it rewrites or removes an entry or an options file.
  - Refused before anything changes are slot ids that are not C({node_id}-s{index}), host names that
    are not one RFC 1123 label, a O(mac) or O(ip) that is not the layout's, a port that is the bridge,
    sits on another bridge, belongs to another slot, is not a tap with O(port_type=tap), or carries an
    IPv4 address (a host interface), an OpenFlow port number another port holds, source networks that
    are not IPv4 networks (host bits set, IPv6, anything else), an SSH port base whose range leaves the
    ports above 1023, and a public port another slot's rules forward (two nodes on one host with the same
    O(ssh_port_base)).
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Reports what it would create or remove; changes nothing.
  diff_mode:
    support: full
    details: The dhcp host entry, the port and the number of flows before and after.
  idempotent:
    support: full
requirements:
  - Open vSwitch (ovs-vsctl, ovs-ofctl), iproute2
options:
  slot_id:
    description: The slot, C({node_id}-s{index}).
    type: str
    required: true
  state:
    description: Whether the slot is wired.
    type: str
    choices: [present, absent]
    default: present
  bridge:
    description: The slot network's bridge (made by M(gpuaas.slice.host_network)).
    type: str
    default: br-gpuaas
  hosts_dir:
    description: dnsmasq's C(dhcp-hostsdir).
    type: path
    default: /var/lib/gpuaas/network/dhcp-hosts.d
  hostname:
    description: The host name dnsmasq hands out (one RFC 1123 label). Required with O(state=present).
    type: str
  mac:
    description: The slot's MAC, if the caller wants it checked against the layout's.
    type: str
  ip:
    description: The slot's IP, if the caller wants it checked against the layout's.
    type: str
  port:
    description: The port's device name; by default the slot's tap name (C(gs{index}-{hash})).
    type: str
  port_type:
    description: V(tap) creates a persistent tap device; V(existing) uses a device that exists.
    type: str
    choices: [tap, existing]
    default: tap
  gateway:
    description: The gateway address on the slot network.
    type: str
    default: 10.100.0.1
  telemetry_port:
    description: The telemetry sink's TCP port on the gateway.
    type: int
    default: 9110
  dnsmasq_pid_file:
    description:
      - The pid file of the slot network's dnsmasq (M(gpuaas.slice.host_network)'s O(gpuaas.slice.host_network#module:pid_file)).
      - When no dnsmasq runs there nothing is signalled; it reads every entry when it starts.
    type: path
    default: /run/gpuaas-dnsmasq.pid
  ssh_port_base:
    description:
      - The node's first public SSH port; the slot's is C(ssh_port_base + slot index).
      - From 1024 to 65290, so that every slot's port (up to 245 slots) is a port above 1023.
    type: int
    default: 22000
  ssh_source_cidrs:
    description:
      - The IPv4 networks the slot's SSH port answers (C(203.0.113.0/24), C(198.51.100.7)); others get nothing.
      - Empty, any source (C(0.0.0.0/0)).
    type: list
    elements: str
    default: []
  nft_table:
    description: The slot network's nftables table (M(gpuaas.slice.host_network)'s O(gpuaas.slice.host_network#module:nft_table)).
    type: str
    default: gpuaas
  ssh_dir:
    description: Where the slot's SSH rules are kept (M(gpuaas.slice.host_network)'s O(gpuaas.slice.host_network#module:ssh_dir)).
    type: path
    default: /etc/gpuaas/ssh.d
  opts_dir:
    description: dnsmasq's C(dhcp-optsdir) (M(gpuaas.slice.host_network)'s O(gpuaas.slice.host_network#module:opts_dir)).
    type: path
    default: /var/lib/gpuaas/network/dhcp-opts.d
  lease_dir:
    description:
      - The node's lease directory (M(gpuaas.slice.slot_lease)). Given, the slot's tenant's flows (and the tunnel port)
        are made to match the node's live leases; the slot's own lease says its tenant (C(data.tenant)) and overlay
        plan (C(data.network)).
      - Not given, the slot is wired alone (no tenant flows are read or changed).
    type: path
'''

EXAMPLES = r'''
- name: Wire slot 3 before its VM starts
  gpuaas.slice.slot_network:
    slot_id: gpu-node-01-s3
    hostname: train-01
  register: slot_net

- name: Wire slot 3 with its SSH port open to one network only
  gpuaas.slice.slot_network:
    slot_id: gpu-node-01-s3
    hostname: train-01
    ssh_source_cidrs: [203.0.113.0/24]

- name: Unwire it on release
  gpuaas.slice.slot_network:
    slot_id: gpu-node-01-s3
    state: absent
'''

RETURN = r'''
slot_id:
  description: The slot.
  returned: always
  type: str
mac:
  description: The slot's MAC (from the layout).
  returned: always
  type: str
  sample: "52:54:3e:91:0c:7a"
ip:
  description: The slot's IP (from the layout).
  returned: always
  type: str
  sample: 10.100.0.13
port:
  description: The port's device name.
  returned: always
  type: str
  sample: gs3-1a2b3c4d
ofport:
  description: The port's OpenFlow port number (from the slot layout).
  returned: always
  type: int
  sample: 103
cookie:
  description: The cookie of the slot's flows, in hex.
  returned: always
  type: str
  sample: "0x6770750000000003"
hosts_file:
  description: The slot's dnsmasq host entry.
  returned: always
  type: str
hostname:
  description: The host name in the entry (lower case); null with O(state=absent).
  returned: always
  type: str
  sample: train-01
dnsmasq_reloaded:
  description: Whether dnsmasq was sent C(SIGHUP) because an entry was rewritten or removed.
  returned: always
  type: bool
  sample: false
ssh_port:
  description: The slot's public SSH port on the node (C(ssh_port_base + slot index)).
  returned: always
  type: int
  sample: 22003
ssh_source_cidrs:
  description: The networks the slot's SSH port answers, normalised and sorted.
  returned: always
  type: list
  elements: str
  sample: [0.0.0.0/0]
mtu:
  description: The MTU the slot's guest is told by DHCP (its tenant's overlay); null without one or with O(state=absent).
  returned: always
  type: int
  sample: 1450
tenants:
  description: With O(lease_dir), each tenant with slots on the node (see M(gpuaas.slice.tenant_network)'s RV(gpuaas.slice.tenant_network#module:tenants)).
  returned: when O(lease_dir) is given
  type: dict
tenant_problems:
  description: With O(lease_dir), leases that joined no tenant, and why.
  returned: when O(lease_dir) is given
  type: list
  elements: str
tenant_removed:
  description: With O(lease_dir), cookies of tenant flows no live lease explains (and the unused tunnel port), removed.
  returned: when O(lease_dir) is given
  type: list
  elements: str
changes:
  description: What changed (or would change in check mode).
  returned: always
  type: list
  elements: str
'''

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_network import ARGUMENT_SPEC, RULES, SlotNetwork


def main():
    run_module(ARGUMENT_SPEC, net.engine(SlotNetwork), **RULES)


if __name__ == '__main__':
    main()
