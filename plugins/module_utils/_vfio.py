# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: binding a device's whole IOMMU group to vfio-pci, and back.

The kernel's way, per function (Documentation/ABI/testing/sysfs-bus-pci):

* bind: write ``vfio-pci`` to ``<dev>/driver_override``; write the address to
  ``drivers/<current>/unbind``; write the address to ``bus/pci/drivers_probe``, which
  probes only the driver named by the override;
* release: put the original ``driver_override`` back (an empty write clears it); write
  the address to ``drivers/vfio-pci/unbind``; write it to ``drivers/<original>/bind`` (or
  to ``drivers_probe`` when the original driver is unknown or not loaded).

Every function of the group moves (a GPU's HDMI audio with it); bridges stay with the
host, as vfio allows. The original driver and override of every function are recorded in
``<state_dir>/<address>.json`` *before* the first write, so a release after a crash still
restores what was there.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import json
import os

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner, Step, check_timeout
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    StateFileError,
    atomic_write,
    check_dir,
    check_path,
    ensure_dir,
    read_json,
    remove,
)
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import BDF_RE, bdf_key, same_device
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Rule, show

STATE_VERSION = 1
DEFAULT_STATE_DIR = '/var/lib/gpuaas/vfio'
IOMMU_OFF = ('the IOMMU is off (no groups under %s/kernel/iommu_groups): enable VT-d or AMD-Vi '
             'in the firmware and boot with intel_iommu=on (Intel) so that the kernel can '
             'isolate the device')
# A driver name as the kernel lists it under bus/pci/drivers: a record's names go into paths.
DRIVER = Rule('driver name', r'(?!\.\.?\Z)[A-Za-z0-9_.:-]{1,64}', "1-64 letters, digits, '_', '.', ':' and '-'")


class StateFile:
    """The record of what a group was bound to before vfio_bind moved it.

    ``{"version": 1, "address": ..., "iommu_group": ..., "functions":
    {"<bdf>": {"driver": "nvidia" | null, "driver_override": null | "..."}}}``.
    Written atomically (a temporary file in the same directory, fsync, rename). Read back
    defensively: a record that is not what vfio_bind writes is reported, named, never used.
    """

    def __init__(self, module, state_dir, address):
        self.module = module
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, '%s.json' % address)

    def _damaged(self, why):
        return devctl.DeviceError(
            'the state file %s %s: it records the drivers the devices had before vfio_bind; check '
            'them by hand and move the file away' % (show(self.path, 4096), why), state_file=self.path)

    def load(self):
        try:
            data = read_json(self.path, 'the state file', dict)
        except StateFileError as exc:
            raise devctl.DeviceError('%s: it records the drivers the devices had before vfio_bind; check '
                                     'them by hand and move the file away' % exc, state_file=self.path)
        if data is None:
            return None
        functions = data.get('functions')
        if not isinstance(functions, dict) or not all(
                isinstance(v, dict) for v in functions.values()):
            raise self._damaged('does not have the layout vfio_bind writes (a "functions" mapping)')
        for address, entry in functions.items():
            names = (entry.get('driver'), entry.get('driver_override'))
            if not BDF_RE.fullmatch(address) or not all(n is None or DRIVER.matches(n) for n in names):
                raise self._damaged('holds %s: %s, which is not a PCI address with driver names'
                                    % (show(address), show(entry)))
        return data

    def save(self, data):
        ensure_dir(self.state_dir, 0o700)
        atomic_write(self.module, self.path,
                     (json.dumps(data, indent=2, sort_keys=True) + '\n').encode('utf-8'))

    def remove(self):
        remove(self.path)


