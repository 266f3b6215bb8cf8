# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small builders shared by the control plane tests."""

from __future__ import annotations

import base64
import struct
import time

from sqlalchemy import func, select

from gpuaas_control import audit, service
from gpuaas_control.models import Allocation, Event, OutboxJob, Slot, UsageRecord

OPERATOR = audit.Actor('test-operator', 'operator')


def tenant(name):
    return audit.Actor('test-%s' % name, 'tenant', name)


def ssh_key(kind='ssh-ed25519', comment='alice@example'):
    blob = struct.pack('>I', len(kind)) + kind.encode() + struct.pack('>I', 32) + b'\x01' * 32
    return '%s %s %s' % (kind, base64.b64encode(blob).decode(), comment)


def request(**overrides):
    values = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
              'ssh_keys': [ssh_key()], 'vcpus': 4, 'memory_mib': 8192}
    values.update(overrides)
    return service.AllocationRequest(**values)


def add_node(db, discovery, entries, node_id=None):
    node_id = node_id or discovery['node_id']
    db.transact(service.record_discovery, OPERATOR, node_id, discovery)
    return db.transact(service.approve, OPERATOR, node_id, entries)


def add_tenant(db, name, max_gpus=-1):
    db.transact(service.set_quota, OPERATOR, name, max_gpus)


def make_token(db, role, tenant_name=None):
    token, _row = db.transact(service.create_token, OPERATOR, role, tenant_name)
    return {'Authorization': 'Bearer %s' % token}


def allocation_state(db, allocation_id):
    """(allocation, slot, [(kind, status, attempts) of its jobs], usage record, [event messages])."""
    with db.read() as session:
        allocation = session.get(Allocation, allocation_id)
        slot = session.get(Slot, allocation.slot_id)
        jobs = session.execute(select(OutboxJob).where(OutboxJob.allocation_id == allocation_id)
                               .order_by(OutboxJob.id)).scalars().all()
        usage = session.execute(select(UsageRecord).where(
            UsageRecord.allocation_id == allocation_id)).scalar_one()
        events = [e.message for e in session.execute(select(Event).where(
            Event.allocation_id == allocation_id).order_by(Event.id)).scalars()]
    return allocation, slot, [(j.kind, j.status, j.attempts) for j in jobs], usage, events


def no_leaks(db):
    """Every reserved slot is held by its active allocation and the other way round; no
    job is left pending or running."""
    with db.read() as session:
        active = {a.slot_id: a.id for a in session.execute(select(Allocation).where(
            Allocation.state.in_(('requested', 'provisioning', 'running', 'releasing')))).scalars()}
        reserved = {s.id: s.allocation_id for s in session.execute(
            select(Slot).where(Slot.state == 'reserved')).scalars()}
        unfinished = session.execute(select(func.count()).select_from(OutboxJob).where(
            OutboxJob.status.in_(('pending', 'running')))).scalar()
    assert active == reserved
    assert unfinished == 0


def wait_for(predicate, timeout=60.0, what='condition'):
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('timed out waiting for %s' % what)
