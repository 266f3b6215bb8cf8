# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fabric pairing: which PF each slot gets, which of its VFs, and every refusal with its reason."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery, vf_counts
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError, parse_cpulist

from tests.sysfs.builder import SysfsBuilder

PCIE8_PFS = {0: '0000:6a:00.0', 1: '0000:d5:00.0'}


def vf(pf, offset, stride, index):
    """VF ``index``'s address by the SR-IOV routing-id rule, computed here apart from the code under test."""
    domain, bus, devfn = pf[:4], int(pf[5:7], 16), int(pf[8:10], 16) << 3 | int(pf[11])
    rid = (bus << 8 | devfn) + offset + stride * index
    return '%s:%02x:%02x.%x' % (domain, rid >> 8, (rid >> 3) & 0x1f, rid & 7)


def discover(tree, node='p8', **kwargs):
    sys_root, proc_root = tree
    return Discovery(node, sys_root, proc_root, **kwargs).run()


def test_pcie8_one_pf_per_socket_gives_eight_slots_with_vfs_0_to_3_on_each_pf(host_tree):
    result = discover(host_tree('pcie8'))
    slots = result['slots']
    assert [s['eligible'] for s in slots] == [True] * 8, [s['reasons'] for s in slots]
    for slot in slots:
        node = slot['numa_node']
        assert node == slot['slot_index'] // 4
        pf = PCIE8_PFS[node]
        k = slot['slot_index'] % 4
        assert (slot['fabric_pf_address'], slot['fabric_vf_index']) == (pf, k)
        assert slot['fabric_vf_pci_address'] == vf(pf, 1, 1, k) == '%s.%d' % (pf[:-2], k + 1)
        assert slot['capacity_metadata'] == {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                                             'fabric_vf_pci_address': slot['fabric_vf_pci_address']}
        assert slot['fingerprint']['fabric_pf']['address'] == pf
    vfs = [s['fabric_vf_pci_address'] for s in slots]
    assert len(set(vfs)) == 8
    # Disjoint CPU slices of whole cores (CPU c and c + 64 are one core), equal memory shares.
    cpus = [set(parse_cpulist(s['cpulist'])) for s in slots]
    assert sum(len(c) for c in cpus) == len(set().union(*cpus)) == 128 - 4
    assert all((c + 64 in one) if c < 64 else (c - 64 in one) for one in cpus for c in one)
    assert result['host_cpulist'] == '0,32,64,96'
    assert {s['memory_mib'] for s in slots} == {123904}
    # Each GPU's NVMe drive is on its own root complex.
    assert [s['nvme_address'] for s in slots] == ['%s:%02x:00.0' % (s['gpu_address'][:4], int(s['gpu_address'][5:7], 16) + 1)
                                                  for s in slots]
    assert vf_counts(slots) == [{'address': PCIE8_PFS[0], 'num_vfs': 4}, {'address': PCIE8_PFS[1], 'num_vfs': 4}]


def test_hgx_keeps_vf_0_of_its_own_pf_per_gpu(host_tree):
    slots = discover(host_tree('hgx'), node='hgx')['slots']
    assert [s['fabric_vf_index'] for s in slots] == [0] * 8
    pfs = [s['fabric_pf_address'] for s in slots]
    assert len(set(pfs)) == 8
    assert [s['fabric_vf_pci_address'] for s in slots] == [vf(pf, 1, 1, 0) for pf in pfs]
    assert vf_counts(slots) == [{'address': pf, 'num_vfs': 1} for pf in pfs]


def test_hgx_with_one_pf_per_switch_shares_it_between_the_switchs_two_gpus(host_tree):
    slots = discover(host_tree('hgx', pfs_per_switch=1), node='hgx')['slots']
    assert all(s['eligible'] for s in slots), [s['reasons'] for s in slots]
    # Per switch: the two GPUs at 0 and 1 behind it, the PF at port 2 behind the same switch.
    for first in range(0, 8, 2):
        a, b = slots[first], slots[first + 1]
        assert a['fabric_pf_address'] == b['fabric_pf_address']
        assert a['fabric_pf_address'][:7] == a['gpu_address'][:7][:5] + '%02x' % (int(a['gpu_address'][5:7], 16) + 2)
        assert (a['fabric_vf_index'], b['fabric_vf_index']) == (0, 1)
        assert b['fabric_vf_pci_address'] == vf(b['fabric_pf_address'], 1, 1, 1)


