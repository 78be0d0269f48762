"""Referrals: a member brings a friend; both earn when the friend's first purchase qualifies."""
