# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_console_info: the tail of the slot's own log, for the allocation holding it, never
anything outside the console log directory or of another slot or tenant."""

from __future__ import annotations

import json
import os
import time

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import slot_console_info
from tests.unit.module_runner import run_module

SLOT, OTHER = 'gpu-node-01-s0', 'gpu-node-01-s1'
ALLOC = 'alloc-7f3a'


@pytest.fixture
def node(tmp_path, capsys):
    logs, leases = tmp_path / 'console', tmp_path / 'leases'
    logs.mkdir()
    leases.mkdir()

    def lease(slot=SLOT, holder=ALLOC, created='2026-01-01T00:00:00Z'):
        (leases / (slot + '.json')).write_text(json.dumps({
            'slot_id': slot, 'allocation_id': holder, 'phase': 'running', 'data': {},
            'created_at': created, 'updated_at': created}))

    def call(slots, **args):
        params = dict(slots=slots, console_log_dir=str(logs), lease_dir=str(leases))
        params.update(args)
        return run_module(slot_console_info, params, check_mode=args.pop('_check', False), capsys=capsys)

    call.logs, call.lease = logs, lease
    return call


def test_the_tail_of_the_slots_own_log(node):
    node.lease()
    lines = ['line %05d of the boot' % n for n in range(5000)]
    (node.logs / (SLOT + '.log')).write_text('\r\n'.join(lines) + '\r\n')
    result = node([{'slot_id': SLOT, 'allocation_id': ALLOC}], max_bytes=1000)
    entry = result['console'][SLOT]
    assert result['changed'] is False
    assert entry['truncated'] and entry['size'] == os.path.getsize(node.logs / (SLOT + '.log'))
    assert entry['offset'] == entry['size'] - 1000 and entry['allocation_id'] == ALLOC
    # whole lines only, the newest last, CRLF as LF
    assert entry['text'].endswith('line 04999 of the boot\n') and '\r' not in entry['text']
    assert entry['text'].split('\n')[0].startswith('line ') and len(entry['text']) < 1000
    small = node([{'slot_id': SLOT, 'allocation_id': ALLOC}])['console'][SLOT]
    assert small['truncated'] is True and small['text'].endswith('line 04999 of the boot\n')
    assert len(small['text'].encode()) <= 64 * 1024


def test_a_short_log_whole_and_a_missing_one(node):
    node.lease()
    node.lease(OTHER)
    (node.logs / (SLOT + '.log')).write_bytes(b'BdsDxe: loading Boot0001\nbad byte \xff\n')
    result = node([{'slot_id': SLOT, 'allocation_id': ALLOC}, {'slot_id': OTHER, 'allocation_id': ALLOC}])
    assert result['console'][SLOT]['text'] == 'BdsDxe: loading Boot0001\nbad byte \ufffd\n'
    assert result['console'][SLOT]['truncated'] is False
    assert result['console'][OTHER] == {'missing': True}


def test_another_allocations_slot_is_not_read(node):
    node.lease(holder='alloc-other')
    (node.logs / (SLOT + '.log')).write_text('secret of another tenant\n')
    entry = node([{'slot_id': SLOT, 'allocation_id': ALLOC}])['console'][SLOT]
    assert entry == {'error': 'slot gpu-node-01-s0 is not held by allocation alloc-7f3a: its console is not read'}
    os.unlink(node.logs / (SLOT + '.log'))
    entry = node([{'slot_id': OTHER, 'allocation_id': ALLOC}])['console'][OTHER]
    assert 'not held by allocation' in entry['error']


def test_the_previous_tenants_log_is_not_shown_before_the_vm_starts(node):
    path = node.logs / (SLOT + '.log')
    path.write_text('the previous tenant booted here\n')
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    node.lease(created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    assert node([{'slot_id': SLOT, 'allocation_id': ALLOC}])['console'][SLOT] == {'missing': True}
    path.write_text('this tenant booted\n')
    assert node([{'slot_id': SLOT, 'allocation_id': ALLOC}])['console'][SLOT]['text'] == 'this tenant booted\n'


def test_a_symlink_or_a_fifo_is_not_followed(node, tmp_path):
    node.lease()
    secret = tmp_path / 'shadow'
    secret.write_text('root:x:0:0\n')
    os.symlink(str(secret), str(node.logs / (SLOT + '.log')))
    entry = node([{'slot_id': SLOT, 'allocation_id': ALLOC}])['console'][SLOT]
    assert entry == {'error': 'gpu-node-01-s0.log is a symlink: not followed'}
    os.unlink(node.logs / (SLOT + '.log'))
    os.mkfifo(str(node.logs / (SLOT + '.log')))
    entry = node([{'slot_id': SLOT, 'allocation_id': ALLOC}])['console'][SLOT]
    assert entry == {'error': 'gpu-node-01-s0.log is not a regular file'}


def test_a_missing_directory_means_no_logs_yet(node, tmp_path):
    result = node([{'slot_id': SLOT, 'allocation_id': ALLOC}], console_log_dir=str(tmp_path / 'none'))
    assert result['console'] == {SLOT: {'missing': True}}


@pytest.mark.parametrize('slots,args,message', [
    ([{'slot_id': '../../etc/passwd', 'allocation_id': ALLOC}], {}, 'slot id'),
    ([{'slot_id': 'x/y-s0', 'allocation_id': ALLOC}], {}, 'slot id'),
    ([{'slot_id': SLOT, 'allocation_id': 'a b'}], {}, 'allocation id'),
    ([{'slot_id': SLOT, 'allocation_id': ALLOC}], {'max_bytes': 0}, 'max_bytes must be a whole number from 1 to 65536'),
    ([{'slot_id': SLOT, 'allocation_id': ALLOC}], {'max_bytes': 65537}, 'max_bytes must be'),
    ([{'slot_id': SLOT, 'allocation_id': ALLOC}] * 1025, {}, 'slots lists 1025 slots, more than 1024'),
])
def test_bad_requests_are_refused(node, slots, args, message):
    result = node(slots, **args)
    assert result['failed'] and message in result['msg'], result['msg']
