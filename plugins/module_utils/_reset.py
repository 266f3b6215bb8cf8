# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: resetting a PCI function with the method the kernel offers.

``reset_method`` lists the methods the kernel found for the device, in the order it
tries them (``flr pm bus``...); writing ``1`` to ``reset`` resets with the first one
that works. Both attributes exist only when the device has a method at all (Linux 5.15
and later; older kernels have ``reset`` alone). A device with no method cannot be reset
by the host: the slot needs manual care (a power cycle), and the result says so.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_path

RESET_METHODS = ('device_specific', 'acpi', 'flr', 'af_flr', 'pm', 'bus', 'cxl_bus')


class PciReset:
    """Reset one function; the plan is the reset (and, with a forced method, reset_method)."""

    def __init__(self, module, address, method=None, sysfs_root='/sys', proc_root='/proc'):
        self.module = module
        self.address = address
        self.method = method
        self.sysfs_root = sysfs_root
        self.proc_root = proc_root
        self.warnings = []

    def methods(self, device):
        """The offered methods (a list), or None on a kernel without reset_method."""
        text = device.read('reset_method')
        if text is None:
            if device.has('reset'):
                return None
            return []
        return text.split()

    def run(self):
        """The reset; every failure says whether the device now needs manual care."""
        try:
            return self._run()
        except devctl.GpuaasError as exc:
            exc.details.setdefault('needs_manual_care', False)
            raise

    def _run(self):
        self.address = devctl.check_address(self.address)
        self.sysfs = devctl.open_sysfs(check_path(self.sysfs_root, 'sysfs_root'))
        self.proc_root = check_path(self.proc_root, 'proc_root')
        bus = devctl.open_bus(self.sysfs)
        device = devctl.get_device(self.sysfs, bus, self.address)
        methods = self.methods(device)
        if methods == []:
            raise devctl.DeviceError(
                '%s offers no reset method (its reset_method is %s): the host cannot reset it, so '
                'a slot holding it needs manual care (a power cycle of the host) after every use'
                % (device.describe(), 'empty' if device.has('reset_method') else 'missing'),
                reset_methods=[], needs_manual_care=True)
        if self.method is not None:
            if methods is None:
                raise devctl.DeviceError(
                    'this kernel has no reset_method attribute (Linux 5.15 added it), so method '
                    '%s cannot be chosen for %s; leave method unset to use the kernel\'s order'
                    % (self.method, self.address), reset_methods=None)
            if self.method not in methods:
                raise devctl.DeviceError(
                    'method %s is not offered by %s (reset_method: %s)'
                    % (self.method, self.address, ' '.join(methods)), reset_methods=methods)
        in_use = devctl.InUse(Runner(self.module, devctl.DeviceError), self.sysfs, self.proc_root)
        reasons = ['%s is in use by the host: %s' % (device.describe(), why)
                   for why in in_use.host_reasons(device)]
        holders = in_use.vfio_holders([device]) if device.driver == devctl.VFIO_DRIVER else {}
        if holders:
            reasons.append('a VM holds it: %s' % devctl.describe_holders(holders))
        if reasons:
            raise devctl.DeviceError('refusing to reset %s: %s' % (self.address, '; '.join(reasons)),
                                     reasons=reasons, reset_methods=methods)

        used = self.method or (methods[0] if methods else 'kernel default')
        plan = devctl.DevicePlan(self.module, self.sysfs)
        rel = device.rel
        forced = self.method is not None and methods[0] != self.method
        if forced:
            plan.write(self.address, 'use only %s' % self.method, rel + '/reset_method', self.method,
                       readback=self.method)
        plan.write(self.address, 'reset (%s)' % used, rel + '/reset', '1', key=self.address,
                   before='not reset', after='reset by %s' % used)
        if forced:
            plan.write(self.address, 'restore the reset methods', rel + '/reset_method',
                       ' '.join(methods), readback=' '.join(methods))
        start = time.monotonic()
        try:
            plan.execute()
        except devctl.DeviceError as exc:
            note = self._restore(rel, methods) if forced else None
            raise devctl.DeviceError(
                'resetting %s with %s failed: %s; the device may be unusable: quarantine the '
                'slot and check the kernel log (dmesg)%s'
                % (self.address, used, exc, ('; ' + note) if note else ''),
                **dict(exc.details, reset_methods=methods, needs_manual_care=True, method=used))
        return plan.result(address=self.address, reset_methods=methods, method=used,
                           needs_manual_care=False, duration_s=round(time.monotonic() - start, 3))

    def _restore(self, rel, methods):
        """Put reset_method back after a failed forced reset; a note when that fails too."""
        current = (self.sysfs.read(rel + '/reset_method') or '').split()
        if current == methods:
            return None
        try:
            devctl.write(self.sysfs, rel + '/reset_method', ' '.join(methods))
        except (IOError, OSError, devctl.GpuaasError) as exc:
            return 'reset_method could not be restored to "%s" (%s)' % (' '.join(methods), exc)
        return None
