# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot network with real packets: Open vSwitch (userspace datapath), dnsmasq, nftables,
the telemetry sink, and network namespaces standing in for slot VMs and for the internet.

Everything runs in a host namespace of its own with a private Open vSwitch (env.Host), so the
machine's own switch, 10.100.0.1 and firewall are never touched. host_network builds the bridge
(check mode first); dnsmasq and the sink start on it before any slot exists; three slots are
wired with slot_network; a fourth port is put on the bridge by hand (a port nobody owns).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot
from tests.functional.network import env

pytestmark = pytest.mark.slow

NODE = 'netnode'
BRIDGE = 'br-gpuaas-t'
SLOTS = [0, 1, 2]
HOST_SERVICE_PORT = 2222


def slot_args(net, index, **extra):
    ns = net['slots'].get(index)
    args = dict(slot_id=Slot(NODE, index).slot_id, bridge=BRIDGE, hosts_dir=net['hosts'],
                hostname='slot-%d' % index, dnsmasq_pid_file=net['host_args']['pid_file'],
                ssh_dir=net['host_args']['ssh_dir'])
    if ns is not None:
        args.update(port=ns.port, port_type='existing')
    args.update(extra)
    return args


def host_state(host, work):
    """What host_network may change: the bridge, the nftables table, the files it writes."""
    return (host.sh('ovs-vsctl', 'br-exists', BRIDGE, check=False).returncode,
            host.sh('nft', 'list', 'table', 'inet', 'gpuaas', check=False).returncode,
            sorted(os.listdir(work)))


@pytest.fixture(scope='module')
def net():
    work = tempfile.mkdtemp(prefix='gpuaas-nettest-')
    os.chmod(work, 0o755)   # dnsmasq drops to its own user and must read the hosts dir
    try:
        host = env.Host(work).__enter__()
    except env.EnvironmentMissing as exc:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(str(exc))
    pid = os.getpid()
    state = {'host': host, 'dir': work, 'hosts': os.path.join(work, 'hosts'), 'tokens': os.path.join(work, 'tokens'),
             'data': os.path.join(work, 'data'), 'slots': {}, 'daemons': {}, 'tokens_by_slot': {}, 'peers': []}
    host_args = dict(bridge=BRIDGE, datapath_type='netdev', dnsmasq_conf=os.path.join(work, 'dnsmasq.conf'),
                     hosts_dir=state['hosts'], opts_dir=os.path.join(work, 'opts'), lease_file=os.path.join(work, 'leases'),
                     nft_file=os.path.join(work, 'gpuaas.nft'), pid_file=os.path.join(work, 'dnsmasq.pid'),
                     ssh_dir=os.path.join(work, 'ssh.d'))
    state['host_args'] = host_args
    try:
        state['outside'] = env.Outside(host, 'gpuaas-o%d' % pid)
        state['peers'].append(state['outside'])
        before = host_state(host, work)
        state['planned'] = host.module('host_network', host_args, check_mode=True, diff=True)
        state['after_check_mode'] = (before, host_state(host, work))
        first = host.module('host_network', host_args, diff=True)
        assert first['changed'] and not first.get('failed'), first
        state['host_first'] = first
        state['daemons']['dnsmasq'] = env.Daemon(host, first['dnsmasq_argv'], os.path.join(work, 'dnsmasq.log'))
        state['daemons']['sink'] = env.Daemon(
            host, [sys.executable, env.SINK, '--listen', env.GATEWAY, '--port', '9110', '--token-dir', state['tokens'],
                   '--data-dir', state['data']], os.path.join(work, 'sink.log'))
        # A host service on all the host's addresses that slots must not reach.
        state['daemons']['service'] = env.Daemon(
            host, [sys.executable, '-m', 'http.server', '--bind', '0.0.0.0', '--directory', state['hosts'],
                   str(HOST_SERVICE_PORT)], os.path.join(work, 'service.log'))
        env.wait_for(lambda: os.path.exists(host_args['pid_file']), 10, 'dnsmasq to write its pid file')
        env.wait_for(lambda: host.http_ok('http://%s:9110/healthz' % env.GATEWAY), 30,
                     'the sink to answer (its log: %r)' % os.path.join(work, 'sink.log'))
        env.wait_for(lambda: host.http_ok('http://%s:%d/' % (env.GATEWAY, HOST_SERVICE_PORT)), 10,
                     'the host service to answer')
        state['dnsmasq_pid'] = open(host_args['pid_file']).read().strip()
        # dnsmasq runs before any slot exists: slots appear through its hostsdir (inotify).
        for index in SLOTS:
            ns = env.SlotNamespace(host, 'gpuaas-s%d-%d' % (index, pid), Slot(NODE, index).mac, 'gtv%d' % index, work)
            state['slots'][index] = ns
            state['peers'].append(ns)
            result = host.module('slot_network', slot_args(state, index))
            assert result['changed'] and not result.get('failed'), result
            assert not result['dnsmasq_reloaded'], result   # a new entry needs no signal
            token = host.module('telemetry_token', dict(
                slot_id=Slot(NODE, index).slot_id, allocation_id='alloc-%d' % index, token_dir=state['tokens'], _ansible_no_log=True))
            state['tokens_by_slot'][index] = token['token']
        # A port on the bridge that belongs to no slot, holding slot 4's OpenFlow port number.
        state['stranger'] = env.SlotNamespace(host, 'gpuaas-x%d' % pid, '52:54:00:12:34:56', 'gtvx', work)
        state['peers'].append(state['stranger'])
        host.sh('ovs-vsctl', 'add-port', BRIDGE, 'gtvx', '--', 'set', 'Interface', 'gtvx', 'ofport_request=104')
        yield state
    finally:
        for daemon in state['daemons'].values():
            daemon.stop()
        for peer in state['peers']:
            peer.close()
        state['absent'] = host.module('host_network', dict(host_args, state='absent'))
        host.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def test_check_mode_on_a_fresh_host_changes_nothing(net):
    planned = net['planned']
    assert planned['changed'] and not planned.get('failed'), planned
    assert 'bridge %s created' % BRIDGE in planned['changes']
    before, after = net['after_check_mode']
    assert before == after and before[:2] == (2, 1)   # no bridge, no table, no file
    first = net['host_first']
    assert first['datapath_type'] == 'netdev' and first['gateway'] == '10.100.0.1/24'
    assert first['dnsmasq_argv'][-1] == '--conf-file=%s' % net['host_args']['dnsmasq_conf']
    conf = open(net['host_args']['dnsmasq_conf']).read()
    assert 'pid-file=%s' % net['host_args']['pid_file'] in conf and 'dhcp-range=10.100.0.0,static' in conf
    assert first['diff']['after']['nftables table inet gpuaas'] == open(net['host_args']['nft_file']).read()


