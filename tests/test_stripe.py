"""Stripe webhook: signed deliveries of payments and refunds become purchases and refunds, once.

Payloads are shaped as the Stripe API sends them and signed as Stripe documents it:
`Stripe-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`.
"""

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from loyalty_api.integrations.stripe.models import StripeEvent, StripeRefund
from loyalty_api.ledger.models import LedgerEntry
from loyalty_api.purchases.models import Purchase, Refund

from .conftest import NOW
from .helpers import assert_invariants, assert_problem, balance, make_member, make_rule

WEBHOOK = "/v1/integrations/stripe/webhook"
SECRET = "whsec_test_5a1b2c3d4e5f60718293a4b5c6d7e8f9"
OLD_SECRET = "whsec_test_old_0f1e2d3c4b5a69788796a5b4c3d2e1f0"
PAID_AT = int((NOW - timedelta(minutes=10)).timestamp())  # Stripe's clock: seconds since the epoch


# --- Stripe-shaped payloads ------------------------------------------------------------------

def event(type_, obj, event_id="evt_1PaYmNt0000000000000001", created=PAID_AT):
    return {
        "id": event_id, "object": "event", "api_version": "2025-09-30.clover", "created": created,
        "data": {"object": obj}, "livemode": False, "pending_webhooks": 1,
        "request": {"id": "req_8Hq2Yw1fUe3aTz", "idempotency_key": "b1c52a5e-6e0f-4b8e-8f57-3c4c1ad1d9a2"},
        "type": type_,
    }


def payment_intent(pi="pi_3PaYmN2eZvKYlo2C0a1b2c3d", amount=10000, currency="eur", customer="cus_QbY1xS0m3Cust",
                   metadata=None):
    return {
        "id": pi, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
        "amount_details": {"tip": {}}, "amount_received": amount, "application": None,
        "application_fee_amount": None, "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None, "cancellation_reason": None, "capture_method": "automatic_async",
        "client_secret": f"{pi}_secret_Zk9vQm1x", "confirmation_method": "automatic", "created": PAID_AT - 30,
        "currency": currency, "customer": customer, "description": None, "last_payment_error": None,
        "latest_charge": "ch_3PaYmN2eZvKYlo2C0chg0001", "livemode": False, "metadata": metadata or {},
        "next_action": None, "on_behalf_of": None, "payment_method": "pm_1PaYmM2eZvKYlo2Cpm000001",
        "payment_method_types": ["card"], "processing": None, "receipt_email": None, "review": None,
        "setup_future_usage": None, "shipping": None, "statement_descriptor": None, "status": "succeeded",
        "transfer_data": None, "transfer_group": None,
    }


def checkout_session(pi="pi_3PaYmN2eZvKYlo2C0a1b2c3d", amount=10000, currency="eur", customer="cus_QbY1xS0m3Cust",
                     payment_status="paid", metadata=None, line_items=None):
    session = {
        "id": "cs_test_a1B2c3D4e5F6g7H8i9J0", "object": "checkout.session", "after_expiration": None,
        "allow_promotion_codes": None, "amount_subtotal": amount, "amount_total": amount,
        "automatic_tax": {"enabled": False, "liability": None, "status": None}, "billing_address_collection": None,
        "cancel_url": "https://shop.example/cart", "client_reference_id": None, "created": PAID_AT - 120,
        "currency": currency, "customer": customer, "customer_creation": None,
        "customer_details": {"email": "ada@example.com", "name": "Ada", "phone": None, "tax_exempt": "none"},
        "customer_email": None, "expires_at": PAID_AT + 86400, "livemode": False, "locale": None,
        "metadata": metadata or {}, "mode": "payment", "payment_intent": pi, "payment_method_types": ["card"],
        "payment_status": payment_status, "status": "complete", "submit_type": None,
        "success_url": "https://shop.example/thanks", "total_details": {"amount_discount": 0, "amount_shipping": 0,
                                                                        "amount_tax": 0}, "url": None,
    }
    if line_items is not None:
        session["line_items"] = {"object": "list", "data": line_items, "has_more": False,
                                 "url": "/v1/checkout/sessions/cs_test_a1B2c3D4e5F6g7H8i9J0/line_items"}
    return session


