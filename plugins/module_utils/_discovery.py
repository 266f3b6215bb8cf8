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


def pair_fabric_vfs(gpus, pfs, numa_of):
    """Each GPU's fabric PF and VF: {gpu address: {'pf', 'vf_index', 'vf_address', 'reason'}}.

    ``gpus`` are ``(slot_index, gpu)`` pairs, ``pfs`` the SR-IOV fabric PFs and ``numa_of`` gives
    a device's NUMA node (None or -1 when unknown). A PF goes to one GPU while there are PFs to
    spare, nearest first (:func:`_fabric_rank`: switch, then root complex, then NUMA node; ties
    by address), as each GPU had its own PF before PFs were shared. A GPU left without one then
    shares its nearest PF (the least taken among equals). The k-th slot by ``slot_index`` paired
    with a PF gets its VF k, at the address the PF's ``sriov_offset``/``sriov_stride`` give VF k;
    ``reason`` says why a slot cannot have it (no offset/stride, more slots than
    ``sriov_totalvfs``), and then ``vf_index`` and ``vf_address`` are None. A GPU with no PF near it is absent.
    """
    ranks = {}
    for _index, gpu in gpus:
        for pf in pfs:
            rank = _fabric_rank(gpu, numa_of(gpu), pf, numa_of(pf))
            if rank is not None:
                ranks[gpu.address, pf.address] = rank
    by_address = dict((pf.address, pf) for pf in pfs)
    owner = {}
    taken = set()
    nearest_first = sorted(ranks, key=lambda pair: (-ranks[pair], bdf_key(pair[0]), bdf_key(pair[1])))
    for gpu, pf in nearest_first:
        if gpu not in owner and pf not in taken:
            owner[gpu] = pf
            taken.add(pf)
    load = dict((pf.address, list(owner.values()).count(pf.address)) for pf in pfs)
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
        members = sorted(index for index, gpu in gpus if owner.get(gpu.address) == address)
        offset, stride = pf.read_int('sriov_offset'), pf.read_int('sriov_stride')
        for vf_index, slot_index in enumerate(members):
            gpu = next(g for i, g in gpus if i == slot_index)
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

    # -- the proposal -------------------------------------------------------

    def run(self):
        groups = self.bus.iommu_groups()
        iommu_enabled = bool(groups)
        numa_nodes = read_numa_nodes(self.sysfs)
        gpus, excluded, nvmes, fabric_pfs = self._classify()
        gpu_records = [self._gpu_record(g, groups, len(numa_nodes)) for g in gpus]
        nvme_of = _pair(gpus, nvmes)
        fabric_of = pair_fabric_vfs(list(enumerate(gpus)), fabric_pfs,
                                    lambda device: self._numa(device, len(numa_nodes)))
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
