"""Stripe webhook deliveries: verified, recorded once per event id, and turned into purchases and
refunds through the purchases services.

A payment (payment_intent.succeeded, a paid checkout session) becomes the purchase
`stripe:<payment intent id>`, so a payment that a checkout session and its payment intent both
report counts once. A Stripe refund is merged into a `stripe_refunds` row whose status only moves
forward (pending → succeeded → failed/canceled); the row is then settled against the purchase:
a succeeded refund is reversed once (keyed by the Stripe refund id), a failed refund that had been
reversed is given back once. Deliveries in any order, or twice, end in the same balance.
"""

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from marshmallow import ValidationError
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from ...errors import DomainError, NotFound
from ...idempotency import Outcome
from ...ids import new_id
from ...ledger.services import Credit, credit_points, lock_balance
from ...members.models import Member
from ...pagination import Page, decode_cursor, encode_cursor
from ...program.services import get_program
from ...purchases.models import Purchase
from ...purchases.schemas import PurchaseItemSchema
from ...purchases.services import create_purchase, create_refund
from .models import StripeEvent, StripeRefund

if TYPE_CHECKING:
    import stripe

# Stripe's own default (stripe.Webhook.DEFAULT_TOLERANCE, a test keeps them equal): a signature
# older than five minutes is refused (replay protection).
DEFAULT_TOLERANCE = 300
CHANNEL = "online"

PAYMENT_EVENTS = frozenset({
    "payment_intent.succeeded", "checkout.session.completed", "checkout.session.async_payment_succeeded"})
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"})
CHARGE_REFUNDED = "charge.refunded"
HANDLED_EVENTS = PAYMENT_EVENTS | REFUND_EVENTS | {CHARGE_REFUNDED}

# A refund's status only moves forward; failed and canceled are final and mean "no money back".
_REFUND_RANK = {"pending": 0, "requires_action": 0, "succeeded": 1, "failed": 2, "canceled": 2}
_NO_MONEY_BACK = frozenset({"failed", "canceled"})


class InvalidSignature(DomainError):
    status, code, title = 400, "invalid_signature", "The Stripe-Signature header does not verify this body"


class InvalidStripeEvent(DomainError):
    status, code, title = 400, "invalid_stripe_event", "The body is not a Stripe event"


class StripeNotConfigured(DomainError):
    status, code, title = 503, "stripe_not_configured", "No Stripe webhook secret is configured"


class EventNotReplayable(DomainError):
    status, code, title = 409, "event_not_replayable", "Only an unmatched Stripe event can be replayed"


# --- verification --------------------------------------------------------------------------

def webhook_secrets(setting: str | None) -> list[str]:
    """Return the endpoint secrets of STRIPE_WEBHOOK_SECRET (comma-separated during a rotation)."""
    return [secret.strip() for secret in (setting or "").split(",") if secret.strip()]


@functools.lru_cache(maxsize=4)
def _client(api_key: str) -> "stripe.StripeClient":
    # Verifying a webhook needs no API call; the key only matters to calls this service never makes.
    # stripe is imported on the first webhook: its ~900 modules are ~6 MB in every web worker.
    import stripe

    return stripe.StripeClient(api_key or "sk_unused_for_webhook_verification")


def verify_event(payload: bytes, signature: str | None, secrets: Sequence[str], *, api_key: str = "",
                 tolerance: int = DEFAULT_TOLERANCE) -> dict:
    """Verify the raw body against its Stripe-Signature with any configured secret; return the event.

    Raises StripeNotConfigured without a secret, InvalidSignature when no secret verifies the
    body within the timestamp tolerance, InvalidStripeEvent for a signed body that is no event.
    """
    if not secrets:
        raise StripeNotConfigured("Set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret")
    client = _client(api_key)
    from stripe import SignatureVerificationError

    failure: SignatureVerificationError | None = None
    for secret in secrets:
        try:
            client.construct_event(payload, signature, secret, tolerance)
            break
        except SignatureVerificationError as err:
            failure = err
        except ValueError as err:  # not UTF-8, not JSON, or a thin (v2) event notification
            raise InvalidSignature("The body is not a signed Stripe event") from err
    else:
        raise InvalidSignature(_signature_failure(failure))
    event = json.loads(payload)
    if not _is_event(event):
        raise InvalidStripeEvent("A Stripe event has an id, a type, created and data.object")
    return event


