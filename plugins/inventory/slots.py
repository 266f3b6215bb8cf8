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
  - Reads the gpuaas.slice control plane's database (SQLite or PostgreSQL, through
    SQLAlchemy) and returns one host per node, named by its node id, so AWX or
    C(ansible-playbook) can use the slot table as an inventory source.
  - Each node's host vars hold C(gpuaas_node_id), C(gpuaas_approved_slots) (the approved
    slot map the allocate and release plays read), C(gpuaas_slots) (every approved slot with
    its state, allocation, GPU model and address, NUMA node, NVMe, fabric VF, MAC and IP),
    C(gpuaas_slot_counts), C(gpuaas_schedulable) and C(gpuaas_drain_reason).
  - "Groups: C(gpuaas_nodes); C(gpuaas_schedulable) or C(gpuaas_drained); and, for nodes with
    at least one such approved slot, C(gpuaas_state_<state>) (V(free), V(reserved),
    V(blocked)), C(gpuaas_gpu_<vendor>_<device>) and C(gpuaas_numa_<node>)."
  - The inventory file's name must end in C(gpuaas_slots.yml) or C(gpuaas_slots.yaml).
  - Reads only; the connection details of the nodes (C(ansible_host) and so on) come from
    O(compose), host vars or another inventory source.
requirements:
  - SQLAlchemy 2 (and psycopg 3 for PostgreSQL) on the controller
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
      - The control plane's database as an SQLAlchemy URL, for example
        V(sqlite:////var/lib/gpuaas/control/gpuaas.db) or
        V(postgresql://gpuaas@db.example.com/gpuaas).
    type: str
    required: true
    env:
      - name: GPUAAS_DB_URL
  include_unapproved:
    description: Also list slots an approval withdrew (never scheduled).
    type: bool
    default: false
'''

EXAMPLES = r'''
# inventory/production.gpuaas_slots.yml
plugin: gpuaas.slice.slots
url: postgresql://gpuaas@db.example.com/gpuaas
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

# ansible-inventory -i production.gpuaas_slots.yml --graph gpuaas_state_free
'''

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.gpuaas.slice.plugins.module_utils import _slot_inventory

try:
    import sqlalchemy
    from sqlalchemy.engine import make_url
    HAS_SQLALCHEMY = True
except ImportError:
    HAS_SQLALCHEMY = False

NODES_SQL = 'SELECT id, schedulable, drain_reason, approved_slots FROM nodes'
SLOTS_SQL = ('SELECT id, node_id, %s FROM slots'
             % ', '.join(key for key in _slot_inventory.SLOT_KEYS))


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):

    NAME = 'gpuaas.slice.slots'

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and \
            path.endswith(('gpuaas_slots.yml', 'gpuaas_slots.yaml'))

    def _read_tables(self, url):
        if not HAS_SQLALCHEMY:
            raise AnsibleParserError('gpuaas.slice.slots needs SQLAlchemy 2 on the controller '
                                     '(pip install sqlalchemy; and psycopg[binary] for PostgreSQL)')
        try:
            parsed = make_url(url)
            if parsed.get_backend_name() == 'postgresql' and parsed.drivername == 'postgresql':
                parsed = parsed.set(drivername='postgresql+psycopg')
            engine = sqlalchemy.create_engine(parsed)
        except (sqlalchemy.exc.ArgumentError, ValueError, ImportError) as exc:
            raise AnsibleParserError('gpuaas.slice.slots: url is not a usable database URL: %s'
                                     % to_native(exc))
        try:
            with engine.connect() as conn:
                nodes = [dict(row._mapping) for row in conn.execute(sqlalchemy.text(NODES_SQL))]
                slots = [dict(row._mapping) for row in conn.execute(sqlalchemy.text(SLOTS_SQL))]
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise AnsibleParserError('gpuaas.slice.slots: cannot read the slot table at %s (is it '
                                     'the control plane\'s database, upgraded with `gpuaas db '
                                     'upgrade`?): %s' % (parsed.render_as_string(hide_password=True),
                                                         to_native(exc.orig if hasattr(exc, 'orig') else exc)))
        finally:
            engine.dispose()
        return _slot_inventory.build(nodes, slots,
                                     include_unapproved=self.get_option('include_unapproved'))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache') and cache
        data = None
        if use_cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                data = None
        if data is None:
            data = self._read_tables(self.get_option('url'))
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
