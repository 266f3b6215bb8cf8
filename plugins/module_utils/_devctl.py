# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the device-control engine under vfio_bind, sriov_vfs, pci_reset, nvme_wipe.

What the four device modules share:

* :func:`open_sysfs`, the one way they reach sysfs. The unit tests replace it with the
  kernel model of ``tests/sysfs/kernel_model.py``, whose ``write`` behaves as the
  kernel's attributes do, so every write a module makes goes through it.
* :class:`Plan`, an ordered list of steps (sysfs writes, commands, waits for the kernel,
  file writes). A module computes its plan from the wanted and the current state, returns
  it as ``actions`` (``changed`` is "the plan is not empty"), and runs it only outside
  check mode. A failing step raises :class:`DeviceError` saying which step, of how many,
  failed and why.
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
import time

from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    BASE_CLASS_NAMES,
    PciBus,
    PciDevice,
    PciError,
    Sysfs,
    parse_bdf,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError

VFIO_DRIVER = 'vfio-pci'
# A sysfs write is done when write() returns for almost every attribute; the polls are for
# drivers that probe asynchronously and for udev creating /dev nodes.
POLL_INTERVAL = 0.02
# Interface names as the kernel allows them (IFNAMSIZ 16, no '/', no white space); used
# before a name read from sysfs goes into an argv list.
IFNAME_RE = re.compile(r'^[A-Za-z0-9_.:@-]{1,15}$')


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


def fresh(device):
    """A new PciDevice for the same address, so no cached attribute hides a change."""
    return PciDevice(device.sysfs, device.address)


def read_override(sysfs, address):
    """The device's driver_override, None when unset (the kernel shows '(null)')."""
    value = sysfs.read('bus/pci/devices/%s/driver_override' % address)
    if value in (None, '', '(null)'):
        return None
    return value


def base_class(device):
    pci_class = device.pci_class
    return None if pci_class is None else pci_class >> 16


def is_storage_or_network(device):
    return base_class(device) in (0x01, 0x02)


def wait_until(predicate, timeout, interval=POLL_INTERVAL):
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; its last value."""
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- plans -------------------------------------------------------------------


class Step:
    """One step of a plan. ``mutates`` steps are the actions a module reports."""

    mutates = True

    def __init__(self, device, description):
        self.device = device
        self.description = description

    def run(self, ctx):
        raise NotImplementedError

    def __str__(self):
        return ('%s: %s' % (self.device, self.description)) if self.device else self.description


class WriteStep(Step):
    """Write ``value`` to a sysfs attribute (relative to the sysfs root)."""

    def __init__(self, device, description, rel, value):
        super(WriteStep, self).__init__(device, description)
        self.rel = rel
        self.value = value

    def run(self, ctx):
        ctx.sysfs.write(self.rel, self.value)


class CommandStep(Step):
    """Run an argv list; fail on a non-zero exit status (``check`` may refine that)."""

    def __init__(self, device, description, argv, check=None):
        super(CommandStep, self).__init__(device, description)
        self.argv = argv
        self.check = check

    def run(self, ctx):
        rc, out, err = ctx.module.run_command(self.argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'})
        if self.check is not None:
            self.check(rc, out, err)
        elif rc != 0:
            raise DeviceError('%s exited with status %d: %s'
                              % (self.argv[0], rc, (err or out).strip()))


class CallStep(Step):
    """Run a function of the engine (a file write, a wipe pass)."""

    def __init__(self, device, description, func, mutates=True):
        super(CallStep, self).__init__(device, description)
        self.func = func
        self.mutates = mutates

    def run(self, ctx):
        self.func()


class WaitStep(Step):
    """Wait until ``predicate()`` is true; ``failure()`` explains a timeout."""

    mutates = False

    def __init__(self, device, description, predicate, failure):
        super(WaitStep, self).__init__(device, description)
        self.predicate = predicate
        self.failure = failure

    def __str__(self):
        return ('%s: wait for %s' % (self.device, self.description)) if self.device \
            else 'wait for %s' % self.description

    def run(self, ctx):
        if not wait_until(self.predicate, ctx.timeout):
            raise DeviceError('timed out after %s s: %s' % (_seconds(ctx.timeout), self.failure()))


def _seconds(value):
    return ('%g' % value) if isinstance(value, float) else str(value)


class Plan:
    """The ordered steps a module derived from the wanted and the current state."""

    def __init__(self, sysfs, module=None, timeout=10.0):
        self.sysfs = sysfs
        self.module = module
        self.timeout = timeout
        self.steps = []

    def __bool__(self):
        return any(step.mutates for step in self.steps)

    __nonzero__ = __bool__

    def add(self, step):
        self.steps.append(step)
        return step

    def write(self, device, description, rel, value):
        return self.add(WriteStep(device, '%s: write %r to %s' % (
            description, value, self.sysfs.path(rel)), rel, value))

    def command(self, device, description, argv, check=None):
        return self.add(CommandStep(device, '%s: run %s' % (description, ' '.join(argv)), argv,
                                    check))

    def call(self, device, description, func, mutates=True):
        return self.add(CallStep(device, description, func, mutates))

    def wait(self, device, description, predicate, failure):
        return self.add(WaitStep(device, description, predicate, failure))

    def actions(self):
        """What the plan changes, in order, as the module reports it."""
        return [str(step) for step in self.steps if step.mutates]

    def commands(self):
        return [list(step.argv) for step in self.steps if isinstance(step, CommandStep)]

    def run(self):
        """Run every step; a failure raises DeviceError naming the step and what was done."""
        done = []
        total = len(self.steps)
        for number, step in enumerate(self.steps, 1):
            try:
                step.run(self)
            except (IOError, OSError) as exc:
                raise DeviceError(
                    'step %d of %d failed: %s: %s' % (number, total, step, _oserror(exc)),
                    failed_step=str(step), completed_steps=done)
            except DeviceError as exc:
                details = dict(exc.details)
                details.update(failed_step=str(step), completed_steps=done)
                raise DeviceError('step %d of %d failed: %s: %s' % (number, total, step, exc),
                                  **details)
            done.append(str(step))
        return done


def _oserror(exc):
    """'[Errno 16] Device or resource busy' with the errno's name, for messages."""
    code = getattr(exc, 'errno', None)
    name = errno.errorcode.get(code, '') if code else ''
    text = getattr(exc, 'strerror', None) or str(exc)
    return '%s (%s)' % (text, name) if name else text


