# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant networks' pure parts: the plan's checks, the members from leases, the flows, the cookie."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils import _tenant as tenant
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError, Slot, cookie_slot_index, is_tenant_cookie, tenant_cookie)

NODE = 'gpu-node-01'
PLAN = {'tenant': 'acme', 'vni': 5001, 'mtu': 1450, 'peers': [{'node_id': 'gpu-node-02', 'underlay_ip': '192.0.2.12'}],
        'pkey': '0x8001', 'vlan': 100, 'fabric': 'ib'}


def test_the_tenant_cookie_is_stable_distinct_and_never_a_slots():
    cookie = tenant_cookie('acme')
    assert cookie == tenant_cookie('acme') != tenant_cookie('acme2')
    assert is_tenant_cookie(cookie) and cookie_slot_index(cookie) is None
    assert not is_tenant_cookie(Slot(NODE, 3).cookie) and not is_tenant_cookie(net.HOST_COOKIE)
    with pytest.raises(ContractError, match="tenant 'Acme!'"):
        tenant_cookie('Acme!')


def test_the_plan_keeps_what_the_node_uses():
    assert tenant.check_plan(PLAN, 'acme') == {'vni': 5001, 'mtu': 1450, 'peers': [('gpu-node-02', '192.0.2.12')]}
    assert tenant.check_plan(None, 'acme') is None


@pytest.mark.parametrize('change, message', [
    (dict(tenant='other'), "network.tenant 'other' is not the allocation's tenant 'acme'"),
    (dict(vni=0), 'network.vni must be a whole number from 1 to 16777215, not 0'),
    (dict(vni=16777216), 'network.vni must be a whole number from 1 to 16777215'),
    (dict(vni='5001'), "network.vni must be a whole number from 1 to 16777215, not '5001'"),
    (dict(mtu=1279), 'network.mtu must be a whole number from 1280 to 9000, not 1279'),
    (dict(mtu=True), 'network.mtu must be a whole number'),
    (dict(peers='192.0.2.12'), 'network.peers must be a list of at most 64 peers'),
    (dict(peers=[{'node_id': 'n2', 'underlay_ip': '192.0.2.300'}]), "network.peers[0].underlay_ip '192.0.2.300' is not an IPv4"),
    (dict(peers=[{'node_id': 'n2', 'underlay_ip': '10.100.0.12'}]), 'network.peers[0].underlay_ip 10.100.0.12 is not an underlay'),
    (dict(peers=[{'node_id': 'n2', 'underlay_ip': '127.0.0.1'}]), 'is not an underlay address'),
    (dict(peers=[{'node_id': 'n 2', 'underlay_ip': '192.0.2.12'}]), "network.peers[0].node_id 'n 2'"),
    (dict(peers=['192.0.2.12']), 'network.peers[0] must be a mapping'),
])
def test_a_bad_plan_is_refused_naming_the_field(change, message):
    with pytest.raises(ContractError) as caught:
        tenant.check_plan(dict(PLAN, **change), 'acme')
    assert message in str(caught.value)
    with pytest.raises(ContractError, match='network must be a mapping'):
        tenant.check_plan([PLAN], 'acme')


def write_lease(directory, slot_id, phase='running', **data):
    with open(os.path.join(directory, slot_id + '.json'), 'w') as handle:
        json.dump({'slot_id': slot_id, 'allocation_id': 'a-' + slot_id, 'phase': phase, 'data': data,
                   'updated_at': data.pop('stamp', '2026-12-02T10:00:00Z')}, handle)


def test_members_come_from_live_leases_of_this_node(tmp_path):
    d = str(tmp_path)
    write_lease(d, NODE + '-s0', tenant='acme', network=PLAN)
    write_lease(d, NODE + '-s1', phase='provisioning', tenant='acme', stamp='2026-12-02T09:00:00Z')
    write_lease(d, NODE + '-s2', tenant='bravo')
    write_lease(d, NODE + '-s3', phase='releasing', tenant='acme')      # going: no member
    write_lease(d, NODE + '-s4', phase='quarantined', tenant='acme')    # held for an operator: no member
    write_lease(d, NODE + '-s5')                                         # before tenants: on its own
    write_lease(d, 'other-node-s0', tenant='acme')                       # another node's slot on a lab host
    write_lease(d, NODE + '-s6', tenant='Bad Tenant')
    write_lease(d, NODE + '-s7', tenant='acme', network=dict(PLAN, vni=0))
    with open(os.path.join(d, NODE + '-s8.json'), 'w') as handle:
        handle.write('{not json')
    write_lease(d, NODE + '-s9', phase='stopped', tenant='acme', stamp='2026-12-02T08:00:00Z')  # VM stopped: a member
    found, problems = tenant.live_tenants(d, NODE)
    assert dict((t, [s.slot_id for s in e['members']]) for t, e in found.items()) == {
        'acme': [NODE + '-s0', NODE + '-s1', NODE + '-s9'], 'bravo': [NODE + '-s2']}
    assert [p.split(':')[0] for p in problems] == [NODE + '-s6', NODE + '-s7', NODE + '-s8']
    assert all(p.endswith('it joins no tenant') for p in problems)
    # The newest lease's plan is the tenant's (s1 has none and is older).
    assert found['acme']['plan']['vni'] == 5001
    gone, _problems = tenant.live_tenants(d, NODE, exclude=NODE + '-s1')
    assert [s.slot_id for s in gone['acme']['members']] == [NODE + '-s0', NODE + '-s9']
    assert tenant.live_tenants(os.path.join(d, 'nothing-here'), NODE) == ({}, [])


