# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane end to end: the API and the worker, as their own processes, drive the
real playbooks against the lab node.

An operator creates the database, stores the sample host's discovery and approves its slot
map with the ``gpuaas`` command; a tenant asks for a slot over HTTP and waits with
``gpuaas allocation create --wait``; the worker runs allocate.yml through ansible-runner;
the guest boots under TCG, gets its fixed address from dnsmasq and posts to the telemetry
sink with the token the API gave its owner. Then the release runs release.yml and the node
and the slot table agree that the slot is free.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.functional.lab.conftest import NODE
from tests.functional.lab.test_crash_safety import assert_clean

import lab  # noqa: E402  (lab/lab.py, on sys.path through the lab conftest)
import plane as control_plane  # noqa: E402  (lab/plane.py: serve and worker as their own processes)

pytestmark = pytest.mark.slow


def sse(raw):
    """The events of a server-sent event stream, as (kind, data) pairs."""
    events = []
    for block in raw.split('\n\n'):
        fields = dict(line.split(': ', 1) for line in block.splitlines() if ': ' in line
                      and not line.startswith(':'))
        if 'event' in fields:
            events.append((fields['event'], json.loads(fields['data'])))
    return events


@pytest.fixture
def control(node, tmp_path):
    from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
    inventory = lab.worker_inventory(str(tmp_path / 'inventory'), node.extravars)
    plane = control_plane.Plane(tmp_path, inventory, {
        'GPUAAS_KEEP_RUNS': '10', 'GPUAAS_IMAGE_DIR': os.path.dirname(node.image), 'GPUAAS_POLL_INTERVAL': '0.3',
        'GPUAAS_RETRY_BASE': '1', 'GPUAAS_JOB_TIMEOUT': '900'})
    plane.gpuaas('db', 'upgrade')
    plane.operator, plane.tenant, plane.other = (plane.token('operator'), plane.token('tenant', 'acme'),
                                                 plane.token('tenant', 'rival'))
    plane.up()
    # What slot_discovery_info reports for the node (the engine the module runs), stored by an operator.
    hgx = os.path.join(lab.BUILD, 'hgx')
    discovery = Discovery(NODE, os.path.join(hgx, 'sys'), os.path.join(hgx, 'proc')).run()
    (tmp_path / 'discovery.json').write_text(json.dumps(discovery))
    plane.gpuaas('node', 'discovery', NODE, str(tmp_path / 'discovery.json'), token=plane.operator)
    plane.gpuaas('node', 'approve', NODE, os.path.join(REPO, 'lab', 'host_vars', '%s.yml' % NODE),
                 token=plane.operator)
    try:
        yield plane
    finally:
        plane.stop()


