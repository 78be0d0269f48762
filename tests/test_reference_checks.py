"""The ledger's references hold: lots, ledger entries and purchases name a member and a lot
that exist, and what they name is neither deleted nor renamed under them."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, insert, text, update
from sqlalchemy.exc import IntegrityError

from loyalty_api.ids import new_id
from loyalty_api.ledger.models import LedgerEntry, PointLot
from loyalty_api.members.models import Member
from loyalty_api.purchases.models import Purchase

from .helpers import buy, make_member, make_rule

NOW = datetime(2026, 3, 10, 11, tzinfo=UTC)


def _entry(member_id, lot_id=None, **fields):
    return {"id": new_id(), "member_id": member_id, "type": "adjust", "points": 5, "lot_id": lot_id,
            "source_type": "adjustment", "source_id": new_id(), "description": "test", "created_at": NOW, **fields}


def _lot(member_id):
    return {"id": new_id(), "member_id": member_id, "source_type": "adjustment", "source_id": new_id(),
            "points": 5, "remaining": 5, "status": "available", "occurred_at": NOW, "available_at": NOW,
            "created_at": NOW}


@pytest.fixture
def earned(api, session):
    """A member with a purchase: a lot, its ledger entries and the purchase refer to it."""
    make_rule(api)
    member = make_member(api)
    buy(api, member["id"])
    purchase = session.query(Purchase).one()
    return member["id"], purchase.lot_id


def refused(session, statement, params=None, constraint=None):
    """Run the statement in a savepoint; assert that a reference check refused it."""
    savepoint = session.begin_nested()
    with pytest.raises(IntegrityError) as raised:
        session.execute(statement, params)
        session.flush()
    savepoint.rollback()
    if session.bind.dialect.name == "postgresql":
        assert raised.value.orig.sqlstate == "23503"
        if constraint:
            assert raised.value.orig.diag.constraint_name == constraint


def test_rows_naming_what_exists_go_in_many_at_once(earned, session):
    member_id, lot_id = earned
    lots = [_lot(member_id) for _ in range(3)]
    session.execute(insert(PointLot), lots)
    session.execute(insert(LedgerEntry), [_entry(member_id, lot["id"]) for lot in lots] + [_entry(member_id)])
    session.flush()
    assert session.query(LedgerEntry).filter(LedgerEntry.member_id == member_id).count() >= 5


def test_inserts_naming_no_member_or_no_lot_are_refused(earned, session):
    member_id, lot_id = earned
    refused(session, insert(LedgerEntry), [_entry(member_id), _entry("nobody")],
            "fk_ledger_entries_member_id_members")
    refused(session, insert(LedgerEntry), [_entry(member_id, lot_id), _entry(member_id, "no-lot")],
            "fk_ledger_entries_lot_id_point_lots")
    refused(session, insert(PointLot), [_lot("nobody")], "fk_point_lots_member_id_members")
    purchase = {"id": new_id(), "transaction_id": "t-new", "member_id": member_id, "occurred_at": NOW,
                "currency": "EUR", "total": 100, "points": 0, "lot_id": "no-lot", "refunded_amount": 0,
                "reversed_points": 0, "request_hash": "x", "response": {}, "created_at": NOW}
    refused(session, insert(Purchase), [purchase], "fk_purchases_lot_id_point_lots")
    refused(session, insert(Purchase), [{**purchase, "member_id": "nobody", "lot_id": None}],
            "fk_purchases_member_id_members")


def test_changing_a_reference_to_nothing_is_refused(earned, session):
    member_id, lot_id = earned
    refused(session, update(LedgerEntry).where(LedgerEntry.member_id == member_id).values(member_id="nobody"),
            constraint="fk_ledger_entries_member_id_members")
    refused(session, update(Purchase).values(lot_id="no-lot"), constraint="fk_purchases_lot_id_point_lots")
    refused(session, update(PointLot).values(member_id="nobody"), constraint="fk_point_lots_member_id_members")
    # Pointing at another row that exists is fine.
    other = _lot(member_id)
    session.execute(insert(PointLot), [other])
    session.execute(update(Purchase).values(lot_id=other["id"]))
    session.flush()


def test_what_is_referenced_is_neither_deleted_nor_renamed(earned, session):
    member_id, lot_id = earned
    refused(session, delete(PointLot).where(PointLot.id == lot_id))
    refused(session, update(PointLot).where(PointLot.id == lot_id).values(id="renamed"))
    refused(session, text("DELETE FROM members WHERE id = :id"), {"id": member_id})
    refused(session, update(Member).where(Member.id == member_id).values(id="renamed"))
    # A lot nothing refers to can go.
    spare = _lot(member_id)
    session.execute(insert(PointLot), [spare])
    session.execute(delete(PointLot).where(PointLot.id == spare["id"]))
    session.flush()
