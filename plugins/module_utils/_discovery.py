# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: slot discovery (read-only).

Discovery proposes slots; an operator approves them. It reads sysfs only and
returns plain data: what it found, what it proposes and, for every slot it
cannot recommend, the reasons in plain English.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    CLASS_ETHERNET,
    CLASS_INFINIBAND,
    CLASS_NVME,
    GPU_CLASSES,
    PciBus,
    PciDevice,
    PciError,
    Sysfs,
    bdf_key,
    same_device,
    vf_address,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError,
    MAX_CPU,
    address_space_problem,
    NODE_ID,
    Slot,
    check_int,
    format_cpulist,
    memory_share_mib,
    parse_cpulist,
    show,
    split_cores,
)

DEFAULT_GPU_VENDORS = ('10de', '1002', '8086')
DEFAULT_FABRIC_CLASSES = ('%04x' % CLASS_INFINIBAND, '%04x' % CLASS_ETHERNET)
DEFAULT_HOST_RESERVED_CORES = 1
DEFAULT_HOST_RESERVED_MEMORY_MIB = 16384
# What host_reserved_memory_mib may be: up to 64 TiB per node.
MAX_RESERVED_MEMORY_MIB = 64 * 1024 * 1024
# One line of devices/system/node/nodeN/meminfo as drivers/base/node.c writes it.
MEMTOTAL_RE = re.compile(r'Node ([0-9]+) MemTotal: +([0-9]{1,18}) kB')

# One line of a PCI function's sysfs ``resource`` file: start, end and flags, in hex.
RESOURCE_RE = re.compile(r'0x([0-9a-f]{1,16}) 0x([0-9a-f]{1,16}) 0x([0-9a-f]{1,16})')
# include/linux/ioport.h: a memory resource, and a 64-bit memory BAR.
IORESOURCE_MEM = 0x00000200
IORESOURCE_MEM_64 = 0x00100000
# Lines 0-5 are the BARs, 6 the ROM, 7-12 an SR-IOV PF's VF BARs (each sized for all its VFs).
BAR_LINES = range(0, 6)
VF_BAR_LINES = range(7, 13)
# /proc/cpuinfo: "address sizes\t: 46 bits physical, 57 bits virtual".
ADDRESS_SIZES_RE = re.compile(r'address sizes\s*:\s*([0-9]{1,3}) bits physical')

IOMMU_OFF_REASON = (
    'the IOMMU is off (no groups under /sys/kernel/iommu_groups): enable VT-d (Intel) '
    'or AMD-Vi/IOMMU (AMD) in the firmware and boot with intel_iommu=on or amd_iommu=on')


def normalize_vendor(value):
    """'0x10DE' -> '10de'; raise PciError for anything that is not a 16-bit hex id."""
    text = str(value).strip().lower()
    if text.startswith('0x'):
        text = text[2:]
    if not text or len(text) > 4 or any(c not in '0123456789abcdef' for c in text):
        raise PciError('gpu_vendors: %s is not a PCI vendor id (expected 4 hex digits, e.g. 10de)' % show(value))
    return '%04x' % int(text, 16)


def normalize_class(value):
    """'0x0207' or '0207' -> 0x0207; raise PciError for anything else."""
    text = str(value).strip().lower()
    if text.startswith('0x'):
        text = text[2:]
    if len(text) != 4 or any(c not in '0123456789abcdef' for c in text):
        raise PciError('fabric_classes: %s is not a PCI class and subclass (expected 4 hex digits, e.g. 0207)'
                       % show(value))
    return int(text, 16)


def read_numa_nodes(sysfs):
    """{'0': '0-15', ...} from devices/system/node, or the online CPUs as node 0."""
    nodes = {}
    for entry in sysfs.listdir('devices/system/node'):
        if entry.startswith('node') and entry[4:].isdigit():
            cpulist = sysfs.read('devices/system/node/%s/cpulist' % entry)
            nodes[entry[4:]] = cpulist if cpulist is not None else ''
    if not nodes:
        online = sysfs.read('devices/system/cpu/online')
        if online is not None:
            nodes['0'] = online
    return dict(sorted(nodes.items(), key=lambda item: int(item[0])))


def read_siblings(sysfs, cpu):
    """CPU ``cpu``'s core, as ``devices/system/cpu/cpuN/topology/thread_siblings_list`` says; [cpu] without it."""
    rel = 'devices/system/cpu/cpu%d/topology/thread_siblings_list' % cpu
    text = sysfs.read(rel)
    return parse_cpulist(text, sysfs.path(rel)) if text is not None else [cpu]


