# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuaas telemetry sink: the host-only endpoint slot VMs post their metrics to.

    gpuaas_telemetry_sink.py --listen 10.100.0.1 --port 9110 \
        --token-dir /var/lib/gpuaas/telemetry/tokens --data-dir /var/lib/gpuaas/telemetry/data

POST /metrics (or /v1/metrics) with ``Authorization: Bearer <token>`` and a JSON object of
at most 64 KiB. A sample is kept only when the token is an allocation's current token
(gpuaas.slice.telemetry_token writes them) *and* comes from that allocation's slot address:
a token copied into another slot is refused. The token's SHA-256 is compared, in constant
time, with the ``token_sha256`` of each token file. A sample holds finite numbers only (no
NaN, no Infinity), at most 4096 values and 16 levels. An acceptance result (``"kind":
"acceptance"``, the guest agent's) must have a ``status`` of passed or failed and a list of
``checks``, each with a name, a status and a reason.

Accepted samples are appended, one JSON line each, to ``{data_dir}/{allocation_id}.jsonl``
(moved to ``.jsonl.1`` when it passes 8 MiB: an allocation's series is bounded), and
``{data_dir}/{allocation_id}.summary.json`` is rewritten: the sample count, the first and
last time, the last health sample and the acceptance result. The summaries are what the
control plane collects (gpuaas.slice.telemetry_info). Answers: 200 stored, 400 bad body
(not JSON, not an object, a non-finite number, a malformed acceptance result), 401 unknown
token, 403 token from the wrong address, 404 other paths, 413 too large or too many values.
GET /healthz answers 200. Standard library only: it runs with the host's python3.
"""

import argparse
import hashlib
import hmac
import http.server
import json
import math
import os
import re
import sys
import threading
import time

MAX_BODY = 64 * 1024
MAX_VALUES = 4096
MAX_DEPTH = 16
MAX_CHECKS = 64
# An allocation's series file is moved aside (one older file kept) past this size.
MAX_SERIES = 8 * 1024 * 1024
ACCEPTANCE_STATES = ('passed', 'failed')
CHECK_STATES = ('passed', 'failed', 'skipped')
ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$')
DIGEST_RE = re.compile(r'^[0-9a-f]{64}$')
# A directory's mtime moves in clock ticks: two changes within one tick leave it equal. A
# directory changed this recently is read again on every request, so a token revoked right
# after it was read is never served from the cache.
SETTLE_SECONDS = 2.0
# A client that sends nothing for this long loses its connection (and its thread).
CLIENT_TIMEOUT = 10


class Tokens:
    """The token files, re-read when the directory changes (a token is added or revoked)."""

    def __init__(self, token_dir):
        self.token_dir = token_dir
        self.lock = threading.Lock()
        self.stamp = None
        self.by_digest = {}

    def _load(self):
        try:
            info = os.stat(self.token_dir)
        except OSError:
            self.by_digest, self.stamp = {}, None   # no token directory: no tokens
            return
        stamp = (info.st_mtime_ns, info.st_ino)
        if stamp == self.stamp and time.time() - info.st_mtime > SETTLE_SECONDS:
            return
        tokens = {}
        for name in os.listdir(self.token_dir):
            if not name.endswith('.json'):
                continue
            try:
                with open(os.path.join(self.token_dir, name)) as handle:
                    record = json.load(handle)
                digest = record.get('token_sha256')
                if digest is None and isinstance(record.get('token'), str) and len(record['token']) >= 16:
                    digest = hashlib.sha256(record['token'].encode()).hexdigest()   # an older token file
                if ID_RE.match(record['allocation_id']) and isinstance(digest, str) and DIGEST_RE.match(digest):
                    tokens[digest] = record
            except (OSError, ValueError, KeyError, TypeError):
                continue
        self.by_digest, self.stamp = tokens, stamp

    def find(self, token):
        """The token's record, or None. Compared by SHA-256 digest in constant time."""
        digest = hashlib.sha256(token.encode('utf-8', 'replace')).hexdigest()
        with self.lock:
            self._load()
            found = None
            for known, record in self.by_digest.items():
                if hmac.compare_digest(known, digest):
                    found = record
            return found


class BadSample(ValueError):
    """A sample the sink refuses; ``status`` is the HTTP answer."""

    def __init__(self, status, message):
        ValueError.__init__(self, message)
        self.status = status


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise BadSample(400, 'the body holds a non-finite number (%s): numbers must be finite' % text[:32])
    return value


def _constant(name):
    raise BadSample(400, 'the body holds a non-finite number (%s): numbers must be finite' % name)


def parse_sample(raw):
    """The body as a dict, or BadSample saying why not (never stores anything)."""
    try:
        body = json.loads(raw.decode('utf-8'), parse_float=_finite, parse_constant=_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, BadSample):
            raise
        raise BadSample(400, 'the body is not JSON')
    except RecursionError:
        raise BadSample(413, 'the body nests deeper than %d levels' % MAX_DEPTH)
    if not isinstance(body, dict):
        raise BadSample(400, 'the body must be a JSON object')
    count, stack = 0, [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadSample(413, 'the body nests deeper than %d levels' % MAX_DEPTH)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            count += 1
            if count > MAX_VALUES:
                raise BadSample(413, 'a sample holds at most %d values' % MAX_VALUES)
            stack.append((child, depth + 1))
    if body.get('kind') == 'acceptance':
        check_acceptance(body)
    return body


def check_acceptance(body):
    status, checks = body.get('status'), body.get('checks')
    if status not in ACCEPTANCE_STATES:
        raise BadSample(400, 'acceptance status %r is not one of %s' % (status, ', '.join(ACCEPTANCE_STATES)))
    if not isinstance(checks, list) or not 1 <= len(checks) <= MAX_CHECKS:
        raise BadSample(400, 'acceptance checks must be a list of 1 to %d checks' % MAX_CHECKS)
    for index, check in enumerate(checks):
        if not (isinstance(check, dict) and isinstance(check.get('name'), str) and 0 < len(check['name']) <= 64
                and check.get('status') in CHECK_STATES and isinstance(check.get('reason'), str)
                and len(check['reason']) <= 1024):
            raise BadSample(400, 'acceptance checks[%d] is not {name, status (%s), reason}: %s'
                            % (index, ', '.join(CHECK_STATES), json.dumps(check)[:200]))
    failed = [check['name'] for check in checks if check['status'] == 'failed']
    if (status == 'failed') != bool(failed):
        raise BadSample(400, 'acceptance status %r disagrees with its checks (failed: %s)'
                        % (status, ', '.join(failed) or 'none'))


def _write_atomic(path, data):
    tmp = '%s.tmp%d' % (path, threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def store(data_dir, record, body, now):
    """Append the sample to the allocation's series and update its summary (under the lock)."""
    allocation = record['allocation_id']
    path = os.path.join(data_dir, '%s.jsonl' % allocation)
    line = json.dumps({'received_at': now, 'allocation_id': allocation,
                       'slot_id': record.get('slot_id'), 'body': body}, sort_keys=True) + '\n'
    try:
        if os.stat(path).st_size + len(line) > MAX_SERIES:
            os.replace(path, path + '.1')
    except OSError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    summary_path = os.path.join(data_dir, '%s.summary.json' % allocation)
    try:
        with open(summary_path) as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        summary = {'allocation_id': allocation, 'slot_id': record.get('slot_id'), 'samples': 0,
                   'first_at': now, 'last_at': None, 'health': None, 'acceptance': None}
    summary['samples'] = summary.get('samples', 0) + 1
    summary['last_at'] = now
    if body.get('kind') == 'acceptance':
        summary['acceptance'] = {'received_at': now, 'result': body}
    elif body.get('kind') == 'health':
        summary['health'] = {'received_at': now, 'sample': body}
    _write_atomic(summary_path, (json.dumps(summary, sort_keys=True) + '\n').encode())


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = 'gpuaas-telemetry-sink'
    sys_version = ''
    timeout = CLIENT_TIMEOUT

    def reply(self, status, message=''):
        body = (json.dumps({'status': status, 'message': message}) + '\n').encode() if message else b''
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == '/healthz':
            self.reply(200, 'ok')
        else:
            self.reply(404, 'not found')

    def do_POST(self):  # noqa: N802
        if self.path not in ('/metrics', '/v1/metrics'):
            return self.reply(404, 'not found')
        try:
            length = int(self.headers.get('Content-Length', ''))
        except ValueError:
            return self.reply(411, 'Content-Length required')
        if length > MAX_BODY or length < 0:
            return self.reply(413, 'a sample is at most %d bytes' % MAX_BODY)
        try:
            raw = self.rfile.read(length)
        except OSError:   # the client stalled past the timeout or went away
            self.close_connection = True
            return None
        if len(raw) < length:
            self.close_connection = True
            return self.reply(400, 'the body is shorter than its Content-Length')
        auth = self.headers.get('Authorization', '')
        if not auth.startswith('Bearer ') or len(auth) > 1024:
            return self.reply(401, 'a bearer token is required')
        record = self.server.tokens.find(auth[len('Bearer '):].strip())
        if record is None:
            return self.reply(401, 'unknown or revoked token')
        client = self.client_address[0]
        if client != record.get('ip'):
            return self.reply(403, 'this token belongs to another slot')
        try:
            body = parse_sample(raw)
        except BadSample as exc:
            return self.reply(exc.status, str(exc))
        with self.server.write_lock:
            store(self.server.data_dir, record, body, time.time())
        return self.reply(200, 'stored')

    def log_message(self, fmt, *args):
        sys.stderr.write('%s %s\n' % (self.client_address[0], fmt % args))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--listen', default='10.100.0.1', help='the address to listen on (never 0.0.0.0 by default)')
    parser.add_argument('--port', type=int, default=9110)
    parser.add_argument('--token-dir', default='/var/lib/gpuaas/telemetry/tokens')
    parser.add_argument('--data-dir', default='/var/lib/gpuaas/telemetry/data')
    args = parser.parse_args(argv)
    os.makedirs(args.data_dir, mode=0o700, exist_ok=True)
    server = http.server.ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    server.tokens = Tokens(args.token_dir)
    server.data_dir = args.data_dir
    server.write_lock = threading.Lock()
    sys.stderr.write('gpuaas telemetry sink on %s:%d, tokens %s, data %s\n'
                     % (args.listen, args.port, args.token_dir, args.data_dir))
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
