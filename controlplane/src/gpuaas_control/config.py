# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings, from the environment (``GPUAAS_*``, through pydantic-settings) with
command-line overrides. A bad value is refused with the variable's name and the value."""

from __future__ import annotations

import ipaddress
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
    # A tenant's new overlay plan for a node already holding its slots (the network job).
    network_playbook: str = 'playbooks/network.yml'
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
    # The fleet: jobs a worker process runs at once (one at a time per node, whatever the
    # number), what an allocation whose node stopped answering does, and how often the worker
    # asks an unreachable node whether it answers again (doubled after each probe that got
    # no answer, up to 300 s; a probe's run may take probe_timeout seconds).
    # 4: each job is one ansible-playbook (a controller core for its first seconds, ~100 MB),
    # so a small controller serves four nodes at once; more nodes queue, none is starved.
    worker_concurrency: int = Field(4, ge=1, le=64)
    # reschedule: the allocation moves to a free slot of another node that fits it (unless it
    # named its node, or none fits: then it fails); fail: it fails at once. Either way the
    # slot it leaves stays blocked until its node answers and a release cleaned it.
    unreachable_policy: Literal['reschedule', 'fail'] = 'reschedule'
    probe_interval: Seconds = 15.0
    probe_timeout: int = Field(60, ge=1, le=3600)
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
    # Tenant networks (networks.py): the ranges each tenant's identifiers come from, 'LOW-HIGH'
    # (decimal or 0x hex), inside what the protocol allows; 'off': none given (pkey, VLAN and
    # fabric pool only). The overlay's VNI (24 bits), the InfiniBand partition key (15 bits,
    # never the default partition 0x7fff), the RoCE VLAN (802.1Q, 0, 1 and 4095 excluded).
    tenant_vni_range: str = '4096-16777215'
    tenant_pkey_range: str = '0x0100-0x7ffe'
    tenant_vlan_range: str = '100-3999'
    # The tenants' fabric subnets are carved from this pool, one /tenant_fabric_prefix each;
    # a slot's fabric address is a host of its tenant's subnet.
    tenant_fabric_pool: str = '10.224.0.0/12'
    tenant_fabric_prefix: int = Field(24, ge=8, le=30)
    # The MTU the slots' guests get on the tenant overlay (the underlay's minus VXLAN's 50 bytes).
    tenant_overlay_mtu: int = Field(1450, ge=1280, le=9000)

    @field_validator('tenant_vni_range', 'tenant_pkey_range', 'tenant_vlan_range')
    @classmethod
    def _id_range(cls, value: str, info) -> str:
        parse_range(info.field_name, value)
        return value

    @field_validator('tenant_fabric_pool')
    @classmethod
    def _pool(cls, value: str) -> str:
        parse_pool(value)
        return value

    @model_validator(mode='after')
    def _pool_prefix(self):
        pool = parse_pool(self.tenant_fabric_pool)
        if pool is not None and self.tenant_fabric_prefix < pool.prefixlen:
            raise ValueError('GPUAAS_TENANT_FABRIC_PREFIX=%d is shorter than the pool %s: a tenant '
                             'subnet must fit inside it' % (self.tenant_fabric_prefix, pool))
        return self

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


# What each protocol allows a tenant identifier to be (inclusive).
ID_LIMITS = {
    'tenant_vni_range': (1, 16777215, False),      # VXLAN/Geneve: 24 bits, 0 reserved
    'tenant_pkey_range': (0x0001, 0x7ffe, True),   # 15 bits; 0x7fff is the default partition
    'tenant_vlan_range': (2, 4094, True),          # 802.1Q; 1 is the default VLAN
}


def parse_range(name: str, value: str) -> range | None:
    """``'LOW-HIGH'`` (decimal or 0x hex) as a range; None for 'off' where allowed. Raises
    ValueError saying what the protocol allows."""
    low_limit, high_limit, may_be_off = ID_LIMITS[name]
    text = value.strip().lower()
    if text == 'off':
        if not may_be_off:
            raise ValueError('the overlay needs a VNI range: it cannot be off')
        return None
    low, sep, high = text.partition('-')
    try:
        first, last = int(low, 0), int(high, 0)
    except ValueError:
        first = last = None
    if not sep or first is None:
        raise ValueError("must be 'LOW-HIGH' (decimal or 0x hex)%s" % (" or 'off'" if may_be_off else ''))
    if not low_limit <= first <= last <= high_limit:
        raise ValueError('must lie within %s-%s (what the protocol allows), low before high'
                         % (('0x%04x' % low_limit, '0x%04x' % high_limit) if 'pkey' in name else (low_limit, high_limit)))
    return range(first, last + 1)


def parse_pool(value: str):
    """The fabric address pool as an IPv4Network; None for 'off'."""
    if value.strip().lower() == 'off':
        return None
    try:
        pool = ipaddress.IPv4Network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError("must be an IPv4 network 'a.b.c.d/nn' or 'off' (%s)" % exc) from None
    if not (pool.is_private and pool.prefixlen >= 8):
        raise ValueError('must be a private network of at most a /8')
    return pool


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
        if not error['loc']:    # a check across settings: its message names them
            problems.append(error['msg'].removeprefix('Value error, '))
            continue
        name = ENV_PREFIX + '_'.join(str(part) for part in error['loc']).upper()
        problems.append('%s=%r: %s' % (name, error.get('input'), error['msg']))
    return 'bad settings: ' + '; '.join(problems)
