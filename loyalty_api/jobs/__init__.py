"""Periodic jobs (activation, expiry, tier review, reconciliation) and the scheduler process."""
