# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot's NVMe namespace as its boot disk: found in sysfs as the kernel lays it out
(/sys/bus/pci/devices/ADDR/nvme/nvmeX/nvmeXnY), and every reason not to write an image onto it.

The device nodes are real block device nodes made with mknod, numbered in the range Linux
keeps for local and experimental use (major 250), so that nothing here can reach a disk of this
machine; the tests that need them run as root. tests/kernel_lab/test_boot_disk.py does the same on
a real kernel with an emulated NVMe drive."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _boot_disk as boot
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import Sysfs
from tests.sysfs.builder import SysfsBuilder

NVME, GPU = '0000:1c:00.0', '0000:1b:00.0'
LOCAL_MAJOR = 250
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='mknod of a block device node needs root')


class Host:
    """A host with a GPU and one NVMe controller ``nvme2``, and a /dev with its namespaces' nodes."""

    def __init__(self, base, driver='nvme', namespaces=None, partitions=None, holders=None, mounts=()):
        self.sys, self.proc, self.dev = (os.path.join(base, name) for name in ('sys', 'proc', 'dev'))
        b = SysfsBuilder(self.sys, proc_root=self.proc)
        b.numa_nodes({0: '0-3'})
        root = b.pci_root('0000:00', numa_node=0)
        b.bridge('0000:00:01.0', root)
        b.device(GPU, '0000:00:01.0', 0x030200, '10de', '2330', driver='nvidia')
        b.bridge('0000:00:02.0', root)
        b.device(NVME, '0000:00:02.0', 0x010802, '144d', 'a824', driver=driver)
        self.namespaces = ['nvme2n1'] if namespaces is None else namespaces
        if self.namespaces:
            b.nvme(NVME, 'nvme2', namespaces=self.namespaces, partitions=partitions, holders=holders)
        else:
            os.makedirs(os.path.join(self.sys, 'bus/pci/devices', NVME, 'nvme/nvme2'))
        b.mounts(list(mounts))
        os.makedirs(self.dev)
        for minor, name in enumerate(self.namespaces):
            with open(os.path.join(self.sys, 'class/block', name, 'dev'), 'w') as handle:
                handle.write('%d:%d\n' % (LOCAL_MAJOR, minor))
            with open(os.path.join(self.sys, 'class/block', name, 'ro'), 'w') as handle:
                handle.write('0\n')
            if os.geteuid() == 0:
                self.mknod(name, minor)

    def mknod(self, name, minor):
        path = os.path.join(self.dev, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(LOCAL_MAJOR, minor))

    def find(self, address=NVME):
        sysfs = Sysfs(self.sys)
        return boot.nvme_namespace(sysfs, self.proc, self.dev, boot.nvme_controller(sysfs, address))


def refusal(host, address=NVME):
    with pytest.raises(boot.BootDiskError) as info:
        host.find(address)
    return str(info.value)


@needs_root
def test_the_one_namespace_of_the_controller_on_the_nvme_driver(tmp_path):
    assert Host(str(tmp_path)).find() == os.path.join(str(tmp_path), 'dev', 'nvme2n1')


@needs_root
def test_a_multipath_path_entry_names_the_same_namespace(tmp_path):
    host = Host(str(tmp_path))
    os.makedirs(os.path.join(host.sys, 'bus/pci/devices', NVME, 'nvme/nvme2/nvme2c2n1'))
    assert host.find().endswith('/dev/nvme2n1')


@pytest.mark.parametrize('address, expected', [
    ('0000:1c:00', "nvme_address: '0000:1c:00' is not a full PCI address"),
    ('0000:99:00.0', 'no PCI function 0000:99:00.0 under'),
])
def test_an_address_that_names_no_controller(tmp_path, address, expected):
    message = refusal(Host(str(tmp_path)), address)
    assert message.startswith('the boot disk of this slot is its NVMe, but ') and expected in message, message


def test_a_device_that_is_no_nvme_controller(tmp_path):
    message = refusal(Host(str(tmp_path)), GPU)
    assert 'its NVMe %s' % GPU in message and 'that is not an NVMe controller (class 0x030200)' in message
    assert message.endswith('nothing was written')


