"""Tables: notifications, their attempts, the outbox, idempotency keys, API keys, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Always stored in UTC and always read back timezone-aware, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


def table_of(model: type[Base]) -> Table:
    """The Core table behind a model, typed for insert/update/delete statements."""
    return cast(Table, model.__table__)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    api_key_id: Mapped[str | None] = mapped_column(String(36))
    caller: Mapped[str | None] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(10))
    to: Mapped[str] = mapped_column("to_address", String(320))
    category: Mapped[str] = mapped_column(String(20))
    priority: Mapped[str] = mapped_column(String(10))
    subject: Mapped[str | None] = mapped_column(String(998))
    body: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any] | None]
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    status: Mapped[str] = mapped_column(String(20), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_provider: Mapped[str | None] = mapped_column(String(100))
    vendor_message_id: Mapped[str | None] = mapped_column(String(200), index=True)
    #: The routing-rules version that chose the provider of the last attempt.
    rules_version: Mapped[int | None] = mapped_column(Integer)
    #: The delivery lease: the worker that won the row for a send, and until when; the
    #: database's fence against a second sender when Redis claims are lost.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    send_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_notification", "notification_id", "id"),
        Index("ix_attempts_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("notifications.id", ondelete="CASCADE")
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    attempt_no: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    vendor_message_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    latency_ms: Mapped[float | None] = mapped_column(Float)


class IdempotencyKey(Base):
    """One row per (caller key, Idempotency-Key); its primary key is what makes it hold."""

    __tablename__ = "idempotency_keys"

    api_key_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    notification_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(index=True)


class OutboxEntry(Base):
    """A notification accepted but not yet confirmed by RabbitMQ; deleted once confirmed."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[str] = mapped_column(String(36))
    routing_key: Mapped[str] = mapped_column(String(50))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    #: When the relay may (re)publish it: a short lease after an immediate publish, or
    #: the requested ``send_at`` for a scheduled send.
    available_at: Mapped[datetime] = mapped_column(index=True)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (
        UniqueConstraint("notification_id", "generation", name="uq_dead_letters_episode"),
        Index("ix_dead_letters_time", "dead_lettered_at", "id"),
        #: The console's default view (open ones, newest first) and its counts.
        Index("ix_dead_letters_state_time", "state", "dead_lettered_at", "id"),
        Index("uq_dead_letters_source", "source_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: NULL for an ``unreadable`` row: a message that is no notification Herald holds
    #: (its raw bytes, headers and parse error are in ``payload``).
    notification_id: Mapped[str | None] = mapped_column(String(36), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    channel: Mapped[str | None] = mapped_column(String(10), index=True)
    category: Mapped[str | None] = mapped_column(String(20))
    caller: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(20), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_provider: Mapped[str | None] = mapped_column(String(100), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20), default="open")
    payload: Mapped[dict[str, Any]]
    dead_lettered_at: Mapped[datetime]
    #: Set when on-call replays or discards it (state "replayed" or "discarded").
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution: Mapped[str | None] = mapped_column(Text)
    #: An unreadable message's identity (hash of its AMQP message id and bytes), so a
    #: redelivered copy is stored once; NULL for every other row and when it has no id.
    source_key: Mapped[str | None] = mapped_column(String(64))


class RoutingVersion(Base):
    """Every saved routing-rules document; the highest version is the one in force."""

    __tablename__ = "routing_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    document: Mapped[dict[str, Any]]
    etag: Mapped[str] = mapped_column(String(80))
    created_by: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """Who did what, when and why: replays, discards, rules changes, breaker overrides.

    Append-only: nothing in Herald updates or deletes these rows.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_time", "at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50), index=True)
    target: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]]


class ReplayJob(Base):
    """A bulk replay: its filter, its progress and where it is, so a restart resumes it."""

    __tablename__ = "replay_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    filters: Mapped[dict[str, Any]]
    override_provider: Mapped[str | None] = mapped_column(String(100))
    max_per_s: Mapped[float] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), index=True)  # running, done
    total: Mapped[int] = mapped_column(Integer)
    replayed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[int] = mapped_column(Integer, default=0)
    cursor_at: Mapped[datetime | None]
    cursor_id: Mapped[str | None] = mapped_column(String(36))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]


class ReadinessProbe(Base):
    """``/readyz`` commits a write here: the accept path needs writes, not just ``SELECT 1``
    (a full disk or a held SQLite write lock still answers reads)."""

    __tablename__ = "readiness_probes"

    process: Mapped[str] = mapped_column(String(200), primary_key=True)
    checked_at: Mapped[datetime]
