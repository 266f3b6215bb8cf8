# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each slot's SSH port on the node's public address, with real packets through nftables and
Open vSwitch: a client outside the node reaches slot i on ``base + i``, and nothing else.

The node is a namespace of its own (env.Host) with its public address 198.51.100.1 on a veth into
the client's namespace (env.Outside, 198.51.100.2). Slots are namespaces on the bridge (as in
test_slot_network) where a TCP server on port 22 stands in for the guest's sshd: it answers every
connection with the slot's id and the address the connection came from, and a second server on
port 80 is what must stay out of reach. slot_network adds each slot's rules; host_network builds
the table, with the public address, the include of the slots' files and the dropped range.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot
from tests.functional.network import env

pytestmark = pytest.mark.slow

NODE = 'sshnode'
BRIDGE = 'br-gpuaas-s'
PUBLIC = env.UPLINK_HOST
BASE = 22000
SLOTS = [0, 1, 2]
# Answers every connection with 'slot {slot_id} {client address}' (the guest's sshd stands in).
SERVER = ('import socket, sys\n'
          's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n'
          's.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(8)\n'
          'while True:\n'
          '    c, a = s.accept()\n'
          '    c.sendall(("slot %s %s\\n" % (sys.argv[1], a[0])).encode()); c.close()\n')
CLIENT = ('import socket, sys\n'
          'try:\n'
          '    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n'
          '    c.settimeout(float(sys.argv[3])); print(c.recv(200).decode().strip())\n'
          'except socket.timeout:\n'
          '    print("timeout")\n'
          'except OSError as exc:\n'
          '    print("error %s" % exc.errno)\n')


def connect(ns, address, port, timeout=2):
    """What a TCP client in ``ns`` gets: the server's line, 'timeout' (nothing answered) or 'error N'."""
    return env.sh(sys.executable, '-c', CLIENT, address, str(port), str(timeout), ns=ns).stdout.strip()


def slot_args(ssh, index, **extra):
    ns = ssh['slots'][index]
    args = dict(slot_id=Slot(NODE, index).slot_id, bridge=BRIDGE, hosts_dir=ssh['hosts'], hostname='ssh-%d' % index,
                dnsmasq_pid_file=os.path.join(ssh['dir'], 'none.pid'), ssh_dir=ssh['ssh_dir'], port=ns.port,
                port_type='existing', ssh_port_base=BASE)
    args.update(extra)
    return args


def ssh_chains(host):
    listed = json.loads(host.sh('nft', '-j', 'list', 'table', 'inet', 'gpuaas').stdout)['nftables']
    return sorted(item['chain']['name'] for item in listed if 'chain' in item and item['chain']['name'].startswith('ssh_'))


