# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet lab's second node: a Debian 12 root filesystem built with mmdebstrap from Debian's
packages, booted in QEMU (TCG) with its own kernel and systemd, reached over SSH.

    python lab/fleet/node_image.py build PUBKEY_FILE   # root.img, vmlinuz, initrd.img (cached)

The node holds what a GPU host gets from host_prep's package list (libvirt, QEMU, OVMF, Open
vSwitch, dnsmasq, nftables, Debian's python3 with python3-libvirt and python3-apt), systemd,
sshd and sudo, and one login: the lab's operator user (LAB_USER) with the lab's public key and
a sudoers drop-in, as a node in a fleet has. No checkout, no virtualenv: everything a playbook
needs there comes over SSH. The kernel and initramfs are the image's own (Debian's
linux-image-amd64), extracted for QEMU's direct kernel boot. Cached under .build/fleet/node-*.
"""

import hashlib
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
# The Debian tree, made to boot fast under TCG, as the lab's cloud guest's.
from tests.guest import cloud_image  # noqa: E402

CACHE = os.path.join(REPO, '.build', 'fleet')
LAB_USER = 'gpuaas-lab'
IMAGE_SIZE = '6G'   # sparse: the slot's disk and image copies land here
# host_prep's gpuaas_packages (roles/host_prep/defaults/main.yml), so that its install step finds
# them present, and what a node reached over SSH needs besides.
PACKAGES = [
    'libvirt-daemon-system', 'qemu-system-x86', 'qemu-utils', 'ovmf', 'openvswitch-switch',
    'dnsmasq-base', 'nftables', 'genisoimage', 'pciutils', 'nvme-cli', 'python3', 'python3-libvirt',
    'python3-apt', 'systemd-sysv', 'udev', 'kmod', 'iproute2', 'openssh-server', 'sudo',
    'linux-image-amd64', 'ca-certificates',
]
# Run in the finished root (mmdebstrap's customize hook, "$1" is the root).
CUSTOMIZE = r'''
set -e
root="$1"
echo gpuaas-fleet-node > "$root/etc/hostname"
# sudo looks its host up on every call: without this line, a DNS query (and its wait) per task.
echo '127.0.1.1 gpuaas-fleet-node' >> "$root/etc/hosts"
echo '/dev/vda / ext4 rw,relatime 0 1' > "$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/10-uplink.network"
chroot "$root" systemctl enable systemd-networkd ssh
chroot "$root" systemctl set-default multi-user.target
chroot "$root" useradd --create-home --shell /bin/bash {user}
mkdir -p "$root/home/{user}/.ssh"
cp /dev/stdin "$root/home/{user}/.ssh/authorized_keys" <<KEY
{pubkey}
KEY
chroot "$root" chown -R {user}:{user} /home/{user}/.ssh
chmod 700 "$root/home/{user}/.ssh"; chmod 600 "$root/home/{user}/.ssh/authorized_keys"
echo '{user} ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/{user}"
chmod 440 "$root/etc/sudoers.d/{user}"
rm -rf "$root/var/lib/apt/lists/"*_Packages
'''
# Besides the cloud guest's (cloud_image.MASKED): what only costs the node boot time under TCG,
# a wait for a network that nothing at boot needs (sshd does not), guests started at boot.
MASKED = ['man-db.timer', 'systemd-networkd-wait-online.service', 'libvirt-guests.service']


def log(message):
    print('fleet-node: %s' % message, flush=True)


def build(pubkey_file):
    """Build (or reuse) the node's root.img, vmlinuz and initrd.img; return their directory."""
    with open(pubkey_file) as handle:
        pubkey = handle.read().strip()
    customize = CUSTOMIZE.replace('{user}', LAB_USER).replace('{pubkey}', pubkey)
    shared = [cloud_image.SUITE, cloud_image.INITRAMFS_CONF, cloud_image.SYSTEMD_CONF] + cloud_image.MIRRORS + \
        cloud_image.INITRAMFS_MODULES + cloud_image.MASKED
    key = hashlib.sha256(('|'.join([IMAGE_SIZE] + shared + PACKAGES + MASKED) + customize).encode()).hexdigest()[:16]
    out = os.path.join(CACHE, 'node-' + key)
    if os.path.exists(os.path.join(out, 'root.img')):
        return out
    if shutil.which('mmdebstrap') is None:
        raise SystemExit('mmdebstrap is missing (apt-get install mmdebstrap; make setup installs it)')
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(dir=CACHE, prefix='building-')
    start = time.time()
    try:
        rootfs = os.path.join(work, 'root')
        hook = os.path.join(work, 'customize.sh')
        with open(hook, 'w') as handle:
            handle.write(customize)
        log('mmdebstrap %s with %d packages (minutes, once)' % (cloud_image.SUITE, len(PACKAGES)))
        cloud_image.debian_tree(rootfs, PACKAGES, os.path.join(CACHE, 'debs'), hooks=['sh %s "$1"' % hook],
                                masked=MASKED)
        staging = os.path.join(work, 'out')
        os.makedirs(staging)
        boot = os.path.join(rootfs, 'boot')
        for prefix, name in (('vmlinuz-', 'vmlinuz'), ('initrd.img-', 'initrd.img')):
            found = sorted(f for f in os.listdir(boot) if f.startswith(prefix))
            if not found:
                raise SystemExit('the node image has no /boot/%s*' % prefix)
            shutil.copy(os.path.join(boot, found[-1]), os.path.join(staging, name))
        log('writing the ext4 root (%s, sparse)' % IMAGE_SIZE)
        subprocess.run(['mkfs.ext4', '-q', '-L', 'fleet-root', '-d', rootfs,
                        os.path.join(staging, 'root.img'), IMAGE_SIZE], check=True)
        os.rename(staging, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log('built in %.0f s: %s' % (time.time() - start, out))
    return out


if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[1] != 'build':
        raise SystemExit(__doc__)
    print(build(sys.argv[2]))
