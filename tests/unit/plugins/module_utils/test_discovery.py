# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Discovery on the sample hosts of tests/sysfs/hosts.py: the full result, and every rule."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciError

from tests.sysfs.builder import SysfsBuilder

IOMMU_OFF = ('the IOMMU is off (no groups under /sys/kernel/iommu_groups): enable VT-d (Intel) '
             'or AMD-Vi/IOMMU (AMD) in the firmware and boot with intel_iommu=on or amd_iommu=on')


def mac(node, index):
    """The layout's MAC, computed here independently of the code under test."""
    digest = hashlib.sha256(('%s:%d' % (node, index)).encode()).hexdigest()
    return '52:54:' + ':'.join(digest[i:i + 2] for i in range(0, 8, 2))


def link(speed, width, max_speed=None, max_width=None):
    return {'current_speed': speed, 'current_width': width,
            'max_speed': max_speed or speed, 'max_width': max_width or width}


def discover(tree, node='n1', **kwargs):
    sys_root, proc_root = tree
    return Discovery(node, sys_root, proc_root, **kwargs).run()


def without_fingerprints(result):
    for slot in result['slots']:
        slot.pop('fingerprint')
    return result


def test_workstation_full_result(host_tree):
    result = without_fingerprints(discover(host_tree('workstation'), node='ws'))
    pch_group = result['gpus'][1]['iommu_group']
    assert result == {
        'node_id': 'ws',
        'approval_required': True,
        'iommu_enabled': True,
        'numa_nodes': {'0': '0-31'},
        # Core 0 (CPUs 0 and 16) is the host's; 15 cores left for 2 slots: 8 and 7.
        'host_cpulist': '0,16',
        'host_reserved_cores': 1,
        'host_reserved_memory_mib': 16384,
        'require_nvme': True,
        'require_fabric': True,
        'gpus': [
            {'address': '0000:01:00.0', 'vendor_id': '10de', 'device_id': '2684',
             'subsystem_vendor_id': '1043', 'subsystem_device_id': '889d', 'class': '0x030000',
             'numa_node': 0, 'iommu_group': result['gpus'][0]['iommu_group'],
             'iommu_group_devices': ['0000:01:00.0', '0000:01:00.1'], 'driver': 'nvidia',
             'link': link('16.0 GT/s PCIe', 16), 'reset_method': 'flr'},
            {'address': '0000:05:00.0', 'vendor_id': '10de', 'device_id': '2204',
             'subsystem_vendor_id': '10de', 'subsystem_device_id': '0000', 'class': '0x030000',
             'numa_node': 0, 'iommu_group': pch_group,
             'iommu_group_devices': ['0000:00:17.0', '0000:00:1c.4', '0000:05:00.0'],
             'driver': 'nvidia',
             'link': link('8.0 GT/s PCIe', 4, '16.0 GT/s PCIe', 16), 'reset_method': 'flr'},
        ],
        'excluded': [
            {'address': '0000:00:02.0', 'reason': 'host console (boot_vga = 1)'},
            {'address': '0000:06:00.0',
             'reason': 'host storage: nvme0n1p1 is mounted on /boot/efi'},
        ],
        'absent': [],
        'slots': [
            {'slot_index': 0, 'slot_id': 'ws-s0', 'gpu_address': '0000:01:00.0',
             'companions': ['0000:01:00.1'], 'numa_node': 0, 'cpulist': '1-8,17-24', 'vcpus': 16,
             # (131631104 kB // 1024 - 16384) // 2 slots = 56081 MiB, down to 54 GiB
             'memory_mib': 55296, 'host_cpulist': '0,16',
             # RTX 4090: BAR1 256 MiB + BAR3 32 MiB (BAR0 and the audio function's are 32-bit);
             # the NVMe's 16 KiB; the VF's 1 MiB (8 MiB of VF BAR0 / 8 VFs): 289 MiB 16 KiB, rounded up.
             'bar_mib': 290,
             'nvme_address': '0000:02:00.0', 'fabric_pf_address': '0000:03:00.0', 'fabric_vf_index': 0,
             'fabric_vf_pci_address': '0000:03:00.2', 'mac': mac('ws', 0), 'ip': '10.100.0.10',
             'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                                   'fabric_vf_pci_address': '0000:03:00.2'},
             'eligible': True, 'reasons': []},
            {'slot_index': 1, 'slot_id': 'ws-s1', 'gpu_address': '0000:05:00.0',
             'companions': [], 'numa_node': 0, 'cpulist': '9-15,25-31', 'vcpus': 14,
             'memory_mib': 55296, 'bar_mib': 289, 'host_cpulist': '0,16', 'nvme_address': None,
             # One PF for two GPUs: the second slot shares it and gets VF 1 (offset 2, stride 1: 03:00.3).
             'fabric_pf_address': '0000:03:00.0', 'fabric_vf_index': 1, 'fabric_vf_pci_address': '0000:03:00.3',
             'mac': mac('ws', 1), 'ip': '10.100.0.11',
             'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                                   'fabric_vf_pci_address': '0000:03:00.3'},
             'eligible': False,
             'reasons': [
                 'IOMMU group %s also holds 0000:00:17.0 (SATA controller, class 0x010601, '
                 'driver ahci), which is not part of the GPU: every device of a group goes to '
                 'the VM together, so the host would lose it (move the card to another slot, '
                 'or enable ACS on the bridge above it)' % pch_group,
                 'no free NVMe controller shares a PCIe switch or root complex with '
                 '0000:05:00.0 (require_nvme is true)',
             ]},
        ],
    }


