# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage records for billing: allocated and running GPU-seconds, clipped to a window."""

from __future__ import annotations

import datetime as dt

from gpuaas_control import service
from gpuaas_control.models import UsageRecord
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import add_node, add_tenant, request, tenant

T0 = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)).replace(microsecond=0)


def _at(hours):
    return T0 + dt.timedelta(hours=hours)


def test_allocated_and_running_seconds_in_a_window(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    add_tenant(db, 'globex')
    ids = [db.transact(service.reserve, tenant(name), request())[0].id
           for name in ('acme', 'acme', 'globex')]
    with db.write() as session:
        records = {r.allocation_id: r for r in session.query(UsageRecord)}
        # Allocated 0h-10h, running 1h-9h; allocated 5h-, running 6h- (still open);
        # globex 2h-3h, never ran.
        for allocation_id, values in zip(ids, [
                (_at(0), _at(10), _at(1), _at(9)), (_at(5), None, _at(6), None),
                (_at(2), _at(3), None, None)]):
            record = records[allocation_id]
            (record.allocated_start, record.allocated_end, record.running_start,
             record.running_end) = values
    with db.read() as session:
        window = service.usage(session, 'acme', since=_at(4), until=_at(8))
        everything = service.usage(session)
        late = service.usage(session, since=_at(11), until=_at(12))
    assert [(r['allocation_id'], r['allocated_seconds'], r['running_seconds']) for r in window] == [
        (ids[0], 4 * 3600.0, 4 * 3600.0), (ids[1], 3 * 3600.0, 2 * 3600.0)]
    by_id = {r['allocation_id']: r for r in everything}
    assert by_id[ids[0]]['allocated_seconds'] == 10 * 3600.0
    assert by_id[ids[0]]['running_seconds'] == 8 * 3600.0
    assert by_id[ids[2]]['running_seconds'] == 0.0 and by_id[ids[2]]['tenant'] == 'globex'
    # The open allocation counts up to now.
    assert by_id[ids[1]]['allocated_seconds'] > 20 * 24 * 3600
    assert [r['allocation_id'] for r in late] == [ids[1]]
