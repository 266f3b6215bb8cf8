# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP API (FastAPI; the OpenAPI document is served at /openapi.json, docs at /docs).

Bearer tokens (stored as sha256 hashes) carry a role: ``tenant`` (allocations of its own
tenant; anything else is 404) or ``operator`` (everything; operator endpoints answer a
tenant 403). Errors are JSON ``{"detail": "...", "problems": [...]}``.
"""


import asyncio
import contextlib
import datetime as dt
import json
from typing import Annotated, Literal

import anyio
from fastapi import Depends, FastAPI, Header, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpuaas_control import __version__, audit, service
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import (
    ALLOCATION_STATES,
    ROLE_OPERATOR,
    ROLE_TENANT,
    SLOT_STATES,
    TERMINAL_STATES,
    ApiToken,
    AuditEntry,
    Node,
    Slot,
    Tenant,
)
from gpuaas_control.validation import (
    CHECKSUM_RE,
    GPU_MODEL_RE,
    HOSTNAME_RE,
    IDEMPOTENCY_KEY_RE,
    IMAGE_RE,
    LIMITS,
    MAX_SSH_KEYS,
    NODE_ID_RE,
    NOTE_RE,
    TENANT_RE,
    TOKEN_NAME_RE,
    show,
    ssh_key_problem,
)

SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0


# -- request models ------------------------------------------------------------------------

def _pattern(regex, what):
    def check(value):
        if value is not None and not regex.match(value):
            raise ValueError('%s %s is not valid: %s' % (what['name'], show(value), what['rule']))
        return value
    return check


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

    _image = field_validator('image')(_pattern(IMAGE_RE, {
        'name': 'image', 'rule': "a file name of letters, digits and '._-' (no path)"}))
    _checksum = field_validator('image_checksum')(_pattern(CHECKSUM_RE, {
        'name': 'image_checksum', 'rule': "'sha256:' followed by 64 lowercase hex digits"}))
    _hostname = field_validator('hostname')(_pattern(HOSTNAME_RE, {
        'name': 'hostname', 'rule': 'an RFC 1123 label: lowercase letters, digits and -'}))
    _gpu_model = field_validator('gpu_model')(_pattern(GPU_MODEL_RE, {
        'name': 'gpu_model', 'rule': "'vendor:device', 4 lowercase hex digits each"}))
    _node_id = field_validator('node_id')(_pattern(NODE_ID_RE, {
        'name': 'node_id', 'rule': "letters, digits and '._-', 1-63"}))

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

    _reason = field_validator('reason')(_pattern(NOTE_RE, {
        'name': 'reason', 'rule': 'text without control characters'}))


class QuotaIn(Strict):
    max_gpus: int = Field(ge=-1, le=100000, description='-1 is unlimited.')


class TokenIn(Strict):
    role: Literal['operator', 'tenant']
    tenant: str | None = Field(None, max_length=63)
    name: str | None = Field(None, max_length=63)

    _tenant = field_validator('tenant')(_pattern(TENANT_RE, {
        'name': 'tenant', 'rule': "lowercase letters, digits and '._-', 1-63"}))
    _name = field_validator('name')(_pattern(TOKEN_NAME_RE, {
        'name': 'name', 'rule': "letters, digits and '._@-', 1-63"}))


# -- views ---------------------------------------------------------------------------------

def _time(value):
    return value.isoformat() if value is not None else None


def allocation_view(allocation, actor: audit.Actor) -> dict:
    view = {
        'id': allocation.id,
        'tenant': allocation.tenant_id,
        'state': allocation.state,
        'slot_id': allocation.slot_id,
        'node_id': allocation.node_id,
        'image': allocation.image,
        'image_checksum': allocation.image_checksum,
        'image_format': allocation.image_format,
        'ssh_keys': allocation.ssh_keys,
        'vcpus': allocation.vcpus,
        'memory_mib': allocation.memory_mib,
        'disk_gib': allocation.disk_gib,
        'hostname': allocation.hostname,
        'request': allocation.request,
        'mac': allocation.mac,
        'address': allocation.address,
        'ssh': allocation.ssh,
        'hostdevs_attached': allocation.hostdevs_attached,
        'timings': allocation.timings,
        'error': allocation.error,
        'created_at': _time(allocation.created_at),
        'updated_at': _time(allocation.updated_at),
        'running_at': _time(allocation.running_at),
        'release_requested_at': _time(allocation.release_requested_at),
        'ended_at': _time(allocation.ended_at),
    }
    # The telemetry token is the guest's credential: its owner sees it, nobody else.
    if actor.role == ROLE_TENANT and actor.tenant == allocation.tenant_id:
        view['telemetry_token'] = allocation.telemetry_token
    return view


def slot_view(slot: Slot) -> dict:
    return {
        'id': slot.id, 'node_id': slot.node_id, 'slot_index': slot.slot_index,
        'state': slot.state, 'approved': slot.approved, 'allocation_id': slot.allocation_id,
        'state_reason': slot.state_reason, 'gpu_address': slot.gpu_address,
        'gpu_model': slot.gpu_model, 'numa_node': slot.numa_node, 'cpulist': slot.cpulist,
        'companions': slot.companions, 'nvme_address': slot.nvme_address,
        'fabric_pf_address': slot.fabric_pf_address,
        'fabric_vf_pci_address': slot.fabric_vf_pci_address, 'mac': slot.mac, 'ip': slot.ip,
        'capacity_metadata': slot.capacity_metadata,
        'destructive_wipe_policy': slot.destructive_wipe_policy,
        'approved_by': slot.approved_by, 'approved_at': _time(slot.approved_at),
        'updated_at': _time(slot.updated_at),
    }


def node_view(node: Node, slots=None) -> dict:
    discovery = node.discovery or {}
    view = {
        'id': node.id, 'schedulable': node.schedulable, 'drain_reason': node.drain_reason,
        'discovered_at': _time(node.discovered_at), 'approved_at': _time(node.approved_at),
        'discovery': {
            'iommu_enabled': discovery.get('iommu_enabled'),
            'numa_nodes': discovery.get('numa_nodes'),
            'slots': [{'slot_id': s.get('slot_id'), 'gpu_address': s.get('gpu_address'),
                       'eligible': s.get('eligible'), 'reasons': s.get('reasons')}
                      for s in discovery.get('slots') or [] if isinstance(s, dict)],
        } if node.discovery else None,
    }
    if slots is not None:
        view['slots'] = [slot_view(s) for s in slots]
    return view


def event_view(event) -> dict:
    return {'id': event.id, 'at': _time(event.at), 'kind': event.kind, 'message': event.message,
            'data': event.data}


def _error(status, detail, problems=None, headers=None):
    return JSONResponse({'detail': detail, 'problems': problems or []}, status_code=status,
                        headers=headers)


def _validation_problems(exc: RequestValidationError):
    problems = []
    for error in exc.errors():
        where = '.'.join(str(part) for part in error.get('loc', ()) if part != 'body')
        message = error.get('msg', 'invalid')
        if message.startswith('Value error, '):
            message = message[len('Value error, '):]
        if error.get('type') == 'json_invalid':
            message = 'the body is not valid JSON (%s)' % error.get('ctx', {}).get('error', 'parse error')
        problems.append('%s: %s' % (where, message) if where else message)
    return problems


# -- the application -----------------------------------------------------------------------

def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    db = db or Database(settings.db_url, pool_size=20)
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Endpoints run in a thread pool. Fewer threads than anyio's default 40 keep the
        # database transactions short: each thread holding a row lock or SQLite's write
        # lock would otherwise share the GIL with dozens of others.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield
        db.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title='gpuaas.slice control plane', version=__version__,
        description='Allocate GPU slots (one passthrough GPU with its own NVMe, fabric VF, '
                    'network and NUMA-local CPUs) and operate the slot table.',
        # Larger bodies get 413 before they are read (Content-Length) or as they stream.
        max_body_size=settings.max_body,
    )
    app.state.db = db
    app.state.settings = settings
    bearer = HTTPBearer(auto_error=False)

    @app.exception_handler(service.ControlError)
    async def _control_error(_request, exc: service.ControlError):
        return _error(exc.status, exc.message, exc.problems)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        problems = _validation_problems(exc)
        return _error(422, 'invalid request: ' + '; '.join(problems[:5]), problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, 'headers', None))

    def actor(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if credentials is None or credentials.scheme.lower() != 'bearer':
            raise StarletteHTTPException(401, 'a bearer token is required (Authorization: '
                                         'Bearer TOKEN)', headers={'WWW-Authenticate': 'Bearer'})
        with db.read() as session:
            who = service.authenticate(session, credentials.credentials)
        if who is None:
            raise StarletteHTTPException(401, 'the token is not valid or was revoked',
                                         headers={'WWW-Authenticate': 'Bearer'})
        return who

    def operator(who: Annotated[audit.Actor, Depends(actor)]):
        if who.role != ROLE_OPERATOR:
            raise service.Forbidden('this endpoint is for operators')
        return who

    Actor = Annotated[audit.Actor, Depends(actor)]
    Operator = Annotated[audit.Actor, Depends(operator)]

    @app.get('/healthz', tags=['service'])
    def healthz():
        with db.read() as session:
            session.execute(select(1))
        return {'ok': True, 'database': db.backend, 'version': __version__}

    # -- allocations -------------------------------------------------------------------

    @app.post('/v1/allocations', status_code=201, tags=['allocations'],
              responses={200: {'description': 'The allocation this Idempotency-Key already made'},
                         409: {'description': 'Nothing fits, or the quota is used up'}})
    def create_allocation(body: AllocationCreate, who: Actor, response: Response,
                          idempotency_key: Annotated[str | None, Header(max_length=64)] = None):
        """Reserve a slot: 201 with the allocation in ``requested``; a worker brings it up."""
        if idempotency_key is not None and not IDEMPOTENCY_KEY_RE.match(idempotency_key):
            raise service.Invalid('Idempotency-Key must be 1-64 letters, digits, _ or -')
        request = service.AllocationRequest(idempotency_key=idempotency_key,
                                            **body.model_dump())
        allocation, created = db.transact(service.reserve, who, request,
                                          default_max_gpus=settings.default_max_gpus)
        if not created:
            response.status_code = 200
        response.headers['Location'] = '/v1/allocations/%s' % allocation.id
        return allocation_view(allocation, who)

    @app.get('/v1/allocations', tags=['allocations'])
    def list_allocations(who: Actor,
                         state: Annotated[Literal[ALLOCATION_STATES] | None, Query()] = None,
                         tenant: Annotated[str | None, Query(max_length=63)] = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 100,
                         offset: Annotated[int, Query(ge=0)] = 0):
        """A tenant's own allocations; an operator's view of all (``tenant`` filters)."""
        with db.read() as session:
            rows = service.list_allocations(session, who, tenant, state, limit, offset)
        return {'allocations': [allocation_view(a, who) for a in rows]}

    @app.get('/v1/allocations/{allocation_id}', tags=['allocations'])
    def get_allocation(allocation_id: str, who: Actor):
        with db.read() as session:
            allocation = service.get_allocation(session, who, allocation_id)
        return allocation_view(allocation, who)

    @app.delete('/v1/allocations/{allocation_id}', status_code=202, tags=['allocations'])
    def release_allocation(allocation_id: str, who: Actor):
        """Release: 202 with the allocation in ``releasing`` (idempotent)."""
        allocation = db.transact(service.request_release, who, allocation_id)
        return allocation_view(allocation, who)

    @app.get('/v1/allocations/{allocation_id}/events', tags=['allocations'],
             response_class=StreamingResponse,
             responses={200: {'content': {'text/event-stream': {}},
                              'description': 'Server-sent events: state, progress, error'}})
    async def allocation_events(allocation_id: str, who: Actor,
                                follow: bool = True,
                                last_event_id: Annotated[int | None, Header(ge=0)] = None,
                                after: Annotated[int, Query(ge=0)] = 0,
                                timeout: Annotated[float, Query(gt=0, le=86400)] = 3600):
        """Progress as server-sent events. With ``follow`` (the default) the stream stays
        open until the allocation is released or failed (or ``timeout`` seconds)."""
        def load(after_id):
            with db.read() as session:
                allocation = service.get_allocation(session, who, allocation_id)
                return allocation.state, service.events_after(session, allocation.id, after_id)
        state, first = await asyncio.to_thread(load, last_event_id or after)

        async def stream():
            nonlocal state
            events, last = first, last_event_id or after
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            quiet_since = loop.time()
            while True:
                for event in events:
                    last = event.id
                    yield 'id: %d\nevent: %s\ndata: %s\n\n' % (
                        event.id, event.kind, json.dumps(event_view(event), separators=(',', ':')))
                    quiet_since = loop.time()
                if not follow or (state in TERMINAL_STATES and not events) \
                        or loop.time() > deadline:
                    return
                if loop.time() - quiet_since > SSE_KEEPALIVE_SECONDS:
                    yield ': keep-alive\n\n'
                    quiet_since = loop.time()
                await asyncio.sleep(SSE_POLL_SECONDS)
                state, events = await asyncio.to_thread(load, last)

        return StreamingResponse(stream(), media_type='text/event-stream',
                                 headers={'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no'})

    # -- nodes, slots, approval (operators) ---------------------------------------------

    @app.get('/v1/nodes', tags=['operators'])
    def list_nodes(_who: Operator):
        with db.read() as session:
            nodes = session.execute(select(Node).order_by(Node.id)).scalars().all()
            counts = dict(session.execute(select(Slot.node_id, func.count()).where(
                Slot.approved.is_(True)).group_by(Slot.node_id)).all())
            free = dict(session.execute(select(Slot.node_id, func.count()).where(
                Slot.approved.is_(True), Slot.state == 'free').group_by(Slot.node_id)).all())
        return {'nodes': [dict(node_view(n), approved_slots=counts.get(n.id, 0),
                               free_slots=free.get(n.id, 0)) for n in nodes]}

    @app.get('/v1/nodes/{node_id}', tags=['operators'])
    def get_node(node_id: str, _who: Operator):
        with db.read() as session:
            node = service.get_node(session, node_id)
            slots = session.execute(select(Slot).where(Slot.node_id == node.id)
                                    .order_by(Slot.slot_index)).scalars().all()
        return node_view(node, slots)

    @app.put('/v1/nodes/{node_id}/discovery', tags=['operators'])
    def put_discovery(node_id: str, discovery: dict, who: Operator):
        """Store the node's discovery result (what gpuaas.slice.slot_discovery returned);
        registers the node the first time."""
        node = db.transact(service.record_discovery, who, node_id, discovery)
        return node_view(node)

    @app.put('/v1/nodes/{node_id}/approval', tags=['operators'])
    def put_approval(node_id: str, body: ApprovalIn, who: Operator):
        """Apply an approved slot map, all or nothing, by the collection's rules."""
        slots = db.transact(service.approve, who, node_id, body.approved_slots)
        return {'node_id': node_id, 'slots': [slot_view(s) for s in slots]}

    @app.post('/v1/nodes/{node_id}/drain', tags=['operators'])
    def drain(node_id: str, who: Operator, body: DrainIn | None = None):
        """Stop scheduling on the node; its allocations keep running."""
        node = db.transact(service.set_drain, who, node_id, True, body.reason if body else None)
        return node_view(node)

    @app.post('/v1/nodes/{node_id}/undrain', tags=['operators'])
    def undrain(node_id: str, who: Operator):
        node = db.transact(service.set_drain, who, node_id, False)
        return node_view(node)

    @app.get('/v1/slots', tags=['operators'])
    def list_slots(_who: Operator, node_id: Annotated[str | None, Query(max_length=63)] = None,
                   state: Annotated[Literal[SLOT_STATES] | None, Query()] = None):
        query = select(Slot).order_by(Slot.node_id, Slot.slot_index)
        if node_id:
            query = query.where(Slot.node_id == node_id)
        if state:
            query = query.where(Slot.state == state)
        with db.read() as session:
            slots = session.execute(query).scalars().all()
        return {'slots': [slot_view(s) for s in slots]}

    # -- tenants, quotas, usage, tokens, audit (operators) ------------------------------------

    @app.get('/v1/tenants', tags=['operators'])
    def list_tenants(_who: Operator):
        with db.read() as session:
            tenants = session.execute(select(Tenant).order_by(Tenant.id)).scalars().all()
            return {'tenants': [{'id': t.id, 'max_gpus': t.max_gpus,
                                 'allocated_gpus': service.active_count(session, t.id)}
                                for t in tenants]}

    @app.put('/v1/tenants/{tenant_id}/quota', tags=['operators'])
    def put_quota(tenant_id: str, body: QuotaIn, who: Operator):
        """The tenant's GPU limit (as CloudStack's max.account.gpus; -1 unlimited)."""
        tenant = db.transact(service.set_quota, who, tenant_id, body.max_gpus,
                             default_max_gpus=settings.default_max_gpus)
        return {'id': tenant.id, 'max_gpus': tenant.max_gpus}

    @app.get('/v1/usage', tags=['operators'])
    def get_usage(who: Actor, tenant: Annotated[str | None, Query(max_length=63)] = None,
                  since: dt.datetime | None = None, until: dt.datetime | None = None):
        """Allocated and running GPU-seconds per allocation in [since, until). A tenant sees
        its own."""
        if who.role != ROLE_OPERATOR:
            tenant = who.tenant
        for name, value in (('since', since), ('until', until)):
            if value is not None and value.tzinfo is None:
                raise service.Invalid('%s needs a time zone (e.g. 2026-11-01T00:00:00Z)' % name)
        with db.read() as session:
            records = service.usage(session, tenant, since, until)
        for record in records:
            for key in ('allocated_start', 'allocated_end', 'running_start', 'running_end'):
                record[key] = _time(record[key])
        return {'usage': records,
                'totals': {'allocated_seconds': round(sum(r['allocated_seconds'] for r in records), 3),
                           'running_seconds': round(sum(r['running_seconds'] for r in records), 3)}}

    @app.get('/v1/tokens', tags=['operators'])
    def list_tokens(_who: Operator):
        with db.read() as session:
            rows = session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all()
        return {'tokens': [{'id': t.id, 'name': t.name, 'role': t.role, 'tenant': t.tenant_id,
                            'created_at': _time(t.created_at), 'revoked_at': _time(t.revoked_at)}
                           for t in rows]}

    @app.post('/v1/tokens', status_code=201, tags=['operators'])
    def create_token(body: TokenIn, who: Operator):
        """A new bearer token; it is shown once, only its hash is kept."""
        token, row = db.transact(service.create_token, who, body.role, body.tenant,
                                 body.name or '', default_max_gpus=settings.default_max_gpus)
        return {'id': row.id, 'name': row.name, 'role': row.role, 'tenant': row.tenant_id,
                'token': token}

    @app.delete('/v1/tokens/{token_id}', tags=['operators'])
    def revoke_token(token_id: int, who: Operator):
        row = db.transact(service.revoke_token, who, token_id)
        return {'id': row.id, 'revoked_at': _time(row.revoked_at)}

    @app.get('/v1/audit', tags=['operators'])
    def list_audit(_who: Operator, after: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100):
        with db.read() as session:
            rows = session.execute(select(AuditEntry).where(AuditEntry.seq > after)
                                   .order_by(AuditEntry.seq).limit(limit)).scalars().all()
        return {'entries': [dict(audit.entry_document(e), prev_hash=e.prev_hash, hash=e.hash)
                            for e in rows]}

    @app.get('/v1/audit/verify', tags=['operators'])
    def verify_audit(_who: Operator):
        with db.read() as session:
            return audit.verify(session).as_dict()

    return app


def factory() -> FastAPI:
    """For ``uvicorn --factory gpuaas_control.api:factory`` (settings from the environment)."""
    return create_app()
