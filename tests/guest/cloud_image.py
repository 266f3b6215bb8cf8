# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's tenant guest: a Debian 12 cloud image built from Debian packages, cached.

    python tests/guest/cloud_image.py [--force]     # prints the manifest

What a vendor cloud image is, made here: a qcow2 holding a GPT disk with an EFI system
partition (systemd-boot, the kernel and its initramfs) and an ext4 root with systemd,
cloud-init (NoCloud), openssh-server, qemu-guest-agent, python3 and the gpuaas guest agent
(roles/host_prep/files/gpuaas_guest_agent.py, started by a systemd unit once cloud-init has
written the telemetry settings file). It boots under UEFI (OVMF, secure boot off).

The root tree comes from ``mmdebstrap`` (Debian's mirror, the suite below); the disk is put
together without loop devices or mounts: ``mkfs.ext4 -d`` fills the root filesystem from the
tree, ``mkfs.vfat`` and mtools make the ESP, ``sfdisk`` writes the GPT into a plain file, the
partitions are copied in at their offsets and ``qemu-img convert`` makes the qcow2. The
output goes to .build/cloud-guest/<key>/ where key hashes the inputs (this file, the agent,
the package list and the candidate versions of the main packages on this machine's apt), so a
changed input rebuilds and anything else reuses the cache. UUIDs and timestamps are derived
from the key (SOURCE_DATE_EPOCH, fixed filesystem and partition UUIDs).
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
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from tests.guest.debian import cached, candidate, publish, sha256  # noqa: E402

CACHE = os.path.join(REPO, '.build', 'cloud-guest')
AGENT = os.path.join(REPO, 'roles', 'host_prep', 'files', 'gpuaas_guest_agent.py')
IMAGE_NAME = 'debian-12-gpuaas.qcow2'
SUITE = 'bookworm'
MIRRORS = ['deb http://deb.debian.org/debian bookworm main',
           'deb http://deb.debian.org/debian bookworm-updates main',
           'deb http://deb.debian.org/debian-security bookworm-security main']
# What the guest is: the cloud kernel, systemd with networkd (netplan renders cloud-init's
# network-config for it, as in Debian's own cloud images), cloud-init and what its modules
# call (growpart and sfdisk for the root partition, sudo for the login user), sshd, the
# QEMU guest agent, python3 for the gpuaas agent, and ping for the lab's isolation probes.
PACKAGES = ['linux-image-cloud-amd64', 'systemd-sysv', 'udev', 'dbus', 'systemd-boot-efi',
            'initramfs-tools', 'cloud-init', 'netplan.io', 'cloud-guest-utils', 'fdisk',
            'e2fsprogs', 'sudo', 'openssh-server', 'qemu-guest-agent', 'python3', 'iproute2',
            'iputils-ping', 'ca-certificates']
# Versions that go into the cache key (the others follow from them and the suite).
KEY_PACKAGES = ['linux-image-cloud-amd64', 'systemd', 'cloud-init', 'openssh-server',
                'qemu-guest-agent', 'python3', 'netplan.io']
DISK_MIB = 2048           # the image's virtual size, as Debian's genericcloud image
ESP_MIB = 128
SECTOR = 512
ESP_TYPE = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
ROOT_TYPE = '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709'   # "Linux root (x86-64)"
CMDLINE = 'ro console=tty0 console=ttyS0,115200n8'
# Where the agent and its unit live in the image: where the seed would put them (_seed.py).
AGENT_PATH = '/usr/local/lib/gpuaas/gpuaas_guest_agent.py'
AGENT_UNIT_NAME = 'gpuaas-guest-agent.service'
# cloud-init writes the telemetry settings file (write_files, its init stage) before the agent
# starts; the agent reads it once, so it starts after cloud-init's init stage.
AGENT_UNIT = """[Unit]
Description=gpuaas guest agent (health, GPU metrics, slot acceptance)
Wants=network-online.target
After=network-online.target cloud-init.service
ConditionPathExists=/etc/gpuaas/telemetry.env

[Service]
ExecStart=/usr/bin/python3 %s
Restart=always
RestartSec=10

[Install]
WantedBy=cloud-init.target multi-user.target
""" % AGENT_PATH
# cloud-init: the NoCloud seed only (no probing of other clouds), and nothing that needs the
# network beyond the node (no package updates, no locale generation: C.UTF-8 is built in).
CLOUD_CFG = """# gpuaas lab image (tests/guest/cloud_image.py)
datasource_list: [NoCloud]
locale: C.UTF-8
package_update: false
package_upgrade: false
# One host key type: an RSA key takes a minute to generate under TCG.
ssh_genkeytypes: [ed25519]
"""
# The initramfs holds what mounts the root on a slot VM (virtio disk, ext4), not every driver:
# under TCG each module udev loads at boot costs seconds.
INITRAMFS_CONF = 'MODULES=list\n'
INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'ext4']
# Under TCG on a busy machine a unit can take minutes to start; systemd's default 90 s would kill
# and restart journald and udevd over and over (seen in the lab: a guest never reached its DHCP
# lease in 15 minutes). A slow start is waited for instead.
SYSTEMD_CONF = '[Manager]\nDefaultTimeoutStartSec=15min\n'
# Timers and units of a long-lived machine that only cost a short-lived lab guest boot time.
MASKED = ['apt-daily.timer', 'apt-daily-upgrade.timer', 'e2scrub_all.timer', 'fstrim.timer',
          'e2scrub_reap.service']


def log(message):
    print('cloud-image: %s' % message, file=sys.stderr, flush=True)


def cache_key(versions, sources):
    """The cache key: the package versions ({name: version}) and the sources ({name: bytes})."""
    digest = hashlib.sha256()
    for name in sorted(versions):
        digest.update(('%s=%s\n' % (name, versions[name])).encode())
    digest.update(('\n'.join(PACKAGES) + '\n' + '\n'.join(MIRRORS)).encode())
    for name in sorted(sources):
        digest.update(name.encode() + b'\0' + hashlib.sha256(sources[name]).digest())
    return digest.hexdigest()[:16]


def derived_uuid(key, what):
    """A UUID fixed by the cache key (same inputs, same disk identity)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, 'gpuaas-cloud-guest:%s:%s' % (key, what)))


def partition_table(key, disk_mib=DISK_MIB, esp_mib=ESP_MIB):
    """The sfdisk script of the disk: (script, [(offset, size) of the ESP and the root])."""
    first = (1 << 20) // SECTOR
    esp_sectors = (esp_mib << 20) // SECTOR
    root_start = first + esp_sectors
    # The backup GPT takes the last 33 sectors; the root ends on a MiB boundary before them.
    root_sectors = ((disk_mib << 20) // SECTOR - 34 - root_start) // 2048 * 2048
    script = '\n'.join([
        'label: gpt',
        'label-id: %s' % derived_uuid(key, 'disk'),
        'unit: sectors',
        'start=%d, size=%d, type=%s, uuid=%s, name="EFI System"' % (
            first, esp_sectors, ESP_TYPE, derived_uuid(key, 'esp-part')),
        'start=%d, size=%d, type=%s, uuid=%s, name="root"' % (
            root_start, root_sectors, ROOT_TYPE, derived_uuid(key, 'root-part')),
    ]) + '\n'
    return script, [(first * SECTOR, esp_sectors * SECTOR), (root_start * SECTOR, root_sectors * SECTOR)]


def loader_files(key, kernel, initrd, cmdline=CMDLINE):
    """systemd-boot's configuration on the ESP: {path on the ESP: text}; no menu, no wait."""
    return {
        'loader/loader.conf': 'default debian.conf\ntimeout 0\neditor no\n',
        'loader/entries/debian.conf': 'title Debian GNU/Linux 12 (gpuaas)\nlinux /%s\ninitrd /%s\noptions root=PARTUUID=%s %s\n'
        % (kernel, initrd, derived_uuid(key, 'root-part'), cmdline),
    }


def fstab(key):
    return 'PARTUUID=%s / ext4 rw,discard,errors=remount-ro 0 1\n' % derived_uuid(key, 'root-part')


def _inputs():
    versions = dict((name, candidate(name)) for name in KEY_PACKAGES)
    sources = {}
    for path in (os.path.abspath(__file__), AGENT):
        with open(path, 'rb') as handle:
            sources[os.path.basename(path)] = handle.read()
    return versions, cache_key(versions, sources)


def _run(argv, **kwargs):
    subprocess.run(argv, check=True, **kwargs)


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)
    os.chmod(path, mode)


