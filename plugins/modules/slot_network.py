#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_network
short_description: Wire one slot into the slot network (dnsmasq entry, port, OpenFlow rules)
version_added: 0.1.0
description:
  - For one slot, whose MAC and IP come from the layout (never from the caller), makes
    the dnsmasq host entry C({hosts_dir}/{slot_id}) (C(MAC,IP,HOSTNAME)), the slot's port on the
    bridge and the OpenFlow rules of that port, tagged with the slot's cookie.
  - The rules let out of the port only the slot's MAC with the slot's IP (ARP included), and only
    to the gateway's DHCP, ping and telemetry sink, or past the slot network (NAT). Towards the
    port they let in only what the gateway sends to the slot's MAC or asks about its IP. No rule
    ever forwards between two slot ports, and a port no slot owns matches no rule.
  - With O(port_type=tap) (the default) the port is a persistent tap device the slot's VM opens
    later (M(gpuaas.slice.slot_vm) with C(bridge_type=ethernet)), so the VM never sits on the bridge
    before its rules exist. With V(existing), the device exists already (a veth end in tests).
  - V(absent) removes exactly that slot's entry, rules, group bucket, port and tap; other slots are
    untouched.
  - dnsmasq reads a new entry by itself (inotify on its C(dhcp-hostsdir)) but serves a changed or
    removed entry's old record until it gets C(SIGHUP); the module sends it one, through
    O(dnsmasq_pid_file), whenever it rewrites or removes an entry.
  - Refused before anything changes are slot ids that are not C({node_id}-s{index}), host names that
    are not one RFC 1123 label, a O(mac) or O(ip) that is not the layout's, a port that is the bridge,
    sits on another bridge, belongs to another slot, is not a tap with O(port_type=tap), or carries an
    IPv4 address (a host interface), and an OpenFlow port number another port holds.
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
'''

EXAMPLES = r'''
- name: Wire slot 3 before its VM starts
  gpuaas.slice.slot_network:
    slot_id: gpu-node-01-s3
    hostname: train-01
  register: slot_net

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
