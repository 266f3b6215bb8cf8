# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A strict model of the kernel side of sysfs, for the device modules' unit tests.

:class:`KernelModel` is a :class:`Sysfs` accessor over a tree built by
:class:`tests.sysfs.builder.SysfsBuilder` whose :meth:`~KernelModel.write` does what
the kernel does when that attribute is written, and fails where the kernel fails, with
the kernel's errno. The device modules reach sysfs only through
``_devctl.open_sysfs``; the tests point that at a model.

What it models (Linux 6.x; the file each rule comes from):

``bus/pci/devices/<BDF>/driver_override`` (drivers/pci/pci-sysfs.c, driver_set_override)
    Stores the string up to the first newline; a write of ``"\\n"`` clears it, and it
    reads back ``(null)``. A value of PAGE_SIZE - 1 bytes or more: EINVAL.
How a write reaches the kernel (checked on Linux 6.1 in the kernel lab)
    ``Sysfs.write`` opens with ``open(path, 'w')``: an attribute that does not exist in an
    existing directory is EACCES (kernfs cannot create files), a path whose directory does
    not exist is ENOENT, a read-only attribute is EACCES. An empty string is no write at
    all (Python issues no write(2)), so nothing happens; clearing takes ``"\\n"``.
``bus/pci/drivers/<drv>/unbind`` (drivers/base/bus.c, unbind_store)
    ENODEV unless the device exists and is bound to ``<drv>``; removes the device's
    ``driver`` link and the driver's ``<BDF>`` link. A device whose vfio group a process
    holds open is not unbound: the kernel would block in vfio until the process lets go,
    and the model raises :class:`KernelWouldBlock` (a test failure) instead.
``bus/pci/drivers/<drv>/bind`` (bus.c bind_store, dd.c device_driver_attach)
    ENODEV when the device does not exist or the driver does not match it; EBUSY when it is
    bound already; a probe error is returned as is (kernels 5.14 and later).
``bus/pci/drivers_probe`` (bus.c drivers_probe_store)
    ENODEV for an unknown device; a bound device is left alone; otherwise the first matching
    driver is probed. A failing probe is not reported (the write succeeds and the device
    stays unbound), which is why the modules wait for the ``driver`` link.
Matching (drivers/pci/pci-driver.c, pci_match_device)
    With ``driver_override`` set, only the driver of that name matches. Without it, a
    device matches its *native* driver (the one it was bound to when the model was made,
    or what ``native_drivers`` says). vfio-pci's id table is ``override_only``: it never
    matches a device without ``driver_override = vfio-pci``. Dynamic ids (``new_id``) are
    not modelled; writing ``new_id``/``remove_id`` raises NotImplementedError.
vfio-pci probe (drivers/vfio/pci/vfio_pci.c, vfio_pci_core.c)
    EINVAL for a bridge (header type 1) and for a device without an IOMMU group. Binding
    the first device of group N creates ``<dev_root>/vfio/N``; unbinding the last removes it.
``bus/pci/devices/<PF>/sriov_numvfs`` (drivers/pci/iov.c, sriov_numvfs_store)
    Not a u16 (kstrtou16, base 0): EINVAL. More than ``sriov_totalvfs``: ERANGE. The
    current count: nothing happens. No driver bound, or a driver without SR-IOV support:
    ENOENT. 0: the VFs are removed. Non-zero while VFs exist: EBUSY. Otherwise the VFs are
    created as the PCI core creates them (``virtfnN``/``physfn`` links, one IOMMU group per
    VF, as behind ACS) and, with ``sriov_drivers_autoprobe`` 1, bound to the PF driver's VF
    driver. Unbinding a PF's driver removes its VFs (its remove() disables SR-IOV); nvme's
    does not (the PCI core warns "driver left SR-IOV enabled after remove").
