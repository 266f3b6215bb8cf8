# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the control plane's slot table as an Ansible inventory.

Pure data in, pure data out (the gpuaas.slice.slots inventory plugin does the reading):
one host per node, its slots as host vars, and groups by node state, slot state, GPU
model and NUMA node.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

SLOT_KEYS = ('slot_index', 'state', 'approved', 'allocation_id', 'state_reason', 'gpu_model',
             'gpu_address', 'companions', 'numa_node', 'cpulist', 'nvme_address',
             'fabric_pf_address', 'fabric_vf_pci_address', 'mac', 'ip',
             'destructive_wipe_policy', 'capacity_metadata')
JSON_KEYS = ('companions', 'capacity_metadata', 'approved_slots')
BOOL_KEYS = ('approved', 'schedulable')


def group_name(*parts):
    """'gpuaas', 'gpu', '10de:2330' -> 'gpuaas_gpu_10de_2330' (a valid group name)."""
    return re.sub(r'[^A-Za-z0-9_]', '_', '_'.join(str(part) for part in parts))


def _plain(row):
    """A database row as plain data: JSON text parsed (SQLite), 0/1 as booleans."""
    record = dict(row)
    for key in JSON_KEYS:
        value = record.get(key)
        if isinstance(value, (str, bytes)):
            record[key] = json.loads(value)
    for key in BOOL_KEYS:
        if key in record and record[key] is not None:
            record[key] = bool(record[key])
    return record


def build(nodes, slots, include_unapproved=False):
    """Return {'hosts': {node_id: hostvars}, 'groups': {group: [node_id, ...]}}.

    ``nodes`` and ``slots`` are rows of the control plane's ``nodes`` and ``slots`` tables
    (mappings). Slots an approval withdrew are left out unless ``include_unapproved``.
    """
    hosts, groups = {}, {}

    def member(group, host):
        names = groups.setdefault(group, [])
        if host not in names:
            names.append(host)

    for row in sorted((_plain(n) for n in nodes), key=lambda n: n['id']):
        node_id = row['id']
        hosts[node_id] = {
            'gpuaas_node_id': node_id,
            'gpuaas_schedulable': row.get('schedulable', True),
            'gpuaas_drain_reason': row.get('drain_reason'),
            # The operator's approved slot map, as the allocate/release plays read it.
            'gpuaas_approved_slots': row.get('approved_slots') or [],
            'gpuaas_slots': [],
            'gpuaas_slot_counts': {},
        }
        member('gpuaas_nodes', node_id)
        member('gpuaas_schedulable' if hosts[node_id]['gpuaas_schedulable'] else 'gpuaas_drained',
               node_id)
    for row in sorted((_plain(s) for s in slots), key=lambda s: (s['node_id'], s['slot_index'])):
        host = hosts.get(row['node_id'])
        if host is None or (not row.get('approved') and not include_unapproved):
            continue
        slot = dict((key, row.get(key)) for key in SLOT_KEYS)
        slot['slot_id'] = row['id']
        host['gpuaas_slots'].append(slot)
        counts = host['gpuaas_slot_counts']
        counts[slot['state']] = counts.get(slot['state'], 0) + 1
        member(group_name('gpuaas_state', slot['state']), row['node_id'])
        member(group_name('gpuaas_gpu', slot['gpu_model']), row['node_id'])
        member(group_name('gpuaas_numa', slot['numa_node']), row['node_id'])
    return {'hosts': hosts, 'groups': groups}
