# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant networks with real packets: slots 0 and 1 of tenant A, slot 2 of tenant B.

The node is a namespace with its own Open vSwitch (env.Host); slots are namespaces on veths.
Each slot has its lease (slot_lease, data.tenant as the allocate role writes it) before
slot_network wires it with ``lease_dir``: the tenant's flows follow the node's live leases.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot, tenant_cookie
from tests.functional.network import env

pytestmark = pytest.mark.slow

NODE = 'tnode'
BRIDGE = 'br-gpuaas-n'
TENANTS = {0: 'tenant-a', 1: 'tenant-a', 2: 'tenant-b'}


def slot_args(net, index, **extra):
    ns = net['slots'][index]
    return dict(dict(slot_id=Slot(NODE, index).slot_id, bridge=BRIDGE, hosts_dir=net['hosts'], hostname='t-%d' % index,
                     dnsmasq_pid_file=net['host_args']['pid_file'], ssh_dir=net['host_args']['ssh_dir'],
                     lease_dir=net['leases'], port=ns.port, port_type='existing', opts_dir=net['opts']), **extra)


def lease(net, index, state='present', tenant=None, phase='running', **data):
    args = dict(slot_id=Slot(NODE, index).slot_id, allocation_id='alloc-%d' % index, lease_dir=net['leases'],
                state=state)
    if state == 'present':
        args.update(phase=phase, data=dict(tenant=tenant or TENANTS[index], **data))
    result = net['host'].module('slot_lease', args)
    assert not result.get('failed'), result
    return result


@pytest.fixture(scope='module')
def net():
    work = tempfile.mkdtemp(prefix='gpuaas-tenanttest-')
    os.chmod(work, 0o755)   # dnsmasq drops to its own user and must read the hosts dir
    try:
        host = env.Host(work, tag='n').__enter__()
    except env.EnvironmentMissing as exc:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(str(exc))
    pid = os.getpid()
    state = {'host': host, 'dir': work, 'hosts': os.path.join(work, 'hosts'), 'leases': os.path.join(work, 'leases'),
             'opts': os.path.join(work, 'opts'),
             'slots': {}, 'daemons': {}, 'peers': []}
    os.makedirs(state['leases'])
    host_args = dict(bridge=BRIDGE, datapath_type='netdev', dnsmasq_conf=os.path.join(work, 'dnsmasq.conf'),
                     hosts_dir=state['hosts'], opts_dir=state['opts'], lease_file=os.path.join(work, 'dnsmasq.leases'),
                     nft_file=os.path.join(work, 'gpuaas.nft'), pid_file=os.path.join(work, 'dnsmasq.pid'),
                     ssh_dir=os.path.join(work, 'ssh.d'), node_id=NODE)
    state['host_args'] = host_args
    try:
        first = host.module('host_network', host_args)
        assert first['changed'] and not first.get('failed'), first
        state['daemons']['dnsmasq'] = env.Daemon(host, first['dnsmasq_argv'], os.path.join(work, 'dnsmasq.log'))
        env.wait_for(lambda: os.path.exists(host_args['pid_file']), 10, 'dnsmasq to write its pid file')
        for index in TENANTS:
            ns = env.SlotNamespace(host, 'gpuaas-t%d-%d' % (index, pid), Slot(NODE, index).mac, 'gtn%d' % index, work)
            state['slots'][index] = ns
            state['peers'].append(ns)
            lease(state, index)
            result = host.module('slot_network', slot_args(state, index))
            assert result['changed'] and not result.get('failed'), result
            state.setdefault('results', {})[index] = result
        for index, ns in state['slots'].items():
            assert ns.dhcp() == (Slot(NODE, index).ip, 't-%d' % index, env.GATEWAY), index
        yield state
    finally:
        for daemon in state['daemons'].values():
            daemon.stop()
        for peer in state['peers']:
            peer.close()
        host.module('host_network', dict(host_args, state='absent'))
        host.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def ip(index):
    return Slot(NODE, index).ip