def _signature_failure(err: "stripe.SignatureVerificationError | None") -> str:
    message = str(getattr(err, "user_message", None) or err or "")
    if "tolerance" in message:
        return "The Stripe-Signature timestamp is too old (outside the tolerance)"
    if "No Stripe-Signature" in message:
        return "The Stripe-Signature header is missing"
    return "No configured secret verifies the Stripe-Signature of this body"


def _is_event(event) -> bool:
    return (isinstance(event, dict) and isinstance(event.get("id"), str) and 0 < len(event["id"]) <= 255
            and isinstance(event.get("type"), str) and 0 < len(event["type"]) <= 100
            and isinstance(event.get("created"), int) and not isinstance(event.get("created"), bool)
            and 0 <= event["created"] < 10**11  # seconds; beyond it is no date Stripe sends
            and isinstance(event.get("data"), dict) and isinstance(event["data"].get("object"), dict))


# --- receiving -----------------------------------------------------------------------------

def receive_event(session: Session, event: Mapping, now: datetime) -> Outcome:
    """Record a verified event once and apply it; a known event id replays what it did."""
    stored = session.execute(select(StripeEvent).where(StripeEvent.event_id == event["id"])).scalar()
    if stored is not None:
        return Outcome(event_view(stored), replayed=True)
    row = StripeEvent(
        id=new_id(), event_id=event["id"], type=event["type"], status="ignored", reason=None,
        # Unhandled types are kept as a mark (applied once) without their body.
        payload=dict(event) if event["type"] in HANDLED_EVENTS else None,
        livemode=bool(event.get("livemode")), occurred_at=datetime.fromtimestamp(event["created"], UTC),
        received_at=now, updated_at=now)
    session.add(row)
    session.flush()
    _apply(session, row, event, now)
    session.flush()
    return Outcome(event_view(row))


def replay_unmatched(session: Session, event_id: str, now: datetime) -> dict:
    """Apply an unmatched payment again (after its customer was linked to a member).

    Raises NotFound for an unknown event id and EventNotReplayable when the event is not
    unmatched. An event still unmatched stays so, with the reason.
    """
    row = session.execute(select(StripeEvent).where(StripeEvent.event_id == event_id)
                          .with_for_update()).scalar()
    if row is None:
        raise NotFound("No such Stripe event")
    if row.status != "unmatched":
        raise EventNotReplayable(f"Stripe event {event_id} is {row.status}; only unmatched events are replayed")
    _apply(session, row, row.payload, now)
    row.updated_at = now
    session.flush()
    return event_view(row)


def list_events(session: Session, status: str | None, limit: int, cursor: str | None) -> Page:
    """Return stored Stripe events, newest first, optionally of one status."""
    query = select(StripeEvent).order_by(StripeEvent.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(StripeEvent.status == status)
    if cursor:
        query = query.where(StripeEvent.id < decode_cursor(cursor))
    rows = session.execute(query).scalars().all()
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return Page([event_view(row) for row in rows[:limit]], next_cursor)


def event_view(row: StripeEvent) -> dict:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "type": row.type,
        "status": row.status,
        "reason": row.reason,
        "member_id": row.member_id,
        "payment_intent_id": row.payment_intent_id,
        "refund_id": row.refund_id,
        "transaction_id": row.transaction_id,
        "occurred_at": row.occurred_at,
        "received_at": row.received_at,
        "updated_at": row.updated_at,
    }


def _mark(row: StripeEvent, status: str, reason: str | None = None) -> None:
    row.status = status
    row.reason = reason[:500] if reason else None


