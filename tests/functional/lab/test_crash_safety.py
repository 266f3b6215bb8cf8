# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""allocate and release killed at every phase, racing allocates, and reconcile, on the lab node.

Each kill is a SIGKILL of ansible-playbook and everything it started, the moment a task's
banner appears or, inside the one-process steps (slot_provision, slot_release), the moment the
host shows a step done: the step before is done, the next has begun or not. Afterwards either a
second allocate with the same allocation id completes the allocation, or a release cleans
the slot; either way node_state_info must find the node agreeing with its leases.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

SLOT = 'sample-hgx-s0'
OTHER = 'sample-hgx-s1'
STATE = '/var/lib/gpuaas'


def banner(task):
    """The task has begun (its banner is printed): everything before it happened."""
    return lambda log: ': %s]' % task in open(log).read()


def made(path):
    """A step inside slot_provision has made ``path``: the next step is under way."""
    return lambda log: os.path.exists(os.path.join(STATE, path))


def started(log):
    """The VM runs and the module waits for its DHCP lease."""
    import libvirt
    conn = libvirt.open('qemu:///system')
    try:
        return any(d.name() == 'gpuaas-%s' % SLOT for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
    finally:
        conn.close()


# Where the run is killed (the steps before it are done, the next has begun), and what then.
ALLOCATE_KILLS = [
    ('lease', banner("Create the allocation's telemetry token"), 'again'),
    ('network', made('network/dhcp-hosts.d/%s' % SLOT), 'release'),
    ('image', made('disks/%s.raw.gpuaas.json' % SLOT), 'again'),
    ('seed', made('seeds/%s-seed.iso' % SLOT), 'release'),
    ('vm', started, 'again'),
]


def process_tree(pid):
    """``pid`` and every process below it. Ansible's workers call setsid(), so a kill of the
    playbook's process group alone leaves the worker and its module running."""
    children = {}
    for entry in os.listdir('/proc'):
        try:
            with open('/proc/%s/stat' % entry) as handle:
                children.setdefault(int(handle.read().rsplit(')', 1)[1].split()[1]), []).append(int(entry))
        except (OSError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def kill_when(proc, log, done, timeout=300):
    """SIGKILL the playbook and all it started (a crash) as soon as ``done(log)`` is true."""
    deadline = time.monotonic() + timeout
    while not done(log):
        assert proc.poll() is None and time.monotonic() < deadline, open(log).read()[-3000:]
        time.sleep(0.01)
    tree = process_tree(proc.pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):    # frozen first: nothing forks or finishes meanwhile
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    proc.wait(10)


def assert_clean(node, leased=()):
    state = node.state()
    assert not state.get('failed'), state
    assert state['orphans'] == {} and state['unknown_ports'] == [] and not state['blind'], state
    assert sorted(state['leases']) == sorted(leased), state['leases']
    assert state['mismatches'] == [], state['mismatches']


@pytest.mark.parametrize('phase, done, then', ALLOCATE_KILLS, ids=[k[0] for k in ALLOCATE_KILLS])
def test_allocate_killed_after_each_phase(node, tmp_path, phase, done, then):
    alloc = 'crash-%s' % phase
    log = str(tmp_path / 'allocate.log')
    proc = node.start('allocate.yml', {'gpuaas_slot_id': SLOT, 'gpuaas_allocation': node.allocation(SLOT, alloc)}, log)
    kill_when(proc, log, done)
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
    kill_when(proc, log, lambda _log: (node.lease(SLOT) or {}).get('phase') == 'releasing')
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
    assert state['orphans'] == {OTHER: ['dhcp_host', 'disk', 'domain', 'flows', 'port', 'seed', 'ssh', 'token']}
    # A second name for the disk's blocks shows what reconcile left in them.
    disk = tmp_path / 'disk.raw'
    os.link('/var/lib/gpuaas/disks/%s.raw' % OTHER, disk)
    assert disk.read_bytes().strip(b'\0'), 'the boot disk holds no data to begin with'
    started = time.monotonic()
    rc, out = node.run('reconcile.yml', {}, str(tmp_path / 'reconcile.log'))
    assert rc == 0, out[-4000:]
    assert_clean(node)
    assert not disk.read_bytes().strip(b'\0'), 'reconcile removed the boot disk without wiping it'
    rc, out = node.run('reconcile.yml', {}, str(tmp_path / 'again.log'))
    assert rc == 0 and 'changed=0' in out, out[-3000:]
    assert time.monotonic() - started < 120


def test_reconcile_fails_naming_the_slot_whose_domain_is_gone(node, tmp_path):
    rc, out = node.allocate(OTHER, 'vanished', str(tmp_path / 'allocate.log'))
    assert rc == 0, out[-4000:]
    import libvirt
    conn = libvirt.open('qemu:///system')
    try:
        domain = conn.lookupByName('gpuaas-%s' % OTHER)
        domain.destroy()
        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)   # a UEFI domain keeps its NVRAM otherwise
    finally:
        conn.close()
    # A play that ran the discover role first holds its gpuaas_slots fact (the approved slots);
    # the report must still name the slot that does not match its lease, not those.
    book = tmp_path / 'discover-then-reconcile.yml'
    book.write_text('- hosts: all\n  gather_facts: false\n  tasks:\n'
                    '    - ansible.builtin.set_fact:\n        gpuaas_slots: [approved-by-discover]\n'
                    '    - ansible.builtin.include_role:\n        name: gpuaas.slice.slot_reconcile\n')
    rc, out = node.run(str(book), {}, str(tmp_path / 'reconcile.log'))
    assert rc != 0, out[-3000:]
    assert ': %s do not match their leases' % OTHER in out, out[-3000:]
    assert 'approved-by-discover' not in out.split('do not match their leases')[1], out[-3000:]
    rc, out = node.release(OTHER, 'vanished', str(tmp_path / 'release.log'))
    assert rc == 0, out[-4000:]
    assert_clean(node)
