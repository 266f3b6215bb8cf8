# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot's NVMe as its boot disk, on the lab guest's real kernel and emulated NVMe drive.

What slot_provision does for a slot with passthrough and an NVMe, step by step on the real
thing: the namespace found in /sys (bus/pci/devices/ADDR/nvme/nvmeX/nvmeXnY), the image
written onto it by slot_image while the nvme driver has it, the controller handed to
vfio-pci (the namespace is gone from the host, the image marker stands for it), and back;
then what slot_release runs for it, nvme_wipe by the slot's policy, leaves the drive
verified zero. The nested VM booting from the passed-through NVMe is not tried here: under
TCG inside TCG it takes minutes (docs/slot-vm.md says what was seen).
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _boot_disk as boot
from ansible_collections.gpuaas.slice.plugins.module_utils._compose import Part
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import Sysfs
from ansible_collections.gpuaas.slice.plugins.module_utils._provision import Provision
from ansible_collections.gpuaas.slice.plugins.modules import nvme_wipe, slot_image, vfio_bind
from tests.unit.module_runner import run_module

from .conftest import SLOTS, binding, namespace_of

_GPU, NVME, _PF, _NODE = SLOTS[1]
SLOT = 'lab-s1'
MIB = 1 << 20


@pytest.fixture
def image(tmp_path):
    """A 4 MiB raw image, random but for a recognisable first sector, and its checksum."""
    images = tmp_path / 'images'
    images.mkdir()
    data = b'GPUAAS-BOOT-DISK' * 32 + os.urandom(4 * MIB - 512)
    path = images / 'base.raw'
    path.write_bytes(data)
    return str(path), 'sha256:' + hashlib.sha256(data).hexdigest(), data


def namespace():
    sysfs = Sysfs('/sys')
    return boot.nvme_namespace(sysfs, '/proc', '/dev', boot.nvme_controller(sysfs, NVME))


def head(path, size):
    with open(path, 'rb') as handle:
        return handle.read(size)


class Module:
    def __init__(self, params):
        self.params = params
        self.check_mode = self._diff = False


def test_the_image_goes_onto_the_namespace_before_vfio_and_the_wipe_leaves_it_zero(capsys, tmp_path, image):
    source, checksum, data = image
    assert binding(NVME)[0] == 'nvme'
    name = namespace_of(NVME)
    found = namespace()
    assert found == '/dev/' + name, found
    state = str(tmp_path / 'slot-images')
    written = run_module(slot_image, {'slot_id': SLOT, 'source': source, 'checksum': checksum, 'source_format': 'raw',
                                      'source_dirs': [os.path.dirname(source)], 'target_device': found,
                                      'state_dir': state}, capsys=capsys)
    assert written['changed'] is True and written['target_kind'] == 'device', written
    assert head(found, len(data)) == data
    again = run_module(slot_image, {'slot_id': SLOT, 'source': source, 'checksum': checksum, 'source_format': 'raw',
                                    'source_dirs': [os.path.dirname(source)], 'target_device': found,
                                    'state_dir': state}, capsys=capsys)
    assert again['changed'] is False, again

    vfio_state = str(tmp_path / 'vfio')
    bound = run_module(vfio_bind, {'address': NVME, 'state_dir': vfio_state}, capsys=capsys)
    try:
        assert bound['changed'] is True and binding(NVME)[0] == 'vfio-pci', bound
        assert not os.path.exists(found) and not os.path.exists('/sys/class/block/' + name)
        # A second allocate after a crash here: the namespace is gone, the marker says the image is whole.
        params = {'slot_id': SLOT, 'sysfs_root': '/sys', 'proc_root': '/proc', 'dev_root': '/dev'}
        part = Part(None, {'source_format': 'raw', 'checksum': checksum, 'size': None, 'format': 'raw',
                           'state_dir': state, 'target_device': '/dev'})
        assert Provision(Module(params)).boot_disk(part, NVME)['written']['source_checksum'] == checksum
        with pytest.raises(boot.BootDiskError, match='bound to vfio-pci, not on the host\'s nvme driver'):
            namespace()
    finally:
        back = run_module(vfio_bind, {'address': NVME, 'state_dir': vfio_state, 'state': 'absent'}, capsys=capsys)
        assert back['changed'] is True and binding(NVME)[0] == 'nvme', back
    name = namespace_of(NVME)
    assert head('/dev/' + name, len(data)) == data       # the tenant's disk, until the wipe

    wiped = run_module(nvme_wipe, {'target': NVME, 'policy': 'zero'}, capsys=capsys)
    assert wiped['changed'] is True, wiped
    report = wiped['targets'][0]
    assert report['device'] == name and report['verification']['passed'] is True, report
    assert report['bytes_written'] == report['size_bytes'] >= 64 * MIB
    with open('/dev/' + name, 'rb') as handle:
        size = handle.seek(0, 2)
        for offset in range(0, size, MIB):
            handle.seek(offset)
            assert handle.read(MIB) == bytes(MIB), 'byte %d of /dev/%s is not zero after the wipe' % (offset, name)
    removed = run_module(slot_image, {'slot_id': SLOT, 'state': 'absent', 'target_device': '/dev/' + name,
                                      'state_dir': state}, capsys=capsys)
    assert removed['changed'] is True and not os.listdir(state), removed


def test_a_namespace_a_process_holds_is_no_boot_disk(capsys):
    name = namespace_of(NVME)
    with open('/dev/' + name, 'rb') as node:
        holder = subprocess.Popen(['sleep', '60'], stdin=node)
    try:
        with pytest.raises(boot.BootDiskError) as info:
            namespace()
        assert '/dev/%s is open by pid %d (sleep)' % (name, holder.pid) in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    assert namespace() == '/dev/' + name
