"""Stripe: the events received from the webhook and the refunds they reported.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00:00

"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade():
    op.create_table('stripe_events',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('payload', JSON, nullable=True),
    sa.Column('livemode', sa.Boolean(), nullable=False),
    sa.Column('member_id', sa.String(length=26), nullable=True),
    sa.Column('payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('refund_id', sa.String(length=255), nullable=True),
    sa.Column('transaction_id', sa.String(length=200), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_stripe_events_member_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_stripe_events_event_id'))
    )
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.create_index('ix_stripe_events_status_id', ['status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_stripe_events_payment_intent_id'), ['payment_intent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_stripe_events_refund_id'), ['refund_id'], unique=False)

    op.create_table('stripe_refunds',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('refund_id', sa.String(length=255), nullable=False),
    sa.Column('payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('charge_id', sa.String(length=255), nullable=True),
    sa.Column('amount', BIGINT, nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('points_reversed', BIGINT, nullable=True),
    sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('points_restored', BIGINT, nullable=True),
    sa.Column('restored_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_refunds')),
    sa.UniqueConstraint('refund_id', name=op.f('uq_stripe_refunds_refund_id'))
    )
    with op.batch_alter_table('stripe_refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stripe_refunds_payment_intent_id'), ['payment_intent_id'], unique=False)


def downgrade():
    with op.batch_alter_table('stripe_refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stripe_refunds_payment_intent_id'))

    op.drop_table('stripe_refunds')
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stripe_events_refund_id'))
        batch_op.drop_index(batch_op.f('ix_stripe_events_payment_intent_id'))
        batch_op.drop_index('ix_stripe_events_status_id')

    op.drop_table('stripe_events')
