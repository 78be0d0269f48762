"""Tiers, referrals and jobs: tier history, referrals, job runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 14:00:00

"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade():
    op.create_table('tier_changes',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('from_code', sa.String(length=64), nullable=True),
    sa.Column('from_name', sa.String(length=200), nullable=True),
    sa.Column('to_code', sa.String(length=64), nullable=True),
    sa.Column('to_name', sa.String(length=200), nullable=True),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('qualifying', BIGINT, nullable=False),
    sa.Column('metric', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_tier_changes_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_changes'))
    )
    with op.batch_alter_table('tier_changes', schema=None) as batch_op:
        batch_op.create_index('ix_tier_changes_member_id_id', ['member_id', 'id'], unique=False)

    op.create_table('referrals',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('referrer_id', sa.String(length=26), nullable=False),
    sa.Column('referee_id', sa.String(length=26), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('transaction_id', sa.String(length=200), nullable=True),
    sa.Column('referee_lot_id', sa.String(length=26), nullable=True),
    sa.Column('referrer_lot_id', sa.String(length=26), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['referee_id'], ['members.id'], name=op.f('fk_referrals_referee_id_members')),
    sa.ForeignKeyConstraint(['referee_lot_id'], ['point_lots.id'],
                            name=op.f('fk_referrals_referee_lot_id_point_lots')),
    sa.ForeignKeyConstraint(['referrer_id'], ['members.id'], name=op.f('fk_referrals_referrer_id_members')),
    sa.ForeignKeyConstraint(['referrer_lot_id'], ['point_lots.id'],
                            name=op.f('fk_referrals_referrer_lot_id_point_lots')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referrals')),
    sa.UniqueConstraint('referee_id', name=op.f('uq_referrals_referee_id'))
    )
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.create_index('ix_referrals_referrer_id_id', ['referrer_id', 'id'], unique=False)
        batch_op.create_index('ix_referrals_status_expires_at', ['status', 'expires_at'], unique=False)

    op.create_table('job_runs',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('runner', sa.String(length=200), nullable=False),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('counts', JSON, nullable=False),
    sa.Column('findings', JSON, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_runs'))
    )
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.create_index('ix_job_runs_name_id', ['name', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_job_runs_name_id')

    op.drop_table('job_runs')
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.drop_index('ix_referrals_status_expires_at')
        batch_op.drop_index('ix_referrals_referrer_id_id')

    op.drop_table('referrals')
    with op.batch_alter_table('tier_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_tier_changes_member_id_id')

    op.drop_table('tier_changes')
