# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet lab's own logic (lab/fleet/): its inventory and slot maps agree with the slot
identity, the overlay plans it hands the nodes are the control plane's, the guest's reports are
read as the sink writes them, and every way a node's proof can fall short is a problem."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'lab', 'fleet'))
import fleet_lab  # noqa: E402  (lab/fleet/fleet_lab.py)

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import Slot  # noqa: E402


def test_each_node_has_its_own_id_and_approved_slot_map():
    with open(fleet_lab.INVENTORY) as handle:
        hosts = yaml.safe_load(handle)['all']['children']['fleet']['hosts']
    assert sorted(hosts) == sorted(fleet_lab.SLOTS)
    for host, slot_ids in fleet_lab.SLOTS.items():
        assert hosts[host]['gpuaas_node_id'] == host
        with open(os.path.join(fleet_lab.HERE, 'host_vars', '%s.yml' % host)) as handle:
            approved = yaml.safe_load(handle)['gpuaas_approved_slots']
        assert [slot['slot_id'] for slot in approved] == list(slot_ids)
        assert all(Slot.parse(slot_id).node_id == host for slot_id in slot_ids)


def test_a_tenant_s_slots_across_the_nodes_have_distinct_indices_and_the_plan_names_the_other_node():
    """As reservation places them: slot i is 10.100.0.(10+i) on every node."""
    assert sorted(fleet_lab.TENANTS) == sorted(slot for slots in fleet_lab.SLOTS.values() for slot in slots)
    for tenant in set(fleet_lab.TENANTS.values()):
        indices = [Slot.parse(slot).index for slot, owner in fleet_lab.TENANTS.items() if owner == tenant]
        assert len(indices) == len(set(indices))
    hosts = ('fleet-vm', 'fleet-local')
    assert fleet_lab.overlay_plan('lab-a', 'fleet-local', hosts) == {
        'tenant': 'lab-a', 'vni': fleet_lab.VNI['lab-a'], 'mtu': 1450,
        'peers': [{'node_id': 'fleet-vm', 'underlay_ip': fleet_lab.UNDERLAY['fleet-vm']}]}
    assert fleet_lab.overlay_plan('lab-a', 'fleet-vm', hosts)['peers'] == [
        {'node_id': 'fleet-local', 'underlay_ip': fleet_lab.UNDERLAY['fleet-local']}]
    assert fleet_lab.overlay_plan('lab-b', 'fleet-local', hosts)['peers'] == []
    assert fleet_lab.overlay_plan('lab-a', 'fleet-local', ['fleet-local'])['peers'] == []   # --only


def test_the_plans_are_what_the_node_accepts():
    from ansible_collections.gpuaas.slice.plugins.module_utils._tenant import check_plan
    for slot, tenant in fleet_lab.TENANTS.items():
        plan = fleet_lab.overlay_plan(tenant, Slot.parse(slot).node_id, tuple(fleet_lab.SLOTS))
        assert check_plan(plan, tenant)['vni'] == fleet_lab.VNI[tenant]


def test_the_control_plane_approves_one_slot_per_node(tmp_path):
    for host, slot_ids in fleet_lab.SLOTS.items():
        with open(fleet_lab.approval(str(tmp_path), host)) as handle:
            approved = yaml.safe_load(handle)['gpuaas_approved_slots']
        assert [slot['slot_id'] for slot in approved] == [slot_ids[0]]


def test_the_nodes_use_their_own_python_and_become():
    with open(fleet_lab.INVENTORY) as handle:
        common = yaml.safe_load(handle)['all']['vars']
    assert common['ansible_become'] is True
    assert common['ansible_python_interpreter'] == '/usr/bin/python3'
    assert 'ansible_connection' not in common


def sink_line(body, received_at=1.0):
    return json.dumps({'received_at': received_at, 'body': body})


def test_parse_reports_takes_boot_facts_the_latest_probe_and_what_the_probes_since_reached():
    text = '\n'.join([
        sink_line({'metric': 'guest_boot', 'firmware': 'bios'}),
        'not json',
        sink_line({'metric': 'probe', 'ip': '10.100.0.11', 'gateway_ok': 0, 'peers_reachable': '10.100.0.12'}),
        sink_line({'metric': 'probe', 'ip': '10.100.0.11', 'gateway_ok': 1, 'peers_reachable': '10.100.0.10'}, 5.0),
        sink_line({'metric': 'probe', 'ip': '10.100.0.11', 'gateway_ok': 1, 'peers_reachable': ''}, 6.0),
    ])
    facts, probe, reached = fleet_lab.parse_reports(text, since=5.0)
    assert facts['firmware'] == 'bios'
    assert probe['gateway_ok'] == 1
    assert reached == {'10.100.0.10'}   # the union of the probes from 5.0 on
    assert fleet_lab.parse_reports(text, since=7.0)[2] is None   # none since: unproven, not "none reached"
    assert fleet_lab.parse_reports(text)[2] == {'10.100.0.10', '10.100.0.12'}


def slot(slot_id, tenant, address, reached=(), **probe):
    return {'slot': slot_id, 'tenant': tenant, 'address': address, 'guest': {'firmware': 'bios'},
            'reached': set(reached), 'probe': dict({'ip': address, 'gateway_ok': 1}, **probe)}


