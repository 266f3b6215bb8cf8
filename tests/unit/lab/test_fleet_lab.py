# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet lab's own logic (lab/fleet/): its inventory and slot maps agree with the slot
identity, the guest's reports are read as the sink writes them, and every way a node's proof
can fall short is a problem."""

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
    for host, slot_id in fleet_lab.SLOTS.items():
        assert hosts[host]['gpuaas_node_id'] == host
        with open(os.path.join(fleet_lab.HERE, 'host_vars', '%s.yml' % host)) as handle:
            approved = yaml.safe_load(handle)['gpuaas_approved_slots']
        assert [slot['slot_id'] for slot in approved] == [slot_id]
        assert Slot.parse(slot_id).node_id == host


def test_the_nodes_use_their_own_python_and_become():
    with open(fleet_lab.INVENTORY) as handle:
        common = yaml.safe_load(handle)['all']['vars']
    assert common['ansible_become'] is True
    assert common['ansible_python_interpreter'] == '/usr/bin/python3'
    assert 'ansible_connection' not in common


def sink_line(body, received_at=1.0):
    return json.dumps({'received_at': received_at, 'body': body})


def test_parse_reports_takes_boot_facts_and_the_latest_probe():
    text = '\n'.join([
        sink_line({'metric': 'guest_boot', 'firmware': 'bios'}),
        'not json',
        sink_line({'metric': 'probe', 'ip': '10.100.0.11', 'gateway_ok': 0}),
        sink_line({'metric': 'probe', 'ip': '10.100.0.11', 'gateway_ok': 1}),
    ])
    facts, probe = fleet_lab.parse_reports(text)
    assert facts['firmware'] == 'bios'
    assert probe['gateway_ok'] == 1


def result(**probe):
    return {'node': 'fleet-vm', 'address': '10.100.0.11', 'guest': {'firmware': 'bios'},
            'probe': dict({'ip': '10.100.0.11', 'gateway_ok': 1, 'peers_reachable': []}, **probe)}


def test_a_good_proof_has_no_problems():
    assert not fleet_lab.problems_of(result())


def test_every_shortfall_is_a_problem():
    assert fleet_lab.problems_of(result(ip='10.100.0.12')) == [
        'fleet-vm: the guest has 10.100.0.12, the layout says 10.100.0.11']
    assert fleet_lab.problems_of(result(gateway_ok=0)) == ['fleet-vm: the guest cannot reach its gateway']
    assert fleet_lab.problems_of(result(peers_reachable=['10.100.0.10'])) == [
        "fleet-vm: the guest REACHES OTHER SLOTS: ['10.100.0.10']"]
    assert fleet_lab.problems_of(dict(result(), probe={})) == ['fleet-vm: no probe from the guest']
    assert fleet_lab.problems_of(dict(result(), guest={})) == ['fleet-vm: the guest reported no boot facts']


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
