# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot network's pure parts: flows, their canonical form, dnsmasq and nftables text."""

from __future__ import annotations

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net


def test_our_flow_text_and_ovs_dump_compare_equal():
    ours = 'cookie=0x6770750000000003,priority=200,arp,in_port=103,dl_src=52:54:AA:00:00:01,arp_tpa=10.100.0.1 actions=LOCAL'
    dumped = (' cookie=0x6770750000000003, duration=12.5s, table=0, n_packets=4, n_bytes=168, idle_age=3, '
              'priority=200,arp,in_port=103,dl_src=52:54:aa:00:00:01,arp_tpa=10.100.0.1 actions=LOCAL')
    assert net.canonical_flow(ours) == net.canonical_flow(dumped)
    assert net.canonical_flow(ours) != net.canonical_flow(ours.replace('in_port=103', 'in_port=104'))


def test_no_slot_flow_outputs_to_another_slot_port():
    flows = net.slot_flows(3, 103, '52:54:aa:00:00:01', '10.100.0.13', '10.100.0.1', 9110)
    for flow in flows:
        actions = flow.split(' actions=')[1]
        assert actions in ('LOCAL', 'drop', 'output:103'), flow
        if actions == 'output:103':
            assert 'in_port=LOCAL' in flow
        else:
            assert 'in_port=103,dl_src=52:54:aa:00:00:01' in flow and 'cookie=0x6770750000000003' in flow


def test_dnsmasq_serves_fixed_addresses_only():
    conf = net.dnsmasq_conf('br-gpuaas', net.gateway_interface('10.100.0.1/24'), '/h', '/l', [])
    assert 'dhcp-range=10.100.0.0,static,255.255.255.0,12h' in conf
    assert 'port=0' in conf and 'interface=br-gpuaas' in conf and 'dhcp-hostsdir=/h' in conf


def test_nft_ruleset_is_atomic_and_guards_the_host():
    text = net.nft_ruleset('gpuaas', 'br-gpuaas', net.gateway_interface('10.100.0.1/24'), 9110, True, None,
                           net.DEFAULT_BLOCKED)
    lines = text.splitlines()
    assert lines[1:3] == ['table inet gpuaas', 'delete table inet gpuaas']
    assert '    iifname "br-gpuaas" drop' in lines
    assert '    iifname "br-gpuaas" oifname "br-gpuaas" drop' in lines
    assert 'masquerade' in text
    assert 'masquerade' not in net.nft_ruleset('gpuaas', 'br-gpuaas', net.gateway_interface('10.100.0.1/24'),
                                               9110, False, None, [])


@pytest.mark.parametrize('value', ['10.100.1.1/24', '10.100.0.255/24', '10.100.0.1', 'x', '10.100.0.1/16'])
def test_gateways_off_the_slot_network_are_refused(value):
    with pytest.raises(net.NetworkError):
        net.gateway_interface(value)