def _apply(session: Session, row: StripeEvent, event: Mapping, now: datetime) -> None:
    kind, obj = event["type"], event["data"]["object"]
    if kind in PAYMENT_EVENTS:
        _apply_payment(session, row, event, now)
    elif kind in REFUND_EVENTS:
        _apply_refunds(session, row, [obj], now)
    elif kind == CHARGE_REFUNDED:
        refunds = (obj.get("refunds") or {}).get("data") if isinstance(obj.get("refunds"), dict) else None
        if not isinstance(refunds, list) or not refunds:
            # Since API version 2022-11-15 a charge no longer lists its refunds, and the
            # refund ids are what keeps each refund applied once: refund.* events carry them.
            _mark(row, "ignored", "charge.refunded lists no refunds (API version 2022-11-15 or later); "
                                  "refunds are applied from refund.created/refund.updated/refund.failed")
            return
        _apply_refunds(session, row, refunds, now)
    else:
        _mark(row, "ignored", f"event type {kind} is not used by the loyalty program")


# --- payments ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Payment:
    """What a payment event says about one payment, whichever object reported it."""

    payment_intent_id: str
    amount: int
    currency: str
    customer_id: str | None
    metadata: dict
    line_items: list | None
    checkout_session_id: str | None


def transaction_id_for(payment_intent_id: str) -> str:
    """Return the purchase transaction_id of a Stripe payment intent."""
    return f"stripe:{payment_intent_id}"


