# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot network's pure parts: flows, their canonical form, dnsmasq and nftables text."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import MAX_SLOTS, Slot


def test_our_flow_text_and_ovs_dump_compare_equal():
    ours = 'cookie=0x6770750000000003,priority=200,arp,in_port=103,dl_src=52:54:AA:00:00:01,arp_tpa=10.100.0.1 actions=LOCAL'
    dumped = (' cookie=0x6770750000000003, duration=12.5s, table=0, n_packets=4, n_bytes=168, idle_age=3, '
              'priority=200,arp,in_port=103,dl_src=52:54:aa:00:00:01,arp_tpa=10.100.0.1 actions=LOCAL')
    assert net.canonical_flow(ours) == net.canonical_flow(dumped)
    assert net.canonical_flow(ours) != net.canonical_flow(ours.replace('in_port=103', 'in_port=104'))


def test_no_slot_flow_outputs_to_another_slot_port():
    slot = Slot('gpu-node-01', 3)
    flows = net.slot_flows(slot, '10.100.0.1', 9110)
    for flow in flows:
        actions = flow.split(' actions=')[1]
        assert actions in ('LOCAL', 'drop', 'output:103'), flow
        if actions == 'output:103':
            assert 'in_port=LOCAL' in flow
        else:
            assert 'in_port=103,dl_src=%s' % slot.mac in flow and 'cookie=0x6770750000000003' in flow


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


def test_the_nft_ruleset_refuses_slot_addresses_off_the_bridge_and_spares_loopback():
    text = net.nft_ruleset('gpuaas', 'br-gpuaas', net.gateway_interface('10.100.0.1/24'), 9110, True, None, [])
    lines = text.splitlines()
    forward = lines.index('  chain forward {')
    assert lines.index('    ip saddr 10.100.0.0/24 iifname != { "br-gpuaas", "lo" } drop') < forward
    assert lines[forward + 2] == '    ip saddr 10.100.0.0/24 iifname != "br-gpuaas" drop'
    assert '    ip saddr 10.100.0.0/24 oifname != { "br-gpuaas", "lo" } masquerade' in lines
    with_uplink = net.nft_ruleset('gpuaas', 'br-gpuaas', net.gateway_interface('10.100.0.1/24'), 9110, True,
                                  'eth1', [])
    assert '    ip saddr 10.100.0.0/24 oifname "eth1" masquerade' in with_uplink.splitlines()


def test_dnsmasq_writes_its_own_pid_file():
    conf = net.dnsmasq_conf('br-gpuaas', net.gateway_interface('10.100.0.1/24'), '/h', '/l', [], '/run/x.pid')
    assert 'pid-file=/run/x.pid' in conf.splitlines()
    assert 'pid-file=%s' % net.DNSMASQ_PID_FILE in net.dnsmasq_conf(
        'br-gpuaas', net.gateway_interface('10.100.0.1/24'), '/h', '/l', []).splitlines()


def test_a_port_is_kept_off_the_host_stack(tmp_path):
    proc_net = tmp_path / 'net'
    for family, key, value in (('ipv4', 'rp_filter', '0'), ('ipv4', 'arp_ignore', '0'), ('ipv6', 'disable_ipv6', '0')):
        (proc_net / family / 'conf' / 'gs3-0a1b2c3d').mkdir(parents=True, exist_ok=True)
        (proc_net / family / 'conf' / 'gs3-0a1b2c3d' / key).write_text(value + '\n')
    assert len(net.port_sysctls('gs3-0a1b2c3d', str(proc_net))) == 3
    net.isolate_port('gs3-0a1b2c3d', str(proc_net))
    assert net.port_sysctls('gs3-0a1b2c3d', str(proc_net)) == {}
    assert (proc_net / 'ipv4' / 'conf' / 'gs3-0a1b2c3d' / 'arp_ignore').read_text() == '8\n'
    with pytest.raises(net.NetworkError, match='keeps the host off slot port gone'):
        net.isolate_port('gone', str(proc_net))


