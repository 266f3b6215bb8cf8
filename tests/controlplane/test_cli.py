# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``gpuaas`` command end to end: ``db upgrade`` on an empty database, tokens, the API
under a real uvicorn (``gpuaas serve``) on 127.0.0.1, a real worker (``gpuaas worker``,
ansible-runner against the stand-in project), an operator registering the lab's sample host
with its approved slot map, and a tenant allocating with a progress display."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from sqlalchemy import text

from gpuaas_control.db import Database
from tests.controlplane.helpers import ssh_key

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GPUAAS = os.path.join(os.path.dirname(sys.executable), 'gpuaas')
pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_url(request, tmp_path):
    """An empty database (no schema yet): `gpuaas db upgrade` creates it."""
    if getattr(request, 'param', 'sqlite') == 'sqlite':
        return 'sqlite:///%s' % (tmp_path / 'cli' / 'gpuaas.db')
    cluster = request.getfixturevalue('pg_cluster')
    return cluster.create_database('cli_%d' % os.getpid() + '_%d' % int(time.time() * 1000))


class Gpuaas:
    def __init__(self, env):
        self.env = env

    def __call__(self, *argv, token=None, check=True, stdin=None):
        env = dict(self.env)
        if token:
            env['GPUAAS_TOKEN'] = token
        done = subprocess.run([GPUAAS] + list(argv), env=env, capture_output=True, text=True,
                              input=stdin, timeout=120, check=False)
        if check and done.returncode != 0:
            raise AssertionError('gpuaas %s: exit %d\n%s%s' % (' '.join(argv), done.returncode,
                                                               done.stdout, done.stderr))
        return done


