# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A crash at any step of allocate or release, then reconcile: the VF VLANs and the subnet
manager's partitions match the live leases exactly.

The steps are the roles' (roles/slot_allocate, roles/slot_release), each the real module run
as the role runs it, in the role's order, against the kernel model (tests/sysfs: the VFs'
VLAN, spoof checking and trust as ``ip`` sets and shows them) and a partitions.conf, which the
OpenSM grammar reader of the fabric_partition tests reads. A crash after step k is steps 1..k
done and nothing else; reconcile is the reconcile role's two fabric tasks (fabric_vlan
state=reconciled on the node, fabric_partition state=converged with what it returned). The
steps that change no fabric state (the token, the slot's network and flows, the disk, the
wipe) are crash points all the same: what matters is the lease each one leaves behind.

Every node runs with a live slot of another tenant, and partitions.conf holds another node's
GUID: reconcile must leave both as they are. The last tests run the reconcile role itself
(ansible-playbook, as AWX runs it) on an InfiniBand node, whose VFs need no ``ip``.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _subnet_manager as sm
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids
from ansible_collections.gpuaas.slice.plugins.modules import fabric_partition, fabric_vlan, slot_lease, sriov_vfs
from tests.integrity.opensm import opensm_parser, opensm_required  # noqa: F401 (fixtures) pylint: disable=unused-import
from tests.integrity.playbooks import Node as PlaybookNode
from tests.sysfs import kernel_fixture
from tests.unit.module_runner import run_module
from tests.unit.plugins.modules.test_fabric_partition import opensm_grammar

kernel = kernel_fixture.kernel  # the fixture

OTHER_NODE_GUID = '0x' + vf_guids('gpu-node-09', '0000:1a:00.0', 0)[1].replace(':', '')
ACME = {'tenant': 'acme', 'vni': 5001, 'mtu': 1450, 'peers': [], 'pkey': '0x8100', 'vlan': 101}
GLOBEX = {'tenant': 'globex', 'vni': 5002, 'mtu': 1450, 'peers': [], 'pkey': '0x8101', 'vlan': 102}
FABRICS = {
    # host, node, fabric PF, its netdev (Ethernet only)
    'roce': ('workstation', 'ws-01', '0000:03:00.0', 'enp3s0f0np0'),
    'infiniband': ('gpu_box', 'gpu-box', '0000:5e:00.0', None),
}


