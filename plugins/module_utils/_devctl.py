# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the device-control engine under vfio_bind, sriov_vfs, pci_reset, nvme_wipe.

What the four device modules share:

* :func:`open_sysfs`, the one way they reach sysfs. The unit tests replace it with the
  kernel model of ``tests/sysfs/kernel_model.py``, whose ``write`` behaves as the
  kernel's attributes do, so every write a module makes goes through it.
* :class:`DevicePlan`, the engine's plan (``_engine.Plan``) over one sysfs tree, with the
  sysfs write as a step (:class:`SysfsWrite`): the attribute must resolve inside the tree
  it was given, and where the kernel shows the value written it is read back. A module
  builds its plan from the wanted and the current state, the engine runs it (nothing in
  check mode) and a failing step is a :class:`DeviceError` saying which step, of how many,
  failed and why. Every command goes through the engine's ``Runner``.
* The "in use" checks: who holds a ``/dev/vfio`` node or a block device open (the fd
  links under ``/proc/<pid>/fd``), whether the host uses a device's block devices
  (mounts, swap, holders, through :class:`HostUsage`), its network interfaces (up with an
  address of global or site scope, or enslaved to a bridge or bond: ``ip -j addr``) or
  its framebuffer console.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    BASE_CLASS_NAMES,
    PciBus,
    PciError,
    Sysfs,
    parse_bdf,
)
from ansible_collections.gpuaas.slice.plugins.module_utils import _engine
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, Step, Wait, oserror
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    IFNAME,
    GpuaasError,
    show,
)

VFIO_DRIVER = 'vfio-pci'
# The nvidia driver's GPU device nodes are /dev/nvidia0 to /dev/nvidia254 (255 is nvidiactl).
NVIDIA_MINORS = 255


class DeviceError(GpuaasError):
    """A device operation that must not or could not be done; ``details`` go into the result."""


def open_sysfs(root):
    """The sysfs accessor every device module uses (the tests put the kernel model here)."""
    return Sysfs(root)


def check_address(value, what='address'):
    """Canonical full PCI address, or DeviceError naming the option."""
    try:
        return parse_bdf(value)
    except PciError as exc:
        raise DeviceError('%s: %s' % (what, exc))


def open_bus(sysfs):
    try:
        return PciBus(sysfs)
    except PciError as exc:
        raise DeviceError(str(exc))


def iommu_groups(bus):
    """bus.iommu_groups(), with an unreadable kernel/iommu_groups as a DeviceError."""
    try:
        return bus.iommu_groups()
    except PciError as exc:
        raise DeviceError('%s; the module cannot see the IOMMU groups and changes nothing' % exc)


def get_device(sysfs, bus, address):
    """The PciDevice at ``address``, or DeviceError when the host has no such function."""
    if address not in bus:
        raise DeviceError(
            'no PCI function %s under %s/bus/pci/devices: check the address (lspci -D lists '
            'them) and that the device has not been removed' % (address, sysfs.root))
    return bus.get(address)


def read_override(sysfs, address):
    """The device's driver_override, None when unset (the kernel shows '(null)')."""
    value = sysfs.read('bus/pci/devices/%s/driver_override' % address)
    if value in (None, '', '(null)'):
        return None
    return value


def base_class(device):
    pci_class = device.pci_class
    return None if pci_class is None else pci_class >> 16


def tool(runner, name, package, why):
    """The path of a command the module needs, or DeviceError saying what it is for."""
    try:
        return runner.path(name)
    except GpuaasError:
        raise DeviceError("the '%s' command (%s) is not installed; %s" % (name, package, why))


def engine_of(cls):
    """``run_module``'s engine for a device module: ``cls(module, **params)`` run by ``_engine.engine_of``."""
    return _engine.engine_of(lambda module: cls(module, **module.params))


# -- plans -------------------------------------------------------------------


def label(device, text):
    return ('%s: %s' % (device, text)) if device else text


def write(sysfs, rel, value):
    """Write a sysfs attribute that resolves inside the tree (Sysfs.resolve refuses others)."""
    sysfs.resolve(rel)
    sysfs.write(rel, value)


class SysfsWrite(Step):
    """Write ``value`` to a sysfs attribute (relative to the root), never outside the tree.

    The target is resolved when the step is made (so a plan with a write that would leave the
    tree is refused before its first step runs) and again when it is applied.

    ``readback``: what the attribute shows once the kernel took the value (driver_override,
    sriov_numvfs...); None for the attributes that only act (bind, unbind, reset).
    """

    def __init__(self, sysfs, what, rel, value, readback=None, **kwargs):
        super(SysfsWrite, self).__init__('%s: write %r to %s' % (what, value, sysfs.path(rel)), **kwargs)
        sysfs.resolve(rel)          # refused when planned, before any step of the plan runs
        self.sysfs = sysfs
        self.rel = rel
        self.value = value
        self.readback = readback

    def apply(self, plan):
        write(self.sysfs, self.rel, self.value)

    def verify(self, plan):
        if self.readback is None:
            return None
        now = self.sysfs.read(self.rel)
        return None if now == self.readback else '%s reads %r, not %r' % (
            self.sysfs.path(self.rel), now, self.readback)


