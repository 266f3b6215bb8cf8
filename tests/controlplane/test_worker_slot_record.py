# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker hands the node the slot record it reserved (gpuaas_slot), and that record is
exactly what the node's slot_check_info accepts for the host it was approved on."""

from __future__ import annotations

import pytest
from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
from ansible_collections.gpuaas.slice.plugins.module_utils._slot_check import SlotCheck, SlotCheckError
from gpuaas_control import service
from gpuaas_control.config import Settings
from gpuaas_control.runs import extravars
from gpuaas_control.worker import Worker
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import add_node, add_tenant, request, tenant
from tests.conftest import REPO
from tests.sysfs import hosts


@pytest.mark.backends('sqlite')
def test_the_allocate_job_carries_the_reserved_slot_record_the_node_accepts(db, tmp_path):
    sys_root, proc_root = hosts.HOSTS['hgx'](str(tmp_path / 'hgx'))
    discovery = Discovery('n1', sys_root, proc_root).run()
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request(ssh_source_cidrs=['203.0.113.0/24']))
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text('all: {}\n')
    worker = Worker(db, Settings(db_url='sqlite://', project_dir=REPO, inventory=str(inventory),
                                 runs_dir=str(tmp_path / 'runs')))
    claim = db.transact(worker._claim)
    sent = extravars(claim)
    record = sent['gpuaas_slot']
    # The networks the slot's SSH port answers go to the node with the allocation.
    assert sent['gpuaas_allocation']['ssh_source_cidrs'] == ['203.0.113.0/24']
    slot = next(s for s in discovery['slots'] if s['slot_id'] == allocation.slot_id)
    assert sent['gpuaas_slot_id'] == record['slot_id'] == allocation.slot_id
    assert record['fingerprint'] == slot['fingerprint'] and record['slot_index'] == slot['slot_index']
    checked = SlotCheck('n1', allocation.slot_id, record, sys_root, proc_root).run()
    assert checked['devices'] == [slot['gpu_address'], slot['nvme_address'], slot['fabric_vf_pci_address']]

    # A record that names another drive than its fingerprint is refused by the node.
    with pytest.raises(SlotCheckError, match="nvme_address: the record says '0000:3c:00.0', but its fingerprint"):
        SlotCheck('n1', allocation.slot_id, dict(record, nvme_address='0000:3c:00.0'), sys_root, proc_root).run()
