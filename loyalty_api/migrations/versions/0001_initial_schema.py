"""Initial schema: program, API keys, members and balances, ledger and lots, purchases,
refunds, events, adjustments, rules and their versions, rule usage, tiers.

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 11:05:07.188575

"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    op.create_table('program',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('pending_days', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('expiry_mode', sa.String(length=16), nullable=False),
    sa.Column('expiry_months', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tier_window_months', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tier_metric', sa.String(length=16), nullable=False),
    sa.Column('negative_balance', sa.String(length=16), nullable=False),
    sa.Column('referral_min_purchase', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('referral_window_days', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('referral_max_per_referrer', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('rules_revision', sa.String(length=26), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('id = 1', name=op.f('ck_program_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_program'))
    )
    op.create_table('rules',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('version', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('trigger', sa.String(length=120), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('priority', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rules'))
    )
    op.create_table('tiers',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('rank', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('threshold', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('multiplier', sa.Numeric(precision=8, scale=4), nullable=False),
    sa.Column('benefits', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tiers')),
    sa.UniqueConstraint('code', name=op.f('uq_tiers_code')),
    sa.UniqueConstraint('rank', name=op.f('uq_tiers_rank'))
    )
    op.create_table('members',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('birthdate', sa.Date(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('tier_id', sa.String(length=26), nullable=True),
    sa.Column('referral_code', sa.String(length=32), nullable=False),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('stripe_customer_id', sa.String(length=255), nullable=True),
    sa.Column('enrolled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_activity_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tier_id'], ['tiers.id'], name=op.f('fk_members_tier_id_tiers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_members')),
    sa.UniqueConstraint('external_id', name=op.f('uq_members_external_id')),
    sa.UniqueConstraint('referral_code', name=op.f('uq_members_referral_code')),
    sa.UniqueConstraint('stripe_customer_id', name=op.f('uq_members_stripe_customer_id'))
    )
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_members_email'), ['email'], unique=False)

    op.create_table('rule_versions',
    sa.Column('rule_id', sa.String(length=26), nullable=False),
    sa.Column('version', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('definition', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['rule_id'], ['rules.id'], name=op.f('fk_rule_versions_rule_id_rules')),
    sa.PrimaryKeyConstraint('rule_id', 'version', name=op.f('pk_rule_versions'))
    )
    op.create_table('adjustments',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('adjustment_id', sa.String(length=200), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_adjustments_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adjustments')),
    sa.UniqueConstraint('adjustment_id', name=op.f('uq_adjustments_adjustment_id'))
    )
    op.create_table('events',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('attributes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_events_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_events_event_id'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_member_id'), ['member_id'], unique=False)

    op.create_table('member_balances',
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('available', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('pending', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('lifetime_earned', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.CheckConstraint('lifetime_earned >= 0', name=op.f('ck_member_balances_lifetime_not_negative')),
    sa.CheckConstraint('pending >= 0', name=op.f('ck_member_balances_pending_not_negative')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_member_balances_member_id_members')),
    sa.PrimaryKeyConstraint('member_id', name=op.f('pk_member_balances'))
    )
    op.create_table('point_lots',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('source_type', sa.String(length=32), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('remaining', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('remaining >= 0 AND remaining <= points', name=op.f('ck_point_lots_remaining_in_range')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_point_lots_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_point_lots'))
    )
    with op.batch_alter_table('point_lots', schema=None) as batch_op:
        batch_op.create_index('ix_point_lots_member_spend_order', ['member_id', 'status', 'expires_at', 'id'], unique=False)
        batch_op.create_index('ix_point_lots_status_available_at', ['status', 'available_at'], unique=False)

    op.create_table('rule_usage',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('rule_id', sa.String(length=26), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('count', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_rule_usage_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rule_usage')),
    sa.UniqueConstraint('member_id', 'rule_id', 'period_start', name='uq_rule_usage_key')
    )
    op.create_table('ledger_entries',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('lot_id', sa.String(length=26), nullable=True),
    sa.Column('source_type', sa.String(length=32), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('rule_id', sa.String(length=26), nullable=True),
    sa.Column('rule_version', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['lot_id'], ['point_lots.id'], name=op.f('fk_ledger_entries_lot_id_point_lots')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_ledger_entries_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_entries_member_id_id', ['member_id', 'id'], unique=False)

    op.create_table('purchases',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('transaction_id', sa.String(length=200), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('total', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=True),
    sa.Column('store_id', sa.String(length=200), nullable=True),
    sa.Column('items', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('lot_id', sa.String(length=26), nullable=True),
    sa.Column('refunded_amount', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('reversed_points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['lot_id'], ['point_lots.id'], name=op.f('fk_purchases_lot_id_point_lots')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_purchases_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purchases')),
    sa.UniqueConstraint('transaction_id', name=op.f('uq_purchases_transaction_id'))
    )
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.create_index('ix_purchases_member_id_occurred_at', ['member_id', 'occurred_at'], unique=False)

    op.create_table('lot_allocations',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('lot_id', sa.String(length=26), nullable=False),
    sa.Column('entry_id', sa.String(length=26), nullable=False),
    sa.Column('points', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['entry_id'], ['ledger_entries.id'], name=op.f('fk_lot_allocations_entry_id_ledger_entries')),
    sa.ForeignKeyConstraint(['lot_id'], ['point_lots.id'], name=op.f('fk_lot_allocations_lot_id_point_lots')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_lot_allocations_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lot_allocations'))
    )
    with op.batch_alter_table('lot_allocations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lot_allocations_entry_id'), ['entry_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_lot_allocations_lot_id'), ['lot_id'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('refund_id', sa.String(length=200), nullable=False),
    sa.Column('purchase_id', sa.String(length=26), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=False),
    sa.Column('amount', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('points_reversed', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_refunds_member_id_members')),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_refunds_purchase_id_purchases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('refund_id', name=op.f('uq_refunds_refund_id'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_purchase_id'), ['purchase_id'], unique=False)


    # The one program row every deployment starts with (defaults mirror the model's).
    program = sa.table(
        "program", sa.column("id", sa.Integer), sa.column("currency", sa.String),
        sa.column("pending_days", sa.Integer), sa.column("expiry_mode", sa.String),
        sa.column("expiry_months", sa.Integer), sa.column("tier_window_months", sa.Integer),
        sa.column("tier_metric", sa.String), sa.column("negative_balance", sa.String),
        sa.column("referral_min_purchase", sa.Integer), sa.column("referral_window_days", sa.Integer),
        sa.column("referral_max_per_referrer", sa.Integer), sa.column("rules_revision", sa.String),
    )
    op.bulk_insert(program, [{
        "id": 1, "currency": "EUR", "pending_days": 0, "expiry_mode": "none", "expiry_months": 0,
        "tier_window_months": 12, "tier_metric": "points", "negative_balance": "forbid",
        "referral_min_purchase": 0, "referral_window_days": 30, "referral_max_per_referrer": 100,
        "rules_revision": "0",
    }])

def downgrade():
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_purchase_id'))

    op.drop_table('refunds')
    with op.batch_alter_table('lot_allocations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lot_allocations_lot_id'))
        batch_op.drop_index(batch_op.f('ix_lot_allocations_entry_id'))

    op.drop_table('lot_allocations')
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_purchases_member_id_occurred_at')

    op.drop_table('purchases')
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_entries_member_id_id')

    op.drop_table('ledger_entries')
    op.drop_table('rule_usage')
    with op.batch_alter_table('point_lots', schema=None) as batch_op:
        batch_op.drop_index('ix_point_lots_status_available_at')
        batch_op.drop_index('ix_point_lots_member_spend_order')

    op.drop_table('point_lots')
    op.drop_table('member_balances')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_member_id'))

    op.drop_table('events')
    op.drop_table('adjustments')
    op.drop_table('rule_versions')
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_members_email'))

    op.drop_table('members')
    op.drop_table('tiers')
    op.drop_table('rules')
    op.drop_table('program')
    op.drop_table('api_keys')
