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

import itertools
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
    PCI_ADDRESS,
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


def _fabric_rank(gpu, gpu_numa, pf, pf_numa):
    """How near fabric PF ``pf`` is to ``gpu``, or None when it is not near enough to pair.

    The depth of their deepest common upstream bridge (a shared PCIe switch beats a shared root
    complex, which is 1); 0 for a PF under another PCI root on the GPU's NUMA node.
    """
    depth = _common_depth(gpu.pcie_path[:-1], pf.pcie_path[:-1])
    if depth:
        return depth
    return 0 if gpu_numa is not None and gpu_numa >= 0 and gpu_numa == pf_numa else None


def fabric_vf_reason(pf, offset, stride, total, index):
    """Why slot VF ``index`` of fabric PF ``pf`` cannot be a slot's; None when it can."""
    if offset is None or stride is None:
        return ('fabric PF %s does not report sriov_offset/sriov_stride, so its VF address '
                'cannot be known' % pf)
    if index >= (total or 0):
        return ('fabric PF %s offers %d VFs (sriov_totalvfs) and the %d slots before this one on it '
                'take them all: this slot would need VF %d' % (pf, total or 0, index, index))
    return None


def pair_fabric_vfs(gpus, pfs, numa_of, kept=None, reserved=()):
    """Each GPU's fabric PF and VF: {gpu address: {'pf', 'vf_index', 'vf_address', 'reason'}}.

    ``gpus`` are ``(slot_index, gpu)`` pairs, ``pfs`` the SR-IOV fabric PFs and ``numa_of`` gives
    a device's NUMA node (None or -1 when unknown). A PF goes to one GPU while there are PFs to
    spare, nearest first (:func:`_fabric_rank`: switch, then root complex, then NUMA node; ties
    by address), as each GPU had its own PF before PFs were shared. A GPU left without one then
    shares its nearest PF (the least taken among equals). The k-th slot by ``slot_index`` paired
    with a PF gets its VF k, at the address the PF's ``sriov_offset``/``sriov_stride`` give VF k;
    ``reason`` says why a slot cannot have it (no offset/stride, more slots than
    ``sriov_totalvfs``), and then ``vf_index`` and ``vf_address`` are None. A GPU with no PF near it is absent.

    An approved slot keeps its PF: ``kept`` maps such a GPU's address to its PF's, and
    ``reserved`` lists ``(slot_index, PF address)`` of approved slots whose GPU is gone, which keep
    their place among the PF's slots, so no other slot's VF moves while they are away.
    """
    ranks = {}
    for _index, gpu in gpus:
        for pf in pfs:
            rank = _fabric_rank(gpu, numa_of(gpu), pf, numa_of(pf))
            if rank is not None:
                ranks[gpu.address, pf.address] = rank
    by_address = dict((pf.address, pf) for pf in pfs)
    here = set(gpu.address for _index, gpu in gpus)
    owner = dict((gpu, pf) for gpu, pf in (kept or {}).items() if gpu in here and pf in by_address)
    reserved = [(index, pf) for index, pf in reserved if pf in by_address]
    taken = set(owner.values()) | set(pf for _index, pf in reserved)
    nearest_first = sorted(ranks, key=lambda pair: (-ranks[pair], bdf_key(pair[0]), bdf_key(pair[1])))
    for gpu, pf in nearest_first:
        if gpu not in owner and pf not in taken:
            owner[gpu] = pf
            taken.add(pf)
    load = dict((pf.address, list(owner.values()).count(pf.address)
                 + sum(1 for _index, held in reserved if held == pf.address)) for pf in pfs)
    totals = dict((pf.address, pf.read_int('sriov_totalvfs') or 0) for pf in pfs)
    for _index, gpu in sorted(gpus, key=lambda item: item[0]):
        near = [pf for (address, pf), _r in ranks.items() if address == gpu.address]
        if gpu.address in owner or not near:
            continue
        best = min(near, key=lambda pf: (-ranks[gpu.address, pf], load[pf] >= totals[pf], load[pf], bdf_key(pf)))
        owner[gpu.address] = best
        load[best] += 1
    paired = {}
    for address, pf in by_address.items():
        members = sorted([index for index, gpu in gpus if owner.get(gpu.address) == address]
                         + [index for index, held in reserved if held == address])
        offset, stride = pf.read_int('sriov_offset'), pf.read_int('sriov_stride')
        for vf_index, slot_index in enumerate(members):
            gpu = next((g for i, g in gpus if i == slot_index), None)
            if gpu is None:     # an absent slot's VF, kept for it
                continue
            reason = fabric_vf_reason(address, offset, stride, totals[address], vf_index)
            vf = None
            if reason is None:
                try:
                    vf = vf_address(address, offset, stride, vf_index)
                except PciError as exc:
                    reason = str(exc)
            paired[gpu.address] = {'pf': pf, 'vf_index': None if reason else vf_index, 'vf_address': vf,
                                   'reason': reason}
    return paired