def test_only_a_running_dnsmasq_is_signalled(tmp_path):
    pid_file = tmp_path / 'dnsmasq.pid'
    assert not net.reload_dnsmasq(str(pid_file))                 # no pid file
    pid_file.write_text('%d\n' % os.getpid())                     # a process, but not dnsmasq
    assert not net.reload_dnsmasq(str(pid_file))
    proc = tmp_path / 'proc' / '4242'
    proc.mkdir(parents=True)
    (proc / 'stat').write_text('4242 (dnsmasq) Z 1 1')            # a zombie dnsmasq
    (proc / 'cmdline').write_bytes(b'/usr/sbin/dnsmasq\0--keep-in-foreground\0')
    pid_file.write_text('4242\n')
    assert not net.reload_dnsmasq(str(pid_file), proc_root=str(tmp_path / 'proc'))


def test_the_slots_tags_come_from_the_configuration_never_from_an_entry():
    """dnsmasq 2.90 frees an entry's set: tag with what a reply chained onto it: entries set none."""
    conf = net.dnsmasq_conf('br-gpuaas', net.gateway_interface('10.100.0.1/24'), '/h', '/l', [], '/run/x.pid',
                            '/o', ['gpu-node-01']).splitlines()
    tags = [line for line in conf if line.startswith('dhcp-mac=')]
    assert len(tags) == MAX_SLOTS and 'dhcp-optsdir=/o' in conf
    assert tags[3] == 'dhcp-mac=set:gpu-node-01-s3,%s' % Slot('gpu-node-01', 3).mac
    two = net.dnsmasq_conf('br-gpuaas', net.gateway_interface('10.100.0.1/24'), '/h', '/l', [], '/run/x.pid', '/o',
                           ['a', 'b'])
    assert sum(line.startswith('dhcp-mac=') for line in two.splitlines()) == 2 * MAX_SLOTS
    assert not any(line.startswith('dhcp-mac=') for line in net.dnsmasq_conf(
        'br-gpuaas', net.gateway_interface('10.100.0.1/24'), '/h', '/l', [], '/run/x.pid', '/o').splitlines())
    assert net.dhcp_host_line('52:54:00:00:00:01', '10.100.0.13', 'h') == '52:54:00:00:00:01,10.100.0.13,h\n'
    assert net.dhcp_mtu_line(Slot('gpu-node-01', 3), 1450) == 'tag:gpu-node-01-s3,option:mtu,1450\n'


@pytest.mark.parametrize('argv, conf', [
    ([b'/usr/sbin/dnsmasq', b'--keep-in-foreground', b'--conf-file=/etc/gpuaas/dnsmasq.conf'], '/etc/gpuaas/dnsmasq.conf'),
    ([b'dnsmasq', b'-C', b'/x.conf'], '/x.conf'),
    ([b'dnsmasq', b'-C/y.conf'], '/y.conf'),
    ([b'dnsmasq', b'--conf-file', b'/z.conf'], '/z.conf'),
    ([b'dnsmasq', b'--keep-in-foreground'], '/etc/dnsmasq.conf'),
    ([b'/usr/bin/python3', b'--conf-file=/x'], None),
])
def test_the_configuration_a_running_dnsmasq_reads(tmp_path, argv, conf):
    proc = tmp_path / 'proc' / '4243'
    proc.mkdir(parents=True)
    (proc / 'stat').write_text('4243 (dnsmasq) S 1 1')
    (proc / 'cmdline').write_bytes(b'\0'.join(argv) + b'\0')
    pid_file = tmp_path / 'dnsmasq.pid'
    assert net.dnsmasq_conf_file(str(pid_file), proc_root=str(tmp_path / 'proc')) is None   # no pid file
    pid_file.write_text('4243\n')
    assert net.dnsmasq_conf_file(str(pid_file), proc_root=str(tmp_path / 'proc')) == conf


class RecordingModule:
    """The two AnsibleModule methods the engine's runner calls, recording every command."""

    check_mode = False

    def __init__(self):
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return '/usr/bin/' + name

    def run_command(self, argv, environ_update=None, data=None, binary_data=False):
        self.calls.append((argv, environ_update, data))
        return (2, '', '') if 'br-exists' in argv else (0, '', '')   # no such bridge; nothing else fails


