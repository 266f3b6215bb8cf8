# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the PCI/sysfs model shared by every module.

Everything the collection knows about PCI devices is read here, through one
:class:`Sysfs` accessor rooted at ``sysfs_root`` (``/sys`` on a real host, a tree
built by the tests elsewhere). Nothing in this file writes; the device modules
write through :meth:`Sysfs.write` so the kernel model in the tests can react. A path that
resolves outside the tree (an attribute that is a symlink leaving ``sysfs_root``) is
neither read nor written: :meth:`Sysfs.resolve` refuses it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    GpuaasError,
    PCI_ADDRESS,
    parse_cpulist as contract_cpulist,
)

# A full PCI address (the contract's rule), matched whole.
BDF_RE = PCI_ADDRESS.regex
O_PATH = getattr(os, 'O_PATH', None)
PCI_ROOT_RE = re.compile(r'^pci([0-9a-f]{4,8}):([0-9a-f]{2})\Z')

# PCI class codes (base class << 8 | subclass) that the collection cares about.
CLASS_VGA = 0x0300
CLASS_3D = 0x0302
CLASS_DISPLAY_OTHER = 0x0380
GPU_CLASSES = (CLASS_VGA, CLASS_3D, CLASS_DISPLAY_OTHER)
CLASS_NVME = 0x0108
CLASS_ETHERNET = 0x0200
CLASS_INFINIBAND = 0x0207
BASE_CLASS_BRIDGE = 0x06

BASE_CLASS_NAMES = {
    0x00: 'unclassified device',
    0x01: 'storage controller',
    0x02: 'network controller',
    0x03: 'display controller',
    0x04: 'multimedia controller',
    0x05: 'memory controller',
    0x06: 'bridge',
    0x07: 'communication controller',
    0x08: 'system peripheral',
    0x09: 'input device',
    0x0c: 'serial bus controller',
    0x0d: 'wireless controller',
    0x12: 'processing accelerator',
}
SUBCLASS_NAMES = {
    0x0100: 'SCSI controller',
    0x0101: 'IDE controller',
    0x0104: 'RAID controller',
    0x0106: 'SATA controller',
    0x0107: 'SAS controller',
    0x0108: 'NVMe controller',
    0x0200: 'Ethernet controller',
    0x0207: 'InfiniBand controller',
    0x0300: 'VGA controller',
    0x0302: '3D controller',
    0x0380: 'display controller',
    0x0403: 'audio device',
    0x0600: 'host bridge',
    0x0604: 'PCI bridge',
    0x0680: 'bridge',
    0x0c03: 'USB controller',
}


class PciError(GpuaasError):
    """A PCI address or sysfs tree the collection cannot work with."""


def parse_bdf(value):
    """Return the canonical (lower-case) form of a full PCI address, or raise PciError.

    Only the full form ``DDDD:BB:DD.F`` is accepted: a short ``BB:DD.F`` is
    ambiguous on hosts with more than one PCI segment.
    """
    if not isinstance(value, str):
        raise PciError('PCI address must be a string, got %s' % type(value).__name__)
    canonical = value.lower()
    if not BDF_RE.fullmatch(canonical):
        raise PciError(
            "%r is not a full PCI address: expected domain:bus:device.function, "
            "for example '0000:1b:00.0'" % (value,))
    return canonical


def bdf_key(address):
    """Sort key that orders PCI addresses numerically (segment 0001 after 0000)."""
    match = BDF_RE.fullmatch(address)
    if not match:
        return (float('inf'), address)
    return tuple(int(part, 16) for part in match.groups())


def bdf_parts(address):
    """(domain, bus, device, function) as integers."""
    return bdf_key(parse_bdf(address))


def format_bdf(domain, bus, device, function):
    return '%04x:%02x:%02x.%x' % (domain, bus, device, function)


def same_device(a, b):
    """True when two functions belong to one physical device (same domain:bus:device)."""
    return a.rsplit('.', 1)[0] == b.rsplit('.', 1)[0]


def vf_address(pf_address, offset, stride, index):
    """Address of VF ``index`` of a PF, computed the way the PCIe SR-IOV spec routes it.

    The VF's routing ID is the PF's routing ID (bus << 8 | devfn) plus
    ``offset + stride * index``; it may land on a later bus number.
    """
    domain, bus, dev, fn = bdf_parts(pf_address)
    rid = (bus << 8 | dev << 3 | fn) + offset + stride * index
    if rid > 0xffff:
        raise PciError('VF %d of %s would lie beyond bus ff (offset %d, stride %d)'
                       % (index, pf_address, offset, stride))
    return format_bdf(domain, rid >> 8, (rid >> 3) & 0x1f, rid & 0x7)


