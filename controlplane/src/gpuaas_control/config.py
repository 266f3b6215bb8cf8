# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings, from the environment (``GPUAAS_*``) with command-line overrides."""

from __future__ import annotations

import dataclasses
import os

from gpuaas_control.collection import collection_root

DEFAULT_DB_URL = 'sqlite:////var/lib/gpuaas/control/gpuaas.db'


def _int(name, default):
    value = os.environ.get(name)
    if value in (None, ''):
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit('%s=%r is not an integer' % (name, value)) from None


def _float(name, default):
    value = os.environ.get(name)
    if value in (None, ''):
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit('%s=%r is not a number' % (name, value)) from None


def _default_project_dir():
    root = collection_root()
    return str(root) if root is not None else ''


@dataclasses.dataclass
class Settings:
    """Everything the API, the worker and the CLI read from their environment."""

    db_url: str = DEFAULT_DB_URL
    # The worker: where the playbooks are (the collection root), the inventory it passes.
    project_dir: str = ''
    inventory: str = ''
    runs_dir: str = '/var/lib/gpuaas/control/runs'
    keep_runs: bool = False
    allocate_playbook: str = 'playbooks/allocate.yml'
    release_playbook: str = 'playbooks/release.yml'
    job_timeout: int = 1800
    max_attempts: int = 3
    retry_base: float = 5.0
    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    # Where base images are on the nodes: tenants name a file, never a path.
    image_dir: str = '/var/lib/gpuaas/images'
    # The API.
    max_body: int = 256 * 1024
    api_threads: int = 8
    default_max_gpus: int = -1

    @classmethod
    def from_env(cls, **overrides):
        settings = cls(
            db_url=os.environ.get('GPUAAS_DB_URL') or DEFAULT_DB_URL,
            project_dir=os.environ.get('GPUAAS_PROJECT_DIR') or _default_project_dir(),
            inventory=os.environ.get('GPUAAS_INVENTORY', ''),
            runs_dir=os.environ.get('GPUAAS_RUNS_DIR') or cls.runs_dir,
            keep_runs=os.environ.get('GPUAAS_KEEP_RUNS', '') not in ('', '0', 'false', 'no'),
            job_timeout=_int('GPUAAS_JOB_TIMEOUT', cls.job_timeout),
            max_attempts=_int('GPUAAS_MAX_ATTEMPTS', cls.max_attempts),
            retry_base=_float('GPUAAS_RETRY_BASE', cls.retry_base),
            lease_seconds=_float('GPUAAS_LEASE_SECONDS', cls.lease_seconds),
            poll_interval=_float('GPUAAS_POLL_INTERVAL', cls.poll_interval),
            image_dir=os.environ.get('GPUAAS_IMAGE_DIR') or cls.image_dir,
            max_body=_int('GPUAAS_MAX_BODY', cls.max_body),
            api_threads=_int('GPUAAS_API_THREADS', cls.api_threads),
            default_max_gpus=_int('GPUAAS_DEFAULT_MAX_GPUS', cls.default_max_gpus),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        return settings