def test_open_vswitch_calls_carry_a_time_limit_and_run_in_the_c_locale():
    module = RecordingModule()
    run = net.runner(module)
    assert net.bridge_info(run, 'br-gpuaas') is None
    run(['ip', 'link', 'set', 'gs3-0a1b2c3d', 'up'])
    net.install_flows(run, 'br-gpuaas', 0x6770750000000003, ['cookie=0x6770750000000003 actions=drop'])
    argvs = [argv for argv, _env, _data in module.calls]
    ofctl = ['/usr/bin/ovs-ofctl', '--timeout=30', '-O', 'OpenFlow15', '--no-names']
    assert argvs[0] == ['/usr/bin/ovs-vsctl', '--timeout=30', 'br-exists', 'br-gpuaas']
    assert argvs[-3:] == [
        ['/usr/bin/ip', 'link', 'set', 'gs3-0a1b2c3d', 'up'],
        ofctl + ['del-flows', 'br-gpuaas', 'cookie=0x6770750000000003/-1'],
        ofctl + ['add-flows', 'br-gpuaas', '-'],
    ]
    assert all(env == {'LANG': 'C', 'LC_ALL': 'C'} for _argv, env, _data in module.calls)
    assert module.calls[-1][2] == b'cookie=0x6770750000000003 actions=drop\n'


def test_a_failed_command_is_a_network_error_naming_it():
    module = RecordingModule()
    module.run_command = lambda argv, **kwargs: (1, '', 'ovs-vsctl: no bridge named br-x\n')
    with pytest.raises(net.NetworkError, match=r'ovs-vsctl br-exists br-x failed \(exit 1\): ovs-vsctl: no bridge'):
        net.runner(module)(['ovs-vsctl', 'br-exists', 'br-x'])


def test_the_ruleset_forwards_slot_ssh_ports_through_the_maps_only_and_keeps_the_slots_files():
    text = net.nft_ruleset('gpuaas', 'br-gpuaas', net.gateway_interface('10.100.0.1/24'), 9110, True, None,
                           net.DEFAULT_BLOCKED, '198.51.100.1', '/etc/gpuaas/ssh.d/', (22000, 22244))
    lines = text.splitlines()
    assert '    iifname != "br-gpuaas" ip saddr != 10.100.0.0/24 ip daddr 198.51.100.1 tcp dport vmap @ssh_dnat' in lines
    # Looked up for new connections before everything towards the bridge is dropped.
    lookup = lines.index('    oifname "br-gpuaas" ct state new ip daddr vmap @ssh_forward')
    assert lines.index('    oifname "br-gpuaas" ct state established,related accept') < lookup
    assert lookup < lines.index('    oifname "br-gpuaas" drop')
    # The slot's answers pass before the private networks are blocked; nothing else from it does.
    reply = lines.index('    iifname "br-gpuaas" ct direction reply ct status dnat ct state established accept')
    assert reply < lines.index('    iifname "br-gpuaas" ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, '
                               '169.254.0.0/16, 100.64.0.0/10 } drop')
    # Ports no slot has answer nothing (no reset from the host).
    assert lines.index('    iifname != "br-gpuaas" ip daddr 198.51.100.1 tcp dport 22000-22244 drop') < lines.index(
        '  chain forward {')
    assert lines[-1] == 'include "/etc/gpuaas/ssh.d/*.nft"'
    anywhere = net.nft_ruleset('gpuaas', 'br-gpuaas', net.gateway_interface('10.100.0.1/24'), 9110, True, None, [])
    assert 'fib daddr type local tcp dport vmap @ssh_dnat' in anywhere and 'include' not in anywhere


@pytest.mark.parametrize('value', ['x', '198.51.100.1/32', '0.0.0.0', '127.0.0.1', '224.0.0.1', '2001:db8::1',
                                   '198.51.100.1\n', '198.51.100.1; flush ruleset'])
def test_a_public_address_that_is_not_one_is_refused(value):
    with pytest.raises(net.NetworkError, match='ssh_public_address'):
        net.check_address(value, 'ssh_public_address')
