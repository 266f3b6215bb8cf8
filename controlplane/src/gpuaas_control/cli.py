# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuaas``: run the control plane and drive it.

Service commands work on the database (``--db`` / ``GPUAAS_DB_URL``): ``db``, ``serve``,
``worker``, ``token`` and ``audit verify``. Everything else is a client of the HTTP API
(``--api`` / ``GPUAAS_API``, ``--token`` / ``GPUAAS_TOKEN``), so it is audited under the
token that did it and works from anywhere the API is reachable.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import sys
import time

DEFAULT_API = 'http://127.0.0.1:8000'


class CliError(Exception):
    """Print this and exit 1."""


# -- output --------------------------------------------------------------------------------

def table(rows, columns, out=None):
    """A plain fixed-width table: ``columns`` is [(key, heading), ...]."""
    out = out or sys.stdout
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(heading)] + [len(c[i]) for c in cells]) for i, (_, heading) in enumerate(columns)]
    out.write('  '.join(h.upper().ljust(w) for (_, h), w in zip(columns, widths)).rstrip() + '\n')
    for row in cells:
        out.write('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + '\n')
    if not rows:
        out.write('(none)\n')


def _cell(value):
    if value is None:
        return '-'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(',', ':'))
    return str(value)


def fields(record, keys, out=None):
    out = out or sys.stdout
    width = max(len(k) for k in keys)
    for key in keys:
        value = record.get(key)
        if key == 'timings' and isinstance(value, dict):
            out.write('%s  %s\n' % (key.ljust(width), _timings(value) or '-'))
            continue
        out.write('%s  %s\n' % (key.ljust(width), _cell(value)))


def _timings(timings):
    parts = []
    for group in ('node', 'control_plane', 'release'):
        values = timings.get(group)
        if isinstance(values, dict) and values:
            parts.append('%s: %s' % (group, ', '.join('%s %s' % (k, v) for k, v in values.items())))
    return '; '.join(parts)


def emit(args, data, show):
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write('\n')
    else:
        show(data)


# -- the API client ------------------------------------------------------------------------

class Client:
    def __init__(self, base, token, timeout=30.0):
        import httpx
        if not token:
            raise CliError('no API token: pass --token or set GPUAAS_TOKEN '
                           '(an operator creates one with `gpuaas token create`)')
        self.httpx = httpx
        self.http = httpx.Client(base_url=base.rstrip('/'), timeout=timeout,
                                 headers={'Authorization': 'Bearer %s' % token})

    def call(self, method, path, **kwargs):
        try:
            reply = self.http.request(method, path, **kwargs)
        except self.httpx.HTTPError as exc:
            raise CliError('cannot reach the API at %s: %s' % (self.http.base_url, exc)) from None
        if reply.status_code >= 400:
            try:
                body = reply.json()
                detail, problems = body.get('detail'), body.get('problems') or []
            except ValueError:
                detail, problems = reply.text.strip()[:500], []
            message = '%d: %s' % (reply.status_code, detail)
            if problems and problems != [detail]:
                message += ''.join('\n  - %s' % p for p in problems)
            raise CliError(message)
        return reply.json()

    def events(self, allocation_id, after=0, timeout=3600.0):
        """Yield (event id, event) from the SSE stream until it ends."""
        params = {'follow': 'true', 'after': after, 'timeout': timeout}
        try:
            with self.http.stream('GET', '/v1/allocations/%s/events' % allocation_id,
                                  params=params, timeout=None) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    raise CliError('%d: %s' % (reply.status_code, reply.json().get('detail')))
                event_id, data = None, []
                for line in reply.iter_lines():
                    if line.startswith('id: '):
                        event_id = int(line[4:])
                    elif line.startswith('data: '):
                        data.append(line[6:])
                    elif line == '' and data:
                        yield event_id, json.loads('\n'.join(data))
                        event_id, data = None, []
        except self.httpx.HTTPError as exc:
            raise CliError('the event stream broke: %s' % exc) from None


