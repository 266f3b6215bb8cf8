# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's overlay peers kept current on its other nodes (networks.announce, the network job),
with the stand-in playbooks of test_fleet (which record the plan each node got)."""

from __future__ import annotations

from sqlalchemy import select

from gpuaas_control import audit, service
from gpuaas_control.models import Allocation, AuditEntry, OutboxJob, TenantNetwork
from gpuaas_control.worker import Worker
from tests.controlplane.helpers import OPERATOR, tenant
from tests.controlplane.test_fleet import _recover, _reserve, nodes, project, settings  # noqa: F401 (fixtures) pylint: disable=unused-import


def _network_runs(project):
    log = project.state_dir / 'runs.log'
    return [line.split()[1:] for line in log.read_text().splitlines() if line.startswith('network ')] \
        if log.exists() else []


def _jobs(db, kind='network'):
    with db.read() as session:
        return [(job.allocation_id, job.status) for job in session.execute(
            select(OutboxJob).where(OutboxJob.kind == kind).order_by(OutboxJob.id)).scalars()]


def _audit(db, action):
    with db.read() as session:
        return [entry.after for entry in session.execute(select(AuditEntry).where(
            AuditEntry.action == action).order_by(AuditEntry.seq)).scalars()]


def _underlays(db):
    db.transact(service.set_underlay, OPERATOR, 'n1', '192.0.2.11')
    db.transact(service.set_underlay, OPERATOR, 'n2', '192.0.2.12')


def _vni(db):
    with db.read() as session:
        return session.get(TenantNetwork, 'acme').vni


def test_the_tenants_other_node_learns_a_node_that_joins_and_one_that_leaves(db, settings, project, nodes):
    _underlays(db)
    first = _reserve(db, node_id='n1')
    worker = Worker(db, settings)
    worker.drain()
    assert _jobs(db) == []     # one node: nobody to tell
    second = _reserve(db, node_id='n2')
    # n1 holds the tenant already: it gets a network job, carried by its allocation there.
    assert _jobs(db) == [(first.id, 'pending')]
    assert _audit(db, 'tenant_network.nodes')[-1] == {'node_id': 'n2', 'change': 'joined', 'nodes': ['n1', 'n2'],
                                                      'told': ['n1']}
    worker.drain()
    assert _network_runs(project) == [['n1', 'acme', str(_vni(db)), 'n2']]
    assert _audit(db, 'tenant_network.peers')[-1] == {'node_id': 'n1', 'vni': _vni(db), 'peers': ['n2'],
                                                      'slots': [], 'leases_updated': []}
    # A second allocation on n2 changes no set of nodes: nobody is told.
    third = _reserve(db, node_id='n2')
    assert len(_jobs(db)) == 1
    # n2's last allocation ends: n1 learns it has no peer left (and not before).
    db.transact(service.request_release, tenant('acme'), second.id)
    worker.drain()
    assert len(_jobs(db)) == 1
    db.transact(service.request_release, tenant('acme'), third.id)
    worker.drain()
    assert _jobs(db) == [(first.id, 'done'), (first.id, 'done')]
    assert _network_runs(project)[-1] == ['n1', 'acme', str(_vni(db))]
    assert _audit(db, 'tenant_network.nodes')[-1]['change'] == 'left'
    with db.read() as session:
        assert audit.verify(session).ok


def test_a_new_underlay_address_is_told_to_the_tenants_other_nodes(db, settings, project, nodes):
    _underlays(db)
    first, _second = _reserve(db, node_id='n1'), _reserve(db, node_id='n2')
    worker = Worker(db, settings)
    worker.drain()
    db.transact(service.set_underlay, OPERATOR, 'n2', '192.0.2.22')
    assert _jobs(db)[-1] == (first.id, 'pending')
    worker.drain()
    assert _audit(db, 'tenant_network.nodes')[-1]['change'] == 'underlay'
    assert _jobs(db)[-1] == (first.id, 'done')


def test_one_pending_job_per_node_and_it_moves_to_another_carrier_or_is_cancelled(db, settings, project, nodes):
    _underlays(db)
    first, second = _reserve(db, node_id='n1'), _reserve(db, node_id='n1')
    worker = Worker(db, settings)
    worker.drain()
    third = _reserve(db, node_id='n2')
    db.transact(service.set_underlay, OPERATOR, 'n2', '192.0.2.22')
    assert _jobs(db) == [(first.id, 'pending')]     # one pending job for n1 covers both changes
    # Its carrier ends before it runs: the job runs for the tenant's other allocation on n1.
    with db.write() as session:
        session.get(Allocation, first.id).state = 'released'
    worker.drain()
    assert _jobs(db) == [(second.id, 'done')]
    # No allocation of the tenant left on n1: a job for it is cancelled, nothing runs.
    with db.write() as session:
        session.get(Allocation, second.id).state = 'released'
        job = session.execute(select(OutboxJob).where(OutboxJob.kind == 'network')).scalar_one()
        job.status = 'pending'
    runs = len(_network_runs(project))
    worker.drain()
    assert _jobs(db) == [(second.id, 'cancelled')] and len(_network_runs(project)) == runs
    assert third.node_id == 'n2'


def test_a_node_that_does_not_answer_gets_the_plan_when_it_does(db, settings, project, nodes):
    _underlays(db)
    first = _reserve(db, node_id='n1')
    worker = Worker(db, settings)
    worker.drain()
    project.set_modes(n1='down')
    _reserve(db, node_id='n2')
    worker.drain()
    assert _jobs(db) == [(first.id, 'pending')] and _network_runs(project) == []
    _recover(db, worker, project, 'n1', n1='ok')
    assert _jobs(db) == [(first.id, 'done')] and _network_runs(project)[0][:2] == ['n1', 'acme']
