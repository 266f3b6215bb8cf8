# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenants and their GPU quotas (operators)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from gpuaas_control import networks, service
from gpuaas_control.deps import DB, AppSettings, Operator, OperatorView, ReadSession
from gpuaas_control.models import Tenant, TenantNetwork
from gpuaas_control.schemas.admin import QuotaView, TenantList, TenantView
from gpuaas_control.schemas.bodies import QuotaIn
from gpuaas_control.schemas.params import Key

router = APIRouter(prefix='/v1/tenants', tags=['operators'])


@router.get('', response_model=TenantList)
def list_tenants(_who: OperatorView, session: ReadSession):
    tenants = session.execute(select(Tenant).order_by(Tenant.id)).scalars().all()
    nets = {n.tenant_id: n for n in session.execute(select(TenantNetwork)).scalars()}
    return TenantList(tenants=[
        TenantView(id=t.id, max_gpus=t.max_gpus, allocated_gpus=service.active_count(session, t.id),
                   network=networks.view(nets.get(t.id)))
        for t in tenants])


@router.put('/{tenant_id}/quota', response_model=QuotaView)
def put_quota(tenant_id: Key, body: QuotaIn, who: Operator, db: DB, settings: AppSettings):
    """The tenant's GPU limit (as CloudStack's max.account.gpus; -1 unlimited)."""
    return db.transact(service.set_quota, who, tenant_id, body.max_gpus,
                       default_max_gpus=settings.default_max_gpus)
