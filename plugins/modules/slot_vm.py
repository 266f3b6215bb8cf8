#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: slot_vm
short_description: Define, start, stop and remove a slot's tenant VM (libvirt domain)
version_added: 0.1.0
description:
  - Manages the libvirt domain of one slot through libvirt-python. The domain is named
    C(gpuaas-{slot_id}); its tap device is C(gs{index}-) plus 8 hex digits of the slot id's
    sha256 (at most 15 characters); its MAC is the slot layout's. No tenant string names anything.
  - The domain passes through the slot's GPU, the GPU's companion functions, the NVMe controller
    and the fabric VF as C(<hostdev mode='subsystem' type='pci' managed='no'>) entries (binding them
    to vfio-pci is done before, by M(gpuaas.slice.vfio_bind)). Any PCI domain works, segment C(0001)
    included.
  - Each vCPU is pinned to its own CPU of O(cpulist) (C(vcpupin)), the emulator threads to
    O(host_cpulist) (C(emulatorpin); without it, to the whole O(cpulist)), and memory is bound to
    O(numa_node) with C(numatune mode=strict).
  - The NIC is a virtio interface on O(bridge) with the slot's fixed MAC; on an Open vSwitch bridge
    it carries C(<virtualport type='openvswitch'/>). The NoCloud seed is a read-only CD-ROM on
    virtio-scsi; the serial console is a pty that libvirt also logs to
    C({console_log_dir}/{slot_id}.log) (rewritten at each start). A virtio-serial channel
    C(org.qemu.guest_agent.0) serves qemu-guest-agent in the guest; a domain defined without it is
    not redefined for it.
  - A domain that exists with a different definition (devices, CPUs, memory, disks, network) is an
    error unless O(replace=true). Its UUID is kept when it is redefined.
  - Before a start the module checks what would otherwise fail in QEMU or succeed wrongly. Files and
    the bridge must exist. With O(passthrough=true), every passed-through function must be bound
    to vfio-pci and no function of their IOMMU groups may be left out (a GPU's audio function, for one).
  - With O(state=running) and O(wait_for_lease=true) the module waits until dnsmasq's lease file
    holds a lease for the slot's MAC, and checks that it is the slot's address.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
  - gpuaas.slice.libvirt
attributes:
  check_mode:
    support: full
    details: Reads the domain and the host, reports the actions and the XML it would define, and
      runs the pre-start checks (their findings are warnings in check mode, since the tasks before it
      did not run for real either); changes nothing.
  diff_mode:
    support: full
    details: The domain's inactive XML before and after, as libvirt holds it.
  idempotent:
    support: full
options:
  slot_id:
    description:
      - The slot, C({node_id}-s{slot_index}). The domain name, MAC, tap name and expected address
        derive from it.
    type: str
    required: true
  state:
    description:
      - V(present) defines the domain and leaves it as it is (running or not).
      - V(running) defines and starts it, then waits for its lease (O(wait_for_lease)).
      - V(stopped) defines it and shuts it down (ACPI power button; powered off after O(stop_timeout)).
      - V(absent) powers it off, undefines it and releases its DHCP lease (O(release_lease)). The
        disk and seed are left to M(gpuaas.slice.slot_image) and M(gpuaas.slice.slot_seed).
      - V(repaired) is reconcile's repair of a domain that lost its C(<hostdev>) entries, after a host
        reboot for one. It keeps the existing definition and puts back the hostdevs of
        O(gpu_address), O(companions), O(nvme_address) and O(fabric_vf_pci_address) that it lacks. It
        never creates, starts, stops or destroys a domain; a running guest keeps running as it is and
        gets the devices at its next start (a warning says so). A slot without a domain is an error.
    type: str
    choices: [present, running, stopped, absent, repaired]
    default: running
  domain_type:
    description:
      - V(kvm) on GPU hosts; V(qemu) (TCG emulation) where KVM is not usable, as on CI machines.
    type: str
    choices: [kvm, qemu]
    default: kvm
  machine:
    description: QEMU machine type. V(q35) gives the VM PCI Express, which GPUs need.
    type: str
    default: q35
  memory_mib:
    description:
      - The VM's memory in MiB (the allocation's C(memory_mib)). Required with O(state=present), V(running)
        and V(stopped).
    type: int
    aliases: [memory_mb]
  cpulist:
    description:
      - The slot's host CPUs as a kernel CPU list (V(8-15,120-127)). Required with O(state=present), V(running)
        and V(stopped).
      - vCPU I(n) is pinned to the I(n)-th CPU of the list.
    type: str
  host_cpulist:
    description:
      - The host's CPUs (slot_discovery_info's C(host_cpulist)), where the emulator threads are pinned; it
        must not share a CPU with O(cpulist). Without it they run on any CPU of O(cpulist).
    type: str
  vcpus:
    description: Number of vCPUs; at most the number of CPUs in O(cpulist), which is the default.
    type: int
  numa_node:
    description:
      - The host NUMA node of the slot's GPU. The VM's memory is bound to it (C(numatune mode=strict)).
    type: int
  numatune:
    description:
      - Whether to bind memory to O(numa_node). A host without that node is an error unless this is
        V(false) (single-node test hosts).
    type: bool
    default: true
  hugepages:
    description:
      - Back the VM's memory with huge pages (reserved on the host beforehand), from O(numa_node) when
        O(numatune) binds the memory there, else from the host's pool.
      - Before a start the node's free huge pages of O(hugepage_size_kb)
        (C(/sys/devices/system/node/nodeN/hugepages/hugepages-SIZEkB/free_hugepages)) must cover
        O(memory_mib), a whole number of pages; otherwise the start is refused, naming the node, the size
        and the free and needed counts (in check mode, a warning).
    type: bool
    default: false
  hugepage_size_kb:
    description:
      - Huge page size in KiB (V(2048), V(1048576)). Needed with O(hugepages=true) for the check of the
        free pages before a start.
    type: int
  gpu_address:
    description: The slot's GPU, a full PCI address (V(0001:1b:00.0)).
    type: str
  companions:
    description: The other functions of the GPU's IOMMU group (its audio function, for one).
    type: list
    elements: str
    default: []
  nvme_address:
    description:
      - The slot's NVMe controller. Without O(disk) the VM boots from it (it holds the image that
        M(gpuaas.slice.slot_image) wrote there before the controller was bound to vfio-pci).
    type: str
  fabric_vf_pci_address:
    description: The slot's fabric virtual function (InfiniBand or RoCE SR-IOV VF).
    type: str
  passthrough:
    description:
      - Whether the domain gets its C(hostdev) entries. V(false) leaves them out; only for test
        hosts without an IOMMU. The devices left out are returned in RV(hostdevs_omitted) and
        a warning says so.
    type: bool
    default: true
  disk:
    description:
      - The VM's boot disk as a virtio disk, a file or a block device (usually the target of
        M(gpuaas.slice.slot_image)). Leave it out when the VM boots from its NVMe controller.
    type: path
  disk_format:
    description: Format of O(disk).
    type: str
    choices: [raw, qcow2]
    default: raw
  seed:
    description: The NoCloud seed ISO made by M(gpuaas.slice.slot_seed), attached as a read-only CD-ROM.
    type: path
  kernel:
    description: Boot this kernel directly (no bootloader); for test and lab guests.
    type: path
  initrd:
    description: The initramfs for O(kernel).
    type: path
  kernel_cmdline:
    description: The kernel command line for O(kernel).
    type: str
  bridge:
    description: The slot network's bridge.
    type: str
    default: br-gpuaas
  bridge_type:
    description:
      - V(openvswitch) adds C(<virtualport type='openvswitch'/>), so libvirt adds the tap as an OVS
        port. V(linux) is for a plain Linux bridge (test hosts without Open vSwitch).
      - V(ethernet) opens the slot's tap device, which M(gpuaas.slice.slot_network) created,
        added to the bridge and filtered before the VM starts (C(<interface type='ethernet'>)
        with C(managed='no')); O(bridge) is then not used. This is what the allocate role uses.
    type: str
    choices: [openvswitch, linux, ethernet]
    default: openvswitch
  console_log_dir:
    description: Where libvirt logs each slot's serial console, as C({slot_id}.log).
    type: path
    default: /var/log/gpuaas/console
  firmware:
    description:
      - V(uefi) boots OVMF (Debian package C(ovmf)) with secure boot off, as the seed platform does; libvirt picks
        the firmware from the package's descriptors. V(bios) boots SeaBIOS, for tests that do not care (an OVMF
        boot costs a few seconds more under TCG).
    type: str
    choices: [uefi, bios]
    default: uefi
  nvram_dir:
    description:
      - Where a UEFI domain's own OVMF variable store lives, as C({slot_id}_VARS.fd) (created mode 0711 when
        missing). libvirt copies it from the template at the first start and removes it when the domain is
        undefined (O(state=absent)).
    type: path
    default: /var/lib/gpuaas/nvram
  bar_mib:
    description:
      - The MiB of 64-bit BARs the slot's devices bring into the VM (discovery's and M(gpuaas.slice.slot_check_info)'s
        C(bar_mib)). The guest CPU's physical address bits are computed from O(memory_mib) plus this (with
        O(passthrough=true)) plus a lab stand-in's BAR; more bits than the host CPU has (C(/proc/cpuinfo)
        "address sizes") is refused, naming the numbers.
    type: int
    default: 0
  lab_standin_bar_gib:
    description:
      - Labs only. Adds QEMU's C(pci-testdev) with a 64-bit prefetchable BAR of this many GiB (a power of two,
        1 to 1024) behind a PCIe root port of its own, through libvirt's C(<qemu:commandline>) (the domain is
        marked tainted), standing in for a GPU's large BAR where no GPU is. Never set on a GPU host.
    type: int
  allowed_dirs:
    description:
      - The directories O(disk), O(seed), O(kernel), O(initrd), O(console_log_dir) and O(nvram_dir) must lie in,
        after every symlink is resolved (as M(gpuaas.slice.nvme_wipe) confines its devices). A path
        outside them is refused before libvirt is contacted.
      - Checked for the states that define a domain (V(present), V(running), V(stopped)).
    type: list
    elements: path
    default: [/var/lib/gpuaas, /var/log/gpuaas]
  replace:
    description:
      - Redefine a domain that exists with a different definition. A running one is powered off
        first; with O(state=running) it is started again.
    type: bool
    default: false
  wait_for_lease:
    description: With O(state=running), wait until the guest has a DHCP lease.
    type: bool
    default: true
  lease_file:
    description: dnsmasq's lease file for the slot network.
    type: path
    default: /var/lib/misc/dnsmasq.leases
  lease_timeout:
    description:
      - Seconds to wait for the lease before failing (the failure shows the console's last lines),
        from 1 to 3600.
    type: int
    default: 300
  expected_ip:
    description:
      - The address the lease must have. Defaults to the slot layout's (RV(ip) of
        M(gpuaas.slice.slot_network)); only tests on another subnet set it.
    type: str
  release_lease:
    description: With O(state=absent), release the slot's lease with C(dhcp_release) (package dnsmasq-utils).
    type: bool
    default: true
  stop_timeout:
    description: Seconds a guest gets to shut down before it is powered off, from 1 to 3600.
    type: int
    default: 120
  sysfs_root:
    description: Where sysfs is mounted; the pre-start checks read the devices and IOMMU groups there.
    type: path
    default: /sys