def test_an_allocation_through_the_api_runs_the_real_playbooks_on_the_lab_node(node, control, tmp_path):
    slots = control.http('GET', '/v1/slots', control.operator)[1]['slots']
    assert sorted(s['id'] for s in slots if s['approved'] and s['state'] == 'free') == lab.SLOTS

    # The tenant asks, and the CLI shows the progress until the slot runs.
    key = node.pubkey
    (tmp_path / 'key.pub').write_text(key + '\n')
    image = os.path.basename(node.image)
    created = control.gpuaas('--json', 'allocation', 'create', '--image', image, '--checksum', node.checksum,
                             '--ssh-key-file', str(tmp_path / 'key.pub'), '--vcpus', '1',
                             '--memory-mib', '512', '--disk-gib', '1', '--wait',
                             '--timeout', '600', token=control.tenant, check=False)
    assert created.returncode == 0, '%s\n%s\nworker:\n%s' % (
        created.stdout, created.stderr[:8000], control.log('worker')[-4000:])
    allocation = json.loads(created.stdout)
    ident, slot = allocation['id'], allocation['slot_id']
    assert allocation['state'] == 'running' and slot in lab.SLOTS
    assert 'task: ' in created.stderr, created.stderr   # the playbook's tasks, as they ran

    # What the node built is what the API reports.
    lease = node.lease(slot)
    assert lease['allocation_id'] == ident and lease['phase'] == 'running'
    index = int(slot.rsplit('s', 1)[1])
    assert allocation['address'] == '10.100.0.%d' % (10 + index)
    assert allocation['ssh'] == {'user': 'root', 'host': allocation['address'], 'port': 22}
    assert allocation['telemetry_token'] and allocation['timings']['node']['total'] > 0
    assert_clean(node, leased=[slot])
    domains = subprocess.run(['virsh', '-c', 'qemu:///system', 'list', '--name'], capture_output=True,
                             text=True, check=True).stdout.split()
    assert slot in ' '.join(domains), domains

    # The guest talks to the sink with the token its owner got, and only its owner sees it.
    def probes():
        return [lab.body(s) for s in lab.sink_samples(ident) if lab.body(s).get('metric') == 'probe']
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not probes():
        time.sleep(1)
    probe = probes()
    assert probe, 'the guest posted no probe to the telemetry sink within 240 s: %s' % lab.sink_samples(ident)
    assert probe[-1]['ip'] == allocation['address'] and probe[-1]['gateway_ok'] == 1, probe
    assert not probe[-1].get('peers_reachable'), probe
    status, seen = control.http('GET', '/v1/allocations/%s' % ident, control.other)
    assert status == 404, seen
    status, refused = control.http('DELETE', '/v1/allocations/%s' % ident, control.other)
    assert status == 404, refused
    assert node.lease(slot)['phase'] == 'running'

    # The release runs release.yml; the slot is free on the node and in the table.
    released = control.gpuaas('--json', 'allocation', 'release', ident, '--wait', '--timeout', '600',
                              token=control.tenant, check=False)
    assert released.returncode == 0, '%s\n%s\nworker:\n%s' % (
        released.stdout, released.stderr[:8000], control.log('worker')[-4000:])
    assert json.loads(released.stdout)['state'] == 'released'
    assert node.lease(slot) is None
    assert_clean(node)
    status, view = control.http('GET', '/v1/allocations/%s' % ident, control.tenant)
    assert status == 200 and view['state'] == 'released'
    assert view['timings']['release']['runner'] > 0
    slots = control.http('GET', '/v1/slots', control.operator)[1]['slots']
    assert {s['id']: s['state'] for s in slots}[slot] == 'free'

    # Its whole story, as the tenant's event stream tells it.
    status, raw = control.http('GET', '/v1/allocations/%s/events?follow=false' % ident, control.tenant)
    assert status == 200
    states = [data['data'].get('state') for kind, data in sse(raw) if kind == 'state']
    assert states[:1] == ['requested'] and states[-1] == 'released', states
    assert {'provisioning', 'running', 'releasing'} <= set(states), states
    usage = control.http('GET', '/v1/usage?tenant=acme', control.operator)[1]['usage']
    assert [u['allocation_id'] for u in usage] == [ident], usage
    assert 0 < usage[0]['running_seconds'] < usage[0]['allocated_seconds'], usage
    assert control.gpuaas('audit', 'verify').returncode == 0

    # The telemetry token lives in the allocation row, the guest's seed (gone with the slot)
    # and, hashed, the sink's token file: not in a run's artifacts (kept here: ansible-runner's
    # job events and stdout), the control plane's logs (its database aside), the node's logs or state.
    token = allocation['telemetry_token']
    runs = sorted(os.listdir(tmp_path / 'runs'))
    assert len(runs) == 2, runs
    for run in runs:
        assert os.stat(tmp_path / 'runs' / run).st_mode & 0o777 == 0o700
        assert os.listdir(tmp_path / 'runs' / run / 'artifacts')
    roots = [str(tmp_path), '/var/log/gpuaas', '/var/log/libvirt', '/var/lib/gpuaas']
    holding = subprocess.run(['grep', '-rlsF', '-D', 'skip', '--exclude=gpuaas.db*', '--', token, *roots],
                             capture_output=True, text=True, check=False)
    assert holding.returncode == 1 and not holding.stdout, holding.stdout
