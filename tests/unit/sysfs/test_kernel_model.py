# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel model itself: each rule of tests/sysfs/kernel_model.py, and its errnos."""

from __future__ import annotations

import errno
import os

import pytest

from tests.sysfs import kernel_fixture
from tests.sysfs.kernel_model import KernelWouldBlock

kernel = kernel_fixture.kernel  # the fixture

GPU = '0000:01:00.0'
AUDIO = '0000:01:00.1'
PF = '0000:03:00.0'       # workstation: mlx5_core Ethernet PF, 8 VFs at offset 2
BRIDGE = '0000:00:01.0'


def dev(bdf, attr):
    return 'bus/pci/devices/%s/%s' % (bdf, attr)


def fails(model, rel, value, code):
    with pytest.raises(OSError) as info:
        model.write(rel, value)
    assert info.value.errno == code, os.strerror(info.value.errno)


@pytest.fixture
def ws(kernel):
    return kernel('workstation')


# -- driver_override -----------------------------------------------------------


def test_driver_override_stores_up_to_the_newline_and_a_newline_clears_it(ws):
    m = ws.model
    m.write(dev(GPU, 'driver_override'), 'vfio-pci\n')
    assert ws.override(GPU) == 'vfio-pci'
    m.write(dev(GPU, 'driver_override'), '\n')
    assert ws.override(GPU) == '(null)'


def test_an_empty_string_is_no_write_at_all(ws):
    """Python's write('') issues no write(2): on the lab's Linux 6.1 nothing happens."""
    m = ws.model
    m.write(dev(GPU, 'driver_override'), 'vfio-pci')
    m.write(dev(GPU, 'driver_override'), '')
    assert ws.override(GPU) == 'vfio-pci'
    m.write(dev(PF, 'sriov_numvfs'), '')
    m.write(dev(GPU, 'reset_method'), '')
    assert m.read(dev(GPU, 'reset_method')) == 'flr'
    assert len(m.writes) == 1
    fails(m, dev(GPU, 'vendor'), '', errno.EACCES)           # the open still fails


def test_driver_override_of_a_page_is_einval(ws):
    fails(ws.model, dev(GPU, 'driver_override'), 'x' * 4095, errno.EINVAL)
    assert ws.override(GPU) == '(null)'


# -- unbind / bind / drivers_probe ----------------------------------------------


def test_unbind_needs_the_driver_the_device_is_bound_to(ws):
    m = ws.model
    fails(m, 'bus/pci/drivers/snd_hda_intel/unbind', GPU, errno.ENODEV)
    fails(m, 'bus/pci/drivers/nvidia/unbind', '0000:7f:00.0', errno.ENODEV)
    m.write('bus/pci/drivers/nvidia/unbind', GPU + '\n')
    assert ws.driver(GPU) is None
    assert not os.path.lexists(m.path('bus/pci/drivers/nvidia/' + GPU))
    fails(m, 'bus/pci/drivers/nvidia/unbind', GPU, errno.ENODEV)


def test_unbind_through_the_device_driver_link_is_the_same_file(ws):
    ws.model.write(dev(GPU, 'driver/unbind'), GPU)
    assert ws.driver(GPU) is None


def test_vfio_pci_binds_only_with_a_matching_driver_override(ws):
    m = ws.model
    m.write('bus/pci/drivers/nvidia/unbind', GPU)
    fails(m, 'bus/pci/drivers/vfio-pci/bind', GPU, errno.ENODEV)     # override_only id table
    m.write(dev(GPU, 'driver_override'), 'vfio-pci')
    fails(m, 'bus/pci/drivers/nvidia/bind', GPU, errno.ENODEV)       # override names another
    m.write('bus/pci/drivers/vfio-pci/bind', GPU)
    assert ws.driver(GPU) == 'vfio-pci'
    group = m.link_name(dev(GPU, 'iommu_group'))
    assert os.path.exists(os.path.join(ws.dev, 'vfio', group))
    fails(m, 'bus/pci/drivers/vfio-pci/bind', GPU, errno.EBUSY)


