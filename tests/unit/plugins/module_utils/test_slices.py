# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each slot's own CPUs and memory: discovery splits every NUMA node among its slots.

Table-driven on the kernel model (tests/sysfs/builder.py): 1 to 8 slots a node, SMT on and
off, odd core counts, nodes that cannot give each slot a core or a GiB, broken topology and
meminfo files, hostile option values.
"""

from __future__ import annotations

import itertools
import os

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError, parse_cpulist

from tests.sysfs.builder import SysfsBuilder

GIB_KB = 1024 * 1024


def build(tmp_path, slots_per_node, cores, smt, nodes=2, mem_total_kib=256 * GIB_KB):
    """``nodes`` NUMA nodes of ``cores`` cores each (CPU numbering as Intel's: node n has CPUs
    n*cores.., their second threads nodes*cores later), each with ``slots_per_node`` GPUs."""
    b = SysfsBuilder(str(tmp_path / 'sys'), proc_root=str(tmp_path / 'proc'))
    total = nodes * cores
    cpus = {}
    for node in range(nodes):
        first = '%d-%d' % (node * cores, (node + 1) * cores - 1)
        cpus[node] = first + (',%d-%d' % (total + node * cores, total + (node + 1) * cores - 1) if smt else '')
    b.numa_nodes(cpus, smt=total if smt else 0, mem_total_kib=mem_total_kib)
    for node in range(nodes):
        root = b.pci_root('0000:%02x' % (node * 0x40), numa_node=node)
        for number in range(slots_per_node):
            bridge = '0000:%02x:%02x.0' % (node * 0x40, number + 1)
            b.bridge(bridge, root)
            b.device('0000:%02x:00.0' % (node * 0x40 + number + 1), bridge, 0x030200, '10de', '2330')
    return str(tmp_path / 'sys'), str(tmp_path / 'proc'), b


def discover(tree, **kwargs):
    return Discovery('n1', tree[0], tree[1], require_nvme=False, require_fabric=False, **kwargs).run()


def core_of(cpu, cores, nodes, smt):
    return cpu % (nodes * cores) if smt else cpu


@pytest.mark.parametrize('slots_per_node, cores, smt', list(itertools.product(range(1, 9), (9, 16, 56), (True, False))))
def test_each_slot_gets_whole_cores_of_its_own_node_equal_to_one_core(tmp_path, slots_per_node, cores, smt):
    result = discover(build(tmp_path, slots_per_node, cores, smt))
    threads = 2 if smt else 1
    host = parse_cpulist(result['host_cpulist'])
    # The host keeps each node's first core, siblings included.
    assert host == sorted([0, cores] + ([2 * cores, 3 * cores] if smt else []))
    seen = set(host)
    for node in (0, 1):
        slots = [s for s in result['slots'] if s['numa_node'] == node]
        assert len(slots) == slots_per_node and all(s['eligible'] for s in slots), [s['reasons'] for s in slots]
        node_cpus = set(parse_cpulist(result['numa_nodes'][str(node)]))
        sizes = []
        for slot in slots:
            cpus = parse_cpulist(slot['cpulist'])
            assert slot['vcpus'] == len(cpus) and slot['host_cpulist'] == result['host_cpulist']
            assert set(cpus) <= node_cpus and not set(cpus) & seen, 'slices overlap or leave the node'
            seen.update(cpus)
            slot_cores = {core_of(cpu, cores, 2, smt) for cpu in cpus}
            assert len(cpus) == threads * len(slot_cores), 'a core is split between slots'
            sizes.append(len(slot_cores))
        assert sum(sizes) == cores - 1 and max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)
        # (256 GiB - 16 GiB) / slots, rounded down to whole GiB.
        assert {s['memory_mib'] for s in slots} == {240 // slots_per_node * 1024}
    assert seen == set(range(2 * cores * threads)), 'every CPU is the host\'s or one slot\'s'


def test_an_odd_split_gives_the_extra_cores_to_the_first_slots(tmp_path):
    result = discover(build(tmp_path, 3, 9, True, nodes=1))
    # 8 cores after the host's for 3 slots: 3, 3, 2; CPU c and c + 9 are one core.
    assert result['host_cpulist'] == '0,9'
    assert [(s['cpulist'], s['vcpus']) for s in result['slots']] == [
        ('1-3,10-12', 6), ('4-6,13-15', 6), ('7-8,16-17', 4)]


def test_more_reserved_cores_than_the_node_has_refuses_its_slots_naming_the_numbers(tmp_path):
    tree = build(tmp_path, 4, 6, True)
    result = discover(tree, host_reserved_cores=3)
    # The host keeps its cores all the same.
    assert result['host_cpulist'] == '0-2,6-8,12-14,18-20'
    for slot in result['slots']:
        assert not slot['eligible'] and slot['cpulist'] is None and slot['vcpus'] is None
        assert slot['reasons'] == ['NUMA node %d has 6 cores; host_reserved_cores keeps 3 for the host, which '
                                   'leaves 3 for its 4 slots, and each slot needs at least one core of its own: '
                                   'lower host_reserved_cores or approve fewer slots' % slot['numa_node']]
    assert discover(tree, host_reserved_cores=40)['host_cpulist'] == '0-23'
    assert discover(tree, host_reserved_cores=40)['slots'][0]['reasons'][0].startswith(
        'NUMA node 0 has 6 cores; host_reserved_cores keeps 40 for the host, which leaves 0 for its 4 slots')
    # Two reserved cores: the host keeps each node's first two.
    result = discover(tree, host_reserved_cores=2)
    assert result['host_cpulist'] == '0-1,6-7,12-13,18-19'
    assert [s['cpulist'] for s in result['slots'][:4]] == ['2,14', '3,15', '4,16', '5,17']


def test_memory_that_leaves_less_than_a_gib_per_slot_is_refused(tmp_path):
    tree = build(tmp_path, 4, 8, False, mem_total_kib=19 * GIB_KB)
    slot = discover(tree)['slots'][0]
    assert slot['memory_mib'] is None and not slot['eligible']
    assert slot['reasons'] == ['NUMA node 0 has 19456 MiB of memory; host_reserved_memory_mib keeps 16384 for '
                               'the host, which leaves less than 1 GiB for each of its 4 slots: lower '
                               'host_reserved_memory_mib']
    assert {s['memory_mib'] for s in discover(tree, host_reserved_memory_mib=4096)['slots']} == {3072}
    assert {s['memory_mib'] for s in discover(tree, host_reserved_memory_mib=0)['slots']} == {4096}


@pytest.mark.parametrize('content', [None, '', 'Node 0 MemFree: 1000 kB\n', 'Node 1 MemTotal: 268435456 kB\n',
                                     'Node 0 MemTotal: 268435456 MB\n', 'Node 0 MemTotal: -5 kB\n'])
def test_a_node_whose_meminfo_cannot_be_read_refuses_its_slots(tmp_path, content):
    sys_root, proc_root, _b = build(tmp_path, 2, 8, False)
    path = os.path.join(sys_root, 'devices/system/node/node0/meminfo')
    if content is None:
        os.unlink(path)
    else:
        with open(path, 'w') as handle:
            handle.write(content)
    result = discover((sys_root, proc_root))
    for slot in result['slots']:
        if slot['numa_node'] == 0:
            assert not slot['eligible'] and slot['memory_mib'] is None and slot['cpulist'] is None
            assert slot['reasons'] == ['NUMA node 0: %s is missing or has no MemTotal line, so its memory '
                                       'cannot be shared among its slots' % path]
        else:
            assert slot['eligible'] and slot['memory_mib'] == 120 * 1024


def test_threads_that_disagree_on_their_siblings_refuse_the_node(tmp_path):
    sys_root, proc_root, b = build(tmp_path, 1, 4, True, nodes=1)
    b.thread_siblings(4, '4')          # CPU 0 says 0,4; CPU 4 says it is alone
    slot = discover((sys_root, proc_root))['slots'][0]
    assert slot['reasons'] == ['NUMA node 0: the thread_siblings_list files of CPUs 0,4 disagree, '
                               'so its cores cannot be known']
    b.thread_siblings(4, '0')          # a list without the CPU itself
    assert discover((sys_root, proc_root))['slots'][0]['reasons'] == [
        "NUMA node 0: %s names 0, which does not hold CPU 4 itself"
        % os.path.join(sys_root, 'devices/system/cpu/cpu4/topology/thread_siblings_list')]


def test_a_node_without_slots_keeps_its_cores_for_the_host_and_needs_no_meminfo(tmp_path):
    sys_root, proc_root, b = build(tmp_path, 1, 4, False, nodes=1)
    b.numa_nodes({0: '0-3', 1: '4-7'}, smt=0, mem_total_kib={0: 64 * GIB_KB, 1: None})
    result = discover((sys_root, proc_root))
    assert result['host_cpulist'] == '0,4'
    assert [(s['cpulist'], s['memory_mib'], s['eligible']) for s in result['slots']] == [('1-3', 48 * 1024, True)]


@pytest.mark.parametrize('option', ['host_reserved_cores', 'host_reserved_memory_mib'])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), 2 ** 64, -1, 1.5, True, '2', None])
def test_hostile_option_values_are_refused_naming_the_option(tmp_path, option, value):
    tree = build(tmp_path, 1, 4, False, nodes=1)
    with pytest.raises(ContractError, match='^%s must be a whole number from ' % option):
        discover(tree, **{option: value})


def test_zero_reserved_cores_is_refused_the_emulator_needs_a_host_cpu(tmp_path):
    with pytest.raises(ContractError, match='host_reserved_cores must be a whole number from 1 to 8192, not 0'):
        discover(build(tmp_path, 1, 4, False, nodes=1), host_reserved_cores=0)