def _load_document(path):
    import yaml
    try:
        if path == '-':
            text = sys.stdin.read()
        else:
            with open(path, encoding='utf-8') as handle:
                text = handle.read()
    except OSError as exc:
        raise CliError('cannot read %s: %s' % (path, exc.strerror)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError('%s is neither JSON nor YAML: %s' % (path, exc)) from None


# -- service commands ----------------------------------------------------------------------

def _settings(args, **extra):
    from gpuaas_control.config import Settings, SettingsError
    try:
        return Settings.from_env(db_url=getattr(args, 'db', None), **extra)
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def _database(args):
    from gpuaas_control.db import Database, DatabaseError
    try:
        settings = _settings(args)
        return Database(settings.db_url, audit_checkpoint=settings.audit_checkpoint)
    except DatabaseError as exc:
        raise CliError(str(exc)) from None


def _require_schema(db):
    """Refuse to serve or work on a database the migrations have not brought up to date."""
    from sqlalchemy.exc import SQLAlchemyError

    from gpuaas_control import migrate
    if db.backend == 'sqlite' and not os.path.exists(db.url.database):
        raise CliError('the database %s does not exist yet: run `gpuaas db upgrade`' % db.url.database)
    try:
        current, head = migrate.status(db)
    except SQLAlchemyError as exc:
        raise CliError('cannot read the database %s: %s' % (
            db.url.render_as_string(hide_password=True), getattr(exc, 'orig', exc))) from None
    if current != head:
        raise CliError('the database %s is at schema revision %s, this version needs %s: run '
                       '`gpuaas db upgrade`' % (db.url.render_as_string(hide_password=True),
                                                current or 'none (empty)', head))
    return db


def cmd_db(args):
    from gpuaas_control import migrate
    db = _database(args)
    if args.action == 'upgrade':
        migrate.upgrade(db)
    elif db.backend == 'sqlite' and not os.path.exists(db.url.database):
        print('database %s does not exist yet (run `gpuaas db upgrade`)' % db.url.database)
        return 1
    current, head = migrate.status(db)
    print('database %s: revision %s (newest %s)' % (
        db.url.render_as_string(hide_password=True), current or 'none', head))
    return 0 if args.action == 'upgrade' or current == head else 1


def cmd_serve(args):
    import uvicorn
    if args.db:
        os.environ['GPUAAS_DB_URL'] = args.db
    _require_schema(_database(args)).dispose()   # refuse here, not in each worker process
    # uvicorn's logging, and the control plane's (the audit checkpoint's line) through it.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config['loggers']['gpuaas_control'] = {'handlers': ['default'], 'level': 'INFO',
                                               'propagate': False}
    uvicorn.run('gpuaas_control.api:factory', factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=args.access_log,
                log_config=log_config)
    return 0


def cmd_worker(args):
    from gpuaas_control.worker import Worker, WorkerError
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    logging.getLogger('alembic').setLevel(logging.WARNING)   # the schema check below is not news
    settings = _settings(args, project_dir=args.project_dir, inventory=args.inventory,
                         runs_dir=args.runs_dir, worker_concurrency=args.concurrency)
    try:
        worker = Worker(_require_schema(_database(args)), settings, worker_id=args.id)
    except WorkerError as exc:
        raise CliError(str(exc)) from None
    if args.once:
        done = worker.drain()
        print('ran %d job(s)' % done)
        return 0

    def stop(_signum, _frame):
        worker.stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger('gpuaas_control.worker').info('worker %s: draining the outbox', worker.worker_id)
    worker.run_forever(settings.worker_concurrency)
    return 0


def _when(value):
    return value.isoformat(timespec='seconds') if value else None


