# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings, from the environment (``GPUAAS_*``, through pydantic-settings) with
command-line overrides. A bad value is refused with the variable's name and the value."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gpuaas_control.collection import collection_root
from gpuaas_control.models import TOKEN_MAX_DAYS

DEFAULT_DB_URL = 'sqlite:////var/lib/gpuaas/control/gpuaas.db'
DEFAULT_DIR = '/var/lib/gpuaas/control'
CHECKPOINT_NAME = 'audit-head.json'
ENV_PREFIX = 'GPUAAS_'

Seconds = Annotated[float, Field(gt=0, le=86400 * 7, allow_inf_nan=False)]


class SettingsError(ValueError):
    """A setting from the environment (or an override) is not usable."""


def _default_project_dir():
    root = collection_root()
    return str(root) if root is not None else ''


class Settings(BaseSettings):
    """Everything the API, the worker and the CLI read from their environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra='ignore', validate_default=True)

    db_url: str = Field(DEFAULT_DB_URL, min_length=1)
    # The worker: where the playbooks are (the collection root), the inventory it passes.
    project_dir: str = Field(default_factory=_default_project_dir)
    inventory: str = ''
    runs_dir: str = '/var/lib/gpuaas/control/runs'
    # The newest run directories (ansible-runner's private data and artifacts) kept for
    # debugging; 0 removes each when its run ends.
    keep_runs: int = Field(0, ge=0, le=1000)
    allocate_playbook: str = 'playbooks/allocate.yml'
    release_playbook: str = 'playbooks/release.yml'
    # A running allocation's power (jobs stop, start, reboot) and its serial console.
    stop_playbook: str = 'playbooks/stop.yml'
    start_playbook: str = 'playbooks/start.yml'
    reboot_playbook: str = 'playbooks/reboot.yml'
    console_playbook: str = 'playbooks/console.yml'
    # The console (console.py): a tenant's read is answered from the copy last read from the
    # node; one older than console_max_age seconds is read again by the worker, which looks
    # for such requests every console_poll_interval seconds (0: never) and reads each node once
    # for all of them.
    console_max_age: float = Field(5.0, ge=0, le=3600, allow_inf_nan=False)
    console_poll_interval: float = Field(1.0, ge=0, le=3600, allow_inf_nan=False)
    console_timeout: int = Field(120, ge=1, le=3600)
    job_timeout: int = Field(1800, ge=1, le=86400)
    # Telemetry: the read-only playbook that collects the nodes' sink summaries, how often the
    # worker runs it (per node with running allocations; 0 never: `gpuaas telemetry collect`
    # runs it by hand), and what a failed slot acceptance does: report it (an allocation
    # event and an audit entry) or also quarantine the slot (unapproved until approved again).
    telemetry_playbook: str = 'playbooks/telemetry.yml'
    telemetry_interval: float = Field(60.0, ge=0, le=86400, allow_inf_nan=False)
    telemetry_timeout: int = Field(300, ge=1, le=3600)
    acceptance_policy: Literal['report', 'quarantine'] = 'report'
    max_attempts: int = Field(3, ge=1, le=100)
    retry_base: Seconds = 5.0
    lease_seconds: Seconds = 60.0
    poll_interval: Seconds = 1.0
    # Where base images are on the nodes: tenants name a file, never a path.
    image_dir: str = '/var/lib/gpuaas/images'
    # The API.
    max_body: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)
    api_threads: int = Field(8, ge=1, le=256)
    default_max_gpus: int = Field(-1, ge=-1, le=100000)
    # The lifetime of a token made without --expires-in / expires_in_days, in days (0: never).
    # 90: a token spends GPU-hours and reaches tenants' machines, so a leaked or forgotten
    # one must not work forever; a quarter is long enough not to make rotation a chore.
    token_days: int = Field(90, ge=0, le=TOKEN_MAX_DAYS)
    # The audit ledger's anchor, outside the database (audit.Anchor). Empty: audit-head.json
    # next to a SQLite database, in /var/lib/gpuaas/control for PostgreSQL.
    audit_checkpoint: str = ''

    @field_validator('audit_checkpoint')
    @classmethod
    def _absolute(cls, value: str) -> str:
        if value and (not os.path.isabs(value) or '\0' in value or value.endswith('/')):
            raise ValueError('must be the absolute path of a file')
        return value

    @model_validator(mode='after')
    def _default_checkpoint(self):
        if not self.audit_checkpoint:
            self.audit_checkpoint = os.path.join(_database_dir(self.db_url), CHECKPOINT_NAME)
        return self

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """The environment's settings; ``overrides`` that are not None win (the CLI's
        options). Raises SettingsError naming each bad variable and its value."""
        try:
            return cls(**{key: value for key, value in overrides.items() if value is not None})
        except ValidationError as exc:
            raise SettingsError(describe(exc)) from None


def _database_dir(db_url: str) -> str:
    """The directory of a SQLite database file; DEFAULT_DIR for anything else (a bad URL is
    refused where the database is opened)."""
    try:
        url = make_url(db_url)
    except (ArgumentError, ValueError):
        return DEFAULT_DIR
    if url.get_backend_name() == 'sqlite' and url.database not in (None, '', ':memory:'):
        return os.path.dirname(os.path.abspath(url.database))
    return DEFAULT_DIR


def describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = ENV_PREFIX + '_'.join(str(part) for part in error['loc']).upper()
        problems.append('%s=%r: %s' % (name, error.get('input'), error['msg']))
    return 'bad settings: ' + '; '.join(problems)