def test_slots_get_their_fixed_address_and_reach_gateway_and_sink(net):
    for index, ns in net['slots'].items():
        assert ns.dhcp() == (Slot(NODE, index).ip, 'slot-%d' % index, env.GATEWAY), 'slot %d: wrong or no lease' % index
        assert ns.ping(env.GATEWAY)
        assert ns.post(net['tokens_by_slot'][index]) == 200
    # Each allocation's series and the summary the control plane collects.
    assert sorted(os.listdir(net['data'])) == ['alloc-%d.%s' % (index, kind) for index in range(3)
                                               for kind in ('jsonl', 'summary.json')]


def test_slots_cannot_reach_each_other(net):
    gateway_mac = net['host'].sh('cat', '/sys/class/net/%s/address' % BRIDGE).stdout.strip()
    for index, ns in net['slots'].items():
        for other in SLOTS:
            if other != index:
                assert not ns.ping(Slot(NODE, other).ip), 'slot %d reaches slot %d' % (index, other)
    # Not through the host either: slot 0 sends to slot 1's address at the gateway's MAC.
    s0 = net['slots'][0]
    env.sh('ip', 'neigh', 'replace', Slot(NODE, 1).ip, 'lladdr', gateway_mac, 'dev', 'eth0', 'nud', 'permanent', ns=s0.ns)
    try:
        assert not s0.ping(Slot(NODE, 1).ip)
    finally:
        env.sh('ip', 'neigh', 'del', Slot(NODE, 1).ip, 'dev', 'eth0', ns=s0.ns, check=False)


