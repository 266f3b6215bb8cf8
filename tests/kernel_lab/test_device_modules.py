# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vfio_bind, pci_reset, nvme_wipe and sriov_vfs against the lab guest's real kernel.

The unit tests run these modules against the kernel model; here the same modules bind real
devices to the real vfio-pci behind an emulated IOMMU, reset them, and wipe a real NVMe
namespace. Every test leaves the bindings as it found them.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import (
    nvme_wipe,
    pci_reset,
    sriov_vfs,
    vfio_bind,
)
from tests.unit.module_runner import run_module

from .conftest import SHARED_GPU, SHARED_NIC, SLOTS

PCI = '/sys/bus/pci/devices'
GPU, NVME, PF, _NODE = SLOTS[0]


def binding(address):
    link = '%s/%s/driver' % (PCI, address)
    with open('%s/%s/driver_override' % (PCI, address)) as handle:
        override = handle.read().strip()
    return (os.path.basename(os.readlink(link)) if os.path.islink(link) else None, override)


def group_of(address):
    return os.path.basename(os.readlink('%s/%s/iommu_group' % (PCI, address)))


def namespace_of(address):
    prefix = os.path.realpath('%s/%s' % (PCI, address)) + '/'
    names = [n for n in sorted(os.listdir('/sys/class/block'))
             if os.path.realpath('/sys/class/block/' + n).startswith(prefix)
             and not os.path.exists('/sys/class/block/%s/partition' % n)]
    return names[0]


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / 'vfio')


def bind(capsys, address, state_dir, **extra):
    args = dict(address=address, state_dir=state_dir)
    args.update(extra)
    check_mode = args.pop('check_mode', False)
    return run_module(vfio_bind, args, check_mode=check_mode, diff=True, capsys=capsys)


def test_vfio_bind_moves_an_nvme_to_vfio_pci_and_back_exactly(capsys, state_dir):
    before = binding(NVME)
    assert before == ('nvme', '(null)')
    checked = bind(capsys, NVME, state_dir, check_mode=True)
    assert checked['changed'] is True and binding(NVME) == before
    bound = bind(capsys, NVME, state_dir)
    assert bound['changed'] is True, bound
    assert binding(NVME) == ('vfio-pci', 'vfio-pci')
    assert os.path.exists('/dev/vfio/%s' % group_of(NVME))
    assert bind(capsys, NVME, state_dir)['changed'] is False
    released = bind(capsys, NVME, state_dir, state='absent')
    assert released['changed'] is True, released
    assert binding(NVME) == before
    assert not os.path.exists('/dev/vfio/%s' % group_of(NVME))
    assert bind(capsys, NVME, state_dir, state='absent')['changed'] is False


def test_a_group_behind_a_pci_bridge_moves_together(capsys, state_dir):
    bound = bind(capsys, SHARED_GPU, state_dir)
    try:
        assert bound['functions'] == [SHARED_GPU, SHARED_NIC]
        assert binding(SHARED_GPU)[0] == binding(SHARED_NIC)[0] == 'vfio-pci'
        assert 'another physical device that no host driver uses' in str(bound['warnings'])
    finally:
        released = bind(capsys, SHARED_GPU, state_dir, state='absent')
    assert released['bindings'] == {SHARED_GPU: None, SHARED_NIC: None}
    assert binding(SHARED_GPU) == (None, '(null)')


def test_a_group_a_process_holds_is_neither_released_nor_reset(capsys, state_dir):
    bound = bind(capsys, GPU, state_dir)
    assert bound['changed'] is True
    fd = os.open('/dev/vfio/%s' % group_of(GPU), os.O_RDWR)
    try:
        refused = bind(capsys, GPU, state_dir, state='absent')
        assert refused['failed'] is True
        assert 'is open by pid %d' % os.getpid() in refused['msg']
        assert binding(GPU) == ('vfio-pci', 'vfio-pci')
        reset = run_module(pci_reset, {'address': GPU}, capsys=capsys)
        assert reset['failed'] and 'a VM holds it' in reset['msg']
    finally:
        os.close(fd)
    assert bind(capsys, GPU, state_dir, state='absent')['changed'] is True
    assert binding(GPU) == (None, '(null)')


def test_pci_reset_uses_the_first_method_the_kernel_offers(capsys):
    reset = run_module(pci_reset, {'address': NVME}, capsys=capsys)
    assert reset['changed'] is True and reset['method'] == 'flr'
    assert reset['reset_methods'] == ['flr', 'bus']
    forced = run_module(pci_reset, {'address': NVME, 'method': 'bus'}, capsys=capsys)
    assert forced['method'] == 'bus'
    with open('%s/%s/reset_method' % (PCI, NVME)) as handle:
        assert handle.read().split() == ['flr', 'bus']
    root_port = os.path.basename(os.path.dirname(os.path.realpath('%s/%s' % (PCI, NVME))))
    none = run_module(pci_reset, {'address': root_port}, capsys=capsys)
    assert none['failed'] is True and none['reset_methods'] == []
    assert none['needs_manual_care'] is True


def test_nvme_wipe_zero_on_a_real_namespace(capsys):
    name = namespace_of(NVME)
    with open('/dev/' + name, 'r+b') as handle:
        handle.write(os.urandom(1 << 20))
    wiped = run_module(nvme_wipe, {'target': NVME, 'policy': 'zero'}, capsys=capsys)
    assert wiped['changed'] is True, wiped
    report = wiped['targets'][0]
    assert report['device'] == name and report['verification']['passed'] is True
    with open('/dev/' + name, 'rb') as handle:
        assert handle.read(1 << 20) == bytes(1 << 20)


def test_a_discard_the_device_ignores_fails_the_verification(capsys):
    """QEMU's drive ignores discards by default: the data stays, and the wipe must say so."""
    name = namespace_of(NVME)
    with open('/dev/' + name, 'r+b') as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        block = os.urandom(1 << 20)
        for offset in range(0, size, 1 << 20):
            handle.write(block)
    result = run_module(nvme_wipe, {'target': '/dev/' + name, 'policy': 'blkdiscard'},
                        capsys=capsys)
    assert result['failed'] is True
    assert 'still hold the data they held before the wipe' in result['msg']


def test_nvme_wipe_refuses_a_namespace_a_process_holds(capsys):
    name = namespace_of(NVME)
    with open('/dev/' + name, 'rb'):
        result = run_module(nvme_wipe, {'target': NVME, 'policy': 'zero'}, capsys=capsys)
    assert result['failed'] is True
    assert '/dev/%s is open by pid %d' % (name, os.getpid()) in result['msg']


def test_sriov_vfs_refuses_a_pf_that_is_neither_ethernet_nor_infiniband(capsys):
    result = run_module(sriov_vfs, {'address': PF, 'num_vfs': 2, 'node_id': 'lab'},
                        capsys=capsys)
    assert result['failed'] is True and 'is not an Ethernet' in result['msg']
    with open('%s/%s/sriov_numvfs' % (PCI, PF)) as handle:
        assert handle.read().strip() == '0'