def _object_id(value) -> str | None:
    """Return the id of a field that is either an id or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _read_payment(event: Mapping) -> tuple[Payment | None, str | None]:
    """Return the payment an event reports, or why it reports none to earn on."""
    obj = event["data"]["object"]
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    if event["type"] == "payment_intent.succeeded":
        amount = obj.get("amount_received") or obj.get("amount")
        return Payment(obj.get("id"), amount, obj.get("currency"), _object_id(obj.get("customer")), metadata,
                       None, None), None
    if event["type"] == "checkout.session.completed" and obj.get("payment_status") != "paid":
        return None, (f"checkout session payment_status is {obj.get('payment_status')}; "
                      "checkout.session.async_payment_succeeded reports the payment")
    payment_intent_id = _object_id(obj.get("payment_intent"))
    if payment_intent_id is None:
        return None, "the checkout session has no payment intent (subscription or free checkout)"
    line_items = obj.get("line_items")
    line_items = line_items.get("data") if isinstance(line_items, dict) else None
    return Payment(payment_intent_id, obj.get("amount_total"), obj.get("currency"),
                   _object_id(obj.get("customer")), metadata, line_items, obj.get("id")), None


def _apply_payment(session: Session, row: StripeEvent, event: Mapping, now: datetime) -> None:
    payment, why_not = _read_payment(event)
    if payment is None:
        _mark(row, "ignored", why_not)
        return
    if not isinstance(payment.payment_intent_id, str) or not payment.payment_intent_id:
        _mark(row, "ignored", "the payment names no payment intent")
        return
    row.payment_intent_id = payment.payment_intent_id
    _lock_payment(session, payment.payment_intent_id)
    transaction_id = transaction_id_for(payment.payment_intent_id)
    existing = session.execute(select(Purchase.member_id).where(Purchase.transaction_id == transaction_id)).first()
    if existing is not None:
        row.member_id, row.transaction_id = existing.member_id, transaction_id
        _mark(row, "applied", f"payment {payment.payment_intent_id} is already the purchase {transaction_id}")
        return
    if not isinstance(payment.amount, int) or isinstance(payment.amount, bool) or payment.amount <= 0:
        _mark(row, "ignored", "nothing was paid")
        return
    currency = payment.currency.upper() if isinstance(payment.currency, str) else None
    program = get_program(session)
    if currency != program.currency:
        _mark(row, "refused", f"currency_mismatch: Stripe reported {currency}, the program's currency is "
                              f"{program.currency}; amounts are never converted")
        return
    member_id, why_not = _find_member(session, payment)
    if member_id is None:
        _mark(row, "unmatched", why_not)
        return
    row.member_id = member_id
    items, items_note = _items(payment)
    body = {
        "transaction_id": transaction_id,
        "member_id": member_id,
        # Stripe's clock, never ahead of ours (a purchase may not lie in the future).
        "occurred_at": min(datetime.fromtimestamp(event["created"], UTC), now),
        "currency": currency,
        "total": payment.amount,
        "channel": CHANNEL,
        "metadata": _purchase_metadata(payment, event),
    }
    if items:
        body["items"] = items
    try:
        with session.begin_nested():
            outcome = create_purchase(session, body, now)
    except DomainError as err:
        _mark(row, "refused", f"{err.code}: {err.detail}")
        return
    row.transaction_id = transaction_id
    _mark(row, "applied", f"{outcome.body['points']} points" + (f"; {items_note}" if items_note else ""))
    # Another report of this payment that found no member (a guest payment intent whose
    # checkout session named the member) is settled by this one: nothing left to replay.
    session.execute(
        update(StripeEvent)
        .where(StripeEvent.payment_intent_id == payment.payment_intent_id, StripeEvent.status == "unmatched",
               StripeEvent.id != row.id)
        .values(status="applied", reason=f"payment recorded by event {row.event_id}", member_id=member_id,
                transaction_id=transaction_id, updated_at=now))
    # Refunds that arrived before their payment were kept; they apply now.
    status, reason = _settle_refunds(session, payment.payment_intent_id, now)
    if status is not None:
        session.execute(
            update(StripeEvent)
            .where(StripeEvent.payment_intent_id == payment.payment_intent_id, StripeEvent.status == "pending",
                   StripeEvent.id != row.id)
            .values(status=status, reason=(reason or f"applied after payment {payment.payment_intent_id}")[:500],
                    member_id=member_id, transaction_id=transaction_id, updated_at=now))


def _find_member(session: Session, payment: Payment) -> tuple[str | None, str]:
    """Return the active-or-not member a payment belongs to, or why none was found.

    Metadata naming a member wins over the customer link: it is what the shop said at checkout.
    """
    tried = []
    metadata = payment.metadata
    lookups = (
        ("loyalty_member_id", Member.id, metadata.get("loyalty_member_id")),
        ("loyalty_external_id", Member.external_id, metadata.get("loyalty_external_id")),
        ("customer", Member.stripe_customer_id, payment.customer_id),
    )
    for name, column, value in lookups:
        if not isinstance(value, str) or not value:
            continue
        member_id = session.execute(select(Member.id).where(column == value)).scalar()
        if member_id is not None:
            return member_id, ""
        tried.append(f"{name} {value}")
    if not tried:
        return None, "the payment names no customer and no loyalty_member_id or loyalty_external_id metadata"
    return None, "no member matches " + ", ".join(tried) + "; link the customer and replay the event"


def _purchase_metadata(payment: Payment, event: Mapping) -> dict:
    metadata = {key[:100]: value for key, value in payment.metadata.items() if key != "loyalty_items"}
    metadata.update({"stripe_payment_intent": payment.payment_intent_id, "stripe_event": event["id"]})
    if payment.customer_id:
        metadata["stripe_customer"] = payment.customer_id
    if payment.checkout_session_id:
        metadata["stripe_checkout_session"] = payment.checkout_session_id
    return metadata


_item_schema = PurchaseItemSchema(many=True)


def _items(payment: Payment) -> tuple[list | None, str | None]:
    """Return the purchase items the payment carries, and a note when they had to be left out.

    Items come from `loyalty_items` metadata (a JSON list of {sku, category?, quantity,
    unit_price}) or from the checkout session's line items when they were expanded; never
    fetched from Stripe. Items that do not add up to the amount paid are left out: the
    payment still earns on its total.
    """
    raw = payment.metadata.get("loyalty_items")
    if raw:
        try:
            items = _item_schema.load(json.loads(raw) if isinstance(raw, str) else raw)
        except (ValueError, ValidationError, TypeError):
            return None, "loyalty_items metadata is not a valid item list; earned on the total"
    elif payment.line_items:
        items = _line_items(payment.line_items)
        if items is None:
            return None, "line items do not split into whole unit prices; earned on the total"
    else:
        return None, None
    if sum(item["quantity"] * item["unit_price"] for item in items) != payment.amount:
        return None, "items do not add up to the amount paid; earned on the total"
    return items, None


def _line_items(line_items: list) -> list | None:
    items = []
    for line in line_items:
        if not isinstance(line, dict):
            return None
        quantity, amount = line.get("quantity") or 1, line.get("amount_total")
        if not isinstance(quantity, int) or not isinstance(amount, int) or quantity <= 0 or amount % quantity:
            return None
        price = line.get("price") if isinstance(line.get("price"), dict) else {}
        product = price.get("product")
        sku = _object_id(product) or _object_id(price) or line.get("id")
        if not isinstance(sku, str):
            return None
        item = {"sku": sku[:100], "quantity": quantity, "unit_price": amount // quantity}
        category = (product.get("metadata") or {}).get("category") if isinstance(product, dict) else None
        if isinstance(category, str):
            item["category"] = category[:100]
        items.append(item)
    return items


# --- refunds -------------------------------------------------------------------------------

def _lock_payment(session: Session, payment_intent_id: str) -> None:
    """Serialise the work on one payment for this transaction (PostgreSQL advisory lock).

    Without it a refund and its payment delivered at the same moment could each miss the
    other (the refund sees no purchase yet, the payment sees no refund yet) and the refund
    would stay pending. SQLite's single writer (BEGIN IMMEDIATE) serialises them already.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(f"stripe:{payment_intent_id}".encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _apply_refunds(session: Session, row: StripeEvent, refunds: list, now: datetime) -> None:
    for payment_intent_id in sorted({_object_id(obj.get("payment_intent")) or "" for obj in refunds
                                     if isinstance(obj, dict)} - {""}):
        _lock_payment(session, payment_intent_id)
    payment_intents = []
    for obj in refunds:
        refund = _merge_refund(session, obj, now) if isinstance(obj, dict) else None
        if refund is not None and refund.payment_intent_id not in payment_intents:
            payment_intents.append(refund.payment_intent_id)
        if refund is not None and row.refund_id is None:
            row.refund_id = refund.refund_id
    if not payment_intents:
        _mark(row, "ignored", "the refund names no payment intent or has no amount")
        return
    row.payment_intent_id = payment_intents[0]
    outcomes = [_settle_refunds(session, payment_intent_id, now) for payment_intent_id in payment_intents]
    purchase = session.execute(select(Purchase.member_id).where(
        Purchase.transaction_id == transaction_id_for(payment_intents[0]))).first()
    if purchase is not None:
        row.member_id, row.transaction_id = purchase.member_id, transaction_id_for(payment_intents[0])
    refused = [reason for status, reason in outcomes if status == "refused"]
    if refused:
        _mark(row, "refused", "; ".join(refused))
    elif any(status == "pending" for status, _ in outcomes):
        _mark(row, "pending", next(reason for status, reason in outcomes if status == "pending"))
    else:
        _mark(row, "applied", f"refund {row.refund_id} is {_refund_status(session, row.refund_id)}")


