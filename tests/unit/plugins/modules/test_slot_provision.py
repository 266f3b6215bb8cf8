# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_provision: each step's options checked by that step's module spec before anything runs,
and a failing step named, with no later step run. The whole path on real Open vSwitch, libvirt
and QEMU is tests/functional/lab (allocate, killed at every step, then finished or released)."""

from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuaas.slice.plugins.modules import slot_provision
from tests.unit.module_runner import run_module

SLOT, ALLOC = 'itest-s0', 'alloc-1'
NETWORK = "Wire the slot's network (DHCP entry, port, flows)"


@pytest.fixture
def node(tmp_path):
    dirs = dict((k, str(tmp_path / k)) for k in ('leases', 'disks', 'seeds', 'hosts', 'images', 'console', 'vfio'))
    for path in dirs.values():
        os.makedirs(path)
    lease = {'slot_id': SLOT, 'allocation_id': ALLOC, 'phase': 'provisioning', 'created_at': '2026-12-01T10:00:00Z',
             'updated_at': '2026-12-01T10:00:00Z', 'data': {'passthrough': False}}
    with open(os.path.join(dirs['leases'], SLOT + '.json'), 'w') as handle:
        json.dump(lease, handle)
    return dirs


def args(dirs, **vm):
    return dict(
        slot_id=SLOT, allocation_id=ALLOC, telemetry_token='t' * 43, lease_dir=dirs['leases'], ssh_host='node.example.com',
        vfio_state_dir=dirs['vfio'],
        network={'hostname': 'gpu-itest-s0', 'hosts_dir': dirs['hosts'],
                 'dnsmasq_pid_file': os.path.join(dirs['hosts'], 'none.pid')},
        image={'source': os.path.join(dirs['images'], 'base.qcow2'), 'checksum': 'sha256:' + '0' * 64,
               'source_dirs': [dirs['images']], 'image_dir': dirs['disks'], 'size': '1G'},
        seed={'hostname': 'gpu-itest-s0', 'ssh_keys': [], 'seed_dir': dirs['seeds']},
        vm=dict({'uri': 'test:///default', 'memory_mib': 256, 'vcpus': 1, 'cpulist': '0',
                 'console_log_dir': dirs['console'], 'allowed_dirs': [dirs['disks'], dirs['seeds'], dirs['console']],
                 'passthrough': False}, **vm))


def tree(dirs):
    return sorted(os.path.join(d, name) for d in dirs.values() for name in os.listdir(d))


def lease(dirs):
    with open(os.path.join(dirs['leases'], SLOT + '.json')) as handle:
        return json.load(handle)


@pytest.mark.parametrize('vm, message', [
    ({'memory_mib': 'lots'}, "vm: argument 'memory_mib' is of type"),
    ({'machine_type': 'q35'}, 'vm: machine_type. Supported parameters include'),
    ({'domain_type': 'xen'}, 'vm: value of domain_type must be one of: kvm, qemu, got: xen'),
    ({'initrd': '/boot/initrd.img'}, 'vm: missing parameter(s) required by \'initrd\': kernel'),
    ({'memory_mib': '1e999999999'}, 'vm: memory_mib must be a whole number of at most 2**53 either side of 0'),
])
def test_every_steps_options_are_checked_by_its_module_spec_before_the_first_step(node, capsys, vm, message):
    before = tree(node)
    result = run_module(slot_provision, args(node, **vm), capsys=capsys)
    assert result['failed'] and message in result['msg'], result['msg']
    assert tree(node) == before and lease(node)['phase'] == 'provisioning'


@pytest.mark.parametrize('extra, message', [
    ({'ssh_host': 'node.example.com; reboot'}, "ssh_host 'node.example.com; reboot' is not a host name or IPv4 address"),
    ({'ssh_host': ''}, "ssh_host '' is not a host name or IPv4 address"),
    ({'network': {'hostname': 'x', 'ssh_port_base': 80}}, 'ssh_port_base must be a whole number from 1024 to 65290'),
    ({'seed': {'hostname': 'x', 'login_user': 'Root'}}, "login_user 'Root' is not a valid login user"),
])
def test_the_access_is_checked_before_the_first_step(node, capsys, extra, message):
    before = tree(node)
    result = run_module(slot_provision, dict(args(node), **extra), capsys=capsys)
    assert result['failed'] and message in result['msg'], result['msg']
    assert tree(node) == before and lease(node)['phase'] == 'provisioning'


def test_a_failed_step_is_named_and_no_later_step_runs(node, capsys, monkeypatch):
    real = AnsibleModule.get_bin_path
    monkeypatch.setattr(AnsibleModule, 'get_bin_path', lambda module, name, *a, **kw:
                        None if name.startswith('ovs-') else real(module, name, *a, **kw))
    before = tree(node)
    result = run_module(slot_provision, args(node), capsys=capsys)
    assert result['failed'] and result['provision_step'] == NETWORK, result
    assert result['msg'].startswith("slot %s: allocation %s failed at '%s': " % (SLOT, ALLOC, NETWORK))
    assert "'ovs-vsctl' is not installed" in result['msg']
    # No disk, seed or domain; the lease stays provisioning, for a second allocate or a release.
    assert tree(node) == before and lease(node)['phase'] == 'provisioning'
    assert 't' * 43 not in json.dumps(result)      # the token (no_log) is never in the result
