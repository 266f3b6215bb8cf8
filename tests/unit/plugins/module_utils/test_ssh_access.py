# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A slot's SSH port: its port and sources (contract), its nft rules, what the table holds and
what removing a slot's rules takes. The packets themselves: tests/functional/network/test_ssh_access.py."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import _network as net
from ansible_collections.gpuaas.slice.plugins.module_utils import _ssh_access as ssh
from ansible_collections.gpuaas.slice.plugins.module_utils import contract
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError, MAX_SLOTS, Slot, check_source_cidrs, check_ssh_port_base)

SLOT = Slot('gpu-node-01', 3)
OTHER = Slot('gpu-node-01', 4)


def test_a_slots_port_is_the_base_plus_its_index():
    assert SLOT.ssh_port() == 22003
    assert SLOT.ssh_port(30000) == 30003
    last = Slot('n', MAX_SLOTS - 1)
    assert last.ssh_port(65535 - MAX_SLOTS) == 65534


@pytest.mark.parametrize('value', [1023, 65535 - MAX_SLOTS + 1, 0, -1, True, '22000', 22000.0, None])
def test_a_base_whose_range_leaves_the_unprivileged_ports_is_refused(value):
    with pytest.raises(ContractError, match=r'ssh_port_base must be a whole number from 1024 to 65290, not '):
        check_ssh_port_base(value)
    with pytest.raises(ContractError):
        SLOT.ssh_port(value)


def test_sources_are_normalised_sorted_and_default_to_any():
    assert check_source_cidrs(None) == check_source_cidrs([]) == ['0.0.0.0/0']
    assert check_source_cidrs(['203.0.113.0/24', '198.51.100.7', '198.51.100.7/32']) == [
        '198.51.100.7/32', '203.0.113.0/24']


@pytest.mark.parametrize('values, message', [
    (['0.0.0.0/0; flush ruleset'], "ssh_source_cidrs[0] '0.0.0.0/0; flush ruleset' is not an IPv4 network"),
    (['10.0.0.1/8'], "ssh_source_cidrs[0] '10.0.0.1/8' is not an IPv4 network (203.0.113.0/24): 10.0.0.1/8 has host bits set"),
    (['2001:db8::/32'], "ssh_source_cidrs[0] '2001:db8::/32' is IPv6: the slot's SSH port is forwarded on the node's IPv4"),
    (['10.0.0.0/8\n'], "ssh_source_cidrs[0] '10.0.0.0/8\\n' is not an IPv4 network"),
    (['10.0.0.0/8', ' 10.0.0.0/8'], "ssh_source_cidrs[1] ' 10.0.0.0/8' is not an IPv4 network"),
    (['} accept'], "ssh_source_cidrs[0] '} accept' is not an IPv4 network"),
    ([7], 'ssh_source_cidrs[0] 7 is not an IPv4 network'),
    ('10.0.0.0/8', "ssh_source_cidrs must be a list of at most 32 IPv4 networks, not '10.0.0.0/8'"),
    (['10.%d.0.0/16' % i for i in range(33)], 'ssh_source_cidrs must be a list of at most 32 IPv4 networks'),
])
def test_sources_that_are_not_ipv4_networks_are_refused(values, message):
    with pytest.raises(ContractError) as info:
        check_source_cidrs(values)
    assert message in str(info.value)