def cmd_token(args):
    from sqlalchemy import select

    from gpuaas_control import audit, service
    from gpuaas_control.errors import ControlError
    from gpuaas_control.models import TOKEN_MAX_DAYS, TOKEN_MAX_GRACE, ApiToken
    from gpuaas_control.schemas.params import MAX_ROW_ID
    for name, option, low, high in (('id', 'token ID', 1, MAX_ROW_ID),
                                    ('expires_in', '--expires-in', 0, TOKEN_MAX_DAYS),
                                    ('grace', '--grace', 0, TOKEN_MAX_GRACE)):
        value = getattr(args, name, None)
        if value is not None and not low <= value <= high:
            raise CliError('%s %d is not valid: %d to %d' % (option, value, low, high))
    settings = _settings(args)
    db = _database(args)
    if args.action == 'list':
        with db.read() as session:
            rows = [{'id': t.id, 'name': t.name, 'role': t.role, 'tenant': t.tenant_id,
                     'created_at': _when(t.created_at), 'expires_at': _when(t.expires_at),
                     'last_used_at': _when(t.last_used_at), 'revoked_at': _when(t.revoked_at),
                     'replaced_by': t.replaced_by}
                    for t in session.execute(select(ApiToken).order_by(ApiToken.id)).scalars()]
        emit(args, rows, lambda r: table(r, [
            ('id', 'id'), ('name', 'name'), ('role', 'role'), ('tenant', 'tenant'),
            ('created_at', 'created'), ('expires_at', 'expires'), ('last_used_at', 'last used'),
            ('revoked_at', 'revoked'), ('replaced_by', 'replaced by')]))
        return 0
    actor = audit.Actor('cli:%s' % os.environ.get('USER', 'unknown'), 'operator')
    days = settings.token_days if getattr(args, 'expires_in', None) is None else args.expires_in
    old = None
    try:
        if args.action == 'revoke':
            db.transact(service.revoke_token, actor, args.id)
            print('token %d revoked' % args.id)
            return 0
        if args.action == 'create':
            token, row = db.transact(service.create_token, actor, args.role, args.tenant,
                                     args.name or '', default_max_gpus=settings.default_max_gpus,
                                     expires_in=days)
        else:
            token, row, old = db.transact(service.rotate_token, actor, args.id, args.grace, days)
    except ControlError as exc:
        raise CliError(exc.message) from None
    print(token)
    print('token %d (%s, %s%s, %s): shown once, only its hash is kept'
          % (row.id, row.name, row.role, ', tenant %s' % row.tenant_id if row.tenant_id else '',
             'expires %s' % _when(row.expires_at) if row.expires_at else 'never expires'),
          file=sys.stderr)
    if old is not None:
        print('token %d, which it replaces, stops working at %s' % (old.id, _when(old.expires_at)),
              file=sys.stderr)
    return 0


def cmd_audit(args):
    if args.action == 'list':
        data = _client(args).call('GET', '/v1/audit', params={'after': args.after, 'limit': args.limit})
        emit(args, data, lambda d: table(d['entries'], [
            ('seq', 'seq'), ('at', 'at'), ('actor', 'actor'), ('action', 'action'),
            ('target_id', 'target'), ('after', 'after')]))
        return 0
    return _audit_verify(args)


def _audit_verify(args):
    from gpuaas_control import audit
    path = args.checkpoint or _settings(args).audit_checkpoint
    anchor = None if args.no_checkpoint or args.reanchor else audit.Anchor(path)
    db = _database(args)
    with db.read() as session:
        result = audit.verify(session, anchor)
    db.dispose()
    problems = list(result.problems)
    if args.expect_head and args.expect_head != result.head_hash:
        problems.append('the head is %s, not the expected %s' % (result.head_hash, args.expect_head))
    if args.reanchor and not problems:
        if not result.head_seq:
            raise CliError('the ledger is empty: nothing to anchor')
        try:
            previous = audit.Anchor(path).reset(result.head_seq, result.head_hash)
        except OSError as exc:
            raise CliError('cannot write the audit checkpoint %s: %s' % (path, exc.strerror or exc)) from None
        print('audit checkpoint %s: now entry %d (it held %s)' % (
            path, result.head_seq, 'entry %d %s' % (previous.seq, previous.hash) if previous else 'nothing'))
    if args.json:
        emit(args, dict(result.as_dict(), ok=not problems, problems=problems,
                        checkpoint=anchor.path if anchor else None), None)
    elif problems:
        print('audit chain BROKEN (%d entries, head %d %s):' % (result.entries, result.head_seq,
                                                               result.head_hash))
        for problem in problems:
            print('  - %s' % problem)
        if anchor is not None:
            print('(--checkpoint PATH checks against a copy of the checkpoint; --no-checkpoint '
                  'checks the chain alone; --reanchor anchors its head once it is accounted for)')
    else:
        print('audit chain ok: %d entries, %s, head %d %s' % (
            result.entries, 'checkpoint at entry %d' % result.checkpoint_seq if result.checkpoint_seq
            else 'no checkpoint (empty ledger)' if anchor else 'checkpoint not checked',
            result.head_seq, result.head_hash))
    return 1 if problems else 0


# -- client commands -----------------------------------------------------------------------

def _client(args):
    return Client(args.api, args.token)


NODE_COLUMNS = [('id', 'node'), ('schedulable', 'schedulable'), ('approved_slots', 'slots'),
                ('free_slots', 'free'), ('reachable', 'reachable'), ('drain_reason', 'drain reason'),
                ('discovered_at', 'discovered')]
SLOT_COLUMNS = [('id', 'slot'), ('state', 'state'), ('approved', 'approved'),
                ('gpu_model', 'gpu'), ('gpu_address', 'address'), ('numa_node', 'numa'),
                ('ip', 'ip'), ('destructive_wipe_policy', 'wipe'), ('allocation_id', 'allocation')]
