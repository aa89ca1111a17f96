"""on-device agreement and per-label metrics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 08:30:00

* ``trainings.per_label``, ``compilations.per_label``: confusion matrix and per-label
  precision and recall on the validation split (float; float and int8).
* ``compilations.vectors``: held-out input vectors drawn evenly across labels, with their
  expected labels and the host int8 model's outputs.
* ``deployments.vectors``: the vectors a deployment sent; ``deployments.agreement``: what the
  board answered for them against the host int8 model.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('trainings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('per_label', sa.JSON(), nullable=True))
    with op.batch_alter_table('compilations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('per_label', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('vectors', sa.JSON(), nullable=True))
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vectors', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('agreement', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_column('agreement')
        batch_op.drop_column('vectors')
    with op.batch_alter_table('compilations', schema=None) as batch_op:
        batch_op.drop_column('vectors')
        batch_op.drop_column('per_label')
    with op.batch_alter_table('trainings', schema=None) as batch_op:
        batch_op.drop_column('per_label')
