# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: validate an operator's approved slot map against discovery.

The approved slot map is the operator's decision (see docs/approved-slot-map.md).
A mistake in the map is all or nothing: every problem is reported at once, and a map with
any problem approves no slot. A fault of the hardware is one slot's: an approved slot
whose GPU is gone from the bus, or whose devices no longer match the fingerprint taken at
approval, is *absent* (reported with the reason, not approved) and the others stay approved.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    HEX_ID,
    MAX_CPU,
    NODE_ID,
    NOTE,
    PCI_ADDRESS,
    SLOT_ID,
    ContractError,
    Slot,
    check_int,
    has_control_chars,
    parse_cpulist,
    show,
)

WIPE_POLICIES = ('nvme-format', 'blkdiscard', 'zero')
# Policies that need a block device of the slot's own.
BLOCK_WIPE_POLICIES = ('nvme-format', 'blkdiscard')

REQUIRED_KEYS = ('slot_id', 'gpu_address', 'destructive_wipe_policy', 'capacity_metadata')
# The slot's share of its NUMA node: an entry may carry it from discovery (allocating from the
# map needs it, see slot_check_info), and then it must still be discovery's.
SHARE_KEYS = ('cpulist', 'vcpus', 'memory_mib', 'host_cpulist')
# Which VF of its fabric PF the slot has (discovery's): optional, and then it must still be discovery's.
VF_KEYS = ('fabric_vf_index',)
OPTIONAL_KEYS = ('approved_by', 'approved_at', 'fingerprint', 'note', 'bar_mib') + SHARE_KEYS + VF_KEYS
CAPACITY_KEYS = ('storage_ownership', 'fabric_claim_mode', 'fabric_vf_pci_address')


# The highest VF index a PF may have (sriov_totalvfs is a 16-bit number).
MAX_VF_INDEX = 0xfffe
# The highest NUMA node number a discovery may report (the kernel's MAX_NUMNODES is 1024).
MAX_NUMA_NODE = 1023
ADDRESS_KEYS = ('gpu_address', 'nvme_address', 'fabric_pf_address', 'fabric_vf_pci_address')
FINGERPRINT_ROLES = ('gpu', 'companions', 'nvme', 'fabric_pf')
ID_KEYS = ('vendor_id', 'device_id', 'subsystem_vendor_id', 'subsystem_device_id')


class ApprovalError(ContractError):
    """The approved slot map cannot be accepted; ``problems`` lists every reason (values quoted)."""

    def __init__(self, problems):
        self.problems = problems
        super(ApprovalError, self).__init__(
            'the approved slot map was refused, no slot is approved:\n- ' + '\n- '.join(problems),
            problems=problems)


def _check_discovery(discovery):
    if not isinstance(discovery, dict) or not isinstance(discovery.get('slots'), list) \
            or 'node_id' not in discovery or discovery.get('approval_required') is not True:
        raise ApprovalError(['discovery is not a gpuaas.slice.slot_discovery_info result '
                             '(register the slot_discovery_info task and pass it whole)'])
    try:
        node_id = NODE_ID.check(discovery['node_id'], 'discovery.node_id')
    except ContractError as exc:
        raise ApprovalError([str(exc)])
    problems, vf_of = [], {}
    for position, slot in enumerate(discovery['slots']):
        where = 'discovery.slots[%d]' % position
        problems.extend(_slot_problems(node_id, slot, where))
        vf = slot.get('fabric_vf_pci_address') if isinstance(slot, dict) else None
        if vf and vf in vf_of:
            problems.append('%s.fabric_vf_pci_address %s is also %s\'s: each slot has a VF of its own'
                            % (where, show(vf), vf_of[vf]))
        if vf:
            vf_of.setdefault(vf, where)
    absent = discovery.get('absent', [])
    if not isinstance(absent, list):
        problems.append('discovery.absent %s is not a list' % show(absent))
    else:
        taken = set((slot.get('slot_index'), slot.get('gpu_address')) for slot in discovery['slots']
                    if isinstance(slot, dict))
        for position, item in enumerate(absent):
            problems.extend(_absent_problems(node_id, item, 'discovery.absent[%d]' % position, taken))
    if problems:
        raise ApprovalError(problems)