ALLOCATION_COLUMNS = [('id', 'allocation'), ('tenant', 'tenant'), ('state', 'state'),
                      ('slot_id', 'slot'), ('address', 'address'), ('created_at', 'created')]
ALLOCATION_FIELDS = ['id', 'tenant', 'state', 'slot_id', 'node_id', 'image', 'vcpus',
                     'memory_mib', 'disk_gib', 'hostname', 'mac', 'address', 'access', 'ssh',
                     'telemetry_token', 'hostdevs_attached', 'timings', 'error', 'created_at',
                     'running_at', 'ended_at']


def cmd_node(args):
    client = _client(args)
    if args.action == 'list':
        data = client.call('GET', '/v1/nodes')
        emit(args, data, lambda d: table(d['nodes'], NODE_COLUMNS))
    elif args.action == 'show':
        data = client.call('GET', '/v1/nodes/%s' % args.node)

        def show(d):
            fields(d, ['id', 'schedulable', 'drain_reason', 'reachable', 'unreachable_since',
                       'unreachable_error', 'last_probe_at', 'next_probe_at', 'discovered_at', 'approved_at'])
            print()
            table(d['slots'], SLOT_COLUMNS)
            ineligible = [s for s in (d.get('discovery') or {}).get('slots', []) if not s['eligible']]
            for slot in ineligible:
                print('not eligible: %s: %s' % (slot['slot_id'], '; '.join(slot['reasons'] or [])))
        emit(args, data, show)
    elif args.action == 'discovery':
        discovery = _load_document(args.file)
        if isinstance(discovery, dict):
            for key in ('changed', 'failed', 'invocation'):   # a registered task result
                discovery.pop(key, None)
        data = client.call('PUT', '/v1/nodes/%s/discovery' % args.node, json=discovery)
        emit(args, data, lambda d: print('node %s: discovery stored (%d slots proposed)'
                                         % (d['id'], len(d['discovery']['slots']))))
    elif args.action == 'approve':
        document = _load_document(args.file)
        if isinstance(document, dict):   # host_vars style, or the API's own body
            document = document.get('gpuaas_approved_slots', document.get('approved_slots'))
        data = client.call('PUT', '/v1/nodes/%s/approval' % args.node,
                           json={'approved_slots': document})
        emit(args, data, lambda d: table(d['slots'], SLOT_COLUMNS))
    elif args.action == 'drain':
        data = client.call('POST', '/v1/nodes/%s/drain' % args.node,
                           json={'reason': args.reason} if args.reason else None)
        emit(args, data, lambda d: print('node %s drained: nothing new is scheduled there' % d['id']))
    else:
        data = client.call('POST', '/v1/nodes/%s/undrain' % args.node)
        emit(args, data, lambda d: print('node %s is schedulable again' % d['id']))
    return 0


CLEANUP_COLUMNS = [('slot_id', 'slot'), ('allocation_id', 'left by'), ('status', 'cleanup'),
                   ('attempts', 'attempts'), ('node_reachable', 'node reachable'), ('last_error', 'last error')]


def cmd_slot(args):
    client = _client(args)
    if args.action == 'list':
        params = {k: v for k, v in (('node_id', args.node), ('state', args.state)) if v}
        data = client.call('GET', '/v1/slots', params=params)
        emit(args, data, lambda d: table(d['slots'], SLOT_COLUMNS))
    elif args.action == 'cleanups':
        data = client.call('GET', '/v1/cleanups')
        emit(args, data, lambda d: table(d['cleanups'], CLEANUP_COLUMNS))
    elif args.action == 'retry-cleanup':
        data = client.call('POST', '/v1/cleanups/%s/retry' % args.slot)
        emit(args, data, lambda d: print('slot %s: cleanup queued again (job %d)%s' % (
            d['slot_id'], d['job_id'], '' if d['node_reachable'] else '; it runs when %s answers' % d['node_id'])))
    else:
        data = client.call('POST', '/v1/cleanups/%s/mark-clean' % args.slot, json={'reason': args.reason})
        emit(args, data, lambda d: print('slot %s marked clean: free again' % d['id']))
    return 0