def test_a_token_works_only_from_its_own_slot_and_allocation(net):
    s0, s1 = net['slots'][0], net['slots'][1]
    assert s0.post(net['tokens_by_slot'][1]) == 403
    assert s0.post('not-a-token-of-anyone-0123456789') == 401
    assert s1.post(net['tokens_by_slot'][1]) == 200
    # A new allocation on slot 1: the previous allocation's token stops working at once.
    new = net['host'].module('telemetry_token', dict(slot_id=Slot(NODE, 1).slot_id, allocation_id='alloc-1b',
                                                     token_dir=net['tokens'], _ansible_no_log=True))
    assert new['changed'] and new['token'] != net['tokens_by_slot'][1]
    assert s1.post(net['tokens_by_slot'][1]) == 401
    net['tokens_by_slot'][1] = new['token']
    assert s1.post(new['token']) == 200


def test_spoofed_addresses_get_nowhere(net):
    s0 = net['slots'][0]
    assert s0.ping(env.GATEWAY)
    s0.set_address(Slot(NODE, 1).ip)                               # slot 1's IP
    assert not s0.ping(env.GATEWAY)
    assert s0.post(net['tokens_by_slot'][1]) is None         # nor the sink with slot 1's token
    s0.set_address(Slot(NODE, 0).ip, mac=Slot(NODE, 1).mac)        # its own IP, slot 1's MAC
    assert not s0.ping(env.GATEWAY)
    s0.set_address('10.100.0.77', mac=Slot(NODE, 0).mac)     # its MAC, an address nobody has
    assert not s0.ping(env.GATEWAY)
    s0.set_address(Slot(NODE, 0).ip)
    assert s0.ping(env.GATEWAY)


def test_a_port_no_slot_owns_gets_nothing(net):
    stranger = net['stranger']
    assert stranger.dhcp(tries=2) is None
    stranger.set_address('10.100.0.200')
    assert not stranger.ping(env.GATEWAY)
    assert not stranger.ping(Slot(NODE, 0).ip)


def test_egress_is_masqueraded_and_private_networks_stay_out(net):
    s0, outside = net['slots'][0], net['outside']
    server = outside.serve_once(8080)
    try:
        assert s0.get('http://%s:8080/' % env.UPLINK_OUTSIDE) == 'ok\n'
        out, err = server.communicate(timeout=10)
    finally:
        server.kill()
    assert out.split() == [env.UPLINK_HOST], err             # the outside saw the host, not the slot
    assert s0.ping(env.UPLINK_OUTSIDE)
    # Same route, same outside host: only the blocked private network is refused.
    assert not s0.ping(env.PRIVATE_OUTSIDE)
    assert env.sh('busybox', 'ping', '-c', '1', '-W', '1', env.PRIVATE_OUTSIDE, ns=net['host'].ns,
                  check=False).returncode == 0                # the host itself reaches it


def test_slots_reach_no_host_service_but_the_sink(net):
    s0, host = net['slots'][0], net['host']
    url = 'http://%s:%d/' % (env.GATEWAY, HOST_SERVICE_PORT)
    assert host.http_ok(url)                                 # it runs, on the gateway address
    assert s0.get(url) is None
    assert not s0.ping(env.UPLINK_HOST)                      # the host's other addresses
    assert host.http_ok('http://%s:%d/' % (env.UPLINK_HOST, HOST_SERVICE_PORT))
    assert s0.get('http://%s:%d/' % (env.UPLINK_HOST, HOST_SERVICE_PORT)) is None


def test_the_port_device_itself_is_no_way_into_the_host(net):
    """The host's kernel sees every frame on a slot port too (the userspace datapath reads it with a
    packet socket): it must neither answer ARP there nor take what is sent to the port's own MAC."""
    host, s0 = net['host'], net['slots'][0]
    port_mac = host.sh('cat', '/sys/class/net/%s/address' % s0.port).stdout.strip()
    bridge_mac = host.sh('cat', '/sys/class/net/%s/address' % BRIDGE).stdout.strip()
    env.sh('ip', 'neigh', 'flush', 'all', ns=s0.ns)
    assert s0.ping(env.GATEWAY, count=2)
    neigh = env.sh('ip', 'neigh', 'show', env.GATEWAY, ns=s0.ns).stdout
    assert bridge_mac in neigh and port_mac not in neigh, neigh
    env.sh('ip', 'neigh', 'replace', env.GATEWAY, 'lladdr', port_mac, 'dev', 'eth0', 'nud', 'permanent', ns=s0.ns)
    try:
        assert s0.get('http://%s:%d/' % (env.UPLINK_HOST, HOST_SERVICE_PORT)) is None
        assert s0.get('http://%s:%d/' % (env.GATEWAY, HOST_SERVICE_PORT)) is None
        assert not s0.ping(env.PRIVATE_OUTSIDE)
        assert not s0.ping(env.GATEWAY)
        s0.set_address('192.0.2.77')                          # a source no rule about 10.100.0.0/24 covers
        env.sh('ip', 'route', 'replace', 'default', 'dev', 'eth0', ns=s0.ns)
        env.sh('ip', 'neigh', 'replace', env.UPLINK_HOST, 'lladdr', port_mac, 'dev', 'eth0', 'nud', 'permanent',
               ns=s0.ns)
        assert s0.get('http://%s:%d/' % (env.UPLINK_HOST, HOST_SERVICE_PORT)) is None
    finally:
        s0.set_address(Slot(NODE, 0).ip)
    assert s0.ping(env.GATEWAY)


