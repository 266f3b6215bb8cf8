# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract: one set of identifier rules and one slot identity for node and control plane."""

from __future__ import annotations

import hashlib
import math

import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils import contract
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import ContractError, Slot

ED25519 = ('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q')

# Values no identifier may take, whatever the rule: what a hostile caller tries first.
HOSTILE = ['', 'a\n', 'a\r\n', 'a\x00', '\x00', 'a b', '../a', 'a/b', '$(reboot)', 'a;b', '`id`',
           '<a>', "a'", 'a"', 'a\u2028', '-a', 'a' * 300, None, 1, 1.5, True, ['a'], {'a': 1}]

RULES = {
    contract.NODE_ID: ['gpu-node-01', 'a', 'n' * 63, 'a.b_c-d'],
    contract.ALLOCATION_ID: ['alloc-0123456789abcdef0123', 'bench-1', 'a:b.c_d-e'],
    contract.TENANT_ID: ['acme', 'team-a.b_c'],
    contract.TOKEN_NAME: ['ci', 'alice@corp'],
    contract.HOSTNAME: ['train-01', 'A1', 'x' * 63],
    contract.IMAGE_NAME: ['debian-12.qcow2', 'img_1.raw'],
    contract.CHECKSUM: ['sha256:' + 'a' * 64, 'SHA512:' + 'F' * 128],
    contract.GPU_MODEL: ['10de:2330'],
    contract.PCI_ADDRESS: ['0000:1b:00.0', '10000:00:1f.7'],
    contract.IFNAME: ['br-gpuaas', 'eth0', 'gs3-1a2b3c4d', 'enp1s0f0np0', 'ib0.8001'],
    contract.NFT_TABLE: ['gpuaas'],
    contract.TELEMETRY_TOKEN: ['A' * 16, 'abc-_.~+/=' * 4],
    contract.IDEMPOTENCY_KEY: ['key-1'],
    contract.CPULIST: ['0', '0-3,8', '1,3,5-7'],
}

# Hostile for most rules, but valid here: a token of 300 letters, a header value that starts with '-'.
VALID_ELSEWHERE = {contract.TELEMETRY_TOKEN: ('a' * 300,), contract.IDEMPOTENCY_KEY: ('-a',)}


@pytest.mark.parametrize('rule', list(RULES), ids=lambda rule: rule.name)
def test_every_rule_takes_its_examples_and_refuses_every_hostile_value(rule):
    for value in RULES[rule]:
        assert rule.check(value, 'field') == (value.lower() if rule.lower else value)
        # The same value with a trailing newline (what a '$' anchor lets through) is refused.
        assert not rule.matches(value + '\n')
        assert rule.regex.match(value + '\n') is None
    for value in HOSTILE:
        if value in VALID_ELSEWHERE.get(rule, ()):
            continue
        with pytest.raises(ContractError) as info:
            rule.check(value, 'field')
        assert str(info.value).startswith('field ')
        assert '\n' not in str(info.value) and '\x00' not in str(info.value)


def test_a_refusal_quotes_the_value_and_cuts_it_short():
    with pytest.raises(ContractError) as info:
        contract.NODE_ID.check('x\ny' + 'z' * 500, 'node_id')
    message = str(info.value)
    assert "'x\\ny" in message and len(message) < 400


@pytest.mark.parametrize('node, index', [('gpu-node-01', 0), ('gpu-node-01', 7), ('a', 244)])
def test_the_slot_identity_follows_the_layout(node, index):
    slot = Slot(node, index)
    digest = hashlib.sha256(('%s:%d' % (node, index)).encode()).digest()
    assert slot.mac == '52:54:%02x:%02x:%02x:%02x' % tuple(digest[:4])
    assert slot.ip == '10.100.0.%d' % (10 + index) and slot.gateway == '10.100.0.1'
    assert slot.slot_id == '%s-s%d' % (node, index) and Slot.parse(slot.slot_id) == slot
    assert slot.domain == 'gpuaas-' + slot.slot_id
    assert slot.ofport == 100 + index and contract.cookie_slot_index(slot.cookie) == index
    assert len(slot.tap) <= 15 and slot.tap.startswith('gs%d-' % index)
    assert slot.file('/var/lib/gpuaas/leases', '.json') == '/var/lib/gpuaas/leases/%s.json' % slot.slot_id
    assert slot.layout() == {'slot_id': slot.slot_id, 'node_id': node, 'slot_index': index,
                             'mac': slot.mac, 'ip': slot.ip}


