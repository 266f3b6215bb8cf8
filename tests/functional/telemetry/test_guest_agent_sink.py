# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest agent against the real telemetry sink: both run as the processes they are (the
sink from roles/host_prep/files on a loopback port, the agent from its file with the env file
the seed writes). Nothing here touches /var/lib/gpuaas or the system network: the sink's
token and data directories are under tmp_path, so no lock is needed."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.unit.roles.h100_guest import AGENT_FILE, build_sysfs

SINK = os.path.join(REPO, 'roles', 'host_prep', 'files', 'gpuaas_telemetry_sink.py')
TOKEN = 'agent-token-' + 'k' * 32
APPROVED = {'gpu_model': '10de:2330', 'link_speed': '32.0 GT/s PCIe', 'link_width': 16,
            'nvme': False, 'fabric_vf': False}


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(('127.0.0.1', port), 0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, 'nothing listens on port %d' % port
            time.sleep(0.05)


@pytest.fixture
def sink(tmp_path):
    """The sink with one allocation's token file, as telemetry_token writes it (digest only)."""
    tokens, data = tmp_path / 'tokens', tmp_path / 'data'
    tokens.mkdir()
    (tokens / 'node-1-s0.json').write_text(json.dumps({
        'allocation_id': 'alloc-1', 'slot_id': 'node-1-s0', 'ip': '127.0.0.1',
        'token_sha256': hashlib.sha256(TOKEN.encode()).hexdigest()}))
    port = free_port()
    log = open(tmp_path / 'sink.log', 'wb')
    proc = subprocess.Popen([sys.executable, SINK, '--listen', '127.0.0.1', '--port', str(port),
                             '--token-dir', str(tokens), '--data-dir', str(data)], stderr=log)
    wait_for_port(port)
    yield {'url': 'http://127.0.0.1:%d/metrics' % port, 'data': data, 'log': tmp_path / 'sink.log'}
    proc.terminate()
    proc.wait(5)
    log.close()


def agent(tmp_path, sink, token=TOKEN, sysfs='/sys', slot=None, extra=()):
    env = tmp_path / 'telemetry.env'
    env.write_text('GPUAAS_TELEMETRY_SINK=%s\nGPUAAS_TELEMETRY_TOKEN=%s\nGPUAAS_ALLOCATION_ID=alloc-1\n'
                   % (sink['url'], token))
    env.chmod(0o600)
    (tmp_path / 'slot.json').write_text(json.dumps(APPROVED if slot is None else slot))
    argv = [sys.executable, AGENT_FILE, '--env-file', str(env), '--slot-file', str(tmp_path / 'slot.json'),
            '--state-dir', str(tmp_path / 'state'), '--sysfs', str(sysfs), '--once'] + list(extra)
    assert TOKEN not in ' '.join(argv)
    # PATH without nvidia-smi: this machine has no GPU, and the agent must say so.
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={'PATH': '/usr/bin:/bin', 'LANG': 'C'}, check=False)


def series(sink):
    return [json.loads(line) for line in (sink['data'] / 'alloc-1.jsonl').read_text().splitlines()]


def test_first_boot_posts_the_acceptance_result_then_health(tmp_path, sink):
    """The recorded H100 guest's sysfs: the slot passes; without nvidia-smi and CUDA the
    measurements are skipped, each with its reason."""
    done = agent(tmp_path, sink, sysfs=build_sysfs(tmp_path / 'sys'))
    assert done.returncode == 0, done.stderr
    acceptance, sample = series(sink)
    result = acceptance['body']
    assert acceptance['slot_id'] == 'node-1-s0' and result['kind'] == 'acceptance'
    assert result['status'] == 'passed', result
    checks = {check['name']: check for check in result['checks']}
    assert checks['link_width'] == {'name': 'link_width', 'status': 'passed', 'reason': 'link x16, approved x16'}
    assert checks['h2d_GBps_pinned']['status'] == 'skipped'
    assert checks['h2d_GBps_pinned']['reason'].startswith('nvidia-smi is not available')
    body = sample['body']
    assert body['kind'] == 'health' and body['health']['uptime_s'] > 0 and len(body['health']['load']) == 3
    assert body['health']['memory_mib']['total'] > 0 and body['health']['disk_gib']['total'] > 0
    assert body['gpu'] == {'available': False, 'reason': 'nvidia-smi is not installed'}
    summary = json.loads((sink['data'] / 'alloc-1.summary.json').read_text())
    assert summary['samples'] == 2 and summary['acceptance']['result'] == result
    assert summary['health']['sample'] == body
    assert 'acceptance passed' in done.stderr
    # A second boot of the same allocation does not run the check again.
    assert agent(tmp_path, sink, sysfs=build_sysfs(tmp_path / 'sys2')).returncode == 0
    assert [entry['body']['kind'] for entry in series(sink)] == ['acceptance', 'health', 'health']
    for text in (done.stdout, done.stderr, sink['log'].read_text()):
        assert TOKEN not in text


def test_on_this_machine_no_gpu_is_visible_and_the_slot_fails(tmp_path, sink):
    """This machine's own /sys: no GPU, said as a failed check, not hidden."""
    done = agent(tmp_path, sink)
    assert done.returncode == 0, done.stderr
    result = series(sink)[0]['body']
    assert result['status'] == 'failed' and 'gpu_visible' in result['failed']
    assert result['checks'][0] == {'name': 'gpu_visible', 'status': 'failed',
                                   'reason': 'no GPU visible (approved 10de:2330)'}
    assert 'acceptance failed (gpu_visible, link_speed, link_width, bars_mapped)' in done.stderr


def test_a_wrong_token_is_refused_and_the_agent_says_so_without_showing_it(tmp_path, sink):
    wrong = 'not-the-token-' + 'z' * 30
    done = agent(tmp_path, sink, token=wrong, sysfs=build_sysfs(tmp_path / 'sys'))
    assert done.returncode == 1
    assert 'sink answered 401 unknown or revoked token' in done.stderr
    assert 'health sample not stored: 401 unknown or revoked token' in done.stderr
    assert wrong not in done.stderr and not (sink['data'] / 'alloc-1.jsonl').exists()
    assert not (tmp_path / 'state').exists()     # the acceptance check runs again next boot


def test_bad_approved_facts_are_posted_as_a_failed_check(tmp_path, sink):
    done = agent(tmp_path, sink, slot={'gpu_model': '10de:2330', 'link_speed': '32.0 GT/s PCIe', 'link_width': 99},
                 sysfs=build_sysfs(tmp_path / 'sys'))
    assert done.returncode == 0, done.stderr
    result = series(sink)[0]['body']
    assert result['failed'] == ['approved_facts']
    assert result['checks'][0]['reason'] == 'approved link_width 99 is not a width from 1 to 32'


def test_without_an_env_file_the_agent_stops_with_the_reason(tmp_path, sink):
    done = subprocess.run([sys.executable, AGENT_FILE, '--env-file', str(tmp_path / 'missing.env'), '--once'],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert 'cannot read %s' % (tmp_path / 'missing.env') in done.stderr