def test_ipv6_from_slots_is_dropped_by_the_flows(net):
    """nftables drops IPv6 from the bridge too: with an nft rule letting ICMPv6 in, link-local ping
    to the gateway works while a test flow lets IPv6 through, and stops with the slot's flows alone."""
    host, s0 = net['host'], net['slots'][0]

    def settled(*argv):
        return lambda: 'fe80' in sh6(*argv) and 'tentative' not in sh6(*argv)

    def sh6(*argv):
        return env.sh(*argv, check=False).stdout
    env.wait_for(settled('ip', 'netns', 'exec', host.ns, 'ip', '-6', 'addr', 'show', 'dev', BRIDGE), 10,
                 'the bridge link-local address')
    env.wait_for(settled('ip', 'netns', 'exec', s0.ns, 'ip', '-6', 'addr', 'show', 'dev', 'eth0'), 10,
                 'the slot link-local address')
    local = host.sh('ip', '-6', '-o', 'addr', 'show', 'dev', BRIDGE, 'scope', 'link').stdout.split()[3].split('/')[0]

    def ping6():
        return env.sh('busybox', 'ping6', '-c', '1', '-W', '2', '-I', 'eth0', local, ns=s0.ns,
                      check=False).returncode == 0
    rule = host.sh('nft', '--echo', '--handle', 'insert', 'rule', 'inet', 'gpuaas', 'input', 'iifname', BRIDGE,
                   'meta', 'l4proto', 'ipv6-icmp', 'accept').stdout
    handle = rule.split('# handle')[1].split()[0]
    try:
        for flow in ('cookie=0x1,priority=300,ipv6,in_port=100 actions=LOCAL',
                     'cookie=0x1,priority=300,ipv6,in_port=LOCAL actions=output:100'):
            host.sh('ovs-ofctl', '-O', 'OpenFlow15', 'add-flow', BRIDGE, flow)
        try:
            assert ping6(), 'IPv6 does not work even when allowed: the test would prove nothing'
        finally:
            host.sh('ovs-ofctl', '-O', 'OpenFlow15', 'del-flows', BRIDGE, 'cookie=0x1/-1')
        env.sh('ip', '-6', 'neigh', 'flush', 'all', ns=s0.ns)
        assert not ping6()
    finally:
        host.sh('nft', 'delete', 'rule', 'inet', 'gpuaas', 'input', 'handle', handle)


def test_second_run_and_check_mode_change_nothing(net):
    host = net['host']
    again = host.module('host_network', net['host_args'])
    assert not again['changed'], again
    args = slot_args(net, 1)
    assert not host.module('slot_network', args)['changed']
    planned = host.module('slot_network', dict(args, hostname='renamed'), check_mode=True, diff=True)
    assert planned['changed'] and 'renamed' in planned['diff']['after']['dhcp host %s' % planned['hosts_file']]
    assert 'slot-1' in open(planned['hosts_file']).read()
    # A new slot in check mode: no tap, no port, no flows, no entry.
    before = (host.flows(BRIDGE), host.ports(BRIDGE), sorted(os.listdir(net['hosts'])))
    new = host.module('slot_network', dict(slot_id=Slot(NODE, 5).slot_id, bridge=BRIDGE, hosts_dir=net['hosts'],
                                           hostname='five'), check_mode=True, diff=True)
    assert new['changed'] and not new.get('failed') and 'tap %s' % new['port'] in new['changes'], new
    assert (host.flows(BRIDGE), host.ports(BRIDGE), sorted(os.listdir(net['hosts']))) == before
    assert host.sh('ip', 'link', 'show', new['port'], check=False).returncode != 0