class Node:
    """One node on the kernel model, its leases and the subnet manager's partitions.conf."""

    def __init__(self, host, node_id, pf, netdev, tmp_path, capsys, opensm=None):
        self.host, self.node_id, self.netdev, self.capsys, self.opensm = host, node_id, netdev, capsys, opensm
        made = run_module(sriov_vfs, dict(host.args, address=pf, num_vfs=3, node_id=node_id), capsys=capsys)
        self.vfs = made['vf_addresses']
        self.lease_dir = str(tmp_path / 'leases')
        self.conf = str(tmp_path / 'partitions.conf')
        # The approved map: slot i has VF i.
        self.slots = [{'slot_id': self.slot(i), 'capacity_metadata': {'fabric_vf_pci_address': vf}}
                      for i, vf in enumerate(self.vfs)]

    def slot(self, index):
        return '%s-s%d' % (self.node_id, index)

    def call(self, module, check_mode=False, **args):
        result = run_module(module, args, check_mode=check_mode, diff=True, capsys=self.capsys)
        assert not result.get('failed'), result.get('msg')
        return result

    # -- the roles' steps ------------------------------------------------------------------

    def lease(self, index, allocation, phase='provisioning', network=None):
        data = {'tenant': network['tenant'], 'network': network, 'passthrough': True,
                'fabric_vf_pci_address': self.vfs[index]}
        return self.call(slot_lease, slot_id=self.slot(index), allocation_id=allocation, phase=phase,
                         lease_dir=self.lease_dir, data=data)

    def phase(self, index, allocation, phase):
        return self.call(slot_lease, slot_id=self.slot(index), allocation_id=allocation, phase=phase,
                         lease_dir=self.lease_dir)

    def free(self, index, allocation):
        return self.call(slot_lease, slot_id=self.slot(index), allocation_id=allocation, state='absent',
                         lease_dir=self.lease_dir)

    def vlan(self, index, vlan):
        return self.call(fabric_vlan, vf_address=self.vfs[index], vlan=vlan, node_id=self.node_id, **self.host.args)

    def partition(self, index, network=None):
        if self.netdev:   # Ethernet: the roles skip the subnet manager
            return None
        if network is None:
            return self.call(fabric_partition, port_guid=self.guid(index), state='absent', conf=self.conf,
                             reload=[])
        return self.call(fabric_partition, port_guid=self.guid(index), tenant=network['tenant'], pkey=network['pkey'],
                         conf=self.conf, reload=[])

    # -- reconcile (roles/slot_reconcile's fabric tasks) -----------------------------------

    def reconcile(self, check_mode=False):
        vlans = self.call(fabric_vlan, state='reconciled', node_id=self.node_id, lease_dir=self.lease_dir,
                          slots=self.slots, check_mode=check_mode, **self.host.args)
        partitions = None
        if vlans['port_guids']:
            partitions = self.call(fabric_partition, state='converged', port_guids=vlans['port_guids'],
                                   members=vlans['members'], conf=self.conf, reload=[],
                                   check_mode=check_mode)
        return vlans, partitions

    # -- what is there -----------------------------------------------------------------------

    def kernel_vlans(self):
        """{VF index: (vlan, spoofchk, trust)} as ``ip -j -d link show`` reports them."""
        if self.netdev is None:
            return {}
        rc, out, _err = self.host.tools.run_command(['/usr/sbin/ip', '-j', '-d', 'link', 'show', 'dev', self.netdev])
        assert rc == 0
        return dict((entry['vf'], ((entry['vlan_list'][0] or {}).get('vlan', 0), entry['spoofchk'], entry['trust']))
                    for entry in json.loads(out)[0]['vfinfo_list'])

    def partitions(self):
        """{pkey: {port: membership}} of the tenant partitions, as OpenSM's grammar reads the file
        and, where it is installed, as OpenSM's own parser builds them."""
        with open(self.conf) as handle:
            found = opensm_grammar(handle.read())
        assert found.pop(0x7fff) == {'ALL': 'limited', 'SELF': 'full'}
        if self.opensm:
            ports = set(guid for members in found.values() for guid in members)
            built = self.opensm(self.conf, ports)
            assert built.pop(0x7fff) == dict((guid, 'limited') for guid in ports)   # ALL=limited
            assert built == found
        return found

    def guid(self, index):
        return '0x' + vf_guids(self.node_id, '0000:5e:00.0', index)[1].replace(':', '')

    def expected(self, live):
        """(kernel VLANs, tenant partitions) exactly as the live leases ({index: network}) say."""
        partitions = {0x0200: {OTHER_NODE_GUID: 'full'}}
        if self.netdev:
            return dict((i, (live[i]['vlan'] if i in live else 0, True, False)) for i in range(len(self.vfs))), partitions
        for index, network in live.items():
            partitions.setdefault(int(network['pkey'], 16) & 0x7fff, {})[self.guid(index)] = 'full'
        return {}, partitions


@pytest.fixture(params=sorted(FABRICS))
def node(request, kernel, tmp_path, capsys, opensm_parser):
    name, node_id, pf, netdev = FABRICS[request.param]
    made = Node(kernel(name), node_id, pf, netdev, tmp_path, capsys, opensm_parser)
    # Another node's GUID, in a partition of its own tenant: no reconcile here may touch it.
    made.call(fabric_partition, port_guid=OTHER_NODE_GUID, tenant='initech', pkey='0x0200', conf=made.conf,
              reload=[])
    # Slot 0: globex's, allocated and running.
    made.lease(0, 'alloc-g', network=GLOBEX)
    made.vlan(0, GLOBEX['vlan'])
    made.partition(0, GLOBEX)
    assert_matches(made, {0: GLOBEX})
    made.phase(0, 'alloc-g', 'running')
    return made


