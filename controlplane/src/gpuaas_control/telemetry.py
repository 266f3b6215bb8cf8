# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Allocation telemetry and slot acceptance.

The guest agent posts to its node's telemetry sink, which keeps a summary per allocation
(the last health sample, the acceptance result). The control plane never reads the node's
files: :func:`collect` runs the collection's read-only playbook (``playbooks/telemetry.yml``,
module ``gpuaas.slice.telemetry_info``) through ansible-runner, once per node with running
allocations, and :func:`record` checks what came back and keeps it per allocation
(``allocation_telemetry``). The allocation's tenant and operators read it
(``GET /v1/allocations/{id}/telemetry``). A failed acceptance is reported once: an ``error``
event on the allocation (the names of the failed checks) and an audit entry
``slot.acceptance_failed`` for operators; with ``acceptance_policy=quarantine`` the slot is
also unapproved (``slot.quarantine``), so nothing is scheduled on it until an operator
approves it again. What the node returns is checked like any input: a summary that is not
well formed is not recorded, its reason is kept for operators."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re

from sqlalchemy import select

from gpuaas_control import audit, runs, service
from gpuaas_control.config import Settings
from gpuaas_control.db import Database
from gpuaas_control.models import (
    ACCEPTANCE_FAILED,
    ACCEPTANCE_STATES,
    RUNNING,
    Allocation,
    AllocationTelemetry,
    Node,
    Slot,
    utcnow,
)
from gpuaas_control.runs import short

log = logging.getLogger('gpuaas_control.telemetry')

CHECK_STATES = ('passed', 'failed', 'skipped')
MAX_SAMPLE = 64 * 1024        # the sink's limit on one sample
MAX_CHECKS = 64
MAX_SAMPLES = 10 ** 12
# Times the node reports: seconds since the epoch, 2000-01-01 to 2100-01-01.
EARLIEST, LATEST = 946684800, 4102444800
LINK_SPEED = re.compile(r'[0-9]{1,3}(\.[0-9]{1,2})? GT/s( PCIe)?')


class BadSummary(ValueError):
    """What a node returned for an allocation cannot be recorded; the message says why."""


