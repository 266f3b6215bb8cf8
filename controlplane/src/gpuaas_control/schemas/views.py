# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the API answers: every route's ``response_model``, read from the ORM rows
(``from_attributes``). Times are ISO 8601 with their UTC offset, as ``isoformat()`` writes.

Who sees what is decided here, once: an allocation's telemetry token is its own tenant's
(the guest's credential), a failure's detail (a playbook's msg or stderr) an operator's;
a tenant reads the stable reason only."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PlainSerializer, PrivateAttr, model_serializer
from sqlalchemy.orm import object_session

from gpuaas_control.audit import Actor
from gpuaas_control.lifecycle import public_reason
from gpuaas_control.models import ACTIVE_STATES, ROLE_OPERATOR, ROLE_TENANT, Slot

Time = Annotated[dt.datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str)]


class View(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Restricted(View):
    """A view with fields only some readers get: ``_hidden`` names those left out."""

    _hidden: frozenset = PrivateAttr(frozenset())

    @model_serializer(mode='wrap')
    def _without_hidden(self, handler):
        data = handler(self)
        for key in self._hidden:
            data.pop(key, None)
        return data


class AllocationView(Restricted):
    id: str
    tenant: str = Field(validation_alias=AliasChoices('tenant', 'tenant_id'))
    state: str
    slot_id: str
    node_id: str
    image: str
    image_checksum: str
    image_format: str
    ssh_keys: list[str]
    vcpus: int
    memory_mib: int
    disk_gib: int
    hostname: str | None
    request: dict[str, Any]
    mac: str
    address: str | None
    ssh: dict[str, Any] | None = Field(description='Deprecated: use access. The slot on the host-only slot network '
                                       '(from the node itself only): user, host, port. Kept for existing clients; '
                                       'to be removed in a later API version.',
                                       deprecated='use access, the way in from outside the node')
    access: dict[str, Any] | None = Field(None, description="The tenant's way in from outside the node: "
                                          "{ssh_host, ssh_port, user} ('ssh -p SSH_PORT USER@SSH_HOST').")
    ssh_source_cidrs: list[str] | None = Field(None, description="The networks the slot's SSH port answers "
                                               '(empty: any), as asked.')
    hostdevs_attached: bool | None
    timings: dict[str, Any]
    error: str | None = Field(description="Why it failed, as a stable reason ('provisioning "
                              "failed', 'release failed').")
    error_detail: str | None = Field(None, description='What failed, in the words of the node '
                                     '(operators only).')
    created_at: Time
    updated_at: Time
    running_at: Time | None
    release_requested_at: Time | None
    ended_at: Time | None
    telemetry_token: str | None = Field(None, description="The guest's telemetry credential "
                                        '(its own tenant only).')
    slot_absent: str | None = Field(None, description="Why the slot's GPU is no longer there (it fell off "
                                    'the bus, or was replaced), while the allocation holds it; null when it '
                                    'is there (operators only).')

    @classmethod
    def of(cls, allocation, actor: Actor) -> AllocationView:
        owner = actor.role == ROLE_TENANT and actor.tenant == allocation.tenant_id
        operator = actor.role == ROLE_OPERATOR
        view = cls.model_validate(allocation)
        view.error = public_reason(allocation.error)
        view.error_detail = allocation.error if operator else None
        view.telemetry_token = allocation.telemetry_token if owner else None
        view.slot_absent = _slot_absent(allocation) if operator else None
        view._hidden = frozenset(key for key, shown in (('telemetry_token', owner), ('error_detail', operator),
                                                        ('slot_absent', operator)) if not shown)
        return view


def _slot_absent(allocation) -> str | None:
    """The absent_reason of the slot an active allocation holds (one primary-key read)."""
    session = object_session(allocation)
    if session is None or allocation.state not in ACTIVE_STATES:
        return None
    slot = session.get(Slot, allocation.slot_id)
    return slot.absent_reason if slot is not None and slot.allocation_id == allocation.id else None


class AllocationList(View):
    allocations: list[AllocationView]


class EventView(View):
    id: int
    at: Time
    kind: str
    message: str
    data: dict[str, Any] = Field(description="Structured details; 'detail' (a failure in the "
                                 "node's words) for operators only.")

    @classmethod
    def of(cls, event, actor: Actor) -> EventView:
        view = cls.model_validate(event)
        if actor.role != ROLE_OPERATOR and 'detail' in view.data:
            view.data = {key: value for key, value in view.data.items() if key != 'detail'}
        return view


class AcceptanceView(View):
    status: str = Field(description="'passed', 'failed', or 'pending' (no result collected yet).")
    at: Time | None = Field(None, description='When the guest agent posted it.')
    failed: list[str] = Field(default_factory=list, description='The names of the failed checks.')
    checks: list[dict[str, Any]] = Field(default_factory=list, description='Every check: name, '
                                         "status ('passed', 'failed' or 'skipped') and reason.")
    measured: dict[str, Any] | None = Field(None, description='The CUDA figures, or why there are none.')


class TelemetryView(Restricted):
    allocation_id: str
    collected_at: Time | None = Field(None, description='When the control plane last read the node.')
    samples: int = Field(0, description='Samples the sink has stored for the allocation.')
    first_at: Time | None = None
    last_at: Time | None = None
    health: dict[str, Any] | None = Field(None, description="The guest agent's last health sample "
                                          '(uptime, load, memory, disk, GPU metrics).')
    health_at: Time | None = None
    acceptance: AcceptanceView
    error: str | None = Field(None, description='Why the last collection was not recorded (operators only).')

    @classmethod
    def of(cls, allocation, row, actor: Actor) -> TelemetryView:
        operator = actor.role == ROLE_OPERATOR
        acceptance = {'status': 'pending'}
        values = {'allocation_id': allocation.id}
        if row is not None:
            values.update({key: getattr(row, key) for key in (
                'collected_at', 'samples', 'first_at', 'last_at', 'health', 'health_at')})
            values['error'] = row.error if operator else None
            if row.acceptance is not None:
                checks = row.acceptance['checks']
                acceptance = {'status': row.acceptance_status, 'at': row.acceptance_at, 'checks': checks,
                              'failed': [c['name'] for c in checks if c['status'] == 'failed'],
                              'measured': row.acceptance.get('measured')}
        view = cls.model_validate(dict(values, acceptance=acceptance))
        view._hidden = frozenset() if operator else frozenset({'error'})
        return view


class Health(View):
    ok: bool = Field(description='The service answers and reaches its database.')


class ConsoleView(Restricted):
    allocation_id: str
    state: str = Field(description="The allocation's state.")
    text: str | None = Field(None, description='The newest part of the serial console log (at most 64 KiB, whole '
                             'lines), as last read from the node; None before the first read or when the VM has '
                             'written nothing yet.')
    size: int | None = Field(None, description='The whole log\'s size in bytes when it was read.')
    truncated: bool | None = Field(None, description='Whether the log is longer than the part in text.')
    modified_at: Time | None = Field(None, description='When the VM last wrote to the log (as read).')
    collected_at: Time | None = Field(None, description='When the control plane last read the node.')
    requested_at: Time | None = Field(None, description='When a fresh read was last asked for.')
    refreshing: bool = Field(description='A fresh read is under way: ask again in a few seconds.')
    error: str | None = Field(None, description='Why the last read gave nothing (operators only).')

    @classmethod
    def of(cls, allocation, row, refreshing: bool, actor: Actor) -> ConsoleView:
        values = {'allocation_id': allocation.id, 'state': allocation.state, 'refreshing': refreshing}
        if row is not None:
            values.update({key: getattr(row, key) for key in (
                'text', 'size', 'truncated', 'modified_at', 'collected_at', 'requested_at', 'error')})
            values['refreshing'] = refreshing or row.collected_at is None or row.requested_at > row.collected_at
        view = cls.model_validate(values)
        view._hidden = frozenset() if actor.role == ROLE_OPERATOR else frozenset({'error'})
        return view