def test_workstation_fingerprint_identifies_every_device_of_the_slot(host_tree):
    slot = discover(host_tree('workstation'), node='ws')['slots'][0]
    assert slot['fingerprint'] == {
        'gpu': {'address': '0000:01:00.0', 'vendor_id': '10de', 'device_id': '2684',
                'subsystem_vendor_id': '1043', 'subsystem_device_id': '889d', 'serial': None,
                'pcie_path': 'pci0000:00/0000:00:01.0/0000:01:00.0'},
        'companions': [{'address': '0000:01:00.1', 'vendor_id': '10de', 'device_id': '22ba',
                        'subsystem_vendor_id': '1043', 'subsystem_device_id': '889d',
                        'serial': None, 'pcie_path': 'pci0000:00/0000:00:01.0/0000:01:00.1'}],
        'nvme': {'address': '0000:02:00.0', 'vendor_id': '144d', 'device_id': 'a80c',
                 'subsystem_vendor_id': '144d', 'subsystem_device_id': '0000', 'serial': None,
                 'pcie_path': 'pci0000:00/0000:00:06.0/0000:02:00.0'},
        'fabric_pf': {'address': '0000:03:00.0', 'vendor_id': '15b3', 'device_id': '101d',
                      'subsystem_vendor_id': '15b3', 'subsystem_device_id': '0000',
                      'serial': None, 'pcie_path': 'pci0000:00/0000:00:06.2/0000:03:00.0'},
    }


def test_real_h100_passthrough_guest_reports_the_iommu_off_and_offers_nothing(host_tree):
    result = without_fingerprints(discover(host_tree('h100_guest'), node='guest'))
    assert result == {
        'node_id': 'guest',
        'approval_required': True,
        'iommu_enabled': False,
        'numa_nodes': {'0': '0-15'},
        'host_cpulist': '0',
        'host_reserved_cores': 1,
        'host_reserved_memory_mib': 16384,
        'require_nvme': True,
        'require_fabric': True,
        'gpus': [
            {'address': '0000:00:06.0', 'vendor_id': '10de', 'device_id': '2330',
             'subsystem_vendor_id': '10de', 'subsystem_device_id': '16c1', 'class': '0x030200',
             'numa_node': 0, 'iommu_group': None, 'iommu_group_devices': [], 'driver': 'nvidia',
             'link': link('32.0 GT/s PCIe', 16), 'reset_method': 'flr'},
        ],
        'excluded': [],
        'absent': [],
        'slots': [
            {'slot_index': 0, 'slot_id': 'guest-s0', 'gpu_address': '0000:00:06.0',
             'companions': [], 'numa_node': 0, 'cpulist': '1-15', 'vcpus': 15,
             # The captured resource file: 16 MiB, 128 GiB and 32 MiB, all three 64-bit in that guest.
             'memory_mib': 240640, 'bar_mib': 131120, 'host_cpulist': '0', 'nvme_address': None,
             'fabric_pf_address': None, 'fabric_vf_index': None, 'fabric_vf_pci_address': None,
             'mac': mac('guest', 0), 'ip': '10.100.0.10',
             'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'none',
                                   'fabric_vf_pci_address': None},
             'eligible': False,
             'reasons': [
                 IOMMU_OFF,
                 'no free NVMe controller shares a PCIe switch or root complex with '
                 '0000:00:06.0 (require_nvme is true)',
                 'no SR-IOV capable fabric PF (class 0207/0200) shares a PCIe switch, root complex '
                 'or NUMA node with 0000:00:06.0 (require_fabric is true)',
             ]},
        ],
    }


