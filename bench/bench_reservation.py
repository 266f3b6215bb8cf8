# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reservation under load: POST /v1/allocations from many concurrent clients.

    python bench/bench_reservation.py [--requests N] [--clients C] [--workers W]
                                      [--backends sqlite,postgresql]

For each backend: a fresh database (a SQLite file; a private PostgreSQL cluster started and
stopped here, as the tests do), migrated, with N approved slots (the sample 8-GPU host's
real discovery result under N/8 node ids) and 20 tenant tokens; then `gpuaas serve` (a real
uvicorn with W worker processes) on 127.0.0.1, and C clients (asyncio streams, one
connection each, HTTP/1.1 keep-alive) sending N reservation requests in all. Every request fits, so each is the
whole transaction: tenant lock and quota count, slot choice and conditional UPDATE,
allocation, outbox, usage, event and audit rows.

Reports throughput and p50/p90/p99/max latency per backend, and checks that the slot table
is consistent afterwards (as many reserved slots as active allocations, none twice). A
bounded number of requests: it stops by itself (under two minutes on 2 cores). No target:
it reports.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tests.conftest  # noqa: E402,F401  (puts the collection on sys.path)
import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from ansible_collections.gpuaas.slice.plugins.module_utils._discovery import Discovery  # noqa: E402
from gpuaas_control import audit, migrate, service  # noqa: E402
from gpuaas_control.db import Database  # noqa: E402
from gpuaas_control.models import Allocation, Slot  # noqa: E402
from tests.controlplane import pg as pgmod  # noqa: E402
from tests.controlplane.conftest import approved_map  # noqa: E402
from tests.controlplane.helpers import ssh_key  # noqa: E402
from tests.sysfs import hosts  # noqa: E402

