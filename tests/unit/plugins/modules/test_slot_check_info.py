# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_check_info: one approved slot record against the sample hosts' sysfs trees.

The records are what approval makes of discovery (the control plane stores exactly that);
each refusal changes the host or the record the way the failure would, and the message
must name the field and the device.
"""

from __future__ import annotations

import copy
import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._approval import validate
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.modules import slot_check_info
from tests.unit.module_runner import run_module

SHARE = ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist')
GPU, AUDIO, NVME, PF, VF = '0000:01:00.0', '0000:01:00.1', '0000:02:00.0', '0000:03:00.0', '0000:03:00.2'


@pytest.fixture
def ws(host_tree):
    sys_root, proc_root = host_tree('workstation')
    found = Discovery('ws', sys_root, proc_root).run()
    entry = {'slot_id': 'ws-s0', 'gpu_address': GPU, 'destructive_wipe_policy': 'nvme-format',
             'capacity_metadata': found['slots'][0]['capacity_metadata'],
             'fingerprint': found['slots'][0]['fingerprint']}
    entry.update((key, found['slots'][0][key]) for key in SHARE)
    (record,) = validate(found, [entry])
    return {'sys': sys_root, 'proc': proc_root, 'entry': entry, 'record': record, 'found': found}


def check(capsys, host, slot_id='ws-s0', node_id='ws', **args):
    return run_module(slot_check_info, dict(args, node_id=node_id, slot_id=slot_id, sysfs_root=host['sys'],
                                            proc_root=host['proc']), capsys=capsys)


def attr(host, address, name, value):
    with open(os.path.join(host['sys'], 'bus/pci/devices', address, name), 'w') as handle:
        handle.write(value + '\n')


def refused(result, *fragments):
    assert result.get('failed'), result
    assert result['msg'].startswith('slot ws-s0 does not match this host, nothing was changed')
    for fragment in fragments:
        assert fragment in result['msg'], result['msg']
    return result['problems']


def test_the_reserved_record_passes_and_comes_back_complete(capsys, ws):
    result = check(capsys, ws, slot=ws['record'])
    assert result['changed'] is False and 'failed' not in result
    slot = result['slot']
    assert {k: slot[k] for k in ('slot_id', 'slot_index', 'gpu_address', 'companions', 'nvme_address',
                                 'fabric_pf_address', 'fabric_vf_pci_address', 'numa_node') + SHARE} == {
        'slot_id': 'ws-s0', 'slot_index': 0, 'gpu_address': GPU, 'companions': [AUDIO], 'nvme_address': NVME,
        'fabric_pf_address': PF, 'fabric_vf_pci_address': VF, 'numa_node': 0,
        'cpulist': '1-8,17-24', 'vcpus': 16, 'memory_mib': 55296, 'host_cpulist': '0,16'}
    assert (slot['mac'], slot['ip']) == (ws['record']['mac'], ws['record']['ip'])
    assert slot['devices'] == [GPU, NVME, VF]
    assert slot['iommu_group'] == ws['found']['gpus'][0]['iommu_group']
    assert result['seconds'] < 1 and result['started_at'] > 0


def test_the_approved_map_entry_gives_the_same_record(capsys, ws):
    from_map = check(capsys, ws, approved_slots=[ws['entry']])
    assert from_map['slot'] == check(capsys, ws, slot=ws['record'])['slot']


def test_check_mode_is_the_same_read(capsys, ws):
    result = run_module(slot_check_info, dict(node_id='ws', slot_id='ws-s0', slot=ws['record'], sysfs_root=ws['sys'],
                                              proc_root=ws['proc']), check_mode=True, capsys=capsys)
    assert result['changed'] is False and result['slot']['gpu_address'] == GPU


def test_a_changed_fingerprint_is_refused_naming_the_device_and_field(capsys, ws):
    attr(ws, GPU, 'subsystem_device', '0x1f00')
    refused(check(capsys, ws, slot=ws['record']), 'fingerprint: the devices no longer match',
            'gpu %s: subsystem_device_id 889d -> 1f00' % GPU, 're-approve')


def test_a_swapped_gpu_is_refused(capsys, ws):
    # Another board in the slot: other device id and serial at the same address.
    attr(ws, GPU, 'device', '0x2330')
    attr(ws, GPU, 'serial_number', '1650123456789')
    refused(check(capsys, ws, slot=ws['record']), 'gpu %s: device_id 2684 -> 2330' % GPU, 'serial')
    # A record that names another GPU than its fingerprint does.
    record = dict(ws['record'], gpu_address='0000:05:00.0')
    refused(check(capsys, ws, slot=record), "gpu_address: the record says '0000:05:00.0', but its fingerprint "
            "names '%s'" % GPU)


def test_an_extra_iommu_group_member_is_refused_as_discovery_refuses_it(capsys, ws):
    # The GPU's group gains the SATA controller (ACS off after a firmware change).
    group = ws['record']['fingerprint'] and ws['found']['gpus'][0]['iommu_group']
    os.symlink('../../../../bus/pci/devices/0000:00:17.0',
               os.path.join(ws['sys'], 'kernel/iommu_groups', group, 'devices', '0000:00:17.0'))
    refused(check(capsys, ws, slot=ws['record']),
            'IOMMU group %s also holds 0000:00:17.0 (SATA controller, class 0x010601, driver ahci), which is not '
            'part of the GPU' % group)


def test_a_group_function_the_record_leaves_out_is_refused(capsys, ws):
    record = copy.deepcopy(ws['record'])
    record['companions'] = []
    record['fingerprint']['companions'] = []
    refused(check(capsys, ws, slot=record), 'companions: IOMMU group', 'also holds %s' % AUDIO)


def test_a_missing_nvme_is_refused(capsys, ws):
    os.unlink(os.path.join(ws['sys'], 'bus/pci/devices', NVME))
    problems = refused(check(capsys, ws, slot=ws['record']),
                       'nvme %s: no such PCI device on this host' % NVME)
    assert len(problems) == 1


def test_a_wrong_mac_or_ip_is_refused(capsys, ws):
    record = dict(ws['record'], mac='52:54:00:00:00:01', ip='10.100.0.11')
    problems = refused(check(capsys, ws, slot=record), "mac: the record says '52:54:00:00:00:01', but slot ws-s0 has "
                       + ws['record']['mac'], "ip: the record says '10.100.0.11', but slot ws-s0 has 10.100.0.10")
    assert len(problems) == 2


@pytest.mark.parametrize('slot_id, record_changes, fragment', [
    ('other-s0', {'slot_id': 'other-s0'}, "slot_id: other-s0 names node 'other', but this is node ws"),
    ('ws-s0', {'slot_id': 'ws-s1'}, "slot_id: the record is for 'ws-s1', not ws-s0"),
    ('ws-s0', {'slot_index': 1}, 'slot_index: the record says 1, but ws-s0 is slot 0'),
    ('ws-s00', {'slot_id': 'ws-s00'}, 'the index has leading zeros'),
])
def test_a_forged_slot_id_is_refused(capsys, ws, slot_id, record_changes, fragment):
    result = check(capsys, ws, slot_id=slot_id, slot=dict(ws['record'], **record_changes))
    assert result.get('failed') and fragment in result['msg'], result


def test_a_device_the_host_uses_is_refused(capsys, ws):
    # The slot's NVMe now holds a mounted filesystem.
    with open(os.path.join(ws['proc'], 'mounts'), 'a') as handle:
        handle.write('/dev/nvme1n1 /srv ext4 rw 0 0\n')
    refused(check(capsys, ws, slot=ws['record']), 'nvme %s is host storage: nvme1n1 is mounted on /srv' % NVME)


def test_a_gpu_driving_the_host_console_is_refused(capsys, ws):
    os.makedirs(os.path.join(ws['sys'], 'bus/pci/devices', GPU, 'graphics', 'fb1'))
    refused(check(capsys, ws, slot=ws['record']), 'gpu %s drives a host framebuffer console (driver nvidia)' % GPU)


def test_the_iommu_off_is_refused(capsys, ws):
    os.unlink(os.path.join(ws['sys'], 'bus/pci/devices', GPU, 'iommu_group'))
    for group in os.listdir(os.path.join(ws['sys'], 'kernel/iommu_groups')):
        os.rename(os.path.join(ws['sys'], 'kernel/iommu_groups', group), os.path.join(ws['sys'], 'gone-' + group))
    refused(check(capsys, ws, slot=ws['record']), 'the IOMMU is off')


def test_a_record_without_its_fingerprint_or_a_slot_not_approved_is_refused(capsys, ws):
    entry = dict(ws['entry'])
    del entry['fingerprint']
    refused(check(capsys, ws, approved_slots=[entry]), 'fingerprint: the record has none')
    result = check(capsys, ws, slot_id='ws-s1', approved_slots=[ws['entry']])
    assert result['failed'] and 'slot ws-s1 is not an approved slot of node ws (approved: ws-s0)' in result['msg']


def test_a_wrong_vf_numa_node_policy_or_unknown_key_is_refused(capsys, ws):
    record = dict(ws['record'], fabric_vf_pci_address='0000:03:00.3', numa_node=1, cpulist='32-63', vcpus=32,
                  destructive_wipe_policy='shred')
    problems = refused(check(capsys, ws, slot=record),
                       "fabric_vf_pci_address: the record says '0000:03:00.3', but VF 0 of fabric PF %s is %s"
                       % (PF, VF), 'numa_node: the record says 1, but gpu %s is on node 0' % GPU,
                       "cpulist: the record says '32-63', but CPUs 32-63 are not on NUMA node 0 (CPUs 0-31)",
                       "destructive_wipe_policy: 'shred' is not one of")
    assert len(problems) == 4
    # A misspelt key is never ignored; it stops the check before the host is read.
    problems = refused(check(capsys, ws, slot=dict(ws['record'], gpu_modle='x')), 'unknown keys gpu_modle')
    assert len(problems) == 1


@pytest.mark.parametrize('name', ['hgx', 'segment1', 'pcie8'])
def test_every_eligible_slot_of_the_sample_hosts_passes(capsys, host_tree, name):
    sys_root, proc_root = host_tree(name)
    found = Discovery(name, sys_root, proc_root).run()
    slots = [s for s in found['slots'] if s['eligible']]
    assert slots
    entries = [{'slot_id': s['slot_id'], 'gpu_address': s['gpu_address'], 'destructive_wipe_policy': 'zero',
                'capacity_metadata': s['capacity_metadata'], 'fingerprint': s['fingerprint']} for s in slots]
    for record in validate(found, entries):
        result = run_module(slot_check_info, dict(node_id=name, slot_id=record['slot_id'], slot=record,
                                                  sysfs_root=sys_root, proc_root=proc_root), capsys=capsys)
        assert 'failed' not in result, result
        for key in ('gpu_address', 'companions', 'nvme_address', 'fabric_vf_index', 'fabric_vf_pci_address',
                    'numa_node') + SHARE:
            assert result['slot'][key] == record[key]


def test_a_root_with_a_dotdot_component_is_refused(capsys, ws):
    result = check(capsys, dict(ws, sys=ws['sys'] + '/../sys'), slot=ws['record'])
    assert result['failed'] and "sysfs_root" in result['msg'] and "contains a '..' component" in result['msg']


def test_a_record_approved_before_slots_had_shares_is_refused_saying_what_to_do(capsys, ws):
    legacy = dict((k, v) for k, v in ws['record'].items() if k not in SHARE)
    problems = refused(check(capsys, ws, slot=dict(legacy, cpulist='0-31')),
                       'vcpus, memory_mib, host_cpulist: the record has none, so it was approved before each slot '
                       'had its own CPU slice and memory share', 'approve the slot again from a fresh slot_discovery_info')
    assert len(problems) == 1
    refused(check(capsys, ws, slot=legacy), 'cpulist, vcpus, memory_mib, host_cpulist: the record has none')


@pytest.mark.parametrize('changes, fragment', [
    ({'cpulist': '1-8,17-23', 'vcpus': 15}, "cpulist: '1-8,17-23' leaves out CPUs 24, sibling threads of its own: "
                                            'a slot owns whole cores'),
    ({'host_cpulist': '0-1,16'}, "host_cpulist: '0-1,16' shares CPUs 1 with the slot's cpulist 1-8,17-24"),
    ({'vcpus': 20}, 'vcpus: the record says 20, but its cpulist 1-8,17-24 holds 16 CPUs'),
    ({'memory_mib': 2 ** 20}, 'memory_mib: the record says 1048576, but NUMA node 0 has 128546 MiB in all'),
    ({'vcpus': float('nan')}, 'vcpus must be a whole number from 1 to 8192, not nan'),
    ({'memory_mib': 2 ** 64}, 'memory_mib must be a whole number from 1024 to 1099511627776, not 18446744073709551616'),
    ({'cpulist': '1-8\n'}, "cpulist '1-8\\n' is not a valid CPU list"),
    ({'cpulist': '1-8', 'vcpus': 8}, "cpulist: '1-8' leaves out CPUs 17-24"),
])
def test_a_share_that_is_not_the_hosts_is_refused(capsys, ws, changes, fragment):
    problems = refused(check(capsys, ws, slot=dict(ws['record'], **changes)), fragment)
    assert len(problems) == 1, problems


@pytest.mark.parametrize('vcpus, memory_mib, fragment', [
    (17, 1024, "the allocation's vcpus 17 (the slot has 16) does not fit slot ws-s0's share of NUMA node 0 "
               '(16 vCPUs, CPUs 1-8,17-24; 55296 MiB)'),
    (16, 55297, "the allocation's memory_mib 55297 (the slot has 55296) does not fit"),
    (256, 4 * 2 ** 20, "the allocation's memory_mib 4194304 (the slot has 55296) and vcpus 256 (the slot has 16) does not fit"),
])
def test_a_shape_that_does_not_fit_the_share_is_refused_naming_both_numbers(capsys, ws, vcpus, memory_mib, fragment):
    problems = refused(check(capsys, ws, slot=ws['record'], vcpus=vcpus, memory_mib=memory_mib), fragment)
    assert len(problems) == 1
    fits = check(capsys, ws, slot=ws['record'], vcpus=16, memory_mib=55296)
    assert 'failed' not in fits and fits['slot']['vcpus'] == 16


@pytest.mark.parametrize('shape, fragment', [
    ({'vcpus': 0}, 'vcpus must be a whole number from 1 to 256, not 0'),
    ({'vcpus': 2 ** 64}, 'vcpus must be a whole number from 1 to 256'),
    ({'memory_mib': -1}, 'memory_mib must be a whole number from 1 to 4194304, not -1'),
    ({'memory_mib': 'nan'}, 'memory_mib'),
])
def test_a_hostile_shape_is_refused(capsys, ws, shape, fragment):
    result = check(capsys, ws, slot=ws['record'], **shape)
    assert result['failed'] and fragment in result['msg'], result['msg']


# -- a slot sharing its fabric PF: its VF is VF fabric_vf_index of the PF ------------------------------------


@pytest.fixture
def pcie8(host_tree):
    sys_root, proc_root = host_tree('pcie8')
    found = Discovery('p8', sys_root, proc_root).run()
    slot = found['slots'][2]
    entry = {'slot_id': 'p8-s2', 'gpu_address': slot['gpu_address'], 'destructive_wipe_policy': 'zero',
             'capacity_metadata': slot['capacity_metadata'], 'fingerprint': slot['fingerprint']}
    entry.update((key, slot[key]) for key in SHARE)
    (record,) = validate(found, [entry])
    return {'sys': sys_root, 'proc': proc_root, 'entry': entry, 'record': record}


def p8_problems(capsys, host, **args):
    result = check(capsys, host, slot_id='p8-s2', node_id='p8', **args)
    assert result.get('failed'), result
    return result['problems']


def test_a_shared_pf_slot_passes_with_its_own_vf_from_the_record_or_the_map(capsys, pcie8):
    assert pcie8['record']['fabric_vf_index'] == 2
    for args in ({'slot': pcie8['record']}, {'approved_slots': [pcie8['entry']]}):
        result = check(capsys, pcie8, slot_id='p8-s2', node_id='p8', **args)
        assert 'failed' not in result, result
        # PF 0000:6a:00.0, sriov_offset 1, stride 1: VF 2 is routing id 6a:00.0 + 3.
        assert (result['slot']['fabric_vf_index'], result['slot']['fabric_vf_pci_address']) == (2, '0000:6a:00.3')


def test_a_vf_that_is_not_the_slots_is_refused_naming_it(capsys, pcie8):
    other = dict(pcie8['record'], fabric_vf_pci_address='0000:6a:00.1')
    assert p8_problems(capsys, pcie8, slot=other) == [
        "fabric_vf_pci_address: the record says '0000:6a:00.1', but VF 2 of fabric PF 0000:6a:00.0 is 0000:6a:00.3"]
    beyond = dict(pcie8['record'], fabric_vf_index=16)
    assert p8_problems(capsys, pcie8, slot=beyond) == [
        'fabric_vf_index: the record says 16, but fabric PF 0000:6a:00.0 offers 16 VFs (sriov_totalvfs)']
    assert p8_problems(capsys, pcie8, slot=dict(pcie8['record'], fabric_vf_index='two')) == [
        "fabric_vf_index must be a whole number from 0 to 65534, not 'two'"]
    entry = dict(pcie8['entry'], capacity_metadata=dict(pcie8['entry']['capacity_metadata'],
                                                        fabric_vf_pci_address='0000:6b:00.0'))
    assert p8_problems(capsys, pcie8, approved_slots=[entry]) == [
        "fabric_vf_pci_address: the record says '0000:6b:00.0', which is none of the 16 VFs of fabric PF "
        '0000:6a:00.0 (VF 0 is 0000:6a:00.1)']


def test_a_pf_that_lost_its_offset_is_refused(capsys, pcie8):
    os.unlink(os.path.join(pcie8['sys'], 'bus/pci/devices/0000:6a:00.0/sriov_stride'))
    assert p8_problems(capsys, pcie8, slot=pcie8['record']) == [
        "fabric_vf_pci_address: the record says '0000:6a:00.3', but fabric PF 0000:6a:00.0 does not report "
        'sriov_offset/sriov_stride, so its VF addresses cannot be known']


def test_the_checked_slot_carries_its_bar_mib_from_the_devices(capsys, ws):
    slot = check(capsys, ws, slot=ws['record'])['slot']
    assert slot['bar_mib'] == ws['found']['slots'][0]['bar_mib'] == 290
    same = check(capsys, ws, slot=dict(ws['record'], bar_mib=290))
    assert 'failed' not in same
    problems = refused(check(capsys, ws, slot=dict(ws['record'], bar_mib=17)),
                       "bar_mib: the record says 17, but the devices' 64-bit BARs add up to 290 MiB")
    assert len(problems) == 1


def test_a_shape_whose_memory_and_bars_the_cpu_cannot_address_is_refused(capsys, ws):
    # A GPU with a 1 TiB BAR on a CPU of 40 address bits: the window alone is all of it.
    with open(os.path.join(ws['sys'], 'bus/pci/devices', GPU, 'resource'), 'w') as handle:
        handle.write('0x0000010000000000 0x000001ffffffffff 0x000000000014220c\n')
    with open(os.path.join(ws['proc'], 'cpuinfo'), 'w') as handle:
        handle.write('address sizes\t: 40 bits physical, 48 bits virtual\n')
    record = dict((key, value) for key, value in ws['record'].items() if key != 'bar_mib')
    problems = refused(check(capsys, ws, slot=record, vcpus=1, memory_mib=1024),
                       "shape: memory_mib 1024 plus the slot's 64-bit BARs (bar_mib 1048578 and 1024 MiB for the VM's "
                       "own devices, a 2097152 MiB window) needs 44 physical address bits in the guest", 'but the host CPU has 40')
    assert len(problems) == 1
    os.unlink(os.path.join(ws['proc'], 'cpuinfo'))
    refused(check(capsys, ws, slot=record), "shape: cannot read", "physical address bits cannot be known")