def one_gpu_host(tmp_path, where):
    """One GPU on NUMA node 0 behind a switch, and a fabric PF at each of ``where``:

    'switch' (behind the GPU's own switch), 'root' (the GPU's root complex, another root port),
    'numa' (another root complex, same NUMA node), 'far' (another NUMA node).
    """
    b = SysfsBuilder(str(tmp_path / 'sys'), proc_root=str(tmp_path / 'proc'))
    b.numa_nodes({0: '0-7', 1: '8-15'}, smt=0, mem_total_kib=67108864)
    root = b.pci_root('0000:10', numa_node=0)
    b.bridge('0000:10:01.0', root)
    b.bridge('0000:11:00.0', '0000:10:01.0', vendor='1000', device='c030')
    for port in range(2):
        b.bridge('0000:12:%02x.0' % port, '0000:11:00.0', vendor='1000', device='c030')
    b.device('0000:13:00.0', '0000:12:00.0', 0x030200, '10de', '2330', driver='nvidia')
    sriov = {'total': 8, 'offset': 1, 'stride': 1}
    ib = dict(pci_class=0x020700, vendor='15b3', device='1021', driver='mlx5_core', sriov=sriov)
    pfs = {}
    if 'switch' in where:
        pfs['switch'] = '0000:14:00.0'
        b.device(pfs['switch'], '0000:12:01.0', **ib)
    if 'root' in where:
        b.bridge('0000:10:02.0', root)
        pfs['root'] = '0000:20:00.0'
        b.device(pfs['root'], '0000:10:02.0', **ib)
    if 'numa' in where:
        other = b.pci_root('0000:30', numa_node=0)
        b.bridge('0000:30:01.0', other)
        pfs['numa'] = '0000:31:00.0'
        b.device(pfs['numa'], '0000:30:01.0', **ib)
    if 'far' in where:
        far = b.pci_root('0000:80', numa_node=1)
        b.bridge('0000:80:01.0', far)
        pfs['far'] = '0000:81:00.0'
        b.device(pfs['far'], '0000:80:01.0', **ib)
    slot = Discovery('n', str(tmp_path / 'sys'), str(tmp_path / 'proc'), require_nvme=False).run()['slots'][0]
    return slot, pfs


@pytest.mark.parametrize('where, winner', [
    (('switch', 'root', 'numa', 'far'), 'switch'),
    (('root', 'numa', 'far'), 'root'),
    (('numa', 'far'), 'numa'),
])
def test_a_pf_behind_the_gpus_switch_beats_its_root_complex_beats_its_numa_node(tmp_path, where, winner):
    slot, pfs = one_gpu_host(tmp_path, where)
    assert slot['eligible'], slot['reasons']
    assert (slot['fabric_pf_address'], slot['fabric_vf_index']) == (pfs[winner], 0)
    assert slot['fabric_vf_pci_address'] == vf(pfs[winner], 1, 1, 0)


def test_a_pf_on_another_numa_node_is_never_paired(tmp_path):
    slot, _pfs = one_gpu_host(tmp_path, ('far',))
    assert slot['fabric_pf_address'] is None and slot['fabric_vf_index'] is None
    assert slot['fabric_vf_pci_address'] is None and not slot['eligible']
    assert slot['reasons'] == ['no SR-IOV capable fabric PF (class 0207/0200) shares a PCIe switch, root complex '
                               'or NUMA node with 0000:13:00.0 (require_fabric is true)']
    assert slot['capacity_metadata']['fabric_claim_mode'] == 'none'


def test_more_slots_than_sriov_totalvfs_makes_the_extra_slot_ineligible_with_the_reason(host_tree):
    slots = discover(host_tree('pcie8', totalvfs=3))['slots']
    for slot in slots:
        k, pf = slot['slot_index'] % 4, PCIE8_PFS[slot['numa_node']]
        assert slot['fabric_pf_address'] == pf
        if k < 3:
            assert slot['eligible'] and slot['fabric_vf_index'] == k
            assert slot['fabric_vf_pci_address'] == vf(pf, 1, 1, k)
        else:
            assert not slot['eligible']
            assert slot['fabric_vf_index'] is None and slot['fabric_vf_pci_address'] is None
            assert slot['reasons'] == ['fabric PF %s offers 3 VFs (sriov_totalvfs) and the 3 slots before this one '
                                       'on it take them all: this slot would need VF 3' % pf]
    # Only the eligible slots are approved, so the PFs need 3 VFs each: never more than they offer.
    want = [{'address': pf, 'num_vfs': 3} for pf in PCIE8_PFS.values()]
    assert vf_counts([s for s in slots if s['eligible']]) == want


