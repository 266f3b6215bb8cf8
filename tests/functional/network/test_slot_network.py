# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot network with real packets: Open vSwitch (userspace datapath), dnsmasq, nftables,
the telemetry sink, and network namespaces standing in for slot VMs.

host_network builds the bridge; dnsmasq and the sink start on it; three slots are wired
with slot_network and a fourth port is put on the bridge by hand (a port nobody owns).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._layout import slot_cookie, slot_ip, slot_mac
from tests.functional.network import env

NODE = 'netnode'
BRIDGE = 'br-gpuaas-t'
TABLE = 'gpuaas_test'
SLOTS = [0, 1, 2]


@pytest.fixture(scope='module')
def net():
    if shutil.which('ip') is None or shutil.which('ethtool') is None:
        pytest.skip('needs iproute2 and ethtool')
    if env.GATEWAY in env.sh('ip', '-4', '-o', 'addr', 'show').stdout:
        pytest.skip('10.100.0.1 is already on this machine (the lab is up?): make lab-down first')
    try:
        ovs = env.OpenVSwitch().__enter__()
    except env.EnvironmentMissing as exc:
        pytest.skip(str(exc))
    work = tempfile.mkdtemp(prefix='gpuaas-nettest-')
    os.chmod(work, 0o755)   # dnsmasq drops to its own user and must read the hosts dir
    state = {'dir': work, 'hosts': os.path.join(work, 'hosts'), 'tokens': os.path.join(work, 'tokens'),
             'data': os.path.join(work, 'data'), 'slots': {}, 'daemons': [], 'tokens_by_slot': {}}
    host_args = dict(bridge=BRIDGE, datapath_type='netdev', dnsmasq_conf=os.path.join(work, 'dnsmasq.conf'),
                     hosts_dir=state['hosts'], lease_file=os.path.join(work, 'leases'), nft_table=TABLE,
                     nft_file=os.path.join(work, 'gpuaas.nft'))
    state['host_args'] = host_args
    script = os.path.join(work, 'udhcpc.sh')
    with open(script, 'w') as handle:
        handle.write('#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; '
                     'ip addr add "$ip/${mask:-24}" dev "$interface";; esac\nexit 0\n')
    os.chmod(script, 0o755)
    state['udhcpc'] = script
    try:
        first = env.module('host_network', host_args, diff=True)
        assert first['changed'] and not first.get('failed'), first
        state['host_first'] = first
        state['daemons'].append(env.Daemon(first['dnsmasq_argv'], os.path.join(work, 'dnsmasq.log')))
        state['daemons'].append(env.Daemon(['python3', env.SINK, '--listen', env.GATEWAY, '--port', '9110',
                                            '--token-dir', state['tokens'], '--data-dir', state['data']],
                                           os.path.join(work, 'sink.log')))
        env.wait_for(lambda: env.sh('busybox', 'nc', '-z', env.GATEWAY, '9110', check=False).returncode == 0
                     or os.path.exists(state['data']), 10, 'the sink to start')
        # dnsmasq is running before any slot exists: slots appear through its hostsdir (inotify).
        for index in SLOTS:
            slot_id = '%s-s%d' % (NODE, index)
            ns = env.SlotNamespace('gpuaas-t%d' % index, slot_mac(NODE, index), 'gtv%d' % index)
            state['slots'][index] = ns
            result = env.module('slot_network', dict(
                slot_id=slot_id, bridge=BRIDGE, hosts_dir=state['hosts'], hostname='slot-%d' % index,
                port=ns.port, port_type='existing'))
            assert result['changed'] and not result.get('failed'), result
            token = env.module('telemetry_token', dict(
                slot_id=slot_id, allocation_id='alloc-%d' % index, token_dir=state['tokens']))
            state['tokens_by_slot'][index] = token['token']
        # A port on the bridge that belongs to no slot.
        state['stranger'] = env.SlotNamespace('gpuaas-tx', '52:54:00:12:34:56', 'gtvx')
        env.sh('ovs-vsctl', 'add-port', BRIDGE, 'gtvx')
        yield state
    finally:
        for daemon in state['daemons']:
            daemon.stop()
        for ns in list(state['slots'].values()) + [state.get('stranger')]:
            if ns:
                ns.close()
        env.module('host_network', dict(host_args, state='absent'))
        ovs.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def flows(cookie=None):
    args = ['ovs-ofctl', '-O', 'OpenFlow15', '--no-names', '--no-stats', 'dump-flows', BRIDGE]
    if cookie is not None:
        args.append('cookie=%#x/-1' % cookie)
    return sorted(line.strip() for line in env.sh(*args).stdout.splitlines() if 'actions=' in line)


