# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot VM test guest: Debian's cloud kernel and a busybox initramfs, cached.

    python tests/guest/build_image.py [--force]     # prints the cache directory

The guest boots with libvirt's direct kernel boot (<os><kernel>/<initrd>), so there is no
bootloader and no root filesystem: /init (tests/guest/init) is a tiny NoCloud consumer.
Its inputs are two Debian packages (the cloud kernel and busybox-static, fetched with
``apt-get download`` at their current candidate version) and the files in this
directory; the output goes to .build/guest/<key>/ where key hashes all inputs, so a
changed package or script rebuilds and anything else reuses the cache. Nothing here is
ever committed.

The cloud kernel builds virtio, SCSI, the CD-ROM driver and isofs as modules: the ones
the guest needs are copied into the initramfs with everything they depend on (read
from each module's .modinfo, the .deb carries no modules.dep) and loaded in order.
The initramfs is written by this script (cpio newc, fixed mtimes, gzip with mtime 0),
so the same inputs give the same bytes.
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from tests.guest.debian import (  # noqa: E402
    Cpio, add_busybox, add_modules, cached, download, kernel_package, module_order, publish, sha256, write_initrd)
CACHE = os.path.join(REPO, '.build', 'guest')

KERNEL_META = 'linux-image-cloud-amd64'
BUSYBOX = 'busybox-static'
# The seed CD-ROM sits on virtio-scsi (the cloud kernel has no AHCI driver), the slot disk
# on virtio-blk, the NIC is virtio-net; button + evdev let busybox acpid see the ACPI
# power button so a graceful shutdown works.
MODULES = ['virtio_pci', 'virtio_net', 'virtio_blk', 'virtio_scsi', 'sr_mod', 'isofs',
           'button', 'evdev']
APPLETS = ['sh', 'mount', 'umount', 'insmod', 'mkdir', 'cat', 'cut', 'echo', 'sed', 'head',
           'tr', 'wc', 'sleep', 'hostname', 'ip', 'udhcpc', 'wget', 'acpid', 'poweroff',
           'sync', 'chmod', 'printf', 'ls', 'dmesg', 'ping', 'uname', 'seq', 'timeout']
GUEST_FILES = ['init', 'udhcpc-script']
POWER_BUTTON_SCRIPT = b'#!/bin/sh\necho "gpuaas-guest: power button, powering off" > /dev/console\nsync\npoweroff -f\n'


def log(message):
    print('guest-image: %s' % message, file=sys.stderr, flush=True)


def _inputs():
    debs = os.path.join(CACHE, 'debs')
    kernel_deb = download(kernel_package(KERNEL_META), debs)
    busybox_deb = download(BUSYBOX, debs)
    key = hashlib.sha256()
    for path in (kernel_deb, busybox_deb, os.path.abspath(__file__),
                 os.path.join(HERE, 'debian.py')):
        key.update(os.path.basename(path).encode() + b'\0')
        with open(path, 'rb') as handle:
            key.update(hashlib.sha256(handle.read()).digest() if path.endswith('.py')
                       else os.path.basename(path).encode())
    for name in GUEST_FILES:
        with open(os.path.join(HERE, name), 'rb') as handle:
            key.update(name.encode() + b'\0' + handle.read())
    return kernel_deb, busybox_deb, key.hexdigest()[:16]


def build(force=False):
    """Build (or reuse) the guest; return {'dir', 'kernel', 'initrd', 'cmdline', ...}."""
    kernel_deb, busybox_deb, key = _inputs()
    out = os.path.join(CACHE, key)
    manifest = None if force else cached(out)
    if manifest:
        return manifest
    start = time.time()
    log('building the test guest from %s and %s'
        % (os.path.basename(kernel_deb), os.path.basename(busybox_deb)))
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(dir=CACHE, prefix='.work-')
    try:
        subprocess.run(['dpkg-deb', '-x', kernel_deb, os.path.join(work, 'kernel')], check=True)
        subprocess.run(['dpkg-deb', '-x', busybox_deb, os.path.join(work, 'busybox')], check=True)
        modules_dir = glob.glob(os.path.join(work, 'kernel', 'lib', 'modules', '*'))[0]
        order = module_order(modules_dir, MODULES)

        cpio = Cpio()
        for name in ('bin', 'dev', 'proc', 'sys', 'run', 'tmp', 'etc', 'etc/acpi',
                     'etc/acpi/PWRF', 'lib', 'lib/modules'):
            cpio.directory(name)
        add_busybox(cpio, os.path.join(work, 'busybox'), APPLETS)
        add_modules(cpio, modules_dir, order)
        for name, dest in (('init', 'init'), ('udhcpc-script', 'bin/udhcpc-script')):
            with open(os.path.join(HERE, name), 'rb') as handle:
                cpio.file(dest, handle.read(), 0o755)
        cpio.file('etc/acpi/PWRF/00000080', POWER_BUTTON_SCRIPT, 0o755)

        staging = os.path.join(work, 'out')
        os.makedirs(staging)
        write_initrd(os.path.join(staging, 'initrd.img'), cpio)
        shutil.copy(glob.glob(os.path.join(work, 'kernel', 'boot', 'vmlinuz-*'))[0],
                    os.path.join(staging, 'vmlinuz'))
        manifest = {
            'key': key,
            'dir': out,
            'kernel': os.path.join(out, 'vmlinuz'),
            'initrd': os.path.join(out, 'initrd.img'),
            'cmdline': 'console=ttyS0 quiet loglevel=3',
            'kernel_package': os.path.basename(kernel_deb),
            'busybox_package': os.path.basename(busybox_deb),
            'modules': order,
            'initrd_sha256': sha256(os.path.join(staging, 'initrd.img')),
            'build_seconds': round(time.time() - start, 2),
        }
        publish(staging, out, manifest)
        # Packages that are no longer the candidates go.
        for name in os.listdir(os.path.join(CACHE, 'debs')):
            if name not in (os.path.basename(kernel_deb), os.path.basename(busybox_deb)):
                os.unlink(os.path.join(CACHE, 'debs', name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log('built in %.1f s: %s' % (time.time() - start, out))
    return dict(manifest, cached=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--force', action='store_true', help='rebuild even when cached')
    args = parser.parse_args()
    manifest = build(force=args.force)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