def refund(re="re_3PaYmN2eZvKYlo2C0rf00001", pi="pi_3PaYmN2eZvKYlo2C0a1b2c3d", amount=5000, status="succeeded",
           currency="eur"):
    return {
        "id": re, "object": "refund", "amount": amount, "balance_transaction": "txn_3PaYmN2eZvKYlo2C0bt00001",
        "charge": "ch_3PaYmN2eZvKYlo2C0chg0001", "created": PAID_AT + 60, "currency": currency,
        "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number",
                                         "type": "refund"}, "type": "card"},
        "metadata": {}, "payment_intent": pi, "reason": "requested_by_customer", "receipt_number": None,
        "source_transfer_reversal": None, "status": status, "transfer_reversal": None,
    }


def charge(refunds, pi="pi_3PaYmN2eZvKYlo2C0a1b2c3d", amount=10000):
    body = {
        "id": "ch_3PaYmN2eZvKYlo2C0chg0001", "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": sum(r["amount"] for r in refunds or []), "captured": True, "currency": "eur",
        "customer": "cus_QbY1xS0m3Cust", "paid": True, "payment_intent": pi, "refunded": True, "status": "succeeded",
    }
    if refunds is not None:
        body["refunds"] = {"object": "list", "data": refunds, "has_more": False, "total_count": len(refunds),
                           "url": "/v1/charges/ch_3PaYmN2eZvKYlo2C0chg0001/refunds"}
    return body


# --- signing and delivering ------------------------------------------------------------------

