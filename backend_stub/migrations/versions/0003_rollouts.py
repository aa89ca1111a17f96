"""rollouts: one artifact to many devices across bridges (additive: two new tables)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:45:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('compilation_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['compilation_id'], ['compilations.id'], name=op.f('fk_rollouts_compilation_id_compilations'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts'))
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_compilation_id'), ['compilation_id'], unique=False)

    op.create_table('rollout_targets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('wave', sa.Integer(), nullable=False),
    sa.Column('bridge_id', sa.Integer(), nullable=True),
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=True),
    sa.Column('note', sa.String(length=512), nullable=True),
    sa.ForeignKeyConstraint(['bridge_id'], ['bridges.id'], name=op.f('fk_rollout_targets_bridge_id_bridges'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_rollout_targets_deployment_id_deployments'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_targets_rollout_id_rollouts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollout_targets')),
    sa.UniqueConstraint('rollout_id', 'position', name=op.f('uq_rollout_targets_rollout_id'))
    )
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_targets_deployment_id'), ['deployment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollout_targets_rollout_id'), ['rollout_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_targets_rollout_id'))
        batch_op.drop_index(batch_op.f('ix_rollout_targets_deployment_id'))
    op.drop_table('rollout_targets')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_compilation_id'))
    op.drop_table('rollouts')
