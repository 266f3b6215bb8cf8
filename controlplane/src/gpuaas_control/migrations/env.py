# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Alembic environment: online migrations on the connection ``gpuaas db upgrade`` passes."""

from alembic import context
from sqlalchemy import create_engine

from gpuaas_control.models import Base

config = context.config
connection = config.attributes.get('connection')


def _run(conn):
    context.configure(connection=conn, target_metadata=Base.metadata,
                      render_as_batch=conn.dialect.name == 'sqlite')
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option('sqlalchemy.url'),
                      target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option('sqlalchemy.url'))
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
