# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Engines and transactions, SQLite (the embedded default) and PostgreSQL alike.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers queue on the busy
timeout instead of failing when one upgrades a read lock. PostgreSQL runs at READ
COMMITTED with row locks (``SELECT ... FOR UPDATE [SKIP LOCKED]``) where it matters.
A transaction that loses a race the database reports (busy, deadlock, serialization
failure) is retried from the start. With an audit checkpoint, a commit that appended to
the audit ledger moves it once the commit is done (``audit.Anchor``).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gpuaas_control import audit

SQLITE_BUSY_TIMEOUT = 30.0
# A PostgreSQL connection idle for longer is checked (SELECT 1) before it is handed out.
PING_AFTER_IDLE = 5.0
RETRYABLE_PG_CODES = ('40001', '40P01', '55P03')


class DatabaseError(RuntimeError):
    """The database URL is not usable."""


def normalize_url(url: str):
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError('%r is not a database URL (sqlite:////path/to.db or '
                            'postgresql://user@host/db)' % (url,)) from exc
    backend = parsed.get_backend_name()
    if backend == 'postgresql':
        return parsed.set(drivername='postgresql+psycopg')
    if backend == 'sqlite':
        if parsed.database in (None, '', ':memory:'):
            raise DatabaseError('an in-memory SQLite database cannot be shared by the API and '
                                'the worker: give a file, sqlite:////var/lib/gpuaas/control/gpuaas.db')
        return parsed
    raise DatabaseError('database %r is not supported: use SQLite or PostgreSQL' % backend)


def _retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        # The server went away under a connection (a restart): the pool has dropped its
        # connections; the transaction never committed, so run it again on a new one.
        return True
    orig = getattr(exc, 'orig', None)
    code = getattr(orig, 'sqlstate', None) or getattr(orig, 'pgcode', None)
    if code in RETRYABLE_PG_CODES:
        return True
    message = str(orig).lower()
    return 'database is locked' in message or 'database is busy' in message


class Database:
    """One engine for a URL; ``read()``/``write()`` open a transaction (a Session)."""

    def __init__(self, url: str, pool_size: int = 10, echo: bool = False,
                 ping_after_idle: float = PING_AFTER_IDLE, audit_checkpoint: str | None = None):
        self.url = normalize_url(url)
        self.backend = self.url.get_backend_name()
        if self.backend == 'sqlite':
            self.engine = create_engine(
                self.url, echo=echo,
                connect_args={'timeout': SQLITE_BUSY_TIMEOUT, 'check_same_thread': False},
                pool_size=pool_size, max_overflow=pool_size)
            event.listen(self.engine, 'connect', _sqlite_connect)
            event.listen(self.engine, 'begin', _sqlite_begin)
        else:
            self.engine = create_engine(self.url, echo=echo, pool_size=pool_size,
                                        max_overflow=pool_size)
            _ping_when_idle(self.engine, ping_after_idle)
        self._writer = self.engine.execution_options(gpuaas_write=True)
        # SQLite has one writer at a time: threads of one process queue here, on a lock that
        # wakes the next one at once, rather than in SQLite's busy handler, which polls with
        # sleeps of up to 100 ms. Other processes still meet on the busy timeout.
        self._write_lock = threading.Lock() if self.backend == 'sqlite' else None
        # PostgreSQL reads run in autocommit: at READ COMMITTED every statement has its own
        # snapshot inside a transaction too, so BEGIN and ROLLBACK were two round trips for
        # nothing (every request reads its token).
        reader = self.engine.execution_options(isolation_level='AUTOCOMMIT') \
            if self.backend == 'postgresql' else self.engine
        self._read_sessions = sessionmaker(reader, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._writer, expire_on_commit=False)
        self.anchor = audit.Anchor(audit_checkpoint) if audit_checkpoint else None

    @property
    def is_postgres(self) -> bool:
        return self.backend == 'postgresql'

    @contextlib.contextmanager
    def read(self):
        """Reads that never commit: closing the session gives the connection back to the
        pool, which rolls it back (the objects read stay loaded). On PostgreSQL each
        statement is its own transaction (autocommit), as at READ COMMITTED; take no lock
        here, write() is for that."""
        with self._read_sessions() as session:
            session.begin()
            yield session

    @contextlib.contextmanager
    def write(self):
        with self._write_lock or contextlib.nullcontext():
            with self._write_sessions() as session, session.begin():
                yield session
        # Committed (an exception, the caller's or the commit's, does not get here): anchor
        # the audit entries it appended, a rolled-back one never; outside SQLite's write lock,
        # as the file's rename waits for the disk.
        pending = session.info.get(audit.PENDING)
        if pending is not None and self.anchor is not None:
            self.anchor.advance(pending, self._hash_at)

    def transact(self, fn, *args, retries: int = 8, **kwargs):
        """Run ``fn(session, *args, **kwargs)`` in a write transaction, retried when the
        database reports a lost race; other errors propagate, the transaction rolled back."""
        for attempt in range(retries + 1):
            try:
                with self.write() as session:
                    return fn(session, *args, **kwargs)
            except (OperationalError, DBAPIError) as exc:
                if attempt == retries or not _retryable(exc):
                    raise
                time.sleep(min(0.5, 0.01 * (2 ** attempt)) * random.random())
        raise AssertionError('unreachable')

    def _hash_at(self, seq: int):
        with self.engine.connect() as connection:
            return audit.hash_at(connection, seq)

    def session(self) -> Session:
        """A plain session on the writer (the caller begins and commits; its audit entries
        are not anchored)."""
        return self._write_sessions()

    def dispose(self):
        self.engine.dispose()


def _ping_when_idle(engine, after: float):
    """Check a connection that sat idle in the pool for ``after`` seconds before handing it
    out, as ``pool_pre_ping`` does for every checkout: a round trip that cost a fifth of a
    reservation's time under load (bench/bench_reservation.py). A busy connection is not
    pinged; if the server drops it, ``Database.transact`` retries on a new one."""
    def checkin(_dbapi_connection, record):
        record.info['idle_since'] = time.monotonic()

    def checkout(dbapi_connection, record, _proxy):
        now = time.monotonic()
        if now - record.info.get('idle_since', now) < after:
            return  # in use lately, or new (the record's info goes with its connection)
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool replaces the connection and tries again.
            raise DisconnectionError(str(exc)) from exc

    event.listen(engine, 'checkin', checkin)
    event.listen(engine, 'checkout', checkout)


def _sqlite_connect(dbapi_connection, _record):
    # Let SQLAlchemy's begin event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute('PRAGMA journal_mode=WAL')
    cursor.execute('PRAGMA synchronous=NORMAL')
    cursor.execute('PRAGMA foreign_keys=ON')
    cursor.execute('PRAGMA busy_timeout=%d' % int(SQLITE_BUSY_TIMEOUT * 1000))
    cursor.close()


def _sqlite_begin(conn):
    if conn.get_execution_options().get('gpuaas_write'):
        conn.exec_driver_sql('BEGIN IMMEDIATE')
    else:
        conn.exec_driver_sql('BEGIN')