class DevicePlan(Plan):
    """An engine plan over one sysfs tree; steps are labelled with the device they touch."""

    def __init__(self, module, sysfs, timeout=10.0):
        super(DevicePlan, self).__init__(module, error=DeviceError, timeout=timeout)
        self.sysfs = sysfs

    def write(self, device, description, rel, value, readback=None, **kwargs):
        return self.add(SysfsWrite(self.sysfs, label(device, description), rel, value, readback,
                                   **kwargs))

    def wait_for(self, device, description, predicate, failure):
        step = Wait(description, predicate, failure)
        step.what = step.key = label(device, step.what)
        return self.add(step)

    def run(self, device, description, argv, **kwargs):
        return self.command(label(device, '%s: run %s' % (description, ' '.join(argv))), argv, **kwargs)

    def touches_sysfs(self):
        return any(isinstance(step, SysfsWrite) for step in self.steps)


# -- who uses a device -------------------------------------------------------


def open_files(proc_root, paths):
    """{path: [{'pid': N, 'comm': name}]} for every process holding one of ``paths`` open.

    Reads the fd links under ``proc_root/<pid>/fd``, as lsof and fuser do. A process that
    exits during the scan is skipped; a ``proc_root`` that cannot be read, or is not a procfs
    (no ``mounts``), or a process whose fds cannot be read for another reason, is a
    DeviceError: a check that cannot see refuses, it never reads as "nobody holds it".
    """
    wanted = set(paths)
    found = {}
    if not wanted:
        return found
    try:
        if not os.path.isfile(os.path.join(proc_root, 'mounts')):
            raise OSError(errno.ENOENT, 'not a procfs: it has no mounts file')
        pids = [entry for entry in os.listdir(proc_root) if entry.isdigit()]
    except (IOError, OSError, ValueError, TypeError) as exc:
        raise DeviceError('cannot read the processes under proc_root %s (%s), so the module cannot '
                          'see who holds %s open; it changes nothing'
                          % (show(proc_root), oserror(exc), ', '.join(sorted(wanted))))
    for pid in sorted(pids, key=int):
        fd_dir = os.path.join(proc_root, pid, 'fd')
        try:
            fds = os.listdir(fd_dir)
        except (IOError, OSError) as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                continue                        # the process has exited
            raise DeviceError('cannot read %s (%s), so the module cannot see whether that '
                              'process holds %s open; it changes nothing'
                              % (fd_dir, oserror(exc), ', '.join(sorted(wanted))))
        hits = set()
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except (IOError, OSError):
                continue                        # closed meanwhile
            if target in wanted:
                hits.add(target)
        if hits:
            comm = _read_text(os.path.join(proc_root, pid, 'comm')) or '?'
            for target in sorted(hits):
                found.setdefault(target, []).append({'pid': int(pid), 'comm': comm})
    return found


def describe_holders(holders):
    """'/dev/vfio/7 is open by pid 4242 (qemu-system-x86)' for each path."""
    parts = []
    for path in sorted(holders):
        procs = ', '.join('pid %d (%s)' % (p['pid'], p['comm']) for p in holders[path])
        parts.append('%s is open by %s' % (path, procs))
    return '; '.join(parts)


def _read_text(path):
    try:
        with open(path, 'r') as handle:
            return handle.read().strip()
    except (IOError, OSError, UnicodeDecodeError):
        return None


def vfio_nodes(sysfs, device):
    """The /dev paths through which a process can hold a device bound to vfio-pci.

    ``/dev/vfio/<group>`` (the group interface every QEMU uses) and, on kernels with the
    vfio cdev interface (iommufd), ``/dev/vfio/devices/<vfioN>``.
    """
    nodes = []
    if device.iommu_group is not None:
        nodes.append('/dev/vfio/%s' % device.iommu_group)
    for name in sysfs.listdir(device.rel + '/vfio-dev'):
        nodes.append('/dev/vfio/devices/%s' % name)
    return nodes


def netdevs(sysfs, device):
    """Network interface names the kernel created for a function (its ``net/`` entries)."""
    return [name for name in sysfs.listdir(device.rel + '/net') if IFNAME.matches(name)]


def block_devices(sysfs, device):
    """Block devices below a PCI function (NVMe namespaces, disks behind a SATA/SAS HBA)."""
    prefix = sysfs.realpath(device.rel) + os.sep
    names = []
    for name in sysfs.listdir('class/block'):
        if sysfs.realpath('class/block/' + name).startswith(prefix) \
                and not sysfs.exists('class/block/%s/partition' % name):
            names.append(name)
    return names