seealso:
  - module: gpuaas.slice.slot_image
  - module: gpuaas.slice.slot_seed
notes:
  - The slot's devices must be bound to vfio-pci before O(state=running); the module checks, it does
    not bind.
  - With O(state=running), a lease the slot had before this run started the domain does not count
    until dnsmasq writes it again, so use finite lease times on the slot network.
'''

EXAMPLES = r'''
- name: Run the tenant VM of slot gpu-node-01-s0
  gpuaas.slice.slot_vm:
    slot_id: gpu-node-01-s0
    memory_mib: 245760
    cpulist: "8-27,120-139"
    host_cpulist: "0,56,112,168"
    numa_node: 0
    hugepages: true
    hugepage_size_kb: 1048576
    gpu_address: "0000:18:00.0"
    nvme_address: "0000:1c:00.0"
    fabric_vf_pci_address: "0000:1a:00.1"
    seed: /var/lib/gpuaas/seeds/gpu-node-01-s0-seed.iso
    state: running
  register: vm

- name: Show the guest's address
  ansible.builtin.debug:
    msg: "{{ vm.name }} has {{ vm.ip }}"

- name: A test guest under TCG on a Linux bridge, without passthrough
  gpuaas.slice.slot_vm:
    slot_id: ci-s0
    domain_type: qemu
    memory_mib: 256
    cpulist: "0"
    passthrough: false
    numatune: false
    bridge: br-test
    bridge_type: linux
    disk: /var/lib/gpuaas/images/ci-s0.raw
    seed: /var/lib/gpuaas/seeds/ci-s0-seed.iso
    kernel: /srv/guest/vmlinuz
    initrd: /srv/guest/initrd.img
    kernel_cmdline: console=ttyS0 quiet
    lease_file: /run/test/dnsmasq.leases
    expected_ip: 10.213.0.10