@pytest.fixture
def stack(fresh_url, tmp_path):
    """`gpuaas serve` and `gpuaas worker` on ``fresh_url``, stopped at the end."""
    project = tmp_path / 'project'
    shutil.copytree(os.path.join(HERE, 'fake_node'), project)
    state = tmp_path / 'state'
    state.mkdir()
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(yaml.safe_dump({'all': {
        'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                 'fake_state_dir': str(state), 'fake_mode': 'ok'},
        'hosts': {'sample-hgx': {}}}}))
    port = _free_port()
    env = dict(os.environ, GPUAAS_DB_URL=fresh_url, GPUAAS_API='http://127.0.0.1:%d' % port,
               GPUAAS_PROJECT_DIR=str(project), GPUAAS_INVENTORY=str(inventory),
               GPUAAS_RUNS_DIR=str(tmp_path / 'runs'), GPUAAS_POLL_INTERVAL='0.2',
               GPUAAS_AUDIT_CHECKPOINT=str(tmp_path / 'audit' / 'audit-head.json'))
    env.pop('GPUAAS_TOKEN', None)
    gpuaas = Gpuaas(env)
    refused = gpuaas('serve', '--port', str(port), check=False)
    assert refused.returncode == 1 and 'run `gpuaas db upgrade`' in refused.stderr
    assert gpuaas('db', 'status', check=False).returncode == 1
    upgraded = gpuaas('db', 'upgrade')
    assert 'revision 0013 (newest 0013)' in upgraded.stdout
    procs = []
    try:
        procs.append(subprocess.Popen([GPUAAS, 'serve', '--port', str(port), '--no-access-log'],
                                      env=env, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(env['GPUAAS_API'] + '/healthz', timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and procs[0].poll() is None, 'gpuaas serve did not start'
            time.sleep(0.1)
        procs.append(subprocess.Popen([GPUAAS, 'worker', '--id', 'cli-worker'], env=env,
                                      stderr=subprocess.PIPE, text=True))
        gpuaas.procs = procs
        yield gpuaas
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_cli_drives_the_whole_flow(stack, fresh_url, hgx_discovery_factory, tmp_path):
    gpuaas = stack
    operator = gpuaas('token', 'create', '--role', 'operator', '--name', 'alice').stdout.strip()
    tenant = gpuaas('token', 'create', '--role', 'tenant', '--tenant', 'acme').stdout.strip()
    assert operator.startswith('gpuaas_') and tenant.startswith('gpuaas_')

    discovery = tmp_path / 'discovery.json'
    discovery.write_text(json.dumps(dict(hgx_discovery_factory('sample-hgx'), changed=False)))
    assert 'discovery stored (8 slots proposed)' in gpuaas(
        'node', 'discovery', 'sample-hgx', str(discovery), token=operator).stdout
    approved = gpuaas('node', 'approve', 'sample-hgx',
                      os.path.join(REPO, 'lab', 'host_vars', 'sample-hgx.yml'), token=operator).stdout
    lines = approved.splitlines()
    assert lines[0].split()[:3] == ['SLOT', 'STATE', 'APPROVED']
    assert [line.split()[:3] for line in lines[1:4]] == [['sample-hgx-s0', 'free', 'yes'],
                                                         ['sample-hgx-s1', 'free', 'yes'],
                                                         ['sample-hgx-s2', 'free', 'yes']]
    nodes = gpuaas('node', 'list', token=operator).stdout
    assert nodes.splitlines()[1].split()[:5] == ['sample-hgx', 'yes', '3', '3', 'yes']

    # The tenant: a refused request says why and changes nothing; a good one comes up
    # with its progress shown.
    bad = gpuaas('allocation', 'create', '--image', '../../etc/shadow', '--checksum',
                 'sha256:' + '0' * 64, '--ssh-key', ssh_key(), '--vcpus', '2', '--memory-mib',
                 '2048', token=tenant, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith('gpuaas: 422: invalid request: image')
    assert gpuaas('node', 'list', token=tenant, check=False).stderr.strip() == \
        'gpuaas: 403: this endpoint is for operators'
    created = gpuaas('allocation', 'create', '--image', 'debian-12.qcow2', '--checksum',
                     'sha256:' + '0' * 64, '--ssh-key', ssh_key(), '--vcpus', '2',
                     '--memory-mib', '2048', '--hostname', 'train-1', '--wait', token=tenant).stdout
    assert 'slot sample-hgx-s0 reserved; waiting for it to run' in created
    assert '==> provisioning: attempt 1 on cli-worker' in created
    assert '    task: Return the allocation' in created
    # The tenant's way in: the slot's SSH port on the node's public address (the fake node's 203.0.113.1).
    assert '==> running: 10.100.0.10, ssh gpuaas@203.0.113.1 -p 22000' in created
    shown = dict(line.split(None, 1) for line in created.splitlines() if line[:1].isalpha()
                 and not line.startswith('allocation '))
    assert shown['state'].strip() == 'running' and shown['address'].strip() == '10.100.0.10'
    assert json.loads(shown['access']) == {'ssh_host': '203.0.113.1', 'ssh_port': 22000, 'user': 'gpuaas'}
    assert shown['telemetry_token'].strip().startswith('tok-alloc-')
    allocation_id = shown['id'].strip()

    listed = gpuaas('--json', 'allocation', 'list', token=operator).stdout
    assert [a['id'] for a in json.loads(listed)['allocations']] == [allocation_id]
    # Stop, start, reboot (issue 18, item 5) through the worker, and the console it reads.
    stopped = gpuaas('allocation', 'stop', allocation_id, '--wait', token=tenant).stdout
    assert stopped.rstrip().endswith('allocation %s: stopped' % allocation_id)
    refused = gpuaas('allocation', 'reboot', allocation_id, token=tenant, check=False)
    assert refused.returncode != 0 and 'it can be rebooted only when it is running' in refused.stdout + refused.stderr
    for action in ('start', 'reboot'):
        done = gpuaas('allocation', action, allocation_id, '--wait', token=tenant).stdout
        assert done.rstrip().endswith('allocation %s: running' % allocation_id)
    assert gpuaas('allocation', 'console', allocation_id, '--wait', token=tenant).stdout == 'boot 1\n'
    released = gpuaas('allocation', 'release', allocation_id, '--wait', token=tenant).stdout
    assert released.rstrip().endswith('allocation %s: released' % allocation_id)
    usage = gpuaas('usage', token=operator).stdout
    assert allocation_id in usage and 'GPU-seconds allocated' in usage
    events = gpuaas('allocation', 'events', allocation_id, token=tenant).stdout
    assert 'released: slot sample-hgx-s0 is free again' in events

    # The ledger: who did what, verified on the database; an edit behind the API's back
    # is found.
    entries = json.loads(gpuaas('--json', 'audit', 'list', token=operator).stdout)['entries']
    # Every state change is in it, the worker's too (through the one lifecycle table).
    # The tenant's network given with its first allocation, its slot joining and leaving the fabric too.
    assert [e['action'] for e in entries] == ['token.create', 'token.create', 'node.discovery',
                                              'node.approve', 'tenant_network.assign', 'allocation.create',
                                              'allocation.provision', 'fabric.join', 'allocation.run',
                                              'allocation.stop', 'allocation.stopped', 'allocation.start',
                                              'allocation.started', 'allocation.reboot', 'allocation.rebooted',
                                              'allocation.release', 'fabric.leave', 'allocation.released']
    assert entries[2]['actor'].endswith(':alice')
    assert entries[6]['actor'] == 'worker:cli-worker' and entries[6]['role'] == 'system'
    assert entries[-1]['after']['slot_state'] == 'free'
    verified = gpuaas('audit', 'verify')
    # Anchored by each process that appended: the CLI, the API and the worker.
    assert verified.stdout.startswith('audit chain ok: 18 entries, checkpoint at entry 18, head 18 ')
    head = verified.stdout.split()[-1]
    assert gpuaas('audit', 'verify', '--expect-head', head).returncode == 0
    db = Database(fresh_url)
    with db.write() as session:
        if db.is_postgres:
            session.execute(text('ALTER TABLE audit_log DISABLE TRIGGER USER'))
        else:
            session.execute(text('DROP TRIGGER audit_log_no_update'))
        session.execute(text("UPDATE audit_log SET actor = 'nobody' WHERE seq = 4"))
    db.dispose()
    broken = gpuaas('audit', 'verify', check=False)
    assert broken.returncode == 1 and 'entry 4: its content does not match its hash' in broken.stdout

    # The worker stops on SIGTERM, between jobs.
    worker = gpuaas.procs[1]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_token_lifetimes_rotation_and_list(fresh_url, tmp_path):
    from gpuaas_control import service
    gpuaas = Gpuaas(dict(os.environ, GPUAAS_DB_URL=fresh_url,
                         GPUAAS_AUDIT_CHECKPOINT=str(tmp_path / 'audit-head.json')))
    gpuaas.env.pop('GPUAAS_TOKEN_DAYS', None)
    gpuaas('db', 'upgrade')
    made = gpuaas('token', 'create', '--role', 'tenant', '--tenant', 'acme', '--name', 'ci')
    first = made.stdout.strip()
    assert made.stderr.startswith('token 1 (ci, tenant, tenant acme, expires 20')
    assert 'never expires' in gpuaas('token', 'create', '--role', 'operator', '--expires-in', '0').stderr
    assert 'never expires' in Gpuaas(dict(gpuaas.env, GPUAAS_TOKEN_DAYS='0'))(
        'token', 'create', '--role', 'operator').stderr

    # Bad numbers: refused, naming the option or setting, nothing made.
    for argv, message in (
            (('create', '--role', 'operator', '--expires-in', '-1'), '--expires-in -1 is not valid: 0 to 3650'),
            (('create', '--role', 'operator', '--expires-in', '3651'), '--expires-in 3651 is not valid'),
            (('create', '--role', 'operator', '--expires-in', str(2 ** 64)), '--expires-in 18446744073709551616'),
            (('create', '--role', 'operator', '--expires-in', 'nan'), "argument --expires-in: invalid int value: 'nan'"),
            (('create', '--role', 'operator', '--expires-in', 'inf'), "argument --expires-in: invalid int value: 'inf'"),
            (('rotate', '1', '--grace', '604801'), '--grace 604801 is not valid: 0 to 604800'),
            (('rotate', '1', '--grace', '-1'), '--grace -1 is not valid'),
            (('rotate', str(2 ** 64)), 'token ID 18446744073709551616 is not valid'),
            (('rotate', '9'), 'no token 9'),
            (('revoke', str(2 ** 31)), 'token ID 2147483648 is not valid')):
        refused = gpuaas('token', *argv, check=False)
        assert refused.returncode in (1, 2) and message in refused.stderr, (argv, refused.stderr)
        assert refused.stdout == ''
    nan_days = Gpuaas(dict(gpuaas.env, GPUAAS_TOKEN_DAYS='nan'))
    refused = nan_days('token', 'create', '--role', 'operator', check=False)
    assert refused.returncode == 1 and "GPUAAS_TOKEN_DAYS='nan'" in refused.stderr

    # Rotate with a grace period: a new token under the same name; the old one still works.
    rotated = gpuaas('token', 'rotate', '1', '--grace', '600', '--expires-in', '30')
    second = rotated.stdout.strip()
    assert second.startswith('gpuaas_') and second != first
    assert rotated.stderr.startswith('token 4 (ci, tenant, tenant acme, expires 20')
    assert 'token 1, which it replaces, stops working at 20' in rotated.stderr
    again = gpuaas('token', 'rotate', '1', check=False)
    assert again.returncode == 1 and again.stderr == 'gpuaas: token 1 was already rotated: token 4 replaces it\n'
    db = Database(fresh_url)
    try:
        with db.read() as session:
            assert service.authenticate(session, first)[0].name == 'token:1:ci'
            assert service.authenticate(session, second)[0].name == 'token:4:ci'
        # Without one, the old token stops at once.
        third = gpuaas('token', 'rotate', '4').stdout.strip()
        with db.read() as session:
            with pytest.raises(service.TokenExpired):
                service.authenticate(session, second)
            assert service.authenticate(session, third)[0].tenant == 'acme'
        gpuaas('token', 'revoke', '5')
        revoked = gpuaas('token', 'rotate', '5', check=False)
        assert revoked.returncode == 1 and 'token 5 is revoked' in revoked.stderr
        actor = 'cli:%s' % os.environ.get('USER', 'unknown')
        with db.read() as session:
            assert session.execute(text('SELECT action, actor FROM audit_log ORDER BY seq')).all() == \
                [('token.create', actor)] * 3 + [('token.rotate', actor)] * 2 + [('token.revoke', actor)]
    finally:
        db.dispose()

    listed = gpuaas('--json', 'token', 'list').stdout
    assert first not in listed and service.hash_token(first) not in listed
    rows = json.loads(listed)
    assert [(r['id'], r['name'], r['replaced_by'], r['revoked_at'] is None) for r in rows] == [
        (1, 'ci', 4, True), (2, rows[1]['name'], None, True), (3, rows[2]['name'], None, True),
        (4, 'ci', 5, True), (5, 'ci', None, False)]
    assert set(rows[0]) == {'id', 'name', 'role', 'tenant', 'created_at', 'expires_at',
                            'last_used_at', 'revoked_at', 'replaced_by'}
    assert rows[1]['expires_at'] is None and rows[0]['last_used_at'] is None
    table = gpuaas('token', 'list').stdout.splitlines()
    assert table[0].lower().split() == ['id', 'name', 'role', 'tenant', 'created', 'expires',
                                        'last', 'used', 'revoked', 'replaced', 'by']
    verified = gpuaas('audit', 'verify')
    assert verified.stdout.startswith('audit chain ok: 6 entries')


@pytest.mark.backends('sqlite')
def test_the_worker_says_what_it_does_without_alembics_set_up_chatter(fresh_url, tmp_path):
    """The schema check before the worker starts is not news: its log starts with the worker."""
    inventory = tmp_path / 'inventory.yml'
    inventory.write_text(yaml.safe_dump({'all': {'hosts': {'n1': {}}}}))
    env = dict(os.environ, GPUAAS_DB_URL=fresh_url, GPUAAS_PROJECT_DIR=os.path.join(HERE, 'fake_node'),
               GPUAAS_INVENTORY=str(inventory), GPUAAS_RUNS_DIR=str(tmp_path / 'runs'))
    gpuaas = Gpuaas(env)
    gpuaas('db', 'upgrade')
    ran = gpuaas('worker', '--once')
    assert ran.stdout == 'ran 0 job(s)\n'
    assert 'alembic' not in ran.stderr, ran.stderr
