# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: where a slot's boot disk lives, so that release can wipe it.

A slot with passthrough and an NVMe of its own boots from that NVMe: slot_provision writes
the image onto the controller's one namespace while the host's ``nvme`` driver still has it,
then hands the controller to vfio-pci, and the VM boots from the NVMe hostdev. The whole
drive is the tenant's and nothing of it stays on host storage; release wipes it by the
slot's policy (nvme_wipe) before the lease is freed. A slot without an NVMe of its own, or a
host that cannot pass devices through, boots from a file ``{disk_dir}/{slot_id}.raw`` on
host storage; release overwrites that file's data with zeros, fsyncs, verifies it by
sampling (nvme_wipe on a file) and only then removes it.

The lease records the disk (``data.boot_disk``: ``kind`` nvme or file, ``path``, the NVMe's
address) before anything is written, so a release, or a second release after a crash, knows
what to wipe.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import CLASS_NVME, PciError
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError

NVME = 'nvme'
FILE = 'file'
# A file boot disk is wiped with zeros whatever the slot's NVMe policy: neither nvme format
# nor blkdiscard works on a file.
FILE_POLICY = 'zero'


class BootDiskError(GpuaasError):
    """The slot's boot disk cannot be placed; nothing was written."""


def _refuse(device, why):
    return BootDiskError('the boot disk of this slot is its NVMe %s, but %s; nothing was written'
                         % (device.describe(), why), nvme_address=device.address)


def nvme_controller(sysfs, address):
    """The PciDevice of the slot's NVMe controller, or BootDiskError when it is none."""
    try:
        device = devctl.get_device(sysfs, devctl.open_bus(sysfs), devctl.check_address(address, 'nvme_address'))
    except devctl.DeviceError as exc:
        raise BootDiskError('the boot disk of this slot is its NVMe, but %s' % exc, nvme_address=address)
    if (device.pci_class or 0) >> 8 != CLASS_NVME:
        raise _refuse(device, 'that is not an NVMe controller (class %s)' % (
            'unknown' if device.pci_class is None else '0x%06x' % device.pci_class))
    return device


def nvme_namespace(sysfs, proc_root, dev_root, device):
    """The device node (``dev_root/nvmeXnY``) of the one namespace of ``device`` the image may
    be written onto, or BootDiskError saying why not.

    The controller must be on the host's ``nvme`` driver (it alone shows the namespaces, in
    ``/sys/bus/pci/devices/ADDR/nvme/nvmeX/nvmeXnY``) and have exactly one namespace, neither
    read-only nor used by the host (mounted, swap, a partition of it mounted, a holder such
    as device-mapper or md on top) nor open by any process; ``dev_root/nvmeXnY`` must be the
    block device whose number sysfs gives (``class/block/nvmeXnY/dev``).
    """
    if device.driver != 'nvme':
        raise _refuse(device, 'it is %s, not on the host\'s nvme driver, so its namespace cannot be written%s'
                      % ('bound to %s' % device.driver if device.driver else 'bound to no driver',
                         ' (a second run after the image was written finds it there: see the image marker)'
                         if device.driver == devctl.VFIO_DRIVER else ''))
    host = HostUsage(sysfs, proc_root)
    names = host.nvme_namespaces(device)
    if len(names) != 1:
        raise _refuse(device, 'it has %s: the slot needs exactly one to boot from' % (
            '%d namespaces (%s)' % (len(names), ', '.join(names)) if names
            else 'no namespace (no nvmeXnY under its nvme/ directory)'))
    name = names[0]
    if not sysfs.exists('class/block/' + name):
        raise _refuse(device, 'its namespace %s has no class/block entry' % name)
    if sysfs.read('class/block/%s/ro' % name) not in ('0', None):
        raise _refuse(device, 'its namespace %s is read-only' % name)
    try:
        why = host.block_usage(name)
    except PciError as exc:
        raise _refuse(device, 'the host\'s use of %s cannot be seen: %s' % (name, exc))
    if why:
        raise _refuse(device, 'the host uses its namespace: %s' % why)
    path = os.path.join(dev_root, name)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _refuse(device, '%s cannot be opened (%s)' % (path, exc.strerror))
    if not stat.S_ISBLK(info.st_mode):
        raise _refuse(device, '%s is not a block device' % path)
    number = '%d:%d' % (os.major(info.st_rdev), os.minor(info.st_rdev))
    if number != sysfs.read('class/block/%s/dev' % name):
        raise _refuse(device, '%s is block device %s, not its namespace %s (%s in sysfs)'
                      % (path, number, name, sysfs.read('class/block/%s/dev' % name) or 'no dev attribute'))
    partitions = [os.path.join(dev_root, entry) for entry in sysfs.listdir('class/block/' + name)
                  if entry.startswith(name) and entry != name]
    try:
        holders = devctl.open_files(proc_root, [path] + partitions)
    except devctl.DeviceError as exc:
        raise _refuse(device, 'who holds %s cannot be seen: %s' % (path, exc))
    if holders:
        raise _refuse(device, devctl.describe_holders(holders))
    return path


def record(kind, path, nvme_address=None):
    """What the lease keeps of the boot disk (``data.boot_disk``)."""
    return {'kind': kind, 'path': path, 'nvme_address': nvme_address}


def image_marker_matches(marker, want):
    """Whether an image marker (slot_image's, in its state_dir) says the whole image was written:
    for a second run that finds the NVMe already on vfio-pci, where its namespace is gone."""
    keys = ('version', 'slot_id', 'source_checksum', 'source_format', 'target_format', 'size')
    return isinstance(marker, dict) and all(marker.get(key) == want.get(key) for key in keys)
