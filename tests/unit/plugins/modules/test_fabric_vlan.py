# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fabric_vlan against the kernel model and a fake ip: the VF found from its address, VLAN,
spoof checking and trust set through the PF and read back, check mode, diff, idempotence,
the release to VLAN 0, and every refusal."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _fabric_vlan
from ansible_collections.gpuaas.slice.plugins.module_utils._sriov import vf_guids
from ansible_collections.gpuaas.slice.plugins.modules import fabric_vlan, sriov_vfs
from tests.sysfs import kernel_fixture
from tests.unit.module_runner import run_module

kernel = kernel_fixture.kernel  # the fixture

PF = '0000:03:00.0'            # workstation: Ethernet, VFs at offset 2
NETDEV = 'enp3s0f0np0'
VF1 = '0000:03:00.3'
IB_PF = '0000:5e:00.0'         # gpu_box: InfiniBand
IP = '/usr/sbin/ip'
SHOW = [IP, '-j', '-d', 'link', 'show', 'dev', NETDEV]


def vlan_set(vlan, index=1):
    return [IP, 'link', 'set', 'dev', NETDEV, 'vf', str(index), 'vlan', str(vlan), 'spoofchk', 'on', 'trust', 'off']


@pytest.fixture
def ws(kernel, capsys):
    host = kernel('workstation')
    run_module(sriov_vfs, dict(host.args, address=PF, num_vfs=4, node_id='ws-01'), capsys=capsys)
    host.tools.calls[:] = []
    return host


def run(host, capsys, vf_address=VF1, vlan=101, check_mode=False, **extra):
    args = dict(host.args, vf_address=vf_address, vlan=vlan)
    args.update(extra)
    return run_module(fabric_vlan, args, check_mode=check_mode, diff=True, capsys=capsys)


def test_check_mode_then_set_then_nothing_to_do_then_release(ws, capsys):
    checked = run(ws, capsys, check_mode=True)
    assert checked['changed'] is True and checked['commands'] == [vlan_set(101)]
    assert ws.tools.mutations() == []
    assert checked['diff'] == {'before': {'vf 1': {'vlan': 0, 'spoofchk': True, 'trust': False}},
                               'after': {'vf 1': {'vlan': 101, 'spoofchk': True, 'trust': False}}}

    ws.tools.calls[:] = []
    done = run(ws, capsys)
    assert done['changed'] is True and (done['kind'], done['pf_address'], done['vf_index']) == ('ethernet', PF, 1)
    assert ws.tools.calls == [SHOW, vlan_set(101), SHOW]       # read, set, read back
    assert (done['vlan'], done['spoofchk'], done['trust']) == (101, True, False)
    # The kernel model holds it, on VF 1 only.
    shown = json.loads(ws.tools.run_command(SHOW)[1])[0]['vfinfo_list']
    assert [entry['vlan_list'] for entry in shown] == [[{}], [{'vlan': 101}], [{}], [{}]]

    ws.tools.calls[:] = []
    again = run(ws, capsys)
    assert again['changed'] is False and again['actions'] == [] and ws.tools.calls == [SHOW]

    released = run(ws, capsys, vlan=0)
    assert released['changed'] is True and released['vlan'] == 0
    assert ws.tools.mutations() == [vlan_set(0)]


def test_a_tenant_who_turned_trust_on_or_spoofchk_off_is_put_back(ws, capsys):
    run(ws, capsys)
    ws.tools.run_command([IP, 'link', 'set', 'dev', NETDEV, 'vf', '1', 'spoofchk', 'off', 'trust', 'on'])
    ws.tools.calls[:] = []
    fixed = run(ws, capsys)
    assert fixed['changed'] is True and ws.tools.mutations() == [vlan_set(101)]
    assert fixed['diff']['before']['vf 1'] == {'vlan': 101, 'spoofchk': False, 'trust': True}


def test_a_vf_the_kernel_does_not_report_fully_fails_closed(ws, capsys):
    real = ws.tools._link_show

    def without_trust(ifname):
        rc, out, err = real(ifname)
        link = json.loads(out)
        for entry in link[0]['vfinfo_list']:
            entry.pop('trust')
        return rc, json.dumps(link), err
    ws.tools._link_show = without_trust
    failed = run(ws, capsys)
    assert failed['failed'] and 'does not report VF 1 of %s with its spoof checking and trust' % NETDEV in failed['msg']
    assert ws.tools.mutations() == []