def test_the_vfio_node_goes_with_the_last_device_of_the_group(ws):
    m = ws.model
    group = m.link_name(dev(GPU, 'iommu_group'))
    node = os.path.join(ws.dev, 'vfio', group)
    for bdf, drv in ((GPU, 'nvidia'), (AUDIO, 'snd_hda_intel')):
        m.write(dev(bdf, 'driver_override'), 'vfio-pci')
        m.write('bus/pci/drivers/%s/unbind' % drv, bdf)
        m.write('bus/pci/drivers_probe', bdf)
    m.write('bus/pci/drivers/vfio-pci/unbind', GPU)
    assert os.path.exists(node)
    m.write('bus/pci/drivers/vfio-pci/unbind', AUDIO)
    assert not os.path.exists(node)


def test_drivers_probe_follows_the_override_else_the_native_driver(ws):
    m = ws.model
    m.write('bus/pci/drivers/nvidia/unbind', GPU)
    m.write('bus/pci/drivers_probe', GPU)
    assert ws.driver(GPU) == 'nvidia'
    m.write('bus/pci/drivers_probe', GPU)                   # bound: left alone
    assert ws.driver(GPU) == 'nvidia'
    m.write('bus/pci/drivers/nvidia/unbind', GPU)
    m.write(dev(GPU, 'driver_override'), 'vfio-pci')
    m.write('bus/pci/drivers_probe', GPU)
    assert ws.driver(GPU) == 'vfio-pci'
    fails(m, 'bus/pci/drivers_probe', '0000:7f:00.0', errno.ENODEV)


def test_a_failing_probe_is_silent_through_drivers_probe_and_loud_through_bind(kernel):
    host = kernel('workstation', model={'probe_faults': {GPU: errno.EIO}})
    m = host.model
    m.write('bus/pci/drivers/nvidia/unbind', GPU)
    m.write(dev(GPU, 'driver_override'), 'vfio-pci')
    m.write('bus/pci/drivers_probe', GPU)
    assert host.driver(GPU) is None
    fails(m, 'bus/pci/drivers/vfio-pci/bind', GPU, errno.EIO)


def test_vfio_pci_refuses_a_bridge(ws):
    m = ws.model
    m.write(dev(BRIDGE, 'driver_override'), 'vfio-pci')
    fails(m, 'bus/pci/drivers/vfio-pci/bind', BRIDGE, errno.EINVAL)


def test_vfio_pci_refuses_a_device_without_iommu_group(kernel):
    host = kernel('no_iommu')
    m = host.model
    m.write('bus/pci/drivers/nvidia/unbind', '0000:1b:00.0')
    m.write(dev('0000:1b:00.0', 'driver_override'), 'vfio-pci')
    fails(m, 'bus/pci/drivers/vfio-pci/bind', '0000:1b:00.0', errno.EINVAL)
    m.write('bus/pci/drivers_probe', '0000:1b:00.0')
    assert host.driver('0000:1b:00.0') is None


def test_without_the_vfio_pci_module_there_is_no_driver_to_write_to(kernel):
    host = kernel('workstation', model={'vfio_pci_loaded': False})
    fails(host.model, 'bus/pci/drivers/vfio-pci/bind', GPU, errno.ENOENT)


def test_unbinding_a_group_a_process_holds_would_block(ws):
    m = ws.model
    m.write(dev(AUDIO, 'driver_override'), 'vfio-pci')
    m.write('bus/pci/drivers/snd_hda_intel/unbind', AUDIO)
    m.write('bus/pci/drivers_probe', AUDIO)
    m.open_vfio_group(m.link_name(dev(AUDIO, 'iommu_group')))
    with pytest.raises(KernelWouldBlock):
        m.write('bus/pci/drivers/vfio-pci/unbind', AUDIO)


def test_dynamic_ids_are_not_modelled(ws):
    with pytest.raises(NotImplementedError):
        ws.model.write('bus/pci/drivers/vfio-pci/new_id', '10de 2684')


# -- SR-IOV --------------------------------------------------------------------


