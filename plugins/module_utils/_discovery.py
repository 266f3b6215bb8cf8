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
import re

from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    CLASS_ETHERNET,
    CLASS_INFINIBAND,
    CLASS_NVME,
    GPU_CLASSES,
    PciBus,
    PciError,
    Sysfs,
    bdf_key,
    same_device,
    vf_address,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError,
    MAX_CPU,
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
    """:func:`kept_devices` of the fabric PFs, and for an entry without a fingerprint the PF whose first VF
    is its ``capacity_metadata.fabric_vf_pci_address`` (every entry names it)."""
    kept = kept_devices(pins, 'fabric_pf')
    first_vf = {}
    for pf in fabric_pfs:
        offset, stride = pf.read_int('sriov_offset'), pf.read_int('sriov_stride')
        try:
            first_vf[vf_address(pf.address, offset, stride, 0)] = pf.address
        except (PciError, TypeError):
            continue
    for address, (_index, entry) in pins.items():
        metadata = entry.get('capacity_metadata')
        vf = metadata.get('fabric_vf_pci_address') if isinstance(metadata, dict) else None
        if address not in kept and isinstance(vf, str) and vf in first_vf:
            kept[address] = first_vf[vf]
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
        self.gpu_vendors = [normalize_vendor(v) for v in gpu_vendors]
        self.fabric_classes = [normalize_class(c) for c in fabric_classes]
        self.require_nvme = require_nvme
        self.require_fabric = require_fabric
        self.bus = PciBus(self.sysfs)
        self.usage = HostUsage(self.sysfs, proc_root)
        self.warnings = []
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

    # -- the proposal -------------------------------------------------------

    def run(self):
        groups = self.bus.iommu_groups()
        iommu_enabled = bool(groups)
        numa_nodes = read_numa_nodes(self.sysfs)
        gpus, excluded, nvmes, fabric_pfs = self._classify()
        gpu_records = [self._gpu_record(g, groups, len(numa_nodes)) for g in gpus]
        index_of, gone = number_slots([gpu.address for gpu in gpus], self.pins)
        nvme_of = keep_pairs(gpus, nvmes, kept_devices(self.pins, 'nvme'))
        fabric_of = keep_pairs(gpus, fabric_pfs, kept_fabric_pfs(self.pins, fabric_pfs))
        slot_nodes = dict((index_of[record['address']], record['numa_node']) for record in gpu_records)
        absent = [self._absent(index, address, numa_nodes) for index, address in gone]
        slot_nodes.update((item['slot_index'], item['numa_node']) for item in absent)
        host_cpulist, shares = self._shares(numa_nodes, slot_nodes)

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
