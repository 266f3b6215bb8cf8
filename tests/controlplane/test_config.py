# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings from the environment (pydantic-settings, GPUAAS_*): the same names as always,
empty means the default, and a bad value is refused naming the variable and the value,
by the library and by the CLI."""

from __future__ import annotations

import pytest

from gpuaas_control import cli
from gpuaas_control.config import Settings, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os
    for name in list(os.environ):
        if name.startswith('GPUAAS_'):
            monkeypatch.delenv(name)


def test_the_environment_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv('GPUAAS_DB_URL', 'sqlite:///%s' % (tmp_path / 'x.db'))
    monkeypatch.setenv('GPUAAS_JOB_TIMEOUT', '60')
    monkeypatch.setenv('GPUAAS_RETRY_BASE', '0.5')
    monkeypatch.setenv('GPUAAS_KEEP_RUNS', '3')
    monkeypatch.setenv('GPUAAS_INVENTORY', '')
    monkeypatch.setenv('GPUAAS_IMAGE_DIR', '')
    settings = Settings.from_env(inventory='/etc/gpuaas/inventory.yml', runs_dir=None)
    assert settings.db_url.endswith('x.db') and settings.job_timeout == 60
    assert settings.retry_base == 0.5 and settings.keep_runs == 3
    assert settings.inventory == '/etc/gpuaas/inventory.yml'
    assert settings.image_dir == '/var/lib/gpuaas/images'   # empty is the default
    assert settings.runs_dir == '/var/lib/gpuaas/control/runs'


BAD = [
    ('GPUAAS_JOB_TIMEOUT', 'abc'), ('GPUAAS_JOB_TIMEOUT', 'nan'), ('GPUAAS_JOB_TIMEOUT', '1.5'),
    ('GPUAAS_JOB_TIMEOUT', '0'), ('GPUAAS_JOB_TIMEOUT', str(2 ** 64)),
    ('GPUAAS_MAX_ATTEMPTS', '-1'), ('GPUAAS_RETRY_BASE', 'nan'), ('GPUAAS_RETRY_BASE', 'inf'),
    ('GPUAAS_RETRY_BASE', '-5'), ('GPUAAS_LEASE_SECONDS', '1e309'), ('GPUAAS_POLL_INTERVAL', '0'),
    ('GPUAAS_KEEP_RUNS', 'maybe'), ('GPUAAS_KEEP_RUNS', 'yes'), ('GPUAAS_KEEP_RUNS', '-1'), ('GPUAAS_MAX_BODY', '10'), ('GPUAAS_API_THREADS', '100000'),
    ('GPUAAS_DEFAULT_MAX_GPUS', '-2'), ('GPUAAS_DEFAULT_MAX_GPUS', 'all'),
]


@pytest.mark.parametrize('name, value', BAD)
def test_a_bad_value_is_refused_naming_it(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        Settings.from_env()
    assert str(info.value).startswith('bad settings: %s=%r: ' % (name, value))
    # The CLI says the same, without a traceback.
    assert cli.main(['token', 'list']) == 1
    assert capsys.readouterr().err.startswith('gpuaas: bad settings: %s=%r: ' % (name, value))