def _absent_problems(node_id, item, where, taken):
    """What no discovery could have written about an approved slot whose GPU is gone."""
    if not isinstance(item, dict):
        return ['%s must be a mapping, not %s' % (where, show(item))]
    try:
        index = check_int(item.get('slot_index'), where + '.slot_index', 0, 10 ** 6)
        slot_id = Slot(node_id, index).slot_id
    except ContractError as exc:
        return [str(exc)]
    problems = []
    if item.get('slot_id') != slot_id:
        problems.append('%s.slot_id is %s, but slot %d of node %s is %s' % (where, show(item.get('slot_id')), index,
                                                                            node_id, slot_id))
    if not PCI_ADDRESS.matches(item.get('gpu_address')):
        problems.append('%s.gpu_address %s is not a PCI address' % (where, show(item.get('gpu_address'))))
    if any(index == other_index or item.get('gpu_address') == address for other_index, address in taken):
        problems.append('%s: slot %s or GPU %s is also a present slot' % (where, slot_id, show(item.get('gpu_address'))))
    numa = item.get('numa_node')
    if isinstance(numa, bool) or not isinstance(numa, int) or not -1 <= numa <= MAX_NUMA_NODE:
        problems.append('%s.numa_node %s is not a NUMA node (-1 to %d)' % (where, show(numa), MAX_NUMA_NODE))
    if not isinstance(item.get('reason'), str) or has_control_chars(item['reason']):
        problems.append('%s.reason %s is not a one-line text' % (where, show(item.get('reason'))))
    return problems


def _pcie_path(value):
    """'pci0000:17/0000:17:00.0/0000:18:00.0': the PCI root and the addresses below it, as discovery writes it."""
    if not isinstance(value, str) or len(value) > 1024:
        return False
    parts = value.split('/') if value else []
    return all(PCI_ADDRESS.matches(part) or (index == 0 and part.startswith('pci')
                                             and PCI_ADDRESS.matches(part[3:] + ':00.0'))
               for index, part in enumerate(parts))


def _fingerprint_problems(device, where):
    """What no discovery could have written in one device's fingerprint."""
    if device is None:
        return []
    if not isinstance(device, dict):
        return ['%s must be a mapping, not %s' % (where, show(device))]
    good = dict((key, device.get(key) is None or HEX_ID.matches(device[key])) for key in ID_KEYS)
    good.update(address=PCI_ADDRESS.matches(device.get('address')), pcie_path=_pcie_path(device.get('pcie_path')),
                serial=device.get('serial') is None or NOTE.matches(device['serial']))
    return ['%s.%s %s is not what discovery reports' % (where, key, show(device.get(key)))
            for key in sorted(good) if not good[key]]


def _slot_problems(node_id, slot, where):
    """Every field of one discovered slot checked against the rules discovery itself follows."""
    if not isinstance(slot, dict):
        return ['%s must be a mapping, not %s' % (where, show(slot))]
    problems = []
    try:
        index = check_int(slot.get('slot_index'), where + '.slot_index', 0, 10 ** 6)
        layout = Slot(node_id, index).layout() if slot.get('slot_id') is not None or slot.get('eligible') \
            else {'slot_id': None, 'mac': None, 'ip': None}
    except ContractError as exc:
        return [str(exc)]
    for key in ('slot_id', 'mac', 'ip'):
        if slot.get(key) != layout[key]:
            problems.append('%s.%s is %s, but slot %d of node %s has %s'
                            % (where, key, show(slot.get(key)), index, node_id, show(layout[key])))
    for key in ADDRESS_KEYS:
        value = slot.get(key)
        if not (PCI_ADDRESS.matches(value) or (value is None and key != 'gpu_address')):
            problems.append('%s.%s %s is not a PCI address' % (where, key, show(value)))
    vf_index = slot.get('fabric_vf_index')
    if vf_index is not None and (isinstance(vf_index, bool) or not isinstance(vf_index, int)
                                 or not 0 <= vf_index <= MAX_VF_INDEX or not slot.get('fabric_vf_pci_address')):
        problems.append('%s.fabric_vf_index %s is not the index of the slot\'s fabric VF (0 to %d, with its address)'
                        % (where, show(vf_index), MAX_VF_INDEX))
    companions = slot.get('companions')
    if not isinstance(companions, list) or not all(PCI_ADDRESS.matches(item) for item in companions):
        problems.append('%s.companions %s is not a list of PCI addresses' % (where, show(companions)))
    numa = slot.get('numa_node')
    if isinstance(numa, bool) or not isinstance(numa, int) or not -1 <= numa <= MAX_NUMA_NODE:
        problems.append('%s.numa_node %s is not a NUMA node (-1 to %d)' % (where, show(numa), MAX_NUMA_NODE))
    try:
        if slot.get('cpulist') is not None:
            parse_cpulist(slot['cpulist'], where + '.cpulist')
    except ContractError:
        problems.append('%s.cpulist %s is not a CPU list (kernel cpulist syntax, CPUs 0 to %d)'
                        % (where, show(slot['cpulist']), MAX_CPU))
    if not isinstance(slot.get('eligible'), bool):
        problems.append('%s.eligible %s is not true or false' % (where, show(slot.get('eligible'))))
    reasons = slot.get('reasons')
    if not isinstance(reasons, list) or not all(isinstance(r, str) and not has_control_chars(r) for r in reasons):
        problems.append('%s.reasons %s is not a list of one-line texts' % (where, show(reasons)))
    fingerprint = slot.get('fingerprint')
    if not isinstance(fingerprint, dict) or set(fingerprint) - set(FINGERPRINT_ROLES) \
            or not isinstance(fingerprint.get('companions', []), list):
        problems.append('%s.fingerprint %s is not a discovery fingerprint' % (where, show(fingerprint)))
    else:
        for role in ('gpu', 'nvme', 'fabric_pf'):
            problems.extend(_fingerprint_problems(fingerprint.get(role), '%s.fingerprint.%s' % (where, role)))
        for number, device in enumerate(fingerprint.get('companions', [])):
            problems.extend(_fingerprint_problems(device, '%s.fingerprint.companions[%d]' % (where, number)))
    if not isinstance(slot.get('capacity_metadata'), dict):
        problems.append('%s.capacity_metadata %s is not a mapping' % (where, show(slot.get('capacity_metadata'))))
    return problems


