# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""API tokens (operators): list, create (shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from gpuaas_control import service
from gpuaas_control.deps import DB, AppSettings, Operator, ReadSession
from gpuaas_control.models import ApiToken
from gpuaas_control.schemas.admin import TokenCreated, TokenList, TokenRevoked
from gpuaas_control.schemas.bodies import TokenIn
from gpuaas_control.schemas.params import RowId

router = APIRouter(prefix='/v1/tokens', tags=['operators'])


@router.get('', response_model=TokenList)
def list_tokens(_who: Operator, session: ReadSession):
    return TokenList(tokens=session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all())


@router.post('', status_code=201, response_model=TokenCreated)
def create_token(body: TokenIn, who: Operator, db: DB, settings: AppSettings):
    """A new bearer token; it is shown once, only its hash is kept."""
    token, row = db.transact(service.create_token, who, body.role, body.tenant, body.name or '',
                             default_max_gpus=settings.default_max_gpus)
    return TokenCreated(id=row.id, name=row.name, role=row.role, tenant=row.tenant_id, token=token)


@router.delete('/{token_id}', response_model=TokenRevoked)
def revoke_token(token_id: RowId, who: Operator, db: DB):
    return db.transact(service.revoke_token, who, token_id)
