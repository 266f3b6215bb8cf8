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

from ansible_collections.gpuaas.slice.plugins.module_utils._compose import Part
from ansible_collections.gpuaas.slice.plugins.module_utils._provision import IMAGE, Provision
from ansible_collections.gpuaas.slice.plugins.modules import slot_provision
from tests.unit.module_runner import run_module
from tests.unit.plugins.module_utils.test_boot_disk import NVME, Host, needs_root

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


def nvme_args(dirs, host):
    """A slot with passthrough whose NVMe is its boot disk."""
    return dict(args(dirs, passthrough=True, nvme_address=NVME, numatune=False), devices=[NVME], sysfs_root=host.sys,
                proc_root=host.proc, dev_root=host.dev)


@pytest.mark.parametrize('host_kwargs, expected', [
    ({'driver': 'vfio-pci'}, "it is bound to vfio-pci, not on the host's nvme driver"),
    ({'mounts': ['/dev/nvme2n1 /srv ext4 rw 0 0']}, 'the host uses its namespace: nvme2n1 is mounted on /srv'),
    ({'namespaces': ['nvme2n1', 'nvme2n2']}, 'it has 2 namespaces (nvme2n1, nvme2n2)'),
])
def test_an_nvme_boot_disk_that_cannot_be_written_is_refused_before_anything_changes(
        node, capsys, tmp_path, host_kwargs, expected):
    host = Host(str(tmp_path / 'host'), **host_kwargs)
    before = tree(node)
    result = run_module(slot_provision, nvme_args(node, host), capsys=capsys)
    assert result['failed'] and result['provision_step'] == IMAGE, result
    assert result['msg'].startswith("slot %s: allocation %s failed at '%s': the boot disk of this slot is its NVMe "
                                    % (SLOT, ALLOC, IMAGE)) and expected in result['msg'], result['msg']
    assert result['nvme_address'] == NVME
    assert tree(node) == before and lease(node) == dict(lease(node), phase='provisioning', data={'passthrough': False})


class Module:
    def __init__(self, params):
        self.params = params
        self.check_mode, self._diff = False, False


def image_part(dirs, **extra):
    return Part(None, dict(dict(source_format='qcow2', checksum='sha256:' + 'a' * 64, size='1G', format='raw',
                                state_dir=dirs['vfio'], image_dir=None, target_device='/dev'), **extra))


@needs_root
def test_the_nvme_boot_disk_is_its_namespace_and_a_file_boot_disk_is_under_the_image_dir(node, tmp_path):
    host = Host(str(tmp_path / 'host'))
    provision = Provision(Module(nvme_args(node, host)))
    part = image_part(node)
    assert provision.boot_disk(part, NVME) == {'kind': 'nvme', 'path': host.dev + '/nvme2n1', 'nvme_address': NVME}
    assert part.params['target_device'] == host.dev + '/nvme2n1'
    assert provision.boot_disk(image_part(node, image_dir=node['disks'], target_device=None), None) == {
        'kind': 'file', 'path': os.path.join(node['disks'], SLOT + '.raw'), 'nvme_address': None}


def test_a_second_run_finds_the_nvme_on_vfio_pci_and_goes_on_only_with_the_whole_image_written(node, tmp_path):
    host = Host(str(tmp_path / 'host'), driver='vfio-pci')
    provision = Provision(Module(nvme_args(node, host)))
    marker = os.path.join(node['vfio'], SLOT + '.image.json')
    written = {'version': 1, 'slot_id': SLOT, 'source_checksum': 'sha256:' + 'a' * 64, 'source_format': 'qcow2',
               'target': '/dev/nvme2n1', 'target_format': 'raw', 'size': 1 << 30, 'written_at': 1}
    with open(marker, 'w') as handle:
        json.dump(written, handle)
    assert provision.boot_disk(image_part(node), NVME) == {
        'kind': 'nvme', 'path': '/dev/nvme2n1', 'nvme_address': NVME,
        'written': {'marker': marker, 'source_checksum': 'sha256:' + 'a' * 64}}
    # Another image (or none written: no marker) cannot be checked on a namespace the host no longer sees.
    with pytest.raises(Exception, match="bound to vfio-pci, not on the host's nvme driver"):
        provision.boot_disk(image_part(node, checksum='sha256:' + 'b' * 64), NVME)
    os.unlink(marker)
    with pytest.raises(Exception, match="bound to vfio-pci, not on the host's nvme driver"):
        provision.boot_disk(image_part(node), NVME)