def test_segment_0001_devices_pair_and_get_their_vf_address(host_tree):
    result = without_fingerprints(discover(host_tree('segment1'), node='seg'))
    assert [g['address'] for g in result['gpus']] == ['0001:01:00.0']
    assert result['slots'] == [{
        'slot_index': 0, 'slot_id': 'seg-s0', 'gpu_address': '0001:01:00.0', 'companions': [],
        # No thread_siblings_list: each CPU is a core; CPU 0 is the host's.
        'numa_node': 0, 'cpulist': '1-7', 'vcpus': 7, 'memory_mib': 240640, 'host_cpulist': '0',
        # A100: 128 GiB + 32 MiB; NVMe 16 KiB; the VF's 1 MiB (4 MiB / 4 VFs).
        'bar_mib': 131106,
        'nvme_address': '0001:02:00.0',
        'fabric_pf_address': '0001:03:00.0', 'fabric_vf_index': 0,
        # sriov_offset 8, stride 1: routing id 03:00.0 + 8 = 03:01.0
        'fabric_vf_pci_address': '0001:03:01.0', 'mac': mac('seg', 0), 'ip': '10.100.0.10',
        'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                              'fabric_vf_pci_address': '0001:03:01.0'},
        'eligible': True, 'reasons': []}]


HGX_SLOTS = [
    # gpu, nvme, fabric PF, numa node: each GPU pairs behind its own PCIe switch, in order;
    # its CPU slice: each node's core 0 is the host's, its 55 other cores go 14, 14, 14, 13.
    ('0000:18:00.0', '0000:1c:00.0', '0000:1a:00.0', 0, '1-14,113-126'),
    ('0000:19:00.0', '0000:1d:00.0', '0000:1b:00.0', 0, '15-28,127-140'),
    ('0000:3a:00.0', '0000:3e:00.0', '0000:3c:00.0', 0, '29-42,141-154'),
    ('0000:3b:00.0', '0000:3f:00.0', '0000:3d:00.0', 0, '43-55,155-167'),
    ('0000:9a:00.0', '0000:9e:00.0', '0000:9c:00.0', 1, '57-70,169-182'),
    ('0000:9b:00.0', '0000:9f:00.0', '0000:9d:00.0', 1, '71-84,183-196'),
    ('0000:ba:00.0', '0000:be:00.0', '0000:bc:00.0', 1, '85-98,197-210'),
    ('0000:bb:00.0', '0000:bf:00.0', '0000:bd:00.0', 1, '99-111,211-223'),
]