@pytest.mark.parametrize('attribute', ['sriov_offset', 'sriov_stride'])
def test_a_pf_without_offset_or_stride_gives_its_slots_no_vf(host_tree, attribute):
    sys_root, proc_root = host_tree('pcie8')
    os.unlink(os.path.join(sys_root, 'bus/pci/devices', PCIE8_PFS[0], attribute))
    slots = Discovery('p8', sys_root, proc_root).run()['slots']
    for slot in slots[:4]:
        assert not slot['eligible'] and slot['fabric_pf_address'] == PCIE8_PFS[0]
        assert slot['fabric_vf_index'] is None and slot['fabric_vf_pci_address'] is None
        assert slot['reasons'] == ['fabric PF %s does not report sriov_offset/sriov_stride, so its VF address '
                                   'cannot be known' % PCIE8_PFS[0]]
    assert all(s['eligible'] and s['fabric_vf_index'] == s['slot_index'] - 4 for s in slots[4:])


def test_the_vf_index_follows_slot_order_not_the_order_pfs_were_handed_out(tmp_path):
    """Two GPUs behind one root complex, the PF nearer the second: VF 0 is still slot 0's."""
    b = SysfsBuilder(str(tmp_path / 'sys'), proc_root=str(tmp_path / 'proc'))
    b.numa_nodes({0: '0-7'}, smt=0, mem_total_kib=67108864)
    root = b.pci_root('0000:10', numa_node=0)
    b.bridge('0000:10:01.0', root)
    b.device('0000:11:00.0', '0000:10:01.0', 0x030200, '10de', '2330', driver='nvidia')
    b.bridge('0000:10:02.0', root)
    b.bridge('0000:12:00.0', '0000:10:02.0', vendor='1000', device='c030')
    b.bridge('0000:13:00.0', '0000:12:00.0', vendor='1000', device='c030')
    b.bridge('0000:13:01.0', '0000:12:00.0', vendor='1000', device='c030')
    b.device('0000:14:00.0', '0000:13:00.0', 0x030200, '10de', '2330', driver='nvidia')
    b.device('0000:15:00.0', '0000:13:01.0', 0x020700, '15b3', '1021', driver='mlx5_core',
             sriov={'total': 4, 'offset': 2, 'stride': 2})
    slots = Discovery('n', str(tmp_path / 'sys'), str(tmp_path / 'proc'), require_nvme=False).run()['slots']
    assert [(s['gpu_address'], s['fabric_vf_index'], s['fabric_vf_pci_address']) for s in slots] == [
        ('0000:11:00.0', 0, vf('0000:15:00.0', 2, 2, 0)), ('0000:14:00.0', 1, vf('0000:15:00.0', 2, 2, 1))]
    assert [s['fabric_vf_pci_address'] for s in slots] == ['0000:15:00.2', '0000:15:00.4']


def test_vf_counts_takes_the_highest_index_per_pf_and_refuses_a_bad_one():
    slots = [{'fabric_pf_address': '0000:6a:00.0', 'fabric_vf_index': 2},
             {'fabric_pf_address': '0000:6a:00.0', 'fabric_vf_index': 0},
             {'fabric_pf_address': '0000:1a:00.0', 'fabric_vf_index': 0},
             {'fabric_pf_address': None, 'fabric_vf_index': None}]
    assert vf_counts(slots) == [{'address': '0000:1a:00.0', 'num_vfs': 1}, {'address': '0000:6a:00.0', 'num_vfs': 3}]
    assert vf_counts([]) == []
    with pytest.raises(ContractError, match='fabric_vf_index must be a whole number from 0 to 65534'):
        vf_counts([{'fabric_pf_address': '0000:6a:00.0', 'fabric_vf_index': -1}])