def test_the_tenant_matrix_holds(net):
    """A<->A passes; A->B and B->A do not (each way, by ICMP from the slot's own address)."""
    slots = net['slots']
    reached = dict((index, sorted(other for other in TENANTS if other != index and slots[index].ping(ip(other))))
                   for index in TENANTS)
    assert reached == {0: [1], 1: [0], 2: []}
    assert all(ns.ping(env.GATEWAY) for ns in slots.values())
    report = net['results'][2]   # the last slot wired sees every tenant
    assert report['tenants']['tenant-a']['slots'] == [Slot(NODE, 0).slot_id, Slot(NODE, 1).slot_id]
    assert report['tenants']['tenant-b']['slots'] == [Slot(NODE, 2).slot_id]


def test_tenant_flows_match_sender_port_mac_and_ip(net):
    flows = net['host'].flows(BRIDGE, tenant_cookie('tenant-a'))
    assert len(flows) == 4, flows   # IPv4 and ARP, each way
    for flow in flows:
        assert 'in_port=' in flow and 'dl_src=' in flow and ('nw_src=' in flow or 'arp_spa=' in flow), flow
    assert net['host'].flows(BRIDGE, tenant_cookie('tenant-b')) == []   # one slot: nothing to join


def test_spoofing_a_tenant_members_address_gets_nowhere(net):
    s2 = net['slots'][2]
    try:
        s2.set_address(ip(0))                              # tenant B claims tenant A's slot 0
        assert not s2.ping(ip(1))
        s2.set_address(ip(0), mac=Slot(NODE, 0).mac)       # and its MAC too
        assert not s2.ping(ip(1))
    finally:
        s2.set_address(ip(2), mac=Slot(NODE, 2).mac)
    assert net['slots'][0].ping(ip(1))


def test_dhcp_replies_reach_only_the_asker(net):
    """Broadcast flag set (udhcpc -B): the reply still goes to the asker's MAC alone; the others'
    ports see nothing of it, captured on their own interfaces."""
    slots = net['slots']
    captures = dict((index, env.Capture(slots[index].ns, 6)) for index in TENANTS)
    time.sleep(0.3)
    assert slots[0].dhcp(broadcast=True) == (ip(0), 't-0', env.GATEWAY)
    assert slots[1].dhcp() == (ip(1), 't-1', env.GATEWAY)
    seen = dict((index, capture.replies()) for index, capture in captures.items())
    assert seen[2] == [], seen
    assert seen[0] and all(reply == (Slot(NODE, 0).mac, ip(0), Slot(NODE, 0).mac) for reply in seen[0]), seen
    assert seen[1] and all(reply == (Slot(NODE, 1).mac, ip(1), Slot(NODE, 1).mac) for reply in seen[1]), seen


def test_a_second_run_changes_nothing(net):
    for index in TENANTS:
        again = net['host'].module('slot_network', slot_args(net, index), check_mode=True, diff=True)
        assert not again['changed'], again


PLAN = dict(tenant='tenant-a', vni=5001, mtu=1450, peers=[dict(node_id='tnode2', underlay_ip='192.0.2.12')])


def test_reconcile_gives_the_overlay_a_tunnel_and_removes_what_no_lease_explains(net):
    host = net['host']
    args = dict(node_id=NODE, bridge=BRIDGE, lease_dir=net['leases'])
    for index in (0, 1):
        lease(net, index, network=PLAN)
    # A tenant no lease names any more (its flows left behind by a crash).
    ghost = tenant_cookie('tenant-gone')
    host.sh('ovs-ofctl', '-O', 'OpenFlow15', 'add-flow', BRIDGE,
            'cookie=%#x,priority=195,ip,in_port=100,nw_dst=10.100.0.12 actions=output:102' % ghost)
    planned = host.module('tenant_network', args, check_mode=True, diff=True)
    assert planned['changed'] and host.flows(BRIDGE, ghost), planned
    done = host.module('tenant_network', args)
    assert done['changed'] and done['tenant_removed'] == ['%#x' % ghost], done
    assert done['tenants']['tenant-a']['vni'] == 5001 and done['tenants']['tenant-a']['peers'] == ['192.0.2.12']
    assert host.flows(BRIDGE, ghost) == []
    row = host.sh('ovs-vsctl', 'get', 'Interface', 'gpuaas-vxlan', 'type', 'options', 'ofport').stdout.split('\n')
    assert row[0] == 'vxlan' and 'remote_ip=flow' in row[1] and row[2] == '99', row
    flows = host.flows(BRIDGE, tenant_cookie('tenant-a'))
    assert any('tun_id=0x1389' in flow and 'tun_src=192.0.2.12' in flow for flow in flows), flows
    assert not host.module('tenant_network', args)['changed']
    # The guest learns the overlay's MTU through DHCP (option 26), its neighbour of tenant B does not.
    # The slot's new options file is read by inotify: no reload.
    wired = host.module('slot_network', slot_args(net, 0))
    assert wired['changed'] and wired['mtu'] == 1450 and not wired['dnsmasq_reloaded'], wired
    assert net['slots'][0].dhcp_options('mtu') == '1450', open(os.path.join(net['dir'], 'dnsmasq.log')).read()[-2000:]
    assert net['slots'][2].dhcp_options('mtu') == ''
    assert not host.module('slot_network', slot_args(net, 0))['changed']
    # The matrix on the node is unchanged by the overlay.
    assert net['slots'][0].ping(ip(1)) and not net['slots'][2].ping(ip(0)) and not net['slots'][0].ping(ip(2))
    # No plan any more: the tunnel port goes.
    for index in (0, 1):
        lease(net, index, network=None)
    gone = host.module('tenant_network', args)
    assert gone['changed'] and gone['tenant_removed'] == ['gpuaas-vxlan'], gone
    assert 'gpuaas-vxlan' not in host.ports(BRIDGE)