def vf_counts(slots):
    """[{'address': PF, 'num_vfs': n}]: the VFs each fabric PF needs for ``slots`` (approved records).

    A PF needs one VF more than the highest ``fabric_vf_index`` of the slots paired with it, so
    every slot's VF exists; discovery never gives an index beyond the PF's ``sriov_totalvfs``.
    """
    need = {}
    for slot in slots or []:
        pf, index = slot.get('fabric_pf_address'), slot.get('fabric_vf_index')
        if pf and index is not None:
            need[pf] = max(need.get(pf, 0), check_int(index, 'fabric_vf_index', 0, 0xfffe) + 1)
    return [{'address': pf, 'num_vfs': need[pf]} for pf in sorted(need, key=bdf_key)]


# -- stable slot identity: an approved slot keeps its index with its GPU's address -------------

def approved_pins(node_id, approved_slots, warnings):
    """{gpu_address: (slot index, map entry)}: where the approved slot map puts each approved GPU.

    An entry that cannot say (not a mapping, a slot id that is not one of this node's, a
    gpu_address that is not a PCI address, an index or an address another entry holds) pins
    nothing and is named in ``warnings``; approval refuses the map for it anyway.
    """
    pins, taken = {}, set()
    for position, entry in enumerate(approved_slots):
        where = 'approved_slots[%d]' % position
        try:
            if not isinstance(entry, dict):
                raise ContractError('%s is not a mapping' % where)
            slot = Slot.parse(entry.get('slot_id'), where + '.slot_id')
            address = PCI_ADDRESS.check(entry.get('gpu_address'), where + '.gpu_address')
            if slot.node_id != node_id:
                raise ContractError('%s.slot_id %s is not a slot of node %s' % (where, show(slot.slot_id), node_id))
            if slot.index in taken or address in pins:
                raise ContractError('%s: slot %s or GPU %s is in the map twice' % (where, slot.slot_id, address))
        except ContractError as exc:
            warnings.append('%s keeps no slot index: %s' % (where, exc))
            continue
        pins[address] = (slot.index, entry)
        taken.add(slot.index)
    return pins


def number_slots(addresses, pins):
    """({GPU address: slot index}, [(index, address) of approved slots whose GPU is gone]).

    A GPU the map approved keeps its slot's index, so a GPU that vanishes renumbers nothing;
    every other GPU, in address order, gets the lowest index no approved slot holds. Without a
    map that is the address order.
    """
    index_of = dict((address, pins[address][0]) for address in addresses if address in pins)
    held = set(index for index, _entry in pins.values())
    free = (index for index in itertools.count() if index not in held)
    for address in addresses:
        if address not in index_of:
            index_of[address] = next(free)
    return index_of, sorted((index, address) for address, (index, _entry) in pins.items() if address not in index_of)


def kept_devices(pins, role):
    """{GPU address: the address of its approved slot's ``role`` device}, from the map's fingerprints."""
    kept = {}
    for address, (_index, entry) in pins.items():
        fingerprint = entry.get('fingerprint')
        device = fingerprint.get(role) if isinstance(fingerprint, dict) else None
        if isinstance(device, dict) and PCI_ADDRESS.matches(device.get('address')):
            kept[address] = device['address']
    return kept