def test_slots_get_their_fixed_address_and_reach_gateway_and_sink(net):
    for index, ns in net['slots'].items():
        assert ns.dhcp(net['udhcpc']), 'slot %d got no DHCP lease' % index
        assert ns.address() == slot_ip(index)
        assert ns.ping(env.GATEWAY)
        assert ns.post(net['tokens_by_slot'][index]) == 200
    stored = os.listdir(net['data'])
    assert sorted(stored) == ['alloc-0.jsonl', 'alloc-1.jsonl', 'alloc-2.jsonl']


def test_slots_cannot_reach_each_other(net):
    for index, ns in net['slots'].items():
        if ns.address() is None:
            assert ns.dhcp(net['udhcpc'])
    for index, ns in net['slots'].items():
        for other in SLOTS:
            if other != index:
                assert not ns.ping(slot_ip(other)), 'slot %d reaches slot %d' % (index, other)


def test_a_token_works_only_from_its_own_slot(net):
    s0, s1 = net['slots'][0], net['slots'][1]
    assert s0.post(net['tokens_by_slot'][1]) == 403
    assert s0.post('not-a-token-of-anyone-0123456789') == 401
    assert s1.post(net['tokens_by_slot'][1]) == 200


def test_spoofed_addresses_get_nowhere(net):
    s0 = net['slots'][0]
    if s0.address() is None:
        assert s0.dhcp(net['udhcpc'])
    assert s0.ping(env.GATEWAY)
    # Slot 0 takes slot 1's IP: the gateway no longer answers it.
    env.sh('ip', 'addr', 'replace', '%s/24' % slot_ip(1), 'dev', 'eth0', ns=s0.ns)
    env.sh('ip', 'addr', 'del', '%s/24' % slot_ip(0), 'dev', 'eth0', ns=s0.ns)
    assert not s0.ping(env.GATEWAY)
    # Back to its IP but with slot 1's MAC: nothing either.
    env.sh('ip', 'addr', 'flush', 'dev', 'eth0', ns=s0.ns)
    env.sh('ip', 'addr', 'add', '%s/24' % slot_ip(0), 'dev', 'eth0', ns=s0.ns)
    env.sh('ip', 'link', 'set', 'eth0', 'address', slot_mac(NODE, 1), ns=s0.ns)
    assert not s0.ping(env.GATEWAY)
    env.sh('ip', 'link', 'set', 'eth0', 'address', slot_mac(NODE, 0), ns=s0.ns)
    env.sh('ip', 'neigh', 'flush', 'all', ns=s0.ns)
    assert s0.ping(env.GATEWAY)


def test_a_port_no_slot_owns_gets_nothing(net):
    stranger = net['stranger']
    assert not stranger.dhcp(net['udhcpc'], tries=2)
    env.sh('ip', 'addr', 'add', '10.100.0.200/24', 'dev', 'eth0', ns=stranger.ns)
    assert not stranger.ping(env.GATEWAY)
    assert not stranger.ping(slot_ip(0))


def test_second_run_and_check_mode_change_nothing(net):
    again = env.module('host_network', net['host_args'])
    assert not again['changed'], again
    index, ns = 1, net['slots'][1]
    args = dict(slot_id='%s-s%d' % (NODE, index), bridge=BRIDGE, hosts_dir=net['hosts'], hostname='slot-1',
                port=ns.port, port_type='existing')
    assert not env.module('slot_network', args)['changed']
    planned = env.module('slot_network', dict(args, hostname='renamed'), check_mode=True, diff=True)
    assert planned['changed'] and 'renamed' in planned['diff']['after']['dhcp host %s' % planned['hosts_file']]
    assert 'slot-1' in open(planned['hosts_file']).read()


