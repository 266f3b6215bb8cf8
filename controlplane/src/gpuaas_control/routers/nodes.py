# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nodes (operators): discovery, approval, drain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from gpuaas_control import service
from gpuaas_control.deps import DB, Operator, OperatorView, ReadSession
from gpuaas_control.models import SLOT_FREE, Node, Slot
from gpuaas_control.schemas.bodies import ApprovalIn, DrainIn, UnderlayIn
from gpuaas_control.schemas.fleet import ApprovalResult, NodeDetail, NodeList, NodeSummary, NodeView
from gpuaas_control.schemas.params import Key

router = APIRouter(prefix='/v1/nodes', tags=['operators'])


def _slot_counts(session, *where):
    return dict(session.execute(select(Slot.node_id, func.count()).where(
        Slot.approved.is_(True), *where).group_by(Slot.node_id)).all())


@router.get('', response_model=NodeList)
def list_nodes(_who: OperatorView, session: ReadSession):
    nodes = session.execute(select(Node).order_by(Node.id)).scalars().all()
    approved = _slot_counts(session)
    free = _slot_counts(session, Slot.state == SLOT_FREE, Slot.absent_reason.is_(None))
    return NodeList(nodes=[NodeSummary.of(n, approved.get(n.id, 0), free.get(n.id, 0))
                           for n in nodes])


@router.get('/{node_id}', response_model=NodeDetail)
def get_node(node_id: Key, _who: OperatorView, session: ReadSession):
    node = service.get_node(session, node_id)
    slots = session.execute(select(Slot).where(Slot.node_id == node.id)
                            .order_by(Slot.slot_index)).scalars().all()
    return NodeDetail.of(node, slots)


@router.put('/{node_id}/discovery', response_model=NodeView)
def put_discovery(node_id: Key, discovery: dict[str, Any], who: Operator, db: DB):
    """Store the node's discovery result (what gpuaas.slice.slot_discovery_info returned);
    registers the node the first time."""
    return db.transact(service.record_discovery, who, node_id, discovery)


@router.put('/{node_id}/approval', response_model=ApprovalResult)
def put_approval(node_id: Key, body: ApprovalIn, who: Operator, db: DB):
    """Apply an approved slot map, all or nothing, by the collection's rules."""
    return ApprovalResult(node_id=node_id,
                          slots=db.transact(service.approve, who, node_id, body.approved_slots))


@router.post('/{node_id}/drain', response_model=NodeView)
def drain(node_id: Key, who: Operator, db: DB, body: DrainIn | None = None):
    """Stop scheduling on the node; its allocations keep running."""
    return db.transact(service.set_drain, who, node_id, True, body.reason if body else None)


@router.post('/{node_id}/undrain', response_model=NodeView)
def undrain(node_id: Key, who: Operator, db: DB):
    return db.transact(service.set_drain, who, node_id, False)


@router.put('/{node_id}/underlay', response_model=NodeView)
def put_underlay(node_id: Key, body: UnderlayIn, who: Operator, db: DB):
    """Set the node's underlay address: the other nodes' overlay tunnels to it end there."""
    return db.transact(service.set_underlay, who, node_id, body.underlay_ip)