# -- who uses a device -------------------------------------------------------


def open_files(proc_root, paths):
    """{path: [{'pid': N, 'comm': name}]} for every process holding one of ``paths`` open.

    Reads the fd links under ``proc_root/<pid>/fd``, as lsof and fuser do. Processes
    that exit during the scan, or whose fds cannot be read, are skipped.
    """
    wanted = set(paths)
    found = {}
    if not wanted:
        return found
    try:
        pids = [entry for entry in os.listdir(proc_root) if entry.isdigit()]
    except (IOError, OSError):
        return found
    for pid in sorted(pids, key=int):
        fd_dir = os.path.join(proc_root, pid, 'fd')
        try:
            fds = os.listdir(fd_dir)
        except (IOError, OSError):
            continue
        hits = set()
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except (IOError, OSError):
                continue
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
    return [name for name in sysfs.listdir(device.rel + '/net') if IFNAME_RE.match(name)]


def block_devices(sysfs, device):
    """Block devices below a PCI function (NVMe namespaces, disks behind a SATA/SAS HBA)."""
    prefix = sysfs.realpath(device.rel) + os.sep
    names = []
    for name in sysfs.listdir('class/block'):
        if sysfs.realpath('class/block/' + name).startswith(prefix) \
                and not sysfs.exists('class/block/%s/partition' % name):
            names.append(name)
    return names


class NetdevUsage:
    """Whether the host uses a network interface, from ``ip -j addr show dev IFNAME``.

    An interface is the host's when it is up and has an address of global or site scope
    (the link-local IPv6 address the kernel gives every up interface does not count), or
    when it is enslaved to a bridge, bond or team (``master``), addresses or not.
    """

    def __init__(self, module):
        self.module = module
        self._ip = None

    def ip(self):
        if self._ip is None:
            path = self.module.get_bin_path('ip')
            if not path:
                raise DeviceError(
                    "the 'ip' command (iproute2) is not installed, so the module cannot see "
                    'whether the host uses a network interface; it changes nothing until it '
                    'can (install iproute2)')
            self._ip = path
        return self._ip

    def show(self, ifname):
        argv = [self.ip(), '-j', 'addr', 'show', 'dev', ifname]
        rc, out, err = self.module.run_command(argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'})
        if rc != 0:
            raise DeviceError('%s failed (status %d): %s; the module cannot see whether the host '
                              'uses %s' % (' '.join(argv), rc, (err or out).strip(), ifname))
        try:
            data = json.loads(out or '[]')
        except ValueError as exc:
            raise DeviceError('%s printed something that is not JSON (%s)' % (' '.join(argv), exc))
        return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}

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

    def __init__(self, module, sysfs, proc_root):
        self.sysfs = sysfs
        self.proc_root = proc_root
        self.host = HostUsage(sysfs, proc_root)
        self.net = NetdevUsage(module)

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
        ``/proc/driver/nvidia/gpus/<address>/information``.
        """
        nodes = ['/dev/dri/%s' % name for name in self.sysfs.listdir(device.rel + '/drm')
                 if name.startswith(('card', 'renderD'))]
        if device.driver == 'nvidia':
            info = _read_text(os.path.join(self.proc_root, 'driver', 'nvidia', 'gpus',
                                           device.address, 'information')) or ''
            match = re.search(r'^Device Minor:\s*(\d+)\s*$', info, re.MULTILINE)
            if match:
                nodes.append('/dev/nvidia%s' % match.group(1))
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
