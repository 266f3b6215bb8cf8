# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuaas.slice.slots inventory plugin, run by the real ansible-inventory against the
control plane's database on SQLite and PostgreSQL: hosts, groups, constructed vars, the
cache, and a clear error for a database that is not the control plane's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from gpuaas_control import service
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, request, tenant

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _plain(value):
    """ansible-inventory --list marks templated values as unsafe: {'__ansible_unsafe': v}."""
    if isinstance(value, dict):
        if list(value) == ['__ansible_unsafe']:
            return value['__ansible_unsafe']
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _inventory(tmp_path, url, *args, **options):
    path = tmp_path / 'test.gpuaas_slots.yml'
    path.write_text(yaml.safe_dump(dict({'plugin': 'gpuaas.slice.slots', 'url': url}, **options)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'),
               ANSIBLE_INVENTORY_UNPARSED_FAILED='true', ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-inventory'),
                           '-i', str(path), '--list'] + list(args),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    return done


def test_the_slot_table_as_an_inventory(db, db_url, tmp_path, hgx_discovery_factory):
    one, two = hgx_discovery_factory('gpu-node-01'), hgx_discovery_factory('gpu-node-02')
    add_node(db, one, approved_map(one))
    add_node(db, two, approved_map(two, only={'gpu-node-02-s4', 'gpu-node-02-s5'}))
    add_tenant(db, 'acme')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request(node_id='gpu-node-02',
                                                                                numa_node=1))
    db.transact(service.set_drain, OPERATOR, 'gpu-node-02', True, 'bios update')
    cache_dir = tmp_path / 'cache'
    done = _inventory(tmp_path, db_url,
                      compose={'ansible_host': "gpuaas_node_id ~ '.example.com'"},
                      keyed_groups=[{'key': 'gpuaas_slot_counts.free | default(0) | string',
                                     'prefix': 'free_slots'}],
                      cache=True, cache_plugin='ansible.builtin.jsonfile',
                      cache_connection=str(cache_dir))
    assert done.returncode == 0, done.stderr
    data = _plain(json.loads(done.stdout))
    hostvars = data['_meta']['hostvars']
    assert sorted(hostvars) == ['gpu-node-01', 'gpu-node-02']
    node2 = hostvars['gpu-node-02']
    assert node2['ansible_host'] == 'gpu-node-02.example.com'
    assert node2['gpuaas_schedulable'] is False and node2['gpuaas_drain_reason'] == 'bios update'
    assert node2['gpuaas_approved_slots'] == approved_map(two, only={'gpu-node-02-s4', 'gpu-node-02-s5'})
    assert [(s['slot_id'], s['state'], s['allocation_id']) for s in node2['gpuaas_slots']] == [
        ('gpu-node-02-s4', 'reserved', allocation.id), ('gpu-node-02-s5', 'free', None)]
    assert node2['gpuaas_slots'][0]['mac'] == allocation.mac
    assert node2['gpuaas_slots'][0]['capacity_metadata']['fabric_claim_mode'] == 'per_slot_vf'
    assert len(hostvars['gpu-node-01']['gpuaas_slots']) == 8

    def hosts(group):
        return sorted(data.get(group, {}).get('hosts', []))
    assert hosts('gpuaas_state_free') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_state_reserved') == ['gpu-node-02']
    assert hosts('gpuaas_gpu_10de_2330') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_numa_0') == ['gpu-node-01']
    assert hosts('gpuaas_numa_1') == ['gpu-node-01', 'gpu-node-02']
    assert hosts('gpuaas_drained') == ['gpu-node-02'] and hosts('gpuaas_schedulable') == ['gpu-node-01']
    assert hosts('free_slots_8') == ['gpu-node-01'] and hosts('free_slots_1') == ['gpu-node-02']
    assert os.listdir(cache_dir)

    # The cache answers until it is flushed.
    db.transact(service.set_drain, OPERATOR, 'gpu-node-02', False)
    options = dict(cache=True, cache_plugin='ansible.builtin.jsonfile', cache_connection=str(cache_dir))
    cached = json.loads(_inventory(tmp_path, db_url, **options).stdout)
    assert cached['_meta']['hostvars']['gpu-node-02']['gpuaas_schedulable'] is False
    fresh = json.loads(_inventory(tmp_path, db_url, '--flush-cache', **options).stdout)
    assert fresh['_meta']['hostvars']['gpu-node-02']['gpuaas_schedulable'] is True


def test_a_database_that_is_not_the_control_planes(tmp_path):
    done = _inventory(tmp_path, 'sqlite:///%s' % (tmp_path / 'empty.db'))
    assert done.returncode != 0
    assert 'cannot read the slot table' in done.stderr and 'gpuaas db upgrade' in done.stderr
    done = _inventory(tmp_path, 'nosuchdb://x')
    assert done.returncode != 0 and 'not a usable database URL' in done.stderr
