# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot disk file of a slot without passthrough (the lab node has no IOMMU), on the lab node:
release overwrites it with zeros, verifies it and only then removes it; a wipe that fails
quarantines the slot and leaves the file for the operator.

A hard link to the disk file, made while the slot runs, keeps the file's blocks after release
removed its name: what it reads afterwards is what release left of the tenant's disk.
"""

from __future__ import annotations

import os
import subprocess

SLOT = 'sample-hgx-s0'
DISK = '/var/lib/gpuaas/disks/%s.raw' % SLOT
# On the same file system as the disk directory (a hard link cannot cross one), outside it.
BLOCKS = '/var/lib/gpuaas/test-boot-disk-blocks'
WIPE = "Wipe the slot's boot disk file (zeros, verified)"


def nonzero_bytes(path):
    count = 0
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            count += len(block) - block.count(0)
    return count


def test_release_wipes_the_boot_disk_file_and_verifies_it_before_removing_it(node, tmp_path):
    rc, out = node.allocate(SLOT, 'disk-wipe', str(tmp_path / 'allocate.log'))
    assert rc == 0, out[-4000:]
    assert node.lease(SLOT)['data']['boot_disk'] == {'kind': 'file', 'path': DISK, 'nvme_address': None}
    if os.path.exists(BLOCKS):
        os.unlink(BLOCKS)
    os.link(DISK, BLOCKS)
    try:
        assert nonzero_bytes(BLOCKS) > 0                  # the image, and what the guest wrote
        node.env['ANSIBLE_SHOW_CUSTOM_STATS'] = '1'
        rc, out = node.release(SLOT, 'disk-wipe', str(tmp_path / 'release.log'))
        assert rc == 0, out[-4000:]
        assert not os.path.exists(DISK) and node.lease(SLOT) is None
        assert nonzero_bytes(BLOCKS) == 0
        stats = out[out.index('CUSTOM STATS'):]
        assert '"kind": "file"' in stats and '"policy": "zero"' in stats and '"passed": true' in stats, stats
    finally:
        node.env.pop('ANSIBLE_SHOW_CUSTOM_STATS', None)
        os.unlink(BLOCKS)


def test_a_boot_disk_file_that_cannot_be_wiped_quarantines_the_slot(node, tmp_path):
    rc, out = node.allocate(SLOT, 'disk-stuck', str(tmp_path / 'allocate.log'))
    assert rc == 0, out[-4000:]
    subprocess.run(['chattr', '+i', DISK], check=True)    # immutable: no write, no unlink, even for root
    try:
        rc, out = node.release(SLOT, 'disk-stuck', str(tmp_path / 'release.log'))
        assert rc != 0 and "release failed at '%s'" % WIPE in out, out[-4000:]
        lease = node.lease(SLOT)
        assert lease['phase'] == 'quarantined' and "release of disk-stuck failed at '%s'" % WIPE in lease['reason']
        assert 'Operation not permitted' in lease['reason'] and nonzero_bytes(DISK) > 0
        # A new allocation cannot have the slot; a plain release does not clear it.
        rc, out = node.allocate(SLOT, 'disk-next', str(tmp_path / 'next.log'))
        assert rc != 0 and 'held by allocation disk-stuck (phase quarantined' in out, out[-4000:]
        rc, out = node.release(SLOT, 'disk-stuck', str(tmp_path / 'again.log'))
        assert rc != 0 and 'is quarantined' in out and node.lease(SLOT)['phase'] == 'quarantined', out[-4000:]
    finally:
        subprocess.run(['chattr', '-i', DISK], check=False)
    rc, out = node.release(SLOT, 'disk-stuck', str(tmp_path / 'cleared.log'), gpuaas_clear_quarantine=True)
    assert rc == 0, out[-4000:]
    assert not os.path.exists(DISK) and node.lease(SLOT) is None