def test_hgx_pairs_each_gpu_with_the_nvme_and_pf_behind_its_switch(host_tree):
    result = without_fingerprints(discover(host_tree('hgx'), node='hgx'))
    cpus = {0: '0-55,112-167', 1: '56-111,168-223'}
    expected = []
    for index, (gpu, nvme, pf, node, cpulist) in enumerate(HGX_SLOTS):
        vf = pf[:-1] + '1'
        expected.append({
            'slot_index': index, 'slot_id': 'hgx-s%d' % index, 'gpu_address': gpu,
            'companions': [], 'numa_node': node, 'cpulist': cpulist, 'vcpus': 28 if index % 4 < 3 else 26,
            # (1056348672 kB // 1024 - 16384) // 4 slots = 253801 MiB, down to 247 GiB
            'memory_mib': 252928, 'host_cpulist': '0,56,112,168', 'nvme_address': nvme,
            # One PF per GPU: VF 0 of its own PF each, as before PFs were shared.
            # H100 BAR1 128 GiB + BAR3 32 MiB, the NVMe's 16 KiB, the VF's 1 MiB.
            'bar_mib': 131106,
            'fabric_pf_address': pf, 'fabric_vf_index': 0, 'fabric_vf_pci_address': vf, 'mac': mac('hgx', index),
            'ip': '10.100.0.%d' % (10 + index),
            'capacity_metadata': {'storage_ownership': 'slice', 'fabric_claim_mode': 'per_slot_vf',
                                  'fabric_vf_pci_address': vf},
            'eligible': True, 'reasons': []})
    assert result['slots'] == expected
    assert result['numa_nodes'] == {'0': cpus[0], '1': cpus[1]}
    assert result['host_cpulist'] == '0,56,112,168'
    # NVSwitches (NVIDIA, bridge class) and the ASPEED BMC console are not GPUs; the boot
    # NVMe (root on LVM, EFI partition mounted) is host storage.
    assert [g['address'] for g in result['gpus']] == [s[0] for s in HGX_SLOTS]
    assert all(g['class'] == '0x030200' and g['reset_method'] == 'bus' for g in result['gpus'])
    assert result['excluded'] == [{'address': '0000:04:00.0',
                                   'reason': 'host storage: nvme8n1p1 is mounted on /boot/efi'}]


def test_the_gpu_serial_is_part_of_the_fingerprint(host_tree):
    slot = discover(host_tree('hgx'), node='hgx')['slots'][0]
    assert slot['fingerprint']['gpu']['serial'] == '1652000000000'


def test_gpu_vendors_filter_and_normalise(host_tree):
    tree = host_tree('workstation')
    assert discover(tree, gpu_vendors=['0x1002'])['gpus'] == []
    assert len(discover(tree, gpu_vendors=['0x10DE'])['gpus']) == 2
    # The iGPU is Intel's but is the console: never a GPU for a slot.
    assert [g['address'] for g in discover(tree, gpu_vendors=['8086'])['gpus']] == []


@pytest.mark.parametrize('vendor', ['10dex', '', '1234567', 'zz', '10de;reboot'])
def test_invalid_vendor_ids_are_refused(host_tree, vendor):
    with pytest.raises(PciError, match='not a PCI vendor id'):
        discover(host_tree('workstation'), gpu_vendors=[vendor])


def test_requirements_can_be_relaxed(host_tree):
    slot = discover(host_tree('h100_guest'), require_nvme=False, require_fabric=False)['slots'][0]
    assert slot['reasons'] == [IOMMU_OFF]


def test_boot_disk_on_lvm_only_is_still_host_storage(tmp_path):
    b = SysfsBuilder(str(tmp_path / 'sys'), proc_root=str(tmp_path / 'proc'))
    b.numa_nodes({0: '0-3'})
    root = b.pci_root('0000:00', numa_node=0)
    b.device('0000:00:04.0', root, 0x010802, '144d', 'a808', driver='nvme')
    b.nvme('0000:00:04.0', 'nvme0', partitions={'nvme0n1': ['nvme0n1p1']},
           holders={'nvme0n1p1': [('dm-3', 'vg-data')]})
    b.mounts(['/dev/mapper/vg-data /srv ext4 rw 0 0'])
    result = Discovery('n', str(tmp_path / 'sys'), str(tmp_path / 'proc')).run()
    assert result['excluded'] == [{'address': '0000:00:04.0',
                                   'reason': 'host storage: dm-3 is mounted on /srv'}]
    # An LVM member that is not mounted is still the host's.
    b.mounts([])
    result = Discovery('n', str(tmp_path / 'sys'), str(tmp_path / 'proc')).run()
    assert result['excluded'] == [{'address': '0000:00:04.0',
                                   'reason': 'host storage: nvme0n1p1 is held by dm-3'}]


def test_unknown_numa_node_on_a_two_node_host_is_not_eligible(host_tree):
    sys_root, proc_root = host_tree('hgx')
    with open(os.path.join(sys_root, 'bus/pci/devices/0000:18:00.0/numa_node'), 'w') as f:
        f.write('-1\n')
    slot = Discovery('n', sys_root, proc_root).run()['slots'][0]
    assert slot['numa_node'] == -1 and slot['cpulist'] is None and not slot['eligible']
    assert slot['reasons'] == ['0000:18:00.0 does not report its NUMA node on a host with 2 '
                               'nodes, so its vCPUs and memory cannot be pinned']


