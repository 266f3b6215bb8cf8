# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reservation under load: POST /v1/allocations, closed loop, open loop, and at scale.

    python bench/bench_reservation.py [--requests N] [--clients C] [--rate R] [--seconds S]
                                      [--scale SLOTS] [--workers W] [--backends sqlite,postgresql]

For each backend and each table size: a fresh database (a SQLite file; a private PostgreSQL
cluster started and stopped here, as the tests do), migrated, with approved slots (the
sample 8-GPU host's real discovery result under 8-slot node ids, through the service's own
discovery and approval path, 50 nodes per transaction) and 20 tenant tokens; then `gpuaas
serve` (a real uvicorn with W worker processes) on 127.0.0.1, and two loads on it:

* closed loop: C clients (asyncio streams, one keep-alive connection each) sending N
  requests in all, each client its next one when the last is answered: the throughput the
  server sustains (its latency is C / throughput, by Little's law);
* open loop: R requests per second for S seconds on a fixed schedule, latency measured from
  each request's scheduled send time, so queueing behind a slow answer is counted
  (no coordinated omission).

The tables: one holding what a run reserves (N + R*S slots, 2,000 by default) and one of
--scale slots (10,000 on 1,250 nodes by default). (The issue compares the scale run with
"64-slot figures"; 64 slots cannot take 1,000 reservations, so the small table is the
smallest that does.) Every request fits, so each is the whole transaction: tenant lock and
quota, slot choice and conditional UPDATE, allocation, outbox, usage, event and audit rows.

Reports throughput and p50/p90/p99/max latency per backend, table and load, and checks that
the slot table is consistent afterwards (as many reserved slots as active allocations, none
twice). Bounded: it stops by itself (about 3 minutes on 2 cores). No target: it reports.

Figures (2 uvicorn workers on this 2-core machine, shared with other jobs: +-30% between
runs). Before/after: the same load period, main at 31706b6 (uvicorn on h11/asyncio) then
this code (uvloop, httptools):

    req/s, closed loop 200 clients    SQLite 2,000 / 10,000 slots   PostgreSQL 2,000 / 10,000
    before                            33 / 21                        62 / 51
    after                             168 / 197                      184 / 166
    p99 ms, open loop 100/s           SQLite                         PostgreSQL
    before (server saturated)         22,837 / 27,597                13,690 / 19,856
    after                             619 / 210                      59 / 117

Final run (06:02 UTC, quieter): closed loop SQLite 212 / 196 req/s, PostgreSQL 135 / 205;
open loop p99 SQLite 52 / 302 ms, PostgreSQL 106 / 42 ms (p50 7 to 17 ms). The 10,000-slot
figures are within the run-to-run noise of the 2,000-slot ones. Where a request's server
CPU goes and what stands in the way of 500 requests/s: docs/api-guide.md#benchmark.
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
# This checkout's control plane, here and in the server (the venv may hold another one).
CONTROLPLANE = os.path.join(os.path.dirname(HERE), 'controlplane', 'src')
sys.path[:0] = [os.path.dirname(HERE), CONTROLPLANE]
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


def populate(url, slots, workdir, batch=50):
    """Migrate; approve ceil(slots / 8) copies of the sample host; create tenant tokens.

    Through the service's own path (record_discovery, then approve, each audited), the first
    node from a real discovery of the sample host and the others renamed copies of it, 50
    nodes per transaction: 10,000 slots on 1,250 nodes take about 10 s on SQLite."""
    # The audit checkpoint here, for this process and the server it starts (not the
    # PostgreSQL default under /var/lib/gpuaas): anchored from the first entry on.
    os.environ['GPUAAS_AUDIT_CHECKPOINT'] = os.path.join(workdir, 'audit-head.json')
    db = Database(url, audit_checkpoint=os.environ['GPUAAS_AUDIT_CHECKPOINT'])
    migrate.upgrade(db)
    sysfs, proc = hosts.HOSTS['hgx'](os.path.join(workdir, 'hgx'))
    template = Discovery('bench-node-0000', sysfs, proc).run()

    def add_nodes(session, node_ids):
        for node_id in node_ids:
            discovery = _renamed(template, node_id)
            service.record_discovery(session, OPERATOR, node_id, discovery)
            service.approve(session, OPERATOR, node_id, approved_map(discovery))

    node_ids = ['bench-node-%04d' % index for index in range((slots + 7) // 8)]
    for start in range(0, len(node_ids), batch):
        db.transact(add_nodes, node_ids[start:start + batch])
    tokens = [db.transact(service.create_token, OPERATOR, 'tenant', 'tenant%02d' % i)[0]
              for i in range(TENANTS)]
    if db.is_postgres:
        # The planner's statistics, as autovacuum would have them on a running server
        # (without them it guesses, and scans the nodes table for the drained ones).
        with db.engine.begin() as connection:
            connection.exec_driver_sql('ANALYZE')
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
        env = dict(os.environ, GPUAAS_DB_URL=url, PYTHONPATH=os.pathsep.join(
            filter(None, [CONTROLPLANE, os.environ.get('PYTHONPATH')])))
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

    async def post_counted(self, body, statuses):
        """POST; count the status (or the error, after which the connection is reopened)."""
        try:
            status = await self.post(body)
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            status = type(exc).__name__
            await self.close()
        statuses[status] = statuses.get(status, 0) + 1
        return status

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def closed_loop(port, tokens, requests, clients, deadline_s):
    """C clients, each sending its next request when the last one is answered; latency from
    send to answer. Throughput is what the server sustains; latency hides queueing (a slow
    answer delays the requests behind it, which are then not sent, not counted late)."""
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
                await connection.post_counted(body, statuses)
                latencies.append(time.perf_counter() - started)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return time.perf_counter() - started, latencies, statuses


async def open_loop(port, tokens, rate, seconds, max_connections=400):
    """Requests sent on a fixed schedule, one every 1/rate s for ``seconds``, whatever the
    answers do; each one's latency is measured from its scheduled send time, so time spent
    queueing (for the server, or for a connection here) is counted (no coordinated
    omission). A request goes out on an idle keep-alive connection, or a new one (at most
    ``max_connections``; past that it waits for one, and that wait counts too)."""
    latencies, statuses = [], {}
    body = json.dumps(BODY).encode()
    idle = asyncio.Queue()
    opened = [0]
    loop = asyncio.get_running_loop()

    async def one(index, scheduled):
        if idle.empty() and opened[0] < max_connections:
            opened[0] += 1
            connection = Connection(port, tokens[opened[0] % len(tokens)])
        else:
            connection = await idle.get()
        await connection.post_counted(body, statuses)
        latencies.append(loop.time() - scheduled)
        idle.put_nowait(connection)

    count = int(rate * seconds)
    started = loop.time() + 0.1
    tasks = []
    for index in range(count):
        scheduled = started + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index, scheduled)))
    done, pending = await asyncio.wait(tasks, timeout=60)
    for task in pending:
        task.cancel()
    statuses['unanswered'] = len(pending)
    while not idle.empty():
        await idle.get_nowait().close()
    return loop.time() - started, latencies, {k: v for k, v in statuses.items() if v}


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