# Allocate slot 1 to acme, in roles/slot_allocate's order; each step (what it does to the node).
ALLOCATE = [
    ('lease taken (provisioning)', lambda n: n.lease(1, 'alloc-a', network=ACME)),
    ('telemetry token', lambda n: None),
    ('VLAN set (RoCE) / port GUID read (InfiniBand)', lambda n: n.vlan(1, ACME['vlan'])),
    ('partition added', lambda n: n.partition(1, ACME)),
    ('network, flows, disk, seed, vfio-pci', lambda n: None),
    ('VM started, lease running', lambda n: n.phase(1, 'alloc-a', 'running')),
]
# Release slot 0 (globex), in roles/slot_release's order.
RELEASE = [
    ('lease read', lambda n: None),
    ('VLAN reset (RoCE) / port GUID read (InfiniBand)', lambda n: n.vlan(0, 0)),
    ('partition removed', lambda n: n.partition(0)),
    ('VM and network removed, lease releasing', lambda n: n.phase(0, 'alloc-g', 'releasing')),
    ('GPU reset and wipe, lease wiping', lambda n: n.phase(0, 'alloc-g', 'wiping')),
    ('lease freed', lambda n: n.free(0, 'alloc-g')),
]


def crash_after(node, steps, done):
    for _what, step in steps[:done]:
        step(node)


def assert_matches(node, live):
    vlans, partitions = node.expected(live)
    assert node.kernel_vlans() == vlans
    assert node.partitions() == partitions


def reconcile_and_check(node, live):
    """Check mode changes nothing; reconcile makes the node match ``live``; again, nothing to do."""
    before = (node.kernel_vlans(), open(node.conf).read())
    node.reconcile(check_mode=True)
    assert (node.kernel_vlans(), open(node.conf).read()) == before
    node.reconcile()
    assert_matches(node, live)
    vlans, partitions = node.reconcile()
    assert vlans['changed'] is False and (partitions is None or partitions['changed'] is False)


@pytest.mark.parametrize('done', range(len(ALLOCATE) + 1), ids=['nothing'] + [what for what, _s in ALLOCATE])
def test_allocate_crashes_after_each_step_and_reconcile_matches_the_live_leases(node, done):
    crash_after(node, ALLOCATE, done)
    # From the moment its lease is taken, acme's slot 1 is live: reconcile gives it its segment.
    live = {0: GLOBEX}
    if done >= 1:
        live[1] = ACME
    reconcile_and_check(node, live)
    # The allocation re-run after reconcile completes it, and agrees with what reconcile did.
    crash_after(node, ALLOCATE, len(ALLOCATE))
    assert_matches(node, {0: GLOBEX, 1: ACME})


@pytest.mark.parametrize('done', range(len(RELEASE) + 1), ids=['nothing'] + [what for what, _s in RELEASE])
def test_release_crashes_after_each_step_and_reconcile_matches_the_live_leases(node, done):
    crash_after(node, RELEASE, done)
    # Until the release moves the lease out of running, the slot is still globex's.
    live = {0: GLOBEX} if done < 4 else {}
    reconcile_and_check(node, live)


def test_reconcile_reports_each_difference_by_slot(node):
    """What reconcile found on each slot and what it set, in its results."""
    node.lease(1, 'alloc-a', network=ACME)      # crashed right after the lease
    node.phase(0, 'alloc-g', 'releasing')        # and a release crashed after its lease moved on
    vlans, partitions = node.reconcile(check_mode=True)
    if node.netdev:
        assert vlans['vlans'] == [
            {'slot_id': node.slot(0), 'vf_address': node.vfs[0], 'found': {'vlan': 102, 'spoofchk': True, 'trust': False},
             'set': {'vlan': 0, 'spoofchk': True, 'trust': False}},
            {'slot_id': node.slot(1), 'vf_address': node.vfs[1], 'found': {'vlan': 0, 'spoofchk': True, 'trust': False},
             'set': {'vlan': 101, 'spoofchk': True, 'trust': False}}]
        assert partitions is None
    else:
        assert vlans['vlans'] == [] and vlans['guid_slots'] == dict((node.guid(i), node.slot(i)) for i in range(3))
        assert partitions['changes'] == [{'port_guid': g, 'found': f, 'set': s} for g, f, s in sorted([
            (node.guid(0), ['0x0101'], []), (node.guid(1), [], ['0x0100'])])]