def debian_tree(root, packages, debs, hooks=(), masked=(), env=None):
    """mmdebstrap a Debian tree of ``packages`` into ``root``, made to boot fast under TCG; shared
    with the fleet lab's node (lab/fleet/node_image.py). No recommends, no documentation; the
    .debs kept in ``debs`` between builds; an initramfs with what mounts a virtio root only; a
    slow start waited for; MASKED and ``masked`` units masked. ``hooks``: more customize hooks
    (mmdebstrap's, "$1" the root), run after the initramfs is written."""
    os.makedirs(debs, exist_ok=True)
    argv = ['mmdebstrap', '--variant=apt', '--mode=root', '--format=directory',
            '--aptopt=APT::Install-Recommends "false"',
            '--dpkgopt=path-exclude=/usr/share/{doc,man,info,locale}/*',
            '--dpkgopt=path-include=/usr/share/locale/locale.alias',
            '--include=' + ','.join(packages),
            # The downloaded .debs are kept between builds (mmdebstrap's documented recipe).
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            '--setup-hook=sync-in %s /var/cache/apt/archives/' % debs,
            '--customize-hook=sync-out /var/cache/apt/archives %s' % debs,
            '--customize-hook=mkdir -p "$1"/etc/initramfs-tools/conf.d',
            '--customize-hook=printf "%s" > "$1"/etc/initramfs-tools/conf.d/gpuaas' % INITRAMFS_CONF,
            '--customize-hook=printf "%s" > "$1"/usr/share/initramfs-tools/modules.d/gpuaas' % (
                ''.join(name + '\\n' for name in INITRAMFS_MODULES)),
            '--customize-hook=chroot "$1" update-initramfs -u -k all'] + [
                '--customize-hook=' + hook for hook in hooks] + [SUITE, root] + MIRRORS
    _run(argv, env=dict(os.environ, LANG='C.UTF-8', **(env or {})), stdout=subprocess.DEVNULL)
    _write(os.path.join(root, 'etc/systemd/system.conf.d/50-gpuaas-slow-start.conf'), SYSTEMD_CONF)
    _run(['chroot', root, 'systemctl', 'mask'] + MASKED + list(masked), stdout=subprocess.DEVNULL,
         stderr=subprocess.DEVNULL)
    shutil.rmtree(os.path.join(root, 'var/cache/apt/archives'), ignore_errors=True)
    os.makedirs(os.path.join(root, 'var/cache/apt/archives/partial'))