def _time(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not EARLIEST <= value <= LATEST:
        raise BadSummary('%s %s is not a time (seconds since the epoch, 2000 to 2100)' % (what, _show(value)))
    return dt.datetime.fromtimestamp(value, dt.timezone.utc)


def _show(value):
    return short(json.dumps(value, default=str), 80)


def _sized(value, what):
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadSummary('%s cannot be stored: %s' % (what, exc)) from None
    if size > MAX_SAMPLE:
        raise BadSummary('%s is %d bytes, more than %d' % (what, size, MAX_SAMPLE))
    return value


def approved_facts(slot, discovery) -> dict | None:
    """What the guest agent's acceptance check compares the slot with (the seed writes it to
    /etc/gpuaas/slot.json): the approved GPU model, the link its node's discovery saw (the
    maximum speed and width, what the slot was approved for: an idle GPU may run its link
    slower), and whether the slot has its NVMe and fabric VF. None when the discovery shows no
    link for the GPU; the guest then reports that it has no approved facts to check against."""
    for gpu in (discovery or {}).get('gpus') or []:
        if isinstance(gpu, dict) and gpu.get('address') == slot.gpu_address:
            link = gpu.get('link') if isinstance(gpu.get('link'), dict) else {}
            speed = link.get('max_speed') or link.get('current_speed')
            width = link.get('max_width') or link.get('current_width')
            # Only what slot_seed takes (its LINK_SPEED): an odd value must not fail the allocation.
            if isinstance(speed, str) and LINK_SPEED.fullmatch(speed) and isinstance(width, int) \
                    and not isinstance(width, bool) and 1 <= width <= 32:
                return {'gpu_model': slot.gpu_model, 'link_speed': speed, 'link_width': width,
                        'nvme': slot.nvme_address is not None, 'fabric_vf': slot.fabric_vf_pci_address is not None}
    return None


def check_acceptance(result):
    """The agent's acceptance result, or BadSummary naming the field."""
    if not isinstance(result, dict):
        raise BadSummary('acceptance.result is not an object')
    status, checks = result.get('status'), result.get('checks')
    if status not in ACCEPTANCE_STATES:
        raise BadSummary('acceptance status %s is not one of %s' % (_show(status), ', '.join(ACCEPTANCE_STATES)))
    if not isinstance(checks, list) or not 1 <= len(checks) <= MAX_CHECKS:
        raise BadSummary('acceptance checks must be a list of 1 to %d checks' % MAX_CHECKS)
    for index, check in enumerate(checks):
        if not (isinstance(check, dict) and isinstance(check.get('name'), str)
                and check.get('status') in CHECK_STATES and isinstance(check.get('reason'), str)):
            raise BadSummary('acceptance checks[%d] %s is not {name, status, reason}' % (index, _show(check)))
    failed = [check['name'] for check in checks if check['status'] == 'failed']
    if (status == ACCEPTANCE_FAILED) != bool(failed):
        raise BadSummary('acceptance status %s disagrees with its checks (failed: %s)'
                         % (_show(status), ', '.join(failed) or 'none'))
    return _sized(result, 'the acceptance result')


def check_summary(allocation_id, summary):
    """The sink's summary as the row's values, or BadSummary saying which field and why."""
    if not isinstance(summary, dict):
        raise BadSummary('the summary is not an object')
    if summary.get('allocation_id') != allocation_id:
        raise BadSummary('the summary names allocation %s' % _show(summary.get('allocation_id')))
    samples = summary.get('samples')
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= MAX_SAMPLES:
        raise BadSummary('samples %s is not a count' % _show(samples))
    values = {'samples': samples, 'first_at': _time(summary.get('first_at'), 'first_at'),
              'last_at': _time(summary.get('last_at'), 'last_at'),
              'health': None, 'health_at': None, 'acceptance': None, 'acceptance_at': None,
              'acceptance_status': None}
    health = summary.get('health')
    if health is not None:
        if not isinstance(health, dict) or not isinstance(health.get('sample'), dict):
            raise BadSummary('health is not {received_at, sample}')
        values['health'] = _sized(health['sample'], 'the health sample')
        values['health_at'] = _time(health.get('received_at'), 'health.received_at')
    acceptance = summary.get('acceptance')
    if acceptance is not None:
        if not isinstance(acceptance, dict):
            raise BadSummary('acceptance is not {received_at, result}')
        values['acceptance'] = check_acceptance(acceptance.get('result'))
        values['acceptance_status'] = values['acceptance']['status']
        values['acceptance_at'] = _time(acceptance.get('received_at'), 'acceptance.received_at')
    return values


def record(session, actor: audit.Actor, node_id: str, asked, telemetry, policy: str = 'report', now=None) -> dict:
    """Keep what the node returned for the allocations ``asked``; counts of what happened."""
    now = now or utcnow()
    counts = {'recorded': 0, 'missing': 0, 'refused': 0, 'acceptance_failed': 0}
    telemetry = telemetry if isinstance(telemetry, dict) else {}
    for allocation_id in asked:
        allocation = session.get(Allocation, allocation_id)
        if allocation is None or allocation.node_id != node_id:
            continue
        row = session.get(AllocationTelemetry, allocation_id, with_for_update=True)
        if row is None:
            row = AllocationTelemetry(allocation_id=allocation_id, collected_at=now, samples=0)
            session.add(row)
        row.collected_at = now
        entry = telemetry.get(allocation_id)
        if isinstance(entry, dict) and entry.get('missing') is True:
            row.error = None
            counts['missing'] += 1
            continue
        try:
            if entry is None:
                raise BadSummary('the node returned nothing for this allocation')
            if isinstance(entry, dict) and 'error' in entry:
                raise BadSummary('the node could not read the summary: %s' % short(entry['error'], 500))
            values = check_summary(allocation_id, entry)
        except BadSummary as exc:
            row.error = short(str(exc), 1000)
            counts['refused'] += 1
            log.warning('telemetry of %s on %s not recorded: %s', allocation_id, node_id, exc)
            continue
        newly_failed = (values['acceptance_status'] == ACCEPTANCE_FAILED
                        and row.acceptance_at != values['acceptance_at'])
        for key, value in values.items():
            setattr(row, key, value)
        row.error = None
        counts['recorded'] += 1
        if newly_failed:
            counts['acceptance_failed'] += 1
            _acceptance_failed(session, actor, allocation, values['acceptance'], policy)
    return counts


def _acceptance_failed(session, actor, allocation, result, policy):
    failed = [check for check in result['checks'] if check['status'] == 'failed']
    names = [check['name'] for check in failed]
    service.add_event(session, allocation.id, 'error', 'slot acceptance failed: %s' % ', '.join(names),
                      {'failed': names})
    slot = session.get(Slot, allocation.slot_id, with_for_update=True)
    reasons = {check['name']: short(check['reason'], 300) for check in failed}
    audit.append(session, actor, 'slot.acceptance_failed', 'slot', slot.id, None,
                 {'allocation_id': allocation.id, 'failed': reasons})
    if policy == 'quarantine' and slot.approved:
        before = {'approved': True, 'state_reason': slot.state_reason}
        slot.approved = False
        slot.state_reason = short('quarantined: slot acceptance failed for allocation %s (%s); approve the '
                                  'slot again once it is fixed' % (allocation.id, '; '.join(
                                      '%s: %s' % item for item in reasons.items())), 1000)
        slot.updated_at = utcnow()
        audit.append(session, actor, 'slot.quarantine', 'slot', slot.id, before,
                     {'approved': False, 'state_reason': slot.state_reason})


def get(session, actor: audit.Actor, allocation_id: str):
    """(the allocation, its telemetry row or None) if the actor may see the allocation."""
    allocation = service.get_allocation(session, actor, allocation_id)
    return allocation, session.get(AllocationTelemetry, allocation.id)


# -- collecting ------------------------------------------------------------------------------

def running_by_node(session, node_id: str | None = None) -> dict:
    """{node: [running allocation ids]}, of the nodes that answer (an unreachable node is the
    worker's probe's until it does)."""
    query = (select(Allocation.node_id, Allocation.id).join(Node, Node.id == Allocation.node_id)
             .where(Allocation.state == RUNNING, Node.unreachable_since.is_(None)))
    if node_id:
        query = query.where(Allocation.node_id == node_id)
    nodes = {}
    for node, allocation_id in session.execute(query.order_by(Allocation.node_id, Allocation.id)):
        nodes.setdefault(node, []).append(allocation_id)
    return nodes


def run_playbook(settings: Settings, node_id: str, allocation_ids) -> tuple[dict | None, str | None]:
    """The telemetry playbook on one node: (its gpuaas_result, None) or (None, why not)."""
    return runs.node_result(settings, 'telemetry', settings.telemetry_playbook, node_id,
                            {'gpuaas_allocation_ids': list(allocation_ids)}, settings.telemetry_timeout)


def collect(db: Database, settings: Settings, actor: audit.Actor, node_id: str | None = None) -> dict:
    """Collect every node's (or one node's) running allocations' telemetry: {node: counts or error}."""
    with db.read() as session:
        nodes = running_by_node(session, node_id)
    report = {}
    for node, ids in nodes.items():
        result, error = run_playbook(settings, node, ids)
        if error:
            log.warning('telemetry of node %s not collected: %s', node, error)
            report[node] = {'error': error}
            continue
        report[node] = db.transact(record, actor, node, ids, result.get('telemetry'),
                                   settings.acceptance_policy)
    return report