def test_a_set_that_does_not_take_effect_fails(ws, capsys):
    real = ws.tools._vf_set
    ws.tools._vf_set = lambda ifname, index, rest: real(ifname, index, ['vlan', '7'] + rest[2:])
    failed = run(ws, capsys)
    assert failed['failed'] and 'did not take effect' in failed['msg']
    assert "'vlan': 7" in failed['msg']


@pytest.mark.parametrize('vlan, reason', [
    (1, 'vlan 1 is the default VLAN'), (4095, 'vlan'), (-1, 'vlan'), (5000, 'vlan')])
def test_a_vlan_outside_what_a_tenant_may_have_is_refused(ws, capsys, vlan, reason):
    failed = run(ws, capsys, vlan=vlan)
    assert failed['failed'] and reason in failed['msg'] and str(vlan) in failed['msg']
    assert ws.tools.calls == []


def test_a_pf_is_not_a_vf(ws, capsys):
    failed = run(ws, capsys, vf_address=PF)
    assert failed['failed'] and 'is not an SR-IOV VF' in failed['msg'] and PF in failed['msg']


def test_an_infiniband_vf_is_left_to_the_subnet_manager_and_its_port_guid_returned(kernel, capsys):
    box = kernel('gpu_box')
    made = run_module(sriov_vfs, dict(box.args, address=IB_PF, num_vfs=2, node_id='gpu-box'), capsys=capsys)
    box.tools.calls[:] = []
    got = run(box, capsys, vf_address=made['vf_addresses'][1], node_id='gpu-box')
    assert got['changed'] is False and got['kind'] == 'infiniband' and got['vlan'] is None
    assert got['port_guid'] == vf_guids('gpu-box', IB_PF, 1)[1] == made['vfs'][1]['port_guid']
    assert box.tools.calls == []


def test_vlan_of_each_iproute2_shape():
    """iproute2 prints IFLA_VF_VLAN_LIST as a list of objects (empty for VLAN 0), and the older
    IFLA_VF_VLAN as a ``vlan`` key left out when 0 (ip/ipaddress.c, print_vfinfo)."""
    assert _fabric_vlan.vf_vlan({'vf': 0, 'vlan_list': [{'vlan': 101, 'qos': 3}]}) == 101
    assert _fabric_vlan.vf_vlan({'vf': 0, 'vlan_list': [{}]}) == 0
    assert _fabric_vlan.vf_vlan({'vf': 0, 'vlan': 12}) == 12
    assert _fabric_vlan.vf_vlan({'vf': 0}) == 0


# -- state=reconciled: every slot's VF as the node's live leases say ------------------------------

def write_lease(lease_dir, slot, phase='running', **data):
    lease_dir.mkdir(exist_ok=True)
    (lease_dir / ('%s.json' % slot)).write_text(json.dumps({
        'slot_id': slot, 'allocation_id': 'a-' + slot, 'phase': phase, 'created_at': '2026-12-01T10:00:00Z',
        'updated_at': '2026-12-01T10:00:00Z', 'data': data}))


def network(tenant, vlan, pkey=None):
    return {'tenant': tenant, 'vni': 5001, 'mtu': 1450, 'peers': [], 'vlan': vlan, 'pkey': pkey}


def reconcile(host, capsys, lease_dir, slots=(), check_mode=False, node_id='ws-01'):
    return run_module(fabric_vlan, dict(host.args, state='reconciled', node_id=node_id, lease_dir=str(lease_dir),
                                        slots=list(slots)), check_mode=check_mode, diff=True, capsys=capsys)


def vlans_of(host):
    return [(entry['vlan_list'][0] or {}).get('vlan', 0)
            for entry in json.loads(host.tools.run_command(SHOW)[1])[0]['vfinfo_list']]


APPROVED = [{'slot_id': 'ws-01-s%d' % i, 'capacity_metadata': {'fabric_vf_pci_address': '0000:03:00.%d' % (2 + i)}}
            for i in range(4)]


