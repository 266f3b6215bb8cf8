# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building small guests from Debian packages: shared by the slot VM test guest
(tests/guest/build_image.py) and the real-kernel lab (lab/kernel/kernel_lab.py).

Packages are fetched with ``apt-get download`` at their current candidate version;
a kernel .deb carries no modules.dep, so module dependencies are read from each
module's own .modinfo; the initramfs is written here (cpio newc, fixed metadata), so
the same inputs give the same bytes. A build is cached in ``<cache>/<key>/`` with its
``manifest.json`` (:func:`cached`, :func:`publish`).
"""

import glob
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess


def candidate(package):
    out = subprocess.run(['apt-cache', 'policy', package], check=True, capture_output=True,
                         text=True, env=dict(os.environ, LANG='C')).stdout
    for line in out.splitlines():
        if line.strip().startswith('Candidate:'):
            version = line.split(':', 1)[1].strip()
            if version != '(none)':
                return version
    raise SystemExit('apt knows no package %s (run apt-get update)' % package)


def kernel_package(meta):
    """The versioned kernel package a meta package (linux-image-amd64) depends on."""
    out = subprocess.run(['apt-cache', 'depends', meta], check=True, capture_output=True,
                         text=True, env=dict(os.environ, LANG='C')).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith('Depends:') and 'linux-image-' in line:
            return line.split(':', 1)[1].strip()
    raise SystemExit('cannot tell which kernel %s depends on' % meta)


def download(package, dest):
    """The .deb of ``package`` at its candidate version, downloaded once into ``dest``."""
    os.makedirs(dest, exist_ok=True)
    version = candidate(package)
    pattern = os.path.join(dest, '%s_%s_*.deb' % (package, version.replace(':', '%3a')))
    found = glob.glob(pattern)
    if not found:
        subprocess.run(['apt-get', 'download', '-q', '%s=%s' % (package, version)], cwd=dest,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = glob.glob(pattern)
    if not found:
        raise SystemExit('apt-get download %s=%s left no .deb' % (package, version))
    return found[0]


def module_depends(path):
    """A module's dependencies as its .modinfo section lists them ('depends=a,b')."""
    with open(path, 'rb') as handle:
        match = re.search(rb'\x00depends=([^\x00]*)\x00', handle.read())
    return [d for d in match.group(1).decode().split(',') if d] if match else []


def module_order(modules_dir, wanted):
    """Paths (relative to modules_dir) of the wanted modules, dependencies first."""
    by_name = {}
    for top, _dirs, files in os.walk(modules_dir):
        for name in files:
            if name.endswith('.ko'):
                by_name[name[:-3].replace('-', '_')] = os.path.relpath(os.path.join(top, name),
                                                                       modules_dir)
    order = []

    def visit(name):
        path = by_name[name.replace('-', '_')]
        for dep in module_depends(os.path.join(modules_dir, path)):
            visit(dep)
        if path not in order:
            order.append(path)
    for name in wanted:
        visit(name)
    return order


class Cpio:
    """A cpio archive in the kernel's initramfs format (newc), built in memory."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b'', nlink=1):
        name_bytes = name.encode() + b'\0'
        header = '070701' + ''.join('%08x' % v for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0))
        self.ino += 1
        self.buf.write(header.encode() + name_bytes)
        self.buf.write(b'\0' * (-(110 + len(name_bytes)) % 4))
        self.buf.write(data)
        self.buf.write(b'\0' * (-len(data) % 4))

    def directory(self, name):
        self._entry(name, 0o040755, nlink=2)

    def file(self, name, data, mode=0o644):
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self._entry(name, 0o120777, target.encode())

    def finish(self):
        self._entry('TRAILER!!!', 0)
        return self.buf.getvalue()


def add_busybox(cpio, busybox_deb_root, applets):
    """busybox-static's /bin/busybox, with a symlink per applet, into ``cpio``."""
    with open(os.path.join(busybox_deb_root, 'bin', 'busybox'), 'rb') as handle:
        cpio.file('bin/busybox', handle.read(), 0o755)
    for applet in applets:
        cpio.symlink('bin/' + applet, 'busybox')


def add_modules(cpio, modules_dir, order):
    """The kernel modules ``order`` lists under lib/modules/, and /modules.order for init."""
    made = set()
    for path in order:
        parts = os.path.dirname(path).split('/')
        for depth in range(1, len(parts) + 1):
            sub = 'lib/modules/' + '/'.join(parts[:depth])
            if sub not in made:
                cpio.directory(sub)
                made.add(sub)
        with open(os.path.join(modules_dir, path), 'rb') as handle:
            cpio.file('lib/modules/' + path, handle.read())
    cpio.file('modules.order', ''.join(p + '\n' for p in order).encode())


def write_initrd(path, cpio, level=6):
    """Write the archive gzip-compressed with a fixed mtime (same inputs, same bytes)."""
    with open(path, 'wb') as raw:
        with gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=level, mtime=0) as handle:
            handle.write(cpio.finish())


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def cached(out):
    """The manifest of the build cached in ``out``, marked cached; None when there is none."""
    path = os.path.join(out, 'manifest.json')
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return dict(json.load(handle), cached=True)


def publish(staging, out, manifest):
    """Write ``manifest`` into ``staging`` and make it ``out``, the cached build; the cache's other
    builds (older inputs) go, its work directories and downloaded packages (debs/) stay."""
    with open(os.path.join(staging, 'manifest.json'), 'w') as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(staging, out)
    cache, key = os.path.split(out)
    for name in os.listdir(cache):
        if name not in (key, 'debs') and not name.startswith('.work-'):
            shutil.rmtree(os.path.join(cache, name), ignore_errors=True)