- name: Remove the VM (the disk and seed are removed by slot_image and slot_seed)
  gpuaas.slice.slot_vm:
    slot_id: gpu-node-01-s0
    state: absent

- name: Give a domain that came back from a reboot without its hostdevs its devices again (reconcile)
  gpuaas.slice.slot_vm:
    slot_id: gpu-node-01-s0
    state: repaired
    gpu_address: "0000:1b:00.0"
    companions: ["0000:1b:00.1"]
    nvme_address: "0000:1c:00.0"
    fabric_vf_pci_address: "0000:3b:00.1"
'''

RETURN = r'''
name:
  description: The domain's name.
  returned: always
  type: str
  sample: gpuaas-gpu-node-01-s0
uuid:
  description: The domain's UUID (kept when the domain is redefined).
  returned: when the domain exists
  type: str
  sample: 4bec8473-e2b4-43ac-b837-079237ce17d3
mac:
  description: The slot's MAC, from the layout.
  returned: always
  type: str
  sample: "52:54:4f:3c:9e:0a"
tap:
  description: The tap device of the slot's NIC.
  returned: unless O(state=absent)
  type: str
  sample: gs0-1a2b3c4d
firmware:
  description: The domain's firmware, V(uefi) or V(bios).
  returned: unless O(state=absent) or O(state=repaired)
  type: str
  sample: uefi
