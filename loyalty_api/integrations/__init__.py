"""Integrations with outside systems (payment providers) that feed the loyalty ledger."""
