# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A private PostgreSQL cluster for the control plane's tests and benchmark.

Debian's PostgreSQL 15 (``/usr/lib/postgresql/15/bin``), initialised in a temporary
directory and started with ``pg_ctl`` as the ``postgres`` user when run as root (the server
refuses root), listening on a Unix socket in that directory and on 127.0.0.1 at a free
port. Durability is off (fsync, synchronous_commit): it is thrown away at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

# pylint: disable=consider-using-with


class PostgresMissing(Exception):
    """No PostgreSQL server binaries here; tests using it skip with this."""


def find_bindir():
    configured = os.environ.get('GPUAAS_PG_BINDIR')
    candidates = [configured] if configured else sorted(glob.glob('/usr/lib/postgresql/*/bin'),
                                                        reverse=True)
    for path in candidates:
        if path and os.path.exists(os.path.join(path, 'initdb')) and \
                os.path.exists(os.path.join(path, 'pg_ctl')):
            return path
    raise PostgresMissing('PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin '
                          '(apt-get install postgresql, or set GPUAAS_PG_BINDIR)')


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """``with PostgresCluster() as pg: pg.create_database('x') -> URL``."""

    def __init__(self, max_connections=300):
        self.bindir = find_bindir()
        self.max_connections = max_connections
        self.dir = None
        self.port = None
        self.user = None
        self.started = False

    def _as_user(self, argv):
        if os.geteuid() == 0:
            return ['runuser', '-u', self.user, '--'] + argv
        return argv

    def _run(self, argv, **kwargs):
        return subprocess.run(self._as_user(argv), check=True, capture_output=True, text=True,
                              env=dict(os.environ, LANG='C', LC_ALL='C'), **kwargs)

    def start(self):
        if os.geteuid() == 0:
            try:
                pwd.getpwnam('postgres')
            except KeyError:
                raise PostgresMissing('running as root needs the postgres user to run the server') from None
            self.user = 'postgres'
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.dir = tempfile.mkdtemp(prefix='gpuaas-pg-')
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, user=self.user)
        data = os.path.join(self.dir, 'data')
        self._run([os.path.join(self.bindir, 'initdb'), '-D', data, '-U', 'gpuaas',
                   '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync'])
        self.port = _free_port()
        options = ('-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s '
                   '-c fsync=off -c synchronous_commit=off -c full_page_writes=off '
                   '-c max_connections=%d -c shared_buffers=64MB -c log_min_messages=warning'
                   % (self.port, self.dir, self.max_connections))
        self._run([os.path.join(self.bindir, 'pg_ctl'), '-D', data, '-l',
                   os.path.join(self.dir, 'server.log'), '-o', options, '-w', '-t', '60', 'start'])
        self.started = True
        return self

    def stop(self):
        if self.started:
            subprocess.run(self._as_user([os.path.join(self.bindir, 'pg_ctl'), '-D',
                                          os.path.join(self.dir, 'data'), '-m', 'immediate',
                                          '-w', 'stop']), check=False, capture_output=True)
            self.started = False
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log(self):
        try:
            with open(os.path.join(self.dir, 'server.log'), encoding='utf-8') as handle:
                return handle.read()
        except OSError:
            return ''

    def url(self, database='postgres'):
        return 'postgresql+psycopg://gpuaas@127.0.0.1:%d/%s' % (self.port, database)

    def psql(self, sql, database='postgres'):
        return self._run([os.path.join(self.bindir, 'psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1',
                          '-h', self.dir, '-p', str(self.port), '-U', 'gpuaas', '-d', database,
                          '-c', sql]).stdout

    def create_database(self, name, template=None):
        self.psql('CREATE DATABASE "%s"%s' % (name, ' TEMPLATE "%s"' % template if template else ''))
        return self.url(name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