GPUAAS = os.path.join(os.path.dirname(sys.executable), 'gpuaas')
OPERATOR = audit.Actor('bench', 'operator')
TENANTS = 20
BODY = {'image': 'debian-12.qcow2', 'image_checksum': 'sha256:' + 'ab' * 32,
        'ssh_keys': [ssh_key()], 'vcpus': 8, 'memory_mib': 65536}


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def populate(url, slots, workdir):
    """Migrate; approve ceil(slots / 8) copies of the sample host; create tenant tokens."""
    db = Database(url)
    migrate.upgrade(db)
    sysfs, proc = hosts.HOSTS['hgx'](os.path.join(workdir, 'hgx'))
    template = Discovery('bench-node-0000', sysfs, proc).run()
    for index in range((slots + 7) // 8):
        node_id = 'bench-node-%04d' % index
        discovery = Discovery(node_id, sysfs, proc).run() if index == 0 else _renamed(template, node_id)
        db.transact(service.record_discovery, OPERATOR, node_id, discovery)
        db.transact(service.approve, OPERATOR, node_id, approved_map(discovery))
    tokens = [db.transact(service.create_token, OPERATOR, 'tenant', 'tenant%02d' % i)[0]
              for i in range(TENANTS)]
    db.dispose()
    return tokens


def _renamed(discovery, node_id):
    import copy
    from gpuaas_control.collection import contract
    result = copy.deepcopy(discovery)
    result['node_id'] = node_id
    for slot in result['slots']:
        identity = contract.Slot(node_id, slot['slot_index'])
        slot['slot_id'], slot['mac'] = identity.slot_id, identity.mac
    return result


class Server:
    def __init__(self, url, workers):
        self.port = _free_port()
        self.base = 'http://127.0.0.1:%d' % self.port
        env = dict(os.environ, GPUAAS_DB_URL=url)
        self.proc = subprocess.Popen([GPUAAS, 'serve', '--port', str(self.port), '--workers',
                                      str(workers), '--no-access-log', '--log-level', 'warning'],
                                     env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base + '/healthz', timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit('gpuaas serve did not start')
            time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams. httpx costs ~10 ms of CPU per
    request with 200 clients in one process, which on a small machine would measure the
    load generator rather than the server; this costs a fraction of a millisecond."""

    def __init__(self, port, token):
        self.port = port
        self.head = ('POST /v1/allocations HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n'
                     'Authorization: Bearer %s\r\nContent-Type: application/json\r\n'
                     'Content-Length: %%d\r\n\r\n' % (port, token))
        self.reader = self.writer = None

    async def post(self, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection('127.0.0.1', self.port)
        self.writer.write((self.head % len(body)).encode('ascii') + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError('the server closed the connection')
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b'\r\n', b''):
                break
            name, _sep, value = line.decode('latin-1').partition(':')
            if name.lower() == 'content-length':
                length = int(value)
            elif name.lower() == 'connection' and value.strip().lower() == 'close':
                close = True
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return int(status_line.split()[1])

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(port, tokens, requests, clients, deadline_s):
    latencies, statuses = [], {}
    remaining = [requests]
    deadline = time.monotonic() + deadline_s
    body = json.dumps(BODY).encode()

    async def client(index):
        connection = Connection(port, tokens[index % len(tokens)])
        try:
            while remaining[0] > 0 and time.monotonic() < deadline:
                remaining[0] -= 1
                started = time.perf_counter()
                try:
                    status = await connection.post(body)
                except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                    status = type(exc).__name__
                    await connection.close()
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return time.perf_counter() - started, latencies, statuses


def consistent(url):
    db = Database(url)
    with db.read() as session:
        active = session.execute(select(Allocation.slot_id).where(
            Allocation.state == 'requested')).scalars().all()
        reserved = session.execute(select(func.count()).select_from(Slot).where(
            Slot.state == 'reserved')).scalar()
    db.dispose()
    return len(active) == len(set(active)) == reserved, len(active)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_backend(backend, args):
    workdir = tempfile.mkdtemp(prefix='gpuaas-bench-')
    cluster = None
    try:
        if backend == 'sqlite':
            url = 'sqlite:///%s' % os.path.join(workdir, 'gpuaas.db')
        else:
            cluster = pgmod.PostgresCluster(max_connections=400).start()
            url = cluster.create_database('bench')
        setup_started = time.monotonic()
        tokens = populate(url, args.requests, workdir)
        setup = time.monotonic() - setup_started
        server = Server(url, args.workers)
        try:
            elapsed, latencies, statuses = asyncio.run(
                load(server.port, tokens, args.requests, args.clients, args.deadline))
        finally:
            server.stop()
        ok, allocations = consistent(url)
        return {'backend': backend, 'setup': setup, 'elapsed': elapsed, 'latencies': latencies,
                'statuses': statuses, 'consistent': ok, 'allocations': allocations}
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--requests', type=int, default=1000)
    parser.add_argument('--clients', type=int, default=200)
    parser.add_argument('--workers', type=int, default=2, help='uvicorn worker processes')
    parser.add_argument('--backends', default='sqlite,postgresql')
    parser.add_argument('--deadline', type=float, default=45.0,
                        help='stop sending after this many seconds per backend')
    args = parser.parse_args(argv)
    print('reservation benchmark: %d x POST /v1/allocations, %d concurrent clients, '
          '%d uvicorn workers, %d CPUs' % (args.requests, args.clients, args.workers, os.cpu_count()))
    results = []
    for backend in args.backends.split(','):
        try:
            results.append(run_backend(backend.strip(), args))
        except pgmod.PostgresMissing as exc:
            print('%s: skipped: %s' % (backend, exc))
    print()
    print('%-10s %8s %9s %8s %8s %8s %8s  %s' % ('backend', 'requests', 'req/s', 'p50 ms',
                                                 'p90 ms', 'p99 ms', 'max ms', 'statuses / check'))
    for r in results:
        lat = [x * 1000 for x in r['latencies']]
        if not lat:
            print('%-10s no requests completed' % r['backend'])
            continue
        print('%-10s %8d %9.1f %8.1f %8.1f %8.1f %8.1f  %s; %d allocations, slot table %s'
              % (r['backend'], len(lat), len(lat) / r['elapsed'], statistics.median(lat),
                 percentile(lat, 0.90), percentile(lat, 0.99), max(lat),
                 ' '.join('%s:%d' % kv for kv in sorted(r['statuses'].items(), key=str)),
                 r['allocations'], 'consistent' if r['consistent'] else 'INCONSISTENT'))
    return 0 if all(r['consistent'] for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
