#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_discovery_info
short_description: Propose the GPU slots a host can offer
version_added: 0.1.0
description:
  - Reads sysfs and proposes one slot per GPU function, made of the GPU, the other functions of its
    IOMMU group that must move with it, the NVMe controller that shares its PCIe switch or root
    complex, a VF of its own of the nearest SR-IOV fabric PF, its NUMA node and CPUs, and its
    deterministic MAC and IP.
  - GPUs are display-class functions (0x0300xx VGA, 0x0302xx 3D, 0x0380xx other) from one of
    O(gpu_vendors); the host's console (C(boot_vga) = 1) is never offered.
  - Pairing follows the PCIe tree. Every GPU gets the nearest free NVMe controller, where "nearest"
    is the deepest shared upstream bridge; a controller on another PCI root complex is never
    paired. An NVMe controller holding a mounted filesystem, swap or a device-mapper stack is host
    storage and is never offered.
  - "Fabric: every GPU gets a VF of its own of an InfiniBand (0x0207) or Ethernet (0x0200) PF with
    SR-IOV. A PF on the GPU's own PCIe switch comes first (the deepest shared bridge), then one on
    its root complex, then one on its NUMA node; a PF on another NUMA node is never paired. While
    PFs are left, each GPU gets one of its own (nearest first, ties by address), so a host with one
    PF per GPU gives each slot VF 0 of its own PF. Where fewer PFs than GPUs remain, a GPU shares
    its nearest PF (the least taken among equally near ones): the k-th slot by RV(slots[].slot_index)
    paired with a PF gets VF k (RV(slots[].fabric_vf_index)). A slot that would need more VFs than
    the PF's C(sriov_totalvfs) offers is ineligible, with the reason."
  - The slot's fabric VF address is computed from the PF's C(sriov_offset) and C(sriov_stride)
    (VF k is the PF's routing ID plus C(sriov_offset + sriov_stride * k)), so it is known before
    the VFs exist; a PF that reports neither makes its slots ineligible. The
    C(gpuaas.slice.host_prep) role creates on each PF the VFs its approved slots need.
  - "Each slot owns a slice of its NUMA node: the host keeps the node's first O(host_reserved_cores)
    cores (RV(host_cpulist), where the kernel's housekeeping and the VMs' emulator threads run); the
    node's other cores are dealt out in order among all the slots discovery proposes on the node
    (eligible or not, so a slice never moves when another slot becomes eligible), whole cores
    (sibling threads from C(devices/system/cpu/cpuN/topology/thread_siblings_list) stay together;
    without that file each CPU is a core), contiguous, never overlapping, equal to at most one
    core (the first slots get the extra ones). A node that cannot give each of its slots a core
    makes them ineligible, with the numbers."
  - "Each slot's memory share is its node's C(MemTotal) (from C(devices/system/node/nodeN/meminfo))
    minus O(host_reserved_memory_mib), divided among the node's slots and rounded down to whole GiB.
    A node whose meminfo cannot be read, or that leaves less than 1 GiB a slot, makes its slots
    ineligible (fail closed)."
  - "Slots are numbered for good: with the host's approved slot map (O(approved_slots)) every
    approved GPU keeps its slot's index, and with it its id, MAC, IP, NVMe drive and fabric PF (those
    its entry's C(fingerprint) records), whatever else appeared or vanished; every other GPU, in
    address order, gets the lowest index no approved slot holds (without a map: address order)."
  - "An approved slot whose GPU is not on the PCI bus (it fell off the bus, Xid 79, or was removed)
    is listed in RV(absent) with the reason, not in RV(slots). It still counts in its NUMA node's
    shares (its node is the node of the nearest bridge above the GPU that is still there, from the
    entry's fingerprint C(pcie_path), else the node holding the entry's C(cpulist)), so no other
    slot's share moves; its NVMe drive and fabric PF go to no other slot."
  - "Each slot's RV(slots[].bar_mib) is the sum of the 64-bit memory BARs (C(IORESOURCE_MEM_64) in each
    device's C(resource) file; 32-bit and I/O BARs and the ROM do not count) of its GPU, companions and NVMe,
    plus one VF's share of the fabric PF's VF BARs (lines 7-12 of the PF's C(resource), sized for all
    C(sriov_totalvfs) VFs). A slot whose memory share plus that cannot fit a guest's physical address space on
    this host's CPU (the address sizes line of C(/proc/cpuinfo); OVMF keeps the top eighth for the 64-bit PCI
    window) is ineligible, with the numbers; a C(resource) file that cannot be read makes it ineligible too."
  - Discovery only proposes; RV(approval_required) is always V(true). Feed the result to
    M(gpuaas.slice.slot_approval) with the operator's approved slot map.
  - A slot that must not be approved has RV(slots[].eligible=false) and plain-English
    RV(slots[].reasons). A missing attribute never crashes discovery; a tree that is not sysfs
    at all (no C(bus/pci/devices)) fails the module and changes nothing.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.attributes.read_only
  - gpuaas.slice.sysfs