class _Lock:
    """An exclusive flock on <state_dir>/.lock: one vfio_bind at a time on a host."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, '.lock')
        self.handle = None

    def acquire(self):
        ensure_dir(self.state_dir, 0o700)
        self.handle = open(self.path, 'a')
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)

    def release(self):
        if self.handle is not None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class VfioBind:
    """want / have / actions for one device and its IOMMU group."""

    def __init__(self, module, address, state='present', sysfs_root='/sys', proc_root='/proc',
                 dev_root='/dev', state_dir=DEFAULT_STATE_DIR, timeout=10.0,
                 allow_group_members=None):
        self.module = module
        self.address = devctl.check_address(address)
        self.state = state
        self.timeout = check_timeout(timeout)
        self.allowed = [devctl.check_address(a, 'allow_group_members') for a in
                        (allow_group_members or [])]
        self.state_dir = check_dir(state_dir, 'state_dir')
        self.record_file = StateFile(module, self.state_dir, self.address)
        self.sysfs = devctl.open_sysfs(check_path(sysfs_root, 'sysfs_root'))
        self.proc_root = check_path(proc_root, 'proc_root')
        self.dev_root = check_path(dev_root, 'dev_root')
        self.runner = Runner(module, devctl.DeviceError)
        self.warnings = []

    # -- have -------------------------------------------------------------

    def _binding(self, address):
        return {'driver': self.sysfs.link_name('bus/pci/devices/%s/driver' % address),
                'driver_override': devctl.read_override(self.sysfs, address)}

    def _bindings(self, functions):
        return dict((a, self._binding(a)) for a in functions if a in self.bus)

    def _group(self, device):
        groups = devctl.iommu_groups(self.bus)
        if not groups:
            raise devctl.DeviceError(IOMMU_OFF % self.sysfs.root, iommu_enabled=False)
        group = device.iommu_group
        if group is None or group not in groups:
            raise devctl.DeviceError(
                '%s has no IOMMU group although the IOMMU is on, so the kernel cannot isolate '
                'it: vfio-pci refuses such a device' % device.describe())
        return group, groups[group]

    def _functions(self, members):
        """Group members that move: every function that is not a bridge."""
        moving = []
        for address in members:
            device = self.bus.get(address)
            if device is not None and not device.is_bridge:
                moving.append(address)
        return sorted(moving, key=bdf_key)

    # -- checks -----------------------------------------------------------

    def _refusals_present(self, group, functions, plan_needed):
        reasons = []
        if not self.sysfs.isdir('bus/pci/drivers/%s' % devctl.VFIO_DRIVER):
            reasons.append('the vfio-pci driver is not loaded (no %s): load it with '
                           '"modprobe vfio-pci" (the host_prep role does)'
                           % self.sysfs.path('bus/pci/drivers/vfio-pci'))
        for address in functions:
            device = self.bus.get(address)
            foreign = not same_device(address, self.address) and address not in self.allowed
            if foreign and device.driver not in (None, devctl.VFIO_DRIVER, 'pci-stub'):
                reasons.append(
                    'IOMMU group %s also holds %s, a %s of another physical device that the host '
                    'drives: every function of a group goes to the VM together, so the host would '
                    'lose it (move the card to a slot whose group is its own, enable ACS on the '
                    'bridge above it, or list the device in allow_group_members if the host does '
                    'not need it)' % (group, device.describe(), devctl.class_label(device)))
            elif foreign and device.driver != devctl.VFIO_DRIVER and plan_needed:
                self.warnings.append(
                    'IOMMU group %s also holds %s, another physical device that no host driver '
                    'uses; it goes to vfio-pci (and to the VM) with %s'
                    % (group, device.describe(), self.address))
            if not plan_needed or device.driver == devctl.VFIO_DRIVER:
                continue
            for why in self.in_use.host_reasons(device):
                reasons.append('%s is in use by the host: %s' % (device.describe(), why))
            numvfs = device.read_int('sriov_numvfs')
            if numvfs:
                reasons.append('%s has %d SR-IOV VFs enabled; unbinding its driver would destroy '
                               'them (set sriov_vfs num_vfs=0 first)' % (device.describe(), numvfs))
        if plan_needed:
            holders = self.in_use.vfio_holders([self.bus.get(a) for a in functions])
            if holders:
                reasons.append('the group is in use: %s' % devctl.describe_holders(holders))
        return reasons

    # -- the plan ---------------------------------------------------------

    def _bound_to(self, address, driver):
        return lambda: self.sysfs.link_name('bus/pci/devices/%s/driver' % address) == driver

    def _unbound(self, address):
        return lambda: not self.sysfs.exists('bus/pci/devices/%s/driver' % address)

    def _now(self, address):
        return lambda: 'it is bound to %s' % (
            self.sysfs.link_name('bus/pci/devices/%s/driver' % address) or 'no driver')

    def _plan_present(self, plan, functions, have, want):
        for address in functions:
            cur = have[address]
            diff = dict(key=address, before=cur, after=want[address])
            if cur['driver_override'] != devctl.VFIO_DRIVER:
                plan.write(address, 'set driver_override to vfio-pci',
                           'bus/pci/devices/%s/driver_override' % address, devctl.VFIO_DRIVER,
                           readback=devctl.VFIO_DRIVER, **diff)
            if cur['driver'] not in (None, devctl.VFIO_DRIVER):
                plan.write(address, 'unbind from %s' % cur['driver'],
                           'bus/pci/drivers/%s/unbind' % cur['driver'], address, **diff)
                plan.wait_for(address, '%s to release it' % cur['driver'],
                              self._unbound(address), self._now(address))
            if cur['driver'] != devctl.VFIO_DRIVER:
                plan.write(address, 'probe (binds to vfio-pci through driver_override)',
                           'bus/pci/drivers_probe', address, **diff)
                plan.wait_for(address, 'vfio-pci to bind it',
                              self._bound_to(address, devctl.VFIO_DRIVER),
                              lambda a=address: '%s; vfio-pci refused it or is still probing: '
                              'see the kernel log (dmesg) for "vfio-pci %s"' % (self._now(a)(), a))
        if plan:
            group = self.bus.get(self.address).iommu_group
            node = os.path.join(self.dev_root, 'vfio', group)
            plan.wait_for(None, '%s to appear' % node, lambda: os.path.exists(node),
                          lambda: 'the group is bound but its device node is missing: check udev '
                          'and that devtmpfs is mounted on %s' % self.dev_root)

    def _plan_absent(self, plan, functions, have, want, record):
        for address in functions:
            if address not in have:
                self.warnings.append('%s is recorded in %s but no longer exists; skipped'
                                     % (address, self.record_file.path))
                continue
            cur = have[address]
            diff = dict(key=address, before=cur, after=want[address])
            orig = (record or {}).get('functions', {}).get(address) if record else None
            want_override = orig.get('driver_override') if orig else None
            want_driver = orig.get('driver') if orig else None
            if cur['driver_override'] != want_override:
                plan.write(address, ('restore driver_override %s' % want_override)
                           if want_override else 'clear driver_override',
                           'bus/pci/devices/%s/driver_override' % address,
                           want_override if want_override else '\n',
                           readback=want_override or '(null)', **diff)
            if want_driver == devctl.VFIO_DRIVER:
                continue
            if cur['driver'] == devctl.VFIO_DRIVER:
                plan.write(address, 'unbind from vfio-pci',
                           'bus/pci/drivers/%s/unbind' % devctl.VFIO_DRIVER, address, **diff)
                plan.wait_for(address, 'vfio-pci to release it', self._unbound(address),
                              lambda a=address: '%s; a process may still hold the device' %
                              self._now(a)())
                cur = dict(cur, driver=None)
            if orig is None:
                if cur['driver'] is None:
                    plan.write(address, 'probe (the original driver is not recorded: the kernel '
                               'picks one)', 'bus/pci/drivers_probe', address, **diff)
                continue
            if want_driver is None or cur['driver'] == want_driver:
                continue
            if cur['driver'] is not None:
                # Bound to something else: leave it, it is not ours to move.
                self.warnings.append('%s is bound to %s, not to vfio-pci; left as it is (it had %s '
                                     'before vfio_bind)' % (address, cur['driver'], want_driver))
                continue
            if self.sysfs.isdir('bus/pci/drivers/%s' % want_driver):
                plan.write(address, 'bind to %s' % want_driver,
                           'bus/pci/drivers/%s/bind' % want_driver, address, **diff)
                plan.wait_for(address, '%s to bind it' % want_driver,
                              self._bound_to(address, want_driver), self._now(address))
            else:
                self.warnings.append(
                    'driver %s of %s is not loaded, so the kernel picks one (drivers_probe); load '
                    'it and run again to restore it exactly' % (want_driver, address))
                plan.write(address, 'probe (%s is not loaded)' % want_driver,
                           'bus/pci/drivers_probe', address, **diff)
        if record is not None:
            plan.change('remove the state file %s' % self.record_file.path, self.record_file.remove)

    # -- run --------------------------------------------------------------

    def run(self):
        """Compute the plan; the engine runs it (nothing in check mode) under the host-wide lock.

        The lock is the plan's first step; under it the plan is computed again, and a plan
        that another run has changed meanwhile is refused (run again) rather than applied.
        """
        plan, result = self._compute()
        lock = _Lock(self.state_dir)
        if plan:
            plan.steps.insert(0, Step('take the host-wide lock %s' % lock.path, lock.acquire,
                                      verify=lambda: self._replanned(plan), mutates=False))
        try:
            done = plan.execute()
        finally:
            lock.release()
        if done:
            result['bindings'] = dict((a, b['driver']) for a, b in
                                      self._bindings(result['functions']).items())
        return result

    def _replanned(self, plan):
        """None when the plan computed under the lock is the one about to run, else why not."""
        again = self._compute()[0].actions()
        if again != plan.actions():
            return ('another run changed the group meanwhile (the plan is now %s); nothing was '
                    'changed by this one: run it again' % (again or 'empty'))
        return None

    def _compute(self):
        self.warnings = []
        self.bus = devctl.open_bus(self.sysfs)
        device = devctl.get_device(self.sysfs, self.bus, self.address)
        self.in_use = devctl.InUse(self.runner, self.sysfs, self.proc_root)
        record = self.record_file.load()
        plan = devctl.DevicePlan(self.module, self.sysfs, self.timeout)

        if self.state == 'present':
            group, members = self._group(device)
            functions = self._functions(members)
            have = self._bindings(functions)
            want = dict((a, {'driver': devctl.VFIO_DRIVER, 'driver_override': devctl.VFIO_DRIVER})
                        for a in functions)
            new_record = self._new_record(record, group, functions, have)
            self._plan_present(plan, functions, have, want)
            if new_record != record:
                plan.steps.insert(0, Step('record the original drivers in %s' % self.record_file.path,
                                          lambda: self.record_file.save(new_record)))
            if plan:
                plan.change('check that every function of group %s is on vfio-pci' % group,
                            verify=lambda: self._not_on_vfio(functions), mutates=False)
            reasons = self._refusals_present(group, functions, plan.touches_sysfs())
            originals = new_record['functions']
        else:
            group = device.iommu_group
            functions = self._release_functions(device, record)
            have = self._bindings(functions)
            want = self._predict_absent(functions, have, record)
            self._plan_absent(plan, functions, have, want, record)
            reasons = []
            if plan.touches_sysfs():
                holders = self.in_use.vfio_holders(
                    [self.bus.get(a) for a in functions
                     if a in have and have[a]['driver'] == devctl.VFIO_DRIVER])
                if holders:
                    reasons.append('the group is in use: %s; stop the VM before releasing it'
                                   % devctl.describe_holders(holders))
            originals = (record or {}).get('functions') or {}

        if reasons:
            raise devctl.DeviceError(
                'refusing to %s %s: %s' % ('bind' if self.state == 'present' else 'release',
                                           self.address, '; '.join(reasons)),
                reasons=reasons, iommu_group=group, functions=functions)

        after = want if plan else have
        return plan, plan.result(
            address=self.address, state=self.state, iommu_group=group, functions=functions,
            original_drivers=dict((a, f.get('driver')) for a, f in originals.items()),
            bindings=dict((a, b['driver']) for a, b in after.items()),
            vfio_device=os.path.join(self.dev_root, 'vfio', group) if self.state == 'present' else None,
            state_file=self.record_file.path)

    def _new_record(self, record, group, functions, have):
        functions_rec = dict(((record or {}).get('functions') or {}))
        for address in functions:
            if address not in functions_rec:
                functions_rec[address] = dict(have[address])
        return {'version': STATE_VERSION, 'address': self.address, 'iommu_group': group,
                'functions': functions_rec}

    def _release_functions(self, device, record):
        if record is not None:
            return sorted(record['functions'], key=bdf_key)
        functions = [device.address]
        group = device.iommu_group
        if group is not None:
            groups = devctl.iommu_groups(self.bus)
            functions = self._functions(groups.get(group, [device.address]))
        keep = []
        for address in functions:
            cur = self._binding(address)
            if cur['driver'] == devctl.VFIO_DRIVER or cur['driver_override'] == devctl.VFIO_DRIVER:
                keep.append(address)
        return keep

    def _predict_absent(self, functions, have, record):
        want = {}
        for address in functions:
            if address not in have:
                continue
            orig = ((record or {}).get('functions') or {}).get(address)
            cur = have[address]['driver']
            if orig is not None:
                driver = orig.get('driver')
                if cur not in (None, devctl.VFIO_DRIVER):
                    driver = cur
                want[address] = {'driver': driver, 'driver_override': orig.get('driver_override')}
            else:
                want[address] = {'driver': None if cur == devctl.VFIO_DRIVER else cur,
                                 'driver_override': None}
        return want

    def _not_on_vfio(self, functions):
        """None when every function is bound to vfio-pci, else what they are bound to."""
        drivers = dict((a, self._binding(a)['driver']) for a in functions)
        wrong = ['%s is bound to %s' % (a, d or 'no driver') for a, d in sorted(drivers.items())
                 if d != devctl.VFIO_DRIVER]
        if wrong:
            return ('%s; the state file %s keeps the original drivers (state=absent restores them)'
                    % ('; '.join(wrong), self.record_file.path))
        return None
