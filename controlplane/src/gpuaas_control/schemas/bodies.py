# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What clients send: strict models (no extra keys, no type coercion), every string held to
a pattern or to text without control characters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpuaas_control.models import TOKEN_MAX_DAYS, TOKEN_MAX_GRACE
from gpuaas_control.validation import (
    CHECKSUM_RE,
    GPU_MODEL_RE,
    HOSTNAME_RE,
    IMAGE_RE,
    LIMITS,
    MAX_SOURCE_CIDRS,
    MAX_SSH_KEYS,
    NODE_ID_RE,
    NOTE_RE,
    TENANT_RE,
    TOKEN_NAME_RE,
    show,
    source_cidrs,
    ssh_key_problem,
)


def _pattern(regex, name, rule):
    def check(value):
        if value is not None and not regex.match(value):
            raise ValueError('%s %s is not valid: %s' % (name, show(value), rule))
        return value
    return field_validator(name)(check)


class Strict(BaseModel):
    model_config = ConfigDict(extra='forbid', strict=True)


class AllocationCreate(Strict):
    """What a tenant asks for. The slot is chosen by the control plane."""

    image: str = Field(max_length=128, description='A base image file name in the nodes\' image '
                       'directory (no path).', examples=['debian-12-genericcloud-amd64.qcow2'])
    image_checksum: str = Field(max_length=71, description="'sha256:' and 64 lowercase hex digits.")
    image_format: Literal['qcow2', 'raw'] = 'qcow2'
    ssh_keys: list[str] = Field(min_length=1, max_length=MAX_SSH_KEYS,
                                description='OpenSSH public keys, one line each.')
    vcpus: int = Field(ge=LIMITS['vcpus'][0], le=LIMITS['vcpus'][1])
    memory_mib: int = Field(ge=LIMITS['memory_mib'][0], le=LIMITS['memory_mib'][1])
    disk_gib: int = Field(20, ge=LIMITS['disk_gib'][0], le=LIMITS['disk_gib'][1])
    hostname: str | None = Field(None, max_length=63, description='An RFC 1123 label; '
                                 'gpu-{slot_id} when left out.')
    gpu_model: str | None = Field(None, max_length=9, description="PCI 'vendor:device', "
                                  "e.g. '10de:2330' (H100 SXM).")
    node_id: str | None = Field(None, max_length=63, description='Only this node.')
    numa_node: int | None = Field(None, ge=0, le=1023, description='Prefer this NUMA node.')
    ssh_source_cidrs: list[str] = Field(default_factory=list, max_length=MAX_SOURCE_CIDRS,
                                        description="IPv4 networks the slot's SSH port answers "
                                        "('203.0.113.0/24', '198.51.100.7'); empty or left out: any.",
                                        examples=[['203.0.113.0/24']])

    _image = _pattern(IMAGE_RE, 'image', "a file name of letters, digits and '._-' (no path)")
    _checksum = _pattern(CHECKSUM_RE, 'image_checksum', "'sha256:' followed by 64 lowercase hex digits")
    _hostname = _pattern(HOSTNAME_RE, 'hostname', 'an RFC 1123 label: lowercase letters, digits and -')
    _gpu_model = _pattern(GPU_MODEL_RE, 'gpu_model', "'vendor:device', 4 lowercase hex digits each")
    _node_id = _pattern(NODE_ID_RE, 'node_id', "letters, digits and '._-', 1-63")

    @field_validator('ssh_source_cidrs')
    @classmethod
    def _sources(cls, values):
        # Normalised as the node does it, so an Idempotency-Key compares what the node gets.
        return [] if not values else source_cidrs(values)

    @field_validator('ssh_keys')
    @classmethod
    def _keys(cls, keys):
        for position, key in enumerate(keys):
            problem = ssh_key_problem(key)
            if problem:
                raise ValueError('ssh_keys[%d]: %s' % (position, problem))
        return keys


class ApprovalIn(Strict):
    approved_slots: list[dict] = Field(max_length=256, description='The approved slot map '
                                       '(docs/approved-slot-map.md).')


class DrainIn(Strict):
    reason: str | None = Field(None, max_length=255)

    _reason = _pattern(NOTE_RE, 'reason', 'text without control characters')


class MarkCleanIn(Strict):
    reason: str = Field(min_length=1, max_length=255, description='What was done on the node by hand, for the '
                        'audit ledger (required).')

    _reason = _pattern(NOTE_RE, 'reason', 'text without control characters')


class UnderlayIn(Strict):
    underlay_ip: str | None = Field(max_length=15, description="The node's IPv4 underlay address "
                                    '(unicast, not loopback); null removes it.')


class QuotaIn(Strict):
    max_gpus: int = Field(ge=-1, le=100000, description='-1 is unlimited.')


_EXPIRES = ("The new token's lifetime in days; 0: it never expires; left out: the server's "
            'default (GPUAAS_TOKEN_DAYS, 90 unless set).')


class TokenIn(Strict):
    role: Literal['operator', 'reader', 'tenant'] = Field(description="'reader' reads the operator views (GET) "
                                                         'and nothing else.')
    tenant: str | None = Field(None, max_length=63)
    name: str | None = Field(None, max_length=63)
    expires_in_days: int | None = Field(None, ge=0, le=TOKEN_MAX_DAYS, description=_EXPIRES)

    _tenant = _pattern(TENANT_RE, 'tenant', "lowercase letters, digits and '._-', 1-63")
    _name = _pattern(TOKEN_NAME_RE, 'name', "letters, digits and '._@-', 1-63")


class TokenRotateIn(Strict):
    grace_seconds: int = Field(0, ge=0, le=TOKEN_MAX_GRACE, description='How long the rotated '
                               'token keeps working; 0: it stops at once.')
    expires_in_days: int | None = Field(None, ge=0, le=TOKEN_MAX_DAYS, description=_EXPIRES)
