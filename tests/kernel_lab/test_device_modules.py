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
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import vf_address
from tests.unit.module_runner import run_module

from .conftest import PCI, SHARED_GPU, SHARED_NIC, SLOTS, binding, group_of, namespace_of

GPU, NVME, PF, _NODE = SLOTS[0]


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


def numvfs(pf=PF):
    with open('%s/%s/sriov_numvfs' % (PCI, pf)) as handle:
        return int(handle.read())


def virtfns(pf=PF):
    base = '%s/%s' % (PCI, pf)
    links = sorted((e for e in os.listdir(base) if e.startswith('virtfn')), key=lambda e: int(e[6:]))
    return [os.path.basename(os.readlink('%s/%s' % (base, e))) for e in links]


def test_sriov_vfs_refuses_a_pf_that_is_neither_ethernet_nor_infiniband(capsys):
    result = run_module(sriov_vfs, {'address': PF, 'num_vfs': 2, 'node_id': 'lab'},
                        capsys=capsys)
    assert result['failed'] is True and 'is not an Ethernet' in result['msg']
    assert 'set vf_identity=none' in result['msg']
    assert numvfs() == 0


def nvme_vfs(capsys, count, **extra):
    args = dict(address=PF, num_vfs=count, node_id='lab', vf_identity='none',
                drivers_autoprobe=False)
    check_mode = extra.pop('check_mode', False)
    args.update(extra)
    return run_module(sriov_vfs, args, check_mode=check_mode, diff=True, capsys=capsys)


def test_sriov_vfs_converges_the_count_of_real_nvme_vfs(capsys, state_dir):
    """vf_identity=none on the lab's SR-IOV NVMe: real VFs, where the kernel puts them."""
    base = '%s/%s' % (PCI, PF)
    with open(base + '/sriov_offset') as offset, open(base + '/sriov_stride') as stride:
        offset, stride = int(offset.read()), int(stride.read())
    with open(base + '/sriov_drivers_autoprobe') as handle:
        autoprobe = handle.read().strip()
    expected = [vf_address(PF, offset, stride, i) for i in range(3)]
    try:
        checked = nvme_vfs(capsys, 2, check_mode=True)
        assert checked['changed'] is True and checked['vf_addresses'] == expected[:2]
        assert numvfs() == 0 and virtfns() == []

        created = nvme_vfs(capsys, 2)
        assert created['changed'] is True, created
        assert created['kind'] == 'other' and created['commands'] == []
        assert virtfns() == created['vf_addresses'] == expected[:2]
        assert [vf['driver'] for vf in created['vfs']] == [None, None]   # autoprobe off
        for vf in expected[:2]:
            assert os.path.basename(os.readlink('%s/%s/physfn' % (PCI, vf))) == PF
        assert nvme_vfs(capsys, 2)['changed'] is False

        bound = bind(capsys, expected[1], state_dir)
        assert bound['changed'] is True and binding(expected[1])[0] == 'vfio-pci'
        try:
            refused = nvme_vfs(capsys, 3)
            assert refused['failed'] is True
            assert 'VF 1 (%s) is bound to vfio-pci' % expected[1] in refused['msg']
            assert numvfs() == 2 and binding(expected[1])[0] == 'vfio-pci'
        finally:
            assert bind(capsys, expected[1], state_dir, state='absent')['changed'] is True

        grown = nvme_vfs(capsys, 3)
        assert grown['changed'] is True
        assert [a.split(': ', 1)[1].split(':', 1)[0] for a in grown['actions']] == [
            'remove the 2 VFs', 'create 3 VFs']
        assert virtfns() == expected

        too_many = nvme_vfs(capsys, 5)
        assert too_many['failed'] is True and 'sriov_totalvfs is 4' in too_many['msg']
        assert numvfs() == 3

        removed = nvme_vfs(capsys, 0)
        assert removed['changed'] is True and removed['vfs'] == []
        assert numvfs() == 0 and virtfns() == []
        assert not any(os.path.exists('%s/%s' % (PCI, vf)) for vf in expected)
        assert nvme_vfs(capsys, 0)['changed'] is False
    finally:
        with open(base + '/sriov_numvfs', 'w') as handle:
            handle.write('0')
        with open(base + '/sriov_drivers_autoprobe', 'w') as handle:
            handle.write(autoprobe)
