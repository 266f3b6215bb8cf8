# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage records for billing: allocated and running GPU-seconds."""

from __future__ import annotations

from fastapi import APIRouter

from gpuaas_control import service
from gpuaas_control.deps import Actor, ReadSession
from gpuaas_control.models import OPERATOR_VIEW_ROLES
from gpuaas_control.schemas.admin import UsageReport
from gpuaas_control.schemas.params import TenantFilter, Time

router = APIRouter(prefix='/v1/usage', tags=['operators'])


@router.get('', response_model=UsageReport)
def get_usage(who: Actor, session: ReadSession, tenant: TenantFilter = None,
              since: Time = None, until: Time = None):
    """Allocated and running GPU-seconds per allocation in [since, until). A tenant sees
    its own; operators and readers every tenant's."""
    if who.role not in OPERATOR_VIEW_ROLES:
        tenant = who.tenant
    return UsageReport.of(service.usage(session, tenant, since, until))
