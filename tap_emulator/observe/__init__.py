"""Observe: metrics, health and readiness, and the HTTP endpoint that serves them."""