def sign(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """Sign as Stripe does: HMAC-SHA256 over "<timestamp>.<payload>" with the endpoint secret."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def deliver(api, evt=None, *, payload=None, secret=SECRET, header=None, timestamp=None):
    payload = json.dumps(evt, indent=2) if payload is None else payload
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
    signature = sign(payload, secret, timestamp) if header is None else header
    if signature:
        headers["Stripe-Signature"] = signature
    # The webhook is authenticated by the signature alone: no bearer token is sent.
    return api.client.post(WEBHOOK, data=payload.encode(), headers=headers)


@pytest.fixture
def stripe_secret(app, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_WEBHOOK_SECRET", SECRET)
    return SECRET


@pytest.fixture
def member(api, stripe_secret):
    make_rule(api)  # 4 points per 1.00
    created = make_member(api, "shopper-1")
    r = api.patch(f"/v1/members/{created['id']}", json={"stripe_customer_id": "cus_QbY1xS0m3Cust"})
    assert r.status_code == 200, r.json
    return created


def count(session, model, *where):
    return session.execute(select(func.count()).select_from(model).where(*where)).scalar()


def purchase(session, pi="pi_3PaYmN2eZvKYlo2C0a1b2c3d"):
    return session.execute(select(Purchase).where(Purchase.transaction_id == f"stripe:{pi}")).scalar()


def stored(session, event_id):
    return session.execute(select(StripeEvent).where(StripeEvent.event_id == event_id)).scalar()


# --- verification ----------------------------------------------------------------------------

def test_the_signature_tolerance_is_stripes_default():
    import stripe

    from loyalty_api.integrations.stripe.services import DEFAULT_TOLERANCE

    assert DEFAULT_TOLERANCE == stripe.Webhook.DEFAULT_TOLERANCE


def test_valid_payment_becomes_a_purchase_with_points(api, session, member):
    r = deliver(api, event("payment_intent.succeeded", payment_intent()))
    assert r.status_code == 200, r.json
    assert r.json["status"] == "applied" and r.json["member_id"] == member["id"]
    assert r.json["transaction_id"] == "stripe:pi_3PaYmN2eZvKYlo2C0a1b2c3d"
    bought = purchase(session)
    assert (bought.member_id, bought.total, bought.currency, bought.channel, bought.points) == \
        (member["id"], 10000, "EUR", "online", 400)
    assert bought.occurred_at == datetime.fromtimestamp(PAID_AT, UTC)
    assert bought.metadata_["stripe_customer"] == "cus_QbY1xS0m3Cust"
    assert balance(api, member["id"])["available"] == 400
    got = api.get("/v1/purchases/stripe:pi_3PaYmN2eZvKYlo2C0a1b2c3d")
    assert got.status_code == 200 and got.json["points"] == 400
    assert_invariants(session)


@pytest.mark.parametrize("tamper", [
    lambda p: p.replace('"amount": 10000', '"amount": 99000').replace('"amount_received": 10000',
                                                                      '"amount_received": 99000'),
    lambda p: p.replace("cus_QbY1xS0m3Cust", "cus_SomeoneElse0"),
    lambda p: p + " ",
])
def test_tampered_body_is_refused_and_stores_nothing(api, session, member, tamper):
    payload = json.dumps(event("payment_intent.succeeded", payment_intent()), indent=2)
    header = sign(payload)
    assert tamper(payload) != payload
    r = deliver(api, payload=tamper(payload), header=header)
    assert_problem(r, 400, "invalid_signature")
    assert count(session, StripeEvent) == 0 and count(session, Purchase) == 0
    assert balance(api, member["id"])["available"] == 0


def test_wrong_secret_is_refused_and_stores_nothing(api, session, member):
    r = deliver(api, event("payment_intent.succeeded", payment_intent()), secret="whsec_not_the_endpoint_secret")
    assert_problem(r, 400, "invalid_signature")
    assert count(session, StripeEvent) == 0 and count(session, Purchase) == 0


def test_stale_timestamp_is_refused_and_stores_nothing(api, session, member):
    r = deliver(api, event("payment_intent.succeeded", payment_intent()), timestamp=int(time.time()) - 301)
    body = assert_problem(r, 400, "invalid_signature")
    assert "too old" in body["detail"]
    assert count(session, StripeEvent) == 0 and count(session, Purchase) == 0
    # Within Stripe's five minutes the same body is accepted.
    assert deliver(api, event("payment_intent.succeeded", payment_intent()),
                   timestamp=int(time.time()) - 240).json["status"] == "applied"


@pytest.mark.parametrize("header", ["", "t=1700000000", "v1=abc", "garbage", "t=notanumber,v1=abc"])
def test_missing_or_malformed_signature_is_refused(api, session, member, header):
    r = deliver(api, event("payment_intent.succeeded", payment_intent()), header=header)
    assert_problem(r, 400, "invalid_signature")
    assert count(session, StripeEvent) == 0


def test_signed_body_that_is_no_event_is_refused(api, session, member):
    assert_problem(deliver(api, payload="{not json"), 400, "invalid_signature")
    assert_problem(deliver(api, payload=json.dumps({"object": "event", "id": "evt_x"})), 400, "invalid_stripe_event")
    assert count(session, StripeEvent) == 0


def test_secret_rotation_accepts_every_configured_secret(api, session, member, monkeypatch, app):
    monkeypatch.setitem(app.config, "STRIPE_WEBHOOK_SECRET", f"{SECRET}, {OLD_SECRET}")
    assert deliver(api, event("payment_intent.succeeded", payment_intent(pi="pi_A"), "evt_A"),
                   secret=OLD_SECRET).json["status"] == "applied"
    assert deliver(api, event("payment_intent.succeeded", payment_intent(pi="pi_B"), "evt_B"),
                   secret=SECRET).json["status"] == "applied"
    # During a rotation Stripe signs with both secrets in one header.
    payload = json.dumps(event("payment_intent.succeeded", payment_intent(pi="pi_C"), "evt_C"))
    ts = int(time.time())
    both = f"{sign(payload, 'whsec_unknown', ts)},v1={sign(payload, OLD_SECRET, ts).split('v1=')[1]}"
    assert deliver(api, payload=payload, header=both).json["status"] == "applied"
    assert_problem(deliver(api, event("payment_intent.succeeded", payment_intent(pi="pi_D"), "evt_D"),
                           secret="whsec_retired"), 400, "invalid_signature")
    assert count(session, Purchase) == 3


def test_without_a_configured_secret_nothing_is_accepted(api, session, app, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_WEBHOOK_SECRET", "")
    assert_problem(deliver(api, event("payment_intent.succeeded", payment_intent())), 503, "stripe_not_configured")
    assert count(session, StripeEvent) == 0


# --- once per event, once per payment ----------------------------------------------------------

def test_duplicate_delivery_is_applied_once(api, session, member):
    evt = event("payment_intent.succeeded", payment_intent())
    first, second = deliver(api, evt), deliver(api, evt)
    assert first.status_code == second.status_code == 200
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.json == first.json
    assert count(session, StripeEvent) == 1 and count(session, Purchase) == 1
    assert balance(api, member["id"])["available"] == 400
    assert_invariants(session)


@pytest.mark.parametrize("order", ["session_first", "intent_first"])
def test_checkout_session_and_its_payment_intent_are_one_purchase(api, session, member, order):
    deliveries = [event("checkout.session.completed", checkout_session(), "evt_session"),
                  event("payment_intent.succeeded", payment_intent(), "evt_intent")]
    if order == "intent_first":
        deliveries.reverse()
    results = [deliver(api, d).json for d in deliveries]
    assert [r["status"] for r in results] == ["applied", "applied"]
    assert {r["transaction_id"] for r in results} == {"stripe:pi_3PaYmN2eZvKYlo2C0a1b2c3d"}
    assert count(session, Purchase) == 1
    assert balance(api, member["id"])["available"] == 400
    assert_invariants(session)


def test_guest_payment_intent_is_settled_by_its_checkout_session(api, session, member):
    r = deliver(api, event("payment_intent.succeeded", payment_intent(customer=None), "evt_intent"))
    assert r.json["status"] == "unmatched"
    r = deliver(api, event("checkout.session.completed",
                           checkout_session(customer=None, metadata={"loyalty_external_id": "shopper-1"}),
                           "evt_session"))
    assert r.json["status"] == "applied" and r.json["member_id"] == member["id"]
    assert stored(session, "evt_intent").status == "applied"
    assert api.get("/v1/integrations/stripe/events?status=unmatched").json["data"] == []
    assert count(session, Purchase) == 1 and balance(api, member["id"])["available"] == 400


def test_unpaid_checkout_waits_for_the_async_payment(api, session, member):
    r = deliver(api, event("checkout.session.completed", checkout_session(payment_status="unpaid"), "evt_s1"))
    assert r.json["status"] == "ignored" and "async_payment_succeeded" in r.json["reason"]
    assert count(session, Purchase) == 0
    r = deliver(api, event("checkout.session.async_payment_succeeded", checkout_session(), "evt_s2"))
    assert r.json["status"] == "applied"
    assert purchase(session).points == 400


def test_metadata_names_the_member(api, session, member):
    other = make_member(api, "shopper-2")
    r = deliver(api, event("payment_intent.succeeded",
                           payment_intent(pi="pi_M1", customer=None, metadata={"loyalty_member_id": other["id"]}),
                           "evt_m1"))
    assert r.json["member_id"] == other["id"]
    r = deliver(api, event("payment_intent.succeeded",
                           payment_intent(pi="pi_M2", customer="cus_Unknown", amount=2500,
                                          metadata={"loyalty_external_id": "shopper-2"}), "evt_m2"))
    assert r.json["member_id"] == other["id"]
    assert balance(api, other["id"])["available"] == 500
    assert balance(api, member["id"])["available"] == 0


def test_items_from_metadata_or_session_line_items(api, session, member):
    items = [{"sku": "TEA", "category": "drinks", "quantity": 2, "unit_price": 1500},
             {"sku": "MUG", "quantity": 1, "unit_price": 7000}]
    deliver(api, event("payment_intent.succeeded",
                       payment_intent(pi="pi_I1", metadata={"loyalty_items": json.dumps(items)}), "evt_i1"))
    assert purchase(session, "pi_I1").items == items
    assert "loyalty_items" not in purchase(session, "pi_I1").metadata_
    lines = [{"id": "li_1", "object": "item", "amount_subtotal": 6000, "amount_total": 6000, "currency": "eur",
              "description": "Green tea", "quantity": 3,
              "price": {"id": "price_1", "object": "price", "product": "prod_TEA", "unit_amount": 2000}},
             {"id": "li_2", "object": "item", "amount_subtotal": 4000, "amount_total": 4000, "currency": "eur",
              "description": "Mug", "quantity": 1,
              "price": {"id": "price_2", "object": "price", "unit_amount": 4000,
                        "product": {"id": "prod_MUG", "object": "product", "metadata": {"category": "kitchen"}}}}]
    deliver(api, event("checkout.session.completed", checkout_session(pi="pi_I2", line_items=lines), "evt_i2"))
    assert purchase(session, "pi_I2").items == [
        {"sku": "prod_TEA", "quantity": 3, "unit_price": 2000},
        {"sku": "prod_MUG", "category": "kitchen", "quantity": 1, "unit_price": 4000}]
    # Items that do not add up to what was paid are left out; the payment still earns.
    wrong = [{"sku": "TEA", "quantity": 1, "unit_price": 100}]
    r = deliver(api, event("payment_intent.succeeded",
                           payment_intent(pi="pi_I3", metadata={"loyalty_items": json.dumps(wrong)}), "evt_i3"))
    assert r.json["status"] == "applied" and "earned on the total" in r.json["reason"]
    assert purchase(session, "pi_I3").items is None and purchase(session, "pi_I3").points == 400


# --- refusals, unmatched and ignored events ------------------------------------------------------

def test_other_currency_is_recorded_and_refused(api, session, member):
    r = deliver(api, event("payment_intent.succeeded", payment_intent(currency="usd")))
    assert r.status_code == 200
    assert r.json["status"] == "refused"
    assert "USD" in r.json["reason"] and "EUR" in r.json["reason"] and "never converted" in r.json["reason"]
    assert count(session, Purchase) == 0 and count(session, StripeEvent) == 1
    assert balance(api, member["id"])["available"] == 0


def test_suspended_member_payment_is_refused(api, session, member):
    api.patch(f"/v1/members/{member['id']}", json={"status": "suspended"})
    r = deliver(api, event("payment_intent.succeeded", payment_intent()))
    assert r.json["status"] == "refused" and "member_not_active" in r.json["reason"]
    assert count(session, Purchase) == 0


def test_unknown_customer_is_unmatched_then_replayed_after_linking(api, session, member):
    evt = event("payment_intent.succeeded", payment_intent(customer="cus_NewShopper01"), "evt_unmatched")
    r = deliver(api, evt)
    assert r.status_code == 200 and r.json["status"] == "unmatched"
    assert "cus_NewShopper01" in r.json["reason"]
    assert count(session, Purchase) == 0
    listed = api.get("/v1/integrations/stripe/events?status=unmatched")
    assert [e["event_id"] for e in listed.json["data"]] == ["evt_unmatched"]

    # Still unknown: the replay says so and keeps the event replayable.
    replay = "/v1/integrations/stripe/unmatched/evt_unmatched/replay"
    assert api.post(replay).json["status"] == "unmatched"
    assert_problem(api.as_role("pos").post(replay), 403, "forbidden")
    assert_problem(api.as_role(None).post(replay), 401, "unauthorized")

    newcomer = make_member(api, "shopper-new")
    api.patch(f"/v1/members/{newcomer['id']}", json={"stripe_customer_id": "cus_NewShopper01"})
    r = api.post(replay)
    assert r.status_code == 200 and r.json["status"] == "applied" and r.json["member_id"] == newcomer["id"]
    assert balance(api, newcomer["id"])["available"] == 400
    assert_problem(api.post(replay), 409, "event_not_replayable")
    assert_problem(api.post("/v1/integrations/stripe/unmatched/evt_nope/replay"), 404, "not_found")
    # A redelivery of the event by Stripe changes nothing either.
    assert deliver(api, evt).headers.get("Idempotent-Replayed") == "true"
    assert count(session, Purchase) == 1
    assert_invariants(session)


def test_unknown_event_types_are_acknowledged_and_ignored(api, session, member):
    evt = event("customer.subscription.updated", {"id": "sub_1", "object": "subscription"}, "evt_other")
    r = deliver(api, evt)
    assert r.status_code == 200 and r.json["status"] == "ignored"
    assert deliver(api, evt).headers.get("Idempotent-Replayed") == "true"
    assert count(session, StripeEvent) == 1 and stored(session, "evt_other").payload is None
    assert count(session, Purchase) == 0


# --- refunds -------------------------------------------------------------------------------------

def pay(api, pi="pi_3PaYmN2eZvKYlo2C0a1b2c3d", event_id="evt_pay"):
    r = deliver(api, event("payment_intent.succeeded", payment_intent(pi=pi), event_id))
    assert r.json["status"] == "applied", r.json
    return r.json


def test_refund_reverses_points_keyed_by_the_stripe_refund(api, session, member):
    pay(api)
    r = deliver(api, event("refund.created", refund(), "evt_r1", created=PAID_AT + 60))
    assert r.json["status"] == "applied" and r.json["refund_id"] == "re_3PaYmN2eZvKYlo2C0rf00001"
    assert balance(api, member["id"])["available"] == 200
    assert session.execute(select(Refund.amount).where(Refund.refund_id == "re_3PaYmN2eZvKYlo2C0rf00001")).scalar() \
        == 5000
    # The same refund reported again (refund.updated, charge.refunded) reverses nothing more.
    deliver(api, event("refund.updated", refund(), "evt_r2", created=PAID_AT + 61))
    deliver(api, event("charge.refunded", charge([refund()]), "evt_r3", created=PAID_AT + 62))
    assert balance(api, member["id"])["available"] == 200
    assert count(session, Refund) == 1
    assert_invariants(session)


def test_charge_refunded_applies_each_listed_refund(api, session, member):
    pay(api)
    refunds = [refund("re_A", amount=2500), refund("re_B", amount=7500)]
    r = deliver(api, event("charge.refunded", charge(refunds), "evt_c"))
    assert r.json["status"] == "applied"
    assert balance(api, member["id"])["available"] == 0
    assert count(session, Refund) == 2


def test_charge_refunded_without_refund_list_is_ignored_with_reason(api, session, member):
    pay(api)
    r = deliver(api, event("charge.refunded", charge(None), "evt_c"))
    assert r.json["status"] == "ignored" and "refund.created" in r.json["reason"]
    assert balance(api, member["id"])["available"] == 400


def _final_state(api, session, member_id):
    return balance(api, member_id), count(session, Refund), \
        session.execute(select(func.sum(LedgerEntry.points)).where(LedgerEntry.member_id == member_id)).scalar()


def test_refund_before_payment_is_consistent_after_both_arrive(api, session, member):
    early = deliver(api, event("refund.created", refund(), "evt_refund"))
    assert early.status_code == 200 and early.json["status"] == "pending"
    assert count(session, Purchase) == 0 and count(session, StripeRefund) == 1
    pay(api, event_id="evt_pay")
    assert stored(session, "evt_refund").status == "applied"
    assert stored(session, "evt_refund").member_id == member["id"]
    out_of_order = _final_state(api, session, member["id"])

    # The same two deliveries in Stripe's order, for another member, end in the same state.
    other = make_member(api, "shopper-2")
    api.patch(f"/v1/members/{other['id']}", json={"stripe_customer_id": "cus_Second"})
    r = deliver(api, event("payment_intent.succeeded", payment_intent(pi="pi_2", customer="cus_Second"), "evt_p2"))
    assert r.json["status"] == "applied"
    deliver(api, event("refund.created", refund(re="re_2", pi="pi_2"), "evt_r2"))
    in_order = _final_state(api, session, other["id"])
    assert out_of_order[0] == in_order[0] == {**out_of_order[0], "available": 200, "pending": 0}
    assert out_of_order[2] == in_order[2] == 200
    assert_invariants(session)


def test_refund_of_an_unmatched_payment_applies_on_replay(api, session, member):
    deliver(api, event("payment_intent.succeeded", payment_intent(customer="cus_Later"), "evt_pay"))
    assert deliver(api, event("refund.created", refund(amount=10000), "evt_refund")).json["status"] == "pending"
    newcomer = make_member(api, "shopper-later")
    api.patch(f"/v1/members/{newcomer['id']}", json={"stripe_customer_id": "cus_Later"})
    assert api.post("/v1/integrations/stripe/unmatched/evt_pay/replay").json["status"] == "applied"
    assert balance(api, newcomer["id"])["available"] == 0
    assert stored(session, "evt_refund").status == "applied"
    assert_invariants(session)


def test_refund_failed_after_reversal_restores_the_points(api, session, member):
    pay(api)
    deliver(api, event("refund.created", refund(), "evt_r1"))
    assert balance(api, member["id"])["available"] == 200
    r = deliver(api, event("refund.failed", refund(status="failed"), "evt_r2"))
    assert r.json["status"] == "applied"
    after = balance(api, member["id"])
    assert after["available"] == 400 and after["lifetime_earned"] == 400
    # Failing twice gives back once.
    deliver(api, event("refund.updated", refund(status="failed"), "evt_r3"))
    assert balance(api, member["id"])["available"] == 400
    entries = session.execute(select(LedgerEntry.type, LedgerEntry.points)
                              .where(LedgerEntry.source_id == "re_3PaYmN2eZvKYlo2C0rf00001")
                              .order_by(LedgerEntry.id)).all()
    assert [tuple(e) for e in entries] == [("reverse", -200), ("cancel", 200)]
    # The money is refundable again: a new refund of the whole payment reverses everything.
    deliver(api, event("refund.created", refund(re="re_again", amount=10000), "evt_r4"))
    assert balance(api, member["id"])["available"] == 0
    assert_invariants(session)


def test_refund_failed_before_created_moves_nothing(api, session, member):
    pay(api)
    deliver(api, event("refund.failed", refund(status="failed"), "evt_r2", created=PAID_AT + 90))
    deliver(api, event("refund.created", refund(), "evt_r1", created=PAID_AT + 60))
    assert balance(api, member["id"])["available"] == 400
    assert count(session, Refund) == 0
    assert session.execute(select(StripeRefund.status)).scalar() == "failed"
    assert_invariants(session)


def test_pending_refund_waits_for_success(api, session, member):
    pay(api)
    deliver(api, event("refund.created", refund(status="pending"), "evt_r1"))
    assert balance(api, member["id"])["available"] == 400
    deliver(api, event("refund.updated", refund(status="succeeded"), "evt_r2"))
    assert balance(api, member["id"])["available"] == 200


def test_refund_in_other_currency_is_refused(api, session, member):
    pay(api)
    r = deliver(api, event("refund.created", refund(currency="usd"), "evt_r1"))
    assert r.json["status"] == "refused" and "never converted" in r.json["reason"]
    assert balance(api, member["id"])["available"] == 400


def test_restored_points_of_a_pending_purchase_stay_pending(api, session, member):
    api.patch("/v1/program", json={"pending_days": 14})
    pay(api)
    assert balance(api, member["id"])["pending"] == 400
    deliver(api, event("refund.created", refund(), "evt_r1"))
    assert balance(api, member["id"])["pending"] == 200
    deliver(api, event("refund.failed", refund(status="failed"), "evt_r2"))
    assert balance(api, member["id"])["pending"] == 400 and balance(api, member["id"])["available"] == 0
    assert_invariants(session)


# --- real concurrency (PostgreSQL) ----------------------------------------------------------------

@pytest.fixture
def live_app(app, database_url):
    """An app with its own engine whose writes really commit; its rows are deleted afterwards."""
    from sqlalchemy import delete, or_

    from loyalty_api import create_app
    from loyalty_api.extensions import db
    from loyalty_api.ledger.models import LotAllocation, PointLot, RuleUsage
    from loyalty_api.members.models import Member, MemberBalance
    from loyalty_api.members.services import create_member
    from loyalty_api.program.services import bump_rules_revision
    from loyalty_api.rules_admin.models import Rule, RuleVersion
    from loyalty_api.rules_admin.services import create_rule
    from loyalty_api.transactions import run_write

    live = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True, "LOYALTY_POOL_SIZE": 24,
                       "SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256",
                       "STRIPE_WEBHOOK_SECRET": SECRET})

    def write(unit_of_work):
        with live.app_context():
            return run_write(unit_of_work)

    rule = write(lambda s: create_rule(s, {"name": "4 per 1.00", "kind": "earn", "trigger": "purchase",
                                            "status": "active", "effect": {"type": "per_amount", "points": 4,
                                                                           "per": 100, "rounding": "floor"}},
                                        datetime.now(UTC)))
    member = write(lambda s: create_member(s, {"external_id": "stripe-live"}, datetime.now(UTC)))

    def link(session):
        session.get(Member, member["id"]).stripe_customer_id = "cus_Live"

    write(link)
    live.config["live_member_id"] = member["id"]
    live.config["live_write"] = write
    try:
        yield live
    finally:
        def remove(session):
            members = [member["id"]]
            session.execute(delete(StripeEvent).where(or_(StripeEvent.member_id.in_(members),
                                                          StripeEvent.payment_intent_id == "pi_Live")))
            session.execute(delete(StripeRefund).where(StripeRefund.payment_intent_id == "pi_Live"))
            session.execute(delete(Refund).where(Refund.member_id.in_(members)))
            session.execute(delete(Purchase).where(Purchase.member_id.in_(members)))
            session.execute(delete(LotAllocation).where(LotAllocation.member_id.in_(members)))
            session.execute(delete(LedgerEntry).where(LedgerEntry.member_id.in_(members)))
            session.execute(delete(PointLot).where(PointLot.member_id.in_(members)))
            session.execute(delete(RuleUsage).where(RuleUsage.member_id.in_(members)))
            session.execute(delete(MemberBalance).where(MemberBalance.member_id.in_(members)))
            session.execute(delete(Member).where(Member.id.in_(members)))
            session.execute(delete(RuleVersion).where(RuleVersion.rule_id == rule["id"]))
            session.execute(delete(Rule).where(Rule.id == rule["id"]))
            bump_rules_revision(session)

        write(remove)
        with live.app_context():
            db.engine.dispose()


def _deliver_concurrently(live, events):
    import threading

    barrier = threading.Barrier(len(events))
    results = [None] * len(events)

    def client(index, evt):
        payload = json.dumps(evt)
        test_client = live.test_client()
        barrier.wait()
        response = test_client.post(WEBHOOK, data=payload, headers={"Stripe-Signature": sign(payload),
                                                                    "Content-Type": "application/json"})
        results[index] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=client, args=(i, evt)) for i, evt in enumerate(events)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(result is not None for result in results), "a delivery did not finish"
    return results


@pytest.mark.postgres
def test_concurrent_duplicates_session_intent_and_refund_apply_once(live_app):
    pi = "pi_Live"
    deliveries = (
        [event("payment_intent.succeeded", payment_intent(pi=pi, customer="cus_Live"), "evt_live_pi")] * 6
        + [event("checkout.session.completed", checkout_session(pi=pi, customer="cus_Live"), "evt_live_cs")] * 6
        + [event("refund.created", refund(re="re_Live", pi=pi, amount=2500), "evt_live_re")] * 6
    )
    results = _deliver_concurrently(live_app, deliveries)
    assert {status for status, _ in results} == {200}, results
    member_id = live_app.config["live_member_id"]

    def read(session):
        return (
            session.execute(select(func.count()).select_from(Purchase).where(Purchase.member_id == member_id)).scalar(),
            session.execute(select(func.count()).select_from(Refund).where(Refund.member_id == member_id)).scalar(),
            session.execute(select(StripeEvent.event_id, StripeEvent.status)
                            .where(StripeEvent.payment_intent_id == pi)).all(),
            session.execute(select(func.sum(LedgerEntry.points)).where(LedgerEntry.member_id == member_id)).scalar(),
        )

    purchases, refunds, events, points = live_app.config["live_write"](read)
    assert (purchases, refunds, points) == (1, 1, 300)  # 400 earned, a quarter refunded
    assert sorted(events) == [("evt_live_cs", "applied"), ("evt_live_pi", "applied"), ("evt_live_re", "applied")]
