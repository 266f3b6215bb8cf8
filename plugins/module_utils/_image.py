# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the image pipeline, a checked base image onto a slot's disk.

The target is the slot's NVMe namespace (a block device, raw) or, where the slot has
none, a file ``{image_dir}/{slot_id}.{format}``. Order of work: paths checked, source
checksum verified, ``qemu-img info`` read with the declared format (a raw image is
never probed, and a qcow2 with a backing file or an external data file is refused:
either would let an image read host files), ``qemu-img convert``, resize.

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

from ansible_collections.gpuaas.slice.plugins.module_utils._files import (
    atomic_write,
    check_path,
    ensure_dir,
    install,
    remove,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import CHECKSUM, GpuaasError, Slot

DEVICE_RE = re.compile(r'/dev/[A-Za-z0-9_./-]+')
PROGRESS_RE = re.compile(br'\((\d+(?:\.\d+)?)/100%\)')
MARKER_VERSION = 1
FORMATS = ('raw', 'qcow2')


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
        raise ImageError("size %r is not a size such as '20G', '512M' or a number of bytes" % (value,))
    if size <= 0:
        raise ImageError('size %r must be more than zero' % (value,))
    return int(size)


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def block_size(path):
    """Size in bytes of a block device (or any file one can seek in)."""
    with open(path, 'rb') as handle:
        return handle.seek(0, os.SEEK_END)


def read_marker(path):
    try:
        with open(path, 'r') as handle:
            marker = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def parse_progress(data):
    """The percentages in qemu-img convert -p output ('    (12.50/100%)\\r...')."""
    return [float(value) for value in PROGRESS_RE.findall(data)]


class Image:
    """Bring one slot's image to ``params['state']``; :meth:`run` returns the result."""

    def __init__(self, module, clock=time.monotonic):
        self.module = module
        self.params = module.params
        self.clock = clock
        Slot.parse(self.params['slot_id'])
        self.warnings = []

    # -- where ----------------------------------------------------------------

    def target(self):
        """(target path, 'file' or 'device', marker path)."""
        p = self.params
        slot_id = p['slot_id']
        if p['target_device']:
            device = check_path(p['target_device'], 'target_device')
            if not DEVICE_RE.fullmatch(device):
                raise ImageError('target_device %r is not a device under /dev' % (p['target_device'],))
            if p['format'] != 'raw':
                raise ImageError('a block device target holds a raw image: set format=raw '
                                 '(qcow2 on a device gains nothing the device does not have)')
            state_dir = check_path(p['state_dir'], 'state_dir')
            return device, 'device', Slot.parse(slot_id).file(state_dir, '.image.json')
        image_dir = check_path(p['image_dir'], 'image_dir')
        target = Slot.parse(slot_id).file(image_dir, '.' + p['format'])
        return target, 'file', target + '.gpuaas.json'

    def source(self):
        p = self.params
        source = check_path(p['source'], 'source', allowed_dirs=p['source_dirs'])
        if not os.path.isfile(source):
            raise ImageError('source image %s does not exist or is not a regular file' % source)
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

    def qemu_img(self):
        return self.module.get_bin_path('qemu-img', required=True)

    def info(self, path, fmt):
        argv = [self.qemu_img(), 'info', '-f', fmt, '--output=json', path]
        rc, out, err = self.module.run_command(argv, environ_update={'LANG': 'C'})
        if rc != 0:
            raise ImageError('qemu-img info -f %s %s failed: %s (is source_format right?)'
                             % (fmt, path, (err or out).strip()))
        try:
            return json.loads(out)
        except ValueError:
            raise ImageError('qemu-img info %s printed no JSON: %s' % (path, out[:200]))

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

    def convert(self, argv):
        """Run qemu-img convert -p through run_command, following its progress as it goes.

        run_command hands its Popen to ``before_communicate_callback`` before reading the
        output; the callback reads stdout (the progress lines) to its end, recording
        milestones and rewriting ``progress_file``. run_command then finds stdout at EOF
        and collects stderr and the exit status as usual.
        """
        started = self.clock()
        state = {'milestones': [], 'last_pct': -1.0, 'last_write': 0.0}
        progress_file = self.params['progress_file']

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

        rc, out, err = self.module.run_command(argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'},
                                               before_communicate_callback=follow)
        seconds = round(self.clock() - started, 3)
        if rc != 0:
            raise ImageError('%s failed (rc %d): %s' % (' '.join(argv[:2]), rc, (err or out).strip()))
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
        marker = read_marker(marker_path)
        result = {'target': target, 'target_kind': kind, 'target_format': p['format'],
                  'marker': marker_path}
        if p['state'] == 'absent':
            return self.absent(result, target, kind, marker_path, marker)

        if p['progress_file']:
            check_path(p['progress_file'], 'progress_file')
        source = self.source()
        algorithm, expected = parse_checksum(p['checksum'])
        size = parse_size(p['size'])
        want = {'version': MARKER_VERSION, 'slot_id': p['slot_id'],
                'source_checksum': '%s:%s' % (algorithm, expected),
                'source_format': p['source_format'], 'target': target,
                'target_format': p['format'], 'size': size}
        if not p['force'] and self.target_holds(target, kind, marker, want):
            result.update(changed=False, actions=[], virtual_size=marker.get('virtual_size'),
                          source_checksum=want['source_checksum'])
            if self.module._diff:
                result['diff'] = {'before': marker, 'after': marker}
            return result

        # Everything below reads the source; nothing is created until it has passed.
        actual = file_digest(source, algorithm)
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
        want['virtual_size'] = final_size

        actions = ['verify checksum', 'convert']
        if kind == 'file' and final_size > virtual_size:
            actions.append('resize')
        actions.append('write marker')
        result.update(changed=True, actions=actions, virtual_size=final_size,
                      source_checksum=want['source_checksum'])
        if self.module._diff:
            result['diff'] = {'before': marker or {}, 'after': want}
        if self.module.check_mode:
            return result

        qemu_img = self.qemu_img()
        marker_dir = os.path.dirname(marker_path)
        ensure_dir(marker_dir, 0o711)
        remove(marker_path)
        if kind == 'device':
            result['convert'] = self.convert([qemu_img, 'convert', '-p', '-n', '-f', p['source_format'],
                                              '-O', 'raw', source, target])
        else:
            handle, tmp = tempfile.mkstemp(dir=os.path.dirname(target),
                                           prefix='.%s.' % os.path.basename(target))
            os.close(handle)
            try:
                result['convert'] = self.convert([qemu_img, 'convert', '-p', '-f', p['source_format'],
                                                  '-O', p['format'], source, tmp])
                if 'resize' in actions:
                    argv = [qemu_img, 'resize', '-f', p['format'], tmp, str(final_size)]
                    rc, out, err = self.module.run_command(argv, environ_update={'LANG': 'C'})
                    if rc != 0:
                        raise ImageError('qemu-img resize of %s to %d bytes failed: %s'
                                         % (target, final_size, (err or out).strip()))
                os.chmod(tmp, 0o600)
                install(self.module, tmp, target, 0o600)
            finally:
                remove(tmp)
        want['written_at'] = int(time.time())
        atomic_write(self.module, marker_path,
                     (json.dumps(want, indent=2, sort_keys=True) + '\n').encode('utf-8'), 0o644)
        return result

    def absent(self, result, target, kind, marker_path, marker):
        actions = []
        if kind == 'file' and os.path.lexists(target):
            actions.append('remove image')
        if os.path.lexists(marker_path):
            actions.append('remove marker')
        if kind == 'device' and actions:
            self.warnings.append('the image on %s stays until the slot is wiped; only its marker '
                                 'is removed' % target)
        if actions and not self.module.check_mode:
            if kind == 'file':
                remove(target)
            remove(marker_path)
        result.update(changed=bool(actions), actions=actions)
        if self.module._diff:
            result['diff'] = {'before': marker or {}, 'after': {}}
        return result