def cmd_quota(args):
    client = _client(args)
    if args.action == 'set':
        data = client.call('PUT', '/v1/tenants/%s/quota' % args.tenant, json={'max_gpus': args.max_gpus})
        emit(args, data, lambda d: print('tenant %s: at most %s GPUs' % (
            d['id'], 'unlimited' if d['max_gpus'] < 0 else d['max_gpus'])))
    else:
        data = client.call('GET', '/v1/tenants')
        emit(args, data, lambda d: table(d['tenants'], [('id', 'tenant'), ('max_gpus', 'max gpus'),
                                                         ('allocated_gpus', 'allocated')]))
    return 0


def _ssh_keys(args):
    keys = list(args.ssh_key or [])
    for path in args.ssh_key_file or []:
        try:
            with open(os.path.expanduser(path), encoding='utf-8') as handle:
                keys.extend(line.strip() for line in handle if line.strip() and not line.startswith('#'))
        except OSError as exc:
            raise CliError('cannot read %s: %s' % (path, exc.strerror)) from None
    if not keys:
        raise CliError('give at least one --ssh-key or --ssh-key-file')
    return keys


def follow(client, allocation_id, until, timeout, out=None):
    """Print the allocation's events as they come, with the time since we started, until
    its state is one of ``until``; return the allocation."""
    out = out or sys.stdout
    started = time.monotonic()
    state = None
    for _event_id, event in client.events(allocation_id, timeout=timeout):
        elapsed = time.monotonic() - started
        marker = {'state': '==>', 'error': '!!', 'progress': '   '}.get(event['kind'], '   ')
        out.write('%7.1fs %s %s\n' % (elapsed, marker, event['message']))
        out.flush()
        state = (event.get('data') or {}).get('state', state)
        if state in until:
            break
    return client.call('GET', '/v1/allocations/%s' % allocation_id)


def _print_telemetry(data):
    acceptance = data['acceptance']
    print('allocation %s: %d sample(s), last %s, collected %s' % (
        data['allocation_id'], data['samples'], data['last_at'] or '-', data['collected_at'] or '-'))
    print('acceptance: %s%s' % (acceptance['status'], ' at %s' % acceptance['at'] if acceptance['at'] else ''))
    for check in acceptance['checks']:
        print('  %-8s %-24s %s' % (check['status'], check['name'], check['reason']))
    if data['health']:
        print('health: %s' % json.dumps(data['health'], sort_keys=True))
    if data.get('error'):
        print('not recorded: %s' % data['error'])


def cmd_telemetry(args):
    from gpuaas_control import audit, telemetry
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    logging.getLogger('alembic').setLevel(logging.WARNING)
    settings = _settings(args, project_dir=args.project_dir, inventory=args.inventory, runs_dir=args.runs_dir)
    if not settings.inventory or not os.path.exists(settings.inventory):
        raise CliError('the inventory %r does not exist: set GPUAAS_INVENTORY (or --inventory)' % settings.inventory)
    db = _require_schema(_database(args))
    report = telemetry.collect(db, settings, audit.Actor('telemetry:%s' % os.getpid(), 'system'), args.node)
    print(json.dumps(report, sort_keys=True, indent=2))
    return 1 if any('error' in value for value in report.values()) else 0


def cmd_allocation(args):
    client = _client(args)
    if args.action == 'create':
        body = {'image': args.image, 'image_checksum': args.checksum,
                'image_format': args.image_format, 'ssh_keys': _ssh_keys(args),
                'vcpus': args.vcpus, 'memory_mib': args.memory_mib, 'disk_gib': args.disk_gib}
        for key in ('hostname', 'gpu_model', 'node_id', 'numa_node'):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        headers = {'Idempotency-Key': args.idempotency_key} if args.idempotency_key else {}
        data = client.call('POST', '/v1/allocations', json=body, headers=headers)
        if args.wait:
            if not args.json:
                print('allocation %s: slot %s reserved; waiting for it to run' % (data['id'], data['slot_id']))
            data = follow(client, data['id'], ('running', 'failed', 'released'), args.timeout,
                          out=sys.stderr if args.json else sys.stdout)
        emit(args, data, lambda d: fields(d, ALLOCATION_FIELDS))
        return 0 if data['state'] in ('requested', 'provisioning', 'running') else 1
    if args.action in POWER_UNTIL:
        return _power(client, args)
    if args.action == 'list':
        params = {k: v for k, v in (('state', args.state), ('tenant', args.tenant)) if v}
        data = client.call('GET', '/v1/allocations', params=params)
        emit(args, data, lambda d: table(d['allocations'], ALLOCATION_COLUMNS))
    elif args.action == 'show':
        data = client.call('GET', '/v1/allocations/%s' % args.allocation)
        emit(args, data, lambda d: fields(d, ALLOCATION_FIELDS))
    elif args.action == 'telemetry':
        data = client.call('GET', '/v1/allocations/%s/telemetry' % args.allocation)
        emit(args, data, _print_telemetry)
    elif args.action == 'console':
        data = client.call('GET', '/v1/allocations/%s/console' % args.allocation)
        deadline = time.monotonic() + args.timeout
        while args.wait and data['refreshing'] and time.monotonic() < deadline:
            time.sleep(1)
            data = client.call('GET', '/v1/allocations/%s/console' % args.allocation)
        emit(args, data, lambda d: sys.stdout.write(d['text'] or '(no console output read yet)\n'))
    elif args.action == 'release':
        data = client.call('DELETE', '/v1/allocations/%s' % args.allocation)
        if args.wait:
            data = follow(client, args.allocation, ('released', 'failed'), args.timeout,
                          out=sys.stderr if args.json else sys.stdout)
        emit(args, data, lambda d: print('allocation %s: %s' % (d['id'], d['state'])))
    else:
        out = sys.stdout
        for _event_id, event in client.events(args.allocation, timeout=args.timeout) if args.follow \
                else _static_events(client, args.allocation):
            if args.json:
                out.write(json.dumps(event) + '\n')
            else:
                out.write('%s  %-8s %s\n' % (event['at'], event['kind'], event['message']))
    return 0


