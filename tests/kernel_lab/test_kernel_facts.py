# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the real kernel does, checked directly through sysfs.

The unit tests run the modules against a model of the kernel (tests/sysfs/). These
tests pin down, on a real kernel, the behaviour that model imitates, so that a model
that drifts from the kernel is caught here.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from .conftest import PCI, SHARED_GPU, SHARED_NIC, SLOTS, read, write


def test_the_iommu_is_on_and_each_slot_device_has_a_group_of_its_own():
    assert os.listdir('/sys/kernel/iommu_groups')
    for gpu, nvme, pf, _node in SLOTS:
        for address in (gpu, nvme, pf):
            group = os.path.basename(os.readlink('%s/%s/iommu_group' % (PCI, address)))
            members = os.listdir('/sys/kernel/iommu_groups/%s/devices' % group)
            assert members == [address]


def test_devices_behind_a_pci_bridge_share_a_group():
    group = os.path.basename(os.readlink('%s/%s/iommu_group' % (PCI, SHARED_GPU)))
    members = sorted(os.listdir('/sys/kernel/iommu_groups/%s/devices' % group))
    assert SHARED_GPU in members and SHARED_NIC in members


def test_expander_bridges_put_devices_on_their_numa_node():
    for gpu, _nvme, _pf, node in SLOTS:
        assert read('%s/%s/numa_node' % (PCI, gpu)) == str(node)
    assert read('/sys/devices/system/node/node0/cpulist') == '0-1'
    assert read('/sys/devices/system/node/node1/cpulist') == '2-3'


def test_sriov_vfs_appear_at_offset_and_stride_and_a_count_change_needs_zero_first():
    pf = SLOTS[0][2]
    base = '%s/%s' % (PCI, pf)
    assert int(read(base + '/sriov_totalvfs')) == 4
    offset, stride = int(read(base + '/sriov_offset')), int(read(base + '/sriov_stride'))
    assert (offset, stride) == (1, 1)
    write(base + '/sriov_numvfs', '2')
    try:
        assert os.path.basename(os.readlink(base + '/virtfn0')) == '0000:23:00.1'
        assert os.path.basename(os.readlink(base + '/virtfn1')) == '0000:23:00.2'
        assert os.path.basename(os.readlink('%s/0000:23:00.1/physfn' % PCI)) == pf
        with pytest.raises(OSError) as busy:
            write(base + '/sriov_numvfs', '3')
        assert busy.value.errno == errno.EBUSY
    finally:
        write(base + '/sriov_numvfs', '0')
    assert not os.path.exists(base + '/virtfn0')
    with pytest.raises(OSError) as too_many:
        write(base + '/sriov_numvfs', '5')
    assert too_many.value.errno == errno.ERANGE


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_nvme_probes_the_offline_vfs_of_qemus_nvme_and_leaves_them_unbound():
    """The kernel model's offline_vfs: with autoprobe nvme's probe fails, without it none runs."""
    pf = SLOTS[0][2]
    base = '%s/%s' % (PCI, pf)
    assert read(base + '/sriov_drivers_autoprobe') == '1'
    vfs = ['%s/%s' % (PCI, a) for a in ('0000:23:00.1', '0000:23:00.2')]
    try:
        write(base + '/sriov_numvfs', '2')
        # nvme's reset work fails asynchronously (CSTS=0x2, ENODEV) and unbinds the VF.
        assert wait_for(lambda: not any(os.path.exists(v + '/driver') for v in vfs))
        write(base + '/sriov_numvfs', '0')
        write(base + '/sriov_drivers_autoprobe', '0')
        write(base + '/sriov_numvfs', '2')
        time.sleep(1)
        assert not any(os.path.exists(v + '/driver') for v in vfs)
        write(vfs[0] + '/driver_override', 'vfio-pci')
        write('/sys/bus/pci/drivers_probe', os.path.basename(vfs[0]))
        assert os.path.basename(os.readlink(vfs[0] + '/driver')) == 'vfio-pci'
        write('/sys/bus/pci/drivers/vfio-pci/unbind', os.path.basename(vfs[0]))
        write(vfs[0] + '/driver_override', '\n')
    finally:
        write(base + '/sriov_numvfs', '0')
        write(base + '/sriov_drivers_autoprobe', '1')


def test_unbinding_nvme_leaves_its_vfs():
    """The kernel model's DISABLES_SRIOV_ON_REMOVE: nvme's remove() leaves SR-IOV enabled."""
    pf = SLOTS[1][2]
    base = '%s/%s' % (PCI, pf)
    write(base + '/sriov_drivers_autoprobe', '0')
    try:
        write(base + '/sriov_numvfs', '2')
        write('/sys/bus/pci/drivers/nvme/unbind', pf)
        assert read(base + '/sriov_numvfs') == '2' and os.path.islink(base + '/virtfn1')
        with pytest.raises(OSError) as no_driver:
            write(base + '/sriov_numvfs', '0')
        assert no_driver.value.errno == errno.ENOENT
    finally:
        if not os.path.exists(base + '/driver'):
            write('/sys/bus/pci/drivers/nvme/bind', pf)
        write(base + '/sriov_numvfs', '0')
        write(base + '/sriov_drivers_autoprobe', '1')
    assert not os.path.exists(base + '/virtfn0')


def test_driver_override_and_drivers_probe_bind_vfio_pci_and_create_the_group_node():
    gpu = SLOTS[1][0]
    base = '%s/%s' % (PCI, gpu)
    group = os.path.basename(os.readlink(base + '/iommu_group'))
    assert not os.path.exists(base + '/driver')
    write(base + '/driver_override', 'vfio-pci')
    try:
        write('/sys/bus/pci/drivers_probe', gpu)
        assert os.path.basename(os.readlink(base + '/driver')) == 'vfio-pci'
        assert os.path.exists('/dev/vfio/%s' % group)
    finally:
        write('/sys/bus/pci/drivers/vfio-pci/unbind', gpu)
        write(base + '/driver_override', '\n')
    assert read(base + '/driver_override') == '(null)'
    assert not os.path.exists(base + '/driver')
