"""The send API (FastAPI): auth, validation, idempotency, durable accept, the outbox relay."""
