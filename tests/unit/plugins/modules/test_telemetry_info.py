# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import telemetry_info
from tests.unit.module_runner import run_module

SUMMARY = {'allocation_id': 'a1', 'slot_id': 'n-s0', 'samples': 2, 'first_at': 1.0, 'last_at': 2.0,
           'health': {'received_at': 2.0, 'sample': {'kind': 'health'}},
           'acceptance': {'received_at': 1.0, 'result': {'kind': 'acceptance', 'status': 'passed'}}}


@pytest.fixture
def read(tmp_path, capsys):
    data = tmp_path / 'data'
    data.mkdir()

    def call(check_mode=False, **args):
        args.setdefault('data_dir', str(data))
        return run_module(telemetry_info, args, check_mode=check_mode, capsys=capsys)
    call.data = data
    return call


def test_summaries_missing_ones_and_damaged_ones(read):
    (read.data / 'a1.summary.json').write_text(json.dumps(SUMMARY))
    (read.data / 'a3.summary.json').write_text('{not json')
    (read.data / 'a4.summary.json').write_text(json.dumps(dict(SUMMARY, allocation_id='a1')))
    before = sorted(p.name for p in read.data.iterdir())
    for check_mode in (False, True):
        result = read(allocation_ids=['a1', 'a2', 'a3', 'a4'], check_mode=check_mode)
        assert not result['changed']
        got = result['telemetry']
        assert got['a1'] == SUMMARY and got['a2'] == {'missing': True}
        assert 'is not valid JSON' in got['a3']['error'] and 'a3.summary.json' in got['a3']['error']
        assert got['a4'] == {'error': "the summary %s names allocation 'a1'" % (read.data / 'a4.summary.json')}
    assert sorted(p.name for p in read.data.iterdir()) == before


def test_an_oversized_summary_is_refused(read):
    (read.data / 'a1.summary.json').write_text(' ' * (256 * 1024 + 1))
    assert 'is larger than 262144 bytes' in read(allocation_ids=['a1'])['telemetry']['a1']['error']


@pytest.mark.parametrize('ids, message', [
    (['../etc/passwd'], "allocation_ids[0] '../etc/passwd' is not a valid allocation id"),
    (['a%d' % n for n in range(1025)], 'allocation_ids has 1025 ids, at most 1024'),
])
def test_bad_ids_are_refused(read, ids, message):
    result = read(allocation_ids=ids)
    assert result['failed'] and message in result['msg']
