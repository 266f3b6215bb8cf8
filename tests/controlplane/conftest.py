# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the control plane tests: a database on each backend (a SQLite file, and a
database in a private PostgreSQL cluster started once per session), migrated by the real
Alembic migrations; a real discovery result of the sample 8-GPU host; tokens; the stand-in
project the worker drives (tests/controlplane/fake_node) and the worker's settings."""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import shutil
import socket
import sys
import threading
import time

import pytest
import uvicorn
import yaml

from gpuaas_control import api
from gpuaas_control.config import Settings
from tests.controlplane import pg as pgmod

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ('sqlite', 'postgresql')
_names = itertools.count()


@pytest.fixture(scope='session')
def pg_cluster():
    try:
        cluster = pgmod.PostgresCluster().start()
    except pgmod.PostgresMissing as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope='session')
def pg_template(pg_cluster):
    """A database migrated once; each test gets a copy (CREATE DATABASE ... TEMPLATE)."""
    from gpuaas_control import migrate
    from gpuaas_control.db import Database
    url = pg_cluster.create_database('template_gpuaas')
    db = Database(url)
    migrate.upgrade(db)
    db.dispose()
    return 'template_gpuaas'


@pytest.fixture(scope='session')
def sqlite_template(tmp_path_factory):
    from gpuaas_control import migrate
    from gpuaas_control.db import Database
    path = tmp_path_factory.mktemp('sqlite-template') / 'template.db'
    db = Database('sqlite:///%s' % path)
    migrate.upgrade(db)
    with db.engine.connect() as conn:
        conn.exec_driver_sql('PRAGMA wal_checkpoint(TRUNCATE)')
    db.dispose()
    return path


@pytest.fixture
def db_url(request, tmp_path):
    """A freshly migrated, empty database URL on the backend the test is parametrized with."""
    backend = getattr(request, 'param', 'sqlite')
    if backend == 'sqlite':
        template = request.getfixturevalue('sqlite_template')
        path = tmp_path / 'gpuaas.db'
        shutil.copyfile(template, path)
        return 'sqlite:///%s' % path
    cluster = request.getfixturevalue('pg_cluster')
    template = request.getfixturevalue('pg_template')
    return cluster.create_database('t%d' % next(_names), template=template)


@pytest.fixture
def db(db_url):
    from gpuaas_control.db import Database
    database = Database(db_url, pool_size=20)
    yield database
    database.dispose()


def pytest_generate_tests(metafunc):
    for name in ('db_url', 'fresh_url'):
        if name in metafunc.fixturenames:
            marker = metafunc.definition.get_closest_marker('backends')
            backends = marker.args if marker else BACKENDS
            metafunc.parametrize(name, backends, indirect=True)
            return


def pytest_configure(config):
    config.addinivalue_line('markers', 'backends(*names): the database backends a test runs on')
    # ansible-runner starts ansible-playbook with pexpect (forkpty) from worker threads.
    config.addinivalue_line('filterwarnings',
                            'ignore:This process .* is multi-threaded, use of forkpty:DeprecationWarning')
    # Starlette's TestClient prefers a package (httpx2) this project does not pin.
    config.addinivalue_line('filterwarnings', 'ignore:Using `httpx` with `starlette.testclient`')


@pytest.fixture(scope='session')
def hgx_discovery_factory(tmp_path_factory):
    """``discovery(node_id)``: the real slot_discovery_info result of the sample 8-GPU host."""
    from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery
    from tests.sysfs import hosts
    sysfs, proc = hosts.HOSTS['hgx'](str(tmp_path_factory.mktemp('hgx') / 'hgx'))
    cache = {}

    def discovery(node_id):
        if node_id not in cache:
            cache[node_id] = Discovery(node_id, sysfs, proc).run()
        return copy.deepcopy(cache[node_id])
    return discovery


def approved_map(discovery, policy='nvme-format', only=None):
    """An approved slot map approving every eligible slot (or those of ``only``)."""
    entries = []
    for slot in discovery['slots']:
        if not slot['eligible'] or (only is not None and slot['slot_id'] not in only):
            continue
        entries.append({
            'slot_id': slot['slot_id'],
            'gpu_address': slot['gpu_address'],
            'destructive_wipe_policy': policy,
            'capacity_metadata': dict(slot['capacity_metadata']),
            'approved_by': 'test',
        })
    return entries


@pytest.fixture
def running_allocation(db, hgx_discovery_factory):
    """One running allocation of tenant acme on node n1 (its state set directly, no worker)."""
    from sqlalchemy import update
    from gpuaas_control import service
    from gpuaas_control.models import Allocation
    from tests.controlplane.helpers import add_node, add_tenant, request, tenant
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    db.transact(lambda s: s.execute(update(Allocation).where(Allocation.id == allocation.id).values(state='running')))
    return allocation


# -- the HTTP API ----------------------------------------------------------------------------