def class_name(pci_class):
    """Plain-English name of a 24-bit PCI class code, for messages."""
    if pci_class is None:
        return 'device of unknown class'
    sub = pci_class >> 8
    return SUBCLASS_NAMES.get(sub) or BASE_CLASS_NAMES.get(sub >> 8, 'device')


def parse_cpulist(text):
    """The CPUs of a cpulist the kernel wrote ('0-3,8,10-11'); '' or None is none.

    The contract's parser, so a damaged or hostile file is refused before it is expanded.
    """
    text = (text or '').strip()
    return contract_cpulist(text) if text else []


def real_path(path):
    """``os.path.realpath(path)``, asked of the kernel where it can answer.

    An ``O_PATH`` descriptor follows every symlink without opening the file (no device is
    opened, no FIFO waited on) and ``/proc/self/fd`` names where it landed: three system calls
    instead of an lstat per component. A path that does not exist is resolved as realpath does.
    """
    if O_PATH is not None:
        try:
            fd = os.open(path, O_PATH | os.O_CLOEXEC)
        except OSError:
            return os.path.realpath(path)
        try:
            return os.readlink('/proc/self/fd/%d' % fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    return os.path.realpath(path)


class Sysfs:
    """Read (and, for the device modules, write) a sysfs tree rooted at ``root``.

    Paths given to the methods are relative to the root ('bus/pci/devices/...').
    Callers validate PCI addresses with :func:`parse_bdf` before building paths, and
    :meth:`read` and :meth:`write` refuse a path that resolves outside the tree, so neither a
    caller-supplied string nor a symlink planted in the tree reaches a file elsewhere.
    """

    def __init__(self, root='/sys'):
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)

    def path(self, rel):
        return os.path.join(self.root, rel)

    def exists(self, rel):
        return os.path.lexists(self.path(rel))

    def isdir(self, rel):
        return os.path.isdir(self.path(rel))

    def resolve(self, rel):
        """The real path of ``rel``, or PciError when it resolves outside the tree."""
        real = real_path(self.path(rel))
        if real != self.real_root and not real.startswith(self.real_root.rstrip(os.sep) + os.sep):
            raise PciError('%s resolves to %s, outside the sysfs tree %s: refusing to follow it'
                           % (self.path(rel), real, self.root))
        return real

    def read(self, rel):
        """File content stripped of surrounding white space, or None when absent/unreadable.

        PciError when the path resolves outside the tree: what it says is not the kernel's.
        """
        real = self.resolve(rel)
        try:
            with open(real, 'r') as handle:
                return handle.read().strip()
        except (IOError, OSError, UnicodeDecodeError):
            return None

    def read_int(self, rel, base=10):
        value = self.read(rel)
        if value is None:
            return None
        try:
            return int(value, base)
        except ValueError:
            return None

    def listdir(self, rel):
        try:
            return sorted(os.listdir(self.path(rel)))
        except (IOError, OSError):
            return []

    def listdir_strict(self, rel, missing_ok=False):
        """Like listdir, but a directory that exists and cannot be read raises PciError.

        For the listings a decision rests on (the PCI devices, the IOMMU groups): a
        discovery that cannot see must say so, never report an empty host.
        """
        try:
            return sorted(os.listdir(self.path(rel)))
        except (IOError, OSError) as exc:
            if missing_ok and not os.path.lexists(self.path(rel)):
                return []
            raise PciError('cannot read %s: %s' % (self.path(rel), exc.strerror or exc))

    def link_name(self, rel):
        """Basename of a symlink's target (a driver's or IOMMU group's name), or None.

        PciError when the link leads outside the tree: the kernel's links never do.
        """
        try:
            name = os.path.basename(os.readlink(self.path(rel)))
        except (IOError, OSError):
            return None
        self.resolve(rel)
        return name

    def realpath(self, rel):
        return os.path.realpath(self.path(rel))

    def write(self, rel, value):
        """Write ``value`` to a sysfs attribute the way ``echo value > attr`` does, inside the tree."""
        with open(self.resolve(rel), 'w') as handle:
            handle.write(value)


