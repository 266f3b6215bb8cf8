# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuaas db upgrade``: Alembic, configured in code (no alembic.ini to look for)."""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from gpuaas_control.db import Database

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'migrations')


def alembic_config(db: Database, connection=None) -> Config:
    config = Config()
    config.set_main_option('script_location', MIGRATIONS)
    config.set_main_option('sqlalchemy.url',
                           db.url.render_as_string(hide_password=False).replace('%', '%%'))
    if connection is not None:
        config.attributes['connection'] = connection
    return config


def upgrade(db: Database, revision: str = 'head'):
    if db.backend == 'sqlite':
        path = db.url.database
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    with db.engine.begin() as connection:
        command.upgrade(alembic_config(db, connection), revision)


def downgrade(db: Database, revision: str):
    with db.engine.begin() as connection:
        command.downgrade(alembic_config(db, connection), revision)


def status(db: Database) -> tuple[str | None, str]:
    """(the database's revision, the newest revision this code knows)."""
    head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
    with db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head