def test_two_nodes_slot_0_differ_in_every_name():
    one, two = Slot('a', 0), Slot('b', 0)
    assert one.mac != two.mac and one.tap != two.tap and one.domain != two.domain
    assert one.ip == two.ip     # the slot network is per host


@pytest.mark.parametrize('index', [-1, 245, True, '1', 1.0, 2 ** 64, float('nan')])
def test_slot_indexes_outside_the_network_are_refused(index):
    with pytest.raises(ContractError):
        Slot('n', index)


@pytest.mark.parametrize('slot_id', ['n-s', 'n-s1x', '../n-s1', 'n-s1/..', 'n-s999', 's1', 'n-s1\n',
                                     'n-s01', 'n-s1\x00', None, 3])
def test_malformed_slot_ids_are_refused(slot_id):
    with pytest.raises(ContractError):
        Slot.parse(slot_id)


def test_cookies_of_other_owners_belong_to_no_slot():
    assert contract.cookie_slot_index(0) is None
    assert contract.cookie_slot_index(contract.COOKIE_BASE | 0xffff) is None


@pytest.mark.parametrize('value, low, high', [
    (0, 1, 10), (11, 1, 10), (True, 0, 1), (1.0, 0, 2), ('1', 0, 2), (None, 0, 1), (2 ** 64, 0, 2 ** 63)])
def test_check_int_refuses_what_is_not_a_whole_number_in_range(value, low, high):
    with pytest.raises(ContractError):
        contract.check_int(value, 'n', low, high)


@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf, 1e309, True, '1', None, 11])
def test_check_number_refuses_what_is_not_finite_and_in_range(value):
    with pytest.raises(ContractError):
        contract.check_number(value, 'timeout', 0, 10)
    assert contract.check_number(2.5, 'timeout', 0, 10) == 2.5


@pytest.mark.parametrize('text', ['0-4000000000', '0-99999', '9000', '3-1', '', ' ', '0-', '-1', '0,,1',
                                  ','.join(['1'] * 2000), '0\n1'])
def test_cpulists_are_bounded_before_they_are_expanded(text):
    with pytest.raises(ContractError):
        contract.parse_cpulist(text)


def test_cpulists_round_trip():
    assert contract.parse_cpulist(' 0-3,8,10-11\n') == [0, 1, 2, 3, 8, 10, 11]
    assert contract.format_cpulist([5, 0, 1, 2, 8, 9]) == '0-2,5,8-9'


def test_ssh_keys_are_checked_once_for_both_sides():
    assert contract.check_ssh_key('  %s alice@laptop  ' % ED25519) == ED25519 + ' alice@laptop'
    assert contract.check_ssh_keys([ED25519]) == [ED25519]
    bad = ['command="reboot" ' + ED25519, ED25519 + '\nssh-rsa AAAA', ED25519.replace('AAAAC3', 'AAAAB3'),
           'ssh-ed25519 !!!notbase64', 'ssh-ed25519', ED25519 + ' $(reboot)', ED25519 + ' ' + 'c' * 300,
           'x' * 9000, None, 7]
    for key in bad:
        with pytest.raises(ContractError):
            contract.check_ssh_key(key)
    for keys in ([], [ED25519] * 17, ED25519, None):
        with pytest.raises(ContractError):
            contract.check_ssh_keys(keys)


@pytest.mark.parametrize('url', ['ftp://h/x', 'http://user@h/', 'http://h:0/', 'http://h:99999/', 'http://h/?q=1',
                                 'http://h/\n', 'http://-h/', 'http://h..x/'])
def test_sink_urls_outside_the_rule_are_refused(url):
    with pytest.raises(ContractError):
        contract.check_sink_url(url)


def test_sink_url_default_passes():
    assert contract.check_sink_url('http://10.100.0.1:9110/metrics')