def _check_capacity(entry, slot, where):
    problems = []
    metadata = entry.get('capacity_metadata')
    if not isinstance(metadata, dict):
        return ['%s: capacity_metadata must be a mapping with %s' % (where, ', '.join(CAPACITY_KEYS))]
    missing = [key for key in CAPACITY_KEYS if key not in metadata]
    if missing:
        problems.append('%s: capacity_metadata lacks %s' % (where, ', '.join(missing)))
    unknown = sorted(set(metadata) - set(CAPACITY_KEYS))
    if unknown:
        problems.append('%s: capacity_metadata has unknown keys %s'
                        % (where, ', '.join(key if isinstance(key, str) and not has_control_chars(key)
                                            else show(key) for key in unknown)))
    if metadata.get('storage_ownership') != 'slice':
        problems.append("%s: capacity_metadata.storage_ownership must be 'slice', not %s"
                        % (where, show(metadata.get('storage_ownership'))))
    expected_vf = slot.get('fabric_vf_pci_address')
    if slot.get('fabric_pf_address'):
        if metadata.get('fabric_claim_mode') != 'per_slot_vf':
            problems.append("%s: capacity_metadata.fabric_claim_mode must be 'per_slot_vf', "
                            "not %s" % (where, show(metadata.get('fabric_claim_mode'))))
        if not metadata.get('fabric_vf_pci_address'):
            problems.append('%s: capacity_metadata.fabric_vf_pci_address must name the slot\'s '
                            'fabric VF (%s)' % (where, expected_vf))
        elif metadata.get('fabric_vf_pci_address') != expected_vf:
            problems.append('%s: capacity_metadata.fabric_vf_pci_address is %s but discovery '
                            'says the slot\'s VF is %s'
                            % (where, show(metadata.get('fabric_vf_pci_address')), expected_vf))
    elif metadata.get('fabric_claim_mode') != 'none' or metadata.get('fabric_vf_pci_address'):
        problems.append("%s: the slot has no fabric PF, so capacity_metadata must say "
                        "fabric_claim_mode 'none' and no fabric_vf_pci_address" % where)
    return problems


