# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hugepages for a slot VM's memory: the node's free pages of that size, as the kernel counts them
(nodeN/hugepages/hugepages-SIZEkB/free_hugepages), must cover memory_mib before the VM starts."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _hugepages as hugepages
from ansible_collections.gpuaas.slice.plugins.module_utils import _slot_vm
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import Sysfs
from ansible_collections.gpuaas.slice.plugins.modules import slot_vm
from tests.sysfs.builder import SysfsBuilder


@pytest.fixture
def host(tmp_path):
    """Two NUMA nodes: node 0 with 2 MiB pages (600 free of 1024) and 1 GiB pages (2 free of 4),
    node 1 with no hugepages reserved; the host-wide pool of 2 MiB pages."""
    root = str(tmp_path / 'sys')
    b = SysfsBuilder(root)
    b.numa_nodes({0: '0-7', 1: '8-15'})
    b.hugepages(2048, 1024, 600, node=0)
    b.hugepages(1048576, 4, 2, node=0)
    b.hugepages(2048, 0, 0, node=1)
    b.hugepages(2048, 1024, 600)
    return root


@pytest.mark.parametrize('node, size, memory, expected', [
    (0, 2048, 1200, None),                           # 600 pages of 2 MiB, exactly
    (0, 1048576, 2048, None),                        # 2 pages of 1 GiB
    (None, 2048, 1024, None),                        # numatune off: the host's pool
    (0, 2048, 1202, "NUMA node 0 has 600 free hugepages of 2048 KiB; the slot's 1202 MiB of memory needs 601: "
                    "reserve more ({root}/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages) "
                    "or turn hugepages off"),
    (0, 1048576, 3072, 'NUMA node 0 has 2 free hugepages of 1048576 KiB; the slot\'s 3072 MiB of memory needs 3'),
    (1, 2048, 2, 'NUMA node 1 has 0 free hugepages of 2048 KiB; the slot\'s 2 MiB of memory needs 1'),
    (None, 2048, 4096, 'the host has 600 free hugepages of 2048 KiB; the slot\'s 4096 MiB of memory needs 2048'),
    (1, 1048576, 1024, 'NUMA node 1 has no hugepages of 1048576 KiB ({root}/devices/system/node/node1/hugepages/'
                       'hugepages-1048576kB/free_hugepages); sizes it has, in KiB: 2048'),
    (0, 1048576, 1536, 'memory_mib 1536 is not a whole number of 1048576 KiB hugepages: give a memory size that '
                       'is a multiple of 1048576 KiB'),
    (0, None, 1024, 'hugepages=true needs hugepage_size_kb, so that the free hugepages of NUMA node 0 can be '
                    'checked before the start (sizes it has, in KiB: 2048, 1048576)'),
])
def test_the_free_hugepages_of_the_node_must_cover_the_memory(host, node, size, memory, expected):
    found = hugepages.problem(Sysfs(host), node, size, memory)
    assert found is None if expected is None else found.startswith(expected.format(root=host)), found


def test_a_free_count_that_cannot_be_read_refuses(host):
    path = os.path.join(host, 'devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages')
    os.unlink(path)
    os.mkdir(path)
    assert hugepages.problem(Sysfs(host), 0, 2048, 2) == (
        'the free hugepages of 2048 KiB on NUMA node 0 cannot be read (%s): refusing to start without knowing' % path)


class Module:
    def __init__(self, tmp_path, **params):
        self.params = {key: spec.get('default') for key, spec in slot_vm.argument_spec().items()}
        self.params.update(dict(dict(slot_id='gpu-node-01-s3', memory_mib=1024, cpulist='0-1', numa_node=1,
                                     lease_file=str(tmp_path / 'leases'), console_log_dir=str(tmp_path),
                                     allowed_dirs=[str(tmp_path)], passthrough=False), **params))
        self.check_mode = self._diff = False


def test_slot_vm_checks_them_before_a_start_and_only_with_hugepages(tmp_path, host):
    vm = _slot_vm.SlotVm(Module(tmp_path, sysfs_root=host, hugepages=True, hugepage_size_kb=2048))
    assert any(problem.startswith("NUMA node 1 has 0 free hugepages of 2048 KiB; the slot's 1024 MiB of memory needs 512")
               for problem in vm.start_problems(vm.spec()))
    vm = _slot_vm.SlotVm(Module(tmp_path, sysfs_root=host, hugepages=True, hugepage_size_kb=2048, numa_node=0))
    assert not any('hugepages' in problem for problem in vm.start_problems(vm.spec()))
    vm = _slot_vm.SlotVm(Module(tmp_path, sysfs_root=host))
    assert not any('hugepages' in problem for problem in vm.start_problems(vm.spec()))