def test_sriov_numvfs_creates_vfs_as_the_pci_core_does(ws):
    m = ws.model
    m.write(dev(PF, 'sriov_numvfs'), '4\n')
    vfs = [m.link_name(dev(PF, 'virtfn%d' % i)) for i in range(4)]
    assert vfs == ['0000:03:00.2', '0000:03:00.3', '0000:03:00.4', '0000:03:00.5']
    groups = set()
    for vf in vfs:
        assert m.link_name(dev(vf, 'physfn')) == PF
        assert m.read(dev(vf, 'device')) == '0x101e'
        assert ws.driver(vf) == 'mlx5_core'            # sriov_drivers_autoprobe is 1
        groups.add(m.link_name(dev(vf, 'iommu_group')))
    assert len(groups) == 4 and m.link_name(dev(PF, 'iommu_group')) not in groups
    assert m.read(dev(PF, 'sriov_numvfs')) == '4'


def test_a_non_zero_count_over_existing_vfs_is_ebusy_and_zero_removes_them(ws):
    m = ws.model
    before = ws.snapshot()
    m.write(dev(PF, 'sriov_numvfs'), '4')
    fails(m, dev(PF, 'sriov_numvfs'), '2', errno.EBUSY)
    m.write(dev(PF, 'sriov_numvfs'), '4')               # the current count: nothing happens
    m.write(dev(PF, 'sriov_numvfs'), '0')
    ws.assert_unchanged(before)


@pytest.mark.parametrize('value, code', [('9', errno.ERANGE), ('65536', errno.EINVAL),
                                         ('abc', errno.EINVAL), ('-1', errno.EINVAL),
                                         (' 2', errno.EINVAL), ('2;reboot', errno.EINVAL)])
def test_bad_vf_counts_fail_as_the_kernel_fails_them(ws, value, code):
    before = ws.snapshot()
    fails(ws.model, dev(PF, 'sriov_numvfs'), value, code)
    ws.assert_unchanged(before)


def test_a_count_in_hex_is_a_count(ws):
    ws.model.write(dev(PF, 'sriov_numvfs'), '0x2')
    assert ws.model.read(dev(PF, 'sriov_numvfs')) == '2'


def test_sriov_needs_a_pf_driver(ws):
    m = ws.model
    m.write('bus/pci/drivers/mlx5_core/unbind', PF)
    fails(m, dev(PF, 'sriov_numvfs'), '2', errno.ENOENT)


def test_without_autoprobe_new_vfs_have_no_driver(ws):
    m = ws.model
    m.write(dev(PF, 'sriov_drivers_autoprobe'), '0')
    fails(m, dev(PF, 'sriov_drivers_autoprobe'), 'maybe', errno.EINVAL)
    m.write(dev(PF, 'sriov_numvfs'), '1')
    assert ws.driver('0000:03:00.2') is None


def test_unbinding_mlx5_removes_its_vfs(ws):
    m = ws.model
    m.write(dev(PF, 'sriov_numvfs'), '2')
    m.write('bus/pci/drivers/mlx5_core/unbind', PF)
    assert not os.path.lexists(m.path(dev('0000:03:00.2', '')))
    assert m.read(dev(PF, 'sriov_numvfs')) == '0'


def test_unbinding_nvme_leaves_its_vfs_and_zero_then_needs_the_driver(kernel):
    """As the lab's QEMU NVMe shows on Linux 6.1: nvme_remove() leaves SR-IOV enabled."""
    host = kernel('gpu_box')
    m = host.model
    pf = '0000:1c:00.0'
    m.write(dev(pf, 'sriov_numvfs'), '2')
    assert host.driver('0000:1c:00.1') == 'nvme'
    m.write('bus/pci/drivers/nvme/unbind', pf)
    assert m.read(dev(pf, 'sriov_numvfs')) == '2'
    assert m.link_name(dev(pf, 'virtfn1')) == '0000:1c:00.2'
    m.write(dev(pf, 'sriov_numvfs'), '2')                   # the current count: fine
    fails(m, dev(pf, 'sriov_numvfs'), '0', errno.ENOENT)    # no driver to disable them
    m.write('bus/pci/drivers/nvme/bind', pf)
    m.write(dev(pf, 'sriov_numvfs'), '0')
    assert m.read(dev(pf, 'sriov_numvfs')) == '0'


