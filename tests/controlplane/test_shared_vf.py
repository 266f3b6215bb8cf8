# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slots sharing a fabric PF: the control plane keeps each slot's VF index, shows it, and hands the
node the record its slot_check_info accepts (the sample PCIe server with one fabric PF per socket)."""

from __future__ import annotations

import pytest
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_check import SlotCheck, SlotCheckError
from gpuaas_control.models import Slot
from gpuaas_control.worker import slot_record
from tests.controlplane.conftest import approved_map
from tests.sysfs import hosts


@pytest.fixture
def pcie8(tmp_path):
    sys_root, proc_root = hosts.HOSTS['pcie8'](str(tmp_path / 'pcie8'))
    return sys_root, proc_root, Discovery('p8', sys_root, proc_root).run()


def test_each_slot_keeps_and_shows_its_vf_of_the_shared_pf(client, tokens, db, pcie8):
    sys_root, proc_root, discovery = pcie8
    op = tokens['operator']
    assert client.put('/v1/nodes/p8/discovery', json=discovery, headers=op).status_code == 200
    reply = client.put('/v1/nodes/p8/approval', json={'approved_slots': approved_map(discovery)}, headers=op)
    assert reply.status_code == 200, reply.text
    slots = client.get('/v1/slots', headers=op).json()['slots']
    assert [(s['id'], s['fabric_pf_address'], s['fabric_vf_index'], s['fabric_vf_pci_address']) for s in slots] == [
        ('p8-s%d' % (4 * socket + k), '0000:%s:00.0' % bus, k, '0000:%s:00.%d' % (bus, k + 1))
        for socket, bus in enumerate(('6a', 'd5')) for k in range(4)]
    inventory = client.get('/v1/inventory', headers=op).json()
    assert [s['fabric_vf_index'] for s in inventory['slots']] == [0, 1, 2, 3] * 2
    # The worker's record for each slot is one the node's slot_check_info accepts, with the same VF.
    for row in db.transact(lambda session: session.query(Slot).order_by(Slot.slot_index).all()):
        record = slot_record(row)
        checked = SlotCheck('p8', row.id, record, sys_root, proc_root).run()
        assert (checked['fabric_vf_index'], checked['fabric_vf_pci_address']) == (
            row.fabric_vf_index, row.fabric_vf_pci_address)
    # A record that names another slot's VF of the shared PF is refused by the node.
    record = slot_record(row)
    with pytest.raises(SlotCheckError, match="the record says '0000:d5:00.1', but VF 3 of fabric PF 0000:d5:00.0 is "
                                             '0000:d5:00.4'):
        SlotCheck('p8', row.id, dict(record, fabric_vf_pci_address='0000:d5:00.1'), sys_root, proc_root).run()