def result(**probe):
    return {'node': 'fleet-vm', 'slots': [slot('fleet-vm-s1', 'lab-a', '10.100.0.11', **probe)]}


def test_a_good_proof_has_no_problems():
    assert not fleet_lab.problems_of(result())


def test_every_shortfall_is_a_problem():
    assert fleet_lab.problems_of(result(ip='10.100.0.12')) == [
        'fleet-vm fleet-vm-s1: the guest has 10.100.0.12, the layout says 10.100.0.11']
    assert fleet_lab.problems_of(result(gateway_ok=0)) == ['fleet-vm fleet-vm-s1: the guest cannot reach its gateway']
    no_probe, no_facts = result(), result()
    no_probe['slots'][0]['probe'] = {}
    no_facts['slots'][0]['guest'] = {}
    assert fleet_lab.problems_of(no_probe) == ['fleet-vm fleet-vm-s1: no probe from the guest']
    assert fleet_lab.problems_of(no_facts) == ['fleet-vm fleet-vm-s1: the guest reported no boot facts']


def matrix(a_local, b_local, a_vm):
    return fleet_lab.tenant_matrix([
        {'node': 'fleet-local', 'slots': [slot('fleet-local-s0', 'lab-a', '10.100.0.10', a_local),
                                          slot('fleet-local-s2', 'lab-b', '10.100.0.12', b_local)]},
        {'node': 'fleet-vm', 'slots': [slot('fleet-vm-s1', 'lab-a', '10.100.0.11', a_vm)]}])


def test_the_matrix_across_the_nodes_wants_the_tenant_s_slots_reached_and_no_other():
    rows, problems = matrix(['10.100.0.11'], [], ['10.100.0.10'])
    assert not problems
    assert ('fleet-local-s0', 'fleet-vm-s1', True, True) in rows
    assert ('fleet-vm-s1', 'fleet-local-s2', False, False) in rows
    assert matrix([], [], ['10.100.0.10'])[1] == [
        'fleet-local-s0 (tenant lab-a) does not reach fleet-vm-s1 of its own tenant at 10.100.0.11']
    assert matrix(['10.100.0.11'], [], ['10.100.0.10', '10.100.0.12'])[1] == [
        'fleet-vm-s1 (tenant lab-a) REACHES fleet-local-s2 of tenant lab-b at 10.100.0.12']


def test_a_node_that_stops_answering_mid_task_ends_it_as_unreachable_in_a_minute():
    with open(fleet_lab.INVENTORY) as handle:
        args = yaml.safe_load(handle)['all']['vars']['ansible_ssh_common_args']
    assert '-o ServerAliveInterval=15' in args and '-o ServerAliveCountMax=4' in args


def test_the_worker_s_inventory_is_the_fleet_s_with_how_to_reach_each_node(tmp_path):
    import control_plane  # lab/fleet/control_plane.py
    connection = tmp_path / 'connection.yml'
    reach = {host: {'ansible_host': '127.0.0.1', 'ansible_port': port, 'ansible_user': 'gpuaas-lab'}
             for host, port in (('fleet-local', 2201), ('fleet-vm', 2202))}
    connection.write_text(yaml.safe_dump({'all': {'children': {'fleet': {'hosts': reach}}}}))
    path = control_plane.worker_inventory(str(tmp_path / 'inventory'), fleet_lab.INVENTORY, str(connection),
                                          {'gpuaas_guest_cmdline': 'console=ttyS0'})
    with open(path) as handle:
        inventory = yaml.safe_load(handle)
    hosts = inventory['all']['children']['fleet']['hosts']
    assert hosts['fleet-vm']['ansible_port'] == 2202 and hosts['fleet-vm']['gpuaas_node_id'] == 'fleet-vm'
    assert hosts['fleet-local']['ansible_port'] == 2201 and hosts['fleet-local']['gpuaas_service_manager'] == 'daemon'
    assert inventory['all']['vars']['gpuaas_guest_cmdline'] == 'console=ttyS0'
    assert inventory['all']['vars']['ansible_become'] is True
    for host in fleet_lab.SLOTS:
        assert (tmp_path / 'inventory' / 'host_vars' / ('%s.yml' % host)).read_text() == \
            open(os.path.join(fleet_lab.HERE, 'host_vars', '%s.yml' % host)).read()


def _state(pid):
    with open('/proc/%d/stat' % pid) as handle:
        return handle.read().rsplit(')', 1)[1].split()[0]


def test_the_vm_node_is_stopped_and_resumed_through_its_pidfile(tmp_path):
    import subprocess
    import time
    proc = subprocess.Popen(['sleep', '60'])
    try:
        node = fleet_lab.VmNode()
        node.pidfile = str(tmp_path / 'vm.pid')
        (tmp_path / 'vm.pid').write_text('%d\n' % proc.pid)
        node.pause()
        time.sleep(0.2)
        assert _state(proc.pid) == 'T'
        node.resume()
        time.sleep(0.2)
        assert _state(proc.pid) == 'S'
        node.stop()
        assert proc.wait(10) == -15 and not (tmp_path / 'vm.pid').exists()
        with pytest.raises(fleet_lab.LabFailed, match='not running'):
            node.pause()
    finally:
        proc.kill()
        proc.wait()