@pytest.mark.parametrize('args, message', [
    (dict(hostname='evil;reboot'), 'RFC 1123'),
    (dict(hostname='x\ndhcp-range=10.100.0.0,10.100.0.250'), 'RFC 1123'),
    (dict(hostname='a,b'), 'RFC 1123'),
    (dict(hostname='-lead'), 'RFC 1123'),
    (dict(mac='52:54:00:00:00:01'), 'layout gives'),
    (dict(ip='10.100.0.99'), 'layout gives'),
    (dict(slot_id='../../etc/x-s0'), 'slot id'),
    (dict(slot_id='netnode-s999'), 'outside the slot network'),
    (dict(port='gtv0;ls'), 'not a network interface name'),
    (dict(bridge='br x'), 'not a network interface name'),
    (dict(hosts_dir='/tmp/../etc'), "'..'"),
])
def test_hostile_input_changes_nothing(net, args, message):
    before = (flows(), sorted(os.listdir(net['hosts'])), env.sh('ovs-vsctl', 'list-ports', BRIDGE).stdout)
    base = dict(slot_id='%s-s4' % NODE, bridge=BRIDGE, hosts_dir=net['hosts'], hostname='ok', port_type='tap')
    result = env.module('slot_network', dict(base, **args))
    assert result.get('failed') and message in result['msg'], result
    assert (flows(), sorted(os.listdir(net['hosts'])), env.sh('ovs-vsctl', 'list-ports', BRIDGE).stdout) == before


@pytest.mark.parametrize('args, message', [
    (dict(gateway='192.168.1.1/24'), 'not on the slot network'),
    (dict(gateway='10.100.0.0/24'), 'network or broadcast'),
    (dict(bridge='br-gpuaas-toolong'), 'not a network interface name'),
    (dict(nft_table='x; flush ruleset'), 'not a table name'),
    (dict(uplink='eth0 accept'), 'not a network interface name'),
    (dict(blocked_networks=['10.0.0.1/8']), 'not a network'),
])
def test_hostile_host_settings_change_nothing(net, args, message):
    before = (flows(), open(net['host_args']['dnsmasq_conf']).read())
    result = env.module('host_network', dict(net['host_args'], **args))
    assert result.get('failed') and message in result['msg'], result
    assert (flows(), open(net['host_args']['dnsmasq_conf']).read()) == before


def test_release_removes_exactly_that_slot(net):
    """Runs last: slot 2 goes, slots 0 and 1 keep their flows, entries and traffic."""
    others = {index: flows(slot_cookie(index)) for index in (0, 1)}
    s2 = net['slots'][2]
    args = dict(slot_id='%s-s2' % NODE, bridge=BRIDGE, hosts_dir=net['hosts'], port=s2.port,
                port_type='existing', state='absent')
    gone = env.module('slot_network', args)
    assert gone['changed'], gone
    assert flows(slot_cookie(2)) == []
    assert s2.port not in env.sh('ovs-vsctl', 'list-ports', BRIDGE).stdout.split()
    assert sorted(os.listdir(net['hosts'])) == ['%s-s0' % NODE, '%s-s1' % NODE]
    groups = env.sh('ovs-ofctl', '-O', 'OpenFlow15', 'dump-groups', BRIDGE).stdout
    assert 'bucket_id:102' not in groups and 'bucket_id:100' in groups
    assert {index: flows(slot_cookie(index)) for index in (0, 1)} == others
    assert not env.module('slot_network', args)['changed']
    env.module('telemetry_token', dict(slot_id='%s-s2' % NODE, allocation_id='alloc-2', state='absent',
                                       token_dir=net['tokens']))
    assert net['slots'][0].ping(env.GATEWAY) and not s2.ping(env.GATEWAY)