@pytest.mark.parametrize('driver, expected', [
    ('vfio-pci', 'it is bound to vfio-pci, not on the host\'s nvme driver, so its namespace cannot be written '
                 '(a second run after the image was written finds it there: see the image marker)'),
    (None, 'it is bound to no driver, not on the host\'s nvme driver'),
])
def test_a_controller_not_on_the_nvme_driver(tmp_path, driver, expected):
    assert expected in refusal(Host(str(tmp_path), driver=driver))


@pytest.mark.parametrize('namespaces, expected', [
    ([], 'it has no namespace (no nvmeXnY under its nvme/ directory): the slot needs exactly one to boot from'),
    (['nvme2n1', 'nvme2n2'], 'it has 2 namespaces (nvme2n1, nvme2n2): the slot needs exactly one to boot from'),
])
def test_not_exactly_one_namespace(tmp_path, namespaces, expected):
    assert expected in refusal(Host(str(tmp_path), namespaces=namespaces))


def test_a_read_only_namespace(tmp_path):
    host = Host(str(tmp_path))
    with open(os.path.join(host.sys, 'class/block/nvme2n1/ro'), 'w') as handle:
        handle.write('1\n')
    assert 'its namespace nvme2n1 is read-only' in refusal(host)


@pytest.mark.parametrize('kwargs, expected', [
    ({'mounts': ['/dev/nvme2n1 /srv ext4 rw 0 0']}, 'the host uses its namespace: nvme2n1 is mounted on /srv'),
    ({'partitions': {'nvme2n1': ['nvme2n1p1']}, 'mounts': ['/dev/nvme2n1p1 /boot ext4 rw 0 0']},
     'the host uses its namespace: nvme2n1p1 is mounted on /boot'),
    ({'holders': {'nvme2n1': [('dm-0', 'vg0-data')]}}, 'the host uses its namespace: nvme2n1 is held by dm-0'),
])
def test_a_namespace_the_host_uses(tmp_path, kwargs, expected):
    assert expected in refusal(Host(str(tmp_path), **kwargs))


def test_a_proc_root_that_cannot_be_read_fails_closed(tmp_path):
    host = Host(str(tmp_path))
    os.unlink(os.path.join(host.proc, 'mounts'))
    message = refusal(host)
    assert "the host's use of nvme2n1 cannot be seen: cannot read" in message and 'is proc_root right?' in message


def test_no_device_node(tmp_path):
    host = Host(str(tmp_path))
    if os.path.lexists(os.path.join(host.dev, 'nvme2n1')):
        os.unlink(os.path.join(host.dev, 'nvme2n1'))
    assert '%s/nvme2n1 cannot be opened (No such file or directory)' % host.dev in refusal(host)


def test_a_device_node_that_is_a_regular_file(tmp_path):
    host = Host(str(tmp_path))
    path = os.path.join(host.dev, 'nvme2n1')
    if os.path.lexists(path):
        os.unlink(path)
    open(path, 'w').close()
    assert '%s is not a block device' % path in refusal(host)


@needs_root
def test_a_device_node_of_another_block_device(tmp_path):
    host = Host(str(tmp_path))
    host.mknod('nvme2n1', 7)
    assert '%s/nvme2n1 is block device 250:7, not its namespace nvme2n1 (250:0 in sysfs)' % host.dev in refusal(host)


@needs_root
def test_a_namespace_a_process_holds_open(tmp_path):
    host = Host(str(tmp_path))
    fd_dir = os.path.join(host.proc, '4242', 'fd')
    os.makedirs(fd_dir)
    with open(os.path.join(host.proc, '4242', 'comm'), 'w') as handle:
        handle.write('dd\n')
    os.symlink(os.path.join(host.dev, 'nvme2n1'), os.path.join(fd_dir, '3'))
    assert '%s/nvme2n1 is open by pid 4242 (dd)' % host.dev in refusal(host)


def test_the_image_marker_of_a_whole_write_matches_and_nothing_less():
    want = dict(version=1, slot_id='n1-s0', source_checksum='sha256:' + 'a' * 64, source_format='qcow2',
                target_format='raw', size=None)
    assert boot.image_marker_matches(dict(want, target='/dev/nvme2n1', written_at=1), want)
    assert not boot.image_marker_matches(None, want)
    assert not boot.image_marker_matches(dict(want, source_checksum='sha256:' + 'b' * 64), want)
    assert not boot.image_marker_matches(dict(want, slot_id='n1-s1'), want)
