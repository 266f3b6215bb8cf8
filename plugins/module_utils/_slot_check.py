# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: check ONE approved slot record against the host (read-only).

Allocate is handed the slot record the control plane reserved (or takes it from the node's
approved slot map) and must not discover the whole host to trust it. This reads only what
the record names: the slot's identity (its id, MAC and IP follow from node and index), each
of its devices (present, with the vendor/device/subsystem ids, serial and PCIe path of the
fingerprint taken at approval), the GPU's IOMMU group (exactly the GPU and its companions,
bridges aside), the IOMMU itself, what the host uses (a console GPU, mounted NVMe
namespaces) and the NUMA placement. Every mismatch is reported at once, naming the field
and the device; the result is the complete, checked record the allocation goes on with.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils._approval import (
    BLOCK_WIPE_POLICIES,
    WIPE_POLICIES,
    fingerprint_changes,
)
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import (
    IOMMU_OFF_REASON,
    bar_mib,
    console_use,
    fingerprint,
    group_intruder,
    read_node_memory_mib,
    read_siblings,
    read_numa_nodes,
    read_phys_bits,
)
from ansible_collections.gpuaas.slice.plugins.module_utils._host import HostUsage
from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    PciDevice,
    PciError,
    Sysfs,
    parse_bdf,
    same_device,
    vf_address,
)
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    CPULIST,
    ContractError,
    GpuaasError,
    LIMITS,
    MAX_CPU,
    NODE_ID,
    Slot,
    address_space_problem,
    check_int,
    format_cpulist,
    parse_cpulist,
    show,
)

# What a slot record may hold: the control plane's record (its slot table row) and an entry
# of the approved slot map (docs/approved-slot-map.md); anything else is a misspelt key.
RECORD_KEYS = ('slot_id', 'node_id', 'slot_index', 'gpu_address', 'companions', 'nvme_address',
               'fabric_pf_address', 'fabric_vf_index', 'fabric_vf_pci_address', 'numa_node', 'cpulist', 'vcpus', 'memory_mib',
               'host_cpulist', 'bar_mib', 'mac', 'ip',
               'destructive_wipe_policy', 'capacity_metadata', 'fingerprint', 'approved_by',
               'approved_at', 'note')
FINGERPRINT_ROLES = ('gpu', 'companions', 'nvme', 'fabric_pf')
# The slot's share of its NUMA node, as discovery computed it; a record approved before
# slots had shares lacks them and is refused (its cpulist was the whole node, every slot's).
SHARE_KEYS = ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist')
LEGACY_RECORD = ('%s: the record has none, so it was approved before each slot had its own CPU slice and memory '
                 'share (its cpulist would be the whole NUMA node, shared with every slot of the node): approve '
                 'the slot again from a fresh slot_discovery_info (with a control plane, post the approved map again; '
                 "without one, copy the slot's cpulist, vcpus, memory_mib and host_cpulist from discovery into "
                 'its map entry)')


class SlotCheckError(GpuaasError):
    """The slot record does not match this host; ``problems`` lists every mismatch."""

    def __init__(self, slot_id, problems):
        super(SlotCheckError, self).__init__(
            'slot %s does not match this host, nothing was changed:\n- %s'
            % (slot_id, '\n- '.join(problems)), problems=problems)


def pick_record(slot_id, node_id, record, approved_slots):
    """The record to check: ``record`` when given, else ``slot_id``'s entry of the approved map."""
    if record:
        return record
    for entry in approved_slots or []:
        if isinstance(entry, dict) and entry.get('slot_id') == slot_id:
            return entry
    known = [e.get('slot_id') for e in approved_slots or [] if isinstance(e, dict)]
    raise SlotCheckError(slot_id, ['slot %s is not an approved slot of node %s (approved: %s)'
                                   % (slot_id, node_id, ', '.join(str(k) for k in known) or 'none')])


def _address(value, field, problems):
    try:
        return parse_bdf(value)
    except PciError as exc:
        problems.append('%s: %s' % (field, exc))
        return None