@pytest.fixture(scope='module')
def ssh():
    work = tempfile.mkdtemp(prefix='gpuaas-sshtest-')
    os.chmod(work, 0o755)
    try:
        host = env.Host(work, tag='k').__enter__()
    except env.EnvironmentMissing as exc:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(str(exc))
    pid = os.getpid()
    state = {'host': host, 'dir': work, 'hosts': os.path.join(work, 'hosts'), 'ssh_dir': os.path.join(work, 'ssh.d'),
             'slots': {}, 'peers': [], 'servers': []}
    state['host_args'] = dict(bridge=BRIDGE, datapath_type='netdev', dnsmasq_conf=os.path.join(work, 'dnsmasq.conf'),
                              hosts_dir=state['hosts'], opts_dir=os.path.join(work, 'opts'), lease_file=os.path.join(work, 'leases'),
                              nft_file=os.path.join(work, 'gpuaas.nft'), pid_file=os.path.join(work, 'dnsmasq.pid'),
                              ssh_dir=state['ssh_dir'], ssh_public_address=PUBLIC, ssh_port_base=BASE)
    try:
        state['client'] = env.Outside(host, 'gpuaas-c%d' % pid)
        state['peers'].append(state['client'])
        # The client knows the way to the slot network too: only the rules keep it out.
        env.sh('ip', 'route', 'add', '10.100.0.0/24', 'via', PUBLIC, ns=state['client'].ns)
        made = host.module('host_network', state['host_args'])
        assert made['changed'] and not made.get('failed'), made
        for index in SLOTS:
            slot = Slot(NODE, index)
            ns = env.SlotNamespace(host, 'gpuaas-k%d-%d' % (index, pid), slot.mac, 'gtk%d' % index, work)
            state['slots'][index] = ns
            state['peers'].append(ns)
            ns.set_address(slot.ip)
            for port in (22, 80):
                state['servers'].append(subprocess.Popen(
                    ['ip', 'netns', 'exec', ns.ns, sys.executable, '-c', SERVER, slot.slot_id, str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Slot 2 answers only a network the client is not on.
        state['wired'] = dict((index, host.module('slot_network', slot_args(
            state, index, ssh_source_cidrs=['192.0.2.0/24'] if index == 2 else []))) for index in SLOTS)
        env.wait_for(lambda: connect(state['slots'][0].ns, Slot(NODE, 0).ip, 22).startswith('slot '), 10,
                     'the stand-in sshd to listen')
        yield state
    finally:
        for server in state['servers']:
            server.kill()
            server.wait()
        for peer in state['peers']:
            peer.close()
        host.module('host_network', dict(state['host_args'], state='absent'))
        host.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def test_slot_network_reports_each_slots_port(ssh):
    for index in SLOTS:
        result = ssh['wired'][index]
        assert result['changed'] and not result.get('failed'), result
        assert result['ssh_port'] == BASE + index == Slot(NODE, index).ssh_port(BASE)
    assert ssh['wired'][0]['ssh_source_cidrs'] == ['0.0.0.0/0']
    assert ssh['wired'][2]['ssh_source_cidrs'] == ['192.0.2.0/24']
    assert sorted(os.listdir(ssh['ssh_dir'])) == ['%s.nft' % Slot(NODE, index).slot_id for index in SLOTS]


def test_each_port_lands_in_its_own_slot_and_the_slot_sees_the_client(ssh):
    client = ssh['client'].ns
    for index in (0, 1):
        assert connect(client, PUBLIC, BASE + index) == 'slot %s %s' % (Slot(NODE, index).slot_id, env.UPLINK_OUTSIDE)


def test_nothing_but_port_22_of_the_slot_is_open(ssh):
    client = ssh['client'].ns
    slot0 = Slot(NODE, 0)
    # The slot's other ports, and its port 22 asked directly (not through the public port): dropped.
    assert connect(client, slot0.ip, 80) == 'timeout'
    assert connect(client, slot0.ip, 22) == 'timeout'
    # The public port of a slot that has none, and the public address's other ports in the range.
    assert connect(client, PUBLIC, BASE + 5) == 'timeout'
    assert connect(client, PUBLIC, BASE + 244) == 'timeout'


def test_a_source_the_slot_does_not_allow_gets_nothing_until_it_is_allowed(ssh):
    client, host = ssh['client'].ns, ssh['host']
    assert connect(client, PUBLIC, BASE + 2) == 'timeout'
    allowed = host.module('slot_network', slot_args(ssh, 2, ssh_source_cidrs=['198.51.100.0/24', '192.0.2.0/24']),
                          diff=True)
    assert allowed['changed'] and allowed['ssh_source_cidrs'] == ['192.0.2.0/24', '198.51.100.0/24'], allowed
    assert connect(client, PUBLIC, BASE + 2) == 'slot %s %s' % (Slot(NODE, 2).slot_id, env.UPLINK_OUTSIDE)
    again = host.module('slot_network', slot_args(ssh, 2, ssh_source_cidrs=['198.51.100.0/24', '192.0.2.0/24']))
    assert not again['changed'], again


def test_a_slot_cannot_use_the_public_ports_to_reach_another(ssh):
    slot1 = ssh['slots'][1].ns
    assert connect(slot1, PUBLIC, BASE) == 'timeout'
    assert connect(slot1, Slot(NODE, 0).ip, 22) == 'timeout'


def test_rebuilding_the_table_keeps_every_slots_port(ssh):
    host, client = ssh['host'], ssh['client'].ns
    rebuilt = host.module('host_network', dict(ssh['host_args'], blocked_networks=['10.0.0.0/8']))
    assert rebuilt['changed'], rebuilt
    assert connect(client, PUBLIC, BASE) == 'slot %s %s' % (Slot(NODE, 0).slot_id, env.UPLINK_OUTSIDE)
    assert not host.module('slot_network', slot_args(ssh, 0))['changed']
    assert host.module('host_network', ssh['host_args'])['changed']
    assert not host.module('host_network', ssh['host_args'])['changed']


@pytest.mark.parametrize('extra, message', [
    ({'ssh_source_cidrs': ['0.0.0.0/0; flush ruleset']}, "ssh_source_cidrs[0] '0.0.0.0/0; flush ruleset' is not an IPv4 network"),
    ({'ssh_source_cidrs': ['2001:db8::/32']}, 'is IPv6'),
    ({'ssh_source_cidrs': ['198.51.100.2/24']}, 'has host bits set'),
    ({'ssh_port_base': 65400}, 'ssh_port_base must be a whole number from 1024 to 65290'),
    ({'nft_table': 'gpuaas; flush ruleset'}, "nft_table 'gpuaas; flush ruleset' is not a valid nftables table name"),
])
def test_hostile_input_changes_nothing(ssh, extra, message):
    host = ssh['host']
    before = (host.sh('nft', 'list', 'ruleset').stdout, sorted(os.listdir(ssh['ssh_dir'])))
    result = host.module('slot_network', slot_args(ssh, 0, **extra))
    assert result.get('failed') and message in result['msg'], result
    assert (host.sh('nft', 'list', 'ruleset').stdout, sorted(os.listdir(ssh['ssh_dir']))) == before


def test_another_node_on_the_same_port_is_refused(ssh):
    host = ssh['host']
    other = Slot('othernode', 5)   # its own OpenFlow port and address, the same public port
    ns = env.SlotNamespace(host, 'gpuaas-ko%d' % os.getpid(), other.mac, 'gtko', ssh['dir'])
    ssh['peers'].append(ns)
    result = host.module('slot_network', dict(slot_args(ssh, 0), slot_id=other.slot_id, port='gtko',
                                              ssh_port_base=BASE - 5))
    assert result.get('failed') and 'public port %d is forwarded by ssh_dnat_%s already' % (
        BASE, Slot(NODE, 0).slot_id) in result['msg'], result
    assert host.sh('ovs-vsctl', 'port-to-br', 'gtko', check=False).returncode != 0


def test_release_closes_exactly_that_slots_port(ssh):
    """Runs last: slot 1 goes; its port answers nothing, slot 0's still lands in slot 0."""
    host, client = ssh['host'], ssh['client'].ns
    args = slot_args(ssh, 1, state='absent')
    before = host.sh('nft', 'list', 'ruleset').stdout
    planned = host.module('slot_network', args, check_mode=True)
    assert planned['changed'] and 'ssh port %d closed' % (BASE + 1) in planned['changes'], planned
    assert host.sh('nft', 'list', 'ruleset').stdout == before
    gone = host.module('slot_network', args)
    assert gone['changed'], gone
    assert connect(client, PUBLIC, BASE + 1) == 'timeout'
    assert connect(client, PUBLIC, BASE) == 'slot %s %s' % (Slot(NODE, 0).slot_id, env.UPLINK_OUTSIDE)
    slot0, slot2 = Slot(NODE, 0).slot_id, Slot(NODE, 2).slot_id
    assert ssh_chains(host) == ['ssh_dnat_' + slot0, 'ssh_dnat_' + slot2, 'ssh_fwd_' + slot0, 'ssh_fwd_' + slot2]
    assert sorted(os.listdir(ssh['ssh_dir'])) == [slot0 + '.nft', slot2 + '.nft']
    assert not host.module('slot_network', args)['changed']