def test_offline_vfs_fail_their_native_probe_and_stay_unbound(kernel):
    """As the lab's QEMU NVMe shows on Linux 6.1: nvme cannot start an offline VF."""
    host = kernel('gpu_box', model={'offline_vfs': ['0000:1c:00.0']})
    m = host.model
    pf = '0000:1c:00.0'
    m.write(dev(pf, 'sriov_numvfs'), '2')
    assert [host.driver(vf) for vf in ('0000:1c:00.1', '0000:1c:00.2')] == [None, None]
    m.write('bus/pci/drivers_probe', '0000:1c:00.1')          # silent, as for any failed probe
    assert host.driver('0000:1c:00.1') is None
    fails(m, 'bus/pci/drivers/nvme/bind', '0000:1c:00.1', errno.ENODEV)
    m.write(dev('0000:1c:00.1', 'driver_override'), 'vfio-pci')
    m.write('bus/pci/drivers_probe', '0000:1c:00.1')
    assert host.driver('0000:1c:00.1') == 'vfio-pci'


def test_mlx5_sriov_files_take_guids_and_policies(kernel):
    host = kernel('gpu_box', model={'mlx5_sriov_sysfs': True})
    m = host.model
    pf = '0000:5e:00.0'
    m.write(dev(pf, 'sriov_numvfs'), '2')
    m.write(dev(pf, 'sriov/1/node'), '02:11:22:33:44:55:66:77')
    m.write(dev(pf, 'sriov/1/policy'), 'Follow\n')
    assert m.read(dev(pf, 'sriov/1/node')) == '02:11:22:33:44:55:66:77'
    fails(m, dev(pf, 'sriov/1/port'), '02:11:22', errno.EINVAL)
    fails(m, dev(pf, 'sriov/1/policy'), 'Sometimes', errno.EINVAL)


# -- reset -----------------------------------------------------------------------


def test_reset_takes_only_1_and_is_logged(ws):
    m = ws.model
    fails(m, dev(GPU, 'reset'), '2', errno.EINVAL)
    fails(m, dev(GPU, 'reset'), 'yes', errno.EINVAL)
    m.write(dev(GPU, 'reset'), '1')
    assert m.resets == [(GPU, 'flr')]


def test_a_device_without_reset_methods_has_no_reset_attribute(ws):
    assert not os.path.exists(ws.model.path(dev('0000:00:00.0', 'reset')))
    fails(ws.model, dev('0000:00:00.0', 'reset'), '1', errno.EACCES)


def test_reset_method_accepts_offered_methods_only_and_empty_disables_all(kernel):
    host = kernel('hgx')
    m = host.model
    gpu = '0000:18:00.0'                                   # offers bus only
    fails(m, dev(gpu, 'reset_method'), 'flr', errno.EINVAL)
    fails(m, dev(gpu, 'reset_method'), 'warp_drive', errno.EINVAL)
    m.write(dev(gpu, 'reset_method'), '\n')
    fails(m, dev(gpu, 'reset'), '1', errno.ENOTTY)
    m.write(dev(gpu, 'reset_method'), 'default')
    assert m.read(dev(gpu, 'reset_method')) == 'bus'
    m.write(dev(gpu, 'reset'), '1')
    assert m.resets == [(gpu, 'bus')]


def test_a_reset_fault_is_returned_as_the_hardware_would(kernel):
    host = kernel('workstation', model={'reset_faults': {GPU: errno.ETIMEDOUT}})
    fails(host.model, dev(GPU, 'reset'), '1', errno.ETIMEDOUT)
    assert host.model.resets == []


# -- everything else -------------------------------------------------------------


def test_read_only_and_missing_attributes_are_eacces_a_missing_device_enoent(ws):
    """open(path, 'w') on Linux 6.1: kernfs cannot create files (EACCES)."""
    before = ws.snapshot()
    fails(ws.model, dev(GPU, 'vendor'), '0x1234', errno.EACCES)
    fails(ws.model, dev(GPU, 'no_such_attribute'), '1', errno.EACCES)
    fails(ws.model, 'bus/pci/devices/0000:7f:00.0/driver_override', 'vfio-pci', errno.ENOENT)
    ws.assert_unchanged(before)
    assert ws.model.writes == []


def test_the_write_log_keeps_every_accepted_write_in_order(ws):
    m = ws.model
    m.write(dev(GPU, 'driver_override'), 'vfio-pci')
    m.write('bus/pci/drivers/nvidia/unbind', GPU)
    assert m.writes == [(dev(GPU, 'driver_override'), 'vfio-pci'),
                        ('bus/pci/drivers/nvidia/unbind', GPU)]
