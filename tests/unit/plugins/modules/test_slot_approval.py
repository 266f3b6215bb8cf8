# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_approval: a clean map approves; every refusal rule refuses the whole map."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.modules import slot_approval
from tests.unit.module_runner import run_module


@pytest.fixture
def discovery(host_tree):
    sys_root, proc_root = host_tree('workstation')
    return Discovery('ws', sys_root, proc_root).run()


def entry(**overrides):
    value = {
        'slot_id': 'ws-s0', 'gpu_address': '0000:01:00.0',
        'destructive_wipe_policy': 'nvme-format',
        'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                              'fabric_vf_pci_address': '0000:03:00.2'},
        'approved_by': 'alice', 'approved_at': '2026-11-22T10:00:00Z',
    }
    value.update(overrides)
    return value


def approve(capsys, discovery, entries):
    return run_module(slot_approval, {'discovery': discovery, 'approved_slots': entries},
                      capsys=capsys)


def test_a_clean_map_approves_the_slot_with_its_discovery_data(capsys, discovery):
    result = approve(capsys, discovery, [entry()])
    assert result['changed'] is False and 'failed' not in result
    (slot,) = result['slots']
    expected = copy.deepcopy(discovery['slots'][0])
    del expected['eligible'], expected['reasons']
    expected.update(node_id='ws', destructive_wipe_policy='nvme-format', approved_by='alice',
                    approved_at='2026-11-22T10:00:00Z')
    assert slot == expected


def test_a_recorded_fingerprint_that_still_matches_is_accepted(capsys, discovery):
    fingerprint = discovery['slots'][0]['fingerprint']
    assert approve(capsys, discovery, [entry(fingerprint=fingerprint)])['slots']


