# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra: the node host_prep leaves behind."""

import json


def test_the_slot_bridge_is_secure_and_has_the_gateway(host):
    bridge = json.loads(host.check_output('ovs-vsctl --format=json --columns=fail_mode,datapath_type list Bridge br-gpuaas'))
    assert bridge['data'][0] == ['secure', 'netdev']
    assert '10.100.0.1/24' in host.check_output('ip -4 -o address show dev br-gpuaas')
    flows = host.check_output('ovs-ofctl -O OpenFlow15 --no-stats dump-flows br-gpuaas')
    assert 'priority=0 actions=drop' in flows


def test_dnsmasq_and_the_sink_listen_on_the_gateway_only(host):
    # dnsmasq binds DHCP to the bridge (SO_BINDTODEVICE): ss shows 0.0.0.0%br-gpuaas:67.
    assert '%br-gpuaas:67' in host.check_output('ss -ulnp') and 'dnsmasq' in host.check_output('ss -ulnp')
    assert host.socket('tcp://10.100.0.1:9110').is_listening
    assert not host.socket('tcp://0.0.0.0:9110').is_listening
    conf = host.file('/etc/gpuaas/dnsmasq.conf')
    assert conf.contains('^interface=br-gpuaas$') and conf.contains('static') and conf.contains('^port=0$')


def test_nftables_guards_the_host(host):
    table = host.check_output('nft list table inet gpuaas')
    assert 'iifname "br-gpuaas" drop' in table and 'masquerade' in table


def test_state_directories(host):
    assert host.file('/var/lib/gpuaas/node-scheduler/leases').mode == 0o700
    assert host.file('/var/lib/gpuaas/telemetry/tokens').mode == 0o700
    assert host.file('/var/lib/gpuaas/disks').mode == 0o711
    assert host.file('/usr/local/lib/gpuaas/gpuaas_telemetry_sink.py').exists
    assert host.file('/usr/local/lib/gpuaas/guest/gpuaas_guest_agent.py').exists
