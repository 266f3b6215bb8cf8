# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The overlay across two nodes with the guests' own packets.

Two nodes, each a network namespace with its own Open vSwitch (env.Host: its own ovsdb-server
and ovs-vswitchd, run and database directories, the userspace datapath, which carries VXLAN
itself: neither the openvswitch nor the vxlan kernel module is needed). An "underlay" veth joins
them: each end is the port of an underlay bridge whose internal port holds the node's underlay
address (192.0.2.1 and 192.0.2.2), the route Open vSwitch's tunnels take. Slots are namespaces
on veths with their slots' MACs and addresses: tenant A has slot 0 on node 1 and slot 1 on node
2, tenant B slot 3 on node 1 and slot 2 on node 2 (distinct indices, as reservation places
them). Every flow and the tunnel port come from the project's modules (slot_lease with the
control plane's plan, slot_network, tenant_network); nothing here writes a flow.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot, tenant_cookie
from tests.conftest import REPO
from tests.functional.network import env

pytestmark = pytest.mark.slow

BRIDGE = 'br-gpuaas-o'
UNDERLAY = {1: '192.0.2.1', 2: '192.0.2.2'}
VNI = {'tenant-a': 5001, 'tenant-b': 5002}
# (node, index) -> tenant
SLOTS = {(1, 0): 'tenant-a', (2, 1): 'tenant-a', (1, 3): 'tenant-b', (2, 2): 'tenant-b'}

# VXLAN frames (UDP to 4789) arriving on ``ul0``: VNI, inner source and destination IPv4 (or ARP
# sender and target).
CAPTURE = env.CAPTURE_LOOP + """
    ihl = (frame[14] & 15) * 4
    if frame[14 + 9] != 17:
        continue
    udp = frame[14 + ihl:]
    if struct.unpack('!H', udp[2:4])[0] != 4789:
        continue
    vni = struct.unpack('!I', udp[8 + 4:8 + 8])[0] >> 8
    inner = udp[16:]
    kind = inner[12:14]
    if kind == b'\\x08\\x00':
        src, dst = socket.inet_ntoa(inner[26:30]), socket.inet_ntoa(inner[30:34])
        print(vni, 'ip', src, dst, flush=True)
    elif kind == b'\\x08\\x06':
        print(vni, 'arp', socket.inet_ntoa(inner[28:32]), socket.inet_ntoa(inner[38:42]), flush=True)
"""


class Capture(env.Capture):
    """What arrives on the node's underlay port: (vni, 'ip' or 'arp', source, destination) per frame."""

    def __init__(self, host, seconds):
        env.Capture.__init__(self, host.ns, seconds, CAPTURE, 'ul0')

    def frames(self):
        return [(int(line[0]),) + line[1:] for line in self.replies()]


def node_id(node):
    return 'ovl%d' % node


def slot(node, index):
    return Slot(node_id(node), index)


def plan(tenant, node):
    other = 2 if node == 1 else 1
    return dict(tenant=tenant, vni=VNI[tenant], mtu=1450,
                peers=[dict(node_id=node_id(other), underlay_ip=UNDERLAY[other])])


