# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""API tokens (operators): list, create (shown once), rotate (the new one shown once),
revoke."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from gpuaas_control import service
from gpuaas_control.deps import DB, AppSettings, Operator, OperatorView, ReadSession
from gpuaas_control.models import ApiToken
from gpuaas_control.schemas.admin import TokenCreated, TokenList, TokenRevoked, TokenRotated
from gpuaas_control.schemas.bodies import TokenIn, TokenRotateIn
from gpuaas_control.schemas.params import RowId

router = APIRouter(prefix='/v1/tokens', tags=['operators'])


def _days(asked, settings):
    return settings.token_days if asked is None else asked


@router.get('', response_model=TokenList)
def list_tokens(_who: OperatorView, session: ReadSession):
    return TokenList(tokens=session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all())


@router.post('', status_code=201, response_model=TokenCreated)
def create_token(body: TokenIn, who: Operator, db: DB, settings: AppSettings):
    """A new bearer token; it is shown once, only its hash is kept."""
    token, row = db.transact(service.create_token, who, body.role, body.tenant, body.name or '',
                             default_max_gpus=settings.default_max_gpus,
                             expires_in=_days(body.expires_in_days, settings))
    return TokenCreated(id=row.id, name=row.name, role=row.role, tenant=row.tenant_id,
                        expires_at=row.expires_at, token=token)


@router.post('/{token_id}/rotate', status_code=201, response_model=TokenRotated)
def rotate_token(token_id: RowId, who: Operator, db: DB, settings: AppSettings,
                 body: TokenRotateIn | None = None):
    """A new token with the rotated one's name, role and tenant (shown once); the rotated
    one stops working after ``grace_seconds`` (at once by default). A revoked, expired or
    already rotated token is 409."""
    body = body or TokenRotateIn()
    token, row, old = db.transact(service.rotate_token, who, token_id, body.grace_seconds,
                                  _days(body.expires_in_days, settings))
    return TokenRotated(id=row.id, name=row.name, role=row.role, tenant=row.tenant_id,
                        expires_at=row.expires_at, token=token, replaces=old.id,
                        replaces_until=old.expires_at)


@router.delete('/{token_id}', response_model=TokenRevoked)
def revoke_token(token_id: RowId, who: Operator, db: DB):
    return db.transact(service.revoke_token, who, token_id)