def test_the_reconcile_role_converges_partitions_and_refuses_a_file_it_did_not_write(kernel, tmp_path, capsys,
                                                                                     opensm_parser):
    host = kernel('gpu_box')
    fabric = Node(host, 'gpu-box', '0000:5e:00.0', None, tmp_path, capsys, opensm_parser)
    node = PlaybookNode(tmp_path / 'node', 'gpu-box', sys_root=host.sys, proc_root=host.proc)
    fabric.lease_dir = node.dirs['leases']
    fabric.call(fabric_partition, port_guid=OTHER_NODE_GUID, tenant='initech', pkey='0x0200', conf=fabric.conf,
                reload=[])
    # Slot 0's VF is still in globex's partition without a lease (a release whose partition step
    # failed, then freed by force); slot 1's allocation crashed right after its lease was taken.
    fabric.partition(0, GLOBEX)
    fabric.lease(1, 'alloc-a', network=ACME)
    run = dict(gpuaas_bridge='', gpuaas_approved_slots=fabric.slots, gpuaas_sm_host='localhost',
               gpuaas_sm_partitions_conf=fabric.conf, gpuaas_sm_reload=[])

    rc, out, _stats = node.run('reconcile.yml', check=True, **run)
    assert rc == 0, out[-3000:]
    assert fabric.partitions() == {0x0200: {OTHER_NODE_GUID: 'full'}, 0x0101: {fabric.guid(0): 'full'}}

    rc, out, stats = node.run('reconcile.yml', **run)
    assert rc == 0, out[-3000:]
    assert fabric.partitions() == {0x0200: {OTHER_NODE_GUID: 'full'}, 0x0100: {fabric.guid(1): 'full'}}
    found = stats['localhost']['gpuaas_reconcile']
    assert found['partition_changes'] == sorted([
        {'port_guid': fabric.guid(0), 'found': ['0x0101'], 'set': []},
        {'port_guid': fabric.guid(1), 'found': [], 'set': ['0x0100']}], key=lambda change: change['port_guid'])
    assert 'gpu-box-s0: InfiniBand VF %s was in partitions 0x0101: set to none' % fabric.guid(0) in found['report']
    assert 'gpu-box-s1: InfiniBand VF %s was in partitions none: set to 0x0100' % fabric.guid(1) in found['report']

    # A partitions.conf someone edited by hand is refused, reported, and the play fails at its end.
    with open(fabric.conf, 'a') as handle:
        handle.write('storage=0x0300, ipoib : ALL=full ;\n')
    edited = open(fabric.conf).read()
    rc, out, stats = node.run('reconcile.yml', **run)
    assert rc != 0 and 'the fabric does not match the leases' in out, out[-3000:]
    assert open(fabric.conf).read() == edited
    found = stats['localhost']['gpuaas_reconcile']
    assert 'is not one gpuaas.slice writes' in found['partitions_refused']
    assert any(line.startswith("node: the subnet manager's partitions were not converged") for line in found['report'])
    # Without passthrough (a sample tree, no IOMMU) no VF is a guest's: the fabric is left alone.
    rc, out, stats = node.run('reconcile.yml', gpuaas_passthrough=False, **run)
    assert rc == 0 and open(fabric.conf).read() == edited, out[-3000:]
    assert stats['localhost']['gpuaas_reconcile']['partitions_refused'] is None


def test_opensm_itself_reads_the_file_as_written_and_would_misread_a_damaged_one(opensm_required, tmp_path):
    """The parser these tests trust, on what the backend writes and on what it refuses: OpenSM
    silently makes a member with a bad membership flag a limited one, which is why a file the
    backend cannot read back as its own is refused rather than handed to OpenSM."""
    good = tmp_path / 'good.conf'
    guids = [OTHER_NODE_GUID, '0x0211223344556677']
    good.write_text('%sDefault=0x7fff, ipoib : ALL=limited, SELF=full ;\n'
                    'tenant_acme=0x0100, ipoib : %s=full, %s=full ;\n' % (sm.HEADER, guids[0], guids[1]))
    assert opensm_required(str(good), guids) == {0x7fff: dict((g, 'limited') for g in guids),
                                                 0x0100: dict((g, 'full') for g in guids)}
    bad = tmp_path / 'bad.conf'
    bad.write_text('tenant_acme=0x0100, ipoib : %s=full %s ;\n' % tuple(guids))
    assert opensm_required(str(bad), guids) == {0x0100: {guids[0]: 'limited'}}
    with pytest.raises(AssertionError, match='no port'):
        opensm_required(str(good), guids[:1])