@pytest.fixture(scope='module')
def overlay():
    work = tempfile.mkdtemp(prefix='gpuaas-overlaytest-')
    os.chmod(work, 0o755)
    hosts, peers = {}, []
    try:
        try:
            for node in (1, 2):
                hosts[node] = env.Host(os.path.join(work, 'n%d' % node), tag='o%d' % node)
                os.makedirs(hosts[node].work)
                hosts[node].__enter__()
        except env.EnvironmentMissing as exc:
            pytest.skip(str(exc))
        # The underlay: a veth between the two nodes, each end on an underlay bridge that holds
        # the node's underlay address (the userspace datapath's tunnels route through it).
        hosts[1].sh('ip', 'link', 'add', 'ul0', 'type', 'veth', 'peer', 'name', 'ul0', 'netns', hosts[2].ns)
        for node, host in hosts.items():
            host.sh('ovs-vsctl', 'add-br', 'br-ul', '--', 'set', 'bridge', 'br-ul', 'datapath_type=netdev',
                    '--', 'add-port', 'br-ul', 'ul0')
            host.sh('ethtool', '-K', 'ul0', 'tx', 'off', check=False)
            host.sh('ip', 'link', 'set', 'ul0', 'up')
            host.sh('ip', 'addr', 'add', '%s/24' % UNDERLAY[node], 'dev', 'br-ul')
            host.sh('ip', 'link', 'set', 'br-ul', 'up')
        state = {'hosts': hosts, 'slots': {}, 'work': work}
        for node, host in hosts.items():
            base = host.work
            args = dict(bridge=BRIDGE, datapath_type='netdev', dnsmasq_conf=os.path.join(base, 'dnsmasq.conf'),
                        hosts_dir=os.path.join(base, 'hosts'), opts_dir=os.path.join(base, 'opts'),
                        lease_file=os.path.join(base, 'dnsmasq.leases'), nft_file=os.path.join(base, 'gpuaas.nft'),
                        pid_file=os.path.join(base, 'dnsmasq.pid'), ssh_dir=os.path.join(base, 'ssh.d'),
                        node_id=node_id(node))
            made = host.module('host_network', args)
            assert made['changed'] and not made.get('failed'), made
            os.makedirs(os.path.join(base, 'leases'))
            for (where, index), tenant in sorted(SLOTS.items()):
                if where != node:
                    continue
                ns = env.SlotNamespace(host, 'gpuaas-o%d-%d-%d' % (node, index, os.getpid()), slot(node, index).mac,
                                       'gon%d' % index, base)
                peers.append(ns)
                state['slots'][(node, index)] = ns
                leased = host.module('slot_lease', dict(
                    slot_id=slot(node, index).slot_id, allocation_id='alloc-%d-%d' % (node, index),
                    lease_dir=os.path.join(base, 'leases'), phase='running',
                    data=dict(tenant=tenant, network=plan(tenant, node))))
                assert not leased.get('failed'), leased
                wired = host.module('slot_network', dict(
                    slot_id=slot(node, index).slot_id, bridge=BRIDGE, hosts_dir=args['hosts_dir'],
                    hostname='o-%d-%d' % (node, index), dnsmasq_pid_file=args['pid_file'], ssh_dir=args['ssh_dir'],
                    lease_dir=os.path.join(base, 'leases'), port=ns.port, port_type='existing',
                    opts_dir=args['opts_dir']))
                assert wired['changed'] and not wired.get('failed'), wired
                ns.set_address(slot(node, index).ip)
            # The node's tenant flows and tunnel port as reconcile makes them: nothing left to do.
            again = host.module('tenant_network', dict(node_id=node_id(node), bridge=BRIDGE,
                                                       lease_dir=os.path.join(base, 'leases')))
            assert not again.get('failed') and not again['changed'], again
            assert 'gpuaas-vxlan' in host.ports(BRIDGE)
        yield state
    finally:
        for ns in peers:
            ns.close()
        for host in hosts.values():
            host.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def ping(overlay, frm, to, count=2):
    return overlay['slots'][frm].ping(slot(to[0], to[1]).ip, count=count)


def test_a_tenants_slots_on_two_nodes_reach_each_other_over_vxlan_in_its_vni(overlay):
    # The first packets resolve the underlay neighbour and the guests' ARP; then the pings.
    for _attempt in range(3):
        if ping(overlay, (1, 0), (2, 1)):
            break
        time.sleep(1)
    capture = Capture(overlay['hosts'][2], 4)
    assert ping(overlay, (1, 0), (2, 1), count=3)
    frames = capture.frames()
    a0, a1 = slot(1, 0).ip, slot(2, 1).ip
    # Node 2 received the guest's own ICMP from node 1, inside VXLAN in tenant A's VNI, and nothing else.
    assert (VNI['tenant-a'], 'ip', a0, a1) in frames, frames
    assert {frame[0] for frame in frames} == {VNI['tenant-a']}, frames
    assert ping(overlay, (2, 1), (1, 0))
    # Tenant B's slots reach each other in B's VNI.
    assert ping(overlay, (1, 3), (2, 2), count=3) or ping(overlay, (1, 3), (2, 2), count=3)


