#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_release
short_description: Release one slot in one step, from its lease to a clean, free slot
version_added: 0.2.0
description:
  - Does what the release role did in eleven tasks, in one module process and in the same order,
    each step by the engine of the module an operator runs for it alone; the step names below are
    the names the failures and the quarantine reasons use.
  - "C(Read the slot's lease and mark it releasing) (M(gpuaas.slice.slot_lease)); C(Stop and remove the
    slot's VM) (M(gpuaas.slice.slot_vm)); C(Remove the slot's network (DHCP entry, port, flows))
    (M(gpuaas.slice.slot_network)); C(Revoke the allocation's telemetry token)
    (M(gpuaas.slice.telemetry_token)); C(Remove the seed) (M(gpuaas.slice.slot_seed))."
  - "When the lease says the devices went to the VM: C(Give the devices back to their host drivers)
    (M(gpuaas.slice.vfio_bind), each device of the lease); C(Reset the GPU) (M(gpuaas.slice.pci_reset));
    C(Move the lease to wiping); C(Wipe the slot's NVMe by its policy) (M(gpuaas.slice.nvme_wipe), the
    lease's C(destructive_wipe_policy))."
  - "When the slot's boot disk is a file on host storage (the lease's C(boot_disk), and
    C({disk_dir}/{slot_id}.raw) if it is there): C(Move the lease to wiping) and C(Wipe the slot's boot
    disk file (zeros, verified)) (M(gpuaas.slice.nvme_wipe) on the file, policy V(zero): zeros over its
    data, fsync, sampled blocks read back). A boot disk on the slot's NVMe is wiped with the NVMe."
  - "Then C(Remove the slot's disk file and image marker) (M(gpuaas.slice.slot_image)) and
    C(Free the slot's lease)."
  - The devices, the GPU, the drive and the policy come from the lease, so a release works when the
    slot's hardware or approval changed meanwhile. A slot without a lease is cleaned all the same
    (an allocation that never got as far as its lease) and gets none.
  - A failure to give the devices back, reset the GPU, wipe the drive or wipe the boot disk file puts the slot in quarantine
    (its lease stays, phase V(quarantined), with the step and the reason), so it is never handed out
    dirty; any other failure leaves the lease in V(releasing) and a second release finishes the job.
    A release killed midway is finished by a second one.
  - A quarantined slot is only released with O(clear_quarantine=true), by an operator who has dealt
    with what failed; every step then runs again.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.lease
  - gpuaas.slice.libvirt
  - gpuaas.slice.sysfs
attributes:
  check_mode:
    support: full
    details: Every step's engine plans and reports what it would do; nothing is changed. A step that
      depends on an earlier one (the devices' return needs the VM gone) checks the host as it is now.
  diff_mode:
    support: full
    details: Each step's diff, keyed by the step's name.
  idempotent:
    support: full
    details: Once the lease is freed a second run finds nothing to do.
options:
  slot_id:
    description: The slot, C({node_id}-s{index}).
    type: str
    required: true
  allocation_id:
    description: The allocation being released; it must hold the slot's lease (or no lease exists).
    type: str
    required: true
  clear_quarantine:
    description: Release a quarantined slot (an operator who has dealt with what failed).
    type: bool
    default: false
  bridge:
    description: The slot network's Open vSwitch bridge.
    type: str
    default: br-gpuaas
  hosts_dir:
    description: dnsmasq's per-slot host entries.
    type: path
    default: /var/lib/gpuaas/network/dhcp-hosts.d
  ssh_dir:
    description: Where the slot's SSH rules are kept (M(gpuaas.slice.slot_network)'s O(gpuaas.slice.slot_network#module:ssh_dir)).
    type: path
    default: /etc/gpuaas/ssh.d
  dnsmasq_pid_file:
    description: The slot network's dnsmasq, told to drop the slot's entry.
    type: path
    default: /run/gpuaas-dnsmasq.pid
  dhcp_lease_file:
    description: dnsmasq's lease file; the guest's DHCP lease is released.
    type: path
    default: /var/lib/gpuaas/network/dnsmasq.leases
  console_log_dir:
    description: Where the VMs' serial consoles are logged.
    type: path
    default: /var/log/gpuaas/console
  token_dir:
    description: Where the telemetry tokens are kept.
    type: path
    default: /var/lib/gpuaas/telemetry/tokens
  seed_dir:
    description: Where the seed ISOs are written.
    type: path
    default: /var/lib/gpuaas/seeds
  disk_dir:
    description:
      - Where the slots' boot disk files are (a slot without an NVMe of its own, or a host without
        passthrough). A file there is overwritten with zeros over its data, fsynced and verified by
        sampling before it is removed; the wipe's failure quarantines the slot. Only files under
        this directory are wiped, whatever the lease says.
    type: path
    default: /var/lib/gpuaas/disks
  image_state_dir:
    description:
      - Where M(gpuaas.slice.slot_image) keeps the marker of an image written onto the slot's NVMe (the
        boot disk of a slot with passthrough and an NVMe); the marker is removed once the NVMe is wiped.
    type: path
    default: /var/lib/gpuaas/slot-images
  vfio_state_dir:
    description: Where M(gpuaas.slice.vfio_bind) recorded the devices' original drivers.
    type: path
    default: /var/lib/gpuaas/vfio
  dev_root:
    description: Where devtmpfs is mounted.
    type: path
    default: /dev
  wipe_allowed_file_dirs:
    description:
      - Directories whose regular files may be wiped as the slot's NVMe namespaces (labs and tests
        whose NVMe is a file). Empty on a real node, where only block devices are wiped.
    type: list
    elements: path
    default: []
seealso:
  - module: gpuaas.slice.slot_lease
  - module: gpuaas.slice.nvme_wipe
'''

EXAMPLES = r'''
- name: Release slot 0 of gpu-node-01
  gpuaas.slice.slot_release:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
  register: released

- name: An operator clears a slot quarantined after a failed reset, once the GPU is dealt with
  gpuaas.slice.slot_release:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    clear_quarantine: true
'''

RETURN = r'''
slot_id:
  description: The slot released.
  returned: always
  type: str
  sample: gpu-node-01-s0
allocation_id:
  description: The allocation released.
  returned: always
  type: str
  sample: alloc-7f3a
had_lease:
  description: Whether the slot had a lease when the release began.
  returned: always
  type: bool
  sample: true
wipe_policy:
  description: The lease's C(destructive_wipe_policy) (null without a lease).
  returned: always
  type: str
  sample: nvme-format
boot_disk:
  description:
    - The slot's boot disk and its wipe (null when there was none to wipe). C(kind) V(nvme) (the slot's NVMe,
      wiped by C(policy) with the NVMe) or V(file) (a file on host storage, zeros over its data, fsynced); C(path);
      C(wiped) (false in check mode); for a file, C(verification), the sampled blocks' counts and C(passed).
  returned: always
  type: dict
  sample: {kind: file, path: /var/lib/gpuaas/disks/gpu-node-01-s0.raw, policy: zero, wiped: true,
           verification: {samples: 64, zero: 64, passed: true}}