def test_dnsmasq_lives_through_a_reload_after_serving_a_slot_its_mtu(net):
    """Debian 12's dnsmasq (2.90) chains a dhcp-host's ``set:`` tag onto each reply's tag list on
    its stack and frees that chain with the entry on SIGHUP: it died at the first reload after it
    had answered a slot whose entry set a tag. The MTU's tag now comes from dnsmasq.conf."""
    host, slots = net['host'], net['slots']
    daemon = net['daemons']['dnsmasq']
    for index in (0, 1):
        lease(net, index, network=PLAN)
    # A configuration without the slots' tags (host_network without the node): the MTU is refused.
    untagged = dict(net['host_args'], node_id=['another-node'])
    assert host.module('host_network', untagged)['changed']
    files = [os.path.join(net['hosts'], Slot(NODE, 0).slot_id), os.path.join(net['opts'], Slot(NODE, 0).slot_id)]
    kept = [os.path.exists(path) and open(path).read() for path in files]
    refused = host.module('slot_network', slot_args(net, 0))
    assert refused.get('failed') and 'does not tag slot %s' % Slot(NODE, 0).slot_id in refused['msg'], refused
    assert [os.path.exists(path) and open(path).read() for path in files] == kept
    # An entry an earlier version tagged loses its tag when host_network runs (host_prep then restarts dnsmasq).
    legacy = os.path.join(net['hosts'], Slot(NODE, 2).slot_id)
    with open(legacy, 'w') as handle:
        handle.write('%s,set:mtu-1450,%s,t-2\n' % (Slot(NODE, 2).mac, ip(2)))
    assert host.module('host_network', net['host_args'])['changed']
    assert open(legacy).read() == '%s,%s,t-2\n' % (Slot(NODE, 2).mac, ip(2))
    assert host.module('slot_network', slot_args(net, 0))['mtu'] == 1450
    assert slots[0].dhcp_options('mtu') == '1450'
    # The plan goes: the slot's MTU goes with it, and dnsmasq is reloaded to forget it.
    for index in (0, 1):
        lease(net, index, network=None)
    done = host.module('slot_network', slot_args(net, 0))
    assert done['changed'] and done['mtu'] is None and done['dnsmasq_reloaded'], done
    assert daemon.proc.poll() is None, open(daemon.log).read()[-2000:]
    assert slots[0].dhcp_options('mtu') == ''
    assert slots[0].dhcp() == (ip(0), 't-0', env.GATEWAY)
    assert daemon.proc.poll() is None, open(daemon.log).read()[-2000:]
    assert not host.module('slot_network', slot_args(net, 0))['changed']


def _lease_network(net, index):
    with open(os.path.join(net['leases'], Slot(NODE, index).slot_id + '.json')) as handle:
        return json.load(handle)['data']['network']