class SlotCheck:
    """Check ``record`` for ``slot_id`` of node ``node_id`` against the sysfs at ``sysfs_root``."""

    def __init__(self, node_id, slot_id, record, sysfs_root='/sys', proc_root='/proc', vcpus=None, memory_mib=None):
        self.node_id = NODE_ID.check(node_id, 'node_id')
        # The allocation's shape, when given: it must fit the slot's share (the API's lower
        # bounds are not the node's: a test guest runs in 256 MiB).
        self.shape = dict((name, check_int(value, name, 1, LIMITS[name][1])) for name, value in
                          (('vcpus', vcpus), ('memory_mib', memory_mib)) if value is not None)
        self.slot_id = slot_id
        self.record = record
        self.sysfs = Sysfs(sysfs_root)
        self.usage = HostUsage(self.sysfs, proc_root)
        self.proc_root = proc_root
        self.problems = []

    def device(self, address):
        return PciDevice(self.sysfs, address)

    def run(self):
        """The checked record (see the module's RETURN), or SlotCheckError listing every problem."""
        record, problems = self.record, self.problems
        if not isinstance(record, dict):
            raise SlotCheckError(self.slot_id, ['the slot record must be a mapping, not %s' % show(record)])
        unknown = sorted(set(record) - set(RECORD_KEYS))
        if unknown:
            problems.append('the record has unknown keys %s (known: %s)' % (', '.join(unknown), ', '.join(RECORD_KEYS)))
        slot = self._identity(record)
        devices = self._devices(record)
        if slot is None or devices is None or problems:
            raise SlotCheckError(self.slot_id, problems)
        self._policy(record, devices)
        self._fingerprint(record['fingerprint'], devices)
        group = self._iommu_group(devices)
        self._host_use(devices)
        share = self._share(record, devices['gpu'])
        if not problems:   # (a missing device is reported once, not again for its BARs)
            share['bar_mib'] = self._bars(record, devices, share.get('memory_mib'))
        if problems:
            raise SlotCheckError(self.slot_id, problems)
        result = slot.layout()
        result.update({
            'gpu_address': devices['gpu'], 'companions': devices['companions'],
            'nvme_address': devices['nvme'], 'fabric_pf_address': devices['fabric_pf'],
            'fabric_vf_index': devices['fabric_vf_index'],
            'fabric_vf_pci_address': devices['fabric_vf'], 'iommu_group': group, 'destructive_wipe_policy': record['destructive_wipe_policy'],
            'fingerprint': record['fingerprint'],
            # What goes to the VM: the GPU (its group's other functions move with it), the NVMe, the VF.
            'devices': [a for a in (devices['gpu'], devices['nvme'], devices['fabric_vf']) if a],
        })
        result.update(share)
        return result

    def _bars(self, record, devices, share_mib):
        """The slot's bar_mib from its devices' resource files (a record's own must agree), and a problem
        when the allocation's memory (else the slot's share) plus them cannot fit a guest on this CPU."""
        try:
            bars = bar_mib(self.sysfs, devices['gpu'], devices['companions'], devices['nvme'], devices['fabric_pf'])
        except ContractError as exc:
            self.problems.append('bar_mib: %s' % exc)
            return None
        if record.get('bar_mib') is not None and record['bar_mib'] != bars:
            self.problems.append('bar_mib: the record says %s, but the devices\' 64-bit BARs add up to %d MiB'
                                 % (show(record['bar_mib']), bars))
        memory = self.shape.get('memory_mib', share_mib)
        if memory is not None:
            try:
                problem = address_space_problem(memory, bars, read_phys_bits(self.proc_root))
            except ContractError as exc:
                problem = str(exc)
            if problem:
                self.problems.append('shape: %s' % problem)
        return bars

    # -- identity ------------------------------------------------------------------------------

    def _identity(self, record):
        problems = self.problems
        if record.get('slot_id', self.slot_id) != self.slot_id:
            problems.append('slot_id: the record is for %s, not %s' % (show(record.get('slot_id')), self.slot_id))
        try:
            slot = Slot.parse(self.slot_id)
        except ContractError as exc:
            problems.append(str(exc))
            return None
        if slot.node_id != self.node_id:
            problems.append('slot_id: %s names node %s, but this is node %s' % (self.slot_id, show(slot.node_id), self.node_id))
        if record.get('node_id', self.node_id) != self.node_id:
            problems.append('node_id: the record is for node %s, but this is node %s' % (show(record['node_id']), self.node_id))
        if 'slot_index' in record and record['slot_index'] != slot.index:
            problems.append('slot_index: the record says %s, but %s is slot %d'
                            % (show(record['slot_index']), self.slot_id, slot.index))
        for field in ('mac', 'ip'):
            if field in record and record[field] != getattr(slot, field):
                problems.append('%s: the record says %s, but slot %s has %s'
                                % (field, show(record[field]), self.slot_id, getattr(slot, field)))
        return slot

    # -- the devices the record names ------------------------------------------------------------

    def _devices(self, record):
        """{'gpu', 'companions', 'nvme', 'fabric_pf', 'fabric_vf'}: from the record, else its fingerprint."""
        problems = self.problems
        recorded = record.get('fingerprint')
        if not isinstance(recorded, dict) or not isinstance(recorded.get('gpu'), dict):
            problems.append('fingerprint: the record has none, so its devices cannot be known without '
                            "discovering the whole host: approve the slot with discovery's fingerprint "
                            '(docs/approved-slot-map.md)')
            return None
        named = {}
        for role in FINGERPRINT_ROLES:
            value = recorded.get(role)
            if role == 'companions':
                named[role] = [c.get('address') if isinstance(c, dict) else c for c in value or []]
            else:
                named[role] = value.get('address') if isinstance(value, dict) else None
        fields = {'gpu': 'gpu_address', 'companions': 'companions', 'nvme': 'nvme_address',
                  'fabric_pf': 'fabric_pf_address'}
        devices = {}
        for role, field in fields.items():
            value = record.get(field, named[role])
            if value != named[role]:
                problems.append('%s: the record says %s, but its fingerprint names %s'
                                % (field, show(value), show(named[role])))
            if role == 'companions':
                devices[role] = [_address(a, 'companions', problems) for a in value or []]
            else:
                devices[role] = _address(value, field, problems) if value else None
        vf = record.get('fabric_vf_pci_address')
        metadata = record.get('capacity_metadata')
        if isinstance(metadata, dict) and vf is None:
            vf = metadata.get('fabric_vf_pci_address')
        devices['fabric_vf'] = _address(vf, 'fabric_vf_pci_address', problems) if vf else None
        devices['fabric_vf_index'] = None
        if record.get('fabric_vf_index') is not None:
            try:
                devices['fabric_vf_index'] = check_int(record['fabric_vf_index'], 'fabric_vf_index', 0, 0xfffe)
            except ContractError as exc:
                problems.append(str(exc))
        if not devices['gpu']:
            problems.append('gpu_address: the record names no GPU')
        return devices

    def _policy(self, record, devices):
        policy = record.get('destructive_wipe_policy')
        if policy not in WIPE_POLICIES:
            self.problems.append('destructive_wipe_policy: %s is not one of %s' % (show(policy), ', '.join(WIPE_POLICIES)))
        elif policy in BLOCK_WIPE_POLICIES and not devices['nvme']:
            self.problems.append("destructive_wipe_policy: %s needs the slot's own NVMe drive; the record "
                                 'names none' % policy)

    def _fingerprint(self, recorded, devices):
        """Every fingerprinted device present, with the ids, serial and PCIe path taken at approval."""
        now, missing = {}, False
        for role in FINGERPRINT_ROLES:
            addresses = devices[role] if role == 'companions' else [devices[role]]
            prints = []
            for address in addresses:
                if address is not None and not self.sysfs.exists('bus/pci/devices/' + address):
                    self.problems.append('%s %s: no such PCI device on this host (removed, or moved to another '
                                         'address): inspect the host, then re-approve' % (role, address))
                    missing = True
                prints.append(fingerprint(self.device(address)) if address else None)
            now[role] = prints if role == 'companions' else prints[0]
        recorded = dict((role, recorded.get(role)) for role in FINGERPRINT_ROLES)
        recorded['companions'] = recorded['companions'] or []
        if not missing and now != recorded:
            changes = fingerprint_changes(recorded, now)
            self.problems.append('fingerprint: the devices no longer match the fingerprint taken at approval '
                                 '(hardware changed: %s): inspect the host, then re-approve'
                                 % ('; '.join(changes) or 'the fingerprint differs'))
        pf, vf = devices['fabric_pf'], devices['fabric_vf']
        if pf and now['fabric_pf']:
            self._fabric_vf(pf, vf, devices)

    def _fabric_vf(self, pf, vf, devices):
        """The record's VF must be VF ``fabric_vf_index`` of its PF (any of the PF's VFs without an index)."""
        offset, stride, total = (self.device(pf).read_int(name) for name in ('sriov_offset', 'sriov_stride', 'sriov_totalvfs'))
        index = devices['fabric_vf_index']
        if None in (offset, stride):
            self.problems.append('fabric_vf_pci_address: the record says %s, but fabric PF %s does not report '
                                 'sriov_offset/sriov_stride, so its VF addresses cannot be known' % (show(vf), pf))
            return
        addresses = {}
        for number in ([index] if index is not None else range(total or 0)):
            try:
                addresses[number] = vf_address(pf, offset, stride, number)
            except PciError:
                break
        if index is not None and index >= (total or 0):
            self.problems.append('fabric_vf_index: the record says %d, but fabric PF %s offers %d VFs (sriov_totalvfs)'
                                 % (index, pf, total or 0))
        elif index is not None and vf != addresses.get(index):
            self.problems.append('fabric_vf_pci_address: the record says %s, but VF %d of fabric PF %s is %s'
                                 % (show(vf), index, pf, addresses.get(index) or 'beyond bus ff'))
        elif index is None and vf not in addresses.values():
            self.problems.append('fabric_vf_pci_address: the record says %s, which is none of the %d VFs of fabric PF '
                                 '%s (VF 0 is %s)' % (show(vf), total or 0, pf, addresses.get(0) or 'beyond bus ff'))
        else:
            devices['fabric_vf_index'] = next(number for number, address in addresses.items() if address == vf)

    # -- isolation and host use ----------------------------------------------------------------------

    def _iommu_group(self, devices):
        """The GPU's IOMMU group: it must hold exactly the GPU and its companions (bridges aside)."""
        gpu = self.device(devices['gpu'])
        group = gpu.iommu_group
        if group is None:
            if not self.sysfs.listdir('kernel/iommu_groups'):
                self.problems.append(IOMMU_OFF_REASON)
            else:
                self.problems.append('gpu %s has no IOMMU group, so it cannot be isolated' % gpu.address)
            return None
        members = self.sysfs.listdir('kernel/iommu_groups/%s/devices' % group)
        companions = devices['companions']
        for member in members:
            if member == gpu.address or member in companions:
                continue
            device = self.device(member)
            if device.is_bridge:
                continue
            if same_device(member, gpu.address):
                self.problems.append('companions: IOMMU group %s also holds %s, a function of the GPU the '
                                     'record does not name: re-approve' % (group, device.describe()))
            else:
                self.problems.append(group_intruder(group, device))
        for companion in companions:
            if companion not in members:
                self.problems.append('companions: %s is not in IOMMU group %s of gpu %s'
                                     % (companion, group, gpu.address))
        return group

    def _host_use(self, devices):
        """A device the host uses is refused, as discovery refuses it."""
        gpu = self.device(devices['gpu'])
        if gpu.read('boot_vga') == '1':
            self.problems.append('gpu %s is the host console (boot_vga = 1)' % gpu.address)
        elif console_use(gpu):
            self.problems.append('gpu ' + console_use(gpu))
        if devices['nvme']:
            usage = self.usage.nvme_usage(self.device(devices['nvme']))
            if usage:
                self.problems.append('nvme %s is host storage: %s' % (devices['nvme'], usage))

    def _share(self, record, gpu_address):
        """The GPU's NUMA node and the slot's share of it, checked against the node; then the shape against the share."""
        nodes = read_numa_nodes(self.sysfs)
        numa = self.device(gpu_address).numa_node
        if (numa is None or numa < 0) and len(nodes) <= 1:
            numa = 0
        if numa is None or numa < 0:
            self.problems.append('numa_node: gpu %s does not report its NUMA node on a host with %d nodes'
                                 % (gpu_address, len(nodes)))
            return {}
        if 'numa_node' in record and record['numa_node'] != numa:
            self.problems.append('numa_node: the record says %s, but gpu %s is on node %d'
                                 % (show(record['numa_node']), gpu_address, numa))
        missing = [key for key in SHARE_KEYS if record.get(key) is None]
        if missing:
            self.problems.append(LEGACY_RECORD % ', '.join(missing))
            return {}
        what = 'NUMA node %d' % numa
        try:
            node_cpus = set(parse_cpulist(nodes.get(str(numa)) or '', '%s cpulist' % what))
            cpus = set(parse_cpulist(CPULIST.check(record['cpulist'], 'cpulist'), 'cpulist'))
            host = set(parse_cpulist(CPULIST.check(record['host_cpulist'], 'host_cpulist'), 'host_cpulist'))
            vcpus = check_int(record['vcpus'], 'vcpus', 1, MAX_CPU + 1)
            memory = check_int(record['memory_mib'], 'memory_mib', 1024, 2 ** 40)
            # Only the slice's own CPUs are read: a sibling thread outside it splits a core.
            left_out = (set(sibling for cpu in cpus for sibling in read_siblings(self.sysfs, cpu)) & node_cpus) - cpus
            total = read_node_memory_mib(self.sysfs, numa)
        except ContractError as exc:
            self.problems.append(str(exc))
            return {}
        if not cpus <= node_cpus:
            self.problems.append('cpulist: the record says %s, but CPUs %s are not on NUMA node %d (CPUs %s)'
                                 % (show(record['cpulist']), format_cpulist(cpus - node_cpus), numa, nodes.get(str(numa))))
        if left_out:
            self.problems.append('cpulist: %s leaves out CPUs %s, sibling threads of its own: a slot owns whole cores'
                                 % (show(record['cpulist']), format_cpulist(left_out)))
        if cpus & host:
            self.problems.append('host_cpulist: %s shares CPUs %s with the slot\'s cpulist %s'
                                 % (show(record['host_cpulist']), format_cpulist(cpus & host), record['cpulist']))
        if vcpus != len(cpus):
            self.problems.append('vcpus: the record says %d, but its cpulist %s holds %d CPUs' % (vcpus, record['cpulist'], len(cpus)))
        if memory > total:
            self.problems.append('memory_mib: the record says %d, but NUMA node %d has %d MiB in all' % (memory, numa, total))
        share = {'numa_node': numa, 'cpulist': record['cpulist'], 'vcpus': vcpus, 'memory_mib': memory,
                 'host_cpulist': record['host_cpulist']}
        too_big = ['%s %d (the slot has %d)' % (name, value, share[name]) for name, value in sorted(self.shape.items())
                   if value > share[name]]
        if too_big:
            self.problems.append("shape: the allocation's %s does not fit slot %s's share of NUMA node %d (%d vCPUs, "
                                 'CPUs %s; %d MiB): ask for at most that, or another slot'
                                 % (' and '.join(too_big), self.slot_id, numa, vcpus, record['cpulist'], memory))
        return share