options:
  node_id:
    description:
      - The host's node id, used in slot ids (C({node_id}-s{slot_index})) and in the MAC layout.
      - 1-63 letters, digits, C(.), C(_) or C(-), starting with a letter or digit.
    type: str
    required: true
  gpu_vendors:
    description:
      - PCI vendor ids (hex, with or without C(0x)) whose display-class functions count as GPUs.
    type: list
    elements: str
    default: ['10de', '1002', '8086']
  require_nvme:
    description:
      - When V(true), a slot without its own NVMe controller is not eligible.
    type: bool
    default: true
  require_fabric:
    description:
      - When V(true), a slot without an SR-IOV fabric PF is not eligible.
    type: bool
    default: true
  fabric_classes:
    description:
      - PCI class and subclass codes (4 hex digits) of the functions that can be a slot's fabric
        PF when they have SR-IOV; V(0207) is InfiniBand, V(0200) Ethernet.
      - A function of one of these classes with SR-IOV is never offered as the slot's NVMe drive.
    type: list
    elements: str
    default: ['0207', '0200']
  host_reserved_cores:
    description:
      - Cores (with their sibling threads) each NUMA node keeps for the host, from its first; 1 to 8192.
    type: int
    default: 1
  host_reserved_memory_mib:
    description:
      - MiB of each NUMA node's memory kept for the host before the rest is shared among its slots.
    type: int
    default: 16384
  approved_slots:
    description:
      - The host's approved slot map (see C(docs/approved-slot-map.md)), the one
        M(gpuaas.slice.slot_approval) then checks. Only each entry's C(slot_id), C(gpu_address) and
        C(fingerprint) (and C(cpulist)) are read here, to keep every approved slot's index with its GPU.
      - An entry that cannot keep an index (not a mapping, a slot id of another node, a
        C(gpu_address) that is not a PCI address, an index or address another entry holds) is
        skipped with a warning; M(gpuaas.slice.slot_approval) refuses the map for it.
    type: list
    elements: raw
    default: []
seealso:
  - module: gpuaas.slice.slot_approval
notes:
  - Run it on the GPU host itself; it reads the local sysfs.
'''

EXAMPLES = r'''
- name: Discover the slots of this host
  gpuaas.slice.slot_discovery_info:
    node_id: "{{ inventory_hostname_short }}"
  register: discovery

- name: Show what could be approved
  ansible.builtin.debug:
    msg: "{{ discovery.slots | selectattr('eligible') | map(attribute='slot_id') }}"

- name: Discover a workstation without fabric NICs, NVIDIA GPUs only
  gpuaas.slice.slot_discovery_info:
    node_id: ws-01
    gpu_vendors: ['10de']
    require_fabric: false
'''

RETURN = r'''
node_id:
  description: The node id the slots were named after.
  returned: always
  type: str
  sample: gpu-node-01
approval_required:
  description: Always V(true); only an operator's approval makes a slot schedulable.
  returned: always
  type: bool
  sample: true
iommu_enabled:
  description: Whether the kernel has IOMMU groups (the IOMMU is on).
  returned: always
  type: bool
  sample: true