def test_a_new_plan_from_the_control_plane_updates_the_leases_and_the_flows_without_a_slot(net):
    """The control plane's network job: tenant A gets a second peer; no slot is wired again."""
    host = net['host']
    fabric = dict(PLAN, pkey='0x8101', vlan=101, fabric={'address': '10.224.0.1/24'})
    lease(net, 0, network=fabric)
    lease(net, 1, network=PLAN)
    two = dict(PLAN, peers=PLAN['peers'] + [dict(node_id='tnode3', underlay_ip='192.0.2.13')], pkey='ignored')
    args = dict(node_id=NODE, bridge=BRIDGE, lease_dir=net['leases'], plan=two)
    before = sorted(os.listdir(net['leases']))
    planned = host.module('tenant_network', args, check_mode=True, diff=True)
    assert planned['changed'] and planned['leases_updated'] == [Slot(NODE, 0).slot_id, Slot(NODE, 1).slot_id], planned
    assert _lease_network(net, 1) == PLAN   # check mode wrote nothing
    done = host.module('tenant_network', args)
    assert done['changed'] and done['tenants']['tenant-a']['peers'] == ['192.0.2.12', '192.0.2.13'], done
    # Each lease holds the new overlay part and keeps its own fabric part.
    assert _lease_network(net, 0) == dict(fabric, peers=two['peers'])
    assert _lease_network(net, 1) == dict(PLAN, peers=two['peers'])
    assert sorted(os.listdir(net['leases'])) == before
    flows = host.flows(BRIDGE, tenant_cookie('tenant-a'))
    assert any('tun_src=192.0.2.13' in flow for flow in flows), flows
    assert any('192.0.2.12->tun_dst' in flow and '192.0.2.13->tun_dst' in flow for flow in flows), flows
    assert not host.module('tenant_network', args)['changed']
    # What reconcile then sees in the leases is the same: nothing to change.
    assert not host.module('tenant_network', dict(args, plan=None))['changed']
    # A plan that is not valid changes nothing; the same for a tenant with no lease here.
    bad = host.module('tenant_network', dict(args, plan=dict(two, vni=0)))
    assert bad.get('failed') and 'plan.vni' in bad['msg'], bad
    hostile = host.module('tenant_network', dict(args, plan=dict(two, peers=[dict(node_id='x', underlay_ip='10.100.0.12')])))
    assert hostile.get('failed') and 'underlay_ip' in hostile['msg'], hostile
    other = host.module('tenant_network', dict(args, plan=dict(two, tenant='tenant-c')))
    assert not other['changed'] and other['leases_updated'] == [], other
    # A damaged lease of the tenant is not rewritten: it stays out of the tenant (isolated).
    path = os.path.join(net['leases'], Slot(NODE, 1).slot_id + '.json')
    with open(path) as handle:
        kept = handle.read()
    with open(path, 'w') as handle:
        handle.write('{"allocation_id": 7')
    try:
        damaged = host.module('tenant_network', dict(args, plan=PLAN))
        assert damaged['leases_updated'] == [Slot(NODE, 0).slot_id], damaged
        assert any(Slot(NODE, 1).slot_id in problem for problem in damaged['tenant_problems']), damaged
        with open(path) as handle:
            assert handle.read() == '{"allocation_id": 7'
    finally:
        with open(path, 'w') as handle:
            handle.write(kept)
    for index in (0, 1):
        lease(net, index, network=None)
    assert 'gpuaas-vxlan' in host.module('tenant_network', dict(node_id=NODE, bridge=BRIDGE,
                                                                lease_dir=net['leases']))['tenant_removed']


def test_release_removes_the_slot_from_its_tenant(net):
    """Runs last: slot 1 goes; slot 0 reaches it no more, and its tenant's flows are gone."""
    host = net['host']
    lease(net, 1, phase='releasing')   # as slot_release does before it unwires the slot
    gone = host.module('slot_network', slot_args(net, 1, state='absent'))
    assert gone['changed'] and not gone.get('failed'), gone
    assert 'tenant-a' in gone['tenants'] and gone['tenants']['tenant-a']['slots'] == [Slot(NODE, 0).slot_id]
    assert host.flows(BRIDGE, tenant_cookie('tenant-a')) == []
    lease(net, 1, state='absent')
    # Slot 1's namespace keeps its address and asks again: nothing answers.
    assert not net['slots'][0].ping(ip(1)) and not net['slots'][1].ping(ip(0))
    assert not host.module('slot_network', slot_args(net, 1, state='absent'))['changed']
