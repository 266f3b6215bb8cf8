# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI addresses and the deterministic slot layout."""

from __future__ import annotations


import pytest

from ansible_collections.gpuaas.slice.plugins.module_utils._pci import (
    PciError, bdf_key, class_name, parse_bdf, parse_cpulist, vf_address)


@pytest.mark.parametrize('value, canonical', [
    ('0000:1b:00.0', '0000:1b:00.0'), ('0000:1B:00.7', '0000:1b:00.7'),
    ('0001:00:1f.0', '0001:00:1f.0'), ('10000:01:00.0', '10000:01:00.0')])
def test_full_addresses_are_accepted_and_normalised(value, canonical):
    assert parse_bdf(value) == canonical


@pytest.mark.parametrize('value', [
    '1b:00.0', '0000:1b:20.0', '0000:1b:00.8', '../../etc/passwd', '0000:00:00.0; rm -rf /',
    '0000:00:00.0\n', '0000:00:00.0/../x', '', None, 17, 'g000:00:00.0'])
def test_anything_else_is_refused(value):
    with pytest.raises(PciError):
        parse_bdf(value)


def test_addresses_sort_numerically_with_segment_0001_after_0000():
    addresses = ['0001:00:02.0', '0000:b7:00.0', '0000:1b:00.0', '0000:1b:00.1', '10000:00:00.0']
    assert sorted(addresses, key=bdf_key) == [
        '0000:1b:00.0', '0000:1b:00.1', '0000:b7:00.0', '0001:00:02.0', '10000:00:00.0']


@pytest.mark.parametrize('pf, offset, stride, index, vf', [
    ('0000:1a:00.0', 1, 1, 0, '0000:1a:00.1'),
    ('0000:1a:00.0', 1, 1, 7, '0000:1a:01.0'),
    ('0000:3b:00.0', 2, 2, 3, '0000:3b:01.0'),
    ('0000:1a:00.0', 0x100, 1, 0, '0000:1b:00.0'),      # onto the next bus
    ('0001:03:00.0', 8, 1, 0, '0001:03:01.0'),
])
def test_vf_addresses_follow_the_sriov_routing_ids(pf, offset, stride, index, vf):
    assert vf_address(pf, offset, stride, index) == vf


def test_a_vf_beyond_bus_ff_is_an_error():
    with pytest.raises(PciError, match='beyond bus ff'):
        vf_address('0000:ff:1f.0', 8, 1, 0)


def test_cpulists_and_class_names():
    assert parse_cpulist('0-3,8,10-11\n') == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist('') == []
    assert class_name(0x010601) == 'SATA controller'
    assert class_name(0x0c0330) == 'USB controller'
    assert class_name(0x120000) == 'processing accelerator'
    assert class_name(None) == 'device of unknown class'