def read_cores(sysfs, cpus, what):
    """The cores of a NUMA node's ``cpus`` in order, each the sorted list of its sibling threads.

    From ``devices/system/cpu/cpuN/topology/thread_siblings_list``; a CPU without that file is a
    core of its own. ContractError when the threads do not agree on their siblings.
    """
    node = set(cpus)
    core_of = {}
    for cpu in cpus:
        siblings = read_siblings(sysfs, cpu)
        core_of[cpu] = tuple(sibling for sibling in siblings if sibling in node)
        if cpu not in core_of[cpu]:
            raise ContractError('%s: %s names %s, which does not hold CPU %d itself' % (
                what, sysfs.path('devices/system/cpu/cpu%d/topology/thread_siblings_list' % cpu),
                format_cpulist(siblings), cpu))
    for cpu, core in core_of.items():
        if any(core_of[sibling] != core for sibling in core):
            raise ContractError('%s: the thread_siblings_list files of CPUs %s disagree, so its cores cannot '
                                'be known' % (what, format_cpulist(core)))
    return [list(core) for core in sorted(set(core_of.values()))]


def read_node_memory_mib(sysfs, node):
    """NUMA node ``node``'s MemTotal in MiB, from ``devices/system/node/nodeN/meminfo``; else ContractError."""
    rel = 'devices/system/node/node%s/meminfo' % node
    for line in (sysfs.read(rel) or '').splitlines():
        match = MEMTOTAL_RE.fullmatch(line.strip())
        if match and match.group(1) == str(node):
            return int(match.group(2)) // 1024
    raise ContractError('NUMA node %s: %s is missing or has no MemTotal line, so its memory cannot be shared '
                        'among its slots' % (node, sysfs.path(rel)))


def read_bars(device, lines=BAR_LINES):
    """The sizes in bytes of ``device``'s 64-bit memory BARs among ``lines`` of its ``resource`` file.

    ContractError when the file is missing or a line is not the kernel's "start end flags".
    A 32-bit BAR, an I/O BAR, the ROM and an unassigned (all-zero) line do not count.
    """
    rel = device.rel + '/resource'
    text = device.sysfs.read(rel)
    if text is None:
        raise ContractError('%s has no readable %s, so the size of its BARs cannot be known'
                            % (device.address, device.sysfs.path(rel)))
    sizes = []
    for number, line in enumerate(text.splitlines()):
        match = RESOURCE_RE.fullmatch(line.strip())
        if match is None:
            raise ContractError('%s line %d is %s, not "0xSTART 0xEND 0xFLAGS"'
                                % (device.sysfs.path(rel), number + 1, show(line)))
        start, end, flags = (int(group, 16) for group in match.groups())
        if number in lines and flags & IORESOURCE_MEM and flags & IORESOURCE_MEM_64 and end > start:
            sizes.append(end - start + 1)
    return sizes


