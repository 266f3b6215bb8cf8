# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Token lifetimes: ``api_tokens.expires_at``, ``last_used_at`` and ``replaced_by``.

``expires_at`` is when a token stops working (NULL: never); ``last_used_at`` when it was
last seen, to the minute (service.LAST_USED_EVERY); ``replaced_by`` the token that rotation
made in its place.

Tokens that exist when this runs keep working as they did: no expiry (NULL) and never seen
(NULL). Giving them a lifetime here would lock out every client at a time nobody chose; an
operator rotates them (``gpuaas token rotate``) to put them on a lifetime, and
``gpuaas token list`` shows which have none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from gpuaas_control.models import UTCDateTime

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # SQLite adds a column with a foreign key only by rebuilding the table (batch mode).
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('expires_at', UTCDateTime, nullable=True))
        batch.add_column(sa.Column('last_used_at', UTCDateTime, nullable=True))
        batch.add_column(sa.Column('replaced_by', sa.Integer, nullable=True))
        batch.create_foreign_key('api_tokens_replaced_by_fkey', 'api_tokens', ['replaced_by'], ['id'])


def downgrade():
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_constraint('api_tokens_replaced_by_fkey', type_='foreignkey')
        batch.drop_column('replaced_by')
        batch.drop_column('last_used_at')
        batch.drop_column('expires_at')