def ip_json(argv, out):
    """The first link of ``ip -j ... show``'s output, {} when it printed none."""
    try:
        data = json.loads(out or '[]')
    except ValueError as exc:
        raise DeviceError('%s printed something that is not JSON (%s)' % (' '.join(argv), exc))
    return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}


class NetdevUsage:
    """Whether the host uses a network interface, from ``ip -j addr show dev IFNAME``.

    An interface is the host's when it is up and has an address of global or site scope
    (the link-local IPv6 address the kernel gives every up interface does not count), or
    when it is enslaved to a bridge, bond or team (``master``), addresses or not.
    """

    def __init__(self, runner):
        self.runner = runner

    def show(self, ifname):
        argv = [tool(self.runner, 'ip', 'iproute2', 'the module cannot see whether the host uses a '
                     'network interface, so it changes nothing until it can (install iproute2)'),
                '-j', 'addr', 'show', 'dev', ifname]
        rc, out, err = self.runner(argv, check=False)
        if rc != 0:
            raise DeviceError('%s failed (status %d): %s; the module cannot see whether the host '
                              'uses %s' % (' '.join(argv), rc, (err or out).strip(), ifname))
        return ip_json(argv, out)

    def usage(self, ifname):
        """Why the host uses ``ifname``, or None."""
        link = self.show(ifname)
        if link.get('master'):
            return 'interface %s is enslaved to %s' % (ifname, link['master'])
        flags = link.get('flags') or []
        if 'UP' not in flags:
            return None
        addresses = ['%s/%s' % (a.get('local'), a.get('prefixlen'))
                     for a in link.get('addr_info') or []
                     if isinstance(a, dict) and a.get('scope') in ('global', 'site')]
        if addresses:
            return 'interface %s is up with address %s' % (ifname, ', '.join(addresses))
        return None


class InUse:
    """Everything the device modules check before they touch a device."""

    def __init__(self, runner, sysfs, proc_root):
        self.sysfs = sysfs
        self.proc_root = proc_root
        self.host = HostUsage(sysfs, proc_root)
        self.net = NetdevUsage(runner)

    def host_reasons(self, device):
        """Why the host itself uses a function (storage, network, console): list of strings."""
        reasons = []
        seen = set()
        for name in self.host.nvme_namespaces(device) + block_devices(self.sysfs, device):
            if name in seen:
                continue
            seen.add(name)
            why = self.host.block_usage(name)
            if why:
                reasons.append(why)
        if device.driver != VFIO_DRIVER:
            for ifname in netdevs(self.sysfs, device):
                why = self.net.usage(ifname)
                if why:
                    reasons.append(why)
            fbs = [e for e in self.sysfs.listdir(device.rel + '/graphics') if e.startswith('fb')]
            if fbs and device.driver:
                reasons.append('it drives the host framebuffer console (%s, driver %s)'
                               % (', '.join(fbs), device.driver))
            holders = open_files(self.proc_root, self.driver_nodes(device))
            if holders:
                reasons.append('%s; unbinding %s now would hang until they let go (stop them: '
                               'nvidia-persistenced, a display server, a monitoring agent)'
                               % (describe_holders(holders), device.driver))
        return reasons

    def driver_nodes(self, device):
        """The /dev nodes through which host processes use a GPU's driver.

        DRM drivers (amdgpu, i915, nouveau, nvidia-drm) list ``card*`` and ``renderD*``
        under the device's ``drm/``; the nvidia driver names its minor number in
        ``/proc/driver/nvidia/gpus/<address>/information``. When that file cannot be read or
        names no minor, the GPU's node is not known, so every ``/dev/nvidiaN`` counts: a process
        holding any GPU of the driver refuses the unbind (it fails closed, never open).
        """
        nodes = ['/dev/dri/%s' % name for name in self.sysfs.listdir(device.rel + '/drm')
                 if name.startswith(('card', 'renderD'))]
        if device.driver == 'nvidia':
            info = _read_text(os.path.join(self.proc_root, 'driver', 'nvidia', 'gpus',
                                           device.address, 'information')) or ''
            match = re.search(r'^Device Minor:\s*(\d+)\s*$', info, re.MULTILINE)
            nodes.extend(['/dev/nvidia%s' % match.group(1)] if match else
                         ['/dev/nvidia%d' % minor for minor in range(NVIDIA_MINORS)])
        return nodes

    def vfio_holders(self, devices):
        """{node: [processes]} for the vfio nodes of ``devices`` that a process holds open."""
        nodes = []
        for device in devices:
            for node in vfio_nodes(self.sysfs, device):
                if node not in nodes:
                    nodes.append(node)
        return open_files(self.proc_root, nodes)


def class_label(device):
    """'storage controller' / 'network controller' for messages."""
    return BASE_CLASS_NAMES.get(base_class(device), 'device')
