# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the control plane's slot table as an Ansible inventory.

Pure data in, pure data out (the gpuaas.slice.slots inventory plugin does the asking): the
API's ``GET /v1/inventory`` answer is checked (``parse``) and turned into one host per node,
its slots as host vars, and groups by node state, slot state, GPU model and NUMA node.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

SLOT_KEYS = ('slot_index', 'state', 'approved', 'allocation_id', 'state_reason', 'gpu_model',
             'gpu_address', 'companions', 'numa_node', 'cpulist', 'nvme_address',
             'fabric_pf_address', 'fabric_vf_pci_address', 'mac', 'ip',
             'destructive_wipe_policy', 'capacity_metadata')
NODE_KEYS = ('id', 'schedulable', 'drain_reason', 'approved_slots')


class InventoryError(ValueError):
    """The control plane's answer is not an inventory document."""


def group_name(*parts):
    """'gpuaas', 'gpu', '10de:2330' -> 'gpuaas_gpu_10de_2330' (a valid group name)."""
    return re.sub(r'[^A-Za-z0-9_]', '_', '_'.join(str(part) for part in parts))


def http_error(status, body):
    """'403: this endpoint is for operators': an API refusal, for the operator."""
    try:
        detail = json.loads(body).get('detail')
    except (ValueError, TypeError, AttributeError):
        detail = None
    hints = {401: ' (set the token option or GPUAAS_API_TOKEN to a valid token)',
             403: ' (the inventory needs an operator token)',
             404: ' (is the url the control plane\'s API?)'}
    return '%s: %s%s' % (status, detail if isinstance(detail, str) else 'no JSON error detail',
                         hints.get(status, ''))


def _records(document, key, required):
    rows = document.get(key)
    if not isinstance(rows, list):
        raise InventoryError("the answer has no list '%s'" % key)
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InventoryError('%s[%d] is not a mapping' % (key, position))
        missing = [name for name in required if name not in row]
        if missing:
            raise InventoryError('%s[%d] lacks %s' % (key, position, ', '.join(missing)))
    return rows


def parse(raw, include_unapproved=False):
    """The API's inventory document (bytes or text) -> ``build``'s result."""
    try:
        document = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise InventoryError('the answer is not JSON: %s' % exc)
    if not isinstance(document, dict):
        raise InventoryError('the answer is not a mapping with nodes and slots')
    return build(_records(document, 'nodes', NODE_KEYS),
                 _records(document, 'slots', ('id', 'node_id') + SLOT_KEYS),
                 include_unapproved=include_unapproved)


def build(nodes, slots, include_unapproved=False):
    """Return {'hosts': {node_id: hostvars}, 'groups': {group: [node_id, ...]}}.

    ``nodes`` and ``slots`` are the API's inventory records (mappings). Slots an approval
    withdrew are left out unless ``include_unapproved``.
    """
    hosts, groups = {}, {}

    def member(group, host):
        groups.setdefault(group, {})[host] = True   # an ordered set

    for row in sorted(nodes, key=lambda n: n['id']):
        node_id = row['id']
        hosts[node_id] = {
            'gpuaas_node_id': node_id,
            'gpuaas_schedulable': bool(row.get('schedulable', True)),
            'gpuaas_drain_reason': row.get('drain_reason'),
            # The operator's approved slot map, as the allocate/release plays read it.
            'gpuaas_approved_slots': row.get('approved_slots') or [],
            'gpuaas_slots': [],
            'gpuaas_slot_counts': {},
        }
        member('gpuaas_nodes', node_id)
        member('gpuaas_schedulable' if hosts[node_id]['gpuaas_schedulable'] else 'gpuaas_drained',
               node_id)
    for row in sorted(slots, key=lambda s: (s['node_id'], s['slot_index'])):
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
    return {'hosts': hosts, 'groups': dict((group, list(names)) for group, names in groups.items())}
