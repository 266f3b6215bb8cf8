# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: tenant networks on the slot network (slot_network, tenant_network).

A slot's own flows (``_network.slot_flows``) let it reach the gateway and nothing else on the
slot network. A tenant's flows, one set per tenant under the tenant's cookie
(``contract.tenant_cookie``), add what its slots on this node may do with each other, and with
its slots on other nodes through the overlay. They are computed from the node's live leases
(phase reserved, provisioning or running), each of which carries its allocation's tenant
(``data.tenant``) and, when the control plane gives one, the tenant's overlay plan
(``data.network``: ``{tenant, vni, mtu, peers: [{node_id, underlay_ip}]}``); the node never
invents a VNI or a peer. A lease that cannot be read, or whose tenant or plan is invalid,
joins no tenant: isolation is what is left when something cannot be seen.

Between two slots ``a`` and ``b`` of one tenant on this node (priority 195, above the slot's
own drop of everything else on the slot network at 190): IPv4 from ``a``'s port, ``a``'s MAC
and ``a``'s address to ``b``'s MAC and address goes to ``b``'s port, and ARP from ``a``'s port
about ``a``'s own MAC and address asking for ``b``'s goes to ``b``'s port only (requests and
replies alike). Anti-spoofing stays: every tenant flow matches the sender's port, MAC and IP.

Overlay (VXLAN, one VNI per tenant): one tunnel port per node (``TUNNEL_PORT``, OpenFlow port
``TUNNEL_OFPORT``, ``remote_ip=flow key=flow``) carries every tenant; the flows set the VNI and
the peer. From a member (priority 193): IPv4 and ARP for another slot-network address that is
no member here go to every peer of the tenant, in the tenant's VNI. From the tunnel (priority
195): only frames with the tenant's VNI, from one of its peers' underlay addresses, to a member
here (its MAC and address, or ARP for its address) reach that member's port. Every node numbers
its slots on the same slot network (``contract.SLOT_NETWORK``, slot i is 10.100.0.(10+i)): two
slots of one tenant with the same index on two nodes have the same address, and the local one
wins; the control plane's reservation places a tenant's slots on distinct indices across the
nodes of its overlay (docs/operator-guide.md, "Addressing across nodes").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import os

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_dir
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import (
    HOLDING_PHASES, LeaseError, lease_path, read_lease, rewrite)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    IFNAME, MAX_VNI, NODE_ID, SLOT_GATEWAY, SLOT_NETWORK, TENANT_COOKIE_BASE, TENANT_COOKIE_MASK, TENANT_ID,
    ContractError, Slot, check_int, show, tenant_cookie)

TUNNEL_PORT = 'gpuaas-vxlan'
TUNNEL_OFPORT = 99
# VXLAN over IPv4 costs 50 bytes of the underlay's MTU; a guest MTU from 1280 (what IPv6 needs)
# to 9000 (jumbo frames).
MIN_MTU, MAX_MTU = 1280, 9000
MAX_PEERS = 64


def check_plan(network, tenant, what='network'):
    """The overlay plan of a lease as {vni, mtu, peers: [(node_id, underlay_ip)]}, None without one.

    Only ``tenant``, ``vni``, ``mtu`` and ``peers`` are the node's; other keys (pkey, vlan, fabric)
    belong to the fabric and are ignored here.
    """
    if network is None:
        return None
    if not isinstance(network, dict):
        raise ContractError('%s must be a mapping, not %s' % (what, show(network)))
    if network.get('tenant') != tenant:
        raise ContractError('%s.tenant %s is not the allocation\'s tenant %s' % (what, show(network.get('tenant')),
                                                                                 show(tenant)))
    vni = check_int(network.get('vni'), '%s.vni' % what, 1, MAX_VNI)
    mtu = check_int(network.get('mtu'), '%s.mtu' % what, MIN_MTU, MAX_MTU)
    peers = network.get('peers') or []
    if not isinstance(peers, list) or len(peers) > MAX_PEERS:
        raise ContractError('%s.peers must be a list of at most %d peers, not %s' % (what, MAX_PEERS, show(peers)))
    found = []
    for number, peer in enumerate(peers):
        where = '%s.peers[%d]' % (what, number)
        if not isinstance(peer, dict):
            raise ContractError('%s must be a mapping {node_id, underlay_ip}, not %s' % (where, show(peer)))
        node_id = NODE_ID.check(peer.get('node_id'), '%s.node_id' % where)
        try:
            address = ipaddress.IPv4Address(u'%s' % peer.get('underlay_ip'))
        except ValueError:
            raise ContractError('%s.underlay_ip %s is not an IPv4 address' % (where, show(peer.get('underlay_ip'))))
        if address.is_unspecified or address.is_multicast or address.is_loopback or address in SLOT_NETWORK:
            raise ContractError('%s.underlay_ip %s is not an underlay address a peer can have' % (where, address))
        found.append((node_id, str(address)))
    return {'vni': vni, 'mtu': mtu, 'peers': sorted(set(found))}


