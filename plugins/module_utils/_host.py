# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: what the host itself is using.

A device the host uses (its boot disk, a mounted namespace, swap, a device-mapper
or md stack on top of it) must never be offered to or handed to a tenant. A ``proc_root``
whose ``mounts`` cannot be read is an error, never "nothing is mounted": a check that
cannot see refuses.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils._pci import PciError

NVME_NS_RE = re.compile(r'^nvme(\d+)(?:c\d+)?(n\d+)\Z')


def _proc_lines(proc_root, name, missing_ok=False):
    """The lines of ``proc_root/name``; PciError when it cannot be read (ENOENT too, unless ok)."""
    path = os.path.join(proc_root, name)
    try:
        with open(path, 'r') as handle:
            return handle.read().splitlines()
    except (IOError, OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        if missing_ok and getattr(exc, 'errno', None) == errno.ENOENT and os.path.isdir(proc_root):
            return []
        raise PciError('cannot read %s (%s), so the module cannot see what the host has mounted; '
                       'it refuses rather than take every disk for unused (is proc_root right?)'
                       % (path, getattr(exc, 'strerror', None) or exc))


class HostUsage:
    """Block devices the host has mounted or uses as swap, resolved through sysfs."""

    def __init__(self, sysfs, proc_root='/proc'):
        self.sysfs = sysfs
        self.proc_root = proc_root
        self._in_use = None

    def _dm_names(self):
        names = {}
        for block in self.sysfs.listdir('class/block'):
            if block.startswith('dm-'):
                name = self.sysfs.read('class/block/%s/dm/name' % block)
                if name:
                    names[name] = block
        return names

    def mounted(self):
        """{block device name: where it is used} for every mount and swap device."""
        if self._in_use is not None:
            return self._in_use
        used = {}
        dm_names = None
        sources = [(line.split(), 1) for line in _proc_lines(self.proc_root, 'mounts')]
        sources += [(line.split(), None) for line in _proc_lines(self.proc_root, 'swaps', missing_ok=True)[1:]]
        for fields, where in sources:
            if not fields or not fields[0].startswith('/dev/'):
                continue
            device = fields[0]
            if device.startswith('/dev/mapper/'):
                if dm_names is None:
                    dm_names = self._dm_names()
                name = dm_names.get(device[len('/dev/mapper/'):])
            else:
                name = os.path.basename(os.path.realpath(device)) if os.path.exists(device) \
                    else os.path.basename(device)
            if name:
                used[name] = ('mounted on %s' % fields[where]) if where and len(fields) > where \
                    else 'used as swap'
        self._in_use = used
        return used

    def block_usage(self, block, _seen=None):
        """Why a block device (or a partition or holder on top of it) is in use, or None."""
        seen = _seen if _seen is not None else set()
        if block in seen:
            return None
        seen.add(block)
        mounted = self.mounted()
        if block in mounted:
            return '%s is %s' % (block, mounted[block])
        base = 'class/block/' + block
        partitions = [entry for entry in self.sysfs.listdir(base)
                      if entry.startswith(block) and entry != block]
        for name in partitions:
            reason = self.block_usage(name, seen)
            if reason:
                return reason
        for holder in self.sysfs.listdir(base + '/holders'):
            # A device-mapper or md device on top is host use even when not mounted
            # (an LVM volume backing something else, a RAID member).
            return self.block_usage(holder, seen) or '%s is held by %s' % (block, holder)
        return None

    def nvme_namespaces(self, device):
        """Block device names of every namespace of an NVMe controller (a PciDevice)."""
        names = []
        for ctrl in self.sysfs.listdir(device.rel + '/nvme'):
            for entry in self.sysfs.listdir('%s/nvme/%s' % (device.rel, ctrl)):
                match = NVME_NS_RE.match(entry)
                if match:
                    # nvme0c1n1 is a multipath path of the block device nvme0n1
                    name = 'nvme%s%s' % match.groups()
                    if name not in names:
                        names.append(name)
        return names

    def nvme_usage(self, device):
        """Why the host uses this NVMe controller (a mounted namespace...), or None."""
        for namespace in self.nvme_namespaces(device):
            reason = self.block_usage(namespace)
            if reason:
                return reason
        return None
