# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: wiping a slot's NVMe by policy, and proving it.

Policies:

* ``nvme-format``: ``nvme format <namespace> --ses=N --force`` for each secure-erase
  setting in turn (1 = user data erase, 2 = cryptographic erase, 0 = none) while the
  controller answers "Invalid Field" (it does not support that setting);
* ``blkdiscard``: ``blkdiscard <device>``, without ``-f``, so blkdiscard opens the device
  exclusively (O_EXCL) and fails if anything holds it (it asks for ``-f`` only on a
  terminal, never under Ansible);
* ``zero``: zeros written here, in chunks, with the device opened exclusively and
  O_DIRECT, then fsync; in a regular file (a boot disk on host storage) over its data
  regions only (SEEK_DATA/SEEK_HOLE: a hole holds no block and reads as zeros).

Verification reads sampled 4 KiB blocks (the first, the last, and others spread over the
device at random offsets) with the page cache bypassed (O_DIRECT; posix_fadvise
DONTNEED for a regular file). After ``zero`` every sample must be zeros. After
``nvme-format`` or ``blkdiscard`` the device only guarantees that the old data is gone:
what a read returns is up to the device (zeros, ones, or cipher text after a
cryptographic erase), so each sample must be all zeros, all ones, or different from what
it held before the wipe; a sample that held data and still holds it fails the wipe.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import functools
import mmap
import os
import random
import re
import stat
import time

from ansible_collections.gpuaas.slice.plugins.module_utils import _devctl as devctl
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Runner
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_path
from ansible_collections.gpuaas.slice.plugins.module_utils._host import NVME_NS_RE, HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import BDF_RE, CLASS_NVME
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import check_int, show

POLICIES = ('nvme-format', 'blkdiscard', 'zero')
SAMPLE = 4096
DEFAULT_CHUNK = 4 * 1024 * 1024
MAX_CHUNK = 256 * 1024 * 1024
MAX_SAMPLES = 4096
# 23 hours: with the runner's grace, within the day the engine allows any command.
MAX_FORMAT_TIMEOUT = 23 * 3600
# nvme format's own --timeout fires first; the runner's limit is for an nvme that hangs anyway.
RUNNER_GRACE = 60
# Characters a device path or a file under an allowed directory may have: no white space,
# no shell metacharacters, no quotes.
PATH_RE = re.compile(r'/[A-Za-z0-9._:@+/-]+')
INVALID_FIELD_RE = re.compile(r'invalid[ _]field|\b0x(?:4)?002\b', re.IGNORECASE)


def _uniform(data):
    if not data:
        return 'zero'
    if data.count(0) == len(data):
        return 'zero'
    if data.count(0xff) == len(data):
        return 'ones'
    return None


def sample_offsets(size, count, rng=None):
    """Offsets (multiples of 4 KiB) of up to ``count`` sample blocks of a ``size``-byte device."""
    if size <= SAMPLE:
        return [0]
    blocks = size // SAMPLE
    count = max(2, min(count, blocks))
    rng = rng or random.SystemRandom()
    chosen = {0, blocks - 1}
    span = blocks / float(count)
    for i in range(1, count - 1):
        low = int(i * span)
        high = max(low, int((i + 1) * span) - 1)
        chosen.add(min(rng.randint(low, high), blocks - 1))
    return sorted(b * SAMPLE for b in chosen)


def data_extents(fd, size):
    """(start, end) of each data region of an open regular file, by SEEK_DATA and SEEK_HOLE.

    A hole reads as zeros and holds no block of the file, so zeros are written over the data
    regions only (a sparse 20 GiB disk the guest wrote 1 GiB of costs 1 GiB of writes). A
    file system that cannot tell (EINVAL, no SEEK_DATA) gets the whole file overwritten.
    """
    if not hasattr(os, 'SEEK_DATA'):
        return [(0, size)]
    extents, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            return [(0, size)]
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        offset = end
    return extents


class Target:
    """One thing to wipe: a block device (a namespace) or a regular file."""

    def __init__(self, path, kind, name=None):
        self.path = path
        self.real = os.path.realpath(path)
        self.kind = kind
        self.name = name
        self.size = None
        self.offsets = self.before = self.after = None   # the sampled blocks, around the wipe

    @property
    def is_block(self):
        return self.kind == 'block'


