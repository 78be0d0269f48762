"""Burn: rewards (with their tier restriction) and redemptions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:00:00

"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade():
    op.create_table('rewards',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('cost_points', BIGINT, nullable=False),
    sa.Column('stock', BIGINT, nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('cost_points > 0', name=op.f('ck_rewards_cost_points_positive')),
    sa.CheckConstraint('stock IS NULL OR stock >= 0', name=op.f('ck_rewards_stock_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rewards')),
    sa.UniqueConstraint('code', name=op.f('uq_rewards_code'))
    )
    op.create_table('reward_tiers',
    sa.Column('reward_id', sa.String(length=26), nullable=False),
    sa.Column('tier_code', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['reward_id'], ['rewards.id'], name=op.f('fk_reward_tiers_reward_id_rewards'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('reward_id', 'tier_code', name=op.f('pk_reward_tiers'))
    )
    op.create_table('redemptions',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('redemption_id', sa.String(length=200), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('points', BIGINT, nullable=False),
    sa.Column('value', BIGINT, nullable=False),
    sa.Column('reward_id', sa.String(length=26), nullable=True),
    sa.Column('rule_id', sa.String(length=26), nullable=True),
    sa.Column('rule_version', BIGINT, nullable=True),
    sa.Column('order_total', BIGINT, nullable=True),
    sa.Column('channel', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('entry_id', sa.String(length=26), nullable=False),
    sa.Column('cancel_entry_id', sa.String(length=26), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', JSON, nullable=False),
    sa.Column('cancel_response', JSON, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('points > 0', name=op.f('ck_redemptions_points_positive')),
    sa.ForeignKeyConstraint(['cancel_entry_id'], ['ledger_entries.id'],
                            name=op.f('fk_redemptions_cancel_entry_id_ledger_entries')),
    sa.ForeignKeyConstraint(['entry_id'], ['ledger_entries.id'], name=op.f('fk_redemptions_entry_id_ledger_entries')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_redemptions_member_id_members')),
    sa.ForeignKeyConstraint(['reward_id'], ['rewards.id'], name=op.f('fk_redemptions_reward_id_rewards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_redemptions')),
    sa.UniqueConstraint('redemption_id', name=op.f('uq_redemptions_redemption_id'))
    )
    with op.batch_alter_table('redemptions', schema=None) as batch_op:
        batch_op.create_index('ix_redemptions_member_id_id', ['member_id', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('redemptions', schema=None) as batch_op:
        batch_op.drop_index('ix_redemptions_member_id_id')

    op.drop_table('redemptions')
    op.drop_table('reward_tiers')
    op.drop_table('rewards')