@contextlib.contextmanager
def serve_api(db, db_url, **ssl):
    """The API on a free port of 127.0.0.1, served by uvicorn in a thread: yields the port."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.create_app(Settings(db_url=db_url), db), host='127.0.0.1',
                                           port=port, log_level='critical' if ssl else 'warning', **ssl))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), 'uvicorn did not start'
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def api_url(db, db_url):
    with serve_api(db, db_url) as port:
        yield 'http://127.0.0.1:%d' % port


@pytest.fixture
def client(db, db_url):
    from fastapi.testclient import TestClient

    settings = Settings(db_url=db_url, max_body=64 * 1024)
    with TestClient(api.create_app(settings, db)) as test_client:
        yield test_client


@pytest.fixture
def tokens(db):
    from tests.controlplane.helpers import make_token
    return {'operator': make_token(db, 'operator'), 'acme': make_token(db, 'tenant', 'acme'),
            'globex': make_token(db, 'tenant', 'globex')}


@pytest.fixture
def node(client, tokens, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    op = tokens['operator']
    assert client.put('/v1/nodes/n1/discovery', json=discovery, headers=op).status_code == 200
    reply = client.put('/v1/nodes/n1/approval', json={'approved_slots': approved_map(discovery)},
                       headers=op)
    assert reply.status_code == 200, reply.text
    return discovery


def snapshot(db):
    """What a refused request must leave as it was: every table's rows that a request can
    add or change."""
    from sqlalchemy import func, select

    from gpuaas_control.models import (
        Allocation,
        ApiToken,
        AuditEntry,
        Event,
        Node,
        OutboxJob,
        Slot,
        Tenant,
    )
    with db.read() as session:
        counts = [session.execute(select(func.count()).select_from(table)).scalar()
                  for table in (Allocation, AuditEntry, Event, OutboxJob)]
        return (counts,
                sorted(session.execute(select(Allocation.id, Allocation.state)).all()),
                sorted(session.execute(select(Slot.id, Slot.state, Slot.approved)).all()),
                sorted(session.execute(select(Node.id, Node.schedulable, Node.drain_reason,
                                              Node.discovered_at)).all()),
                sorted(session.execute(select(Tenant.id, Tenant.max_gpus)).all()),
                sorted(session.execute(select(ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at,
                                              ApiToken.replaced_by)).all()))


def _closed_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class FakeProject:
    """The stand-in project (a copy of fake_node), its inventory and its state directory.

    :meth:`set_modes` gives nodes their mode: ``allocate[/release]`` (the modes fake_node's
    playbooks know), or ``down``: an SSH host at 127.0.0.1 on a port nothing listens on. With
    ``connect``, the playbooks reach every node first (fake_connect), as the real ones do.
    """

    def __init__(self, tmp_path):
        self.dir = str(tmp_path / 'project')
        shutil.copytree(os.path.join(HERE, 'fake_node'), self.dir)
        self.inventory = str(tmp_path / 'inventory.yml')
        self.state_dir = tmp_path / 'state'
        self.state_dir.mkdir()
        self.connect = False
        self.port = _closed_port()
        self.modes = {}

    def set_modes(self, **node_modes):
        self.modes.update(node_modes)
        hosts = {}
        for node, mode in self.modes.items():
            allocate_mode, _sep, release_mode = mode.partition('/')
            hosts[node] = {'fake_mode': allocate_mode, 'fake_release_mode': release_mode or 'ok'}
            if self.connect:
                hosts[node]['fake_connect'] = True
            if mode == 'down':
                hosts[node].update(ansible_connection='ssh', ansible_host='127.0.0.1', ansible_port=self.port,
                                   ansible_user='gpuaas-test', ansible_ssh_common_args=(
                                       '-o ConnectTimeout=5 -o BatchMode=yes -o StrictHostKeyChecking=no '
                                       '-o UserKnownHostsFile=/dev/null'))
        inventory = {'all': {'vars': {'ansible_connection': 'local',
                                      'ansible_python_interpreter': sys.executable,
                                      'fake_state_dir': str(self.state_dir)},
                             'hosts': hosts}}
        with open(self.inventory, 'w') as handle:
            handle.write(yaml.safe_dump(inventory))

    def _log(self, name):
        log = self.state_dir / name
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    def runs(self):
        return [row[:3] for row in self._log('runs.log')]

    def intervals(self):
        """(node, allocation, start, end) of every run in mode slow."""
        return [(node, alloc, float(start), float(end)) for node, alloc, start, end in self._log('intervals.log')]


@pytest.fixture
def project(tmp_path):
    """The stand-in project with node n1 in mode ok."""
    project = FakeProject(tmp_path)
    project.set_modes(n1='ok')
    yield project
    # A cancelled or orphaned run may still sit in its long task (ansible-runner kills
    # ansible-playbook's process group, not the worker process it forked): end it.
    (project.state_dir / 'stop').touch()


def worker_settings(db_url, project, tmp_path, **overrides):
    """Settings of a worker driving ``project``: short leases, retries and polls."""
    return Settings(**dict(dict(db_url=db_url, project_dir=project.dir, inventory=project.inventory,
                                runs_dir=str(tmp_path / 'runs'), job_timeout=90, max_attempts=2,
                                retry_base=0.2, lease_seconds=2.0, poll_interval=0.2), **overrides))


@pytest.fixture
def settings(db_url, project, tmp_path):
    return worker_settings(db_url, project, tmp_path)