def test_a_share_in_the_entry_must_still_be_discoverys(capsys, discovery):
    share = dict((key, discovery['slots'][0][key]) for key in ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist'))
    assert share == {'cpulist': '1-8,17-24', 'vcpus': 16, 'memory_mib': 55296, 'host_cpulist': '0,16'}
    assert approve(capsys, discovery, [entry(**share)])['slots'][0]['cpulist'] == '1-8,17-24'
    # Approved when the node's whole CPU list was every slot's: discovery now gives a slice.
    refused = approve(capsys, discovery, [entry(**dict(share, cpulist='0-31', vcpus=32))])
    assert refused['problems'] == [
        "slot ws-s0: cpulist is '0-31' but discovery gives the slot '1-8,17-24' (its share of the NUMA node "
        'changed: discover again and re-approve)',
        "slot ws-s0: vcpus is 32 but discovery gives the slot 16 (its share of the NUMA node changed: discover "
        'again and re-approve)']


def meta(**overrides):
    value = {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
             'fabric_vf_pci_address': '0000:03:00.2'}
    value.update(overrides)
    return value


REFUSALS = [
    (entry(slot_id='ws-s7'), 'slot ws-s7: no such slot on node ws (known: ws-s0, ws-s1)'),
    (entry(slot_id='ws-s1', gpu_address='0000:05:00.0', destructive_wipe_policy='zero',
           capacity_metadata={'storage_ownership': 'slice', 'fabric_claim_mode': 'none',
                              'fabric_vf_pci_address': None}),
     'slot ws-s1: discovery says the slot is not eligible: IOMMU group'),
    (entry(gpu_address='0000:05:00.0'),
     "slot ws-s0: gpu_address is '0000:05:00.0' but discovery has 0000:01:00.0 at this slot"),
    (entry(destructive_wipe_policy=''), 'slot ws-s0: destructive_wipe_policy must be set'),
    (entry(destructive_wipe_policy='shred'),
     "slot ws-s0: destructive_wipe_policy 'shred' is not one of nvme-format, blkdiscard, zero"),
    (entry(capacity_metadata={'storage_ownership': 'slice'}),
     'slot ws-s0: capacity_metadata lacks fabric_claim_mode, fabric_vf_pci_address'),
    (entry(capacity_metadata=meta(storage_ownership='host')),
     "slot ws-s0: capacity_metadata.storage_ownership must be 'slice', not 'host'"),
    (entry(capacity_metadata=meta(fabric_claim_mode='shared_pf')),
     "slot ws-s0: capacity_metadata.fabric_claim_mode must be 'per_slot_vf', not 'shared_pf'"),
    (entry(capacity_metadata=meta(fabric_vf_pci_address='')),
     "slot ws-s0: capacity_metadata.fabric_vf_pci_address must name the slot's fabric VF"),
    (entry(capacity_metadata=meta(fabric_vf_pci_address='0000:03:00.3')),
     "slot ws-s0: capacity_metadata.fabric_vf_pci_address is '0000:03:00.3' but discovery"),
    (entry(capacity_metadata=meta(extra=1)), 'slot ws-s0: capacity_metadata has unknown keys extra'),
    (entry(capacity_metadata='slice'), 'slot ws-s0: capacity_metadata must be a mapping'),
    (entry(destructive_wipe_polcy='zero'), 'slot ws-s0: unknown keys destructive_wipe_polcy'),
    # A fingerprint no discovery wrote is the operator's mistake (a changed one is the hardware's: absent).
    (entry(fingerprint={'gpu': {'serial': 'x'}}),
     'slot ws-s0: fingerprint.gpu.address None is not what discovery reports'),
    (entry(fingerprint={'gpus': {}}), "slot ws-s0: fingerprint must be a mapping (as discovery reports it), not {'gpus': {}}"),
    ({'gpu_address': '0000:01:00.0'}, 'approved_slots[0]: slot_id must be a non-empty string'),
]


@pytest.mark.parametrize('bad, problem', REFUSALS, ids=[p for _e, p in REFUSALS])
def test_each_rule_refuses_the_whole_map(capsys, discovery, bad, problem):
    result = approve(capsys, discovery, [bad])
    assert result['failed'] is True
    assert 'slots' not in result
    assert any(p.startswith(problem) for p in result['problems']), result['problems']
    assert result['msg'].startswith('the approved slot map was refused, no slot is approved')


def test_a_slot_approved_twice_is_refused(capsys, discovery):
    result = approve(capsys, discovery, [entry(), entry()])
    assert result['problems'] == ['slot ws-s0 is approved twice']


def test_block_wipe_policies_need_the_slots_own_nvme(capsys, host_tree):
    sys_root, proc_root = host_tree('h100_guest')
    found = Discovery('g', sys_root, proc_root, require_nvme=False, require_fabric=False).run()
    # Pretend the IOMMU were on so that only the wipe policy is at stake.
    found['slots'][0].update(eligible=True, reasons=[])
    bad = {'slot_id': 'g-s0', 'gpu_address': '0000:00:06.0', 'destructive_wipe_policy': 'blkdiscard',
           'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'none',
                                 'fabric_vf_pci_address': None}}
    result = approve(capsys, found, [bad])
    assert result['problems'] == ["slot g-s0: destructive_wipe_policy 'blkdiscard' needs an NVMe "
                                  "drive of the slot's own; this slot has none, use 'zero'"]
    bad['destructive_wipe_policy'] = 'zero'
    assert [s['slot_id'] for s in approve(capsys, found, [bad])['slots']] == ['g-s0']
    bad['capacity_metadata']['fabric_claim_mode'] = 'per_slot_vf'
    assert approve(capsys, found, [bad])['problems'] == [
        "slot g-s0: the slot has no fabric PF, so capacity_metadata must say fabric_claim_mode "
        "'none' and no fabric_vf_pci_address"]


def test_one_bad_entry_approves_nothing_and_every_problem_is_listed(capsys, discovery):
    result = approve(capsys, discovery, [entry(), entry(slot_id='ws-s9', destructive_wipe_policy='')])
    assert result['failed'] and 'slots' not in result
    assert len(result['problems']) == 1 and result['problems'][0].startswith('slot ws-s9: no such slot')
    result = approve(capsys, discovery, [entry(destructive_wipe_policy='', gpu_address='x')])
    assert len(result['problems']) == 2