def test_another_tenants_slot_gets_nothing_across(overlay):
    capture = Capture(overlay['hosts'][1], 4)
    assert not ping(overlay, (2, 2), (1, 0))   # B on node 2 -> A on node 1
    frames = capture.frames()
    # What B's slot sent crossed in B's VNI only; node 1 delivered none of it to A's slot.
    sent = [frame for frame in frames if frame[2] == slot(2, 2).ip]
    assert sent and all(frame[0] == VNI['tenant-b'] for frame in sent), frames
    assert not ping(overlay, (1, 0), (2, 2))   # and A -> B
    host = overlay['hosts'][1]
    # From the tunnel, node 1 delivers to tenant A's slot only frames in A's VNI from node 2.
    tunnel_in = [flow for flow in host.flows(BRIDGE, tenant_cookie('tenant-a')) if 'in_port=99' in flow]
    assert tunnel_in and all('tun_id=%#x,tun_src=%s' % (VNI['tenant-a'], UNDERLAY[2]) in flow
                             for flow in tunnel_in), tunnel_in


def test_a_frame_spoofing_a_tenants_address_from_another_port_does_not_arrive(overlay):
    b2 = overlay['slots'][(2, 2)]
    try:
        capture = Capture(overlay['hosts'][1], 5)
        b2.set_address(slot(2, 1).ip)                                # B claims A's slot 1 address
        assert not b2.ping(slot(1, 0).ip)
        b2.set_address(slot(2, 1).ip, mac=slot(2, 1).mac)            # and its MAC too
        assert not b2.ping(slot(1, 0).ip)
        frames = capture.frames()
        # Nothing in tenant A's VNI crossed: node 2 dropped the spoofed frames at B's port.
        assert [frame for frame in frames if frame[0] == VNI['tenant-a']] == [], frames
    finally:
        b2.set_address(slot(2, 2).ip, mac=slot(2, 2).mac)
    assert ping(overlay, (2, 1), (1, 0))


def network_playbook(overlay, node, network):
    """The collection's network.yml on the node (in its namespace, as the control plane's network
    job runs it), with the tenant's plan; ansible-playbook's return code and output."""
    host = overlay['hosts'][node]
    extravars = dict(gpuaas_hosts='localhost', gpuaas_node_id=node_id(node), gpuaas_bridge=BRIDGE,
                     gpuaas_lease_dir=os.path.join(host.work, 'leases'), gpuaas_network=network,
                     ansible_python_interpreter=sys.executable)
    environ = dict(host.env, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'),
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'))
    proc = env.sh(os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                  '-e', json.dumps(extravars), os.path.join(REPO, 'playbooks', 'network.yml'), check=False,
                  ns=host.ns, env=environ, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_control_plane_s_network_job_takes_a_peer_away_and_gives_it_back(overlay):
    """Node 1 learns that tenant A left node 2 (peers: none), then that it came back: its slot
    stops and starts reaching A's slot on node 2, no slot wired again."""
    alone = dict(plan('tenant-a', 1), peers=[])
    rc, out = network_playbook(overlay, 1, alone)
    assert rc == 0 and 'changed=1' in out, out
    assert not ping(overlay, (1, 0), (2, 1))
    assert ping(overlay, (1, 3), (2, 2), count=3)   # tenant B's overlay untouched
    rc, out = network_playbook(overlay, 1, plan('tenant-a', 1))
    assert rc == 0 and 'changed=1' in out, out
    assert ping(overlay, (1, 0), (2, 1), count=3)
    rc, out = network_playbook(overlay, 1, plan('tenant-a', 1))
    assert rc == 0 and 'changed=0' in out, out
