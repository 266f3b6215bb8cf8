# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests that run inside the real-kernel lab guest (lab/kernel/kernel_lab.py), against its /sys.

Outside the guest they are skipped: they need the lab's real IOMMU, its stand-in GPUs and
its SR-IOV NVMe controllers, and they change the kernel's device bindings.
"""

from __future__ import annotations

import os
import time

import pytest

IN_LAB = os.environ.get('GPUAAS_KERNEL_LAB') == '1'

# The lab machine's topology (see qemu_argv in lab/kernel/kernel_lab.py).
LAB_GPU_VENDOR = '1234'
SHARED_GPU = '0000:02:01.0'      # behind a PCIe-to-PCI bridge, with a NIC in its group
SHARED_NIC = '0000:02:02.0'
SLOTS = [
    # (gpu, nvme, fabric PF, numa node)
    ('0000:21:00.0', '0000:22:00.0', '0000:23:00.0', 0),
    ('0000:41:00.0', '0000:42:00.0', '0000:43:00.0', 1),
]


PCI = '/sys/bus/pci/devices'


def read(path):
    with open(path) as handle:
        return handle.read().strip()


def write(path, value):
    with open(path, 'w') as handle:
        handle.write(value)


def binding(address):
    """(driver or None, driver_override) of a PCI function."""
    link = '%s/%s/driver' % (PCI, address)
    return (os.path.basename(os.readlink(link)) if os.path.islink(link) else None,
            read('%s/%s/driver_override' % (PCI, address)))


def group_of(address):
    return os.path.basename(os.readlink('%s/%s/iommu_group' % (PCI, address)))


def namespace_of(address, wait_s=60):
    """The NVMe controller's namespace; the nvme driver scans it a moment after it binds."""
    prefix = os.path.realpath('%s/%s' % (PCI, address)) + '/'
    deadline = time.monotonic() + wait_s
    while True:
        names = [n for n in sorted(os.listdir('/sys/class/block'))
                 if os.path.realpath('/sys/class/block/' + n).startswith(prefix)
                 and not os.path.exists('/sys/class/block/%s/partition' % n)]
        if names or time.monotonic() > deadline:
            assert names, 'no namespace of %s appeared within %d s' % (address, wait_s)
            return names[0]
        time.sleep(0.2)


def pytest_collection_modifyitems(config, items):
    if IN_LAB:
        return
    skip = pytest.mark.skip(reason='runs inside the real-kernel lab guest only (make kernel-lab)')
    for item in items:
        if 'kernel_lab' in str(item.fspath):
            item.add_marker(skip)
