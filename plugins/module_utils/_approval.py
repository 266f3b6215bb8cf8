# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: validate an operator's approved slot map against discovery.

The approved slot map is the operator's decision (see docs/approved-slot-map.md).
An approval is all or nothing: every problem is reported at once, and a map with
any problem approves no slot.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError

WIPE_POLICIES = ('nvme-format', 'blkdiscard', 'zero')
# Policies that need a block device of the slot's own.
BLOCK_WIPE_POLICIES = ('nvme-format', 'blkdiscard')

REQUIRED_KEYS = ('slot_id', 'gpu_address', 'destructive_wipe_policy', 'capacity_metadata')
OPTIONAL_KEYS = ('approved_by', 'approved_at', 'fingerprint', 'note')
CAPACITY_KEYS = ('storage_ownership', 'fabric_claim_mode', 'fabric_vf_pci_address')


class ApprovalError(ContractError):
    """The approved slot map cannot be accepted; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = problems
        super(ApprovalError, self).__init__(
            'the approved slot map was refused, no slot is approved:\n- ' + '\n- '.join(problems))


def _check_discovery(discovery):
    if not isinstance(discovery, dict) or not isinstance(discovery.get('slots'), list) \
            or 'node_id' not in discovery or discovery.get('approval_required') is not True:
        raise ApprovalError(['discovery is not a gpuaas.slice.slot_discovery result '
                             '(register the slot_discovery task and pass it whole)'])


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
        problems.append('%s: capacity_metadata has unknown keys %s' % (where, ', '.join(unknown)))
    if metadata.get('storage_ownership') != 'slice':
        problems.append("%s: capacity_metadata.storage_ownership must be 'slice', not %r"
                        % (where, metadata.get('storage_ownership')))
    expected_vf = slot.get('fabric_vf_pci_address')
    if slot.get('fabric_pf_address'):
        if metadata.get('fabric_claim_mode') != 'per_slot_vf':
            problems.append("%s: capacity_metadata.fabric_claim_mode must be 'per_slot_vf', "
                            "not %r" % (where, metadata.get('fabric_claim_mode')))
        if not metadata.get('fabric_vf_pci_address'):
            problems.append('%s: capacity_metadata.fabric_vf_pci_address must name the slot\'s '
                            'fabric VF (%s)' % (where, expected_vf))
        elif metadata.get('fabric_vf_pci_address') != expected_vf:
            problems.append('%s: capacity_metadata.fabric_vf_pci_address is %r but discovery '
                            'says the slot\'s VF is %s'
                            % (where, metadata.get('fabric_vf_pci_address'), expected_vf))
    elif metadata.get('fabric_claim_mode') != 'none' or metadata.get('fabric_vf_pci_address'):
        problems.append("%s: the slot has no fabric PF, so capacity_metadata must say "
                        "fabric_claim_mode 'none' and no fabric_vf_pci_address" % where)
    return problems


def _check_entry(entry, slot, where):
    problems = []
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        problems.append('%s: missing %s' % (where, ', '.join(missing)))
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        problems.append('%s: unknown keys %s (see docs/approved-slot-map.md)'
                        % (where, ', '.join(unknown)))
    if not slot.get('eligible'):
        problems.append('%s: discovery says the slot is not eligible: %s'
                        % (where, '; '.join(slot.get('reasons') or ['no reason given'])))
    if 'gpu_address' in entry and entry['gpu_address'] != slot.get('gpu_address'):
        problems.append('%s: gpu_address is %r but discovery has %s at this slot '
                        '(hardware or slot order changed: discover again and re-approve)'
                        % (where, entry['gpu_address'], slot.get('gpu_address')))
    policy = entry.get('destructive_wipe_policy')
    if not policy:
        problems.append('%s: destructive_wipe_policy must be set (one of %s)'
                        % (where, ', '.join(WIPE_POLICIES)))
    elif policy not in WIPE_POLICIES:
        problems.append('%s: destructive_wipe_policy %r is not one of %s'
                        % (where, policy, ', '.join(WIPE_POLICIES)))
    elif policy in BLOCK_WIPE_POLICIES and not slot.get('nvme_address'):
        problems.append("%s: destructive_wipe_policy %r needs an NVMe drive of the slot's own; "
                        "this slot has none, use 'zero'" % (where, policy))
    if 'capacity_metadata' in entry:
        problems.extend(_check_capacity(entry, slot, where))
    if entry.get('fingerprint') is not None and entry['fingerprint'] != slot.get('fingerprint'):
        changes = fingerprint_changes(entry['fingerprint'], slot.get('fingerprint'))
        problems.append('%s: the devices no longer match the fingerprint taken at approval '
                        '(hardware changed: %s): inspect the host, then re-approve'
                        % (where, '; '.join(changes) or 'the fingerprint differs'))
    return problems


def _device_label(role, recorded, now):
    address = (recorded or {}).get('address') if isinstance(recorded, dict) else None
    if address is None and isinstance(now, dict):
        address = now.get('address')
    return '%s %s' % (role, address) if address else role


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
                    changes.append('%s: %s %s -> %s' % (label, key, old.get(key), new.get(key)))
    return changes


def validate(discovery, approved_slots):
    """Return the approved slots (discovery data + the approval), or raise ApprovalError."""
    _check_discovery(discovery)
    by_id = dict((slot.get('slot_id'), slot) for slot in discovery['slots'])
    problems, approved, seen = [], [], set()
    for position, entry in enumerate(approved_slots or []):
        if not isinstance(entry, dict):
            problems.append('approved_slots[%d] is not a mapping' % position)
            continue
        slot_id = entry.get('slot_id')
        if not isinstance(slot_id, str) or not slot_id:
            problems.append('approved_slots[%d]: slot_id must be a non-empty string' % position)
            continue
        where = 'slot %s' % slot_id
        if slot_id in seen:
            problems.append('%s is approved twice' % where)
            continue
        seen.add(slot_id)
        slot = by_id.get(slot_id)
        if slot is None:
            problems.append('%s: no such slot on node %s (known: %s)'
                            % (where, discovery['node_id'], ', '.join(sorted(by_id)) or 'none'))
            continue
        entry_problems = _check_entry(entry, slot, where)
        problems.extend(entry_problems)
        if not entry_problems:
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
    return approved