timings:
  description: Seconds, as the steps measured them (C(reset), the GPU's reset; 0 when none ran).
  returned: always
  type: dict
  sample: {reset: 0.412}
seconds:
  description: Seconds each step took, by the step's name (the whole module is one task).
  returned: always
  type: dict
  sample: {"Stop and remove the slot's VM": 0.212, "Free the slot's lease": 0.004}
actions:
  description: What the release changed (in check mode, would change), each prefixed by its step.
  returned: always
  type: list
  elements: str
  sample: ["Stop and remove the slot's VM: destroy", "Stop and remove the slot's VM: undefine", "Free the slot's lease: remove the lease"]
release_step:
  description: The step that failed.
  returned: failure
  type: str
  sample: Reset the GPU
quarantined:
  description: Whether the failure put the slot in quarantine.
  returned: failure
  type: bool
  sample: true
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import LEASE_ARGS
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import LIBVIRT_ARGS
from ansible_collections.gpuaas.slice.plugins.module_utils._network import DNSMASQ_PID_FILE
from ansible_collections.gpuaas.slice.plugins.module_utils._release import Release

ARGUMENT_SPEC = with_sysfs_args(dict(
    LIBVIRT_ARGS,
    slot_id=dict(type='str', required=True),
    allocation_id=dict(type='str', required=True),
    clear_quarantine=dict(type='bool', default=False),
    bridge=dict(type='str', default='br-gpuaas'),
    hosts_dir=dict(type='path', default='/var/lib/gpuaas/network/dhcp-hosts.d'),
    dnsmasq_pid_file=dict(type='path', default=DNSMASQ_PID_FILE),
    ssh_dir=dict(type='path', default='/etc/gpuaas/ssh.d'),
    dhcp_lease_file=dict(type='path', default='/var/lib/gpuaas/network/dnsmasq.leases'),
    console_log_dir=dict(type='path', default='/var/log/gpuaas/console'),
    token_dir=dict(type='path', default='/var/lib/gpuaas/telemetry/tokens'),
    seed_dir=dict(type='path', default='/var/lib/gpuaas/seeds'),
    disk_dir=dict(type='path', default='/var/lib/gpuaas/disks'),
    image_state_dir=dict(type='path', default='/var/lib/gpuaas/slot-images'),
    vfio_state_dir=dict(type='path', default='/var/lib/gpuaas/vfio'),
    dev_root=dict(type='path', default='/dev'),
    wipe_allowed_file_dirs=dict(type='list', elements='path', default=[]),
    **LEASE_ARGS
))


def main():
    run_module(ARGUMENT_SPEC, lambda module: Release(module).run())


if __name__ == '__main__':
    main()