def test_a_slots_rules_forward_its_port_to_its_port_22_only():
    text = ssh.slot_rules('gpuaas', SLOT, 22000, ['198.51.100.0/24', '203.0.113.7/32'])
    lines = text.splitlines()
    assert lines[1:] == [
        'add chain inet gpuaas ssh_dnat_gpu-node-01-s3',
        'flush chain inet gpuaas ssh_dnat_gpu-node-01-s3',
        'add rule inet gpuaas ssh_dnat_gpu-node-01-s3 meta l4proto tcp ip saddr { 198.51.100.0/24, 203.0.113.7/32 } '
        'dnat ip to 10.100.0.13:22',
        'add chain inet gpuaas ssh_fwd_gpu-node-01-s3',
        'flush chain inet gpuaas ssh_fwd_gpu-node-01-s3',
        'add rule inet gpuaas ssh_fwd_gpu-node-01-s3 ip saddr { 198.51.100.0/24, 203.0.113.7/32 } tcp dport 22 '
        'ct status dnat ct original proto-dst 22003 accept',
        'add element inet gpuaas ssh_dnat { 22003 : jump ssh_dnat_gpu-node-01-s3 }',
        'add element inet gpuaas ssh_forward { 10.100.0.13 : jump ssh_fwd_gpu-node-01-s3 }',
    ]


def listing(chains, dnat, forward, maps=True):
    """What ``nft -j list table inet gpuaas`` prints, for the chains {name: rules} and the maps."""
    items = [{'metainfo': {'json_schema_version': 1}}, {'table': {'family': 'inet', 'name': 'gpuaas'}}]
    if maps:
        items += [{'map': {'family': 'inet', 'table': 'gpuaas', 'name': name, 'type': 'x', 'map': 'verdict',
                           **({'elem': [[key, {'jump': {'target': target}}] for key, target in elems.items()]}
                              if elems else {})}}
                  for name, elems in (('ssh_dnat', dnat), ('ssh_forward', forward))]
    for name, rules in chains.items():
        items.append({'chain': {'family': 'inet', 'table': 'gpuaas', 'name': name}})
        items += [{'rule': {'family': 'inet', 'table': 'gpuaas', 'chain': name, 'expr': []}}] * rules
    return json.dumps({'nftables': items})


def runner(out, rc=0, err=''):
    def run(argv, check=True):
        assert argv == ['nft', '-j', 'list', 'table', 'inet', 'gpuaas'] and not check
        return rc, out, err
    return run


def test_the_table_state_names_each_slots_chains_and_elements():
    out = listing({'forward': 6, 'ssh_dnat_gpu-node-01-s3': 1, 'ssh_fwd_gpu-node-01-s3': 1, 'ssh_fwd_x': 1},
                  {22003: 'ssh_dnat_gpu-node-01-s3'}, {'10.100.0.13': 'ssh_fwd_gpu-node-01-s3'})
    state = ssh.table_state(runner(out), 'gpuaas', net.NetworkError)
    assert state['dnat'] == {22003: 'ssh_dnat_gpu-node-01-s3'}
    assert ssh.in_place(state, SLOT, 22000) and not ssh.in_place(state, SLOT, 23000)
    assert not ssh.in_place(state, OTHER, 22000)
    # ssh_fwd_x is no slot's: never counted, never removed.
    assert ssh.slot_chains(state) == {SLOT.slot_id: ['ssh_dnat_gpu-node-01-s3', 'ssh_fwd_gpu-node-01-s3']}
    assert ssh.conflict(state, SLOT, 22000) is None
    assert ssh.conflict(state, Slot('other-node', 3), 22000) == (
        'public port 22003 is forwarded by ssh_dnat_gpu-node-01-s3 already: each node on a host needs its '
        'own ssh_port_base')
    assert ssh.conflict(state, Slot('other-node', 3), 23000) == (
        'address 10.100.0.13 is forwarded to by ssh_fwd_gpu-node-01-s3 already')
    # A chain with a rule added by hand is not the slot's rule set: applied again.
    tampered = ssh.table_state(runner(listing({'ssh_dnat_gpu-node-01-s3': 2, 'ssh_fwd_gpu-node-01-s3': 1},
                                              {22003: 'ssh_dnat_gpu-node-01-s3'},
                                              {'10.100.0.13': 'ssh_fwd_gpu-node-01-s3'})), 'gpuaas', net.NetworkError)
    assert not ssh.in_place(tampered, SLOT, 22000)


