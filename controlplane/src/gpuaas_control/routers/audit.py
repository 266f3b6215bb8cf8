# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit ledger (operators): read it, verify its chain against its checkpoint (the one
this API writes, if it has one)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from gpuaas_control import audit
from gpuaas_control.deps import OperatorView, ReadSession
from gpuaas_control.models import AuditEntry
from gpuaas_control.schemas.admin import AuditList, AuditVerification
from gpuaas_control.schemas.params import After

router = APIRouter(prefix='/v1/audit', tags=['operators'])


@router.get('', response_model=AuditList)
def list_audit(_who: OperatorView, session: ReadSession, after: After = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    return AuditList(entries=session.execute(select(AuditEntry).where(AuditEntry.seq > after)
                                             .order_by(AuditEntry.seq).limit(limit)).scalars().all())


@router.get('/verify', response_model=AuditVerification)
def verify_audit(_who: OperatorView, session: ReadSession, request: Request):
    return audit.verify(session, request.app.state.db.anchor)
