# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stable slot identity on the sample 8-GPU host: one lost GPU costs one slot, not every slot after it.

A GPU that falls off the bus (Xid 79) is removed from sysfs as the kernel does
(tests/sysfs/builder.remove_device); discovery, given the approved map, keeps every approved
slot's index with its GPU address, and approval approves the slots whose GPUs are there.
"""

from __future__ import annotations

import copy

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._approval import ApprovalError, review, validate
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import (
    Discovery, approved_pins, number_slots)

from tests.sysfs import hosts
from tests.sysfs.builder import remove_device, replace_card

IDENTITY = ('slot_index', 'slot_id', 'gpu_address', 'mac', 'ip', 'nvme_address', 'fabric_pf_address',
            'fabric_vf_pci_address', 'numa_node', 'cpulist', 'vcpus', 'memory_mib', 'host_cpulist')


def discover(tree, approved_slots=None):
    sys_root, proc_root = tree
    return Discovery('n1', sys_root, proc_root, approved_slots=approved_slots).run()


def approved_map(found, **overrides):
    """The operator's map approving every slot of ``found`` as it is (fingerprint and share included)."""
    entries = []
    for slot in found['slots']:
        entry = {'slot_id': slot['slot_id'], 'gpu_address': slot['gpu_address'],
                 'destructive_wipe_policy': 'nvme-format', 'capacity_metadata': dict(slot['capacity_metadata']),
                 'fingerprint': copy.deepcopy(slot['fingerprint']), 'approved_by': 'alice'}
        entry.update((key, slot[key]) for key in ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist'))
        entry.update(overrides)
        entries.append(entry)
    return entries


def identity(slots):
    return dict((slot['slot_id'], dict((key, slot[key]) for key in IDENTITY)) for slot in slots)


@pytest.fixture
def hgx(tmp_path):
    """(tree, its discovery, the map approving all 8 slots)."""
    tree = hosts.build_hgx(str(tmp_path / 'hgx'))
    found = discover(tree)
    assert [slot['eligible'] for slot in found['slots']] == [True] * 8
    return tree, found, approved_map(found)


def test_without_the_map_one_lost_gpu_renumbers_every_slot_after_it(hgx):
    """The fault this feature is for: discovery without the map counts the GPUs that answer."""
    tree, found, entries = hgx
    lost = found['slots'][2]['gpu_address']
    remove_device(tree[0], lost)
    blind = discover(tree)
    assert [s['gpu_address'] for s in blind['slots']][2:] == [s['gpu_address'] for s in found['slots']][3:]
    with pytest.raises(ApprovalError) as refused:
        validate(blind, entries)
    # Every slot from s2 on now names another GPU (and s7 is gone): six refusals for one lost GPU.
    assert len([p for p in refused.value.problems if 'gpu_address is' in p]) == 5
    assert 'slot n1-s7: no such slot on node n1 (known: n1-s0, n1-s1, n1-s2, n1-s3, n1-s4, n1-s5, n1-s6)' \
        in refused.value.problems


def test_a_gpu_that_falls_off_the_bus_costs_its_slot_only(hgx):
    tree, found, entries = hgx
    lost = found['slots'][2]['gpu_address']
    remove_device(tree[0], lost)
    now = discover(tree, entries)
    kept = identity(s for s in found['slots'] if s['slot_id'] != 'n1-s2')
    # The other 7 keep their ids, MACs, IPs, devices and shares; the lost one is reported.
    assert identity(now['slots']) == kept
    assert [s['eligible'] for s in now['slots']] == [True] * 7
    reason = ('GPU %s of approved slot n1-s2 is not on the PCI bus (it fell off the bus, e.g. Xid 79, or was '
              'removed): the slot is absent until the GPU is back at this address' % lost)
    assert now['absent'] == [{'slot_index': 2, 'slot_id': 'n1-s2', 'gpu_address': lost, 'numa_node': 0,
                              'reason': reason}]
    # Its NVMe drive and fabric PF went to no other slot.
    assert found['slots'][2]['nvme_address'] not in [s['nvme_address'] for s in now['slots']]
    assert found['slots'][2]['fabric_pf_address'] not in [s['fabric_pf_address'] for s in now['slots']]

    result = review(now, entries)
    assert [s['slot_id'] for s in result['slots']] == ['n1-s0', 'n1-s1', 'n1-s3', 'n1-s4', 'n1-s5', 'n1-s6', 'n1-s7']
    assert result['absent'] == [{'slot_id': 'n1-s2', 'slot_index': 2, 'gpu_address': lost, 'reason': reason}]
    assert validate(now, entries) == result['slots']


def test_the_gpu_returning_gets_its_slot_back(hgx, tmp_path):
    tree, found, entries = hgx
    remove_device(tree[0], found['slots'][2]['gpu_address'])
    assert discover(tree, entries)['absent']
    # The kernel finds it again on a rescan or a reboot: the same tree as before it was lost.
    back = discover(hosts.build_hgx(str(tmp_path / 'back')), entries)
    assert back == dict(found, absent=[])
    assert review(back, entries)['absent'] == [] and len(review(back, entries)['slots']) == 8


def test_two_lost_gpus_of_one_switch_keep_their_nvme_and_fabric_from_the_others(hgx):
    tree, found, entries = hgx
    for slot in found['slots'][4:6]:
        remove_device(tree[0], slot['gpu_address'])
    now = discover(tree, entries)
    assert identity(now['slots']) == identity(found['slots'][:4] + found['slots'][6:])
    assert [(a['slot_id'], a['numa_node']) for a in now['absent']] == [('n1-s4', 1), ('n1-s5', 1)]
    assert [s['slot_id'] for s in review(now, entries)['slots']] == ['n1-s0', 'n1-s1', 'n1-s2', 'n1-s3', 'n1-s6',
                                                                     'n1-s7']


def test_a_new_gpu_gets_the_lowest_free_index(tmp_path):
    """A GPU added after approval: the approved slots keep theirs; it takes the first index none holds."""
    full = hosts.build_hgx(str(tmp_path / 'full'))
    added = discover(full)['slots'][1]['gpu_address']
    before = hosts.build_hgx(str(tmp_path / 'before'))
    remove_device(before[0], added)
    found = discover(before)
    entries = approved_map(found)
    now = discover(full, entries)
    # Node 1's slots are as approved; node 0's keep their ids, MACs, IPs and devices (not their shares).
    assert identity(s for s in now['slots'] if s['numa_node'] == 1) == identity(
        s for s in found['slots'] if s['numa_node'] == 1)
    layout = ('slot_id', 'gpu_address', 'mac', 'ip', 'nvme_address', 'fabric_pf_address')
    assert [[s[k] for k in layout] for s in now['slots'] if s['gpu_address'] != added] == [
        [s[k] for k in layout] for s in found['slots']]
    index = dict((s['gpu_address'], s['slot_index']) for s in now['slots'])
    assert index[added] == 7
    assert dict((s['gpu_address'], s['slot_id']) for s in now['slots'] if s['gpu_address'] != added) == \
        dict((s['gpu_address'], s['slot_id']) for s in found['slots'])
    assert now['absent'] == []
    # A fifth GPU on NUMA node 0 divides the node in five: a map that records the node's shares is
    # refused for those slots (re-approve them), the slots of node 1 keep theirs.
    with pytest.raises(ApprovalError) as refused:
        review(now, entries)
    assert set(p.split(':')[0] for p in refused.value.problems) == set(
        'slot %s' % s['slot_id'] for s in found['slots'] if s['numa_node'] == 0)
    bare = [dict((k, v) for k, v in e.items() if k not in ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist'))
            for e in entries]
    assert [s['slot_id'] for s in review(now, bare)['slots']] == ['n1-s%d' % i for i in range(7)]


def test_a_gpu_replaced_by_another_model_holds_back_its_slot_only(hgx):
    tree, found, entries = hgx
    swapped = found['slots'][5]['gpu_address']
    replace_card(tree[0], swapped, '2324', '17a6', '1652999999999')
    now = discover(tree, entries)
    # The same address keeps the same slot; its fingerprint tells the new card apart.
    assert identity(now['slots']) == identity(found['slots'])
    assert now['absent'] == []
    result = review(now, entries)
    assert [s['slot_id'] for s in result['slots']] == ['n1-s0', 'n1-s1', 'n1-s2', 'n1-s3', 'n1-s4', 'n1-s6', 'n1-s7']
    assert result['absent'] == [{
        'slot_id': 'n1-s5', 'slot_index': 5, 'gpu_address': swapped,
        'reason': 'slot n1-s5: the devices no longer match the fingerprint taken at approval (hardware changed: '
                  'gpu %s: device_id 2330 -> 2324; gpu %s: serial 1652000000005 -> 1652999999999; gpu %s: '
                  'subsystem_device_id 16c1 -> 17a6): the slot is absent; inspect the host, then re-approve it'
                  % (swapped, swapped, swapped)}]
    # Without a recorded fingerprint there is nothing to tell the cards apart: the slot is approved.
    del entries[5]['fingerprint']
    assert len(review(now, entries)['slots']) == 8


def test_mistakes_in_the_map_still_refuse_it_whole_with_a_gpu_gone(hgx):
    tree, found, entries = hgx
    remove_device(tree[0], found['slots'][2]['gpu_address'])
    entries[4]['destructive_wipe_polcy'] = 'zero'
    entries[2]['destructive_wipe_policy'] = 'shred'
    now = discover(tree, entries)
    with pytest.raises(ApprovalError) as refused:
        review(now, entries)
    assert refused.value.problems == [
        "slot n1-s2: destructive_wipe_policy 'shred' is not one of nvme-format, blkdiscard, zero",
        'slot n1-s4: unknown keys destructive_wipe_polcy (see docs/approved-slot-map.md)']


def test_an_absent_slot_entry_must_still_name_its_gpu(hgx):
    tree, found, entries = hgx
    lost = found['slots'][2]['gpu_address']
    remove_device(tree[0], lost)
    now = discover(tree, entries)
    entries[2]['gpu_address'] = '0000:ff:00.0'
    with pytest.raises(ApprovalError) as refused:
        review(now, entries)
    assert refused.value.problems == [
        "slot n1-s2: gpu_address is '0000:ff:00.0' but discovery has %s at this slot (hardware or slot order "
        'changed: discover again and re-approve)' % lost]


def test_an_absent_slots_numa_node_comes_from_its_cpulist_without_a_fingerprint(hgx):
    tree, found, entries = hgx
    remove_device(tree[0], found['slots'][6]['gpu_address'])
    del entries[6]['fingerprint']
    now = discover(tree, entries)
    assert now['absent'][0]['numa_node'] == 1
    assert identity(now['slots']) == identity(found['slots'][:6] + found['slots'][7:])
    # Without either, its node cannot be known: reported, and its node's shares move.
    del entries[6]['cpulist']
    now = discover(tree, entries)
    assert now['absent'][0]['numa_node'] == -1
    assert now['absent'][0]['reason'].endswith(
        'its NUMA node cannot be known (the map has no fingerprint pcie_path or cpulist for it), so the shares '
        'of the slots that share its node may move')
    assert now['slots'][6]['cpulist'] != found['slots'][7]['cpulist']


def test_map_entries_that_cannot_keep_an_index_are_skipped_with_a_warning():
    warnings = []
    pins = approved_pins('n1', [
        'n1-s0',
        {'slot_id': 'n2-s0', 'gpu_address': '0000:18:00.0'},
        {'slot_id': 'n1-s1', 'gpu_address': '18:00.0'},
        {'slot_id': 'n1-s2', 'gpu_address': '0000:18:00.0'},
        {'slot_id': 'n1-s2', 'gpu_address': '0000:19:00.0'},
    ], warnings)
    assert sorted(pins) == ['0000:18:00.0'] and pins['0000:18:00.0'][0] == 2
    assert warnings == [
        'approved_slots[0] keeps no slot index: approved_slots[0] is not a mapping',
        "approved_slots[1] keeps no slot index: approved_slots[1].slot_id 'n2-s0' is not a slot of node n1",
        "approved_slots[2] keeps no slot index: approved_slots[2].gpu_address '18:00.0' is not a valid PCI "
        'address: ' + warnings[2].split('is not a valid PCI address: ')[1],
        'approved_slots[4] keeps no slot index: approved_slots[4]: slot n1-s2 or GPU 0000:19:00.0 is in the map '
        'twice']


def test_numbering_keeps_approved_indexes_and_fills_the_lowest_free():
    pins = {'0000:20:00.0': (0, {}), '0000:30:00.0': (3, {}), '0000:40:00.0': (1, {})}
    index_of, gone = number_slots(['0000:10:00.0', '0000:20:00.0', '0000:30:00.0', '0000:50:00.0'], pins)
    assert index_of == {'0000:20:00.0': 0, '0000:30:00.0': 3, '0000:10:00.0': 2, '0000:50:00.0': 4}
    assert gone == [(1, '0000:40:00.0')]
    assert number_slots(['0000:10:00.0', '0000:20:00.0'], {}) == ({'0000:10:00.0': 0, '0000:20:00.0': 1}, [])


def test_a_map_that_is_not_a_list_is_refused_by_discovery(hgx):
    from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError
    with pytest.raises(ContractError, match="approved_slots must be a list"):
        discover(hgx[0], {'slot_id': 'n1-s0'})


@pytest.mark.parametrize('fingerprints', [True, False], ids=['with-fingerprints', 'map-without-fingerprints'])
def test_slots_sharing_a_fabric_pf_keep_their_vfs_while_one_of_them_is_absent(tmp_path, fingerprints):
    """On a PCIe server with one PF per socket, the k-th slot on a PF has VF k: a lost GPU keeps its
    place among the PF's slots, so the slots after it keep their VFs and stay approved."""
    tree = hosts.build_pcie8(str(tmp_path / 'pcie8'))
    found = discover(tree)
    assert [slot['eligible'] for slot in found['slots']] == [True] * 8
    entries = approved_map(found)
    if not fingerprints:     # the VF address still names the PF
        for entry in entries:
            entry.pop('fingerprint')
    lost = found['slots'][1]
    assert lost['fabric_vf_index'] == 1
    remove_device(tree[0], lost['gpu_address'])
    now = discover(tree, entries)
    keep = ('slot_id', 'fabric_pf_address', 'fabric_vf_index', 'fabric_vf_pci_address', 'mac', 'ip')
    assert [dict((k, s[k]) for k in keep) for s in now['slots']] == \
        [dict((k, s[k]) for k in keep) for s in found['slots'] if s['slot_id'] != lost['slot_id']]
    reviewed = review(now, entries)
    assert [slot['slot_id'] for slot in reviewed['slots']] == [s['slot_id'] for s in now['slots']]
    assert [item['slot_id'] for item in reviewed['absent']] == [lost['slot_id']]
    # Back at its address, the GPU gets its slot and its VF again.
    tree = hosts.build_pcie8(str(tmp_path / 'again'))
    assert discover(tree, entries)['slots'] == found['slots']