class PciDevice:
    """One PCI function as sysfs shows it. Attributes are read lazily and cached."""

    def __init__(self, sysfs, address):
        self.sysfs = sysfs
        self.address = address
        self.rel = 'bus/pci/devices/' + address
        self._cache = {}

    def _attr(self, name, reader):
        if name not in self._cache:
            self._cache[name] = reader()
        return self._cache[name]

    def read(self, attr):
        return self._attr('r:' + attr, lambda: self.sysfs.read(self.rel + '/' + attr))

    def read_hex(self, attr):
        return self._attr('h:' + attr, lambda: self.sysfs.read_int(self.rel + '/' + attr, 16))

    def read_int(self, attr):
        return self._attr('i:' + attr, lambda: self.sysfs.read_int(self.rel + '/' + attr))

    def has(self, attr):
        return self.sysfs.exists(self.rel + '/' + attr)

    @property
    def pci_class(self):
        return self.read_hex('class')

    def _hex4(self, attr):
        value = self.read_hex(attr)
        return None if value is None else '%04x' % value

    @property
    def vendor_id(self):
        return self._hex4('vendor')

    @property
    def device_id(self):
        return self._hex4('device')

    @property
    def subsystem_vendor_id(self):
        return self._hex4('subsystem_vendor')

    @property
    def subsystem_device_id(self):
        return self._hex4('subsystem_device')

    @property
    def driver(self):
        return self._attr('driver', lambda: self.sysfs.link_name(self.rel + '/driver'))

    @property
    def iommu_group(self):
        return self._attr('iommu_group', lambda: self.sysfs.link_name(self.rel + '/iommu_group'))

    @property
    def numa_node(self):
        """The kernel's numa_node (-1 when the firmware does not say), None when unreadable."""
        return self.read_int('numa_node')

    @property
    def is_bridge(self):
        return self.pci_class is not None and self.pci_class >> 16 == BASE_CLASS_BRIDGE

    @property
    def is_vf(self):
        return self.has('physfn')

    @property
    def sysfs_path(self):
        """The device's real directory relative to the root: 'devices/pci0000:00/.../BDF'."""
        def resolve():
            real = self.sysfs.realpath(self.rel)
            rel = os.path.relpath(real, self.sysfs.root)
            return rel.replace(os.sep, '/')
        return self._attr('sysfs_path', resolve)

    @property
    def pcie_path(self):
        """The PCI root and every bridge above the device, ending with the device itself."""
        def parse():
            parts = self.sysfs_path.split('/')
            for index, part in enumerate(parts):
                if PCI_ROOT_RE.match(part):
                    return [part] + [p for p in parts[index + 1:] if BDF_RE.fullmatch(p)]
            return [p for p in parts if BDF_RE.fullmatch(p)]
        return self._attr('pcie_path', parse)

    def describe(self):
        """'0000:00:17.0 (SATA controller, class 0x010601, driver ahci)' for messages."""
        pci_class = self.pci_class
        class_hex = 'unknown' if pci_class is None else '0x%06x' % pci_class
        return '%s (%s, class %s, driver %s)' % (
            self.address, class_name(pci_class), class_hex, self.driver or 'none')


class PciBus:
    """The host's PCI functions, as listed under bus/pci/devices."""

    def __init__(self, sysfs):
        self.sysfs = sysfs
        if not sysfs.isdir('bus/pci/devices'):
            raise PciError(
                '%s has no bus/pci/devices directory: it is not a sysfs tree '
                '(is sysfs mounted, and is sysfs_root right?)' % sysfs.root)
        self._devices = {}
        for name in sysfs.listdir_strict('bus/pci/devices'):
            if BDF_RE.fullmatch(name):
                self._devices[name] = PciDevice(sysfs, name)

    def __contains__(self, address):
        return address in self._devices

    def get(self, address):
        return self._devices.get(address)

    def addresses(self):
        return sorted(self._devices, key=bdf_key)

    def devices(self):
        return [self._devices[a] for a in self.addresses()]

    def iommu_groups(self):
        """{group name: sorted member addresses}; empty when the IOMMU is off."""
        groups = {}
        for group in self.sysfs.listdir_strict('kernel/iommu_groups', missing_ok=True):
            members = [m for m in self.sysfs.listdir_strict('kernel/iommu_groups/%s/devices' % group)
                       if BDF_RE.fullmatch(m)]
            groups[group] = sorted(members, key=bdf_key)
        return groups
