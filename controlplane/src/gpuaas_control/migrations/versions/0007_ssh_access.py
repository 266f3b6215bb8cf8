# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each allocation's SSH access from outside the node.

``access`` is what the node reports once the slot runs ({ssh_host, ssh_port, user}: the
slot's public SSH port, forwarded to its port 22); ``ssh_source_cidrs`` the IPv4 networks the
tenant let reach it (empty: any). Allocations made before have neither (NULL): no access is
known for them and their ports (none were opened) answer any source.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('allocations') as batch:
        batch.add_column(sa.Column('access', sa.JSON, nullable=True))
        batch.add_column(sa.Column('ssh_source_cidrs', sa.JSON, nullable=True))


def downgrade():
    with op.batch_alter_table('allocations') as batch:
        batch.drop_column('ssh_source_cidrs')
        batch.drop_column('access')