def root_tree(root, key, debs, epoch):
    """mmdebstrap the tree into ``root`` and make it a cloud image's (the customisations above)."""
    debian_tree(root, PACKAGES, debs, env={'SOURCE_DATE_EPOCH': str(epoch)})
    os.makedirs(os.path.dirname(root + AGENT_PATH), exist_ok=True)
    shutil.copy(AGENT, root + AGENT_PATH)
    _write(os.path.join(root, 'etc/systemd/system', AGENT_UNIT_NAME), AGENT_UNIT)
    _write(os.path.join(root, 'etc/cloud/cloud.cfg.d/90-gpuaas.cfg'), CLOUD_CFG)
    _write(os.path.join(root, 'etc/fstab'), fstab(key))
    _write(os.path.join(root, 'etc/hostname'), 'localhost\n')
    # Every instance makes its own identity: machine id at first boot, SSH host keys by cloud-init.
    _write(os.path.join(root, 'etc/machine-id'), '')
    for path in glob.glob(os.path.join(root, 'etc/ssh/ssh_host_*')):
        os.unlink(path)
    _run(['chroot', root, 'systemctl', 'enable', AGENT_UNIT_NAME, 'systemd-networkd.service'],
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _copy_into(disk, source, offset):
    """Copy ``source`` into ``disk`` at ``offset``, leaving zero blocks as holes."""
    block = 1 << 20
    with open(source, 'rb') as src, open(disk, 'r+b') as dst:
        position = offset
        for chunk in iter(lambda: src.read(block), b''):
            if chunk.count(0) != len(chunk):
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)


