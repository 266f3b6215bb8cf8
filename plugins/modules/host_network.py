#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: host_network
short_description: Set up a node's slot network (Open vSwitch bridge, gateway, flows, dnsmasq, nftables)
version_added: 0.1.0
description:
  - Creates the Open vSwitch bridge O(bridge) with C(fail_mode=secure) (no flows, no traffic), with
    the kernel datapath (V(system)) or the userspace one (V(netdev), for hosts without the
    openvswitch kernel module).
  - Puts the gateway address O(gateway) on the bridge's own interface and brings it up.
  - Installs the bridge's host flows (default drop; dnsmasq's broadcast DHCP replies are dropped). A DHCP
    reply reaches only the slot it answers - the nftables table clears the broadcast flag of the slots'
    DHCP requests (and their UDP checksum, which IPv4 allows to be 0), so dnsmasq sends each reply to the
    asker's MAC, which only that slot's flows deliver. The group that flooded broadcast replies to every
    slot port in earlier versions is removed. Each slot's own flows come from M(gpuaas.slice.slot_network),
    each tenant's from M(gpuaas.slice.tenant_network).
  - Writes the dnsmasq configuration O(dnsmasq_conf), with DHCP on the bridge only, fixed addresses only
    (C(dhcp-hostsdir), one file per slot; C(dhcp-optsdir) O(opts_dir), one options file per slot), no dynamic range, no
    DNS, and its own pid file O(pid_file). It does not run dnsmasq; RV(dnsmasq_argv) is the command
    line to run it with (a systemd unit or M(gpuaas.slice.host_daemon)).
  - dnsmasq reads a new file in O(hosts_dir) by itself but keeps the record of a changed or deleted
    one until it gets C(SIGHUP); M(gpuaas.slice.slot_network) sends it one through O(pid_file).
  - Applies the nftables table C(inet {nft_table}) atomically; the slots reach DHCP, ping and the
    telemetry sink on the host and nothing else of it, never each other through the host's routing,
    never the private networks in O(blocked_networks); with O(nat) their egress is masqueraded and
    IPv4 forwarding is turned on.
  - A bridge Open vSwitch cannot open the datapath of (V(system) without the openvswitch kernel
    module) is removed again and the module fails, saying so.
  - The nftables ruleset is loaded before it is recorded in O(nft_file), so a ruleset C(nft) refuses
    is tried again on the next run.
  - The table also holds the slots' SSH ports, which M(gpuaas.slice.slot_network) adds and removes slot by slot,
    in two verdict maps looked up for TCP to O(ssh_public_address) from off the slot network (a C(dnat) to
    the slot's port 22) and before anything towards the bridge is dropped (the matching C(accept)), and
    replies on those connections. Every slot's rules are kept in O(ssh_dir) and included by the ruleset,
    so rebuilding the table keeps the ports of the slots that have them. Nothing else is opened.
  - V(absent) removes the bridge, the table and the configuration file.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Reports what it would create or change; changes nothing.
  diff_mode:
    support: full
    details: Before and after of the bridge, gateway, flows count, dnsmasq configuration and nftables ruleset.
  idempotent:
    support: full
requirements:
  - Open vSwitch (ovs-vsctl, ovs-ofctl), iproute2, nftables
options:
  state:
    description: Whether the slot network exists.
    type: str
    choices: [present, absent]
    default: present
  bridge:
    description: The bridge (a network interface name, at most 15 characters).
    type: str
    default: br-gpuaas
  datapath_type:
    description: V(system) (the kernel datapath) or V(netdev) (Open vSwitch's userspace datapath).
    type: str
    choices: [system, netdev]
    default: system
  gateway:
    description: The gateway address with its prefix, on the slot network 10.100.0.0/24.
    type: str
    default: 10.100.0.1/24
  telemetry_port:
    description: The telemetry sink's TCP port on the gateway address.
    type: int
    default: 9110
  dnsmasq_conf:
    description: The dnsmasq configuration file written for the slot network.
    type: path
    default: /etc/gpuaas/dnsmasq.conf
  hosts_dir:
    description: dnsmasq's C(dhcp-hostsdir), one file per slot (created when missing).
    type: path
    default: /var/lib/gpuaas/network/dhcp-hosts.d
  opts_dir:
    description:
      - dnsmasq's C(dhcp-optsdir) (created when missing), where M(gpuaas.slice.slot_network) keeps a slot's own
        options (its tenant overlay's MTU, DHCP option 26) in C({opts_dir}/{slot_id}).
    type: path
    default: /var/lib/gpuaas/network/dhcp-opts.d
  node_ids:
    description:
      - The ids of the nodes whose slots this slot network serves (one, the node's own, on a real host; the
        lab runs two on one host). The configuration tags each slot they can have with its slot id, by its
        MAC (C(dhcp-mac)), which the slot's options file matches. A slot of a node not listed cannot be told
        an overlay MTU, and M(gpuaas.slice.slot_network) refuses to give it one while dnsmasq runs with
        such a configuration.
      - The tags are in the configuration, not in the slots' host entries (C(set:)), because dnsmasq 2.90
        (Debian 12) dies at the first C(SIGHUP) after it answered a slot whose entry set a tag.
    type: list
    elements: str
    default: []
    aliases: [node_id]
  lease_file:
    description: dnsmasq's lease file.
    type: path
    default: /var/lib/gpuaas/network/dnsmasq.leases
  dns_servers:
    description: DNS servers handed to the slots by DHCP (none by default).
    type: list
    elements: str
    default: []
  nat:
    description: Masquerade the slots' egress and turn on IPv4 forwarding.
    type: bool
    default: true
  uplink:
    description: The interface egress leaves through; unset, any interface but the bridge.
    type: str
  blocked_networks:
    description: Networks the slots may never reach through the host (management networks, metadata services).
    type: list
    elements: str
    default: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, 100.64.0.0/10]
  nft_table:
    description: The name of the nftables table (family C(inet)).
    type: str
    default: gpuaas
  ssh_public_address:
    description:
      - The node's IPv4 address the slots' SSH ports (C(ssh_port_base + slot index)) are forwarded on.
      - Unset, any address of the host's own (C(fib daddr type local)) that a packet arrives on from off
        the slot network.
    type: str
  ssh_port_base:
    description:
      - The node's first SSH port (slot 0's); the node's range of them (one for each possible slot) is dropped
        on the host itself, so a port no slot has answers nothing, not even a reset.
      - The same as M(gpuaas.slice.slot_network)'s O(gpuaas.slice.slot_network#module:ssh_port_base).
    type: int
    default: 22000
  ssh_dir:
    description: Where each slot's SSH rules are kept (C({slot_id}.nft)); the ruleset includes them all.
    type: path
    default: /etc/gpuaas/ssh.d
  nft_file:
    description: Where the applied ruleset is kept (what boot-time units load, and what idempotence compares).
    type: path
    default: /etc/gpuaas/nftables.nft
  pid_file:
    description:
      - dnsmasq's pid file (C(pid-file) in O(dnsmasq_conf)); M(gpuaas.slice.slot_network) signals dnsmasq through it.
      - Directly under C(/run) by default, which exists after a reboot; a distribution's own dnsmasq keeps its default one.
    type: path
    default: /run/gpuaas-dnsmasq.pid
'''

EXAMPLES = r'''
- name: The slot network on a host without the openvswitch kernel module
  gpuaas.slice.host_network:
    datapath_type: netdev
  register: net

- name: Run dnsmasq for it where systemd does not run
  gpuaas.slice.host_daemon:
    name: gpuaas-dnsmasq
    argv: "{{ net.dnsmasq_argv }}"
    pidfile: /run/gpuaas/gpuaas-dnsmasq.pid
'''

RETURN = r'''
bridge:
  description: The bridge.
  returned: always
  type: str
  sample: br-gpuaas
gateway:
  description: The gateway address with its prefix.
  returned: always
  type: str
  sample: 10.100.0.1/24
datapath_type:
  description: The bridge's datapath.
  returned: always
  type: str
  sample: netdev
nft_table:
  description: The nftables table (family C(inet)).
  returned: always
  type: str
  sample: gpuaas
dnsmasq_conf:
  description: The dnsmasq configuration file.
  returned: always
  type: str
  sample: /etc/gpuaas/dnsmasq.conf
dnsmasq_pid_file:
  description: dnsmasq's pid file, as written in its configuration.
  returned: always
  type: str
  sample: /run/gpuaas-dnsmasq.pid
dnsmasq_argv:
  description: The command line that runs dnsmasq for the slot network in the foreground.
  returned: always
  type: list
  elements: str
  sample: [/usr/sbin/dnsmasq, --keep-in-foreground, --conf-file=/etc/gpuaas/dnsmasq.conf]
changes:
  description: What changed (or would change in check mode).
  returned: always
  type: list
  elements: str
  sample: [bridge br-gpuaas created, gateway 10.100.0.1/24 on br-gpuaas, host flows, dnsmasq.conf, nftables]
'''

import os

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._files import remove
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    DEFAULT_SSH_PORT_BASE, IFNAME, MAX_SLOTS, NFT_TABLE, NODE_ID, SLOT_GATEWAY, SLOT_NETWORK, check_ssh_port_base)

DNSMASQ = '/usr/sbin/dnsmasq'
FORWARD = '/proc/sys/net/ipv4/ip_forward'


def read_forward():
    with open(FORWARD) as handle:
        return handle.read().strip()


def write_forward():
    with open(FORWARD, 'w') as handle:
        handle.write('1\n')


class HostNetwork:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.run = net.runner(module)
        self.plan = Plan(module, self.run, net.NetworkError)
        self.bridge = IFNAME.check(p['bridge'], 'bridge')
        self.gateway = net.gateway_interface(p['gateway'])
        self.port = net.check_port(p['telemetry_port'], 'telemetry_port')
        self.uplink = IFNAME.check(p['uplink'], 'uplink') if p['uplink'] else None
        self.table = NFT_TABLE.check(p['nft_table'], 'nft_table')
        self.blocked = net.check_networks(p['blocked_networks'], 'blocked_networks')
        self.dns = [item.split('/')[0] for item in net.check_networks(p['dns_servers'], 'dns_servers')]
        self.conf = net.config_path(p['dnsmasq_conf'], 'dnsmasq_conf')
        self.hosts_dir = net.config_path(p['hosts_dir'], 'hosts_dir', directory=True)
        self.opts_dir = net.config_path(p['opts_dir'], 'opts_dir', directory=True)
        self.node_ids = [NODE_ID.check(node, 'node_ids[%d]' % n) for n, node in enumerate(p['node_ids'])]
        self.lease_file = net.config_path(p['lease_file'], 'lease_file')
        self.nft_file = net.config_path(p['nft_file'], 'nft_file')
        self.pid_file = net.config_path(p['pid_file'], 'pid_file')
        self.ssh_address = net.check_address(p['ssh_public_address'], 'ssh_public_address')
        self.ssh_dir = net.config_path(p['ssh_dir'], 'ssh_dir', directory=True)
        base = check_ssh_port_base(p['ssh_port_base'])
        self.ssh_ports = (base, base + MAX_SLOTS - 1)

    def present(self):
        net.ovs_available(self.run)
        want = {'datapath_type': self.module.params['datapath_type'], 'fail_mode': 'secure'}
        have = net.bridge_info(self.run, self.bridge)
        if have != want:
            self.plan.change('bridge %s %s' % (self.bridge, 'created' if have is None else 'reconfigured'),
                             lambda: self.make_bridge(created=have is None),
                             verify=lambda: net.bridge_info(self.run, self.bridge) != want and 'the bridge is not so',
                             before=have, after=want)
        # A bridge made now has nothing to read yet: its gateway, group and flows are planned; one
        # reconfigured (a new datapath) gets its gateway again.
        found, up = ([], False) if have is None else net.interface_addresses(self.run, self.bridge)
        gateway = str(self.gateway)
        if found != [gateway] or not up or have != want:
            self.plan.change('gateway %s on %s' % (gateway, self.bridge), self.set_gateway,
                             verify=lambda: net.interface_addresses(self.run, self.bridge) != ([gateway], True)
                             and 'the bridge has other addresses or is down',
                             before={'addresses': found, 'up': up}, after={'addresses': [gateway], 'up': True})
        net.flows_step(self.plan, self.run, self.bridge, net.HOST_COOKIE, net.host_flows(str(self.gateway.ip)),
                       'host flows', force=have is None)
        # The group that flooded broadcast DHCP replies to every slot (earlier versions) goes.
        if have is not None and net.group_buckets(self.run, self.bridge) is not None:
            self.plan.command('DHCP broadcast group removed', net.OFCTL + [
                'del-groups', self.bridge, 'group_id=%d' % net.DHCP_GROUP],
                verify=lambda: net.group_buckets(self.run, self.bridge) is not None and 'the group is left')
        for path in (self.hosts_dir, self.opts_dir, self.ssh_dir):
            if not os.path.isdir(path):
                self.plan.change('directory %s' % path, lambda path=path: os.makedirs(path, 0o755))
        self.untag_entries()
        net.file_step(self.plan, self.module, self.conf, net.dnsmasq_conf(
            self.bridge, self.gateway, self.hosts_dir, self.lease_file, self.dns, self.pid_file, self.opts_dir,
            self.node_ids))
        self.nftables()
        if self.module.params['nat'] and read_forward() != '1':
            self.plan.change('net.ipv4.ip_forward=1', write_forward, before='0', after='1',
                             verify=lambda: read_forward() != '1' and 'the kernel kept ip_forward off')

    def untag_entries(self):
        """Host entries an earlier version tagged (set:mtu-N) lose the tag, which the slot's options
        file and the configuration's dhcp-mac lines now give: dnsmasq 2.90 dies at a SIGHUP after
        answering a slot whose entry sets one, and host_prep restarts it on the changed configuration."""
        names = sorted(os.listdir(self.hosts_dir)) if os.path.isdir(self.hosts_dir) else []
        for path in [os.path.join(self.hosts_dir, name) for name in names]:
            text = net.read_text(path) if os.path.isfile(path) and not os.path.islink(path) else None
            if text and net.TAGGED_ENTRY.search(text):
                net.file_step(self.plan, self.module, path, net.TAGGED_ENTRY.sub('', text), 'dhcp host %s untagged' % path)

    def make_bridge(self, created):
        """Create or reconfigure the bridge; fail clearly (removing a bridge made just now) when
        the switch could not open its datapath."""
        datapath = self.module.params['datapath_type']
        self.run(net.VSCTL + ['--may-exist', 'add-br', self.bridge, '--', 'set', 'Bridge', self.bridge,
                              'datapath_type=%s' % datapath, 'fail_mode=secure'])
        ofport, error = net.bridge_ofport(self.run, self.bridge)
        if ofport == net.LOCAL_OFPORT:
            return
        if created:
            self.run(net.VSCTL + ['--if-exists', 'del-br', self.bridge])
        hint = ('the kernel datapath needs the openvswitch kernel module (modprobe openvswitch); '
                'without it use datapath_type=netdev' if datapath == 'system'
                else 'see the ovs-vswitchd log')
        raise net.NetworkError('Open vSwitch could not open the %s datapath of bridge %s%s: %s%s'
                               % (datapath, self.bridge, ' (%s)' % error if error else '', hint,
                                  '; the bridge was removed again' if created else ''))

    def set_gateway(self):
        # The bridge is the slot network's alone: an address it should not have goes.
        for address in net.interface_addresses(self.run, self.bridge)[0]:
            if address != str(self.gateway):
                self.run(['ip', 'address', 'del', address, 'dev', self.bridge])
        self.run(['ip', 'address', 'replace', str(self.gateway), 'dev', self.bridge])
        self.run(['ip', 'link', 'set', self.bridge, 'up'])

    def table_exists(self):
        return self.run(['nft', 'list', 'table', 'inet', self.table], check=False)[0] == 0

    def nftables(self):
        p = self.module.params
        ruleset = net.nft_ruleset(self.table, self.bridge, self.gateway, self.port, p['nat'], self.uplink, self.blocked,
                                  self.ssh_address, self.ssh_dir, self.ssh_ports)
        before = net.read_text(self.nft_file)
        if before != ruleset or not self.table_exists():
            self.plan.change('nftables table inet %s' % self.table,
                             lambda: net.apply_nft(self.module, self.run, self.nft_file, ruleset),
                             verify=lambda: not self.table_exists() and 'nft lists no such table',
                             before=before or '', after=ruleset)

    def absent(self):
        if self.run(net.VSCTL + ['br-exists', self.bridge], check=False)[0] == 0:
            self.plan.command('bridge %s removed' % self.bridge, net.VSCTL + ['--if-exists', 'del-br', self.bridge])
        if self.table_exists():
            self.plan.command('nftables table inet %s removed' % self.table, ['nft', 'delete', 'table', 'inet', self.table])
        for path in (self.conf, self.nft_file):
            if os.path.exists(path):
                self.plan.change('%s removed' % path, lambda path=path: remove(path))

    def result(self):
        self.plan.execute()
        dnsmasq = self.module.get_bin_path('dnsmasq', opt_dirs=['/usr/sbin']) or DNSMASQ
        return net.report(self.plan, bridge=self.bridge, gateway=str(self.gateway),
                          datapath_type=self.module.params['datapath_type'], nft_table=self.table,
                          dnsmasq_conf=self.conf, dnsmasq_pid_file=self.pid_file,
                          dnsmasq_argv=[dnsmasq, '--keep-in-foreground', '--log-facility=-', '--conf-file=%s' % self.conf])


def main():
    run_module(dict(
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        bridge=dict(type='str', default='br-gpuaas'),
        datapath_type=dict(type='str', choices=['system', 'netdev'], default='system'),
        gateway=dict(type='str', default='%s/%d' % (SLOT_GATEWAY, SLOT_NETWORK.prefixlen)),
        telemetry_port=dict(type='int', default=9110),
        dnsmasq_conf=dict(type='path', default='/etc/gpuaas/dnsmasq.conf'),
        hosts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-hosts.d'),
        opts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-opts.d'),
        node_ids=dict(type='list', elements='str', default=[], aliases=['node_id']),
        lease_file=dict(type='path', default='/var/lib/gpuaas/network/dnsmasq.leases'),
        dns_servers=dict(type='list', elements='str', default=[]),
        nat=dict(type='bool', default=True),
        uplink=dict(type='str'),
        blocked_networks=dict(type='list', elements='str', default=list(net.DEFAULT_BLOCKED)),
        nft_table=dict(type='str', default='gpuaas'),
        nft_file=dict(type='path', default='/etc/gpuaas/nftables.nft'),
        ssh_public_address=dict(type='str'),
        ssh_dir=dict(type='path', default='/etc/gpuaas/ssh.d'),
        ssh_port_base=dict(type='int', default=DEFAULT_SSH_PORT_BASE),
        pid_file=dict(type='path', default=net.DNSMASQ_PID_FILE),
    ), net.engine(HostNetwork))


if __name__ == '__main__':
    main()