def test_missing_attributes_are_reported_not_fatal(host_tree):
    sys_root, proc_root = host_tree('workstation')
    dev = os.path.join(sys_root, 'bus/pci/devices')
    for path in ('0000:01:00.0/reset_method', '0000:01:00.0/numa_node',
                 '0000:03:00.0/sriov_offset', '0000:04:00.0/class'):
        os.unlink(os.path.join(dev, path))
    discovery = Discovery('n', sys_root, proc_root)
    result = discovery.run()
    gpu, slot = result['gpus'][0], result['slots'][0]
    assert gpu['reset_method'] is None and gpu['numa_node'] == 0
    assert slot['fabric_vf_pci_address'] is None
    assert slot['reasons'] == ['fabric PF 0000:03:00.0 does not report sriov_offset/sriov_stride,'
                               ' so its VF address cannot be known']
    assert discovery.warnings == ['0000:04:00.0 has no readable class attribute; skipped',
                                  '0000:01:00.0 has no readable numa_node attribute']


def test_a_bridge_in_the_group_is_fine_another_device_is_not(tmp_path):
    b = SysfsBuilder(str(tmp_path / 'sys'), proc_root=str(tmp_path / 'proc'))
    b.numa_nodes({0: '0-3'})
    root = b.pci_root('0000:00', numa_node=0)
    group = b.new_group()
    b.bridge('0000:00:01.0', root, group=group)
    b.device('0000:01:00.0', '0000:00:01.0', 0x030200, '10de', '2330', group=group)
    b.device('0000:01:00.1', '0000:00:01.0', 0x040300, '10de', '22a3', group=group)
    other = b.new_group()
    b.device('0000:02:00.0', '0000:00:01.0', 0x030200, '10de', '2330', group=other)
    b.device('0000:03:00.0', '0000:00:01.0', 0x020000, '8086', '1521', driver='igb', group=other)
    slots = Discovery('n', str(tmp_path / 'sys'), str(tmp_path / 'proc'),
                      require_nvme=False, require_fabric=False).run()['slots']
    assert slots[0]['companions'] == ['0000:01:00.1'] and slots[0]['eligible']
    assert slots[1]['companions'] == [] and not slots[1]['eligible']
    assert 'also holds 0000:03:00.0 (Ethernet controller, class 0x020000, driver igb)' \
        in slots[1]['reasons'][0]


def test_each_nvme_and_pf_goes_to_one_slot_at_most(host_tree):
    sys_root, proc_root = host_tree('hgx')
    # Take one NVMe away from the first switch: its two GPUs compete for the other.
    shutil.rmtree(os.path.realpath(os.path.join(sys_root, 'bus/pci/devices/0000:1d:00.0')))
    os.unlink(os.path.join(sys_root, 'bus/pci/devices/0000:1d:00.0'))
    slots = Discovery('n', sys_root, proc_root).run()['slots']
    nvmes = [s['nvme_address'] for s in slots if s['nvme_address']]
    assert len(nvmes) == len(set(nvmes)) == 7
    assert slots[0]['nvme_address'] == '0000:1c:00.0' and slots[1]['nvme_address'] is None


def test_a_tree_without_pci_devices_is_refused(tmp_path):
    with pytest.raises(PciError, match='no bus/pci/devices directory'):
        Discovery('n', str(tmp_path), str(tmp_path)).run()


def test_an_unreadable_iommu_group_listing_is_an_error_not_an_empty_host(host_tree):
    sys_root, proc_root = host_tree('workstation')
    groups = os.path.join(sys_root, 'kernel/iommu_groups')
    shutil.rmtree(groups)
    with open(groups, 'w') as handle:  # exists, but cannot be listed
        handle.write('')
    with pytest.raises(PciError, match='cannot read .*kernel/iommu_groups'):
        Discovery('n', sys_root, proc_root).run()


@pytest.mark.skipif(not os.path.isdir('/sys/bus/pci/devices'), reason='no PCI bus here')
def test_this_machines_real_sysfs_is_read_without_error():
    result = Discovery('real', '/sys', '/proc').run()
    assert isinstance(result['iommu_enabled'], bool)
    assert result['approval_required'] is True
    assert all(not s['eligible'] for s in result['slots']) or result['iommu_enabled']
