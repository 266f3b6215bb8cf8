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

import contextlib
import gc
import json
import re

# What each level of detail puts in the host vars (the plugin's slot_details option): the
# groups, gpuaas_slot_counts and the node's drain state and reachability always; 'approved' adds the approved
# slot map; 'full' also gpuaas_slots. ansible-core copies and tags every value of every host
# var, so at fleet scale each value left out counts.
DETAILS = ('full', 'approved', 'none')
# A slot's state: what the groups and counts are made of (GET /v1/inventory/states).
STATE_KEYS = ('slot_index', 'state', 'approved', 'allocation_id', 'state_reason', 'gpu_model',
              'numa_node')
# A slot's devices and address, for gpuaas_slots. Its wipe policy and capacity metadata are not
# repeated there: they are its entry of gpuaas_approved_slots.
DEVICE_KEYS = ('gpu_address', 'companions', 'cpulist', 'nvme_address', 'fabric_pf_address',
               'fabric_vf_index', 'fabric_vf_pci_address', 'mac', 'ip')
# A node's reachability, as the control plane's worker last found it: each is the host var
# gpuaas_<key> (times in ISO 8601, UTC).
REACHABILITY_KEYS = ('reachable', 'unreachable_since', 'unreachable_error', 'last_probe_at', 'next_probe_at')
NODE_KEYS = ('id', 'schedulable', 'drain_reason') + REACHABILITY_KEYS


class InventoryError(ValueError):
    """The control plane's answer is not an inventory document."""


@contextlib.contextmanager
def collector_paused():
    """Pause Python's cyclic garbage collector inside the block (as it was after it).

    A fleet's host vars are hundreds of thousands of objects (ansible-core copies each value
    as it is set), all kept as long as the inventory: the collector's passes over them (none
    is garbage) took 40% of the time the plugin spent setting them."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def group_name(*parts):
    """'gpuaas', 'gpu', '10de:2330' -> 'gpuaas_gpu_10de_2330' (a valid group name)."""
    return re.sub(r'[^A-Za-z0-9_]', '_', '_'.join(str(part) for part in parts))


_URL_RE = re.compile(r'(https?)://(?:[^@/?#]*@)?([^/?#]+)(.*)', re.IGNORECASE | re.DOTALL)


def check_url(url):
    """The API's address as an error may show it (without user:password@); InventoryError
    unless it is an http:// or https:// URL."""
    found = _URL_RE.fullmatch(url) if isinstance(url, str) else None
    if found is None or '?' in found.group(3) or '#' in found.group(3):
        raise InventoryError('url must be the API\'s http:// or https:// address without a query, not %r'
                             % (re.sub(r'//[^@/?#]*@', '//', url)[:200] if isinstance(url, str) else url,))
    return '%s://%s%s' % (found.group(1), found.group(2), found.group(3).rstrip('/'))


def scrub(text, secret):
    """``text`` without ``secret`` (a token must never reach a log)."""
    return text.replace(secret, '<token>') if secret else text


def http_error(status, body):
    """'403: this endpoint is for operators': an API refusal, for the operator."""
    try:
        detail = json.loads(body).get('detail')
    except (ValueError, TypeError, AttributeError):
        detail = None
    hints = {401: ' (set the token option or GPUAAS_API_TOKEN to a valid token)',
             403: ' (the inventory needs a reader or operator token)',
             404: ' (is the url the control plane\'s API?)'}
    if 300 <= status < 400:
        hints[status] = ' (a redirect: the token is sent to no other address, give the API\'s own url)'
    return '%s: %s%s' % (status, detail[:500] if isinstance(detail, str) else 'no JSON error detail',
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


def path(details):
    """The API route that answers ``details``: the slot states alone for 'none'."""
    return '/v1/inventory/states' if details == 'none' else '/v1/inventory'


def parse(raw, include_unapproved=False, details='full'):
    """The API's inventory document (bytes or text, from ``path(details)``) -> ``build``'s result."""
    try:
        document = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise InventoryError('the answer is not JSON: %s' % exc)
    if not isinstance(document, dict):
        raise InventoryError('the answer is not a mapping with nodes and slots')
    node_keys = NODE_KEYS if details == 'none' else NODE_KEYS + ('approved_slots',)
    slot_keys = ('id', 'node_id') + STATE_KEYS + (DEVICE_KEYS if details == 'full' else ())
    return build(_records(document, 'nodes', node_keys), _records(document, 'slots', slot_keys),
                 include_unapproved=include_unapproved, details=details)


def build(nodes, slots, include_unapproved=False, details='full'):
    """Return {'hosts': {node_id: hostvars}, 'groups': {group: [node_id, ...]}}.

    ``nodes`` and ``slots`` are the API's inventory records (mappings). Slots an approval
    withdrew are left out unless ``include_unapproved``; ``details`` is one of ``DETAILS``.
    """
    if details not in DETAILS:
        raise InventoryError('slot_details must be one of %s, not %r' % (', '.join(DETAILS), details))
    hosts, groups, names = {}, {}, {}

    def member(node_id, *parts):
        if parts not in names:   # a fleet has few distinct groups and many members
            names[parts] = group_name(*parts)
        groups.setdefault(names[parts], {})[node_id] = True   # an ordered set

    for row in sorted(nodes, key=lambda n: n['id']):
        node_id = row['id']
        host = hosts[node_id] = {
            'gpuaas_node_id': node_id,
            'gpuaas_schedulable': bool(row.get('schedulable', True)),
            'gpuaas_drain_reason': row.get('drain_reason'),
            'gpuaas_slot_counts': {},
        }
        for key in REACHABILITY_KEYS:
            host['gpuaas_' + key] = row.get(key)
        # Anything but true is unreachable: the worker does not reach it.
        host['gpuaas_reachable'] = row.get('reachable') is True
        if details != 'none':
            # The operator's approved slot map, as the discover and allocate plays read it.
            host['gpuaas_approved_slots'] = row.get('approved_slots') or []
        if details == 'full':
            host['gpuaas_slots'] = []
        member(node_id, 'gpuaas_nodes')
        member(node_id, 'gpuaas_schedulable' if host['gpuaas_schedulable'] else 'gpuaas_drained')
        member(node_id, 'gpuaas_reachable' if host['gpuaas_reachable'] else 'gpuaas_unreachable')
    for row in sorted(slots, key=lambda s: (s['node_id'], s['slot_index'])):
        node_id = row['node_id']
        host = hosts.get(node_id)
        if host is None or (not row.get('approved') and not include_unapproved):
            continue
        if details == 'full':
            slot = dict((key, row.get(key)) for key in STATE_KEYS + DEVICE_KEYS)
            slot['slot_id'] = row['id']
            host['gpuaas_slots'].append(slot)
        counts = host['gpuaas_slot_counts']
        counts[row['state']] = counts.get(row['state'], 0) + 1
        member(node_id, 'gpuaas_state', row['state'])
        member(node_id, 'gpuaas_gpu', row['gpu_model'])
        member(node_id, 'gpuaas_numa', row['numa_node'])
    return {'hosts': hosts, 'groups': dict((group, list(members)) for group, members in groups.items())}
