"""Program settings: GET/PATCH /v1/program."""

import pytest

from .helpers import assert_problem

DEFAULTS = {
    "currency": "EUR", "pending_days": 0, "expiry": {"mode": "none", "months": 0}, "tier_window_months": 12,
    "tier_metric": "points", "negative_balance": "forbid",
    "referral": {"min_purchase": 0, "window_days": 30, "max_per_referrer": 100},
}


def test_defaults(api):
    r = api.get("/v1/program")
    assert r.status_code == 200
    assert r.json == DEFAULTS


def test_patch_changes_only_what_it_names(api):
    r = api.patch("/v1/program", json={"pending_days": 14, "referral": {"window_days": 60}})
    assert r.status_code == 200, r.json
    expected = {**DEFAULTS, "pending_days": 14, "referral": {**DEFAULTS["referral"], "window_days": 60}}
    assert r.json == expected
    assert api.get("/v1/program").json == expected


def test_patch_everything(api):
    settings = {"currency": "USD", "pending_days": 30, "expiry": {"mode": "fixed", "months": 24},
                "tier_window_months": 6, "tier_metric": "spend", "negative_balance": "allow",
                "referral": {"min_purchase": 2000, "window_days": 14, "max_per_referrer": 5}}
    r = api.as_role("marketer").patch("/v1/program", json=settings)
    assert r.status_code == 200, r.json
    assert r.json == settings
    assert api.get("/v1/program").json == settings


def test_empty_patch_changes_nothing(api):
    r = api.patch("/v1/program", json={})
    assert r.status_code == 200 and r.json == DEFAULTS


def test_expiry_mode_inactivity_and_back_to_none(api):
    r = api.patch("/v1/program", json={"expiry": {"mode": "inactivity", "months": 18}})
    assert r.json["expiry"] == {"mode": "inactivity", "months": 18}
    r = api.patch("/v1/program", json={"expiry": {"mode": "none"}})
    assert r.json["expiry"] == {"mode": "none", "months": 0}


@pytest.mark.parametrize("body, field", [
    ({"expiry": {"mode": "fixed"}}, "expiry.months"),
    ({"expiry": {"mode": "fixed", "months": 0}}, "expiry.months"),
    ({"expiry": {"mode": "sometimes", "months": 3}}, "expiry.mode"),
    ({"expiry": {"months": 3}}, "expiry.mode"),
    ({"expiry": None}, "expiry"),
    ({"currency": "euro"}, "currency"),
    ({"currency": "eur"}, "currency"),
    ({"pending_days": -1}, "pending_days"),
    ({"pending_days": 2**64}, "pending_days"),
    ({"pending_days": "3"}, "pending_days"),
    ({"pending_days": 1.5}, "pending_days"),
    ({"tier_window_months": 0}, "tier_window_months"),
    ({"tier_metric": "visits"}, "tier_metric"),
    ({"negative_balance": "maybe"}, "negative_balance"),
    ({"referral": {"window_days": 0}}, "referral.window_days"),
    ({"referral": {"min_purchase": -5}}, "referral.min_purchase"),
    ({"referral": {"bonus": 5}}, "referral.bonus"),
    ({"rules_revision": "x"}, "rules_revision"),
    ({"id": 2}, "id"),
])
def test_invalid_settings_are_refused_and_change_nothing(api, body, field):
    assert_problem(api.patch("/v1/program", json=body), 422, "validation_error", field)
    assert api.get("/v1/program").json == DEFAULTS


def test_only_marketer_and_admin(api):
    for role in ("pos", "app"):
        assert_problem(api.as_role(role).get("/v1/program"), 403, "forbidden")
        assert_problem(api.as_role(role).patch("/v1/program", json={"pending_days": 1}), 403, "forbidden")
    assert_problem(api.as_role(None).get("/v1/program"), 401, "unauthorized")
    assert api.get("/v1/program").json["pending_days"] == 0
