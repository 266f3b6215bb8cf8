# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the host uses: a proc_root that cannot be read is an error, never "nothing is mounted"."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciError, Sysfs
from tests.sysfs import hosts


@pytest.fixture
def workstation(tmp_path):
    sys_root, proc_root = hosts.HOSTS['workstation'](str(tmp_path / 'ws'))
    return Sysfs(sys_root), proc_root


def test_mounts_and_swap_are_the_hosts(workstation):
    sysfs, proc = workstation
    usage = HostUsage(sysfs, proc)
    assert usage.mounted()['nvme0n1p2'] == 'mounted on /'
    assert usage.block_usage('nvme0n1') == 'nvme0n1p1 is mounted on /boot/efi'


def test_a_kernel_without_swap_has_no_swaps_file_and_that_is_fine(workstation):
    sysfs, proc = workstation
    os.unlink(os.path.join(proc, 'swaps'))
    assert HostUsage(sysfs, proc).block_usage('nvme0n1') == 'nvme0n1p1 is mounted on /boot/efi'


@pytest.mark.parametrize('name, make', [
    ('proc_root missing', shutil.rmtree),
    ('proc_root a file', lambda proc: (shutil.rmtree(proc), open(proc, 'w').close())),
    ('an empty directory', lambda proc: (shutil.rmtree(proc), os.mkdir(proc))),
    ('mounts missing', lambda proc: os.unlink(os.path.join(proc, 'mounts'))),
    ('mounts a directory', lambda proc: (os.unlink(os.path.join(proc, 'mounts')),
                                         os.mkdir(os.path.join(proc, 'mounts')))),
    ('swaps a directory', lambda proc: (os.unlink(os.path.join(proc, 'swaps')),
                                        os.mkdir(os.path.join(proc, 'swaps')))),
    ('mounts not text', lambda proc: open(os.path.join(proc, 'mounts'), 'wb').write(b'\xff\xfe/dev')),
])
def test_a_proc_root_that_cannot_be_read_fails_closed(workstation, name, make):
    sysfs, proc = workstation
    make(proc)
    usage = HostUsage(sysfs, proc)
    with pytest.raises(PciError) as info:
        usage.block_usage('nvme1n1')                   # a disk nothing would have mounted
    assert 'cannot read %s' % proc in str(info.value)
    assert 'is proc_root right?' in str(info.value)
