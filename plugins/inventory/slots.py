# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuaas.slice.slots: the control plane's slot table as an inventory source."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: slots
author:
  - gpuaas.slice contributors (@gpuaas)
version_added: 0.1.0
short_description: The control plane's slot table as an inventory
description:
  - Asks the gpuaas.slice control plane's HTTP API for the whole fleet in one request
    (C(GET /v1/inventory), or C(GET /v1/inventory/states) with O(slot_details=none); operator
    endpoints) and returns one host per node, named by its node id, so AWX or
    C(ansible-playbook) can use the slot table as an inventory source.
  - Each node's host vars hold C(gpuaas_node_id), C(gpuaas_slot_counts) (approved slots per
    state), its drain state (C(gpuaas_schedulable), C(gpuaas_drain_reason)) and its reachability
    as the control plane's worker last found it (C(gpuaas_reachable); while it is false,
    C(gpuaas_unreachable_since) and C(gpuaas_unreachable_error), what ansible said; and
    C(gpuaas_last_probe_at), C(gpuaas_next_probe_at), when the worker last asked it and asks it
    next, times in ISO 8601 UTC); with O(slot_details=approved) also
    C(gpuaas_approved_slots) (the approved slot map, with each slot's wipe policy and capacity
    metadata, that the discover and allocate plays read); with O(slot_details=full), the
    default, also C(gpuaas_slots) (every approved slot with its state, allocation, GPU model
    and address, companions, NUMA node and CPUs, NVMe, fabric PF and VF, MAC and IP).
  - "Groups: C(gpuaas_nodes); C(gpuaas_schedulable) or C(gpuaas_drained); C(gpuaas_reachable) or
    C(gpuaas_unreachable); and, for nodes with
    at least one such approved slot, C(gpuaas_state_<state>) (V(free), V(reserved),
    V(blocked)), C(gpuaas_gpu_<vendor>_<device>) and C(gpuaas_numa_<node>)."
  - The inventory file's name must end in C(gpuaas_slots.yml) or C(gpuaas_slots.yaml).
  - Reads only, with a token of the V(reader) role (O(token)), so AWX needs no access to the control
    plane's database. Every failure (the API unreachable, a refused or expired token, a TLS
    certificate that does not check, an answer that is not the inventory) is an error naming the
    address and the cause, never a partial inventory; AWX's inventory updates make it fatal
    (C(ANSIBLE_INVENTORY_UNPARSED_FAILED)), on the command line set it too.
  - Reads only; the connection details of the nodes (C(ansible_host) and so on) come from
    O(compose), host vars or another inventory source.
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [gpuaas.slice.slots]
  url:
    description:
      - The control plane's API, for example V(https://gpuaas.example.com) or
        V(http://127.0.0.1:8000) (what C(gpuaas serve) listens on).
    type: str
    required: true
    env:
      - name: GPUAAS_API
  token:
    description:
      - A bearer token of the V(reader) role (C(gpuaas token create --role reader)), which reads the
        operator views and can change nothing; an V(operator) token works too, but gives the inventory
        source more than it needs.
      - Keep it out of the inventory file; set E(GPUAAS_API_TOKEN) (in AWX, a custom credential type
        that injects it, see C(docs/awx/README.md)), or use a vaulted value. It is never shown in an
        error, and the plugin follows no redirect, so it goes to O(url) only.
    type: str
    required: true
    secret: true
    env:
      - name: GPUAAS_API_TOKEN
  validate_certs:
    description:
      - Check the API's TLS certificate (and its name) against O(ca_path) or the system's CAs.
      - Turn it off only for a test; the token would go to whoever answers.
    type: bool
    default: true
    env:
      - name: GPUAAS_API_VALIDATE_CERTS
  ca_path:
    description: A PEM file of the CA certificates that sign the API's certificate (a private CA).
    type: path
    env:
      - name: GPUAAS_API_CA_PATH
  timeout:
    description: Seconds to wait for the API's answer.
    type: int
    default: 60
  include_unapproved:
    description: Also list slots an approval withdrew (never scheduled).
    type: bool
    default: false
  slot_details:
    description:
      - Which per-slot host vars each node gets (the groups and C(gpuaas_slot_counts) are always
        there).
      - V(full) sets C(gpuaas_approved_slots) and C(gpuaas_slots); V(approved) only
        C(gpuaas_approved_slots); V(none) neither, and asks the API for the slot states alone
        (C(GET /v1/inventory/states)).
      - ansible-core copies and tags every value of every host var (some 7 microseconds each), so
        a fleet renders much faster with less. At 10,000 slots on 1,250 nodes, V(none) is the one
        that fits in 2 seconds (see the API guide's benchmark). The control plane's worker needs
        no more than V(none), as its jobs carry the reserved slot's record.
    type: str
    choices: [full, approved, none]
    default: full
'''

EXAMPLES = r'''
# inventory/production.gpuaas_slots.yml (the token from GPUAAS_API_TOKEN)
plugin: gpuaas.slice.slots
url: https://gpuaas.example.com
compose:
  ansible_host: gpuaas_node_id ~ '.nodes.example.com'
keyed_groups:
  # free_slots_0, free_slots_1, ...
  - key: gpuaas_slot_counts.free | default(0) | string
    prefix: free_slots
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/cache/ansible/gpuaas
cache_timeout: 60

---
# inventory/fleet.gpuaas_slots.yml: groups and slot counts only, for the control plane's worker
# and fleet-wide runs
plugin: gpuaas.slice.slots
url: https://gpuaas.example.com
slot_details: none
compose:
  ansible_host: gpuaas_node_id ~ '.nodes.example.com'

# GPUAAS_API_TOKEN=gpuaas_... ansible-inventory -i production.gpuaas_slots.yml --graph gpuaas_state_free
'''

from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import SSLValidationError, open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.gpuaas.slice.plugins.module_utils import _slot_inventory


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):

    NAME = 'gpuaas.slice.slots'

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and \
            path.endswith(('gpuaas_slots.yml', 'gpuaas_slots.yaml'))

    def _fetch(self):
        details = self.get_option('slot_details')
        base = self.get_option('url')
        try:
            shown = _slot_inventory.check_url(base)
        except _slot_inventory.InventoryError as exc:
            raise AnsibleParserError('gpuaas.slice.slots: %s' % to_native(exc))
        query = '%s?%s' % (_slot_inventory.path(details), urlencode(
            {'include_unapproved': 'true' if self.get_option('include_unapproved') else 'false'}))
        url, shown = base.rstrip('/') + query, shown + query
        try:
            # No redirects: the token goes to the address given and nowhere else.
            reply = open_url(url, headers={'Authorization': 'Bearer %s' % self.get_option('token'),
                                           'Accept': 'application/json'},
                             timeout=self.get_option('timeout'), follow_redirects='none', use_netrc=False,
                             validate_certs=self.get_option('validate_certs'), ca_path=self.get_option('ca_path'))
            return _slot_inventory.parse(reply.read(), self.get_option('include_unapproved'), details)
        except HTTPError as exc:
            raise AnsibleParserError('gpuaas.slice.slots: %s answered %s' % (
                shown, _slot_inventory.http_error(exc.code, exc.read())))
        except (URLError, UrlsConnectionError, SSLValidationError, OSError, HTTPException) as exc:
            raise AnsibleParserError('gpuaas.slice.slots: cannot reach the control plane at %s '
                                     '(is `gpuaas serve` running there?): %s'
                                     % (shown, _slot_inventory.scrub(to_native(getattr(exc, 'reason', exc)),
                                                                     self.get_option('token'))))
        except _slot_inventory.InventoryError as exc:
            raise AnsibleParserError('gpuaas.slice.slots: %s: %s' % (shown, to_native(exc)))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if not self.get_option('token'):
            raise AnsibleParserError('gpuaas.slice.slots: no token: set the token option or GPUAAS_API_TOKEN '
                                     "(a reader token: gpuaas token create --role reader)")
        cache_key = self.get_cache_key(path)
        # A cached inventory made with other options is not an answer to these.
        made_with = [self.get_option('slot_details'), self.get_option('include_unapproved')]
        data = None
        if self.get_option('cache') and cache:
            data = self._cache.get(cache_key)
            if data is not None and data.get('made_with') != made_with:
                data = None
        with _slot_inventory.collector_paused():
            if data is None:
                data = dict(self._fetch(), made_with=made_with)
                if self.get_option('cache'):
                    self._cache[cache_key] = data
            self._populate(data)

    def _populate(self, data):
        strict = self.get_option('strict')
        for group in sorted(data['groups']):
            self.inventory.add_group(group)
        for host, hostvars in sorted(data['hosts'].items()):
            self.inventory.add_host(host)
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            self._set_composite_vars(self.get_option('compose'), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option('groups'), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option('keyed_groups'), hostvars, host, strict=strict)
        for group, hosts in data['groups'].items():
            for host in hosts:
                self.inventory.add_child(group, host)
