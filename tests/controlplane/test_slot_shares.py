# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A reservation takes only a slot whose share of its NUMA node fits the shape.

The sample 8-GPU host's slots (discovery's split, tests/unit/.../test_slices.py): on each
node three slots of 28 vCPUs and one of 26, each 252928 MiB.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from gpuaas_control import service
from gpuaas_control.errors import Conflict
from gpuaas_control.models import Slot
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import add_node, add_tenant, request, ssh_key, tenant

BODY = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32, 'ssh_keys': [ssh_key()]}


def test_the_api_shows_each_slots_capacity(client, tokens, node):
    slots = client.get('/v1/slots', headers=tokens['operator']).json()['slots']
    assert [(s['id'], s['cpulist'], s['vcpus'], s['memory_mib']) for s in slots][:4] == [
        ('n1-s0', '1-14,113-126', 28, 252928), ('n1-s1', '15-28,127-140', 28, 252928),
        ('n1-s2', '29-42,141-154', 28, 252928), ('n1-s3', '43-55,155-167', 26, 252928)]
    assert {s['host_cpulist'] for s in slots} == {'0,56,112,168'}
    # Each H100 slot's devices: BAR1 128 GiB + BAR3 32 MiB, the NVMe's 16 KiB, the VF's 1 MiB.
    assert {s['bar_mib'] for s in slots} == {131106}


def test_a_shape_no_slot_fits_is_refused_naming_the_largest_that_fits(client, tokens, node):
    reply = client.post('/v1/allocations', json=dict(BODY, vcpus=256, memory_mib=4 * 1024 * 1024),
                        headers=tokens['acme'])
    assert reply.status_code == 409
    assert reply.json()['detail'] == ('no free slot fits 256 vCPUs and 4194304 MiB: the largest shape a free slot '
                                      'takes is 28 vCPUs and 252928 MiB')
    assert client.post('/v1/allocations', json=dict(BODY, vcpus=28, memory_mib=252928),
                       headers=tokens['acme']).status_code == 201


def test_a_reservation_skips_the_slots_too_small_for_it(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    taken = [db.transact(service.reserve, tenant('acme'), request(vcpus=27, memory_mib=8192))[0].slot_id
             for _copy in range(4)]
    # n1-s3 has 26 vCPUs: the fourth reservation goes to the other node's first slot.
    assert taken == ['n1-s0', 'n1-s1', 'n1-s2', 'n1-s4']
    assert db.transact(service.reserve, tenant('acme'), request(vcpus=26, memory_mib=8192))[0].slot_id == 'n1-s3'
    with pytest.raises(Conflict, match='^no free slot fits 8 vCPUs and 252929 MiB: the largest shape a free slot '
                                       'takes is 28 vCPUs and 252928 MiB'):
        db.transact(service.reserve, tenant('acme'), request(vcpus=8, memory_mib=252929))


def test_a_slot_approved_before_shares_is_never_reserved(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery, only=['n1-s0']))
    add_tenant(db, 'acme')
    db.transact(lambda session: session.execute(update(Slot).values(vcpus=None, memory_mib=None)))
    with pytest.raises(Conflict, match='no free, approved slot on a schedulable node matches the request'):
        db.transact(service.reserve, tenant('acme'), request(vcpus=1, memory_mib=512))