def _refund_status(session: Session, refund_id: str | None) -> str:
    return session.execute(select(StripeRefund.status).where(StripeRefund.refund_id == refund_id)).scalar() or "?"


def _merge_refund(session: Session, obj: Mapping, now: datetime) -> StripeRefund | None:
    """Fold one Stripe refund object into its row; the status only moves forward."""
    refund_id, payment_intent_id = obj.get("id"), _object_id(obj.get("payment_intent"))
    amount, currency = obj.get("amount"), obj.get("currency")
    status = obj.get("status") if obj.get("status") in _REFUND_RANK else "pending"
    if (not isinstance(refund_id, str) or not refund_id or payment_intent_id is None
            or not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0
            or not isinstance(currency, str)):
        return None
    refund = session.execute(select(StripeRefund).where(StripeRefund.refund_id == refund_id)
                             .with_for_update()).scalar()
    if refund is None:
        refund = StripeRefund(id=new_id(), refund_id=refund_id, payment_intent_id=payment_intent_id,
                              charge_id=_object_id(obj.get("charge")), amount=amount, currency=currency.upper(),
                              status=status, created_at=now, updated_at=now)
        session.add(refund)
    elif _REFUND_RANK[status] > _REFUND_RANK[refund.status]:
        refund.status, refund.updated_at = status, now
    session.flush()
    return refund