def test_reconciled_puts_each_slot_on_its_live_lease_vlan_and_the_others_on_none(ws, capsys, tmp_path):
    leases = tmp_path / 'leases'
    write_lease(leases, 'ws-01-s1', tenant='acme', network=network('acme', 101), passthrough=True,
                fabric_vf_pci_address=VF1)
    write_lease(leases, 'ws-01-s2', phase='wiping', tenant='acme', network=network('acme', 101), passthrough=True,
                fabric_vf_pci_address='0000:03:00.4')
    write_lease(leases, 'ws-01-s3', tenant='acme', network=network('acme', 101), passthrough=False,
                fabric_vf_pci_address='0000:03:00.5')
    run(ws, capsys, vf_address='0000:03:00.4', vlan=101)        # a release that crashed before VLAN 0
    ws.tools.run_command([IP, 'link', 'set', 'dev', NETDEV, 'vf', '0', 'trust', 'on'])   # a tenant's doing
    ws.tools.calls[:] = []

    checked = reconcile(ws, capsys, leases, APPROVED, check_mode=True)
    assert checked['changed'] is True and ws.tools.mutations() == [] and vlans_of(ws) == [0, 0, 101, 0]
    assert checked['vlans'] == [
        {'slot_id': 'ws-01-s0', 'vf_address': '0000:03:00.2', 'found': {'vlan': 0, 'spoofchk': True, 'trust': True},
         'set': {'vlan': 0, 'spoofchk': True, 'trust': False}},
        {'slot_id': 'ws-01-s1', 'vf_address': VF1, 'found': {'vlan': 0, 'spoofchk': True, 'trust': False},
         'set': {'vlan': 101, 'spoofchk': True, 'trust': False}},
        {'slot_id': 'ws-01-s2', 'vf_address': '0000:03:00.4', 'found': {'vlan': 101, 'spoofchk': True, 'trust': False},
         'set': {'vlan': 0, 'spoofchk': True, 'trust': False}}]
    assert checked['diff']['after'] == {'ws-01-s0': {'vlan': 0, 'spoofchk': True, 'trust': False},
                                        'ws-01-s1': {'vlan': 101, 'spoofchk': True, 'trust': False},
                                        'ws-01-s2': {'vlan': 0, 'spoofchk': True, 'trust': False}}

    done = reconcile(ws, capsys, leases, APPROVED)
    assert done['changed'] is True and done['vlans'] == checked['vlans'] and done['problems'] == []
    assert vlans_of(ws) == [0, 101, 0, 0] and done['port_guids'] == [] and done['members'] == []
    assert ws.tools.mutations() == [vlan_set(0, 0), vlan_set(101, 1), vlan_set(0, 2)]
    again = reconcile(ws, capsys, leases, APPROVED)
    assert again['changed'] is False and again['vlans'] == []


def test_reconciled_takes_a_leased_vf_the_map_does_not_list(ws, capsys, tmp_path):
    leases = tmp_path / 'leases'
    write_lease(leases, 'ws-01-s1', tenant='acme', network=network('acme', 101), passthrough=True,
                fabric_vf_pci_address=VF1)
    done = reconcile(ws, capsys, leases)
    assert [item['slot_id'] for item in done['vlans']] == ['ws-01-s1'] and vlans_of(ws) == [0, 101, 0, 0]


def test_reconciled_puts_the_vf_of_a_lease_it_cannot_trust_on_no_tenant_and_says_so(ws, capsys, tmp_path):
    leases = tmp_path / 'leases'
    run(ws, capsys, vlan=101)
    write_lease(leases, 'ws-01-s1', tenant='acme', network=network('acme', 4095), passthrough=True,
                fabric_vf_pci_address=VF1)
    done = reconcile(ws, capsys, leases, APPROVED)
    assert vlans_of(ws) == [0, 0, 0, 0]
    assert len(done['problems']) == 1 and done['problems'][0].startswith('ws-01-s1: data.network.vlan')


def test_reconciled_reports_a_vf_it_cannot_read_and_converges_the_others(ws, capsys, tmp_path):
    leases = tmp_path / 'leases'
    slots = APPROVED[:2] + [{'slot_id': 'ws-01-s7', 'capacity_metadata': {'fabric_vf_pci_address': '0000:03:00.7'}}]
    run(ws, capsys, vlan=101)
    done = reconcile(ws, capsys, leases, slots)
    assert vlans_of(ws) == [0, 0, 0, 0] and done['changed'] is True
    assert len(done['problems']) == 1 and done['problems'][0].startswith('ws-01-s7: fabric VF 0000:03:00.7: ')


