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
