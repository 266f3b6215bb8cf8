# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""slot_lease: one holder at a time, forward-only phases, quarantine, and real races."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from ansible_collections.gpuaas.slice.plugins.modules import slot_lease
from tests.unit.module_runner import run_module

SLOT = 'gpu-node-01-s0'


@pytest.fixture
def lease(tmp_path, capsys):
    lease_dir = tmp_path / 'leases'

    def call(check_mode=False, diff=False, **args):
        args.setdefault('slot_id', SLOT)
        args.setdefault('lease_dir', str(lease_dir))
        return run_module(slot_lease, args, check_mode=check_mode, diff=diff, capsys=capsys)
    call.dir = lease_dir
    call.file = lease_dir / ('%s.json' % SLOT)
    return call


def test_take_advance_and_free(lease):
    taken = lease(allocation_id='a1', data={'devices': ['0000:1b:00.0']})
    assert taken['changed'] and taken['lease']['phase'] == 'provisioning'
    assert oct(os.stat(lease.file).st_mode & 0o777) == '0o600'
    assert oct(os.stat(lease.dir).st_mode & 0o777) == '0o700'
    assert json.loads(lease.file.read_text())['allocation_id'] == 'a1'
    again = lease(allocation_id='a1', data={'devices': ['0000:1b:00.0']})
    assert not again['changed']
    running = lease(allocation_id='a1', phase='running', data={'domain': 'gpuaas-gpu-node-01-s0'})
    assert running['changed']
    assert running['lease']['data'] == {'devices': ['0000:1b:00.0'], 'domain': 'gpuaas-gpu-node-01-s0'}
    # A re-run of allocate asks for provisioning again with its first data: the lease stays
    # running, with what the later step added, unchanged.
    rerun = lease(allocation_id='a1', phase='provisioning', data={'devices': ['0000:1b:00.0']})
    assert not rerun['changed'] and rerun['lease']['phase'] == 'running'
    assert rerun['lease']['data']['domain'] == 'gpuaas-gpu-node-01-s0'
    assert lease(allocation_id='a1', phase='releasing')['lease']['phase'] == 'releasing'
    refused = lease(allocation_id='a1', phase='provisioning')
    assert refused['failed'] and 'being released' in refused['msg']
    assert lease(allocation_id='a1', phase='wiping')['changed']
    assert not lease(allocation_id='a1', phase='releasing')['changed']
    freed = lease(allocation_id='a1', state='absent')
    assert freed['changed'] and freed['lease'] is None and not lease.file.exists()
    assert not lease(allocation_id='a1', state='absent')['changed']


def test_another_allocation_is_refused_and_changes_nothing(lease):
    lease(allocation_id='a1')
    before = lease.file.read_bytes()
    for args in (dict(allocation_id='a2'), dict(allocation_id='a2', state='absent'),
                 dict(allocation_id='a2', phase='releasing', missing_ok=True)):
        result = lease(**args)
        assert result['failed'] and 'held by allocation a1' in result['msg'], args
    assert lease.file.read_bytes() == before
    taken = lease(allocation_id='a2', force=True)
    assert taken['changed'] and taken['lease']['allocation_id'] == 'a2'


def test_quarantine_needs_a_reason_and_force_to_clear(lease):
    lease(allocation_id='a1', phase='running')
    assert 'needs a reason' in lease(allocation_id='a1', phase='quarantined')['msg']
    quarantined = lease(allocation_id='a1', phase='quarantined', reason='reset failed: GPU gone')
    assert quarantined['lease']['reason'] == 'reset failed: GPU gone'
    for args in (dict(phase='releasing'), dict(phase='running'), dict(state='absent')):
        result = lease(allocation_id='a1', **args)
        assert result['failed'] and 'quarantined: reset failed' in result['msg']
    assert lease(allocation_id='a9', state='absent', force=True)['changed']
    assert not lease.file.exists()


def test_missing_ok_leaves_a_free_slot_free(lease):
    result = lease(allocation_id='a1', phase='releasing', missing_ok=True)
    assert not result['changed'] and result['lease'] is None and not lease.dir.exists()