def test_something_that_is_not_a_discovery_result_is_refused(capsys):
    result = approve(capsys, {'slots': []}, [entry()])
    assert result['problems'] == ['discovery is not a gpuaas.slice.slot_discovery_info result '
                                  '(register the slot_discovery_info task and pass it whole)']


# -- shared-PF VFs: a PCIe server with one fabric PF per socket --------------------------------------------------


@pytest.fixture
def pcie8(host_tree):
    sys_root, proc_root = host_tree('pcie8')
    return Discovery('p8', sys_root, proc_root).run()


def pcie8_entry(slot, **overrides):
    value = {'slot_id': slot['slot_id'], 'gpu_address': slot['gpu_address'], 'destructive_wipe_policy': 'nvme-format',
             'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                                   'fabric_vf_pci_address': slot['fabric_vf_pci_address']},
             'fabric_vf_index': slot['fabric_vf_index']}
    value.update(overrides)
    return value


def test_a_map_of_slots_sharing_a_pf_approves_each_with_its_own_vf(capsys, pcie8):
    result = approve(capsys, pcie8, [pcie8_entry(slot) for slot in pcie8['slots']])
    assert 'failed' not in result, result.get('problems')
    assert [(s['fabric_pf_address'], s['fabric_vf_index'], s['fabric_vf_pci_address']) for s in result['slots']] == [
        ('0000:%s:00.0' % bus, k, '0000:%s:00.%d' % (bus, k + 1)) for bus in ('6a', 'd5') for k in range(4)]


def test_a_slot_claiming_another_slots_vf_of_the_shared_pf_is_refused(capsys, pcie8):
    first, second = pcie8['slots'][:2]
    taken = dict(pcie8_entry(second), capacity_metadata=dict(pcie8_entry(second)['capacity_metadata'],
                                                             fabric_vf_pci_address=first['fabric_vf_pci_address']))
    result = approve(capsys, pcie8, [pcie8_entry(first), taken])
    assert result['problems'] == [
        "slot p8-s1: capacity_metadata.fabric_vf_pci_address is '0000:6a:00.1' but discovery says the slot's VF "
        'is 0000:6a:00.2']
    result = approve(capsys, pcie8, [pcie8_entry(second, fabric_vf_index=0)])
    assert result['problems'] == [
        "slot p8-s1: fabric_vf_index is 0 but discovery gives the slot VF 1 of fabric PF '0000:6a:00.0' (the slots "
        'sharing the PF changed: discover again and re-approve)']


def test_a_discovery_giving_two_slots_one_vf_or_a_bad_index_is_refused(capsys, pcie8):
    forged = copy.deepcopy(pcie8)
    forged['slots'][1]['fabric_vf_pci_address'] = forged['slots'][0]['fabric_vf_pci_address']
    assert approve(capsys, forged, [pcie8_entry(pcie8['slots'][0])])['problems'] == [
        "discovery.slots[1].fabric_vf_pci_address '0000:6a:00.1' is also discovery.slots[0]'s: each slot has a VF "
        'of its own']
    for bad in (-1, True, '1', 65535):
        forged = copy.deepcopy(pcie8)
        forged['slots'][2]['fabric_vf_index'] = bad
        assert approve(capsys, forged, [pcie8_entry(pcie8['slots'][0])])['problems'] == [
            "discovery.slots[2].fabric_vf_index %s is not the index of the slot's fabric VF (0 to 65534, with its "
            'address)' % ("'1'" if bad == '1' else str(bad))], bad


def test_a_slot_beyond_sriov_totalvfs_cannot_be_approved(capsys, host_tree):
    sys_root, proc_root = host_tree('pcie8', totalvfs=3)
    found = Discovery('p8', sys_root, proc_root).run()
    result = approve(capsys, found, [pcie8_entry(found['slots'][3], capacity_metadata={
        'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf', 'fabric_vf_pci_address': '0000:6a:00.4'})])
    assert result['problems'][0] == (
        'slot p8-s3: discovery says the slot is not eligible: fabric PF 0000:6a:00.0 offers 3 VFs (sriov_totalvfs) '
        'and the 3 slots before this one on it take them all: this slot would need VF 3')