def assemble(work, root, key, epoch):
    """The raw GPT disk from the tree: ESP (systemd-boot, kernel, initramfs) and the ext4 root."""
    script, ((esp_offset, esp_size), (root_offset, root_size)) = partition_table(key)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch), SOURCE_DATE_EPOCH=str(epoch))
    kernel = os.path.basename(sorted(glob.glob(os.path.join(root, 'boot', 'vmlinuz-*')))[-1])
    initrd = 'initrd.img-' + kernel[len('vmlinuz-'):]
    esp = os.path.join(work, 'esp.img')
    _run(['mkfs.vfat', '-F', '32', '-n', 'ESP', '-i', derived_uuid(key, 'esp-fs')[:8], '--invariant',
          '-C', esp, str(esp_size // 1024)], stdout=subprocess.DEVNULL, env=env)
    for directory in ('EFI', 'EFI/BOOT', 'loader', 'loader/entries'):
        _run(['mmd', '-i', esp, '::/' + directory], env=env)
    staged = os.path.join(work, 'esp')
    for path, text in loader_files(key, kernel, initrd).items():
        _write(os.path.join(staged, path), text)
    efi = os.path.join(root, 'usr/lib/systemd/boot/efi/systemd-bootx64.efi')
    copies = [(efi, 'EFI/BOOT/BOOTX64.EFI'), (os.path.join(root, 'boot', kernel), kernel),
              (os.path.join(root, 'boot', initrd), initrd)] + [
        (os.path.join(staged, path), path) for path in loader_files(key, kernel, initrd)]
    for source, dest in copies:
        os.utime(source, (epoch, epoch))
        _run(['mcopy', '-m', '-i', esp, source, '::/' + dest], env=env)
    rootfs = os.path.join(work, 'root.img')
    _run(['mkfs.ext4', '-q', '-L', 'root', '-U', derived_uuid(key, 'root-fs'),
          '-E', 'hash_seed=%s,root_owner=0:0' % derived_uuid(key, 'root-hash'),
          '-d', root, rootfs, '%dk' % (root_size // 1024)], env=env)
    disk = os.path.join(work, 'disk.raw')
    with open(disk, 'wb') as handle:
        handle.truncate(DISK_MIB << 20)
    _run(['sfdisk', '--quiet', '--no-reread', '--no-tell-kernel', disk], input=script.encode())
    _copy_into(disk, esp, esp_offset)
    _copy_into(disk, rootfs, root_offset)
    return disk, kernel


def build(force=False):
    """Build (or reuse) the image; return its manifest {'image', 'sha256', 'key', ...}."""
    for tool in ('mmdebstrap', 'mkfs.ext4', 'mkfs.vfat', 'mcopy', 'sfdisk', 'qemu-img'):
        if shutil.which(tool) is None:
            raise SystemExit('%s is missing: hack/setup.sh installs it (Debian packages mmdebstrap, '
                             'e2fsprogs, dosfstools, mtools, fdisk, qemu-utils)' % tool)
    versions, key = _inputs()
    out = os.path.join(CACHE, key)
    manifest = None if force else cached(out)
    if manifest:
        return manifest
    start = time.time()
    # The build's clock: a fixed time derived from the key (same inputs, same timestamps).
    epoch = 1700000000 + int(key[:6], 16)
    log('building the Debian 12 cloud guest (%s) with mmdebstrap' % ', '.join(
        '%s %s' % item for item in sorted(versions.items())))
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(dir=CACHE, prefix='.work-')
    try:
        root = os.path.join(work, 'root')
        root_tree(root, key, os.path.join(CACHE, 'debs'), epoch)
        tree_seconds = time.time() - start
        disk, kernel = assemble(work, root, key, epoch)
        staging = os.path.join(work, 'out')
        os.makedirs(staging)
        image = os.path.join(staging, IMAGE_NAME)
        _run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', disk, image])
        manifest = {'key': key, 'dir': out, 'image': os.path.join(out, IMAGE_NAME),
                    'sha256': sha256(image), 'size_bytes': os.path.getsize(image),
                    'virtual_mib': DISK_MIB, 'kernel': kernel, 'packages': versions,
                    'tree_seconds': round(tree_seconds, 1),
                    'build_seconds': round(time.time() - start, 1)}
        publish(staging, out, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log('built in %.0f s (root tree %.0f s): %s' % (manifest['build_seconds'], tree_seconds, manifest['image']))
    return dict(manifest, cached=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--force', action='store_true', help='rebuild even when cached')
    args = parser.parse_args()
    print(json.dumps(build(force=args.force), indent=2, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
