# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""allocate and release killed at every phase, racing allocates, and reconcile, on the lab node.

Each kill is a SIGKILL of ansible-playbook and everything it started, the moment a task's
banner appears: the step before it is done, the next has not begun. Afterwards either a
second allocate with the same allocation id completes the allocation, or a release cleans
the slot; either way node_state must find the node agreeing with its leases.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

SLOT = 'sample-hgx-s0'
OTHER = 'sample-hgx-s1'
# The task whose start ends the run: everything before it happened.
ALLOCATE_KILLS = [
    ('lease', "Create the allocation's telemetry token", 'again'),
    ('network', "Put the image on the slot's boot disk", 'release'),
    ('image', 'Write the cloud-init seed', 'again'),
    ('seed', "Hand the slot's devices to vfio-pci (each with its whole IOMMU group)", 'release'),
    ('vm', 'Record the running allocation in the lease', 'again'),
]


def assert_clean(node, leased=()):
    state = node.state()
    assert not state.get('failed'), state
    assert state['orphans'] == {} and state['unknown_ports'] == [] and not state['blind'], state
    assert sorted(state['leases']) == sorted(leased), state['leases']
    assert state['mismatches'] == [], state['mismatches']


@pytest.mark.parametrize('phase, kill_before, then', ALLOCATE_KILLS, ids=[k[0] for k in ALLOCATE_KILLS])
def test_allocate_killed_after_each_phase(node, tmp_path, phase, kill_before, then):
    alloc = 'crash-%s' % phase
    log = str(tmp_path / 'allocate.log')
    proc = node.start('allocate.yml', {'gpuaas_slot_id': SLOT, 'gpuaas_allocation': node.allocation(SLOT, alloc)}, log)
    node.kill_at(proc, log, kill_before)
    lease = node.lease(SLOT)
    assert lease and lease['allocation_id'] == alloc and lease['phase'] == 'provisioning'
    if then == 'again':
        rc, out = node.allocate(SLOT, alloc, str(tmp_path / 'again.log'))
        assert rc == 0, out[-4000:]
        assert node.lease(SLOT)['phase'] == 'running'
        assert_clean(node, leased=[SLOT])
    rc, out = node.release(SLOT, alloc, str(tmp_path / 'release.log'))
    assert rc == 0, out[-4000:]
    assert_clean(node)


def test_release_killed_midway_is_finished_by_a_second_release(node, tmp_path):
    rc, out = node.allocate(SLOT, 'crash-release', str(tmp_path / 'allocate.log'))
    assert rc == 0, out[-4000:]
    log = str(tmp_path / 'release.log')
    proc = node.start('release.yml', {'gpuaas_slot_id': SLOT, 'gpuaas_allocation_id': 'crash-release'}, log)
    # One module does the whole release: it is killed as soon as it has marked the lease.
    deadline = time.monotonic() + 300
    while (node.lease(SLOT) or {}).get('phase') != 'releasing':
        assert proc.poll() is None and time.monotonic() < deadline, open(log).read()[-3000:]
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert node.lease(SLOT)['phase'] == 'releasing'
    # A new allocation cannot take the slot while the old one is half released.
    rc, out = node.allocate(SLOT, 'crash-newcomer', str(tmp_path / 'newcomer.log'))
    assert rc != 0 and 'held by allocation crash-release' in out
    rc, out = node.release(SLOT, 'crash-release', str(tmp_path / 'again.log'))
    assert rc == 0, out[-4000:]
    assert_clean(node)


def test_two_allocates_for_one_slot_exactly_one_wins(node, tmp_path):
    procs = {}
    for name in ('race-a', 'race-b'):
        log = str(tmp_path / ('%s.log' % name))
        procs[name] = (node.start('allocate.yml', {'gpuaas_slot_id': SLOT,
                                                   'gpuaas_allocation': node.allocation(SLOT, name)}, log), log)
    results = {}
    for name, (proc, log) in procs.items():
        proc.wait(600)
        results[name] = (proc.returncode, open(log).read())
    winners = [name for name, (rc, _out) in results.items() if rc == 0]
    assert len(winners) == 1, {name: out[-2000:] for name, (rc, out) in results.items()}
    loser = 'race-b' if winners == ['race-a'] else 'race-a'
    assert 'held by allocation %s' % winners[0] in results[loser][1]
    assert node.lease(SLOT)['allocation_id'] == winners[0]
    assert_clean(node, leased=[SLOT])
    rc, out = node.release(SLOT, winners[0], str(tmp_path / 'release.log'))
    assert rc == 0, out[-4000:]
    assert_clean(node)


def test_reconcile_removes_what_no_lease_explains(node, tmp_path):
    rc, out = node.allocate(OTHER, 'orphaned', str(tmp_path / 'allocate.log'))
    assert rc == 0, out[-4000:]
    # The lease is lost (a wiped state directory, a hand-made mistake): everything else stays.
    os.unlink('/var/lib/gpuaas/node-scheduler/leases/%s.json' % OTHER)
    state = node.state()
    assert state['orphans'] == {OTHER: ['dhcp_host', 'disk', 'domain', 'flows', 'port', 'seed', 'token']}
    started = time.monotonic()
    rc, out = node.run('reconcile.yml', {}, str(tmp_path / 'reconcile.log'))
    assert rc == 0, out[-4000:]
    assert_clean(node)
    rc, out = node.run('reconcile.yml', {}, str(tmp_path / 'again.log'))
    assert rc == 0 and 'changed=0' in out, out[-3000:]
    assert time.monotonic() - started < 120
