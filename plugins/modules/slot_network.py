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
  description: The port's OpenFlow port number (100 + the slot index).
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

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._files import remove
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import HOSTNAME, IFNAME, GpuaasError, Slot


class SlotNetwork(net.Changes):
    """One slot's entry, port and flows: everything is read and checked first, then changed."""

    def __init__(self, module):
        super(SlotNetwork, self).__init__(module)
        p = module.params
        self.slot_id = p['slot_id']
        self.slot = Slot.parse(self.slot_id)
        self.index, self.mac, self.ip = self.slot.index, self.slot.mac, self.slot.ip
        if p['mac'] is not None and p['mac'].lower() != self.mac:
            raise net.NetworkError('mac %r is not slot %s\'s: the layout gives %s' % (p['mac'], self.slot_id, self.mac))
        if p['ip'] is not None and p['ip'] != self.ip:
            raise net.NetworkError('ip %r is not slot %s\'s: the layout gives %s' % (p['ip'], self.slot_id, self.ip))
        self.hostname = HOSTNAME.check(p['hostname'], 'hostname') if p['state'] == 'present' else None
        self.bridge = IFNAME.check(p['bridge'], 'bridge')
        self.port = IFNAME.check(p['port'] or self.slot.tap, 'port')
        if self.port == self.bridge:
            raise net.NetworkError('port %s is the bridge itself, not a slot port' % self.port)
        self.gateway = str(net.gateway_interface('%s/24' % p['gateway']).ip)
        self.sink_port = net.check_port(p['telemetry_port'], 'telemetry_port')
        self.hosts_dir = net.config_path(p['hosts_dir'], 'hosts_dir')
        self.pid_file = net.config_path(p['dnsmasq_pid_file'], 'dnsmasq_pid_file')
        self.hosts_file = os.path.join(self.hosts_dir, self.slot_id)
        self.ofport, self.cookie = self.slot.ofport, self.slot.cookie
        self.reloaded = False

    def device_exists(self, name):
        return os.path.exists('/sys/class/net/%s' % name)

    def is_tap(self, name):
        return os.path.exists('/sys/class/net/%s/tun_flags' % name)

    def port_row(self):
        """(bridge the port is on or None, ofport, external_ids) of our port."""
        rc, out, _err = self.run(['ovs-vsctl', 'port-to-br', self.port], check=False)
        if rc != 0:
            return None, None, {}
        _rc, row, _err = self.run(['ovs-vsctl', '--format=json', '--columns=ofport,external_ids',
                                   'list', 'Interface', self.port])
        data = json.loads(row)['data'][0]
        return out.strip(), data[0], dict(data[1][1])

    def ofport_holder(self):
        """Another interface on our bridge that has the slot's OpenFlow port number, or None."""
        _rc, out, _err = self.run(['ovs-vsctl', '--format=json', '--columns=name', 'find', 'Interface',
                                   'ofport=%d' % self.ofport])
        for (name,) in json.loads(out)['data']:
            if name == self.port:
                continue
            rc, bridge, _err = self.run(['ovs-vsctl', 'port-to-br', name], check=False)
            if rc == 0 and bridge.strip() == self.bridge:
                return name
        return None

    def read_entry(self):
        if not os.path.exists(self.hosts_file):
            return None
        with open(self.hosts_file, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')

    def check_port(self, on_bridge, ids):
        """Refuse, before any change, a port that is not this slot's to use or remove."""
        if on_bridge is not None and on_bridge != self.bridge:
            raise net.NetworkError('port %s is on bridge %s, not %s' % (self.port, on_bridge, self.bridge))
        owner = ids.get('gpuaas-slot')
        if on_bridge is not None and owner not in (None, self.slot_id):
            raise net.NetworkError('port %s belongs to slot %s, not %s: release that slot first'
                                   % (self.port, owner, self.slot_id))
        if self.device_exists(self.port):
            if self.module.params['port_type'] == 'tap' and not self.is_tap(self.port):
                raise net.NetworkError('port %s exists and is not a tap device: give port_type=existing for a '
                                       'device made elsewhere' % self.port)
            addresses, _up = net.interface_addresses(self.run, self.port)
            if addresses:
                raise net.NetworkError('port %s has the IPv4 address(es) %s: a host interface, never a slot port'
                                       % (self.port, ', '.join(addresses)))

    def present(self):
        check = self.module.check_mode
        net.ovs_available(self.run)
        if net.bridge_info(self.run, self.bridge) is None:
            raise net.NetworkError('bridge %s does not exist: set up the host network first '
                                   '(gpuaas.slice.host_network, run by host_prep)' % self.bridge)
        buckets = net.group_buckets(self.run, self.bridge)
        if buckets is None:
            raise net.NetworkError('bridge %s has no DHCP broadcast group: run gpuaas.slice.host_network' % self.bridge)
        port_type = self.module.params['port_type']
        exists = self.device_exists(self.port)
        if not exists and port_type == 'existing':
            raise net.NetworkError('port %s does not exist (port_type=existing)' % self.port)
        on_bridge, ofport, ids = self.port_row()
        self.check_port(on_bridge, ids)
        holder = self.ofport_holder()
        if holder is not None:
            raise net.NetworkError('OpenFlow port %d of slot %s is held by %s on %s: remove that port first'
                                   % (self.ofport, self.slot_id, holder, self.bridge))

        # Everything checked: now the changes, in an order where each step's inputs exist.
        entry = net.dhcp_host_line(self.mac, self.ip, self.hostname)
        before = self.read_entry()
        if before != entry:
            self.changed('dhcp host %s' % self.hosts_file, before or '', entry)
            if not check:
                net.write_if_changed(self.module, self.hosts_file, entry)
                if before is not None:
                    # dnsmasq keeps a changed file's old record until SIGHUP.
                    self.reloaded = net.reload_dnsmasq(self.pid_file)
        if not exists:
            self.changed('tap %s' % self.port)
            if not check:
                self.run(['ip', 'tuntap', 'add', 'dev', self.port, 'mode', 'tap'])
        # Before the port joins the bridge, the host's own stack is kept off it (_network.PORT_SYSCTLS).
        wrong = net.port_sysctls(self.port) if exists else {}
        if wrong:
            self.changed('port %s kept off the host stack' % self.port,
                         dict((k, v[0]) for k, v in wrong.items()), dict((k, v[1]) for k, v in wrong.items()))
        if not check:
            net.isolate_port(self.port)
        if on_bridge is None or ofport != self.ofport or ids.get('gpuaas-slot') != self.slot_id:
            self.changed('port %s (ofport %d) on %s' % (self.port, self.ofport, self.bridge),
                         {'bridge': on_bridge, 'ofport': ofport}, {'bridge': self.bridge, 'ofport': self.ofport})
            if not check:
                self.run(['ovs-vsctl', '--if-exists', 'del-port', self.bridge, self.port, '--',
                          'add-port', self.bridge, self.port, '--', 'set', 'Interface', self.port,
                          'ofport_request=%d' % self.ofport, 'external_ids:gpuaas-slot=%s' % self.slot_id])
                self.check_ofport()
        if not check and not self.up(self.port):
            self.run(['ip', 'link', 'set', self.port, 'up'])
        flows = net.slot_flows(self.slot, self.gateway, self.sink_port)
        want = set(net.canonical_flow(flow) for flow in flows)
        have = net.dump_flows(self.run, self.bridge, self.cookie)
        if have != want:
            self.changed('flows cookie=%#x' % self.cookie, len(have), len(want))
            if not check:
                net.install_flows(self.run, self.bridge, self.cookie, flows)
        if buckets.get(self.ofport) != 'output:%d' % self.ofport:
            self.changed('DHCP broadcast bucket %d' % self.ofport)
            if not check:
                if self.ofport in buckets:
                    self.remove_bucket()
                self.run(net.OFCTL + ['insert-buckets', self.bridge,
                                      'group_id=%d,command_bucket_id=last,bucket=bucket_id:%d,actions=output:%d'
                                      % (net.DHCP_GROUP, self.ofport, self.ofport)])

    def check_ofport(self):
        _bridge, ofport, _ids = self.port_row()
        if ofport != self.ofport:
            raise net.NetworkError('port %s got OpenFlow port %s, not %d: another port holds that number '
                                   '(ovs-vsctl list Interface)' % (self.port, ofport, self.ofport))

    def up(self, name):
        try:
            with open('/sys/class/net/%s/flags' % name) as handle:
                return int(handle.read().strip(), 16) & 1 == 1
        except (IOError, OSError, ValueError):
            return False

    def remove_bucket(self):
        self.run(net.OFCTL + ['remove-buckets', self.bridge,
                              'group_id=%d,command_bucket_id=%d' % (net.DHCP_GROUP, self.ofport)])

    def absent(self):
        check = self.module.check_mode
        bridge_there = net.bridge_info(self.run, self.bridge) is not None
        on_bridge, _ofport, ids = self.port_row()
        self.check_port(on_bridge, ids)
        if bridge_there:
            if net.dump_flows(self.run, self.bridge, self.cookie):
                self.changed('flows cookie=%#x removed' % self.cookie)
                if not check:
                    self.run(net.OFCTL + ['del-flows', self.bridge, 'cookie=%#x/-1' % self.cookie])
            buckets = net.group_buckets(self.run, self.bridge) or {}
            if self.ofport in buckets:
                self.changed('DHCP broadcast bucket %d removed' % self.ofport)
                if not check:
                    self.remove_bucket()
        if on_bridge is not None:
            self.changed('port %s removed from %s' % (self.port, on_bridge))
            if not check:
                self.run(['ovs-vsctl', '--if-exists', 'del-port', on_bridge, self.port])
        if self.module.params['port_type'] == 'tap' and self.device_exists(self.port):
            self.changed('tap %s removed' % self.port)
            if not check:
                self.run(['ip', 'tuntap', 'del', 'dev', self.port, 'mode', 'tap'])
        before = self.read_entry()
        if before is not None:
            self.changed('dhcp host %s removed' % self.hosts_file, before, '')
            if not check:
                remove(self.hosts_file)
                # dnsmasq keeps a deleted file's record until SIGHUP.
                self.reloaded = net.reload_dnsmasq(self.pid_file)

    def result(self):
        return self.report(slot_id=self.slot_id, mac=self.mac, ip=self.ip, port=self.port, ofport=self.ofport,
                           cookie='%#x' % self.cookie, hosts_file=self.hosts_file, hostname=self.hostname,
                           dnsmasq_reloaded=self.reloaded)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            slot_id=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            bridge=dict(type='str', default='br-gpuaas'),
            hosts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-hosts.d'),
            hostname=dict(type='str'),
            mac=dict(type='str'),
            ip=dict(type='str'),
            port=dict(type='str'),
            port_type=dict(type='str', choices=['tap', 'existing'], default='tap'),
            gateway=dict(type='str', default='10.100.0.1'),
            telemetry_port=dict(type='int', default=9110),
            dnsmasq_pid_file=dict(type='path', default=net.DNSMASQ_PID_FILE),
        ),
        required_if=[('state', 'present', ('hostname',))],
        supports_check_mode=True,
    )
    try:
        slot = SlotNetwork(module)
        if module.params['state'] == 'present':
            slot.present()
        else:
            slot.absent()
    except GpuaasError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**slot.result())


if __name__ == '__main__':
    main()