class NvmeWipe:
    """Resolve, check, wipe and verify."""

    def __init__(self, module, target, policy, allowed_file_dirs=None, chunk_size=DEFAULT_CHUNK,
                 verify_samples=64, format_ses=(1, 0), format_timeout=3600, sysfs_root='/sys',
                 proc_root='/proc', dev_root='/dev'):
        self.module = module
        self.target = target
        if policy not in POLICIES:
            raise devctl.DeviceError('policy must be one of %s, not %s' % (', '.join(POLICIES), show(policy)))
        self.policy = policy
        self.allowed = [os.path.realpath(check_path(d, 'allowed_file_dirs[%d]' % index))
                        for index, d in enumerate(allowed_file_dirs or [])]
        self.chunk_size = check_int(chunk_size, 'chunk_size (a multiple of 4096)', SAMPLE, MAX_CHUNK)
        if chunk_size % SAMPLE:
            raise devctl.DeviceError('chunk_size must be a multiple of 4096, not %d' % chunk_size)
        if not format_ses:
            raise devctl.DeviceError('format_ses must name at least one secure-erase setting')
        self.format_ses = [check_int(ses, 'format_ses[%d]' % i, 0, 2) for i, ses in enumerate(format_ses)]
        self.verify_samples = check_int(verify_samples, 'verify_samples', 1, MAX_SAMPLES)
        self.format_timeout = check_int(format_timeout, 'format_timeout', 1, MAX_FORMAT_TIMEOUT)
        self.sysfs = devctl.open_sysfs(check_path(sysfs_root, 'sysfs_root'))
        self.proc_root = check_path(proc_root, 'proc_root')
        self.dev_root = check_path(dev_root, 'dev_root')
        self.runner = Runner(module, devctl.DeviceError)
        self.warnings = []

    # -- resolving the target ------------------------------------------------

    def _allowed_file(self, path):
        real = os.path.realpath(path)
        return any(real.startswith(d.rstrip(os.sep) + os.sep) for d in self.allowed)

    def _check_path(self, text):
        if not isinstance(text, str) or not text:
            raise devctl.DeviceError('target must be a PCI address or an absolute path')
        if '..' in text.split('/'):
            raise devctl.DeviceError("target %s contains '..': give the device path itself" % show(text))
        if not PATH_RE.fullmatch(text):
            raise devctl.DeviceError(
                'target %s is neither a full PCI address nor an absolute path of letters, '
                "digits and . _ : @ + - /" % show(text))
        if os.path.normpath(text) != text:
            raise devctl.DeviceError('target %r is not a normalized path (%s)'
                                     % (text, os.path.normpath(text)))

    def _node(self, path, name=None):
        """A Target for a device node or file path, or DeviceError."""
        try:
            info = os.stat(path)
        except (IOError, OSError) as exc:
            raise devctl.DeviceError('target %s does not exist (%s)' % (path, exc.strerror))
        if stat.S_ISBLK(info.st_mode):
            real = os.path.realpath(path)
            if not real.startswith(self.dev_root + os.sep):
                raise devctl.DeviceError('%s resolves to %s, outside %s'
                                         % (path, real, self.dev_root))
            block = os.path.basename(real)
            if not self.sysfs.exists('class/block/' + block):
                raise devctl.DeviceError('%s is a block device without a %s entry under '
                                         'class/block' % (path, block))
            return Target(path, 'block', block)
        if stat.S_ISREG(info.st_mode) and self._allowed_file(path):
            return Target(path, 'file', name)
        raise devctl.DeviceError(
            '%s is not a block device%s' % (path, ', nor a regular file under allowed_file_dirs'
                                            if self.allowed else
                                            ' (regular files need allowed_file_dirs)'))

    def resolve(self):
        text = self.target
        if isinstance(text, str) and BDF_RE.fullmatch(text.lower()):
            return self._controller(devctl.check_address(text, 'target'))
        self._check_path(text)
        return [self._node(text)]

    def _controller(self, address):
        bus = devctl.open_bus(self.sysfs)
        device = devctl.get_device(self.sysfs, bus, address)
        if (device.pci_class or 0) >> 8 != CLASS_NVME:
            raise devctl.DeviceError('%s is not an NVMe controller' % device.describe())
        if device.driver != 'nvme':
            raise devctl.DeviceError(
                '%s is not bound to the nvme driver, so the host cannot see its namespaces%s'
                % (device.describe(), ': release it first (vfio_bind state=absent)'
                   if device.driver == devctl.VFIO_DRIVER else ''))
        self.controller = device
        names = self.host.nvme_namespaces(device)
        if not names:
            raise devctl.DeviceError('%s has no namespaces (no nvmeXnY under its nvme/ directory)'
                                     % device.describe())
        return [self._node(os.path.join(self.dev_root, name), name) for name in names]

    # -- in use --------------------------------------------------------------

    def _disk_of(self, name):
        """The whole disk a block device name belongs to (itself unless a partition)."""
        if self.sysfs.exists('class/block/%s/partition' % name):
            return os.path.basename(os.path.dirname(self.sysfs.realpath('class/block/' + name)))
        return name

    def _refusals(self, targets):
        reasons = []
        watched = []
        for target in targets:
            watched += [target.path, target.real]
            if target.name and self.sysfs.exists('class/block/' + target.name):
                disk = self._disk_of(target.name)
                why = self.host.block_usage(disk)
                if why:
                    reasons.append('%s is the host\'s: %s' % (target.path, why))
                for part in self.sysfs.listdir('class/block/' + disk):
                    if part.startswith(disk) and part != disk:
                        watched.append(os.path.join(self.dev_root, part))
                watched.append(os.path.join(self.dev_root, disk))
            if self.policy == 'nvme-format' and not (target.name and NVME_NS_RE.match(target.name)):
                reasons.append('%s is not an NVMe namespace, so it cannot be wiped with nvme-format '
                               '(use zero or blkdiscard)' % target.path)
        holders = devctl.open_files(self.proc_root, sorted(set(watched)))
        if holders:
            reasons.append(devctl.describe_holders(holders))
        return reasons

    # -- I/O -------------------------------------------------------------------

    def _size(self, target):
        fd = os.open(target.path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)

    def _read_samples(self, target, offsets):
        length = min(SAMPLE, target.size)
        direct = target.is_block and hasattr(os, 'O_DIRECT')
        fd = os.open(target.path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            if not direct and hasattr(os, 'posix_fadvise'):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            samples = []
            buf = mmap.mmap(-1, SAMPLE)
            for offset in offsets:
                if direct:
                    got = os.preadv(fd, [buf], offset)
                    samples.append(bytes(buf[:got]))
                else:
                    samples.append(os.pread(fd, length, offset))
            buf.close()
            return samples
        finally:
            os.close(fd)

    def _zero(self, target, report):
        flags = os.O_WRONLY
        if target.is_block:
            flags |= os.O_EXCL
        fd = None
        if target.is_block and hasattr(os, 'O_DIRECT'):
            try:
                fd = os.open(target.path, flags | os.O_DIRECT)
            except OSError:
                fd = None
        if fd is None:
            fd = os.open(target.path, flags)
        buf = mmap.mmap(-1, self.chunk_size)
        view = memoryview(buf)
        start = time.monotonic()
        extents = [(0, target.size)] if target.is_block else data_extents(fd, target.size)
        total = sum(end - begin for begin, end in extents)
        written, mark, progress = 0, 10, []
        try:
            for begin, end in extents:
                offset = begin
                while offset < end:
                    count = min(self.chunk_size, end - offset)
                    done = os.pwrite(fd, view[:count], offset)
                    if done <= 0:
                        raise devctl.DeviceError('writing zeros to %s stopped at byte %d'
                                                 % (target.path, offset))
                    offset += done
                    written += done
                    percent = written * 100 // total
                    if percent >= mark or written == total:
                        progress.append({'percent': int(percent), 'bytes': written,
                                         'elapsed_s': round(time.monotonic() - start, 3)})
                        mark = (percent // 10 + 1) * 10
            os.fsync(fd)
        finally:
            view.release()
            buf.close()
            os.close(fd)
        if not progress:
            progress.append({'percent': 100, 'bytes': 0, 'elapsed_s': round(time.monotonic() - start, 3)})
        report['bytes_written'] = written
        report['progress'] = progress
        if not target.is_block:
            report['data_extents'] = len(extents)

    def _format(self, target, report):
        for number, ses in enumerate(self.format_ses):
            argv = self._format_argv(target, ses)
            report['commands'].append(argv)
            rc, out, err = self.runner(argv, check=False, timeout=self.format_timeout + RUNNER_GRACE)
            if rc == 0:
                report['secure_erase_setting'] = ses
                if number:
                    self.warnings.append(
                        '%s does not support secure erase setting %s; formatted with --ses=%d'
                        % (target.path, ', '.join(str(s) for s in self.format_ses[:number]), ses))
                return
            text = (err or out or '').strip()
            if not INVALID_FIELD_RE.search(text) or number == len(self.format_ses) - 1:
                raise devctl.DeviceError('%s failed (status %d): %s' % (' '.join(argv), rc, text),
                                         commands=report['commands'])

    def _discard(self, target, report):
        argv = self._planned_commands(target)[0]
        report['commands'].append(argv)
        rc, out, err = self.runner(argv, check=False, timeout=self.format_timeout)
        if rc != 0:
            raise devctl.DeviceError('%s failed (status %d): %s; if the device does not support '
                                     'discard, use the zero or nvme-format policy'
                                     % (' '.join(argv), rc, (err or out).strip()),
                                     commands=report['commands'])

    def _verify(self, target, offsets, before, after):
        counts = {'samples': len(offsets), 'zero': 0, 'ones': 0, 'changed': 0}
        bad = []
        for index, offset in enumerate(offsets):
            kind = _uniform(after[index])
            if self.policy == 'zero':
                if kind == 'zero':
                    counts['zero'] += 1
                else:
                    bad.append(offset)
                continue
            if kind:
                counts[kind] += 1
            elif _uniform(before[index]) is None and before[index] == after[index]:
                bad.append(offset)
            else:
                counts['changed'] += 1
        counts['failed_offsets'] = bad[:16]
        counts['passed'] = not bad
        if bad:
            what = ('are not zero' if self.policy == 'zero'
                    else 'still hold the data they held before the wipe')
            raise devctl.DeviceError(
                'verification of %s failed: %d of %d sampled blocks %s (first at byte %d): the '
                'device is not wiped; quarantine the slot'
                % (target.path, len(bad), len(offsets), what, bad[0]), verification=counts)
        return counts

    # -- run -------------------------------------------------------------------

    def _tool(self, name, package):
        return devctl.tool(self.runner, name, package, 'the %s policy runs it' % self.policy)

    def _format_argv(self, target, ses):
        return [self._tool('nvme', 'nvme-cli'), 'format', target.path, '--ses=%d' % ses,
                '--force', '--timeout=%d' % (self.format_timeout * 1000)]

    def _planned_commands(self, target):
        if self.policy == 'nvme-format':
            return [self._format_argv(target, self.format_ses[0])]
        if self.policy == 'blkdiscard':
            return [[self._tool('blkdiscard', 'util-linux'), target.path]]
        return []

    def _wipe(self, target, report):
        """Sample, wipe and sample again (a plan step's apply)."""
        start = time.monotonic()
        report['commands'] = []
        target.offsets = sample_offsets(target.size, self.verify_samples)
        target.before = self._read_samples(target, target.offsets) if self.policy != 'zero' else None
        if self.policy == 'zero':
            self._zero(target, report)
        elif self.policy == 'nvme-format':
            self._format(target, report)
        else:
            self._discard(target, report)
        target.after = self._read_samples(target, target.offsets)
        report['verification'] = self._verify(target, target.offsets, target.before, target.after)
        report['duration_s'] = round(time.monotonic() - start, 3)

    def run(self):
        self.controller = None
        self.host = HostUsage(self.sysfs, self.proc_root)
        targets = self.resolve()
        reasons = self._refusals(targets)
        if reasons:
            raise devctl.DeviceError('refusing to wipe %s: %s' % (self.target, '; '.join(reasons)),
                                     reasons=reasons)
        plan = devctl.DevicePlan(self.module, self.sysfs)
        reports = []
        for target in targets:
            target.size = self._size(target)
            report = {'path': target.path, 'device': target.name, 'kind': target.kind,
                      'size_bytes': target.size, 'policy': self.policy,
                      'commands': self._planned_commands(target)}
            reports.append(report)
            plan.change('wipe %s with %s and verify it' % (target.path, self.policy),
                        functools.partial(self._wipe, target, report), key=target.path,
                        before='%d bytes, not wiped' % target.size,
                        after='%d bytes, wiped (%s), verified' % (target.size, self.policy))
        started = time.monotonic()
        try:
            done = plan.execute()
        except devctl.DeviceError as exc:
            exc.details.setdefault('targets', reports)
            raise
        return plan.result(
            target=self.target, policy=self.policy, targets=reports,
            controller=self.controller.address if self.controller is not None else None,
            commands=[c for r in reports for c in r['commands']],
            duration_s=round(time.monotonic() - started, 3) if done else 0.0,
            msg='%s %s with %s' % ('wiped' if done else 'would wipe',
                                   ', '.join(t.path for t in targets), self.policy))
