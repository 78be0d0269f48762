"""Stripe: signed webhook deliveries of payments and refunds become purchases and refunds."""