def test_no_table_is_nothing_to_remove_and_an_unreadable_one_fails_closed():
    missing = runner('', 1, 'Error: No such file or directory\nlist table inet gpuaas\n')
    assert ssh.table_state(missing, 'gpuaas', net.NetworkError) is None
    assert ssh.removal('gpuaas', SLOT, None) == ''
    with pytest.raises(net.NetworkError, match='set up the host network first'):
        ssh.need_table(None, 'gpuaas', net.NetworkError)
    old = ssh.table_state(runner(listing({'forward': 3}, {}, {}, maps=False)), 'gpuaas', net.NetworkError)
    with pytest.raises(net.NetworkError, match='table inet gpuaas has no ssh_dnat and ssh_forward maps'):
        ssh.need_table(old, 'gpuaas', net.NetworkError)
    with pytest.raises(net.NetworkError, match='nft cannot list table inet gpuaas: Error: Operation not permitted'):
        ssh.table_state(runner('', 1, 'Error: Operation not permitted'), 'gpuaas', net.NetworkError)


def test_removal_takes_exactly_the_slots_elements_and_chains():
    state = ssh.table_state(runner(listing(
        {'ssh_dnat_gpu-node-01-s3': 1, 'ssh_fwd_gpu-node-01-s3': 1, 'ssh_dnat_gpu-node-01-s4': 1},
        {22003: 'ssh_dnat_gpu-node-01-s3', 22004: 'ssh_dnat_gpu-node-01-s4'},
        {'10.100.0.13': 'ssh_fwd_gpu-node-01-s3'})), 'gpuaas', net.NetworkError)
    assert ssh.removal('gpuaas', SLOT, state).splitlines() == [
        'flush chain inet gpuaas ssh_dnat_gpu-node-01-s3',
        'flush chain inet gpuaas ssh_fwd_gpu-node-01-s3',
        'delete element inet gpuaas ssh_dnat { 22003 }',
        'delete element inet gpuaas ssh_forward { 10.100.0.13 }',
        'delete chain inet gpuaas ssh_dnat_gpu-node-01-s3',
        'delete chain inet gpuaas ssh_fwd_gpu-node-01-s3',
    ]
    # Half a slot (a crash between two runs): what is there goes.
    assert ssh.removal('gpuaas', OTHER, state).splitlines() == [
        'flush chain inet gpuaas ssh_dnat_gpu-node-01-s4',
        'delete element inet gpuaas ssh_dnat { 22004 }',
        'delete chain inet gpuaas ssh_dnat_gpu-node-01-s4',
    ]


def test_the_access_a_tenant_is_told():
    assert contract.ssh_access(SLOT, 'GPU-Node-01.example.com', 30000, 'tenant_1') == {
        'ssh_host': 'gpu-node-01.example.com', 'ssh_port': 30003, 'user': 'tenant_1'}
    assert contract.ssh_access(SLOT, '203.0.113.10') == {'ssh_host': '203.0.113.10', 'ssh_port': 22003, 'user': 'gpuaas'}


@pytest.mark.parametrize('host', ['', 'a b', 'host;reboot', 'host\n', '-host', 'a..b', 'x' * 254, None, 7, ['h']])
def test_a_host_that_is_no_host_name_or_address_is_refused(host):
    with pytest.raises(ContractError, match='ssh_host .* is not a host name or IPv4 address'):
        contract.check_ssh_host(host)


@pytest.mark.parametrize('user', ['', 'Root', '1user', '-u', 'u u', 'u\n', 'u:x', 'u' * 33, None])
def test_a_login_user_that_is_no_unix_name_is_refused(user):
    with pytest.raises(ContractError, match='login_user .* is not a valid login user'):
        contract.ssh_access(SLOT, 'h', 22000, user)
    assert contract.LOGIN_USER.matches('gpuaas') and contract.LOGIN_USER.matches('_svc-1')
