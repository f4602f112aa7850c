"""Stateless consumers: claim, route, send, record, then ack in one place."""