def kept_fabric_pfs(pins, fabric_pfs):
    """:func:`kept_devices` of the fabric PFs, and for an entry without a fingerprint the PF one of whose
    VFs is its ``capacity_metadata.fabric_vf_pci_address`` (every entry names it)."""
    kept = kept_devices(pins, 'fabric_pf')
    pf_of_vf = {}
    for pf in fabric_pfs:
        offset, stride = pf.read_int('sriov_offset'), pf.read_int('sriov_stride')
        for number in range(min(pf.read_int('sriov_totalvfs') or 0, 0xffff)):
            try:
                pf_of_vf[vf_address(pf.address, offset, stride, number)] = pf.address
            except (PciError, TypeError):
                break
    for address, (_index, entry) in pins.items():
        metadata = entry.get('capacity_metadata')
        vf = metadata.get('fabric_vf_pci_address') if isinstance(metadata, dict) else None
        if address not in kept and isinstance(vf, str) and vf in pf_of_vf:
            kept[address] = pf_of_vf[vf]
    return kept


def keep_pairs(gpus, candidates, kept):
    """:func:`_pair`, except that an approved slot keeps the device its approval recorded (``kept``).

    A kept device that is still there goes to its GPU when the GPU is there, and to no GPU when
    it is gone: an absent slot's NVMe drive and fabric PF stay its own until it returns or the
    map changes, so no other slot's pairing moves. The rest are paired by :func:`_pair`.
    """
    present = set(gpu.address for gpu in gpus)
    by_address = dict((cand.address, cand) for cand in candidates)
    pairs, held = {}, set()
    for gpu_address, address in sorted(kept.items()):
        if address in by_address and address not in held:
            held.add(address)
            if gpu_address in present:
                pairs[gpu_address] = by_address[address]
    pairs.update(_pair([gpu for gpu in gpus if gpu.address not in pairs],
                       [cand for cand in candidates if cand.address not in held]))
    return pairs