def live_tenants(lease_dir, node_id, exclude=None):
    """({tenant: {'members': [Slot], 'plan': plan or None, 'plans': {slot_id: plan}}}, [problem])
    from the node's live leases.

    ``exclude``: a slot id counted out (a slot being released). A lease is live in the phases
    that hold the slot (a stopped VM's too: its flows wait for it). A tenant's plan is that of its
    most recently updated lease (the control plane's newest word). A lease that cannot be read,
    or carries an invalid tenant or plan, joins no tenant and is named in the problems.
    """
    tenants, problems, newest = {}, [], {}
    try:
        names = sorted(os.listdir(lease_dir))
    except OSError as exc:
        if os.path.exists(lease_dir):
            problems.append('cannot list %s: %s' % (lease_dir, exc.strerror))
        names = []
    for name in names:
        if not name.endswith('.json'):
            continue
        try:
            slot = Slot.parse(name[:-len('.json')])
        except ContractError:
            continue
        if slot.node_id != node_id or slot.slot_id == exclude:
            continue
        try:
            lease = read_lease(os.path.join(lease_dir, name))
            if lease is None or lease.get('phase') not in HOLDING_PHASES:
                continue
            data = lease.get('data') or {}
            if data.get('tenant') is None:
                continue   # a lease from before tenants: the slot stays on its own
            tenant = TENANT_ID.check(data.get('tenant'), 'data.tenant')
            plan = check_plan(data.get('network'), tenant, 'data.network')
        except (LeaseError, ContractError, IOError, OSError) as exc:
            problems.append('%s: %s; it joins no tenant' % (slot.slot_id, exc))
            continue
        entry = tenants.setdefault(tenant, {'members': [], 'plan': None, 'plans': {}})
        entry['members'].append(slot)
        entry['plans'][slot.slot_id] = plan
        stamp = str(lease.get('updated_at') or '')
        if tenant not in newest or stamp >= newest[tenant]:
            newest[tenant] = stamp
            entry['plan'] = plan
    for entry in tenants.values():
        entry['members'].sort(key=lambda slot: slot.index)
    return tenants, problems


def peers_view(plan):
    """A plan as the diff and the report show it: {vni, mtu, peers: [underlay address]} or None."""
    return plan and {'vni': plan['vni'], 'mtu': plan['mtu'], 'peers': [address for _n, address in plan['peers']]}


def tunnel_actions(plan):
    """Set the tenant's VNI, then send a copy to each of its peers through the tunnel port."""
    actions = ['set_field:%#x->tun_id' % plan['vni']]
    for _node, address in plan['peers']:
        actions += ['set_field:%s->tun_dst' % address, 'output:%d' % TUNNEL_OFPORT]
    return ','.join(actions)


def tenant_flows(tenant, members, plan=None, gateway=str(SLOT_GATEWAY)):
    """The flows of one tenant on this node: its members (Slots) with each other, and its overlay."""
    c = 'cookie=%#x' % tenant_cookie(tenant)
    flows = []
    for a in members:
        src = 'in_port=%d,dl_src=%s' % (a.ofport, a.mac)
        for b in members:
            if a == b:
                continue
            flows += [
                '%s,priority=195,ip,%s,nw_src=%s,dl_dst=%s,nw_dst=%s actions=output:%d'
                % (c, src, a.ip, b.mac, b.ip, b.ofport),
                '%s,priority=195,arp,%s,arp_spa=%s,arp_sha=%s,arp_tpa=%s actions=output:%d'
                % (c, src, a.ip, a.mac, b.ip, b.ofport),
            ]
    if not plan or not plan['peers'] or not members:
        return flows
    out = tunnel_actions(plan)
    for a in members:
        src = 'in_port=%d,dl_src=%s' % (a.ofport, a.mac)
        flows += [
            # Not the gateway (its services are the slot's own flows, at 200), never through a tunnel.
            '%s,priority=194,ip,%s,nw_src=%s,nw_dst=%s actions=drop' % (c, src, a.ip, gateway),
            '%s,priority=193,ip,%s,nw_src=%s,nw_dst=%s actions=%s' % (c, src, a.ip, SLOT_NETWORK, out),
            '%s,priority=193,arp,%s,arp_spa=%s,arp_sha=%s,arp_tpa=%s actions=%s'
            % (c, src, a.ip, a.mac, SLOT_NETWORK, out),
        ]
        for _node, address in plan['peers']:
            tun = 'in_port=%d,tun_id=%#x,tun_src=%s' % (TUNNEL_OFPORT, plan['vni'], address)
            flows += [
                '%s,priority=195,ip,%s,dl_dst=%s,nw_dst=%s actions=output:%d' % (c, tun, a.mac, a.ip, a.ofport),
                '%s,priority=195,arp,%s,arp_tpa=%s actions=output:%d' % (c, tun, a.ip, a.ofport),
            ]
    return flows


