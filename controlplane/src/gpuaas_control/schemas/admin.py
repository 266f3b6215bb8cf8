# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Views of tenants, quotas, usage, tokens and the audit ledger."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, PlainSerializer

from gpuaas_control.schemas.views import Time, View

AuditTime = Annotated[Time, PlainSerializer(lambda value: value.isoformat(timespec='microseconds'),
                                            return_type=str)]


class TenantNetworkView(View):
    vni: int = Field(description="The tenant overlay's VXLAN/Geneve network identifier.")
    pkey: str | None = Field(description="The tenant's InfiniBand partition key, '0x' and 4 hex digits "
                             '(its VFs are full members: 0x8000 set); null: no pkey range configured.')
    vlan: int | None = Field(description="The tenant's RoCE VLAN on its VFs; null: no VLAN range configured.")
    fabric_subnet: str | None = Field(description="The subnet the tenant's slots take their fabric "
                                      'addresses from; null: no fabric pool configured.')
    assigned_at: Time


class TenantView(View):
    id: str
    max_gpus: int = Field(description='-1 is unlimited.')
    allocated_gpus: int
    network: TenantNetworkView | None = Field(None, description='Given with the tenant\'s first allocation '
                                              'and kept; null: none yet.')


class TenantList(View):
    tenants: list[TenantView]


class QuotaView(View):
    id: str
    max_gpus: int


class UsageRecordView(View):
    allocation_id: str
    tenant: str
    slot_id: str
    node_id: str
    gpu_model: str
    gpus: int
    allocated_start: Time
    allocated_end: Time | None
    running_start: Time | None
    running_end: Time | None
    allocated_seconds: float
    running_seconds: float = Field(description='GPU-seconds the VM ran (allocated time less the periods it was '
                                   'stopped).')
    stopped_seconds: float = Field(0.0, description='GPU-seconds the VM was stopped by its tenant (still allocated).')


class UsageTotals(View):
    allocated_seconds: float
    running_seconds: float
    stopped_seconds: float = 0.0


class UsageReport(View):
    usage: list[UsageRecordView]
    totals: UsageTotals

    @classmethod
    def of(cls, records) -> UsageReport:
        return cls(usage=records, totals=UsageTotals(
            allocated_seconds=round(sum(r['allocated_seconds'] for r in records), 3),
            running_seconds=round(sum(r['running_seconds'] for r in records), 3),
            stopped_seconds=round(sum(r['stopped_seconds'] for r in records), 3)))


class TokenView(View):
    id: int
    name: str
    role: str
    tenant: str | None = Field(validation_alias=AliasChoices('tenant', 'tenant_id'))
    created_at: Time
    revoked_at: Time | None
    expires_at: Time | None = Field(description='None: it never expires.')
    last_used_at: Time | None = Field(description='To the minute; None: never used.')
    replaced_by: int | None = Field(description='The token that rotation made in its place.')


class TokenList(View):
    tokens: list[TokenView]


class TokenCreated(View):
    id: int
    name: str
    role: str
    tenant: str | None = Field(validation_alias=AliasChoices('tenant', 'tenant_id'))
    expires_at: Time | None = Field(description='None: it never expires.')
    token: str = Field(description='The bearer token: shown once, only its hash is kept.')


class TokenRotated(TokenCreated):
    replaces: int = Field(description='The rotated token.')
    replaces_until: Time = Field(description='When the rotated token stops working.')


class TokenRevoked(View):
    id: int
    revoked_at: Time | None


class AuditEntryView(View):
    seq: int
    at: AuditTime
    actor: str
    role: str
    action: str
    target_type: str
    target_id: str
    before: Any
    after: Any
    prev_hash: str
    hash: str


class AuditList(View):
    entries: list[AuditEntryView]


class AuditVerification(View):
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list[str]
    checkpoint_seq: int | None = None
    checkpoint_hash: str | None = None
