"""Replaying and discarding dead letters.

A replay gives the message a new generation under the same notification id: a fresh
attempt budget and a fresh idempotency claim. It is refused for an expired message
(OTPs included), skipped for one that was meanwhile sent, and a dead letter moves from
``open`` to ``replayed`` in one conditional update, so two replays at once send once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update

from config.settings import Settings
from dlq import audit
from herald.domain import Envelope, Status, utcnow
from herald.errors import HeraldError
from herald.storage.db import SessionFactory, inserted_id
from herald.storage.models import DeadLetter, Notification, OutboxEntry, table_of
from producer.outbox import Outbox
from router.rules import RoutingRules

DL = table_of(DeadLetter)
N = table_of(Notification)
OUTBOX = table_of(OutboxEntry)
REDACTED = "[redacted]"


class ReplayRefused(HeraldError):
    """The dead letter cannot be replayed (HTTP 409); the message says why."""


class DeadLetterNotFound(HeraldError):
    pass


class ProviderRefused(ReplayRefused):
    """The provider asked for cannot carry this replay (HTTP 422 naming the field)."""


def provider_problem(rules: RoutingRules, provider: str, channel: str | None) -> str | None:
    """Why ``provider`` cannot carry a replay of ``channel`` messages (None: it can).

    A provider sends one channel: an SMS "sent" through a push provider, or e-mails
    through an SMS vendor, would be a wrong delivery or a garbled one. ``channel`` None
    (a bulk filter over every channel) is refused too: the match could mix channels.
    """
    spec = rules.providers.get(provider)
    if spec is None:
        return f"no provider named {provider!r} in the rules in force"
    sends = spec.channel.value
    if channel is None:
        return f"{provider!r} sends {sends} only: filter on channel {sends!r} to replay through it"
    if sends != channel:
        return f"{provider!r} sends {sends}, and this message is {channel}"
    return None


@dataclass(frozen=True, slots=True)
class Replayed:
    notification_id: str
    status: str  # "accepted" (queued again) or "skipped" (it was sent meanwhile)


def envelope_of(
    notification_id: str,
    payload: dict[str, Any],
    generation: int,
    caller: str | None,
    provider: str | None,
) -> Envelope:
    """The message to publish again, rebuilt from what the dead-letter store kept."""
    return Envelope.from_dict(
        {
            **payload,
            "id": notification_id,
            "generation": generation,
            "caller": caller,
            "provider_override": provider,
        }
    )


class DeadLetters:
    def __init__(
        self,
        sessions: SessionFactory,
        outbox: Outbox,
        settings: Settings,
        *,
        rules: Callable[[], RoutingRules] | None = None,
    ) -> None:
        self.sessions = sessions
        self.outbox = outbox
        self.settings = settings
        #: The rules in force, to check a replay's provider against the message's channel.
        self.rules = rules

    async def replay(
        self,
        dead_letter_id: str,
        *,
        actor: str,
        provider: str | None = None,
        reason: str | None = None,
    ) -> Replayed:
        now = utcnow()
        async with self.sessions.begin() as session:
            dead = (await session.execute(select(DL).where(DL.c.id == dead_letter_id))).first()
            if dead is None:
                raise DeadLetterNotFound(dead_letter_id)
            if dead.state != "open":
                raise ReplayRefused(f"this dead letter was already {dead.state}")
            if dead.notification_id is None:
                raise ReplayRefused(
                    "an unreadable message belongs to no notification: nothing to replay "
                    "(its raw bytes are kept for inspection; discard it when done)"
                )
            row = (await session.execute(select(N).where(N.c.id == dead.notification_id))).first()
            if row is None:
                raise ReplayRefused("its notification is no longer stored: nothing to replay")
            if row.expires_at is not None and row.expires_at <= now:
                raise ReplayRefused("the message has expired: it can never be sent or replayed")
            if provider is not None and self.rules is not None:
                problem = provider_problem(self.rules(), provider, row.channel)
                if problem is not None:
                    raise ProviderRefused(problem)
            payload = dict(dead.payload)
            if payload.get("body") == REDACTED and not payload.get("otp_id"):
                raise ReplayRefused("an OTP body is not kept: ask the caller for a new code")
            sent = row.status in (Status.SENT.value, Status.DELIVERED.value)
            claimed = await session.execute(
                update(DL)
                .where(DL.c.id == dead_letter_id, DL.c.state == "open")
                .values(
                    state="replayed",
                    resolved_at=now,
                    resolved_by=actor,
                    resolution="already sent" if sent else reason,
                )
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                raise ReplayRefused("this dead letter is being replayed by someone else")
            await audit.record(
                session,
                actor=actor,
                action="dlq.replay",
                target=dead.notification_id,
                reason=reason,
                details={"dead_letter_id": dead_letter_id, "provider": provider, "skipped": sent},
            )
            if sent:
                return Replayed(dead.notification_id, "skipped")
            generation = row.generation + 1
            await session.execute(
                update(N)
                .where(N.c.id == row.id)
                .values(
                    generation=generation,
                    status=Status.ACCEPTED.value,
                    attempt_count=0,
                    updated_at=now,
                )
            )
            envelope = envelope_of(row.id, payload, generation, row.caller, provider)
            body = envelope.to_bytes()
            result = await session.execute(
                insert(OUTBOX).values(
                    notification_id=row.id,
                    routing_key=envelope.routing_key,
                    payload=body,
                    created_at=now,
                    available_at=now + timedelta(seconds=self.settings.outbox_relay_after_s),
                    publish_attempts=0,
                )
            )
            entry_id = inserted_id(result)
        self.outbox.publish_soon(entry_id, row.id, envelope.routing_key, body)
        return Replayed(row.id, "accepted")

    async def discard(self, dead_letter_id: str, *, actor: str, reason: str) -> None:
        async with self.sessions.begin() as session:
            changed = await session.execute(
                update(DL)
                .where(DL.c.id == dead_letter_id, DL.c.state == "open")
                .values(
                    state="discarded", resolved_at=utcnow(), resolved_by=actor, resolution=reason
                )
                .returning(DL.c.id, DL.c.notification_id)
            )
            discarded = changed.first()
            if discarded is None:
                exists = (
                    await session.execute(select(DL.c.state).where(DL.c.id == dead_letter_id))
                ).first()
                if exists is None:
                    raise DeadLetterNotFound(dead_letter_id)
                raise ReplayRefused(f"this dead letter was already {exists.state}")
            await audit.record(
                session,
                actor=actor,
                action="dlq.discard",
                # An unreadable dead letter has no notification: the audit names the row.
                target=discarded.notification_id or dead_letter_id,
                reason=reason,
                details={"dead_letter_id": dead_letter_id},
            )