def test_query_check_mode_and_diff(lease):
    assert lease(state='query')['lease'] is None
    planned = lease(allocation_id='a1', check_mode=True, diff=True)
    assert planned['changed'] and not lease.dir.exists()
    assert '"allocation_id": "a1"' in planned['diff']['after'] and planned['diff']['before'] == ''
    lease(allocation_id='a1')
    queried = lease(state='query')
    assert queried['lease']['allocation_id'] == 'a1' and not queried['changed']
    before = lease.file.read_bytes()
    assert lease(allocation_id='a1', phase='running', check_mode=True)['changed']
    assert lease.file.read_bytes() == before


def test_a_damaged_lease_means_held(lease):
    lease.dir.mkdir(mode=0o700)
    lease.file.write_text('{"allocation_id": ')
    result = lease(allocation_id='a1')
    assert result['failed'] and 'not valid JSON' in result['msg'] and 'treated as held' in result['msg']
    assert lease(allocation_id='a1', state='absent', force=True)['changed']


@pytest.mark.parametrize('args, message', [
    (dict(slot_id='../../etc/passwd-s0'), 'slot id'),
    (dict(slot_id='gpu-node-01-s0\n'), 'not a valid slot id'),
    (dict(allocation_id='a1; rm -rf /'), 'allocation_id'),
    (dict(allocation_id='../a1'), 'allocation_id'),
    (dict(lease_dir='relative/leases'), 'absolute'),
    (dict(data={'x': 'y' * 70000}), 'more than'),
    (dict(phase='quarantined', reason='x\x1b[2Jy'), 'reason'),
])
def test_bad_input_changes_nothing(lease, args, message):
    args.setdefault('allocation_id', 'a1')
    result = lease(**args)
    assert result['failed'] and message in result['msg']
    assert not lease.dir.exists()


def _race(lease_dir, allocation_id, start, results):
    from ansible_collections.gpuaas.slice.plugins.module_utils import _lease

    class Module(object):
        check_mode = False
        _diff = False

        @staticmethod
        def atomic_move(src, dst):
            os.rename(src, dst)
    start.wait()
    try:
        _lease.converge(Module(), lease_dir, SLOT, allocation_id)
        results.put((allocation_id, 'won'))
    except Exception as exc:  # pylint: disable=broad-except
        results.put((allocation_id, '%s: %s' % (type(exc).__name__, exc)))


def test_racing_processes_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context('fork')
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / 'leases'), 'a%d' % n, start, results))
             for n in range(12)]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = dict(results.get(timeout=30) for _proc in procs)
    for proc in procs:
        proc.join(10)
    winners = [alloc for alloc, outcome in outcomes.items() if outcome == 'won']
    assert len(winners) == 1, outcomes
    stored = json.loads((tmp_path / 'leases' / ('%s.json' % SLOT)).read_text())
    assert stored['allocation_id'] == winners[0]
    losers = {alloc: outcome for alloc, outcome in outcomes.items() if alloc != winners[0]}
    assert all('held by allocation %s' % winners[0] in outcome for outcome in losers.values()), losers


def test_stopped_is_the_power_state_of_an_allocation_past_provisioning(lease):
    """Issue 18, item 5: slot_power records stopped/running; allocate's early steps keep stopped."""
    lease(allocation_id='a1', phase='running')
    stopped = lease(allocation_id='a1', phase='stopped')
    assert stopped['changed'] and stopped['lease']['phase'] == 'stopped'
    for phase in ('reserved', 'provisioning'):
        again = lease(allocation_id='a1', phase=phase)
        assert not again['changed'] and again['lease']['phase'] == 'stopped'
    assert lease(allocation_id='a1', phase='running')['lease']['phase'] == 'running'
    lease(allocation_id='a1', phase='stopped')
    assert lease(allocation_id='a1', phase='releasing')['lease']['phase'] == 'releasing'
    refused = lease(allocation_id='a1', phase='stopped')
    assert refused['failed'] and refused['msg'] == ('allocation a1 on slot gpu-node-01-s0 is being released (phase '
                                                    'releasing): it cannot be stopped again; finish the release first')
