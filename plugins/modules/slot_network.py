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
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._files import remove
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import HOSTNAME, IFNAME, SLOT_GATEWAY, SLOT_NETWORK, Slot


class SlotNetwork:
    """One slot's entry, port and flows: everything is read and checked first, then planned."""

    def __init__(self, module):
        self.module = module
        p = module.params
        self.run = net.runner(module)
        self.plan = Plan(module, self.run, net.NetworkError)
        self.slot = Slot.parse(p['slot_id'])
        self.slot_id, self.mac, self.ip = self.slot.slot_id, self.slot.mac, self.slot.ip
        if p['mac'] is not None and p['mac'].lower() != self.mac:
            raise net.NetworkError('mac %r is not slot %s\'s: the layout gives %s' % (p['mac'], self.slot_id, self.mac))
        if p['ip'] is not None and p['ip'] != self.ip:
            raise net.NetworkError('ip %r is not slot %s\'s: the layout gives %s' % (p['ip'], self.slot_id, self.ip))
        self.hostname = HOSTNAME.check(p['hostname'], 'hostname') if p['state'] == 'present' else None
        self.bridge = IFNAME.check(p['bridge'], 'bridge')
        self.port = IFNAME.check(p['port'] or self.slot.tap, 'port')
        if self.port == self.bridge:
            raise net.NetworkError('port %s is the bridge itself, not a slot port' % self.port)
        self.gateway = str(net.gateway_interface('%s/%d' % (p['gateway'], SLOT_NETWORK.prefixlen)).ip)
        self.sink_port = net.check_port(p['telemetry_port'], 'telemetry_port')
        self.hosts_dir = net.config_path(p['hosts_dir'], 'hosts_dir', directory=True)
        self.pid_file = net.config_path(p['dnsmasq_pid_file'], 'dnsmasq_pid_file')
        self.hosts_file = self.slot.file(self.hosts_dir)
        self.ofport, self.cookie = self.slot.ofport, self.slot.cookie
        self.tap = p['port_type'] == 'tap'
        self.reloaded = False

    def reload(self):
        # dnsmasq keeps a changed or removed file's old record until SIGHUP.
        self.reloaded = net.reload_dnsmasq(self.pid_file)

    def present(self):
        net.ovs_available(self.run)
        if net.bridge_info(self.run, self.bridge) is None:
            raise net.NetworkError('bridge %s does not exist: set up the host network first '
                                   '(gpuaas.slice.host_network, run by host_prep)' % self.bridge)
        buckets = net.group_buckets(self.run, self.bridge)
        if buckets is None:
            raise net.NetworkError('bridge %s has no DHCP broadcast group: run gpuaas.slice.host_network' % self.bridge)
        exists = net.device_exists(self.port)
        if not exists and not self.tap:
            raise net.NetworkError('port %s does not exist (port_type=existing)' % self.port)
        on_bridge, ofport, ids = net.port_row(self.run, self.port)
        net.check_slot_port(self.run, self.port, self.bridge, self.slot_id, self.tap, on_bridge, ids)
        holder = net.ofport_holder(self.run, self.bridge, self.port, self.ofport)
        if holder is not None:
            raise net.NetworkError('OpenFlow port %d of slot %s is held by %s on %s: remove that port first'
                                   % (self.ofport, self.slot_id, holder, self.bridge))
        # Everything checked: now the steps, in an order where each step's inputs exist.
        entry = net.dhcp_host_line(self.mac, self.ip, self.hostname)
        net.file_step(self.plan, self.module, self.hosts_file, entry, 'dhcp host %s' % self.hosts_file, self.reload)
        if not exists:
            # Before the port joins the bridge, the host's own stack is kept off it (_network.PORT_SYSCTLS).
            self.plan.command('tap %s' % self.port, ['ip', 'tuntap', 'add', 'dev', self.port, 'mode', 'tap'],
                              verify=lambda: None if net.device_exists(self.port) else 'there is no such device')
        wrong = net.port_sysctls(self.port) if exists else {}
        if wrong or not exists:
            self.plan.change('port %s kept off the host stack' % self.port, lambda: net.isolate_port(self.port),
                             verify=lambda: net.port_sysctls(self.port) or None,
                             before=dict((k, v[0]) for k, v in wrong.items()) or None,
                             after=dict((k, v[1]) for k, v in wrong.items()) or None)
        if on_bridge is None or ofport != self.ofport or ids.get('gpuaas-slot') != self.slot_id:
            self.plan.command(
                'port %s (ofport %d) on %s' % (self.port, self.ofport, self.bridge),
                net.VSCTL + ['--if-exists', 'del-port', self.bridge, self.port, '--',
                             'add-port', self.bridge, self.port, '--', 'set', 'Interface', self.port,
                             'ofport_request=%d' % self.ofport, 'external_ids:gpuaas-slot=%s' % self.slot_id],
                verify=self.ofport_taken, before={'bridge': on_bridge, 'ofport': ofport},
                after={'bridge': self.bridge, 'ofport': self.ofport})
        if not exists or not net.link_up(self.port):
            self.plan.command('port %s up' % self.port, ['ip', 'link', 'set', self.port, 'up'],
                              verify=lambda: None if net.link_up(self.port) else 'the link is down')
        net.flows_step(self.plan, self.run, self.bridge, self.cookie,
                       net.slot_flows(self.slot, self.gateway, self.sink_port), 'flows cookie=%#x' % self.cookie)
        want = 'output:%d' % self.ofport
        if buckets.get(self.ofport) != want:
            self.plan.change('DHCP broadcast bucket %d' % self.ofport,
                             lambda: net.set_bucket(self.run, self.bridge, self.ofport, self.ofport in buckets),
                             verify=lambda: None if net.bucket(self.run, self.bridge, self.ofport) == want
                             else 'the group has no bucket %d' % self.ofport)

    def ofport_taken(self):
        _bridge, ofport, _ids = net.port_row(self.run, self.port)
        if ofport != self.ofport:
            return ('port %s got OpenFlow port %s, not %d: another port holds that number '
                    '(ovs-vsctl list Interface)' % (self.port, ofport, self.ofport))
        return None

    def absent(self):
        bridge_there = net.bridge_info(self.run, self.bridge) is not None
        on_bridge, _ofport, ids = net.port_row(self.run, self.port)
        net.check_slot_port(self.run, self.port, self.bridge, self.slot_id, self.tap, on_bridge, ids)
        if bridge_there:
            if net.dump_flows(self.run, self.bridge, self.cookie):
                self.plan.command('flows cookie=%#x removed' % self.cookie,
                                  net.OFCTL + ['del-flows', self.bridge, 'cookie=%#x/-1' % self.cookie],
                                  verify=lambda: 'flows are left' if net.dump_flows(self.run, self.bridge, self.cookie)
                                  else None)
            if self.ofport in (net.group_buckets(self.run, self.bridge) or {}):
                self.plan.change('DHCP broadcast bucket %d removed' % self.ofport,
                                 lambda: net.remove_bucket(self.run, self.bridge, self.ofport),
                                 verify=lambda: 'the bucket is left' if net.bucket(self.run, self.bridge, self.ofport)
                                 else None)
        if on_bridge is not None:
            self.plan.command('port %s removed from %s' % (self.port, on_bridge),
                              net.VSCTL + ['--if-exists', 'del-port', on_bridge, self.port],
                              verify=lambda: net.port_row(self.run, self.port)[0] and 'the port is still on a bridge')
        if self.tap and net.device_exists(self.port):
            self.plan.command('tap %s removed' % self.port, ['ip', 'tuntap', 'del', 'dev', self.port, 'mode', 'tap'],
                              verify=lambda: 'the device is left' if net.device_exists(self.port) else None)
        before = net.read_text(self.hosts_file)
        if before is not None:
            self.plan.change('dhcp host %s removed' % self.hosts_file, self.remove_entry, before=before, after='',
                             verify=lambda: net.read_text(self.hosts_file) is not None and 'the file is still there')

    def remove_entry(self):
        remove(self.hosts_file)
        self.reload()

    def result(self):
        self.plan.execute()
        return net.report(self.plan, slot_id=self.slot_id, mac=self.mac, ip=self.ip, port=self.port,
                          ofport=self.ofport, cookie='%#x' % self.cookie, hosts_file=self.hosts_file,
                          hostname=self.hostname, dnsmasq_reloaded=self.reloaded)


def main():
    run_module(dict(
        slot_id=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        bridge=dict(type='str', default='br-gpuaas'),
        hosts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-hosts.d'),
        hostname=dict(type='str'),
        mac=dict(type='str'),
        ip=dict(type='str'),
        port=dict(type='str'),
        port_type=dict(type='str', choices=['tap', 'existing'], default='tap'),
        gateway=dict(type='str', default=str(SLOT_GATEWAY)),
        telemetry_port=dict(type='int', default=9110),
        dnsmasq_pid_file=dict(type='path', default=net.DNSMASQ_PID_FILE),
    ), net.engine(SlotNetwork), required_if=[('state', 'present', ('hostname',))])


if __name__ == '__main__':
    main()