def run_table(backend, slots, args):
    """A fresh database with ``slots`` approved slots, one server on it, the closed loop
    then the open loop; rows of results, the slot table checked at the end."""
    workdir = tempfile.mkdtemp(prefix='gpuaas-bench-')
    cluster = None
    try:
        if backend == 'sqlite':
            url = 'sqlite:///%s' % os.path.join(workdir, 'gpuaas.db')
        else:
            cluster = pgmod.PostgresCluster(max_connections=400).start()
            url = cluster.create_database('bench')
        setup_started = time.monotonic()
        tokens = populate(url, slots, workdir)
        setup = time.monotonic() - setup_started
        server = Server(url, args.workers)
        rows = []
        try:
            elapsed, latencies, statuses = asyncio.run(
                closed_loop(server.port, tokens, args.requests, args.clients, args.deadline))
            rows.append(('closed %d' % args.clients, elapsed, latencies, statuses))
            if args.rate > 0:
                elapsed, latencies, statuses = asyncio.run(
                    open_loop(server.port, tokens, args.rate, args.seconds))
                rows.append(('open %g/s' % args.rate, elapsed, latencies, statuses))
        finally:
            server.stop()
        ok, allocations = consistent(url)
        return [{'backend': backend, 'slots': (slots + 7) // 8 * 8, 'setup': setup, 'mode': mode,
                 'elapsed': elapsed, 'latencies': latencies, 'statuses': statuses,
                 'consistent': ok, 'allocations': allocations}
                for mode, elapsed, latencies, statuses in rows]
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--requests', type=int, default=1000, help='closed loop: requests in all')
    parser.add_argument('--clients', type=int, default=200, help='closed loop: concurrent clients')
    parser.add_argument('--rate', type=float, default=100.0,
                        help='open loop: offered requests per second (0: no open loop)')
    parser.add_argument('--seconds', type=float, default=10.0, help='open loop: how long')
    parser.add_argument('--scale', type=int, default=10000,
                        help='also run on a table of this many approved slots (0: no scale run)')
    parser.add_argument('--workers', type=int, default=2, help='uvicorn worker processes')
    parser.add_argument('--backends', default='sqlite,postgresql')
    parser.add_argument('--deadline', type=float, default=45.0,
                        help='closed loop: stop sending after this many seconds')
    args = parser.parse_args(argv)
    # The small table holds what one run reserves; the scale run's holds --scale slots.
    small = args.requests + int(args.rate * args.seconds)
    tables = [small] + ([max(args.scale, small)] if args.scale else [])
    print('reservation benchmark: POST /v1/allocations; closed loop %d requests from %d clients, '
          'open loop %g/s for %g s; tables of %s approved slots; %d uvicorn workers, %d CPUs'
          % (args.requests, args.clients, args.rate, args.seconds,
             ' and '.join('%d' % ((n + 7) // 8 * 8) for n in tables), args.workers, os.cpu_count()))
    results = []
    for backend in args.backends.split(','):
        for slots in tables:
            try:
                results.extend(run_table(backend.strip(), slots, args))
            except pgmod.PostgresMissing as exc:
                print('%s: skipped: %s' % (backend, exc))
                break
    print()
    print('%-10s %6s %-11s %8s %8s %8s %8s %8s %8s  %s' % (
        'backend', 'slots', 'load', 'requests', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms',
        'statuses / check'))
    for r in results:
        lat = [x * 1000 for x in r['latencies']]
        if not lat:
            print('%-10s %6d %-11s no requests completed' % (r['backend'], r['slots'], r['mode']))
            continue
        print('%-10s %6d %-11s %8d %8.1f %8.1f %8.1f %8.1f %8.1f  %s; %d allocations, slot table %s'
              % (r['backend'], r['slots'], r['mode'], len(lat), len(lat) / r['elapsed'],
                 statistics.median(lat), percentile(lat, 0.90), percentile(lat, 0.99), max(lat),
                 ' '.join('%s:%d' % kv for kv in sorted(r['statuses'].items(), key=str)),
                 r['allocations'], 'consistent' if r['consistent'] else 'INCONSISTENT'))
    return 0 if all(r['consistent'] for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