def test_a_changed_entry_reaches_the_running_dnsmasq(net):
    """dnsmasq keeps a changed hostsdir file's old record until SIGHUP; slot_network sends it."""
    host, s1 = net['host'], net['slots'][1]
    changed = host.module('slot_network', slot_args(net, 1, hostname='renamed'))
    assert changed['changed'] and changed['dnsmasq_reloaded'], changed
    assert s1.dhcp() == (Slot(NODE, 1).ip, 'renamed', env.GATEWAY)
    back = host.module('slot_network', slot_args(net, 1))
    assert back['dnsmasq_reloaded']
    assert s1.dhcp() == (Slot(NODE, 1).ip, 'slot-1', env.GATEWAY)
    assert open(net['host_args']['pid_file']).read().strip() == net['dnsmasq_pid']   # never restarted


@pytest.mark.parametrize('args, message', [
    (dict(hostname='evil;reboot'), 'RFC 1123'),
    (dict(hostname='x\ndhcp-range=10.100.0.0,10.100.0.250'), 'RFC 1123'),
    (dict(hostname='a,b'), 'RFC 1123'),
    (dict(hostname='$(reboot)'), 'RFC 1123'),
    (dict(hostname='-lead'), 'RFC 1123'),
    (dict(hostname='a' * 64), 'RFC 1123'),
    (dict(mac='52:54:00:00:00:01'), 'layout gives'),
    (dict(ip='10.100.0.99'), 'layout gives'),
    (dict(ip='192.168.1.14'), 'layout gives'),
    (dict(slot_id='../../etc/x-s0'), 'slot id'),
    (dict(slot_id='netnode-s999'), 'slot index must be a whole number from 0 to 244'),
    (dict(port='gtv0;ls'), 'not a valid network interface name'),
    (dict(bridge='br x'), 'not a valid network interface name'),
    (dict(hosts_dir='/tmp/../etc'), "'..'"),
    (dict(port=BRIDGE), 'the bridge itself'),
    (dict(port='gtv0', port_type='existing'), 'belongs to slot netnode-s0'),
    (dict(port='gtvx'), 'not a tap device'),
    (dict(port='up0', port_type='existing'), 'IPv4 address'),
    (dict(port='gtv-missing', port_type='existing'), 'does not exist'),
    (dict(), 'OpenFlow port 104 of slot netnode-s4 is held by gtvx'),
    (dict(telemetry_port=2 ** 64), 'telemetry_port must be a TCP/UDP port number'),
    (dict(telemetry_port=0), 'telemetry_port must be a TCP/UDP port number'),
    (dict(telemetry_port='nan'), 'telemetry_port'),
])
def test_hostile_input_changes_nothing(net, args, message):
    host = net['host']

    def snapshot():
        return (host.flows(BRIDGE), sorted(os.listdir(net['hosts'])), host.ports(BRIDGE),
                host.sh('ip', '-o', 'link').stdout.count('\n'))
    before = snapshot()
    base = dict(slot_id=Slot(NODE, 4).slot_id, bridge=BRIDGE, hosts_dir=net['hosts'], hostname='ok', port_type='tap')
    result = host.module('slot_network', dict(base, **args))
    assert result.get('failed') and message in result['msg'], result
    assert snapshot() == before


@pytest.mark.parametrize('args, message', [
    (dict(gateway='192.168.1.1/24'), 'not on the slot network'),
    (dict(gateway='10.100.0.0/24'), 'network or broadcast'),
    (dict(bridge='br-gpuaas-toolong'), 'not a valid network interface name'),
    (dict(nft_table='x; flush ruleset'), 'not a valid nftables table name'),
    (dict(uplink='eth0 accept'), 'not a valid network interface name'),
    (dict(blocked_networks=['10.0.0.1/8']), 'not a network'),
    (dict(pid_file='/run/a,b.pid'), 'spaces or commas'),
    (dict(hosts_dir='/var/lib/x\ndhcp-range=10.100.0.0,10.100.0.250'), 'control characters'),
    (dict(telemetry_port=2 ** 64), 'telemetry_port must be a TCP/UDP port number'),
    (dict(telemetry_port=-1), 'telemetry_port must be a TCP/UDP port number'),
])
def test_hostile_host_settings_change_nothing(net, args, message):
    host = net['host']

    def snapshot():
        return (host.flows(BRIDGE), open(net['host_args']['dnsmasq_conf']).read(),
                host.sh('nft', 'list', 'table', 'inet', 'gpuaas').stdout)
    before = snapshot()
    result = host.module('host_network', dict(net['host_args'], **args))
    assert result.get('failed') and message in result['msg'], result
    assert snapshot() == before


