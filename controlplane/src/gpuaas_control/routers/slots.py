# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slots (operators): the slot table, the cleanups that keep slots blocked, and the whole fleet
as one inventory."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from gpuaas_control import fleet
from gpuaas_control.deps import DB, Operator, OperatorView, ReadSession
from gpuaas_control.models import SLOT_STATES, Node, Slot
from gpuaas_control.schemas.bodies import MarkCleanIn
from gpuaas_control.schemas.fleet import (BlockedCleanup, BlockedCleanupList, Inventory, InventoryNode,
                                          InventoryNodeState, InventorySlot, InventorySlotState, InventoryStates,
                                          SlotList, SlotView)
from gpuaas_control.schemas.params import Key, NodeFilter

router = APIRouter(tags=['operators'])


@router.get('/v1/slots', response_model=SlotList)
def list_slots(_who: OperatorView, session: ReadSession, node_id: NodeFilter = None,
               state: Annotated[Literal[SLOT_STATES] | None, Query()] = None):
    query = select(Slot).order_by(Slot.node_id, Slot.slot_index)
    if node_id:
        query = query.where(Slot.node_id == node_id)
    if state:
        query = query.where(Slot.state == state)
    return SlotList(slots=session.execute(query).scalars().all())


@router.get('/v1/cleanups', response_model=BlockedCleanupList)
def list_cleanups(_who: OperatorView, session: ReadSession):
    """The slots a cleanup keeps blocked (left on a node that did not answer), with the newest
    cleanup job of each: pending ones run when the node answers, failed ones wait for you."""
    return BlockedCleanupList(cleanups=fleet.blocked_cleanups(session))


@router.post('/v1/cleanups/{slot_id}/retry', response_model=BlockedCleanup)
def retry_cleanup(slot_id: Key, who: Operator, db: DB):
    """Queue the slot's cleanup again, attempts afresh (audited ``slot.cleanup_retry``); 409
    while one is queued or running."""
    return db.transact(fleet.retry_cleanup, who, slot_id)


@router.post('/v1/cleanups/{slot_id}/mark-clean', response_model=SlotView)
def mark_clean(slot_id: Key, body: MarkCleanIn, who: Operator, db: DB):
    """You cleaned the node by hand: the slot is free again, its queued cleanups are cancelled
    (audited ``slot.free`` with the reason); 409 while its cleanup runs."""
    return db.transact(fleet.mark_clean, who, slot_id, body.reason)


def _fleet(session, document, node, slot, include_unapproved):
    """``document`` of every node (as ``node``) and slot (as ``slot``), as JSON.

    Only the columns the models hold, as plain rows: a fleet of 10,000 slots is read without
    loading every node's discovery document or building ORM objects. The document is
    validated once, here, and written as the response (FastAPI would validate it again)."""
    slots = select(*(getattr(Slot, name) for name in slot.model_fields)).order_by(
        Slot.node_id, Slot.slot_index)
    if not include_unapproved:
        slots = slots.where(Slot.approved.is_(True))
    nodes = select(*(getattr(Node, name) for name in node.model_fields if name in Node.__table__.c)
                   ).order_by(Node.id)
    answer = document(nodes=[row._asdict() for row in session.execute(nodes)],
                      slots=[row._asdict() for row in session.execute(slots)])
    return Response(answer.model_dump_json(), media_type='application/json')


@router.get('/v1/inventory', response_model=Inventory)
def inventory(_who: OperatorView, session: ReadSession, include_unapproved: bool = False):
    """Every node and its slots in one answer: what the gpuaas.slice.slots inventory
    plugin reads (slots an approval withdrew only with ``include_unapproved``)."""
    return _fleet(session, Inventory, InventoryNode, InventorySlot, include_unapproved)


@router.get('/v1/inventory/states', response_model=InventoryStates)
def inventory_states(_who: OperatorView, session: ReadSession, include_unapproved: bool = False):
    """Every node's and slot's state, without the approved slot maps and the slots' devices:
    what the inventory plugin reads with ``slot_details: none`` (a fifth of the document)."""
    return _fleet(session, InventoryStates, InventoryNodeState, InventorySlotState, include_unapproved)
