# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The serial console of an allocation's VM: the newest part of its log (at most 64 KiB).

The control plane never reads a node's files itself, and a tenant's read must not start a
playbook run (a tenant polling the console every second, times every tenant, would be a storm
of them). So the API answers from the copy last read from the node
(``allocation_console``) and, when that copy is older than ``console_max_age`` seconds,
records that the tenant asked (``requested_at``). The worker's console loop looks for such
requests every ``console_poll_interval`` seconds and runs the read-only playbook
``playbooks/console.yml`` (``gpuaas.slice.slot_console_info``) once per node for all of that
node's requested allocations; the node reads each slot's log only for the allocation its lease
names. A tenant polling the API therefore sees a log at most about max_age + poll interval +
one playbook run old, and a node gets at most one read per poll interval however many ask.
What the node returns is checked like any input before it is kept."""

from __future__ import annotations

import datetime as dt
import logging
import math

from sqlalchemy import or_, select

from gpuaas_control import runs, service
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import (
    PROVISIONING,
    REBOOTING,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    Allocation,
    AllocationConsole,
    Node,
    utcnow,
)
from gpuaas_control.runs import short

log = logging.getLogger('gpuaas_control.console')

MAX_TEXT = 64 * 1024           # characters: the node reads at most 64 KiB of bytes
MAX_SIZE = 2 ** 62
# The states in which the VM exists on its node (its console can be read).
READABLE = (PROVISIONING, RUNNING, STOPPING, STOPPED, STARTING, REBOOTING)


class BadConsole(ValueError):
    """What a node returned for an allocation's console cannot be kept; the message says why."""


def get(session, actor, allocation_id: str, max_age: float, now=None):
    """(the allocation, its console row or None, whether a fresh read was asked for). Asks the
    worker for a fresh read when the copy is older than ``max_age`` seconds (writes)."""
    now = now or utcnow()
    allocation = service.get_allocation(session, actor, allocation_id)
    row = session.get(AllocationConsole, allocation.id, with_for_update=True)
    if allocation.state not in READABLE:
        return allocation, row, False
    stale = row is None or row.collected_at is None or now - row.collected_at > dt.timedelta(seconds=max_age)
    if stale:
        if row is None:
            row = AllocationConsole(allocation_id=allocation.id, requested_at=now)
            session.add(row)
        elif row.collected_at is not None and row.requested_at <= row.collected_at:
            row.requested_at = now    # (a request still waiting keeps its place)
    return allocation, row, stale


def check_entry(allocation_id: str, entry) -> dict:
    """The node's entry for one slot as the row's values, or BadConsole saying why."""
    if not isinstance(entry, dict):
        raise BadConsole('the entry is not an object')
    if entry.get('missing') is True:
        return {'text': None, 'size': None, 'truncated': None, 'modified_at': None, 'error': None}
    if 'error' in entry:
        raise BadConsole('the node could not read the console: %s' % short(entry['error'], 500))
    if entry.get('allocation_id') != allocation_id:
        raise BadConsole('the entry names allocation %s' % short(repr(entry.get('allocation_id')), 80))
    text, size, truncated, modified = entry.get('text'), entry.get('size'), entry.get('truncated'), entry.get('modified_at')
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise BadConsole('text is not a string of at most %d characters' % MAX_TEXT)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise BadConsole('size %s is not a byte count' % short(repr(size), 80))
    if not isinstance(truncated, bool):
        raise BadConsole('truncated is not true or false')
    if isinstance(modified, bool) or not isinstance(modified, (int, float)) or not math.isfinite(modified) \
            or not 946684800 <= modified <= 4102444800:
        raise BadConsole('modified_at %s is not a time' % short(repr(modified), 80))
    return {'text': text.replace('\x00', ''), 'size': size, 'truncated': truncated,
            'modified_at': dt.datetime.fromtimestamp(modified, dt.timezone.utc), 'error': None}


def record(session, node_id: str, asked: dict, consoles, now=None) -> dict:
    """Keep what the node returned for ``asked`` ({slot id: allocation id}); counts."""
    now = now or utcnow()
    counts = {'recorded': 0, 'refused': 0}
    consoles = consoles if isinstance(consoles, dict) else {}
    for slot_id, allocation_id in asked.items():
        allocation = session.get(Allocation, allocation_id)
        row = session.get(AllocationConsole, allocation_id, with_for_update=True)
        if allocation is None or allocation.node_id != node_id or row is None:
            continue
        row.collected_at = now
        try:
            values = check_entry(allocation_id, consoles.get(slot_id))
        except BadConsole as exc:
            row.error = short(str(exc), 1000)
            counts['refused'] += 1
            log.warning('console of %s on %s not kept: %s', allocation_id, node_id, exc)
            continue
        for key, value in values.items():
            setattr(row, key, value)
        counts['recorded'] += 1
    return counts


def requested_by_node(session) -> dict:
    """{node: {slot id: allocation id}} of the consoles asked for since they were last read."""
    query = (select(Allocation.node_id, Allocation.slot_id, Allocation.id)
             .join(AllocationConsole, AllocationConsole.allocation_id == Allocation.id)
             .join(Node, Node.id == Allocation.node_id)
             .where(Allocation.state.in_(READABLE), Node.unreachable_since.is_(None),
                    or_(AllocationConsole.collected_at.is_(None),
                        AllocationConsole.requested_at > AllocationConsole.collected_at))
             .order_by(Allocation.node_id, Allocation.slot_id))
    nodes = {}
    for node, slot_id, allocation_id in session.execute(query):
        nodes.setdefault(node, {})[slot_id] = allocation_id
    return nodes


def run_playbook(settings: Settings, node_id: str, asked: dict):
    """The console playbook on one node: (its gpuaas_result, None) or (None, why not)."""
    slots = [{'slot_id': slot_id, 'allocation_id': allocation_id} for slot_id, allocation_id in sorted(asked.items())]
    return runs.node_result(settings, 'console', settings.console_playbook, node_id,
                            {'gpuaas_console_slots': slots}, settings.console_timeout)


def collect(db: Database, settings: Settings) -> dict:
    """Read every requested console, one playbook run per node: {node: counts or error}."""
    with db.read() as session:
        nodes = requested_by_node(session)
    report = {}
    for node, asked in nodes.items():
        result, error = run_playbook(settings, node, asked)
        if error:
            log.warning('consoles of node %s not read: %s', node, error)
            report[node] = {'error': error}
            db.transact(record, node, asked, {slot: {'error': error} for slot in asked})
            continue
        report[node] = db.transact(record, node, asked, result.get('console'))
    return report