# The state a power action's --wait waits to see left (done, failed, or overtaken by a release).
POWER_UNTIL = {'stop': 'stopping', 'start': 'starting', 'reboot': 'rebooting'}


def _power(client, args):
    """stop, start, reboot; with --wait, until the node has done it (exit 1 when it did not)."""
    data = client.call('POST', '/v1/allocations/%s/%s' % (args.allocation, args.action))
    deadline = time.monotonic() + args.timeout
    while args.wait and data['state'] == POWER_UNTIL[args.action] and time.monotonic() < deadline:
        time.sleep(1)
        data = client.call('GET', '/v1/allocations/%s' % args.allocation)
    emit(args, data, lambda d: print('allocation %s: %s' % (d['id'], d['state'])))
    if not args.wait:
        return 0
    return 0 if data['state'] == ('stopped' if args.action == 'stop' else 'running') else 1


def _static_events(client, allocation_id):
    reply = client.http.get('/v1/allocations/%s/events' % allocation_id, params={'follow': 'false'})
    if reply.status_code >= 400:
        raise CliError('%d: %s' % (reply.status_code, reply.json().get('detail')))
    for block in reply.text.split('\n\n'):
        data = [line[6:] for line in block.splitlines() if line.startswith('data: ')]
        if data:
            yield None, json.loads('\n'.join(data))


def cmd_usage(args):
    params = {k: v for k, v in (('tenant', args.tenant), ('since', args.since), ('until', args.until)) if v}
    data = _client(args).call('GET', '/v1/usage', params=params)

    def show(d):
        table(d['usage'], [('allocation_id', 'allocation'), ('tenant', 'tenant'),
                           ('gpu_model', 'gpu'), ('allocated_seconds', 'allocated s'),
                           ('running_seconds', 'running s'), ('allocated_start', 'from'),
                           ('allocated_end', 'to')])
        print('total: %(allocated_seconds)s GPU-seconds allocated, %(running_seconds)s running, '
              '%(stopped_seconds)s stopped' % d['totals'])
    emit(args, data, show)
    return 0


# -- the parser ----------------------------------------------------------------------------

