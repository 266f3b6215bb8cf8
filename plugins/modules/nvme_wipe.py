#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: nvme_wipe
short_description: Wipe a slot's NVMe drive by policy and verify it
version_added: 0.1.0
description:
  - Wipes O(target) with O(policy), then reads sampled blocks back to verify it, and returns what
    it did and how long it took.
  - O(target) is either the full PCI address of an NVMe controller (every namespace of it is
    wiped; the controller must be bound to the C(nvme) driver) or the path of a block device
    under O(dev_root) (C(/dev/nvme1n1), C(/dev/disk/by-id/...)). A regular file is accepted
    only under one of O(allowed_file_dirs), for labs, tests and slots whose disk is a file.
    Paths with C(..), white space or shell metacharacters are refused.
  - "V(nvme-format): C(nvme format <namespace> --ses=N --force --timeout=MS) for each setting of
    O(format_ses) in turn, moving to the next only when the controller answers Invalid Field (it
    does not support that secure-erase setting); a warning says when it fell back."
  - "V(blkdiscard): C(blkdiscard <device>) without C(-f), so blkdiscard opens the device
    exclusively and refuses if anything holds it. A device that does not really deallocate fails
    the verification."
  - "V(zero): zeros written by the module in O(chunk_size) chunks (device opened exclusively, with
    O_DIRECT), then fsync; RV(targets[].progress) records every 10%. In a regular file (a slot's boot
    disk file, which M(gpuaas.slice.slot_release) wipes this way) only over its data extents
    (C(SEEK_DATA)/C(SEEK_HOLE)): a hole holds no block and reads as zeros."
  - "Verification reads O(verify_samples) 4 KiB blocks (the first, the last, the others at random
    offsets spread over the device) bypassing the page cache. After V(zero) each must be all
    zeros. After V(nvme-format) or V(blkdiscard) the NVMe specification only promises that the old
    data is gone (a read may return zeros, ones or, after a cryptographic erase, cipher text), so
    each must be all zeros, all ones, or different from what it held before the wipe. A failed
    verification fails the module: quarantine the slot."
  - It refuses, changing nothing, a device the host uses (the boot disk, any device with a mounted
    filesystem or swap on it or one of its partitions, or held by device-mapper or md) and a
    device or file that a process holds open.
  - A wipe is an action; every run that wipes reports C(changed).
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.sysfs
  - gpuaas.slice.device
attributes:
  check_mode:
    support: full
    details: Resolves the target, runs every check and returns the commands it would run; writes
      nothing.
  diff_mode:
    support: partial
    details: Before/after, keyed by each device's path, give its size and whether it is wiped;
      the data itself is not shown.
  idempotent:
    support: none
    details: Each run wipes again.
options:
  target:
    description:
      - Full PCI address of an NVMe controller (V(0000:1c:00.0)), or the path of a block device
        under O(dev_root), or of a regular file under O(allowed_file_dirs).
    type: str
    required: true
  policy:
    description:
      - How to wipe; the slot's C(destructive_wipe_policy).
    type: str
    required: true
    choices: [nvme-format, blkdiscard, zero]
  allowed_file_dirs:
    description:
      - Directories under which a regular file may be wiped (its real path, symlinks resolved,
        must lie below one of them). Empty, only block devices are accepted.
    type: list
    elements: path
    default: []
  chunk_size:
    description:
      - Bytes written per write with V(zero); a multiple of 4096 from 4096 to 268435456 (256 MiB).
    type: int
    default: 4194304
  verify_samples:
    description:
      - How many 4 KiB blocks the verification reads; 1 to 4096.
    type: int
    default: 64
  format_ses:
    description:
      - Secure-erase settings tried in order with V(nvme-format) (1 user data erase,
        2 cryptographic erase, 0 none). The default falls back to a plain format, then relies
        on the verification; use V([1]) or V([2, 1]) to require a secure erase.
    type: list
    elements: int
    choices: [0, 1, 2]
    default: [1, 0]
  format_timeout:
    description:
      - Seconds C(nvme format) may take per namespace (a user data erase of a large drive takes
        minutes); 1 to 82800 (23 hours).
      - It is passed to C(nvme format --timeout), and the command runs under coreutils
        C(timeout) with a further minute of grace, so a drive that never answers fails the module
        instead of hanging it. C(blkdiscard) runs under the same limit.
    type: int
    default: 3600
  dev_root:
    description:
      - Where devtmpfs is mounted; a controller's namespaces are C(<dev_root>/<name>).
      - Only tests and labs change it.
    type: path
    default: /dev
