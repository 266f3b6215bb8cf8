# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_discovery_info as Ansible runs it: read-only, clear errors, the tree untouched."""

from __future__ import annotations

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import slot_discovery_info
from tests.sysfs.snapshot import snapshot
from tests.unit.module_runner import run_module


@pytest.mark.parametrize('check_mode', [False, True])
def test_discovery_reports_and_changes_nothing(capsys, host_tree, tmp_path, check_mode):
    sys_root, proc_root = host_tree('hgx')
    before = snapshot(str(tmp_path))
    result = run_module(slot_discovery_info, {'node_id': 'hgx-01', 'sysfs_root': sys_root,
                                              'proc_root': proc_root}, check_mode=check_mode,
                        capsys=capsys)
    assert result['changed'] is False
    assert result['approval_required'] is True
    assert [s['slot_id'] for s in result['slots']] == ['hgx-01-s%d' % i for i in range(8)]
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize('node_id', ['', 'a/b', '../etc', 'x;reboot', 'a b', '-lead', 'n' * 64,
                                     'ok\nnext', 'n1\n'])
def test_a_hostile_node_id_is_refused(capsys, host_tree, node_id):
    sys_root, proc_root = host_tree('workstation')
    result = run_module(slot_discovery_info, {'node_id': node_id, 'sysfs_root': sys_root,
                                              'proc_root': proc_root}, capsys=capsys)
    assert result['failed'] is True
    assert result['msg'].startswith('node_id %r is not a valid node id' % node_id)


def test_a_tree_that_is_not_sysfs_fails_clearly(capsys, tmp_path):
    result = run_module(slot_discovery_info, {'node_id': 'n', 'sysfs_root': str(tmp_path)},
                        capsys=capsys)
    assert result['failed'] is True
    assert 'has no bus/pci/devices directory' in result['msg']


def test_an_invalid_fabric_class_is_refused(capsys, host_tree):
    sys_root, proc_root = host_tree('workstation')
    result = run_module(slot_discovery_info, {'node_id': 'n', 'sysfs_root': sys_root,
                                              'proc_root': proc_root, 'fabric_classes': ['02']},
                        capsys=capsys)
    assert result['failed'] is True and 'is not a PCI class and subclass' in result['msg']


def test_missing_attributes_become_warnings(capsys, host_tree):
    import os
    sys_root, proc_root = host_tree('workstation')
    os.unlink(os.path.join(sys_root, 'bus/pci/devices/0000:04:00.0/class'))
    result = run_module(slot_discovery_info, {'node_id': 'n', 'sysfs_root': sys_root,
                                              'proc_root': proc_root}, capsys=capsys)
    assert '0000:04:00.0 has no readable class attribute; skipped' in [
        w['event']['msg'] for w in result['warnings']]


@pytest.mark.parametrize('option, value, fragment', [
    ('host_reserved_cores', 'nan', "host_reserved_cores"),
    # (float('inf') is not here: ansible-core's own int conversion raises OverflowError on it
    # before the module runs; Discovery refuses it, tests/unit/.../test_slices.py.)
    ('host_reserved_cores', 1.5, 'host_reserved_cores'),
    ('host_reserved_cores', 2 ** 64, 'host_reserved_cores must be a whole number from 1 to 8192, not 18446744073709551616'),
    ('host_reserved_cores', -1, 'host_reserved_cores must be a whole number from 1 to 8192, not -1'),
    ('host_reserved_memory_mib', -16384, 'host_reserved_memory_mib must be a whole number from 0 to 67108864'),
    ('host_reserved_memory_mib', 2 ** 64, 'host_reserved_memory_mib must be a whole number from 0 to 67108864'),
])
def test_hostile_reservations_are_refused_naming_the_option(capsys, host_tree, option, value, fragment):
    sys_root, proc_root = host_tree('workstation')
    result = run_module(slot_discovery_info, {'node_id': 'n', 'sysfs_root': sys_root, 'proc_root': proc_root,
                                              option: value}, capsys=capsys)
    assert result['failed'] is True and fragment in result['msg'], result['msg']


def test_the_reservations_shape_the_slices(capsys, host_tree):
    sys_root, proc_root = host_tree('hgx')
    result = run_module(slot_discovery_info, {'node_id': 'n', 'sysfs_root': sys_root, 'proc_root': proc_root,
                                              'host_reserved_cores': 4, 'host_reserved_memory_mib': 65536}, capsys=capsys)
    # 52 cores a node for 4 slots: 13 each; (1031590 - 65536) // 4 = 241513 MiB, down to 235 GiB.
    assert result['host_cpulist'] == '0-3,56-59,112-115,168-171'
    assert [(s['cpulist'], s['vcpus'], s['memory_mib']) for s in result['slots'][:2]] == [
        ('4-16,116-128', 26, 240640), ('17-29,129-141', 26, 240640)]
