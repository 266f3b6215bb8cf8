# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: whether a NUMA node has the free hugepages a slot VM's memory needs.

A VM whose memory is backed by hugepages (slot_vm ``hugepages``) takes them from its NUMA
node when its memory is bound there (``numatune``), else from anywhere on the host. QEMU
fails late, and with a message about a memory backend, when there are too few; the slot is
refused before the start instead, naming the node, the page size and the counts. The
counts are the kernel's: ``/sys/devices/system/node/nodeN/hugepages/hugepages-SIZEkB/
free_hugepages`` for a node, ``/sys/kernel/mm/hugepages/hugepages-SIZEkB/free_hugepages``
for the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

SIZE_DIR_RE = re.compile(r'hugepages-([0-9]+)kB')


def _where(numa_node):
    if numa_node is None:
        return 'kernel/mm/hugepages', 'the host'
    return 'devices/system/node/node%d/hugepages' % numa_node, 'NUMA node %d' % numa_node


def sizes(sysfs, numa_node=None):
    """The hugepage sizes (KiB) the node (or host) offers, smallest first."""
    base, _who = _where(numa_node)
    found = [SIZE_DIR_RE.fullmatch(entry) for entry in sysfs.listdir(base)]
    return sorted(int(match.group(1)) for match in found if match)


def problem(sysfs, numa_node, size_kib, memory_mib):
    """Why a VM of ``memory_mib`` cannot have hugepages of ``size_kib`` from ``numa_node`` (None:
    the host's), or None when the node has enough free ones."""
    base, who = _where(numa_node)
    offered = ', '.join('%d' % size for size in sizes(sysfs, numa_node)) or 'none'
    if size_kib is None:
        return ('hugepages=true needs hugepage_size_kb, so that the free hugepages of %s can be checked '
                'before the start (sizes it has, in KiB: %s)' % (who, offered))
    if (memory_mib * 1024) % size_kib:
        return ('memory_mib %d is not a whole number of %d KiB hugepages: give a memory size that is a '
                'multiple of %d KiB' % (memory_mib, size_kib, size_kib))
    needed = memory_mib * 1024 // size_kib
    path = '%s/hugepages-%dkB/free_hugepages' % (base, size_kib)
    if not sysfs.isdir('%s/hugepages-%dkB' % (base, size_kib)):
        return ('%s has no hugepages of %d KiB (%s); sizes it has, in KiB: %s'
                % (who, size_kib, sysfs.path(path), offered))
    free = sysfs.read_int(path)
    if free is None:
        return ('the free hugepages of %d KiB on %s cannot be read (%s): refusing to start without knowing'
                % (size_kib, who, sysfs.path(path)))
    if free < needed:
        return ('%s has %d free hugepages of %d KiB; the slot\'s %d MiB of memory needs %d: reserve more '
                '(%s/hugepages-%dkB/nr_hugepages) or turn hugepages off'
                % (who, free, size_kib, memory_mib, needed, sysfs.path(base), size_kib))
    return None
