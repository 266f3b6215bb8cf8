# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the image pipeline, a checked base image onto a slot's disk.

The target is the slot's NVMe namespace (a block device, raw) or, where the slot has
none, a file ``{image_dir}/{slot_id}.{format}``. Order of work: paths checked, source
checksum verified (before the plan, so check mode refuses a bad image too), ``qemu-img
info`` read with the declared format (a raw image is never probed, and a qcow2 with a
backing file or an external data file is refused: either would let an image read host
files), ``qemu-img convert`` (verified by the source being the very file whose checksum
matched: same inode, size, mtime and ctime), resize.

Idempotence is a marker, written last: JSON recording the source checksum and format,
the target and its format and the requested size (and, for a device, its device number
and size). The marker sits next to a file target (``{target}.gpuaas.json``) or, for a
device, in ``state_dir`` (``{slot_id}.image.json``). A target whose marker matches is
left alone without reading the source again, and without comparing content: the guest
has written to it since. The marker is removed before a conversion starts, so a crash
part-way leaves no marker and the next run converts again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import stat
import tempfile
import time

from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import Plan, Runner
from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    StateFileError,
    atomic_write,
    check_dir,
    check_path,
    ensure_dir,
    install,
    read_json,
    remove,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import CHECKSUM, LIMITS, GpuaasError, Slot, show

PROGRESS_RE = re.compile(br'\((\d+(?:\.\d+)?)/100%\)')
MARKER_VERSION = 1
FORMATS = ('raw', 'qcow2')
MAX_SIZE = LIMITS['disk_gib'][1] << 30

# The module's options; slot_provision and slot_release check a step's options with them too.
ARGUMENT_SPEC = dict(
    slot_id=dict(type='str', required=True),
    state=dict(type='str', choices=['present', 'absent'], default='present'),
    source=dict(type='path'),
    source_format=dict(type='str', choices=['qcow2', 'raw'], default='qcow2'),
    checksum=dict(type='str'),
    source_dirs=dict(type='list', elements='path', default=['/var/lib/gpuaas/images']),
    target_device=dict(type='path'),
    image_dir=dict(type='path'),
    format=dict(type='str', choices=['raw', 'qcow2'], default='raw'),
    size=dict(type='str'),
    state_dir=dict(type='path', default='/var/lib/gpuaas/slot-images'),
    progress_file=dict(type='path'),
    force=dict(type='bool', default=False),
)
RULES = dict(mutually_exclusive=[('target_device', 'image_dir')], required_one_of=[('target_device', 'image_dir')],
             required_if=[('state', 'present', ('source', 'checksum'))])


class ImageError(GpuaasError):
    """The image cannot be put on the slot's disk; the message says why and what to do."""


def parse_checksum(value):
    """('sha256', hex) from 'sha256:<hex>' (or sha512), or ImageError."""
    algorithm, _colon, digest = CHECKSUM.check(value.strip() if isinstance(value, str) else value,
                                               'checksum').partition(':')
    return algorithm, digest


def parse_size(value):
    """Bytes from 21474836480, '20G' or '512M' (binary units), or ImageError."""
    if value is None:
        return None
    try:
        size = human_to_bytes(str(value).strip())
    except ValueError:
        raise ImageError("size %s is not a size such as '20G', '512M' or a number of bytes" % show(value))
    if not 0 < size <= MAX_SIZE:
        raise ImageError('size %s must be more than zero and at most %d GiB' % (show(value), MAX_SIZE >> 30))
    return int(size)


def file_identity(info):
    """What changes when a file is replaced or written to: device, inode, size, mtime and ctime."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def file_digest(path, algorithm):
    """(hex digest, identity): the file's digest and its :func:`file_identity` as it was read."""
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as handle:
        identity = file_identity(os.fstat(handle.fileno()))
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest(), identity


def block_size(path):
    """Size in bytes of a block device (or any file one can seek in)."""
    with open(path, 'rb') as handle:
        return handle.seek(0, os.SEEK_END)


def read_marker(path, warnings):
    """The marker at ``path``, or None; a damaged one counts as none (the image is converted again)."""
    try:
        return read_json(path, 'image marker')
    except StateFileError as exc:
        warnings.append('%s: the image is converted again' % exc)
        return None


def parse_progress(data):
    """The percentages in qemu-img convert -p output ('    (12.50/100%)\\r...')."""
    return [float(value) for value in PROGRESS_RE.findall(data)]