seealso:
  - module: gpuaas.slice.vfio_bind
  - module: gpuaas.slice.slot_approval
notes:
  - Needs root, C(nvme) (nvme-cli) for V(nvme-format) and C(blkdiscard) (util-linux) for
    V(blkdiscard). It reads C(/proc/<pid>/fd) to find processes holding the device open.
  - Release the controller from vfio-pci first (M(gpuaas.slice.vfio_bind) with C(state=absent)).
'''

EXAMPLES = r'''
- name: Wipe slot 0's NVMe by its policy
  gpuaas.slice.nvme_wipe:
    target: "0000:1c:00.0"
    policy: nvme-format
  register: wipe

- name: Require a secure erase (no plain-format fallback)
  gpuaas.slice.nvme_wipe:
    target: /dev/disk/by-id/nvme-SAMSUNG_MZWLO7T6HBLA-00A07_S6EUNA0W100312
    policy: nvme-format
    format_ses: [2, 1]

- name: Zero a lab slot's disk image
  gpuaas.slice.nvme_wipe:
    target: /var/lib/gpuaas/lab/slot0.img
    policy: zero
    allowed_file_dirs: [/var/lib/gpuaas/lab]
'''

RETURN = r'''
policy:
  description: The policy used.
  returned: always
  type: str
  sample: nvme-format
controller:
  description: The NVMe controller's address when O(target) was one, else null.
  returned: always
  type: str
  sample: "0000:1c:00.0"
targets:
  description: What was wiped, one entry per namespace or file.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The device node or file.
      type: str
    device:
      description: The block device's name (null for a file given by path).
      type: str
    size_bytes:
      description: Its size.
      type: int
    commands:
      description: The argv of each command run for it (or that would run, in check mode).
      type: list
      elements: list
    secure_erase_setting:
      description: The C(--ses) that C(nvme format) accepted.
      type: int
    bytes_written:
      description: Bytes of zeros written (V(zero)); for a regular file, its data extents' bytes.
      type: int
    data_extents:
      description: How many data extents of a regular file were overwritten (V(zero), files only).
      type: int
    progress:
      description: Progress records (percent, bytes, elapsed_s) every 10% (V(zero)).
      type: list
      elements: dict
    verification:
      description: Sample counts (samples, zero, ones, changed) and V(passed).
      type: dict
    duration_s:
      description: Seconds the wipe and its verification took.
      type: float
  sample:
    - path: /dev/nvme1n1
      device: nvme1n1
      kind: block
      size_bytes: 3840755982336
      policy: nvme-format
      commands: [["/usr/sbin/nvme", "format", "/dev/nvme1n1", "--ses=1", "--force",
                  "--timeout=3600000"]]
      secure_erase_setting: 1
      verification: {samples: 64, zero: 64, ones: 0, changed: 0, passed: true, failed_offsets: []}
      duration_s: 41.7
commands:
  description: Every command run, in order.
  returned: always
  type: list
  elements: list
  sample: [["/usr/sbin/nvme", "format", "/dev/nvme1n1", "--ses=1", "--force", "--timeout=3600000"]]
duration_s:
  description: Seconds the whole run took (0 in check mode).
  returned: always
  type: float
  sample: 41.9
reasons:
  description: Why the module refused to wipe.
  returned: failure
  type: list
  elements: str
  sample: ["/dev/nvme0n1 is the host's: nvme0n1p2 is mounted on /"]
verification:
  description: The sample counts of a failed verification.
  returned: failure
  type: dict
  sample: {samples: 64, zero: 3, ones: 0, changed: 0, passed: false, failed_offsets: [0]}
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import engine_of
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._wipe import (
    DEFAULT_CHUNK,
    POLICIES,
    NvmeWipe,
)

ARGUMENT_SPEC = with_sysfs_args(dict(
    target=dict(type='str', required=True),
    policy=dict(type='str', required=True, choices=list(POLICIES)),
    allowed_file_dirs=dict(type='list', elements='path', default=[]),
    chunk_size=dict(type='int', default=DEFAULT_CHUNK),
    verify_samples=dict(type='int', default=64),
    format_ses=dict(type='list', elements='int', choices=[0, 1, 2], default=[1, 0]),
    format_timeout=dict(type='int', default=3600),
    dev_root=dict(type='path', default='/dev'),
))


def main():
    run_module(ARGUMENT_SPEC, engine_of(NvmeWipe))


if __name__ == '__main__':
    main()