def _entry_problems(entry, where):
    """The operator's mistakes an entry can hold whatever the hardware is: keys, policy, texts, fingerprint."""
    problems = []
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        problems.append('%s: missing %s' % (where, ', '.join(missing)))
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        problems.append('%s: unknown keys %s (see docs/approved-slot-map.md)'
                        % (where, ', '.join(show(key) if not isinstance(key, str) or has_control_chars(key)
                                            else key for key in unknown)))
    policy = entry.get('destructive_wipe_policy')
    if not policy:
        problems.append('%s: destructive_wipe_policy must be set (one of %s)'
                        % (where, ', '.join(WIPE_POLICIES)))
    elif policy not in WIPE_POLICIES:
        problems.append('%s: destructive_wipe_policy %s is not one of %s'
                        % (where, show(policy), ', '.join(WIPE_POLICIES)))
    for key in ('approved_by', 'approved_at', 'note'):
        if entry.get(key) is not None and not NOTE.matches(entry[key]):
            problems.append('%s: %s %s must be text of at most 255 characters on one line'
                            % (where, key, show(entry[key])))
    recorded = entry.get('fingerprint')
    if recorded is not None and (not isinstance(recorded, dict) or set(recorded) - set(FINGERPRINT_ROLES)
                                 or not isinstance(recorded.get('companions', []), list)):
        problems.append('%s: fingerprint must be a mapping (as discovery reports it), not %s' % (where, show(recorded)))
    elif recorded is not None:
        for role in ('gpu', 'nvme', 'fabric_pf'):
            problems.extend(_fingerprint_problems(recorded.get(role), '%s: fingerprint.%s' % (where, role)))
        for number, device in enumerate(recorded.get('companions', [])):
            problems.extend(_fingerprint_problems(device, '%s: fingerprint.companions[%d]' % (where, number)))
    return problems


def _address_problems(entry, found, where):
    if 'gpu_address' in entry and entry['gpu_address'] != found.get('gpu_address'):
        return ['%s: gpu_address is %s but discovery has %s at this slot '
                '(hardware or slot order changed: discover again and re-approve)'
                % (where, show(entry['gpu_address']), found.get('gpu_address'))]
    return []


def _check_entry(entry, slot, where):
    """Every problem of an entry for a slot whose GPU is there, but a fingerprint that no longer matches."""
    problems = _entry_problems(entry, where)
    if not slot.get('eligible'):
        problems.append('%s: discovery says the slot is not eligible: %s'
                        % (where, '; '.join(slot.get('reasons') or ['no reason given'])))
    problems.extend(_address_problems(entry, slot, where))
    policy = entry.get('destructive_wipe_policy')
    if policy in BLOCK_WIPE_POLICIES and not slot.get('nvme_address'):
        problems.append("%s: destructive_wipe_policy %r needs an NVMe drive of the slot's own; "
                        "this slot has none, use 'zero'" % (where, policy))
    for key in VF_KEYS:
        if key in entry and entry[key] != slot.get(key):
            problems.append('%s: %s is %s but discovery gives the slot VF %s of fabric PF %s (the slots sharing the '
                            'PF changed: discover again and re-approve)'
                            % (where, key, show(entry[key]), show(slot.get(key)), show(slot.get('fabric_pf_address'))))
    for key in SHARE_KEYS:
        if key in entry and entry[key] != slot.get(key):
            problems.append('%s: %s is %s but discovery gives the slot %s (its share of the NUMA node changed: '
                            'discover again and re-approve)' % (where, key, show(entry[key]), show(slot.get(key))))
    if 'bar_mib' in entry and entry['bar_mib'] != slot.get('bar_mib'):
        problems.append('%s: bar_mib is %s but discovery gives the slot\'s devices %s MiB of 64-bit BARs (hardware '
                        'changed: discover again and re-approve)' % (where, show(entry['bar_mib']), show(slot.get('bar_mib'))))
    if 'capacity_metadata' in entry:
        problems.extend(_check_capacity(entry, slot, where))
    return problems


def changed_devices(entry, slot, where):
    """Why a slot is absent although its GPU address answers: its devices are not the approved ones; else None."""
    if not isinstance(entry.get('fingerprint'), dict) or entry['fingerprint'] == slot.get('fingerprint'):
        return None
    changes = fingerprint_changes(entry['fingerprint'], slot.get('fingerprint'))
    return ('%s: the devices no longer match the fingerprint taken at approval (hardware changed: %s): the '
            'slot is absent; inspect the host, then re-approve it' % (where, '; '.join(changes) or 'the fingerprint differs'))


def _plain(value):
    """A value for a message: as it is when it is one line of text, else quoted."""
    return value if isinstance(value, str) and not has_control_chars(value) and len(value) <= 80 else show(value)


def _device_label(role, recorded, now):
    address = (recorded or {}).get('address') if isinstance(recorded, dict) else None
    if address is None and isinstance(now, dict):
        address = now.get('address')
    return '%s %s' % (role, _plain(address)) if address else role


