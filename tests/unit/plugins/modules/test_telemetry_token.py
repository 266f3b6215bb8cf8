# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import telemetry_token
from tests.unit.module_runner import run_module


@pytest.fixture
def token(tmp_path, capsys):
    def call(check_mode=False, diff=False, **args):
        args.setdefault('slot_id', 'gpu-node-01-s3')
        args.setdefault('token_dir', str(tmp_path / 'tokens'))
        args.setdefault('_ansible_no_log', True)   # the token is a secret: the role's task is no_log
        return run_module(telemetry_token, args, check_mode=check_mode, diff=diff, capsys=capsys)
    call.path = tmp_path / 'tokens' / 'gpu-node-01-s3.json'
    return call


def test_one_token_per_allocation_replaced_by_the_next(token):
    first = token(allocation_id='a1')
    assert first['changed'] and len(first['token']) >= 32
    record = json.loads(token.path.read_text())
    assert record == {'allocation_id': 'a1', 'slot_id': 'gpu-node-01-s3', 'ip': '10.100.0.13', 'token': first['token'],
                      'token_sha256': hashlib.sha256(first['token'].encode()).hexdigest()}
    assert oct(os.stat(token.path).st_mode & 0o777) == '0o600'
    assert oct(os.stat(token.path.parent).st_mode & 0o777) == '0o700'
    again = token(allocation_id='a1')
    assert not again['changed'] and again['token'] == first['token']
    second = token(allocation_id='a2', diff=True)
    assert second['changed'] and second['token'] != first['token']
    assert first['token'] not in json.dumps(second['diff'])


def test_revoke_only_your_own(token):
    token(allocation_id='a1')
    other = token(allocation_id='a2', state='absent')
    assert not other['changed'] and "belongs to allocation 'a1'" in other['msg'] and token.path.exists()
    assert token(allocation_id='a1', state='absent', check_mode=True)['changed'] and token.path.exists()
    assert token(allocation_id='a1', state='absent')['changed'] and not token.path.exists()
    token(allocation_id='a1')
    assert token(state='absent', force=True)['changed'] and not token.path.exists()


@pytest.mark.parametrize('args', [dict(allocation_id='a1;reboot'), dict(slot_id='../x-s0', allocation_id='a1'),
                                  dict(allocation_id='a1', token_dir='rel/dir'), dict(state='absent')])
def test_bad_input_changes_nothing(token, args):
    assert token(**args)['failed']
    assert not token.path.parent.exists()


def test_a_token_file_without_its_digest_keeps_its_token(token):
    """Token files written before token_sha256 existed are completed, the token unchanged."""
    token.path.parent.mkdir(mode=0o700)
    token.path.write_text(json.dumps({'allocation_id': 'a1', 'slot_id': 'gpu-node-01-s3', 'ip': '10.100.0.13',
                                      'token': 'old-token-0123456789abcdef'}))
    planned = token(allocation_id='a1', check_mode=True)
    assert planned['changed'] and planned['token'] == 'old-token-0123456789abcdef'
    assert 'token_sha256' not in json.loads(token.path.read_text())
    done = token(allocation_id='a1')
    assert done['changed'] and done['token'] == 'old-token-0123456789abcdef'
    assert json.loads(token.path.read_text())['token_sha256'] == hashlib.sha256(b'old-token-0123456789abcdef').hexdigest()
    assert not token(allocation_id='a1')['changed']


def test_check_mode_writes_nothing_and_returns_no_token(token):
    planned = token(allocation_id='a1', check_mode=True, diff=True)
    assert planned['changed'] and planned['token'] is None and not token.path.parent.exists()
    assert '"allocation_id": "a1"' in planned['diff']['after']