def tenant_cookies(run, bridge):
    """The cookies of the tenant flows on the bridge."""
    _rc, out, _err = run(net.OFCTL + ['dump-flows', bridge, 'cookie=%#x/%#x' % (TENANT_COOKIE_BASE, TENANT_COOKIE_MASK)])
    return set(net.canonical_flow(line)[0] for line in out.splitlines() if 'actions=' in line and 'cookie=' in line)


def tunnel_row(run):
    """The tunnel port's (type, options, ofport), or None when there is none."""
    rc, _out, _err = run(net.VSCTL + ['port-to-br', TUNNEL_PORT], check=False)
    if rc != 0:
        return None
    _rc, out, _err = run(net.VSCTL + ['--format=json', '--columns=type,options,ofport', 'list', 'Interface', TUNNEL_PORT])
    kind, options, ofport = json.loads(out)['data'][0]
    return kind, dict(options[1]), ofport


TUNNEL_OPTIONS = {'remote_ip': 'flow', 'key': 'flow'}


class TenantSteps(object):
    """Plans the node's tenant flows and tunnel port so that they match the live leases.

    ``plan``/``run``: the caller's engine plan and runner; ``exclude``: a slot being released.
    """

    def __init__(self, plan, run, bridge, node_id, lease_dir, gateway=str(SLOT_GATEWAY), exclude=None):
        self.plan, self.run, self.bridge = plan, run, bridge
        self.lease_dir = lease_dir
        self.tenants, self.problems = live_tenants(lease_dir, node_id, exclude)
        self.gateway = gateway
        self.removed = []
        self.updated = []

    def update(self, module, network):
        """The control plane's new overlay plan for one tenant (``network``: {tenant, vni, mtu,
        peers}, already checked), written into each of the tenant's live leases here whose plan
        differs (the leases stay the node's one record of the plan; their other keys of
        data.network, the slot's fabric part, are kept), and used for the flows planned after."""
        tenant = network['tenant']
        wanted = check_plan(network, tenant, 'plan')
        entry = self.tenants.get(tenant)
        if entry is None:
            return   # no live lease of the tenant here: nothing to hold the plan, no flows
        entry['plan'] = wanted
        for slot in entry['members']:
            if entry['plans'][slot.slot_id] == wanted:
                continue

            def change(lease):
                data = lease.get('data') or {}
                if lease.get('phase') not in HOLDING_PHASES or data.get('tenant') != tenant:
                    return None   # released or retaken meanwhile: not the tenant's lease any more
                return dict(data, network=dict(data.get('network') or {}, **network))

            self.updated.append(slot.slot_id)
            self.plan.change('lease %s: tenant %s overlay plan (vni %d, %d peers)'
                             % (slot.slot_id, tenant, wanted['vni'], len(wanted['peers'])),
                             lambda change=change, slot=slot: rewrite(module, self.lease_dir, slot.slot_id, change),
                             key=lease_path(self.lease_dir, slot.slot_id),
                             before=peers_view(entry['plans'][slot.slot_id]), after=peers_view(wanted))

    def wanted(self):
        """{cookie: (tenant, flows)} of every tenant with a slot here."""
        return dict((tenant_cookie(tenant), (tenant, tenant_flows(tenant, entry['members'], entry['plan'],
                                                                  self.gateway)))
                    for tenant, entry in self.tenants.items())

    def overlay(self):
        return any(entry['plan'] and entry['plan']['peers'] for entry in self.tenants.values())

    def steps(self, force=False):
        wanted = self.wanted()
        row = None if force else tunnel_row(self.run)
        if self.overlay() and (row is None or row[0] != 'vxlan' or row[1] != TUNNEL_OPTIONS or row[2] != TUNNEL_OFPORT):
            self.plan.command('tunnel port %s (vxlan, ofport %d)' % (TUNNEL_PORT, TUNNEL_OFPORT), net.VSCTL + [
                '--if-exists', 'del-port', TUNNEL_PORT, '--', 'add-port', self.bridge, TUNNEL_PORT, '--', 'set',
                'Interface', TUNNEL_PORT, 'type=vxlan', 'options:remote_ip=flow', 'options:key=flow',
                'ofport_request=%d' % TUNNEL_OFPORT], before=row and {'type': row[0], 'options': row[1]},
                after={'type': 'vxlan', 'options': TUNNEL_OPTIONS}, verify=self.tunnel_problem)
        for cookie, (tenant, flows) in sorted(wanted.items()):
            net.flows_step(self.plan, self.run, self.bridge, cookie, flows,
                           'tenant %s flows cookie=%#x' % (tenant, cookie), force=force)
        for cookie in sorted(set() if force else tenant_cookies(self.run, self.bridge)):
            if cookie not in wanted:
                self.removed.append('%#x' % cookie)
                self.plan.command('tenant flows cookie=%#x removed (no live lease has that tenant)' % cookie,
                                  net.OFCTL + ['del-flows', self.bridge, 'cookie=%#x/-1' % cookie],
                                  verify=lambda cookie=cookie: net.dump_flows(self.run, self.bridge, cookie)
                                  and 'flows are left')
        if not self.overlay() and row is not None:
            self.removed.append(TUNNEL_PORT)
            self.plan.command('tunnel port %s removed (no tenant here has an overlay)' % TUNNEL_PORT,
                              net.VSCTL + ['--if-exists', 'del-port', TUNNEL_PORT],
                              verify=lambda: tunnel_row(self.run) is not None and 'the port is left')

    def tunnel_problem(self):
        row = tunnel_row(self.run)
        if row is None or row[2] != TUNNEL_OFPORT:
            return 'port %s is %s' % (TUNNEL_PORT, 'missing' if row is None else 'on OpenFlow port %s, not %d: '
                                      'another port holds that number' % (row[2], TUNNEL_OFPORT))
        return None

    def report(self):
        """What the module returns about tenants."""
        return {
            'tenants': dict((tenant, {'slots': [slot.slot_id for slot in entry['members']],
                                      'cookie': '%#x' % tenant_cookie(tenant),
                                      'vni': entry['plan'] and entry['plan']['vni'],
                                      'peers': [address for _n, address in (entry['plan'] or {}).get('peers', [])]})
                            for tenant, entry in self.tenants.items()),
            'tenant_problems': self.problems,
            'tenant_removed': self.removed,
            'leases_updated': self.updated,
        }