class Discovery:
    """Read a host's sysfs and propose its slots."""

    def __init__(self, node_id, sysfs_root='/sys', proc_root='/proc',
                 gpu_vendors=DEFAULT_GPU_VENDORS, require_nvme=True, require_fabric=True,
                 fabric_classes=DEFAULT_FABRIC_CLASSES, host_reserved_cores=DEFAULT_HOST_RESERVED_CORES,
                 host_reserved_memory_mib=DEFAULT_HOST_RESERVED_MEMORY_MIB, approved_slots=None):
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
        # The host CPU's physical address bits (or why they cannot be known), read once per run.
        self.phys_bits = None
        if approved_slots is not None and not isinstance(approved_slots, list):
            raise ContractError('approved_slots must be a list (the approved slot map), not %s' % show(approved_slots))
        self.pins = approved_pins(self.node_id, approved_slots or [], self.warnings)

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

    @staticmethod
    def _numa(device, node_count):
        """A device's NUMA node: the only one on a one-node host, -1 when unknown on more."""
        numa = device.numa_node
        numa = -1 if numa is None else numa
        return 0 if numa < 0 and node_count <= 1 else numa

    def _gpu_record(self, gpu, groups, node_count):
        if gpu.numa_node is None:
            self.warnings.append('%s has no readable numa_node attribute' % gpu.address)
        numa = self._numa(gpu, node_count)
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

    def _shares(self, numa_nodes, slot_nodes):
        """The host's CPUs, and per slot index its share (cpulist, vcpus, memory_mib) or why it has none.

        ``slot_nodes`` maps each slot index to its NUMA node. Every slot discovery proposes on a node
        counts, eligible or not, and so does an approved slot whose GPU is gone (absent), so a slot's
        share does not move when another slot of the node becomes eligible or loses its GPU. The
        node's slices are dealt out in slot index order.
        """
        host, shares = [], {}
        for node, cpulist in numa_nodes.items():
            what = 'NUMA node %s' % node
            members = sorted(i for i, numa in slot_nodes.items() if str(numa) == node)
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
        if isinstance(self.phys_bits, ContractError):
            problem = memory_mib is not None and str(self.phys_bits)
        else:
            problem = memory_mib is not None and address_space_problem(memory_mib, bars, self.phys_bits)
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
        index_of, gone = number_slots([gpu.address for gpu in gpus], self.pins)
        nvme_of = keep_pairs(gpus, nvmes, kept_devices(self.pins, 'nvme'))
        kept_pf = kept_fabric_pfs(self.pins, fabric_pfs)
        fabric_of = pair_fabric_vfs([(index_of[gpu.address], gpu) for gpu in gpus], fabric_pfs,
                                    lambda device: self._numa(device, len(numa_nodes)), kept=kept_pf,
                                    reserved=[(index, kept_pf[address]) for index, address in gone if address in kept_pf])
        slot_nodes = dict((index_of[record['address']], record['numa_node']) for record in gpu_records)
        absent = [self._absent(index, address, numa_nodes) for index, address in gone]
        slot_nodes.update((item['slot_index'], item['numa_node']) for item in absent)
        host_cpulist, shares = self._shares(numa_nodes, slot_nodes)
        try:
            self.phys_bits = read_phys_bits(self.proc_root)
        except ContractError as exc:     # every slot with a memory share says so (_bar_mib)
            self.phys_bits = exc

        slots = []
        for gpu, record in sorted(zip(gpus, gpu_records), key=lambda pair: index_of[pair[0].address]):
            index = index_of[gpu.address]
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
            'absent': absent,
        }

    def _absent(self, index, address, numa_nodes):
        """An approved slot whose GPU is not on the bus: its index, address, NUMA node and why."""
        entry = self.pins[address][1]
        numa = self._absent_numa_node(entry, numa_nodes)
        reason = ('GPU %s of approved slot %s is not on the PCI bus (it fell off the bus, e.g. Xid 79, or was '
                  'removed): the slot is absent until the GPU is back at this address'
                  % (address, Slot(self.node_id, index).slot_id))
        if numa is None:
            reason += ('; its NUMA node cannot be known (the map has no fingerprint pcie_path or cpulist for it), '
                       'so the shares of the slots that share its node may move')
        return {'slot_index': index, 'slot_id': Slot(self.node_id, index).slot_id, 'gpu_address': address,
                'numa_node': -1 if numa is None else numa, 'reason': reason}

    def _absent_numa_node(self, entry, numa_nodes):
        """The NUMA node of a GPU that is gone: the nearest bridge above it that is still there (its approved
        fingerprint's pcie_path), else the node whose CPUs hold the slot's approved cpulist; else None."""
        gpu = (entry.get('fingerprint') or {}).get('gpu') if isinstance(entry.get('fingerprint'), dict) else None
        path = gpu.get('pcie_path') if isinstance(gpu, dict) else None
        for address in reversed(path.split('/')[1:-1] if isinstance(path, str) else []):
            bridge = self.bus.get(address)
            numa = bridge.numa_node if bridge is not None else None
            if numa is not None and (numa >= 0 or len(numa_nodes) <= 1):
                return max(numa, 0)
            if numa is not None:
                break
        try:
            cpus = set(parse_cpulist(entry.get('cpulist') or '', 'cpulist'))
            return next(int(node) for node, cpulist in numa_nodes.items()
                        if cpus and cpus <= set(parse_cpulist(cpulist, 'cpulist')))
        except (ContractError, StopIteration):
            return None

    def _slot(self, index, gpu, record, groups, iommu_enabled, node_count, share, host_cpulist, nvme, fabric):
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

        fabric = fabric or {'pf': None, 'vf_index': None, 'vf_address': None, 'reason': None}
        fabric_pf, vf = fabric['pf'], fabric['vf_address']
        if fabric['reason']:
            reasons.append(fabric['reason'])
        elif fabric_pf is None and self.require_fabric:
            reasons.append('no SR-IOV capable fabric PF (class %s) shares a PCIe switch, root complex or '
                           'NUMA node with %s (require_fabric is true)'
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
            'fabric_vf_index': fabric['vf_index'],
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
