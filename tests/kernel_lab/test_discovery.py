# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_discovery_info against the lab guest's real /sys."""

from __future__ import annotations

from ansible_collections.gpuaas.slice.plugins.modules import slot_discovery_info
from tests.unit.module_runner import run_module

from .conftest import LAB_GPU_VENDOR, SHARED_GPU, SHARED_NIC, SLOTS


def discover(capsys):
    return run_module(slot_discovery_info, {
        'node_id': 'lab', 'gpu_vendors': [LAB_GPU_VENDOR],
        # The lab's fabric PFs are SR-IOV NVMe controllers.
        'fabric_classes': ['0108'],
        # A node has 1.5 GiB: the host keeps 256 MiB of it, and its first core.
        'host_reserved_memory_mib': 256,
    }, capsys=capsys)


def test_discovery_finds_the_stand_ins_their_groups_and_numa_nodes(capsys):
    result = discover(capsys)
    assert result['iommu_enabled'] is True
    assert result['numa_nodes'] == {'0': '0-1', '1': '2-3'}
    assert result['host_cpulist'] == '0,2'
    assert [g['address'] for g in result['gpus']] == [SHARED_GPU] + [s[0] for s in SLOTS]
    assert all(g['class'] == '0x038000' and g['vendor_id'] == '1234' for g in result['gpus'])

    shared, *slots = result['slots']
    assert shared['gpu_address'] == SHARED_GPU
    assert shared['eligible'] is False
    assert any(SHARED_NIC in reason and 'Ethernet controller' in reason
               for reason in shared['reasons'])

    for slot, (gpu, nvme, pf, node) in zip(slots, SLOTS):
        assert slot['gpu_address'] == gpu
        assert slot['numa_node'] == node
        # The node's second core is the slot's slice; its memory share is whole GiB.
        assert (slot['cpulist'], slot['vcpus'], slot['memory_mib']) == (str(2 * node + 1), 1, 1024)
        assert slot['nvme_address'] == nvme
        assert slot['fabric_pf_address'] == pf
        # VF 0 at the PF's real sriov_offset (1) and stride (1)
        assert slot['fabric_vf_pci_address'] == pf[:-1] + '1'
        assert slot['companions'] == []
        assert slot['reasons'] == [] and slot['eligible'] is True


def test_discovery_changes_nothing_in_the_real_sysfs(capsys):
    import os
    before = {a: os.path.realpath('/sys/bus/pci/devices/%s/driver' % a)
              for a in os.listdir('/sys/bus/pci/devices')}
    discover(capsys)
    after = {a: os.path.realpath('/sys/bus/pci/devices/%s/driver' % a)
             for a in os.listdir('/sys/bus/pci/devices')}
    assert before == after