numa_nodes:
  description: NUMA node number to its CPU list.
  returned: always
  type: dict
  sample: {"0": "0-55,112-167", "1": "56-111,168-223"}
host_cpulist:
  description: The host's CPUs, O(host_reserved_cores) cores of each NUMA node; slot VMs' emulator threads run here.
  returned: always
  type: str
  sample: "0,56,112,168"
host_reserved_cores:
  description: The O(host_reserved_cores) the slices were cut by.
  returned: always
  type: int
  sample: 1
host_reserved_memory_mib:
  description: The O(host_reserved_memory_mib) the memory shares were computed with.
  returned: always
  type: int
  sample: 16384
require_nvme:
  description: The O(require_nvme) the slots were judged by.
  returned: always
  type: bool
  sample: true
require_fabric:
  description: The O(require_fabric) the slots were judged by.
  returned: always
  type: bool
  sample: true
gpus:
  description: Every GPU function found, in address order.
  returned: always
  type: list
  elements: dict
  sample:
    - address: "0000:18:00.0"
      vendor_id: "10de"
      device_id: "2330"
      subsystem_vendor_id: "10de"
      subsystem_device_id: "16c1"
      class: "0x030200"
      numa_node: 0
      iommu_group: "9"
      iommu_group_devices: ["0000:18:00.0"]
      driver: nvidia
      link: {current_speed: "32.0 GT/s PCIe", current_width: 16,
             max_speed: "32.0 GT/s PCIe", max_width: 16}
      reset_method: flr
excluded:
  description: Devices discovery saw and left out on purpose (the host's console, its storage).
  returned: always
  type: list
  elements: dict
  sample:
    - address: "0000:04:00.0"
      reason: "host storage: dm-0 is mounted on /"
absent:
  description: The approved slots (of O(approved_slots)) whose GPU is not on the PCI bus, in slot index order.
  returned: always
  type: list
  elements: dict
  contains:
    slot_index:
      description: The slot's index, as approved.
      type: int
    slot_id:
      description: C({node_id}-s{slot_index}).
      type: str
    gpu_address:
      description: The approved GPU's address, where no GPU answers now.
      type: str
    numa_node:
      description: The NUMA node whose shares still count the slot, or -1 when it cannot be known.
      type: int
    reason:
      description: Why the slot is absent, for people.
      type: str
  sample:
    - slot_index: 3
      slot_id: gpu-node-01-s3
      gpu_address: "0000:3a:00.0"
      numa_node: 0
      reason: "GPU 0000:3a:00.0 of approved slot gpu-node-01-s3 is not on the PCI bus (it fell off the bus,
        e.g. Xid 79, or was removed): the slot is absent until the GPU is back at this address"