nvram:
  description: The UEFI domain's own variable store (null with V(bios)).
  returned: unless O(state=absent) or O(state=repaired)
  type: str
  sample: /var/lib/gpuaas/nvram/gpu-node-01-s0_VARS.fd
phys_bits:
  description: The guest CPU's physical address bits, covering O(memory_mib) plus the 64-bit BARs.
  returned: unless O(state=absent) or O(state=repaired)
  type: int
  sample: 41
actions:
  description: What was done (or, in check mode, would be), in order.
  returned: always
  type: list
  elements: str
  sample: [define, start]
differences:
  description: How the existing domain differed from the wanted one (with O(replace=true)).
  returned: always
  type: list
  elements: str
  sample: ["memory_mib: 1024 -> 2048"]
restored:
  description: With O(state=repaired), the addresses whose hostdevs were put back (empty when none were missing).
  returned: when O(state=repaired)
  type: list
  elements: str
  sample: ["0000:1b:00.0", "0000:1b:00.1"]
domain_state:
  description: V(running), V(shut off) or V(absent) after the run (predicted in check mode).
  returned: always
  type: str
  sample: running
hostdevs:
  description: The devices passed through, with their role (gpu, companion, nvme, fabric_vf).
  returned: unless O(state=absent)
  type: list
  elements: dict
  sample: [{"role": "gpu", "address": "0000:18:00.0"}, {"role": "nvme", "address": "0000:1c:00.0"}]
hostdevs_omitted:
  description: The devices left out because O(passthrough=false).
  returned: unless O(state=absent)
  type: list
  elements: dict
  sample: []
ip:
  description: The guest's address from its lease.
  returned: when O(state=running) and O(wait_for_lease=true), outside check mode
  type: str
  sample: 10.100.0.10
lease:
  description: The dnsmasq lease (expiry, mac, ip, hostname, client_id).
  returned: when RV(ip) is
  type: dict
  sample: {"expiry": "1764000000", "mac": "52:54:4f:3c:9e:0a", "ip": "10.100.0.10",
           "hostname": "tenant-vm", "client_id": null}
start_problems:
  description:
    - What the pre-start checks found (missing files, devices not bound to vfio-pci, an IOMMU group
      not moving whole). Outside check mode any finding fails the module before QEMU runs.
  returned: when the domain was to be started
  type: list
  elements: str
  sample: ["0000:18:00.1 (audio device, class 0x040300, driver snd_hda_intel) is bound to snd_hda_intel, not vfio-pci"]
forced_off:
  description: Whether a shutdown ran out of O(stop_timeout) and the VM was powered off.
  returned: always
  type: bool
  sample: false
console_log:
  description: The serial console log file.
  returned: always
  type: str
  sample: /var/log/gpuaas/console/gpu-node-01-s0.log
timings:
  description: Seconds spent in each libvirt call and waiting for the lease.
  returned: always
  type: dict
  sample: {"define_s": 0.021, "start_s": 0.412, "lease_wait_s": 3.1}
xml:
  description: The domain's inactive XML after the run (the XML to be defined, in check mode).
  returned: always
  type: str
  sample: "<domain type='kvm'>...</domain>"
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._engine import engine_of, run_module
from ansible_collections.gpuaas.slice.plugins.module_utils._libvirt import require_libvirt
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_vm import RULES, SlotVm, SlotVmError, argument_spec


def main():
    run_module(argument_spec(), engine_of(SlotVm, SlotVmError, require_libvirt), **RULES)


if __name__ == '__main__':
    main()