# The tenant_network module's options.
ARGUMENT_SPEC = dict(
    node_id=dict(type='str', required=True),
    bridge=dict(type='str', default='br-gpuaas'),
    lease_dir=dict(type='path', default='/var/lib/gpuaas/node-scheduler/leases'),
    gateway=dict(type='str', default=str(SLOT_GATEWAY)),
    plan=dict(type='dict'),
)


class TenantNetwork(object):
    """The tenant_network module: every tenant's flows and the tunnel port made to match the leases."""

    def __init__(self, module):
        p = module.params
        self.run = net.runner(module)
        self.plan = Plan(module, self.run, net.NetworkError)
        self.node_id = NODE_ID.check(p['node_id'], 'node_id')
        self.bridge = IFNAME.check(p['bridge'], 'bridge')
        self.gateway = str(net.gateway_interface('%s/%d' % (p['gateway'], SLOT_NETWORK.prefixlen)).ip)
        self.lease_dir = check_dir(p['lease_dir'], 'lease_dir')
        self.module = module
        self.network = None
        if p['plan'] is not None:
            # Only the node's part of the plan; checked whole before anything is planned.
            tenant = TENANT_ID.check(p['plan'].get('tenant'), 'plan.tenant')
            check_plan(p['plan'], tenant, 'plan')
            self.network = dict((key, p['plan'].get(key)) for key in ('tenant', 'vni', 'mtu', 'peers'))
            self.network['peers'] = self.network['peers'] or []
        self.steps = None

    def present(self):
        net.ovs_available(self.run)
        if net.bridge_info(self.run, self.bridge) is None:
            raise net.NetworkError('bridge %s does not exist: set up the host network first '
                                   '(gpuaas.slice.host_network, run by host_prep)' % self.bridge)
        self.steps = TenantSteps(self.plan, self.run, self.bridge, self.node_id, self.lease_dir, self.gateway)
        if self.network is not None:
            self.steps.update(self.module, self.network)
        self.steps.steps()

    def result(self):
        self.plan.execute()
        return net.report(self.plan, node_id=self.node_id, bridge=self.bridge, **self.steps.report())


def tenant_lines(result, check_mode=False):
    """Report lines (reconcile) about what tenant_network found that no lease explains."""
    done = 'would be ' if check_mode else ''
    lines = []
    for what in result.get('tenant_removed') or []:
        if what == TUNNEL_PORT:
            lines.append('node: tunnel port %s served no tenant with an overlay here: %sremoved' % (what, done))
        else:
            lines.append('node: tenant flows with cookie %s belonged to no tenant of a live lease: %sremoved'
                         % (what, done))
    for problem in result.get('tenant_problems') or []:
        lines.append('node: lease %s (the slot is isolated from its tenant); operator: look at the lease' % problem)
    return lines