slots:
  description: One proposed slot per GPU that is there, in slot index order (without a map, GPU address order).
  returned: always
  type: list
  elements: dict
  contains:
    slot_index:
      description: The approved slot's index for an approved GPU; else the lowest index free, GPUs in address order.
      type: int
    slot_id:
      description: C({node_id}-s{slot_index}).
      type: str
    gpu_address:
      description: The GPU's full PCI address.
      type: str
    companions:
      description: Other functions of the GPU's IOMMU group that go to the VM with it.
      type: list
      elements: str
    numa_node:
      description: The GPU's NUMA node (the kernel's -1 is 0 on a single-node host).
      type: int
    cpulist:
      description: The slot's own CPUs (its slice of the NUMA node, whole cores), or null when it has none.
      type: str
    vcpus:
      description: How many CPUs the slice holds, the most vCPUs an allocation of the slot may have; or null.
      type: int
    memory_mib:
      description: The slot's memory share in MiB (whole GiB), the most an allocation of the slot may have; or null.
      type: int
    bar_mib:
      description:
        - The MiB (rounded up) of 64-bit BARs the slot's GPU, companions, NVMe and VF bring into its VM (an H100 alone
          128 GiB + 32 MiB); null when a C(resource) file cannot be read. The slot VM's address bits cover it.
      type: int
    host_cpulist:
      description: RV(host_cpulist), where the slot VM's emulator threads are pinned.
      type: str
    nvme_address:
      description: The slot's NVMe controller, or null.
      type: str
    fabric_pf_address:
      description: The SR-IOV PF whose VF the slot gets (other slots may have other VFs of it), or null.
      type: str
    fabric_vf_index:
      description: Which VF of the PF is the slot's, k for the k-th slot paired with the PF (0 where each
        GPU has a PF of its own); null without a PF or when the slot cannot have a VF (see its reasons).
      type: int
    fabric_vf_pci_address:
      description: The address the slot's VF will have (VF RV(slots[].fabric_vf_index) of the PF), or null.
      type: str
    mac:
      description: The VM's MAC, C(52:54:) plus the first 4 bytes of sha256("{node_id}:{slot_index}").
      type: str
    ip:
      description: The VM's fixed address, C(10.100.0.{10 + slot_index}).
      type: str
    capacity_metadata:
      description: The keys the approval requires (storage_ownership, fabric_claim_mode,
        fabric_vf_pci_address).
      type: dict
    fingerprint:
      description: Identity of the slot's devices (ids, serial, PCIe path), kept with the approval
        so a hardware change is noticed.
      type: dict
    eligible:
      description: Whether the slot may be approved.
      type: bool
    reasons:
      description: Why the slot is not eligible; empty when it is.
      type: list
      elements: str
  sample:
    - slot_index: 0
      slot_id: gpu-node-01-s0
      gpu_address: "0000:18:00.0"
      companions: []
      numa_node: 0
      cpulist: "1-14,113-126"
      vcpus: 28
      memory_mib: 252928
      bar_mib: 131106
      host_cpulist: "0,56,112,168"
      nvme_address: "0000:1c:00.0"
      fabric_pf_address: "0000:1a:00.0"
      fabric_vf_index: 0
      fabric_vf_pci_address: "0000:1a:00.1"
      mac: "52:54:4f:3c:9e:0a"
      ip: 10.100.0.10
      capacity_metadata: {storage_ownership: slice, fabric_claim_mode: per_slot_vf,
                          fabric_vf_pci_address: "0000:1a:00.1"}
      fingerprint: {}
      eligible: true
      reasons: []
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._common import with_sysfs_args
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import (
    DEFAULT_FABRIC_CLASSES,
    DEFAULT_GPU_VENDORS,
    DEFAULT_HOST_RESERVED_CORES,
    DEFAULT_HOST_RESERVED_MEMORY_MIB,
    Discovery,
)
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_engine, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._files import check_dir

ARGUMENT_SPEC = with_sysfs_args(dict(
    node_id=dict(type='str', required=True),
    gpu_vendors=dict(type='list', elements='str', default=list(DEFAULT_GPU_VENDORS)),
    require_nvme=dict(type='bool', default=True),
    require_fabric=dict(type='bool', default=True),
    fabric_classes=dict(type='list', elements='str', default=list(DEFAULT_FABRIC_CLASSES)),
    host_reserved_cores=dict(type='int', default=DEFAULT_HOST_RESERVED_CORES),
    host_reserved_memory_mib=dict(type='int', default=DEFAULT_HOST_RESERVED_MEMORY_MIB),
    approved_slots=dict(type='list', elements='raw', default=[]),
))


def engine(module):
    p = module.params
    discovery = Discovery(
        node_id=p['node_id'], sysfs_root=check_dir(p['sysfs_root'], 'sysfs_root'),
        proc_root=check_dir(p['proc_root'], 'proc_root'), gpu_vendors=p['gpu_vendors'],
        require_nvme=p['require_nvme'], require_fabric=p['require_fabric'], fabric_classes=p['fabric_classes'],
        host_reserved_cores=p['host_reserved_cores'], host_reserved_memory_mib=p['host_reserved_memory_mib'],
        approved_slots=p['approved_slots'])
    return dict(changed=False, **run_engine(module, discovery))


def main():
    run_module(ARGUMENT_SPEC, engine)


if __name__ == '__main__':
    main()
