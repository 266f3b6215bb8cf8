# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Allocations: reserve, list, read, release, and follow one's progress (server-sent events)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from gpuaas_control import console, networks, power, service, telemetry
from gpuaas_control.deps import DB, AppSettings, Member, ReadSession
from gpuaas_control.models import ALLOCATION_STATES, TERMINAL_STATES
from gpuaas_control.schemas.bodies import AllocationCreate
from gpuaas_control.schemas.params import After, IdempotencyKey, Key, LastEventId, Offset, TenantFilter
from gpuaas_control.schemas.views import AllocationList, AllocationView, ConsoleView, EventView, TelemetryView

SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0

router = APIRouter(prefix='/v1/allocations', tags=['allocations'])


@router.post('', status_code=201, response_model=AllocationView,
             responses={200: {'description': 'The allocation this Idempotency-Key already made',
                              'model': AllocationView},
                        409: {'description': 'Nothing fits, the quota is used up, or the '
                                             'Idempotency-Key was used for another request'}})
def create_allocation(body: AllocationCreate, who: Member, db: DB, settings: AppSettings,
                      response: Response, idempotency_key: IdempotencyKey = None):
    """Reserve a slot: 201 with the allocation in ``requested``; a worker brings it up."""
    request = service.AllocationRequest(idempotency_key=idempotency_key, **body.model_dump())
    allocation, created = db.transact(service.reserve, who, request,
                                      default_max_gpus=settings.default_max_gpus,
                                      ranges=networks.Ranges.of(settings))
    if not created:
        response.status_code = 200
    response.headers['Location'] = '/v1/allocations/%s' % allocation.id
    return AllocationView.of(allocation, who)


@router.get('', response_model=AllocationList)
def list_allocations(who: Member, session: ReadSession,
                     state: Annotated[Literal[ALLOCATION_STATES] | None, Query()] = None,
                     tenant: TenantFilter = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Offset = 0):
    """A tenant's own allocations; an operator's view of all (``tenant`` filters)."""
    rows = service.list_allocations(session, who, tenant, state, limit, offset)
    return AllocationList(allocations=[AllocationView.of(a, who) for a in rows])


@router.get('/{allocation_id}', response_model=AllocationView)
def get_allocation(allocation_id: Key, who: Member, session: ReadSession):
    return AllocationView.of(service.get_allocation(session, who, allocation_id), who)


@router.get('/{allocation_id}/telemetry', response_model=TelemetryView)
def allocation_telemetry(allocation_id: Key, who: Member, session: ReadSession):
    """The guest agent's last health sample and the slot acceptance result, as last collected
    from the node's telemetry sink (its own tenant and operators)."""
    return TelemetryView.of(*telemetry.get(session, who, allocation_id), who)


POWER_RESPONSES = {409: {'description': "The allocation's state does not allow it (e.g. stopping one that is "
                                         'provisioning, rebooting a stopped one)'}}


@router.post('/{allocation_id}/stop', status_code=202, response_model=AllocationView, responses=POWER_RESPONSES)
def stop_allocation(allocation_id: Key, who: Member, db: DB):
    """Stop the VM (ACPI shutdown, powered off after a timeout): 202 with the allocation in
    ``stopping``, then ``stopped``. The slot, its devices, disk and address stay the allocation's;
    stopped time is not running time in usage. Idempotent."""
    return AllocationView.of(db.transact(power.request, who, allocation_id, 'stop'), who)


@router.post('/{allocation_id}/start', status_code=202, response_model=AllocationView, responses=POWER_RESPONSES)
def start_allocation(allocation_id: Key, who: Member, db: DB):
    """Start a stopped VM: 202 with the allocation in ``starting``, then ``running``. Idempotent."""
    return AllocationView.of(db.transact(power.request, who, allocation_id, 'start'), who)


@router.post('/{allocation_id}/reboot', status_code=202, response_model=AllocationView, responses=POWER_RESPONSES)
def reboot_allocation(allocation_id: Key, who: Member, db: DB):
    """Reboot a running VM (ACPI reboot; powered off and started when the guest does not
    answer): 202 with the allocation in ``rebooting``, then ``running``."""
    return AllocationView.of(db.transact(power.request, who, allocation_id, 'reboot'), who)


@router.get('/{allocation_id}/console', response_model=ConsoleView)
def allocation_console(allocation_id: Key, who: Member, db: DB, settings: AppSettings):
    """The newest part of the VM's serial console log (at most 64 KiB), as last read from the
    node. A copy older than a few seconds is read again by the worker: ``refreshing`` says so,
    ask again shortly."""
    allocation, row, refreshing = db.transact(console.get, who, allocation_id, settings.console_max_age)
    return ConsoleView.of(allocation, row, refreshing, who)


@router.delete('/{allocation_id}', status_code=202, response_model=AllocationView)
def release_allocation(allocation_id: Key, who: Member, db: DB):
    """Release: 202 with the allocation in ``releasing`` (idempotent)."""
    return AllocationView.of(db.transact(service.request_release, who, allocation_id), who)


@router.get('/{allocation_id}/events', response_class=StreamingResponse, response_model=None,
            responses={200: {'model': EventView, 'content': {'text/event-stream': {}},
                             'description': 'Server-sent events (state, progress, error), each '
                                            "an EventView in its 'data' line"}})
async def allocation_events(allocation_id: Key, who: Member, db: DB, follow: bool = True,
                            last_event_id: LastEventId = None, after: After = 0,
                            timeout: Annotated[float, Query(gt=0, le=86400, allow_inf_nan=False)] = 3600):
    """Progress as server-sent events. With ``follow`` (the default) the stream stays
    open until the allocation is released or failed (or ``timeout`` seconds)."""
    def load(after_id):
        with db.read() as session:
            allocation = service.get_allocation(session, who, allocation_id)
            return allocation.state, service.events_after(session, allocation.id, after_id)
    start = last_event_id or after
    state, first = await asyncio.to_thread(load, start)

    async def stream():
        nonlocal state
        events, last = first, start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = loop.time()
        while True:
            for event in events:
                last = event.id
                yield 'id: %d\nevent: %s\ndata: %s\n\n' % (
                    event.id, event.kind, EventView.of(event, who).model_dump_json())
                quiet_since = loop.time()
            if not follow or (state in TERMINAL_STATES and not events) or loop.time() > deadline:
                return
            if loop.time() - quiet_since > SSE_KEEPALIVE_SECONDS:
                yield ': keep-alive\n\n'
                quiet_since = loop.time()
            await asyncio.sleep(SSE_POLL_SECONDS)
            state, events = await asyncio.to_thread(load, last)

    return StreamingResponse(stream(), media_type='text/event-stream',
                             headers={'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no'})
