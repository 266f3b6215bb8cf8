# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migrations create exactly the models' schema, and its safety nets hold on their own."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import IntegrityError, DBAPIError

from gpuaas_control import audit, migrate, service
from gpuaas_control.db import Database, DatabaseError
from gpuaas_control.models import Allocation, ApiToken, Base, UTCDateTime, utcnow
from tests.controlplane.conftest import approved_map
from tests.controlplane.helpers import OPERATOR, add_node, add_tenant, request, tenant


def test_migrations_match_the_models(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert migrate.status(db) == ('0013', '0013')


def test_upgrade_is_idempotent_and_downgrade_empties(db):
    migrate.upgrade(db)
    migrate.downgrade(db, 'base')
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is None
    migrate.upgrade(db)
    assert migrate.status(db) == ('0013', '0013')


def test_0003_keeps_the_tokens_of_0002_working_without_an_expiry(db):
    """Tokens made before 0003 keep working: no expiry, never seen; rotation works on them;
    a downgrade keeps them too."""
    migrate.downgrade(db, '0002')
    db.transact(service.set_quota, OPERATOR, 'acme', 3)
    created = utcnow() - dt.timedelta(days=400)
    # Random, as tokens are: a process remembers the tokens whose last use it records.
    old = {number: 'gpuaas_old%d_%s' % (number, secrets.token_hex(8)) for number in (1, 2)}
    with db.write() as session:
        for number, role, tenant_id in ((1, 'operator', None), (2, 'tenant', 'acme')):
            session.execute(text(
                'INSERT INTO api_tokens (token_hash, role, tenant_id, name, created_at) '
                'VALUES (:hash, :role, :tenant, :name, :created)').bindparams(
                    bindparam('created', type_=UTCDateTime)), {
                    'hash': service.hash_token(old[number]), 'role': role,
                    'tenant': tenant_id, 'name': 'old%d' % number, 'created': created})
    migrate.upgrade(db)
    current, head = migrate.status(db)
    assert current == head
    with db.read() as session:
        rows = session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all()
        assert [(t.name, t.role, t.tenant_id, t.expires_at, t.last_used_at, t.replaced_by)
                for t in rows] == [('old1', 'operator', None, None, None, None),
                                   ('old2', 'tenant', 'acme', None, None, None)]
        assert abs(rows[0].created_at - created) < dt.timedelta(seconds=1)
        who, mark = service.authenticate(session, old[2])
        assert (who.name, who.role, who.tenant, mark) == ('token:2:old2', 'tenant', 'acme', 2)
    _token, new, rotated = db.transact(service.rotate_token, OPERATOR, 1, 0, 30)
    assert (rotated.replaced_by, new.name, new.role) == (new.id, 'old1', 'operator')
    migrate.downgrade(db, '0002')
    with db.read() as session:
        assert session.execute(text('SELECT name FROM api_tokens ORDER BY id')).scalars().all() == \
            ['old1', 'old2', 'old1']


@pytest.mark.parametrize('url', ['sqlite://', 'sqlite:///:memory:', 'mysql://x/y', 'not a url'])
def test_unusable_urls_are_refused(url):
    with pytest.raises(DatabaseError):
        Database(url)


def test_one_active_allocation_per_slot_even_behind_the_code(db, hgx_discovery_factory):
    discovery = hgx_discovery_factory('n1')
    add_node(db, discovery, approved_map(discovery))
    add_tenant(db, 'acme')
    allocation, _created = db.transact(service.reserve, tenant('acme'), request())
    now = utcnow()
    clone = dict(id='alloc-' + 'f' * 20, tenant_id='acme', slot_id=allocation.slot_id,
                 node_id='n1', state='running', image='x', image_checksum='y', image_format='raw',
                 ssh_keys=[], vcpus=1, memory_mib=512, disk_gib=1, request={}, mac='m',
                 timings={}, created_at=now, updated_at=now)
    with pytest.raises(IntegrityError):
        with db.write() as session:
            session.add(Allocation(**clone))
    # A finished allocation on the same slot is history, not a conflict.
    with db.write() as session:
        session.add(Allocation(**dict(clone, state='released')))


def test_the_database_refuses_to_change_or_remove_audit_entries(db):
    db.transact(service.set_quota, OPERATOR, 'acme', 3)
    for statement in ("UPDATE audit_log SET actor = 'mallory'", 'DELETE FROM audit_log'):
        with pytest.raises(DBAPIError, match='append-only'):
            with db.write() as session:
                session.execute(text(statement))
    with db.read() as session:
        assert audit.verify(session).ok


def test_times_are_utc_on_every_backend(db):
    db.transact(service.set_quota, OPERATOR, 'acme', 3)
    with db.read() as session:
        entry = session.execute(text('SELECT 1')).scalar()
        assert entry == 1
        tenant_row = session.get(service.Tenant, 'acme')
        assert tenant_row.created_at.tzinfo == dt.timezone.utc
