# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""controlplane/systemd/: the example units for `gpuaas serve` and `gpuaas worker`, checked by
systemd itself, with their /opt/gpuaas/venv pointing at this virtualenv's `gpuaas`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

UNITS_DIR = os.path.join(REPO, 'controlplane', 'systemd')
UNITS = ['gpuaas-api.service', 'gpuaas-worker.service']
VENV_BIN = os.path.dirname(sys.executable)

needs_systemd_analyze = pytest.mark.skipif(not shutil.which('systemd-analyze'),
                                           reason='needs systemd-analyze (Debian package systemd)')


def read(name):
    with open(os.path.join(UNITS_DIR, name), encoding='utf-8') as handle:
        return handle.read()


def verify(tmp_path, texts):
    """systemd-analyze verify on ``texts`` ({unit name: text}), the venv path made real."""
    paths = []
    for name, text in texts.items():
        path = tmp_path / name
        path.write_text(text.replace('/opt/gpuaas/venv/bin/', VENV_BIN + '/'))
        paths.append(str(path))
    return subprocess.run(['systemd-analyze', 'verify', '--man=no'] + paths, capture_output=True, text=True,
                          check=False)


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    assert os.access(os.path.join(VENV_BIN, 'gpuaas'), os.X_OK)
    proc = verify(tmp_path, {name: read(name) for name in UNITS})
    # postgresql.service is not on every machine; it is an ordering hint only.
    problems = [line for line in proc.stderr.splitlines()
                if line.strip() and 'postgresql.service' not in line]
    assert not problems, proc.stderr


@needs_systemd_analyze
def test_a_broken_unit_fails_verification(tmp_path):
    """The check above can fail: a command that is not there is an error."""
    broken = read('gpuaas-worker.service').replace('/opt/gpuaas/venv/bin/gpuaas worker', '/opt/gpuaas/venv/bin/nope worker')
    proc = verify(tmp_path, {'gpuaas-worker.service': broken})
    assert proc.returncode != 0 and 'nope' in proc.stderr


def test_units_run_the_commands_with_the_settings_file():
    api, worker = read('gpuaas-api.service'), read('gpuaas-worker.service')
    assert 'ExecStart=/opt/gpuaas/venv/bin/gpuaas serve ' in api
    assert 'ExecStartPre=/opt/gpuaas/venv/bin/gpuaas db upgrade' in api
    assert 'ExecStart=/opt/gpuaas/venv/bin/gpuaas worker ' in worker
    for text in (api, worker):
        assert 'EnvironmentFile=/etc/gpuaas/control.env' in text
        assert 'User=gpuaas' in text and 'StateDirectory=gpuaas/control' in text
        assert 'docker' not in text.lower() and 'podman' not in text.lower()


def test_the_worker_finds_ansible_playbook_on_its_path():
    """ansible-runner starts ansible-playbook from PATH, which systemd sets to the system's."""
    worker = read('gpuaas-worker.service')
    path = [line for line in worker.splitlines() if line.startswith('Environment=PATH=')]
    assert path and path[0].split('=', 2)[2].split(':')[0] == '/opt/gpuaas/venv/bin'


def test_the_settings_example_names_settings_the_control_plane_reads():
    from gpuaas_control.config import Settings
    with open(os.path.join(UNITS_DIR, 'control.env.example'), encoding='utf-8') as handle:
        names = [line.split('=', 1)[0].lstrip('#') for line in handle
                 if '=' in line and not line.startswith('# ')]
    assert 'GPUAAS_DB_URL' in names
    for name in names:
        if name.startswith('GPUAAS_'):
            assert name[len('GPUAAS_'):].lower() in Settings.model_fields, name
        else:
            assert name == 'ANSIBLE_COLLECTIONS_PATH', name