def _settle_refunds(session: Session, payment_intent_id: str, now: datetime) -> tuple[str | None, str | None]:
    """Bring the purchase of a payment in line with what its Stripe refunds say.

    A succeeded refund not yet reversed is reversed through the refund service (keyed by the
    Stripe refund id); a failed or canceled refund that was reversed is given back. Returns
    (status, reason) for the events about them: pending while the payment has not arrived,
    refused when a refund could not be applied, else applied; (None, None) without refunds.
    """
    refunds = session.execute(select(StripeRefund).where(StripeRefund.payment_intent_id == payment_intent_id)
                              .order_by(StripeRefund.created_at, StripeRefund.id)).scalars().all()
    if not refunds:
        return None, None
    transaction_id = transaction_id_for(payment_intent_id)
    purchase = session.execute(select(Purchase.currency).where(Purchase.transaction_id == transaction_id)).first()
    if purchase is None:
        return "pending", f"waiting for payment {payment_intent_id}; the refund applies when it arrives"
    refusals = []
    for refund in refunds:
        if refund.currency != purchase.currency:
            refusals.append(f"currency_mismatch: refund {refund.refund_id} is in {refund.currency}, the purchase "
                            f"in {purchase.currency}; amounts are never converted")
            continue
        if refund.status == "succeeded" and refund.reversed_at is None:
            try:
                with session.begin_nested():
                    outcome = create_refund(session, transaction_id,
                                            {"refund_id": refund.refund_id, "amount": refund.amount}, now)
            except DomainError as err:
                refusals.append(f"{err.code}: refund {refund.refund_id}: {err.detail}")
                continue
            refund.points_reversed, refund.reversed_at, refund.updated_at = \
                outcome.body["points_reversed"], now, now
        elif refund.status in _NO_MONEY_BACK and refund.reversed_at is not None and refund.restored_at is None:
            refund.points_restored, refund.restored_at, refund.updated_at = \
                _give_back(session, transaction_id, refund, now), now, now
    session.flush()
    if refusals:
        return "refused", "; ".join(refusals)
    return "applied", None


def _give_back(session: Session, transaction_id: str, refund: StripeRefund, now: datetime) -> int:
    """Undo a reversed refund that failed: give its points back and reopen its amount.

    The points come back as a `cancel` credit keyed by the refund id, dated like the
    purchase (pending or available, expiring as its own points would), and count again
    towards lifetime_earned, which the reversal had reduced. The purchase's refunded amount
    drops by the refund's amount, so a later refund of the same money reverses again.
    Returns the points given back.
    """
    program = get_program(session)
    member_id = session.execute(select(Purchase.member_id)
                                .where(Purchase.transaction_id == transaction_id)).scalar_one()
    balance = lock_balance(session, member_id)
    # Read after the lock, like the refund service: changes to the purchase are serialised by it.
    purchase = session.execute(select(Purchase).where(Purchase.transaction_id == transaction_id)).scalar_one()
    purchase.refunded_amount = max(0, purchase.refunded_amount - refund.amount)
    purchase.reversed_points = purchase.points * purchase.refunded_amount // purchase.total if purchase.total else 0
    points = refund.points_reversed or 0
    if points > 0:
        balance.lifetime_earned += points
        credit_points(session, member_id, balance, [Credit(points, f"Stripe refund {refund.refund_id} failed")],
                      entry_type="cancel", source_type="refund", source_id=refund.refund_id,
                      occurred_at=purchase.occurred_at, program=program, now=now)
    session.flush()
    return points