@pytest.mark.parametrize('slots, reason', [
    ([{'slot_id': 'other-node-s0', 'fabric_vf_pci_address': VF1}], 'is not a slot of node ws-01'),
    ([{'slot_id': 'ws-01-s0', 'fabric_vf_pci_address': '0000:03:00.2\n'}], 'fabric_vf_pci_address'),
    ([{'slot_id': '../ws-01-s0'}], 'slots[0]'),
    (['ws-01-s0'], "option 'slots'"),
    ([{'slot_id': 'ws-01-s0', 'fabric_vf_pci_address': VF1}, {'slot_id': 'ws-01-s1', 'fabric_vf_pci_address': VF1}],
     'both name fabric VF %s' % VF1),
])
def test_reconciled_refuses_a_slot_map_it_cannot_trust_and_changes_nothing(ws, capsys, tmp_path, slots, reason):
    failed = reconcile(ws, capsys, tmp_path, slots)
    assert failed['failed'] and reason in failed['msg'] and ws.tools.mutations() == []


def test_reconciled_on_infiniband_returns_the_node_guids_and_the_leases_memberships(kernel, capsys, tmp_path):
    box = kernel('gpu_box')
    made = run_module(sriov_vfs, dict(box.args, address=IB_PF, num_vfs=2, node_id='gpu-box'), capsys=capsys)
    slots = [{'slot_id': 'gpu-box-s%d' % i, 'fabric_vf_pci_address': vf} for i, vf in enumerate(made['vf_addresses'])]
    write_lease(tmp_path / 'leases', 'gpu-box-s1', tenant='acme', network=network('acme', None, '0x8100'),
                passthrough=True, fabric_vf_pci_address=made['vf_addresses'][1])
    box.tools.calls[:] = []
    got = reconcile(box, capsys, tmp_path / 'leases', slots, node_id='gpu-box')
    guids = ['0x' + vf_guids('gpu-box', IB_PF, i)[1].replace(':', '') for i in range(2)]
    assert got['changed'] is False and box.tools.calls == [] and got['port_guids'] == sorted(guids)
    assert got['members'] == [{'slot_id': 'gpu-box-s1', 'port_guid': guids[1], 'tenant': 'acme', 'pkey': '0x0100'}]
    assert got['guid_slots'] == {guids[0]: 'gpu-box-s0', guids[1]: 'gpu-box-s1'}


def test_reconciled_keeps_a_stopped_vm_on_its_tenant_vlan(ws, capsys, tmp_path):
    """slot_power starts a stopped VM again without allocate: its VF must keep its segment."""
    leases = tmp_path / 'leases'
    run(ws, capsys, vlan=101)
    write_lease(leases, 'ws-01-s1', phase='stopped', tenant='acme', network=network('acme', 101), passthrough=True,
                fabric_vf_pci_address=VF1)
    kept = reconcile(ws, capsys, leases, APPROVED)
    assert kept['changed'] is False and vlans_of(ws) == [0, 101, 0, 0]


def test_the_reconcile_report_names_slot_found_and_set_once_per_finding():
    vlans = {'vlans': [{'slot_id': 'ws-01-s1', 'vf_address': VF1, 'found': {'vlan': 0, 'spoofchk': False, 'trust': True},
                        'set': {'vlan': 101, 'spoofchk': True, 'trust': False}}],
             'problems': ['ws-01-s2: bad lease; it joins no tenant', 'ws-01-s3: fabric VF 0000:03:00.5: gone'],
             'guid_slots': {'0x0211223344556677': 'ws-01-s4'}}
    partitions = {'changes': [{'port_guid': '0x0211223344556677', 'found': ['0x0100'], 'set': []}]}
    assert _fabric_vlan.fabric_lines(vlans, partitions, check_mode=True, known=['ws-01-s2: bad lease; it joins no tenant']) == [
        'ws-01-s1: fabric VF %s held VLAN 0, spoof checking off, trust on: would be set to VLAN 101, spoof checking on, '
        'trust off' % VF1,
        'ws-01-s3: fabric VF 0000:03:00.5: gone; operator: look at it',
        'ws-01-s4: InfiniBand VF 0x0211223344556677 was in partitions 0x0100: would be set to none']
    refused = _fabric_vlan.fabric_lines({}, {'failed': False, 'msg': 'conf line 3 is not one gpuaas.slice writes'})
    assert refused == ["node: the subnet manager's partitions were not converged: conf line 3 is not one gpuaas.slice "
                       "writes; operator: look at it"]
    assert _fabric_vlan.fabric_lines({}, {'skipped': True}) == []