def test_the_newest_lease_gives_the_tenants_plan(tmp_path):
    d = str(tmp_path)
    write_lease(d, NODE + '-s0', tenant='acme', network=PLAN, stamp='2026-12-02T10:00:00Z')
    write_lease(d, NODE + '-s1', tenant='acme', network=dict(PLAN, peers=[]), stamp='2026-12-02T11:00:00Z')
    found, _problems = tenant.live_tenants(d, NODE)
    assert found['acme']['plan']['peers'] == []


def flows_by_action(flows):
    return [(flow, flow.split(' actions=')[1]) for flow in flows]


def test_members_reach_each_other_only_from_their_own_port_mac_and_ip():
    a, b, c = Slot(NODE, 0), Slot(NODE, 1), Slot(NODE, 4)
    flows = tenant.tenant_flows('acme', [a, b, c])
    assert len(flows) == 3 * 2 * 2
    cookie = 'cookie=%#x' % tenant_cookie('acme')
    for flow, action in flows_by_action(flows):
        assert flow.startswith(cookie + ',priority=195,'), flow
        sender = [s for s in (a, b, c) if 'in_port=%d,dl_src=%s' % (s.ofport, s.mac) in flow]
        assert len(sender) == 1, flow
        assert ('nw_src=%s' % sender[0].ip in flow) or ('arp_spa=%s,arp_sha=%s' % (sender[0].ip, sender[0].mac) in flow)
        target = [s for s in (a, b, c) if action == 'output:%d' % s.ofport]
        assert len(target) == 1 and target[0] != sender[0], flow
        assert ('nw_dst=%s' % target[0].ip in flow and 'dl_dst=%s' % target[0].mac in flow) or \
            'arp_tpa=%s' % target[0].ip in flow
    assert tenant.tenant_flows('acme', [a]) == []   # alone: nothing to join


def test_the_overlay_goes_only_to_the_tenants_peers_in_its_vni():
    a, b = Slot(NODE, 0), Slot(NODE, 1)
    plan = tenant.check_plan(dict(PLAN, peers=PLAN['peers'] + [{'node_id': 'gpu-node-03', 'underlay_ip': '192.0.2.13'}]),
                             'acme')
    flows = tenant.tenant_flows('acme', [a, b], plan)
    out = 'set_field:0x1389->tun_id,set_field:192.0.2.12->tun_dst,output:99,set_field:192.0.2.13->tun_dst,output:99'
    sent = [f for f in flows if f.endswith(out)]
    assert len(sent) == 4 and all('in_port=%d,dl_src=' % s.ofport in f for s in (a, b) for f in sent
                                  if 'in_port=%d,' % s.ofport in f)
    received = [f for f in flows if 'in_port=99' in f]
    assert len(received) == 2 * 2 * 2
    assert all('tun_id=0x1389' in f and ('tun_src=192.0.2.12' in f or 'tun_src=192.0.2.13' in f) for f in received)
    assert any(f.endswith('priority=194,ip,in_port=100,dl_src=%s,nw_src=10.100.0.10,nw_dst=10.100.0.1 actions=drop'
                          % a.mac) for f in flows)
    # The same plan without peers: no tunnel at all.
    assert tenant.tenant_flows('acme', [a, b], dict(plan, peers=[])) == tenant.tenant_flows('acme', [a, b])


def test_reconcile_says_what_it_removed():
    lines = tenant.tenant_lines({'tenant_removed': ['0x6770740011223344', 'gpuaas-vxlan'],
                                 'tenant_problems': ['gpu-node-01-s6: bad; it joins no tenant']}, check_mode=True)
    assert lines == [
        'node: tenant flows with cookie 0x6770740011223344 belonged to no tenant of a live lease: would be removed',
        'node: tunnel port gpuaas-vxlan served no tenant with an overlay here: would be removed',
        'node: lease gpu-node-01-s6: bad; it joins no tenant (the slot is isolated from its tenant); operator: look at '
        'the lease']


def test_the_reconcile_report_carries_the_tenant_lines():
    # In a process of its own: importing a filter plugin (ansible.errors) in this process would
    # route the module warnings of later in-process module tests to the controller's display.
    code = """if True:
        import json
        from ansible_collections.gpuaas.slice.plugins.filter.reconcile_report import reconcile_report
        node = {'blind': [], 'leases': {}}
        print(json.dumps([reconcile_report(node), reconcile_report(
            node, tenants={'tenant_removed': ['gpuaas-vxlan'], 'tenant_problems': []})]))
    """
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    plain, with_tenants = json.loads(done.stdout)
    assert plain == ['node: agrees with its leases (0 leased slot(s)): nothing to do']
    assert with_tenants == ['node: tunnel port gpuaas-vxlan served no tenant with an overlay here: removed']