class Image:
    """Bring one slot's image to ``params['state']``; :meth:`run` returns the result."""

    def __init__(self, module, clock=time.monotonic):
        self.module = module
        self.params = module.params
        self.clock = clock
        self.slot = Slot.parse(self.params['slot_id'])
        self.runner = Runner(module, ImageError)
        self.warnings = []

    # -- where ----------------------------------------------------------------

    def target(self):
        """(target path, 'file' or 'device', marker path)."""
        p = self.params
        if p['target_device']:
            device = check_path(p['target_device'], 'target_device')
            if not os.path.realpath(device).startswith('/dev/'):
                raise ImageError('target_device %s is not a device under /dev' % show(p['target_device'], 4096))
            if p['format'] != 'raw':
                raise ImageError('a block device target holds a raw image: set format=raw '
                                 '(qcow2 on a device gains nothing the device does not have)')
            return device, 'device', self.slot.file(check_dir(p['state_dir'], 'state_dir'), '.image.json')
        target = self.slot.file(check_dir(p['image_dir'], 'image_dir'), '.' + p['format'])
        return target, 'file', target + '.gpuaas.json'

    def source(self):
        p = self.params
        dirs = [check_dir(path, 'source_dirs[%d]' % index) for index, path in enumerate(p['source_dirs'])]
        source = check_path(p['source'], 'source', allowed_dirs=dirs)
        if not os.path.isfile(source):
            raise ImageError('source image %s does not exist or is not a regular file' % show(source, 4096))
        return source

    # -- have -----------------------------------------------------------------

    def device_identity(self, device):
        try:
            info = os.stat(device)
        except OSError:
            raise ImageError('target_device %s does not exist' % device)
        if not stat.S_ISBLK(info.st_mode):
            raise ImageError('target_device %s is not a block device' % device)
        return {'rdev': '%d:%d' % (os.major(info.st_rdev), os.minor(info.st_rdev)),
                'size': block_size(device)}

    def target_holds(self, target, kind, marker, want):
        """True when the marker says the target holds ``want`` and the target is still it."""
        if marker is None or marker.get('version') != MARKER_VERSION:
            return False
        keys = ('slot_id', 'source_checksum', 'source_format', 'target', 'target_format', 'size')
        if any(marker.get(key) != want[key] for key in keys):
            return False
        if kind == 'device':
            return marker.get('device') == self.device_identity(target)
        if not os.path.isfile(target):
            return False
        if marker.get('target_format') == 'raw':
            return os.path.getsize(target) == marker.get('virtual_size')
        return True

    # -- commands -------------------------------------------------------------

    def info(self, path, fmt):
        rc, out, err = self.runner(['qemu-img', 'info', '-f', fmt, '--output=json', path], check=False)
        if rc != 0:
            raise ImageError('qemu-img info -f %s %s failed: %s (is source_format right?)'
                             % (fmt, path, (err or out).strip()))
        try:
            return json.loads(out)
        except ValueError:
            raise ImageError('qemu-img info %s printed no JSON: %s' % (path, show(out[:200])))

    def check_source_info(self, source, info):
        fmt = self.params['source_format']
        if info.get('format') != fmt:
            raise ImageError('%s is %s, not %s' % (source, info.get('format'), fmt))
        if info.get('backing-filename') or info.get('full-backing-filename'):
            raise ImageError('%s has a backing file (%s): images must be self-contained, flatten it '
                             'with qemu-img convert first'
                             % (source, info.get('full-backing-filename') or info.get('backing-filename')))
        data = (info.get('format-specific') or {}).get('data') or {}
        if data.get('data-file'):
            raise ImageError('%s keeps its data in an external file (%s): images must be '
                             'self-contained' % (source, data.get('data-file')))
        size = info.get('virtual-size')
        if not isinstance(size, int) or size <= 0:
            raise ImageError('qemu-img info gave no virtual size for %s' % source)
        return size

    def convert(self, argv, progress_file=None):
        """Run qemu-img convert -p through run_command, following its progress as it goes.

        run_command hands its Popen to ``before_communicate_callback`` before reading the
        output; the callback reads stdout (the progress lines) to its end, recording
        milestones and rewriting ``progress_file``. run_command then finds stdout at EOF
        and collects stderr and the exit status as usual.
        """
        started = self.clock()
        state = {'milestones': [], 'last_pct': -1.0, 'last_write': 0.0}
        if progress_file:
            ensure_dir(os.path.dirname(progress_file), 0o711)

        def follow(proc):
            pending = b''
            while True:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    return
                pending += chunk
                cut = max(pending.rfind(b'\r'), pending.rfind(b'\n'))
                if cut < 0:
                    continue
                values, pending = parse_progress(pending[:cut + 1]), pending[cut + 1:]
                if not values:
                    continue
                pct, elapsed = values[-1], round(self.clock() - started, 2)
                if int(pct // 10) > int(state['last_pct'] // 10):
                    state['milestones'].append([pct, elapsed])
                state['last_pct'] = pct
                if progress_file and self.clock() - state['last_write'] >= 1.0:
                    self.write_progress(progress_file, pct, elapsed)
                    state['last_write'] = self.clock()

        self.runner(argv, before_communicate_callback=follow)
        seconds = round(self.clock() - started, 3)
        if progress_file:
            self.write_progress(progress_file, 100.0, seconds)
        milestones = state['milestones']
        if not milestones or milestones[-1][0] < 100.0:
            milestones.append([100.0, seconds])
        return {'seconds': seconds, 'progress': milestones}

    def write_progress(self, path, percent, elapsed):
        data = json.dumps({'slot_id': self.params['slot_id'], 'percent': percent,
                           'elapsed_s': elapsed}, sort_keys=True).encode('utf-8') + b'\n'
        atomic_write(self.module, path, data, 0o644)

    # -- run ------------------------------------------------------------------

    def run(self):
        p = self.params
        target, kind, marker_path = self.target()
        progress = p['progress_file'] and check_path(
            p['progress_file'], 'progress_file', allowed_dirs=[check_dir(p['state_dir'], 'state_dir')])
        marker = read_marker(marker_path, self.warnings)
        result = {'target': target, 'target_kind': kind, 'target_format': p['format'], 'marker': marker_path}
        plan = Plan(self.module, error=ImageError)
        if p['state'] == 'absent':
            if kind == 'file' and os.path.lexists(target):
                plan.change('remove image', lambda: remove(target))
            if os.path.lexists(marker_path):
                plan.change('remove marker', lambda: remove(marker_path))
            if kind == 'device' and plan:
                self.warnings.append('the image on %s stays until the slot is wiped; only its marker '
                                     'is removed' % target)
            plan.execute()
            return self.finish(result, plan, marker or {}, {})

        source = self.source()
        algorithm, expected = parse_checksum(p['checksum'])
        size = parse_size(p['size'])
        want = {'version': MARKER_VERSION, 'slot_id': p['slot_id'],
                'source_checksum': '%s:%s' % (algorithm, expected),
                'source_format': p['source_format'], 'target': target,
                'target_format': p['format'], 'size': size}
        result['source_checksum'] = want['source_checksum']
        if not p['force'] and self.target_holds(target, kind, marker, want):
            result['virtual_size'] = marker.get('virtual_size')
            return self.finish(result, plan, marker, marker)

        # Everything below reads the source; nothing is created until it has passed.
        actual, read_as = file_digest(source, algorithm)
        if actual != expected:
            raise ImageError('%s does not match its checksum: expected %s:%s, got %s:%s; nothing '
                             'was written' % (source, algorithm, expected, algorithm, actual))
        virtual_size = self.check_source_info(source, self.info(source, p['source_format']))
        final_size = size or virtual_size
        if final_size < virtual_size:
            raise ImageError('size %d is smaller than the image (%d bytes): an image is never '
                             'shrunk' % (final_size, virtual_size))
        if kind == 'device':
            identity = self.device_identity(target)
            if final_size > identity['size']:
                raise ImageError('%s has %d bytes, less than the %d the image needs'
                                 % (target, identity['size'], final_size))
            final_size = identity['size']
            want['device'] = identity
        want['virtual_size'] = result['virtual_size'] = final_size
        # A file is converted into a temporary file next to it and moved over it at the end.
        work = {'out': target}

        def convert():
            ensure_dir(os.path.dirname(marker_path), 0o711)
            remove(marker_path)
            if kind == 'device':
                argv = ['qemu-img', 'convert', '-p', '-n', '-f', p['source_format'], '-O', 'raw', source, target]
            else:
                handle, work['out'] = tempfile.mkstemp(dir=os.path.dirname(target), prefix='.%s.' % os.path.basename(target))
                os.close(handle)
                argv = ['qemu-img', 'convert', '-p', '-f', p['source_format'], '-O', p['format'], source, work['out']]
            result['convert'] = self.convert(argv, progress)

        def write_marker():
            if work['out'] != target:
                os.chmod(work['out'], 0o600)
                install(self.module, work['out'], target, 0o600)
            want['written_at'] = int(time.time())
            atomic_write(self.module, marker_path, (json.dumps(want, indent=2, sort_keys=True) + '\n').encode('utf-8'),
                         0o644)

        def source_unchanged():
            """None while the source is still the file whose checksum matched: qemu-img read that one."""
            if file_identity(os.stat(source)) != read_as:
                return ('%s changed after its checksum was verified, so the copy cannot be trusted; no marker '
                        'was written and the next run converts again' % source)
            return None

        # The checksum is no step: it was verified above, in check mode too, before anything was
        # planned; the conversion's own check is that the source did not change since.
        plan.change('convert', convert, verify=source_unchanged)
        if kind == 'file' and final_size > virtual_size:
            plan.change('resize', lambda: self.runner(['qemu-img', 'resize', '-f', p['format'], work['out'],
                                                       str(final_size)]))
        plan.change('write marker', write_marker)
        try:
            plan.execute()
        finally:
            if work['out'] != target:
                remove(work['out'])
        return self.finish(result, plan, marker or {}, dict((k, v) for k, v in want.items() if k != 'written_at'))

    def finish(self, result, plan, before, after):
        result.update(plan.result())
        if self.module._diff:
            result['diff'] = {'before': before, 'after': after}
        return result
