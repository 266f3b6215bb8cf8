# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP API (FastAPI; the OpenAPI document is served at /openapi.json, docs at /docs).

``create_app`` only assembles: the routers (``gpuaas_control.routers``, one per resource),
the error handlers and the body limit. Dependencies are in ``deps``, shapes in ``schemas``.
Every refusal is JSON ``{"detail": "...", "problems": [...]}`` with a 4xx status; a
database that cannot be reached (a server restarting, a connection it dropped) is a JSON 503
with ``Retry-After``, its cause in the server's log.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from gpuaas_control import __version__
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.errors import ControlError
from gpuaas_control.routers import ROUTERS

log = logging.getLogger('gpuaas_control.api')
UNAVAILABLE_RETRY_AFTER = 2


def error(status, detail, problems=None, headers=None):
    return JSONResponse({'detail': detail, 'problems': problems or []}, status_code=status,
                        headers=headers)


def validation_problems(exc: RequestValidationError):
    """'query.offset: Input should be less than or equal to 2147483647', ...: each names
    where the bad value was (body, query, path or header) and the field."""
    problems = []
    for item in exc.errors():
        where = '.'.join(str(part) for part in item.get('loc', ()) if part != 'body')
        message = item.get('msg', 'invalid')
        if message.startswith('Value error, '):
            message = message[len('Value error, '):]
        if item.get('type') == 'json_invalid':
            message = 'the body is not valid JSON (%s)' % item.get('ctx', {}).get('error', 'parse error')
        problems.append('%s: %s' % (where, message) if where else message)
    return problems


class BodyTooLarge(HTTPException):
    def __init__(self, limit):
        super().__init__(413, 'the request body is larger than %d bytes' % limit)


class BodyLimit:
    """Refuse a body over ``limit`` bytes: at once when its Content-Length says so (413,
    JSON), or as it streams in (the route's read raises BodyTooLarge, answered as JSON)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        declared = dict(scope.get('headers') or ()).get(b'content-length', b'')
        if declared.isdigit() and int(declared) > self.limit:
            return await error(413, BodyTooLarge(self.limit).detail)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get('body', b''))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message
        return await self.app(scope, limited, send)


async def _control_error(_request, exc: ControlError):
    return error(exc.status, exc.message, exc.problems)


async def _invalid(_request, exc: RequestValidationError):
    problems = validation_problems(exc)
    return error(422, 'invalid request: ' + '; '.join(problems[:5]), problems)


async def _http_error(_request, exc: HTTPException):
    return error(exc.status_code, str(exc.detail), headers=getattr(exc, 'headers', None))


async def _database_unavailable(request, exc):
    # Not the client's doing and nothing to show it: the operator's log has the cause.
    log.error('%s %s: the database failed: %s', request.method, request.url.path,
              str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return error(503, 'the database is not reachable at the moment: try again',
                 headers={'Retry-After': str(UNAVAILABLE_RETRY_AFTER)})


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    db = db or Database(settings.db_url, pool_size=20, audit_checkpoint=settings.audit_checkpoint)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Endpoints run in a thread pool. Fewer threads than anyio's default 40 keep the
        # database transactions short: each thread holding a row lock or SQLite's write
        # lock would otherwise share the GIL with dozens of others.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield
        db.dispose()

    app = FastAPI(
        lifespan=lifespan, title='gpuaas.slice control plane', version=__version__,
        description='Allocate GPU slots (one passthrough GPU with its own NVMe, fabric VF, '
                    'network and NUMA-local CPUs) and operate the slot table.',
        # /docs is served by routers.service from local files; ReDoc would need a CDN.
        docs_url=None, redoc_url=None,
        exception_handlers={ControlError: _control_error, RequestValidationError: _invalid,
                            HTTPException: _http_error, OperationalError: _database_unavailable,
                            InterfaceError: _database_unavailable})
    app.state.db = db
    app.state.settings = settings
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body)
    return app


def factory() -> FastAPI:
    """For ``uvicorn --factory gpuaas_control.api:factory`` (settings from the environment)."""
    return create_app()