def parser():
    top = argparse.ArgumentParser(prog='gpuaas', description=__doc__.split('\n\n', 1)[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument('--db', help='database URL (GPUAAS_DB_URL; default sqlite:////var/lib/gpuaas/control/gpuaas.db)')
    top.add_argument('--api', default=os.environ.get('GPUAAS_API', DEFAULT_API),
                     help='API base URL (GPUAAS_API; default %(default)s)')
    top.add_argument('--token', default=os.environ.get('GPUAAS_TOKEN'),
                     help='API bearer token (GPUAAS_TOKEN)')
    top.add_argument('--json', action='store_true', help='print JSON instead of tables')
    sub = top.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('db', help='create or upgrade the schema (Alembic)')
    p.add_argument('action', choices=['upgrade', 'status'])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser('serve', help='run the HTTP API (uvicorn)')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=8000)
    p.add_argument('--workers', type=int, default=1, help='uvicorn worker processes')
    p.add_argument('--log-level', default='info')
    p.add_argument('--no-access-log', dest='access_log', action='store_false')
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser('worker', help='drain the outbox: run allocate/release through ansible-runner')
    p.add_argument('--project-dir', help='the gpuaas.slice checkout (GPUAAS_PROJECT_DIR)')
    p.add_argument('--inventory', help='inventory whose hosts are the node ids (GPUAAS_INVENTORY)')
    p.add_argument('--runs-dir', help='where private data dirs go (GPUAAS_RUNS_DIR)')
    p.add_argument('--concurrency', type=int,
                   help='jobs run at once by this process, one per node (GPUAAS_WORKER_CONCURRENCY, 4)')
    p.add_argument('--id', help='this worker\'s name in the outbox (default host:pid:random)')
    p.add_argument('--once', action='store_true', help='run what is runnable now, then exit')
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser('telemetry', help="collect the nodes' telemetry sink summaries now (on the database)")
    p.add_argument('action', choices=['collect'])
    p.add_argument('--node', help='only this node')
    p.add_argument('--project-dir', help='the gpuaas.slice checkout (GPUAAS_PROJECT_DIR)')
    p.add_argument('--inventory', help='inventory whose hosts are the node ids (GPUAAS_INVENTORY)')
    p.add_argument('--runs-dir', help='where private data dirs go (GPUAAS_RUNS_DIR)')
    p.set_defaults(func=cmd_telemetry)

    p = sub.add_parser('token', help='API tokens (on the database)')
    tsub = p.add_subparsers(dest='action', required=True)
    t = tsub.add_parser('create', help='print a new token')
    t.add_argument('--role', required=True, choices=['operator', 'reader', 'tenant'],
                   help='reader: the operator views, read-only (the inventory plugin, AWX)')
    t.add_argument('--tenant', help='the tenant of a tenant token (created when new)')
    t.add_argument('--name')
    t.add_argument('--expires-in', type=int, metavar='DAYS',
                   help='lifetime in days, 0: never (default GPUAAS_TOKEN_DAYS, 90)')
    tsub.add_parser('list', help='tokens with their expiry and last use (never the token)')
    t = tsub.add_parser('rotate', help='print a new token in place of token ID')
    t.add_argument('id', type=int)
    t.add_argument('--grace', type=int, default=0, metavar='SECONDS',
                   help='token ID keeps working this long (default 0: it stops at once)')
    t.add_argument('--expires-in', type=int, metavar='DAYS',
                   help='the new token\'s lifetime in days, 0: never (default GPUAAS_TOKEN_DAYS, 90)')
    t = tsub.add_parser('revoke')
    t.add_argument('id', type=int)
    p.set_defaults(func=cmd_token)

    p = sub.add_parser('audit', help='the audit ledger')
    asub = p.add_subparsers(dest='action', required=True)
    a = asub.add_parser('verify', help='check the hash chain on the database against its checkpoint '
                                       '(GPUAAS_AUDIT_CHECKPOINT); exit 1 if broken')
    a.add_argument('--expect-head', help='also require this head hash (kept outside the database)')
    which = a.add_mutually_exclusive_group()
    which.add_argument('--checkpoint', metavar='PATH', help='check against this copy of the checkpoint')
    which.add_argument('--no-checkpoint', action='store_true',
                       help='check the chain alone (it cannot tell a rewound or re-hashed ledger)')
    which.add_argument('--reanchor', action='store_true',
                       help='check the chain alone and, if intact, anchor its head in the checkpoint '
                            '(after an upgrade, or once a reported problem is accounted for)')
    a = asub.add_parser('list', help='entries, through the API')
    a.add_argument('--after', type=int, default=0)
    a.add_argument('--limit', type=int, default=100)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser('node', help='nodes, discovery, approval, drain (operators)')
    nsub = p.add_subparsers(dest='action', required=True)
    nsub.add_parser('list')
    n = nsub.add_parser('show')
    n.add_argument('node')
    n = nsub.add_parser('discovery', help='store a slot_discovery_info result (JSON/YAML file, - for stdin)')
    n.add_argument('node')
    n.add_argument('file')
    n = nsub.add_parser('approve', help='apply an approved slot map (a list, or host_vars with '
                                        'gpuaas_approved_slots)')
    n.add_argument('node')
    n.add_argument('file')
    n = nsub.add_parser('drain')
    n.add_argument('node')
    n.add_argument('--reason')
    n = nsub.add_parser('undrain')
    n.add_argument('node')
    p.set_defaults(func=cmd_node)

    p = sub.add_parser('slot', help='slots (operators)')
    ssub = p.add_subparsers(dest='action', required=True)
    s = ssub.add_parser('list')
    s.add_argument('--node')
    s.add_argument('--state', choices=['free', 'reserved', 'blocked'])
    ssub.add_parser('cleanups', help='slots a cleanup keeps blocked (left on a node that did not answer)')
    s = ssub.add_parser('retry-cleanup', help="queue a blocked slot's failed cleanup again")
    s.add_argument('slot')
    s = ssub.add_parser('mark-clean', help='free a slot a cleanup keeps blocked, once you cleaned its node by hand')
    s.add_argument('slot')
    s.add_argument('--reason', required=True, help='what was done on the node (audited)')
    p.set_defaults(func=cmd_slot)

    p = sub.add_parser('quota', help='per-tenant GPU quotas (operators)')
    qsub = p.add_subparsers(dest='action', required=True)
    q = qsub.add_parser('set')
    q.add_argument('tenant')
    q.add_argument('max_gpus', type=int, help='-1 for unlimited')
    qsub.add_parser('list')
    p.set_defaults(func=cmd_quota)

    p = sub.add_parser('allocation', help='allocations')
    asub = p.add_subparsers(dest='action', required=True)
    a = asub.add_parser('create', help='reserve a slot (tenant token)')
    a.add_argument('--image', required=True, help='a base image file in the nodes\' image directory')
    a.add_argument('--checksum', required=True, help='sha256:HEX of the image')
    a.add_argument('--image-format', default='qcow2', choices=['qcow2', 'raw'])
    a.add_argument('--ssh-key', action='append', help='an OpenSSH public key line (repeatable)')
    a.add_argument('--ssh-key-file', action='append', help='a file of public keys (repeatable)')
    a.add_argument('--vcpus', type=int, required=True)
    a.add_argument('--memory-mib', type=int, required=True)
    a.add_argument('--disk-gib', type=int, default=20)
    a.add_argument('--hostname')
    a.add_argument('--gpu-model', help="PCI vendor:device, e.g. 10de:2330")
    a.add_argument('--node', dest='node_id')
    a.add_argument('--numa-node', type=int)
    a.add_argument('--idempotency-key')
    a.add_argument('--wait', action='store_true', help='show progress until it runs (or fails)')
    a.add_argument('--timeout', type=float, default=3600)
    a = asub.add_parser('list')
    a.add_argument('--state')
    a.add_argument('--tenant')
    a = asub.add_parser('show')
    a.add_argument('allocation')
    a = asub.add_parser('telemetry', help="the guest's last health sample and the slot acceptance result")
    a.add_argument('allocation')
    a = asub.add_parser('release')
    a.add_argument('allocation')
    a.add_argument('--wait', action='store_true')
    a.add_argument('--timeout', type=float, default=3600)
    for action, text in (('stop', 'stop the VM (ACPI shutdown); the slot stays the allocation\'s'),
                         ('start', 'start the stopped VM'), ('reboot', 'reboot the VM')):
        a = asub.add_parser(action, help=text)
        a.add_argument('allocation')
        a.add_argument('--wait', action='store_true', help='until the node has done it')
        a.add_argument('--timeout', type=float, default=600)
    a = asub.add_parser('console', help="the newest part of the VM's serial console log (at most 64 KiB)")
    a.add_argument('allocation')
    a.add_argument('--wait', action='store_true', help='until a fresh read from the node is in')
    a.add_argument('--timeout', type=float, default=60)
    a = asub.add_parser('events')
    a.add_argument('allocation')
    a.add_argument('--follow', action='store_true')
    a.add_argument('--timeout', type=float, default=3600)
    p.set_defaults(func=cmd_allocation)

    p = sub.add_parser('usage', help='GPU-seconds allocated and running, per allocation')
    p.add_argument('--tenant')
    p.add_argument('--since', help='ISO 8601 with a zone, e.g. 2026-11-01T00:00:00Z')
    p.add_argument('--until')
    p.set_defaults(func=cmd_usage)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print('gpuaas: %s' % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Database errors (unreachable server, missing file, permissions) are the
        # operator's to fix: say what the database said, without a traceback.
        from sqlalchemy.exc import SQLAlchemyError
        if not isinstance(exc, SQLAlchemyError):
            raise
        print('gpuaas: database error: %s' % (getattr(exc, 'orig', None) or exc), file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