Offline VFs (``offline_vfs``: PF addresses; checked on Linux 6.1 with QEMU 7.2's NVMe)
    QEMU's NVMe secondary controllers are offline until the PF's Virtualization Management
    command gives them resources and brings them online. With autoprobe the nvme driver
    probes each new VF and fails ("Device not ready; aborting initialisation, CSTS=0x2",
    ENODEV), so the VFs end up without a driver. On the real kernel that failure comes from
    nvme's asynchronous reset work: the ``driver`` link exists for a moment, then goes; the
    model leaves it out. vfio-pci still binds them.
``sriov_drivers_autoprobe`` (iov.c): kstrtobool, else EINVAL.
``bus/pci/devices/<BDF>/reset`` (pci-sysfs.c reset_store)
    The attribute exists only on a device with reset methods (the model creates the file for
    every device that has ``reset_method``). A value other than 1: EINVAL. All methods
    disabled: ENOTTY. A fault set in ``reset_faults`` is returned as the hardware would.
    Successful resets are logged in :attr:`KernelModel.resets`.
``bus/pci/devices/<BDF>/reset_method`` (pci.c reset_method_store)
    ``"\\n"`` (sysfs_streq with "") disables every method, ``default`` restores the probed ones; otherwise a
    space-separated list of known method names, each of which the device supports, else
    EINVAL (and the methods stay as they were).
``bus/pci/devices/<PF>/sriov/<N>/{node,port,policy}`` (MLNX_OFED mlx5 sysfs; only with
    ``mlx5_sriov_sysfs=True``): a GUID ``xx:xx:xx:xx:xx:xx:xx:xx`` or one of
    ``Down``/``Up``/``Follow``, else EINVAL.
Anything else
    An existing attribute that the model does not know as writable (``vendor``,
    ``class``...): EACCES, as kernfs answers for a read-only attribute.
A symlink that leaves the tree (planted by a test: real sysfs has none among attributes)
    ``open(path, 'w')`` follows it: the file it points to, outside sysfs, is an ordinary
    file and is overwritten with the value, as the OS would do. Such writes are logged in
    :attr:`KernelModel.escaped`, not in :attr:`KernelModel.writes`.

Every accepted write is logged in :attr:`KernelModel.writes` as ``(path relative to the
root, value)``, in order.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil

from ansible_collections.gpuaas.slice.plugins.module_utils._pci import Sysfs

from .builder import BDF_RE, SysfsBuilder, _symlink, _write

PAGE_SIZE = 4096
VFIO = 'vfio-pci'
RESET_METHODS = ('device_specific', 'acpi', 'flr', 'af_flr', 'pm', 'bus', 'cxl_bus')
# PF driver -> the driver its VFs bind to (drivers with an sriov_configure callback).
SRIOV_DRIVERS = {
    'mlx5_core': 'mlx5_core',
    'ice': 'iavf',
    'i40e': 'iavf',
    'ixgbe': 'ixgbevf',
    'igb': 'igbvf',
    'bnxt_en': 'bnxt_en',
    'nvme': 'nvme',
}
# PF drivers whose remove() disables SR-IOV (mlx5 remove_one -> mlx5_sriov_disable, ice_free_vfs,
# i40e_free_vfs, ixgbe_disable_sriov, igb_disable_sriov, bnxt_sriov_disable). nvme does not:
# its VFs outlive the PF's unbind (the PCI core warns "driver left SR-IOV enabled").
DISABLES_SRIOV_ON_REMOVE = ('mlx5_core', 'ice', 'i40e', 'ixgbe', 'igb', 'bnxt_en')
WRITABLE = ('driver_override', 'sriov_numvfs', 'sriov_drivers_autoprobe', 'reset',
            'reset_method')
GUID_RE = re.compile(r'^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){7}$')
MLX5_POLICIES = ('Down', 'Up', 'Follow')


class KernelWouldBlock(AssertionError):
    """The real kernel would hang here (unbinding a vfio device a process holds open)."""


def _err(code, what):
    return OSError(code, os.strerror(code), what)


def _kstrtoul(value, limit):
    """The kernel's kstrtoul(buf, 0, ...) for a sysfs store: one trailing newline allowed."""
    text = value[:-1] if value.endswith('\n') else value
    if text.startswith('+'):
        text = text[1:]
    if not text:
        return None
    try:
        if text.lower().startswith('0x'):
            number = int(text[2:], 16) if text[2:] else None
        elif text.startswith('0') and len(text) > 1:
            number = int(text[1:], 8)
        else:
            number = int(text, 10) if text.isdigit() else None
    except ValueError:
        return None
    if number is None or number > limit:
        return None
    return number


def _kstrtobool(value):
    text = value.strip()
    if not text:
        return None
    if text[0] in 'yY1':
        return True
    if text[0] in 'nN0':
        return False
    if text[:2].lower() == 'on':
        return True
    if text[:2].lower() == 'of':
        return False
    return None


def _streq(value):
    """sysfs_streq: the written name without one trailing newline."""
    return value[:-1] if value.endswith('\n') else value


class _VfBuilder(SysfsBuilder):
    """SysfsBuilder.vfs() on an existing tree, giving each VF its own IOMMU group."""

    def __init__(self, model, pf):
        SysfsBuilder.__init__(self, model.root, iommu=model.iommu)
        pf_dir = os.path.realpath(model.path('bus/pci/devices/' + pf))
        parent = os.path.dirname(pf_dir)
        key = os.path.basename(parent)
        self.dirs = {pf: pf_dir, key: parent}
        numa = model.read_int('bus/pci/devices/%s/numa_node' % pf)
        self.numa = {key: -1 if numa is None else numa}
        groups = [int(g) for g in os.listdir(model.path('kernel/iommu_groups')) if g.isdigit()]
        self._next_group = max(groups) + 1 if groups else 0

    def device(self, address, parent, *args, **kwargs):
        if os.path.lexists(os.path.join(self.root, 'bus/pci/devices', address)):
            raise _err(errno.EEXIST, address)
        kwargs['group'] = self.new_group() if self.iommu else None
        kwargs['driver'] = None
        return SysfsBuilder.device(self, address, parent, *args, **kwargs)


class KernelModel(Sysfs):
    """A sysfs tree whose writes behave as the kernel's do (see the module docstring).

    ``dev_root`` stands for /dev (vfio group nodes are created there), ``proc_root`` for
    /proc (where :meth:`open_vfio_group` puts a process holding a group).
    ``native_drivers`` maps an address to the driver that claims it without an override
    (default: the driver it is bound to now). ``vfio_pci_loaded=False`` models a host
    without the vfio-pci module. ``reset_faults`` and ``probe_faults`` map an address to
    the errno its reset / probe fails with. ``offline_vfs`` lists PFs whose VFs the device
    keeps offline: their native driver's probe fails with ENODEV.
    """

    def __init__(self, root, dev_root=None, proc_root=None, native_drivers=None,
                 vfio_pci_loaded=True, mlx5_sriov_sysfs=False, reset_faults=None,
                 probe_faults=None, offline_vfs=()):
        super().__init__(root)
        self.dev_root = dev_root
        self.proc_root = proc_root
        self.mlx5_sriov_sysfs = mlx5_sriov_sysfs
        self.reset_faults = dict(reset_faults or {})
        self.probe_faults = dict(probe_faults or {})
        self.offline_vfs = frozenset(offline_vfs)
        self.writes = []
        self.escaped = []
        self.resets = []
        self.open_groups = {}
        self.sriov_generation = {}
        self.iommu = bool(self.listdir('kernel/iommu_groups'))
        self.native = {}
        self.reset_supported = {}
        if not os.path.exists(self.path('bus/pci/drivers_probe')):
            _write(self.path('bus/pci/drivers_probe'), '')
        if vfio_pci_loaded:
            self._driver_dir(VFIO)
        for bdf in self.listdir('bus/pci/devices'):
            self._adopt(bdf)
        self.native.update(native_drivers or {})
        if dev_root:
            os.makedirs(os.path.join(dev_root, 'vfio'), exist_ok=True)
            _write(os.path.join(dev_root, 'vfio', 'vfio'), '')
            for bdf in self.listdir('bus/pci/devices'):
                if self._bound(bdf) == VFIO:
                    self._vfio_node(bdf, create=True)

    def _adopt(self, bdf):
        """Learn what the kernel knows about a device: native driver, reset methods."""
        driver = self._bound(bdf)
        if driver and driver != VFIO:
            self.native.setdefault(bdf, driver)
        methods = self.read('bus/pci/devices/%s/reset_method' % bdf)
        if methods is not None:
            self.reset_supported[bdf] = methods.split()
            reset = self.path('bus/pci/devices/%s/reset' % bdf)
            if not os.path.exists(reset):
                _write(reset, '')

    # -- helpers ------------------------------------------------------------

    def _dev(self, bdf):
        return 'bus/pci/devices/' + bdf

    def _exists(self, bdf):
        return bool(BDF_RE.match(bdf)) and os.path.isdir(self.path(self._dev(bdf)))

    def _bound(self, bdf):
        return self.link_name(self._dev(bdf) + '/driver')

    def _override(self, bdf):
        value = self.read(self._dev(bdf) + '/driver_override')
        return None if value in (None, '', '(null)') else value

    def _group(self, bdf):
        return self.link_name(self._dev(bdf) + '/iommu_group')

    def _driver_dir(self, name):
        drv = self.path('bus/pci/drivers/' + name)
        for attr in ('bind', 'unbind', 'new_id', 'remove_id'):
            if not os.path.exists(os.path.join(drv, attr)):
                _write(os.path.join(drv, attr), '')
        return drv

    def _vfio_node(self, bdf, create):
        group = self._group(bdf)
        if not self.dev_root or group is None:
            return
        node = os.path.join(self.dev_root, 'vfio', group)
        if create:
            if not os.path.exists(node):
                _write(node, '')
            return
        members = self.listdir('kernel/iommu_groups/%s/devices' % group)
        if not any(self._bound(m) == VFIO for m in members if m != bdf) and os.path.exists(node):
            os.unlink(node)

    def _attach(self, bdf, driver):
        drv = self._driver_dir(driver)
        dev = os.path.realpath(self.path(self._dev(bdf)))
        _symlink(drv, os.path.join(dev, 'driver'))
        _symlink(dev, os.path.join(drv, bdf))
        if driver == VFIO:
            self._vfio_node(bdf, create=True)

    def _detach(self, bdf):
        driver = self._bound(bdf)
        if driver is None:
            return
        group = self._group(bdf)
        if driver == VFIO and group in self.open_groups:
            raise KernelWouldBlock(
                'unbinding %s from vfio-pci while pid %d holds /dev/vfio/%s open: the kernel '
                'would block until the process lets go' % (bdf, self.open_groups[group], group))
        if driver in DISABLES_SRIOV_ON_REMOVE and \
                (self.read_int(self._dev(bdf) + '/sriov_numvfs') or 0) > 0:
            self._disable_vfs(bdf)
        if driver == VFIO:
            self._vfio_node(bdf, create=False)
        dev = os.path.realpath(self.path(self._dev(bdf)))
        os.unlink(os.path.join(dev, 'driver'))
        link = self.path('bus/pci/drivers/%s/%s' % (driver, bdf))
        if os.path.lexists(link):
            os.unlink(link)

    def _matches(self, driver, bdf):
        override = self._override(bdf)
        if override is not None:
            return override == driver
        if driver == VFIO:
            return False
        return self.native.get(bdf) == driver

    def _probe(self, driver, bdf):
        """0, or the errno the driver's probe() fails with."""
        if bdf in self.probe_faults:
            return self.probe_faults[bdf]
        if driver != VFIO and self.link_name(self._dev(bdf) + '/physfn') in self.offline_vfs:
            return errno.ENODEV
        if driver == VFIO:
            pci_class = self.read_int(self._dev(bdf) + '/class', 16) or 0
            if pci_class >> 8 in (0x0604, 0x0607, 0x0609):
                return errno.EINVAL
            if self._group(bdf) is None:
                return errno.EINVAL
        return 0

    # -- the writes ---------------------------------------------------------

    def write(self, rel, value):
        """What ``open(path, 'w').write(value)`` does on a real sysfs (Sysfs.write's way)."""
        path = self.path(rel)
        if not os.path.isdir(os.path.dirname(path)):
            raise _err(errno.ENOENT, path)
        if not os.path.exists(path):
            # open(O_CREAT) in a kernfs directory: it cannot create files.
            raise _err(errno.EACCES, path)
        real = os.path.realpath(path)
        if os.path.isdir(real):
            raise _err(errno.EISDIR, path)
        parent, attr = os.path.split(real)
        root = os.path.realpath(self.root)
        if not real.startswith(root + os.sep):
            with open(real, 'w') as handle:      # not sysfs: what open() does to a plain file
                handle.write(value)
            self.escaped.append((rel, real, value))
            return
        if real == os.path.join(root, 'bus/pci/drivers_probe'):
            handler = self._drivers_probe
        elif os.path.dirname(parent) == os.path.join(root, 'bus/pci/drivers'):
            handler = functools.partial(self._driver_attr, os.path.basename(parent), attr,
                                        path=path)
        elif self._device_dir(parent) and attr in WRITABLE:
            handler = functools.partial(getattr(self, '_store_' + attr), self._device_dir(parent))
        elif self.mlx5_sriov_sysfs and attr in ('node', 'port', 'policy') and \
                self._device_dir(os.path.dirname(os.path.dirname(parent))) and \
                os.path.basename(os.path.dirname(parent)) == 'sriov':
            handler = functools.partial(self._store_mlx5, real, attr)
        else:
            raise _err(errno.EACCES, path)
        if value == '':
            # Python issues no write(2) for an empty string: the kernel sees nothing.
            return
        handler(value)
        self.writes.append((rel, value))

    def _device_dir(self, directory):
        bdf = os.path.basename(directory)
        if BDF_RE.match(bdf) and self._exists(bdf) and \
                os.path.realpath(self.path(self._dev(bdf))) == directory:
            return bdf
        return None

    def _driver_attr(self, driver, attr, value, path=None):
        bdf = _streq(value)
        if attr in ('new_id', 'remove_id'):
            raise NotImplementedError('the kernel model does not implement %s (dynamic ids); '
                                      'the collection binds through driver_override' % attr)
        if attr == 'unbind':
            if not self._exists(bdf) or self._bound(bdf) != driver:
                raise _err(errno.ENODEV, path)
            self._detach(bdf)
        elif attr == 'bind':
            if not self._exists(bdf) or not self._matches(driver, bdf):
                raise _err(errno.ENODEV, path)
            if self._bound(bdf) is not None:
                raise _err(errno.EBUSY, path)
            failure = self._probe(driver, bdf)
            if failure:
                raise _err(failure, path)
            self._attach(bdf, driver)
        else:
            raise _err(errno.EACCES, path)

    def _drivers_probe(self, value):
        bdf = _streq(value)
        if not self._exists(bdf):
            raise _err(errno.ENODEV, self.path('bus/pci/drivers_probe'))
        if self._bound(bdf) is not None:
            return
        for driver in self.listdir('bus/pci/drivers'):
            if self._matches(driver, bdf):
                if not self._probe(driver, bdf):
                    self._attach(bdf, driver)
                return

    def _store_driver_override(self, bdf, value):
        if len(value) >= PAGE_SIZE - 1:
            raise _err(errno.EINVAL, 'driver_override')
        name = value.split('\n', 1)[0].split('\0', 1)[0]
        _write(self.path(self._dev(bdf) + '/driver_override'),
               (name if name else '(null)') + '\n')

    def _store_sriov_drivers_autoprobe(self, bdf, value):
        flag = _kstrtobool(value)
        if flag is None:
            raise _err(errno.EINVAL, 'sriov_drivers_autoprobe')
        _write(self.path(self._dev(bdf) + '/sriov_drivers_autoprobe'), '%d\n' % flag)

    def _store_sriov_numvfs(self, bdf, value):
        count = _kstrtoul(value, 0xffff)
        if count is None:
            raise _err(errno.EINVAL, 'sriov_numvfs')
        total = self.read_int(self._dev(bdf) + '/sriov_totalvfs') or 0
        if count > total:
            raise _err(errno.ERANGE, 'sriov_numvfs')
        current = self.read_int(self._dev(bdf) + '/sriov_numvfs') or 0
        if count == current:
            return
        driver = self._bound(bdf)
        if driver is None or driver not in SRIOV_DRIVERS:
            raise _err(errno.ENOENT, 'sriov_numvfs')
        if count == 0:
            self._disable_vfs(bdf)
            return
        if current:
            raise _err(errno.EBUSY, 'sriov_numvfs')
        self._enable_vfs(bdf, count, driver)

    def _enable_vfs(self, pf, count, pf_driver):
        vfs = _VfBuilder(self, pf).vfs(pf, count)
        autoprobe = self.read_int(self._dev(pf) + '/sriov_drivers_autoprobe')
        vf_driver = SRIOV_DRIVERS[pf_driver]
        pf_dir = os.path.realpath(self.path(self._dev(pf)))
        for index, vf in enumerate(vfs):
            self.native[vf] = vf_driver
            self._adopt(vf)
            if autoprobe != 0 and not self._probe(vf_driver, vf):
                self._attach(vf, vf_driver)
            if self.mlx5_sriov_sysfs:
                vf_dir = os.path.join(pf_dir, 'sriov', str(index))
                _write(os.path.join(vf_dir, 'node'), '00:00:00:00:00:00:00:00\n')
                _write(os.path.join(vf_dir, 'port'), '00:00:00:00:00:00:00:00\n')
                _write(os.path.join(vf_dir, 'policy'), 'Down\n')
        self.sriov_generation[pf] = self.sriov_generation.get(pf, 0) + 1

    def _disable_vfs(self, pf):
        pf_dir = os.path.realpath(self.path(self._dev(pf)))
        links = sorted((e for e in os.listdir(pf_dir) if e.startswith('virtfn')),
                       key=lambda e: int(e[6:]))
        for link in links:
            vf = os.path.basename(os.readlink(os.path.join(pf_dir, link)))
            self._detach(vf)
            group = self._group(vf)
            if group is not None:
                group_dir = self.path('kernel/iommu_groups/' + group)
                os.unlink(os.path.join(group_dir, 'devices', vf))
                if not os.listdir(os.path.join(group_dir, 'devices')):
                    shutil.rmtree(group_dir)
            vf_dir = os.path.realpath(self.path(self._dev(vf)))
            os.unlink(self.path(self._dev(vf)))
            shutil.rmtree(vf_dir)
            os.unlink(os.path.join(pf_dir, link))
            self.native.pop(vf, None)
            self.reset_supported.pop(vf, None)
        if os.path.isdir(os.path.join(pf_dir, 'sriov')):
            shutil.rmtree(os.path.join(pf_dir, 'sriov'))
        _write(os.path.join(pf_dir, 'sriov_numvfs'), '0\n')
        self.sriov_generation[pf] = self.sriov_generation.get(pf, 0) + 1

    def _store_reset(self, bdf, value):
        if _kstrtoul(value, 2 ** 64 - 1) != 1:
            raise _err(errno.EINVAL, 'reset')
        methods = (self.read(self._dev(bdf) + '/reset_method') or '').split()
        if not methods:
            raise _err(errno.ENOTTY, 'reset')
        if bdf in self.reset_faults:
            raise _err(self.reset_faults[bdf], 'reset')
        self.resets.append((bdf, methods[0]))

    def _store_reset_method(self, bdf, value):
        path = self.path(self._dev(bdf) + '/reset_method')
        text = _streq(value)
        if text == '':
            _write(path, '\n')
            return
        if text == 'default':
            _write(path, ' '.join(self.reset_supported.get(bdf, [])) + '\n')
            return
        names = [name.strip() for name in text.split(' ') if name.strip()]
        supported = self.reset_supported.get(bdf, [])
        if not names or any(n not in RESET_METHODS or n not in supported for n in names):
            raise _err(errno.EINVAL, 'reset_method')
        _write(path, ' '.join(names) + '\n')

    def _store_mlx5(self, real, attr, value):
        text = _streq(value)
        if attr in ('node', 'port') and not GUID_RE.match(text):
            raise _err(errno.EINVAL, real)
        if attr == 'policy' and text not in MLX5_POLICIES:
            raise _err(errno.EINVAL, real)
        _write(real, text.lower() + '\n' if attr != 'policy' else text + '\n')

    # -- the world around it --------------------------------------------------

    def hold_open(self, node, pid, comm, fd):
        """Process ``pid`` (``comm``) holding ``node`` open as its descriptor ``fd``; the fd link."""
        if not self.proc_root:
            raise ValueError('hold_open needs the model to have a proc_root')
        _write(os.path.join(self.proc_root, str(pid), 'comm'), comm + '\n')
        link = os.path.join(self.proc_root, str(pid), 'fd', str(fd))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(node, link)
        return link

    def open_vfio_group(self, group, pid=4242, comm='qemu-system-x86', fd=23):
        """A process holding /dev/vfio/<group> open, as QEMU does while a VM runs."""
        self.hold_open('/dev/vfio/%s' % group, pid, comm, fd)
        self.open_groups[str(group)] = pid

    def close_vfio_group(self, group):
        pid = self.open_groups.pop(str(group))
        shutil.rmtree(os.path.join(self.proc_root, str(pid)))
