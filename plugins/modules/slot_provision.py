#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_provision
short_description: Wire, image, seed and start a leased slot in one step
version_added: 0.2.0
description:
  - The host side of an allocation once its slot is checked (M(gpuaas.slice.slot_check_info)), leased
    (M(gpuaas.slice.slot_lease)) and has its token (M(gpuaas.slice.telemetry_token)), in one module
    process. Each step is done by the engine of the module an operator runs for it alone, with that
    module's own options, checked by that module's argument spec.
  - "The steps, in order, by the names failures use: C(Wire the slot's network (DHCP entry, port, flows))
    (M(gpuaas.slice.slot_network), O(network)); C(Record the slot's boot disk in the lease) (the lease's
    C(data.boot_disk), C(kind) V(nvme) or V(file) and C(path)); C(Put the image on the slot's boot disk)
    (M(gpuaas.slice.slot_image), O(image)); C(Write the cloud-init seed) (M(gpuaas.slice.slot_seed),
    O(seed)); C(Hand the slot's devices to vfio-pci (each with its whole IOMMU group))
    (M(gpuaas.slice.vfio_bind), each of O(devices)); C(Define and start the slot's VM and wait for its
    address) (M(gpuaas.slice.slot_vm), O(vm), with the disk and seed of the steps before); C(Record the
    running allocation in the lease) (the lease's phase V(running), with the domain, the address and
    RV(access))."
  - "The boot disk: with passthrough and an NVMe of its own (O(vm)'s C(nvme_address) among O(devices)), the
    slot's NVMe namespace: the controller's one namespace (C(/sys/bus/pci/devices/ADDR/nvme/nvmeX/nvmeXnY)),
    written with O(image)'s C(target_device) while the host's nvme driver has it, before vfio-pci takes it;
    the VM has no disk then and boots from the NVMe hostdev. Before any step changes anything, it is refused
    unless the controller is on the nvme driver with exactly one namespace, writable, not used by the host
    (mounted, swap, a holder on it), open by no process, and C(O(dev_root)/nvmeXnY) is that block device. A
    second run that finds the controller on vfio-pci goes on only if the image marker in O(image)'s
    C(state_dir) says the whole image was written. Otherwise the boot disk is a file under O(image)'s
    C(image_dir). M(gpuaas.slice.slot_release) wipes either before it frees the slot."
  - Every step converges, so running the module again for the same allocation after a crash finishes
    the allocation. A failure names the step and leaves the lease in V(provisioning), for a second run
    or a release.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.lease
  - gpuaas.slice.sysfs
attributes:
  check_mode:
    support: full
    details: Every step's engine plans and reports what it would do; nothing is changed. A step that
      needs what an earlier one makes (the VM needs the disk, the seed and the devices on vfio-pci)
      reports the start as it would be checked now, with warnings.
  diff_mode:
    support: full
    details: Each step's diff, keyed by the step's name.
  idempotent:
    support: full
options:
  slot_id:
    description: The slot, C({node_id}-s{index}).
    type: str
    required: true
  allocation_id:
    description: The allocation that holds the slot's lease.
    type: str
    required: true
  telemetry_token:
    description: The allocation's telemetry token (M(gpuaas.slice.telemetry_token)), written into the seed.
    type: str
    required: true
  network:
    description: Options of M(gpuaas.slice.slot_network) (O(slot_id) and C(state) are this module's).
    type: dict
    default: {}
  image:
    description: Options of M(gpuaas.slice.slot_image) (O(slot_id) and C(state) are this module's).
    type: dict
    required: true
  seed:
    description:
      - Options of M(gpuaas.slice.slot_seed) (O(slot_id), C(state), O(allocation_id) and O(telemetry_token)
        are this module's).
    type: dict
    required: true
  devices:
    description: PCI addresses to give to vfio-pci with their IOMMU groups; empty when the VM gets no devices.
    type: list
    elements: str
    default: []
  vfio_state_dir:
    description: Where M(gpuaas.slice.vfio_bind) records the devices' original drivers.
    type: path
    default: /var/lib/gpuaas/vfio
  dev_root:
    description: Where devtmpfs is mounted (the vfio group nodes appear there).
    type: path
    default: /dev
  vm:
    description:
      - Options of M(gpuaas.slice.slot_vm) (O(slot_id) and C(state=running) are this module's); C(disk) and
        C(seed) default to the image's target and the seed's path.
    type: dict
    required: true
  ssh_host:
    description:
      - The node's public host name or IPv4 address, where the slot's SSH port is (the network step opens it,
        M(gpuaas.slice.slot_network)'s RV(gpuaas.slice.slot_network#module:ssh_port)).
      - Goes into RV(access) and the lease.
    type: str
    required: true
seealso:
  - module: gpuaas.slice.slot_release
'''

EXAMPLES = r'''
- name: Provision slot 0 for an allocation (after slot_check_info, slot_lease and telemetry_token)
  gpuaas.slice.slot_provision:
    slot_id: gpu-node-01-s0
    allocation_id: alloc-7f3a
    telemetry_token: "{{ token.token }}"
    ssh_host: gpu-node-01.example.com
    network: {hostname: gpu-node-01-s0}
    image:
      source: /var/lib/gpuaas/images/ubuntu-24.04.qcow2
      checksum: sha256:5dc038ba6a1010299ab17292943c2ac5c38050bd08454c8f240d2fb6a8de1507
      image_dir: /var/lib/gpuaas/disks
      size: 40G
    seed:
      hostname: gpu-node-01-s0
      ssh_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHf3 tenant@example"]
    devices: ["0000:1b:00.0", "0000:1c:00.0"]
    vm:
      memory_mib: 65536
      vcpus: 16
      cpulist: 8-15,72-79
      numa_node: 0
      gpu_address: "0000:1b:00.0"
      nvme_address: "0000:1c:00.0"
  register: provisioned
'''

RETURN = r'''
network:
  description: What M(gpuaas.slice.slot_network) returns (its C(changes) too).
  returned: success
  type: dict
image:
  description: What M(gpuaas.slice.slot_image) returns.
  returned: success
  type: dict
  sample: {target: /var/lib/gpuaas/disks/gpu-node-01-s0.raw, convert: {seconds: 4.2}}
seed:
  description: What M(gpuaas.slice.slot_seed) returns.
  returned: success
  type: dict
devices:
  description: The drivers of each device's group afterwards (M(gpuaas.slice.vfio_bind)'s C(bindings)).
  returned: success
  type: list
  elements: dict
vm:
  description: What M(gpuaas.slice.slot_vm) returns (C(name), C(mac), C(ip), C(timings)...).
  returned: success
  type: dict
  sample: {name: gpuaas-gpu-node-01-s0, mac: "52:54:f6:df:70:11", ip: 10.100.0.10}
boot_disk:
  description: The slot's boot disk, as the lease records it (C(kind) V(nvme) or V(file), C(path), C(nvme_address)).
  returned: success
  type: dict
  sample: {kind: nvme, path: /dev/nvme3n1, nvme_address: "0000:1c:00.0"}
access:
  description:
    - What the tenant logs in with from outside the node, also kept in the lease; O(ssh_host), the slot's public
      SSH port (C(ssh_port_base + slot index), forwarded to its port 22) and the login user (the seed's
      C(login_user)).
  returned: success
  type: dict
  sample: {ssh_host: gpu-node-01.example.com, ssh_port: 22000, user: gpuaas}
lease:
  description: The slot's lease afterwards.
  returned: success
  type: dict
seconds:
  description: Seconds each step took, by the step's name (the whole module is one task).
  returned: success
  type: dict
  sample: {"Put the image on the slot's boot disk": 4.3, "Define and start the slot's VM and wait for its address": 9.1}
actions:
  description: What the module changed (in check mode, would change), each prefixed by its step.
  returned: always
  type: list
  elements: str
  sample: ["Define and start the slot's VM and wait for its address: define", "Record the running allocation in the lease: write the lease"]
provision_step:
  description: The step that failed.
  returned: failure
  type: str
  sample: Define and start the slot's VM and wait for its address
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._lease import LEASE_ARGS
from ansible_collections.gpuaas.slice.plugins.module_utils._provision import Provision

ARGUMENT_SPEC = with_sysfs_args(dict(
    LEASE_ARGS,
    slot_id=dict(type='str', required=True),
    allocation_id=dict(type='str', required=True),
    telemetry_token=dict(type='str', required=True, no_log=True),
    network=dict(type='dict', default={}),
    image=dict(type='dict', required=True),
    seed=dict(type='dict', required=True),
    devices=dict(type='list', elements='str', default=[]),
    vfio_state_dir=dict(type='path', default='/var/lib/gpuaas/vfio'),
    dev_root=dict(type='path', default='/dev'),
    vm=dict(type='dict', required=True),
    ssh_host=dict(type='str', required=True),
))


def main():
    run_module(ARGUMENT_SPEC, lambda module: Provision(module).run())


if __name__ == '__main__':
    main()
