# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every dependency of the routes, in one place: the database and a read transaction, the
settings, and who is asking (a bearer token's actor; an operator for operator routes).

Bearer tokens (stored as sha256 hashes) carry a role: ``tenant`` (allocations of its own
tenant; anything else is 404), ``operator`` (everything; operator routes answer a tenant
403) or ``reader`` (the operator views, GET only: any other method is 403 before the route
runs, and so are the allocation routes, which are the tenants' and act for them). A token past its ``expires_at`` is answered 401 "the token expired"; its last use is
recorded to the minute (``service.LAST_USED_EVERY``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from gpuaas_control import audit, service
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import OPERATOR_VIEW_ROLES, ROLE_OPERATOR, ROLE_READER, utcnow

_bearer = HTTPBearer(auto_error=False)


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DB = Annotated[Database, Depends(get_db)]
AppSettings = Annotated[Settings, Depends(get_settings)]


def read_session(db: DB):
    """A read transaction for the route's body; closed before the answer is written."""
    with db.read() as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session, scope='function')]


def _unauthorized(message):
    return HTTPException(401, message, headers={'WWW-Authenticate': 'Bearer'})


# What a reader token may ask: it reads and nothing else, whatever route a later change adds.
READ_METHODS = frozenset({'GET', 'HEAD'})


def get_actor(request: Request, db: DB, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                               Depends(_bearer)]) -> audit.Actor:
    if credentials is None or credentials.scheme.lower() != 'bearer':
        raise _unauthorized('a bearer token is required (Authorization: Bearer TOKEN)')
    now = utcnow()
    try:
        with db.read() as session:
            found = service.authenticate(session, credentials.credentials, now)
    except service.TokenExpired:
        raise _unauthorized('the token expired') from None
    if found is None:
        raise _unauthorized('the token is not valid or was revoked')
    who, mark_used = found
    if who.role == ROLE_READER and request.method not in READ_METHODS:
        raise service.Forbidden('a reader token only reads (GET): %s needs an operator token'
                                % request.method)
    if mark_used is not None:
        # Once a minute per token at most: the request's own work stays a read.
        db.transact(service.mark_token_used, mark_used, now)
    return who


Actor = Annotated[audit.Actor, Depends(get_actor)]


def get_operator(who: Actor) -> audit.Actor:
    if who.role != ROLE_OPERATOR:
        raise service.Forbidden('this endpoint is for operators')
    return who


Operator = Annotated[audit.Actor, Depends(get_operator)]


def get_operator_view(who: Actor) -> audit.Actor:
    """An operator or a reader: for the routes that only read the operator views."""
    if who.role not in OPERATOR_VIEW_ROLES:
        raise service.Forbidden('this endpoint is for operators')
    return who


OperatorView = Annotated[audit.Actor, Depends(get_operator_view)]


def get_member(who: Actor) -> audit.Actor:
    """A tenant or an operator: the allocation routes, which act for a tenant (a reader token
    has no tenant and reads the operator views only)."""
    if who.role == ROLE_READER:
        raise service.Forbidden('allocations are for their tenant and operators: a reader token '
                                'reads the operator views only')
    return who


Member = Annotated[audit.Actor, Depends(get_member)]