def fingerprint_changes(recorded, now):
    """['gpu 0000:01:00.0: subsystem_device_id 1533 -> 1f00', ...]: what differs, for people."""
    changes = []
    recorded = recorded if isinstance(recorded, dict) else {}
    now = now if isinstance(now, dict) else {}
    for role in sorted(set(recorded) | set(now)):
        before, after = recorded.get(role), now.get(role)
        if before == after:
            continue
        if isinstance(before, list) or isinstance(after, list):
            before, after = list(before or []), list(after or [])
            pairs = [('%s[%d]' % (role, i), before[i] if i < len(before) else None,
                      after[i] if i < len(after) else None) for i in range(max(len(before), len(after)))]
        else:
            pairs = [(role, before, after)]
        for name, old, new in pairs:
            if old == new:
                continue
            label = _device_label(name, old, new)
            if not isinstance(old, dict) or not isinstance(new, dict):
                changes.append('%s: %s -> %s' % (label, 'none' if old is None else 'a device',
                                                 'none' if new is None else 'a device'))
                continue
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    changes.append('%s: %s %s -> %s' % (label, _plain(key), _plain(old.get(key)), _plain(new.get(key))))
    return changes


def validate(discovery, approved_slots):
    """Return the approved slots (discovery data + the approval), or raise ApprovalError."""
    return review(discovery, approved_slots)['slots']


def _absent(slot, reason):
    return {'slot_id': slot['slot_id'], 'slot_index': slot['slot_index'], 'gpu_address': slot['gpu_address'],
            'reason': reason}


def review(discovery, approved_slots):
    """``{'slots': the approved slots, 'absent': the approved slots that cannot be used now}``.

    Each approved slot is its discovery data plus the approval; each absent one is its
    slot_id, slot_index, gpu_address and the reason (its GPU is gone from the bus, or its
    devices no longer match their fingerprint). Any mistake in the map raises ApprovalError.
    """
    _check_discovery(discovery)
    if not isinstance(approved_slots, list):
        raise ApprovalError(['approved_slots must be a list of mappings, not %s' % show(approved_slots)])
    by_id = dict((slot['slot_id'], slot) for slot in discovery['slots'] if slot['slot_id'] is not None)
    gone = dict((item['slot_id'], item) for item in discovery.get('absent', []))
    problems, approved, absent, seen = [], [], [], set()
    for position, entry in enumerate(approved_slots or []):
        if not isinstance(entry, dict):
            problems.append('approved_slots[%d] is not a mapping, but %s' % (position, show(entry)))
            continue
        slot_id = entry.get('slot_id')
        if not isinstance(slot_id, str) or not slot_id:
            problems.append('approved_slots[%d]: slot_id must be a non-empty string' % position)
            continue
        if not SLOT_ID.matches(slot_id):
            problems.append('approved_slots[%d]: slot_id %s is not a slot id' % (position, show(slot_id)))
            continue
        where = 'slot %s' % slot_id
        if slot_id in seen:
            problems.append('%s is approved twice' % where)
            continue
        seen.add(slot_id)
        slot = by_id.get(slot_id)
        if slot_id in gone:
            entry_problems = _entry_problems(entry, where) + _address_problems(entry, gone[slot_id], where)
            problems.extend(entry_problems)
            if not entry_problems:
                absent.append(_absent(gone[slot_id], gone[slot_id]['reason']))
            continue
        if slot is None:
            problems.append('%s: no such slot on node %s (known: %s)'
                            % (where, discovery['node_id'], ', '.join(sorted(set(by_id) | set(gone))) or 'none'))
            continue
        entry_problems = _check_entry(entry, slot, where)
        problems.extend(entry_problems)
        changed = None if entry_problems else changed_devices(entry, slot, where)
        if changed:
            absent.append(_absent(slot, changed))
        elif not entry_problems:
            record = dict(slot)
            record.pop('eligible', None)
            record.pop('reasons', None)
            record.update({
                'node_id': discovery['node_id'],
                'destructive_wipe_policy': entry['destructive_wipe_policy'],
                'approved_by': entry.get('approved_by'),
                'approved_at': entry.get('approved_at'),
            })
            approved.append(record)
    if problems:
        raise ApprovalError(problems)
    return {'slots': approved, 'absent': sorted(absent, key=lambda item: item['slot_index'])}