def bar_mib(sysfs, gpu_address, companions=(), nvme_address=None, fabric_pf_address=None):
    """The MiB of 64-bit BARs a slot's devices bring into its VM, rounded up to whole MiB.

    The GPU's, its companions' and the NVMe's BARs from their ``resource`` files; the slot's
    one fabric VF's from its PF (lines 7-12 are sized for all ``sriov_totalvfs`` VFs: a VF
    gets that size / sriov_totalvfs), so the figure is known before any VF exists.
    ContractError when a device or one of its files cannot be read.
    """
    total = 0
    for address in [gpu_address] + list(companions or []) + ([nvme_address] if nvme_address else []):
        device = PciDevice(sysfs, address)
        if not sysfs.exists(device.rel):
            raise ContractError('%s does not exist, so its BARs cannot be known' % address)
        total += sum(read_bars(device))
    if fabric_pf_address:
        pf = PciDevice(sysfs, fabric_pf_address)
        if not sysfs.exists(pf.rel):
            raise ContractError('%s does not exist, so its VF BARs cannot be known' % fabric_pf_address)
        total_vfs = pf.read_int('sriov_totalvfs')
        if not total_vfs:
            raise ContractError('fabric PF %s reports no sriov_totalvfs, so the size of a VF\'s BARs cannot be '
                                'known' % fabric_pf_address)
        total += sum(size // total_vfs for size in read_bars(pf, VF_BAR_LINES))
    return -(-total // (1 << 20))


def read_phys_bits(proc_root):
    """The host CPU's physical address bits, from ``cpuinfo``'s "address sizes"; ContractError if unseen."""
    path = os.path.join(proc_root, 'cpuinfo')
    try:
        with open(path) as handle:
            match = ADDRESS_SIZES_RE.search(handle.read())
    except (IOError, OSError, UnicodeDecodeError) as exc:
        raise ContractError('cannot read %s (%s), so the host CPU\'s physical address bits cannot be known'
                            % (path, getattr(exc, 'strerror', None) or exc))
    if match is None:
        raise ContractError('%s has no "address sizes : N bits physical" line, so the host CPU\'s physical '
                            'address bits cannot be known' % path)
    return int(match.group(1))


def _link(device):
    return {
        'current_speed': device.read('current_link_speed'),
        'current_width': device.read_int('current_link_width'),
        'max_speed': device.read('max_link_speed'),
        'max_width': device.read_int('max_link_width'),
    }


def fingerprint(device):
    """What identifies the physical device behind an address (checked before allocation)."""
    if device is None:
        return None
    serial = device.read('serial_number')
    return {
        'address': device.address,
        'vendor_id': device.vendor_id,
        'device_id': device.device_id,
        'subsystem_vendor_id': device.subsystem_vendor_id,
        'subsystem_device_id': device.subsystem_device_id,
        'serial': serial if serial and serial.strip('0-') else None,
        'pcie_path': '/'.join(device.pcie_path),
    }


def group_intruder(group, device):
    """Why a device (a PciDevice, or an address) that is not part of the GPU spoils its group."""
    described = device.describe() if hasattr(device, 'describe') else device
    return ('IOMMU group %s also holds %s, which is not part of the GPU: every device '
            'of a group goes to the VM together, so the host would lose it (move the '
            'card to another slot, or enable ACS on the bridge above it)' % (group, described))


def console_use(gpu):
    """Why a GPU not yet on vfio-pci is the host's: it drives a framebuffer console; else None."""
    if gpu.driver and gpu.driver != 'vfio-pci' and gpu.sysfs.listdir(gpu.rel + '/graphics'):
        return '%s drives a host framebuffer console (driver %s)' % (gpu.address, gpu.driver)
    return None


def _common_depth(path_a, path_b):
    """Length of the common prefix of two PCIe paths (0: different PCI roots)."""
    depth = 0
    for a, b in zip(path_a, path_b):
        if a != b:
            break
        depth += 1
    return depth


def _pair(gpus, candidates):
    """Give each GPU at most one candidate from the same PCI root, nearest first.

    All (GPU, candidate) pairs are ranked by how deep their common upstream
    bridge is (a shared PCIe switch beats a shared root complex); the best free
    pairs are taken greedily, ties broken by address, so the result is stable.
    """
    ranked = []
    for gpu in gpus:
        for cand in candidates:
            depth = _common_depth(gpu.pcie_path[:-1], cand.pcie_path[:-1])
            if depth:
                ranked.append((-depth, bdf_key(gpu.address), bdf_key(cand.address), gpu, cand))
    ranked.sort(key=lambda item: item[:3])
    pairs, taken = {}, set()
    for _depth, _gk, _ck, gpu, cand in ranked:
        if gpu.address not in pairs and cand.address not in taken:
            pairs[gpu.address] = cand
            taken.add(cand.address)
    return pairs


class Discovery:
    """Read a host's sysfs and propose its slots."""

    def __init__(self, node_id, sysfs_root='/sys', proc_root='/proc',
                 gpu_vendors=DEFAULT_GPU_VENDORS, require_nvme=True, require_fabric=True,
                 fabric_classes=DEFAULT_FABRIC_CLASSES, host_reserved_cores=DEFAULT_HOST_RESERVED_CORES,
                 host_reserved_memory_mib=DEFAULT_HOST_RESERVED_MEMORY_MIB):
        self.node_id = NODE_ID.check(node_id, 'node_id')
        self.reserved_cores = check_int(host_reserved_cores, 'host_reserved_cores', 1, MAX_CPU + 1)
        self.reserved_memory_mib = check_int(host_reserved_memory_mib, 'host_reserved_memory_mib', 0,
                                             MAX_RESERVED_MEMORY_MIB)
        self.sysfs = Sysfs(sysfs_root)
        self.proc_root = proc_root
        self.gpu_vendors = [normalize_vendor(v) for v in gpu_vendors]
        self.fabric_classes = [normalize_class(c) for c in fabric_classes]
        self.require_nvme = require_nvme
        self.require_fabric = require_fabric
        self.bus = PciBus(self.sysfs)
        self.usage = HostUsage(self.sysfs, proc_root)
        self.warnings = []

    # -- classification -----------------------------------------------------

    def _classify(self):
        gpus, excluded, nvmes, fabric_pfs = [], [], [], []
        for device in self.bus.devices():
            pci_class = device.pci_class
            if pci_class is None:
                self.warnings.append('%s has no readable class attribute; skipped' % device.address)
                continue
            sub = pci_class >> 8
            if sub in GPU_CLASSES:
                if device.vendor_id not in self.gpu_vendors or device.is_vf:
                    continue
                if device.read('boot_vga') == '1':
                    excluded.append({'address': device.address,
                                     'reason': 'host console (boot_vga = 1)'})
                    continue
                gpus.append(device)
            elif device.is_vf:
                continue
            elif sub in self.fabric_classes and (device.read_int('sriov_totalvfs') or 0) > 0:
                fabric_pfs.append(device)
            elif sub == CLASS_NVME:
                usage = self.usage.nvme_usage(device)
                if usage:
                    excluded.append({'address': device.address,
                                     'reason': 'host storage: %s' % usage})
                else:
                    nvmes.append(device)
        return gpus, excluded, nvmes, fabric_pfs

    def _gpu_record(self, gpu, groups, node_count):
        numa = gpu.numa_node
        if numa is None:
            self.warnings.append('%s has no readable numa_node attribute' % gpu.address)
            numa = -1
        if numa < 0 and node_count <= 1:
            numa = 0
        group = gpu.iommu_group
        return {
            'address': gpu.address,
            'vendor_id': gpu.vendor_id,
            'device_id': gpu.device_id,
            'subsystem_vendor_id': gpu.subsystem_vendor_id,
            'subsystem_device_id': gpu.subsystem_device_id,
            'class': '0x%06x' % gpu.pci_class,
            'numa_node': numa,
            'iommu_group': group,
            'iommu_group_devices': list(groups.get(group, [])) if group is not None else [],
            'driver': gpu.driver,
            'link': _link(gpu),
            'reset_method': gpu.read('reset_method') or None,
        }

    # -- each slot's share of its NUMA node ------------------------------------

    def _shares(self, numa_nodes, records):
        """The host's CPUs, and per slot index its share (cpulist, vcpus, memory_mib) or why it has none.

        Every slot discovery proposes on a node counts, eligible or not, so a slot's share does
        not move when another slot of the node becomes eligible.
        """
        host, shares = [], {}
        for node, cpulist in numa_nodes.items():
            what = 'NUMA node %s' % node
            members = [i for i, record in enumerate(records) if str(record['numa_node']) == node]
            try:
                cpus = parse_cpulist(cpulist, '%s cpulist' % what) if cpulist.strip() else []
                cores = read_cores(self.sysfs, cpus, what)
                # The host's cores first: they are its even where the node cannot serve its slots.
                host.extend(split_cores(cores, 0, self.reserved_cores, what)[0])
                slices = split_cores(cores, len(members), self.reserved_cores, what)[1]
                memory = memory_share_mib(read_node_memory_mib(self.sysfs, node), self.reserved_memory_mib,
                                          len(members), what) if members else None
            except ContractError as exc:
                shares.update((index, str(exc)) for index in members)
                continue
            for index, cpus in zip(members, slices):
                shares[index] = {'cpulist': format_cpulist(cpus), 'vcpus': len(cpus), 'memory_mib': memory}
        return format_cpulist(host), shares

    def _bar_mib(self, gpu, companions, nvme, fabric_pf, memory_mib, reasons):
        """The slot's bar_mib (None when unreadable, with the reason); a reason when its memory share
        and BARs do not fit a guest's address space on this host's CPU."""
        try:
            bars = bar_mib(self.sysfs, gpu.address, companions, nvme.address if nvme is not None else None,
                           fabric_pf.address if fabric_pf is not None else None)
        except ContractError as exc:
            reasons.append(str(exc))
            return None
        try:
            problem = memory_mib is not None and address_space_problem(memory_mib, bars, read_phys_bits(self.proc_root))
        except ContractError as exc:
            problem = str(exc)
        if problem:
            reasons.append(problem)
        return bars

    # -- the proposal -------------------------------------------------------

    def run(self):
        groups = self.bus.iommu_groups()
        iommu_enabled = bool(groups)
        numa_nodes = read_numa_nodes(self.sysfs)
        gpus, excluded, nvmes, fabric_pfs = self._classify()
        gpu_records = [self._gpu_record(g, groups, len(numa_nodes)) for g in gpus]
        nvme_of = _pair(gpus, nvmes)
        fabric_of = _pair(gpus, fabric_pfs)
        host_cpulist, shares = self._shares(numa_nodes, gpu_records)

        slots = []
        for index, (gpu, record) in enumerate(zip(gpus, gpu_records)):
            slots.append(self._slot(index, gpu, record, groups, iommu_enabled, len(numa_nodes), shares.get(index),
                                    host_cpulist, nvme_of.get(gpu.address), fabric_of.get(gpu.address)))
        return {
            'node_id': self.node_id,
            'approval_required': True,
            'iommu_enabled': iommu_enabled,
            'numa_nodes': numa_nodes,
            'host_cpulist': host_cpulist,
            'host_reserved_cores': self.reserved_cores,
            'host_reserved_memory_mib': self.reserved_memory_mib,
            'require_nvme': self.require_nvme,
            'require_fabric': self.require_fabric,
            'gpus': gpu_records,
            'excluded': excluded,
            'slots': slots,
        }

    def _slot(self, index, gpu, record, groups, iommu_enabled, node_count, share, host_cpulist, nvme, fabric_pf):
        reasons = []
        if not iommu_enabled:
            reasons.append(IOMMU_OFF_REASON)

        companions = []
        if iommu_enabled:
            if record['iommu_group'] is None:
                reasons.append('%s has no IOMMU group, so it cannot be isolated' % gpu.address)
            for member in record['iommu_group_devices']:
                if member == gpu.address:
                    continue
                device = self.bus.get(member)
                if device is not None and device.is_bridge:
                    continue
                if same_device(member, gpu.address):
                    companions.append(member)
                    continue
                reasons.append(group_intruder(record['iommu_group'], device or member))

        numa = record['numa_node']
        if numa < 0:
            reasons.append('%s does not report its NUMA node on a host with %d nodes, so its '
                           'vCPUs and memory cannot be pinned' % (gpu.address, node_count))
        elif share is None:
            reasons.append('NUMA node %d of %s has no cpulist under devices/system/node' % (numa, gpu.address))
        elif not isinstance(share, dict):
            reasons.append(share)
        share = share if isinstance(share, dict) else {'cpulist': None, 'vcpus': None, 'memory_mib': None}

        if self.require_nvme and nvme is None:
            reasons.append('no free NVMe controller shares a PCIe switch or root complex '
                           'with %s (require_nvme is true)' % gpu.address)

        vf = None
        if fabric_pf is not None:
            offset = fabric_pf.read_int('sriov_offset')
            stride = fabric_pf.read_int('sriov_stride')
            if offset is None or stride is None:
                reasons.append('fabric PF %s does not report sriov_offset/sriov_stride, so its '
                               'VF address cannot be known' % fabric_pf.address)
            else:
                try:
                    vf = vf_address(fabric_pf.address, offset, stride, 0)
                except PciError as exc:
                    reasons.append(str(exc))
        elif self.require_fabric:
            reasons.append('no free SR-IOV capable fabric PF (class %s) shares a PCIe switch or '
                           'root complex with %s (require_fabric is true)'
                           % ('/'.join('%04x' % c for c in self.fabric_classes), gpu.address))

        if console_use(gpu):
            reasons.append(console_use(gpu))

        bars = self._bar_mib(gpu, companions, nvme, fabric_pf, share['memory_mib'], reasons)

        try:
            slot = Slot(self.node_id, index).layout()
        except ContractError as exc:
            slot = {'slot_id': None, 'mac': None, 'ip': None}
            reasons.append(str(exc))

        return {
            'slot_index': index,
            'slot_id': slot['slot_id'],
            'gpu_address': gpu.address,
            'companions': companions,
            'numa_node': numa,
            'cpulist': share['cpulist'],
            'vcpus': share['vcpus'],
            'memory_mib': share['memory_mib'],
            'bar_mib': bars,
            'host_cpulist': host_cpulist,
            'nvme_address': nvme.address if nvme is not None else None,
            'fabric_pf_address': fabric_pf.address if fabric_pf is not None else None,
            'fabric_vf_pci_address': vf,
            'mac': slot['mac'],
            'ip': slot['ip'],
            'capacity_metadata': {
                'storage_ownership': 'slice',
                'fabric_claim_mode': 'per_slot_vf' if fabric_pf is not None else 'none',
                'fabric_vf_pci_address': vf,
            },
            'fingerprint': {
                'gpu': fingerprint(gpu),
                'companions': [fingerprint(self.bus.get(c)) for c in companions],
                'nvme': fingerprint(nvme),
                'fabric_pf': fingerprint(fabric_pf),
            },
            'eligible': not reasons,
            'reasons': reasons,
        }