def test_release_removes_exactly_that_slot(net):
    """Runs last: slot 2 goes, slots 0 and 1 keep their flows, entries and traffic."""
    host = net['host']
    others = {index: host.flows(BRIDGE, Slot(NODE, index).cookie) for index in (0, 1)}
    s2 = net['slots'][2]
    args = slot_args(net, 2, state='absent')
    gone = host.module('slot_network', args)
    assert gone['changed'] and gone['dnsmasq_reloaded'], gone
    assert host.flows(BRIDGE, Slot(NODE, 2).cookie) == []
    assert s2.port not in host.ports(BRIDGE)
    assert sorted(os.listdir(net['hosts'])) == [Slot(NODE, 0).slot_id, Slot(NODE, 1).slot_id]
    # No group floods DHCP replies any more (a reply reaches only its asker: test_tenant_network).
    assert 'group_id' not in host.sh('ovs-ofctl', '-O', 'OpenFlow15', 'dump-groups', BRIDGE).stdout
    assert {index: host.flows(BRIDGE, Slot(NODE, index).cookie) for index in (0, 1)} == others
    assert not host.module('slot_network', args)['changed']
    revoked = host.module('telemetry_token', dict(slot_id=Slot(NODE, 2).slot_id, allocation_id='alloc-2', state='absent',
                                                  token_dir=net['tokens']))
    assert revoked['changed']
    assert net['slots'][0].ping(env.GATEWAY) and net['slots'][1].ping(env.GATEWAY)
    assert not s2.ping(env.GATEWAY) and s2.dhcp(tries=2) is None
    # The slot comes back for a new allocation: dnsmasq forgot the old entry (SIGHUP on
    # release) and reads the new one by itself, without a restart.
    back = host.module('slot_network', slot_args(net, 2, hostname='slot-2-again'))
    assert back['changed'] and not back['dnsmasq_reloaded'], back
    assert s2.dhcp() == (Slot(NODE, 2).ip, 'slot-2-again', env.GATEWAY)
    assert open(net['host_args']['pid_file']).read().strip() == net['dnsmasq_pid']


def test_the_kernel_datapath_works_or_is_refused_clearly():
    """datapath_type=system: a bridge where the openvswitch module is loaded, else a clear failure and no bridge."""
    work = tempfile.mkdtemp(prefix='gpuaas-nettest-sys-')
    try:
        with env.Host(work, tag='k') as host:
            args = dict(bridge='br-gpuaas-k', datapath_type='system', dnsmasq_conf=os.path.join(work, 'dnsmasq.conf'),
                        hosts_dir=os.path.join(work, 'hosts'), opts_dir=os.path.join(work, 'opts'),
                        lease_file=os.path.join(work, 'leases'),
                        nft_file=os.path.join(work, 'gpuaas.nft'), pid_file=os.path.join(work, 'dnsmasq.pid'),
                        ssh_dir=os.path.join(work, 'ssh.d'))
            result = host.module('host_network', args)
            exists = host.sh('ovs-vsctl', 'br-exists', 'br-gpuaas-k', check=False).returncode == 0
            if result.get('failed'):
                assert 'openvswitch kernel module' in result['msg'] and 'datapath_type=netdev' in result['msg'], result
                assert not exists and not os.path.exists(args['dnsmasq_conf'])
                assert host.sh('nft', 'list', 'table', 'inet', 'gpuaas', check=False).returncode != 0
            else:
                assert exists and result['datapath_type'] == 'system'
                assert not host.module('host_network', args)['changed']
                assert host.module('host_network', dict(args, state='absent'))['changed']
    except env.EnvironmentMissing as exc:
        pytest.skip(str(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)
