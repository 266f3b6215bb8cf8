# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: one slot's DHCP entry, Open vSwitch port, flows and SSH port (slot_network, slot_release)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils import _ssh_access as ssh
from ansible_collections.gpuaas.slice.plugins.module_utils import _tenant as tenant
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan
from ansible_collections.gpuaas.slice.plugins.module_utils._files import remove
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    DEFAULT_SSH_PORT_BASE, HOSTNAME, IFNAME, NFT_TABLE, SLOT_GATEWAY, SLOT_NETWORK, Slot, check_source_cidrs,
    check_ssh_port_base)

# The module's options; slot_provision and slot_release check a step's options with them too.
ARGUMENT_SPEC = dict(
    slot_id=dict(type='str', required=True),
    state=dict(type='str', choices=['present', 'absent'], default='present'),
    bridge=dict(type='str', default='br-gpuaas'),
    hosts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-hosts.d'),
    opts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-opts.d'),
    hostname=dict(type='str'),
    mac=dict(type='str'),
    ip=dict(type='str'),
    port=dict(type='str'),
    port_type=dict(type='str', choices=['tap', 'existing'], default='tap'),
    gateway=dict(type='str', default=str(SLOT_GATEWAY)),
    telemetry_port=dict(type='int', default=9110),
    dnsmasq_pid_file=dict(type='path', default=net.DNSMASQ_PID_FILE),
    ssh_port_base=dict(type='int', default=DEFAULT_SSH_PORT_BASE),
    ssh_source_cidrs=dict(type='list', elements='str', default=[]),
    nft_table=dict(type='str', default='gpuaas'),
    ssh_dir=dict(type='path', default=ssh.DEFAULT_SSH_DIR),
    lease_dir=dict(type='path'),
)
RULES = dict(required_if=[('state', 'present', ('hostname',))])


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
        self.opts_file = self.slot.file(net.config_path(p['opts_dir'], 'opts_dir', directory=True))
        self.ofport, self.cookie = self.slot.ofport, self.slot.cookie
        self.tap = p['port_type'] == 'tap'
        self.reloaded = False
        self.base = check_ssh_port_base(p['ssh_port_base'])
        self.sources = check_source_cidrs(p['ssh_source_cidrs'])
        self.table = NFT_TABLE.check(p['nft_table'], 'nft_table')
        self.ssh_file = self.slot.file(net.config_path(p['ssh_dir'], 'ssh_dir', directory=True), '.nft')
        self.tenants = None
        if p['lease_dir']:
            self.tenants = tenant.TenantSteps(self.plan, self.run, self.bridge, self.slot.node_id, p['lease_dir'],
                                              self.gateway, exclude=self.slot_id if p['state'] == 'absent' else None)

    def reload(self):
        # dnsmasq keeps a changed or removed file's old record until SIGHUP.
        self.reloaded = net.reload_dnsmasq(self.pid_file)

    def present(self):
        net.ovs_available(self.run)
        if net.bridge_info(self.run, self.bridge) is None:
            raise net.NetworkError('bridge %s does not exist: set up the host network first '
                                   '(gpuaas.slice.host_network, run by host_prep)' % self.bridge)
        exists = net.device_exists(self.port)
        if not exists and not self.tap:
            raise net.NetworkError('port %s does not exist (port_type=existing)' % self.port)
        on_bridge, ofport, ids = net.port_row(self.run, self.port)
        net.check_slot_port(self.run, self.port, self.bridge, self.slot_id, self.tap, on_bridge, ids)
        holder = net.ofport_holder(self.run, self.bridge, self.port, self.ofport)
        if holder is not None:
            raise net.NetworkError('OpenFlow port %d of slot %s is held by %s on %s: remove that port first'
                                   % (self.ofport, self.slot_id, holder, self.bridge))
        tables = ssh.table_state(self.run, self.table, net.NetworkError)
        ssh.need_table(tables, self.table, net.NetworkError)
        why = ssh.conflict(tables, self.slot, self.base)
        if why:
            raise net.NetworkError('slot %s: %s' % (self.slot_id, why))
        # Everything checked: now the steps, in an order where each step's inputs exist.
        mtu = self.tenant_mtu()
        if mtu:
            # The slot's own options file, matched by the tag dnsmasq.conf gives the slot's MAC.
            self.check_tagged()
            net.file_step(self.plan, self.module, self.opts_file, net.dhcp_mtu_line(self.slot, mtu),
                          'dhcp options %s' % self.opts_file, self.reload)
        else:
            self.opts_absent()
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
        if self.tenants is not None:
            # The tenant's flows, with this slot among its members (its lease says which tenant).
            self.tenants.steps()
        self.ssh_present(tables)

    def ssh_present(self, tables):
        """The slot's public SSH port, last: it opens once the slot's network exists."""
        script = ssh.slot_rules(self.table, self.slot, self.base, self.sources)
        before = net.read_text(self.ssh_file)
        if before == script and ssh.in_place(tables, self.slot, self.base):
            return

        def apply():
            ssh.apply(self.run, script)
            net.write_text(self.module, self.ssh_file, script)

        def verify():
            if not ssh.in_place(ssh.table_state(self.run, self.table, net.NetworkError), self.slot, self.base):
                return 'table inet %s does not forward port %d' % (self.table, self.slot.ssh_port(self.base))
            return None if net.read_text(self.ssh_file) == script else '%s holds something else' % self.ssh_file
        self.plan.change('ssh port %d to %s:22 from %s' % (self.slot.ssh_port(self.base), self.ip, ', '.join(self.sources)),
                         apply, verify=verify, before=before or '', after=script)

    def ssh_absent(self):
        """Close the slot's SSH port first (rules, then their file), whatever else is left."""
        script = ssh.removal(self.table, self.slot, ssh.table_state(self.run, self.table, net.NetworkError))
        if script:
            self.plan.change('ssh port %d closed' % self.slot.ssh_port(self.base), lambda: ssh.apply(self.run, script),
                             verify=lambda: ssh.removal(self.table, self.slot, ssh.table_state(
                                 self.run, self.table, net.NetworkError)) and 'rules are left', before=script, after='')
        if net.read_text(self.ssh_file) is not None:
            self.plan.change('%s removed' % self.ssh_file, lambda: ssh.remove_file(self.ssh_file),
                             verify=lambda: net.read_text(self.ssh_file) is not None and 'the file is still there')

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
        self.ssh_absent()
        if bridge_there:
            if self.tenants is not None:
                # First no tenant flow leads to the port any more (its tenant's others keep theirs).
                self.tenants.steps()
            if net.dump_flows(self.run, self.bridge, self.cookie):
                self.plan.command('flows cookie=%#x removed' % self.cookie,
                                  net.OFCTL + ['del-flows', self.bridge, 'cookie=%#x/-1' % self.cookie],
                                  verify=lambda: 'flows are left' if net.dump_flows(self.run, self.bridge, self.cookie)
                                  else None)
            if self.ofport in (net.group_buckets(self.run, self.bridge) or {}):
                # A bucket from before replies went to the asker alone (host_network removes the group).
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
        self.opts_absent()
        self.file_absent(self.hosts_file, 'dhcp host')

    def opts_absent(self):
        self.file_absent(self.opts_file, 'dhcp options')

    def file_absent(self, path, what):
        """Remove one of the slot's dnsmasq files; dnsmasq forgets what it read there on the SIGHUP after."""
        before = net.read_text(path)
        if before is not None:
            self.plan.change('%s %s removed' % (what, path), lambda: (remove(path), self.reload()), before=before,
                             after='', verify=lambda: net.read_text(path) is not None and 'the file is still there')

    def check_tagged(self):
        """Refuse an MTU the guest would never be told: the running dnsmasq's configuration must tag
        the slot's MAC (host_network with the slot's node among node_ids). Without a running dnsmasq there is nothing to
        ask; it reads host_network's configuration when it starts."""
        conf = net.dnsmasq_conf_file(self.pid_file)
        if conf is None:
            return
        if net.dhcp_mac_line(self.slot) not in (net.read_text(conf) or '').splitlines():
            raise net.NetworkError('the running dnsmasq\'s configuration %s does not tag slot %s\'s MAC, so its '
                                   'guest cannot be told its overlay MTU: run host_network with %s among its '
                                   'node_ids (host_prep does), then restart dnsmasq' % (conf, self.slot_id, self.slot.node_id))

    def tenant_mtu(self):
        """The MTU of the slot's tenant's overlay (its lease's plan), None without one."""
        for entry in (self.tenants.tenants if self.tenants is not None else {}).values():
            if self.slot in entry['members'] and entry['plan']:
                return entry['plan']['mtu']
        return None

    def result(self):
        self.plan.execute()
        return net.report(self.plan, slot_id=self.slot_id, mac=self.mac, ip=self.ip, port=self.port,
                          ofport=self.ofport, cookie='%#x' % self.cookie, hosts_file=self.hosts_file,
                          mtu=self.tenant_mtu() if self.hostname else None,
                          hostname=self.hostname, dnsmasq_reloaded=self.reloaded,
                          ssh_port=self.slot.ssh_port(self.base), ssh_source_cidrs=self.sources,
                          **(self.tenants.report() if self.tenants is not None else {}))
