# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deterministic VF MAC/GUID derivation, and reading ip's vfinfo."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _sriov
from ansible_collections.gpuaas.slice.plugins.module_utils._devctl import DeviceError
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError


def test_the_derivation_is_pinned():
    """These values are a contract: the control plane computes the same ones."""
    assert _sriov.vf_mac('ws-01', '0000:03:00.0', 0) == '96:bf:df:86:c9:f5'
    assert _sriov.vf_mac('ws-01', '0000:03:00.0', 1) == 'b6:4f:74:52:c9:7f'
    assert _sriov.vf_guids('ws-01', '0000:5e:00.0', 0) == ('76:19:e1:9b:74:47:32:26',
                                                           'c2:1e:11:aa:e3:39:6f:57')


def test_macs_are_local_unicast_and_unique_across_nodes_pfs_and_vfs():
    seen = set()
    for node in ('gpu-node-01', 'gpu-node-02'):
        for pf in ('0000:1a:00.0', '0000:3c:00.0', '0001:03:00.0'):
            for index in range(64):
                mac = _sriov.vf_mac(node, pf, index)
                first = int(mac[:2], 16)
                assert first & 0x02 and not first & 0x01
                seen.add(mac)
    assert len(seen) == 2 * 3 * 64


def test_guids_are_never_zero_and_node_and_port_differ():
    for index in range(128):
        node, port = _sriov.vf_guids('gpu-node-01', '0000:1a:00.0', index)
        assert node != port
        assert node != '00:00:00:00:00:00:00:00' and len(node.split(':')) == 8
        assert int(node[:2], 16) & 0x02


def test_a_bad_node_id_is_not_hashed():
    with pytest.raises(ContractError):
        _sriov.vf_mac('node 1', '0000:1a:00.0', 0)


class _Module:
    check_mode = False

    def __init__(self, out):
        self.out = out

    def get_bin_path(self, name):
        return '/sbin/ip'

    def run_command(self, argv, **kwargs):
        return 0, self.out, ''


def _engine(out, kind):
    engine = _sriov.SriovVfs(_Module(out), '0000:1a:00.0', 2, 'n1')
    engine.kind = kind
    return engine


def test_vfinfo_of_current_and_older_iproute2():
    new = [{'ifname': 'x', 'vfinfo_list': [
        {'vf': 0, 'link_type': 'ether', 'address': 'AA:BB:CC:00:11:22', 'spoofchk': True,
         'link_state': 'auto', 'trust': False},
        {'vf': 1, 'mac': '02:00:00:00:00:01', 'spoofchk': False, 'link_state': 'enable'}]}]
    props = _engine(json.dumps(new), _sriov.ETHERNET)._ip_vfinfo('x')
    assert props[0] == {'mac': 'aa:bb:cc:00:11:22', 'spoofchk': True, 'trust': False,
                        'link_state': 'auto'}
    assert props[1] == {'mac': '02:00:00:00:00:01', 'spoofchk': False, 'link_state': 'enable'}
    ib = [{'vfinfo_list': [{'vf': 0, 'node guid': '02:11:22:33:44:55:66:77',
                            'port guid': '02:11:22:33:44:55:66:78', 'link_state': 'auto'}]}]
    props = _engine(json.dumps(ib), _sriov.INFINIBAND)._ip_vfinfo('ib0')
    assert props[0]['node_guid'] == '02:11:22:33:44:55:66:77'
    assert 'mac' not in props[0]


def test_ip_output_that_is_not_json_is_an_error():
    with pytest.raises(DeviceError) as info:
        _engine('Device "x" does not exist.', _sriov.ETHERNET)._ip_vfinfo('x')
    assert 'not JSON' in str(info.value)
