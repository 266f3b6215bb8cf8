#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_image
short_description: Put a checked base image on a slot's disk with qemu-img convert
version_added: 0.1.0
description:
  - Converts a qcow2 or raw base image onto the slot's disk. The disk is the slot's NVMe
    namespace (O(target_device), raw), written while the controller is still on the host's nvme
    driver, before it is bound to vfio-pci. Where the slot has no NVMe, it is a file
    C({image_dir}/{slot_id}.{format}).
  - The source must lie in one of O(source_dirs) (after symlinks are resolved); a path with a
    C(..) component is refused. Its O(checksum) is verified before anything is planned (in check
    mode too); the conversion then checks that the source is still the file whose checksum matched
    (same inode, size, modification and change time), else it fails and writes no marker.
  - The source is read with its declared O(source_format), never probed. A qcow2 with a backing
    file or an external data file is refused, since either could make the image read host files.
  - A file target is converted to a temporary file beside it, grown to O(size) with
    C(qemu-img resize), and moved into place. An image is never shrunk. A device target
    is written in place; the guest sees the whole device.
  - Idempotence comes from a marker written last. It records the source checksum and format,
    the target, its format and the requested size; a device's marker also records its device
    number and size. It lives next to a file target (C({target}.gpuaas.json)), or in O(state_dir)
    for a device. A target whose marker matches is left alone, without reading the source or the
    target again (the guest has written to it since). The marker is removed before a conversion
    starts, so an interrupted copy is redone.
  - C(qemu-img convert -p) progress is followed as the copy runs. It goes to O(progress_file) when
    that is set (JSON, rewritten atomically about once a second) and into RV(convert.progress).
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Verifies the checksum and reads the source's header (both read-only), and reports the
      actions; writes nothing.
  diff_mode:
    support: full
    details: The marker before and after.
  idempotent:
    support: full
options:
  slot_id:
    description: The slot, C({node_id}-s{slot_index}); it names the target file and the marker.
    type: str
    required: true
  state:
    description:
      - V(present) puts the image on the disk. V(absent) removes a file target and its marker.
        For a device it removes only the marker; wiping the device is the release step's job.
    type: str
    choices: [present, absent]
    default: present
  source:
    description: The base image. Required when O(state=present).
    type: path
  source_format:
    description: The base image's format.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  checksum:
    description:
      - The base image's checksum, C(sha256:<hex>) (or C(sha512:<hex>)). Required when
        O(state=present).
    type: str
  source_dirs:
    description: The directories base images may come from.
    type: list
    elements: path
    default: [/var/lib/gpuaas/images]
  target_device:
    description: The slot's NVMe namespace, a block device under C(/dev) (for example C(/dev/nvme3n1)).
    type: path
  image_dir:
    description: Where a slot without NVMe keeps its disk file (created mode 0711 when missing).
    type: path
  format:
    description: The target's format. A device target is always V(raw).
    type: str
    choices: [raw, qcow2]
    default: raw
  size:
    description:
      - The disk size the VM sees, in bytes or with a binary suffix (V(20G), V(512M)). A file
        target is grown to it. A device target must be at least this big. At most 65536 GiB.
      - Defaults to the image's own virtual size.
    type: str
  state_dir:
    description: Where the markers of device targets live, and where O(progress_file) must lie.
    type: path
    default: /var/lib/gpuaas/slot-images
  progress_file:
    description:
      - A JSON file that shows the copy's progress while it runs (C(percent), C(elapsed_s)).
      - It must lie inside O(state_dir), with symlinks resolved; any other path is refused before
        anything is written.
    type: path
  force:
    description: Convert again even when the marker says the target holds the image.
    type: bool
    default: false
requirements:
  - qemu-img (Debian package qemu-utils) on the host
seealso:
  - module: gpuaas.slice.slot_vm
notes:
  - A device target keeps whatever lies beyond the image until the slot is wiped. The release step
    wipes it by the slot's policy before the slot is free again.
'''

EXAMPLES = r'''
- name: Put the tenant's image on the slot's NVMe (before vfio binding)
  gpuaas.slice.slot_image:
    slot_id: gpu-node-01-s0
    source: /var/lib/gpuaas/images/ubuntu-24.04-cuda.qcow2
    checksum: "sha256:5f2b6c3e0d4a1b9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
    target_device: /dev/nvme3n1
    size: 200G

- name: A slot without NVMe gets a qcow2 file
  gpuaas.slice.slot_image:
    slot_id: ws-01-s0
    source: /var/lib/gpuaas/images/debian-12.qcow2
    checksum: "sha256:{{ image_sha256 }}"
    image_dir: /var/lib/gpuaas/disks
    format: qcow2
    size: 40G
    progress_file: /var/lib/gpuaas/slot-images/ws-01-s0-progress.json

- name: Remove the disk file after release
  gpuaas.slice.slot_image:
    slot_id: ws-01-s0
    image_dir: /var/lib/gpuaas/disks
    format: qcow2
    state: absent
'''

RETURN = r'''
target:
  description: The slot's disk (device or file).
  returned: always
  type: str
  sample: /var/lib/gpuaas/disks/ws-01-s0.qcow2
target_kind:
  description: V(device) or V(file).
  returned: always
  type: str
  sample: file
target_format:
  description: The target's format.
  returned: always
  type: str
  sample: qcow2
marker:
  description: The marker file.
  returned: always
  type: str
  sample: /var/lib/gpuaas/disks/ws-01-s0.qcow2.gpuaas.json
virtual_size:
  description: The disk size the VM sees, in bytes.
  returned: when O(state=present)
  type: int
  sample: 42949672960
source_checksum:
  description: The checksum of the source. Verified by this run when it converts (or would, in check
    mode); when the marker matches, the source is not read.
  returned: when O(state=present)
  type: str
  sample: "sha256:5f2b6c3e0d4a1b9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
convert:
  description: How the copy went.
  returned: when the image was converted
  type: dict
  contains:
    seconds:
      description: Time the conversion took.
      type: float
    progress:
      description: C([percent, seconds]) pairs, one at each 10% step qemu-img reported, and at 100%.
      type: list
      elements: list
  sample: {"seconds": 41.2, "progress": [[10.0, 4.1], [20.01, 8.3], [100.0, 41.2]]}
actions:
  description: What was done (or would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [convert, resize, write marker]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import engine_of, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._image import ARGUMENT_SPEC, RULES, Image


def main():
    run_module(ARGUMENT_SPEC, engine_of(Image), **RULES)


if __name__ == '__main__':
    main()
