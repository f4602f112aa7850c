"""One delivery: decide, send, record. Returns what to do with the message; never acks.

Order of work for each message (see docs/guarantees.md for why):
expiry → claim → database check (+ attempt row ``sending``) → provider call → record →
retry / dead-letter publish → the caller acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from config.settings import Settings
from herald import metrics, names
from herald.broker import BROKER_ERRORS, Publisher
from herald.domain import (
    AttemptOutcome,
    DeadLetterReason,
    Envelope,
    EnvelopeError,
    Priority,
    Status,
    utcnow,
)
from herald.errors import PermanentProviderError, TransientProviderError
from herald.logs import get_logger
from providers.base import Provider, Receipt
from router.health import BreakerBoard
from router.rules import RoutingRules
from router.select import plan
from workers.backoff import backoff_delay, retry_bucket_ms
from workers.claims import ClaimResult, Claims
from workers.events import EventPublisher
from workers.otp_render import OtpRenderer, fallback_ids
from workers.poison import (
    HEADER_CRASHES,
    HEADER_DEFERRALS,
    HEADER_SOURCE_MESSAGE_ID,
    HEADER_SOURCE_QUEUE,
    SECRET_HEADER,
    carried,
    count_of,
    crash_text,
    exception_code,
    is_infrastructure,
)
from workers.store import URGENT, DeliveryStore, Interrupted, Skip
from workers.throttle import ProviderThrottle

log = get_logger(__name__)

class Disposition(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class SendFailure:
    provider: str
    error: str
    code: str | None
    permanent: bool
    retry_after: float | None


@dataclass(slots=True)
class DeliveryContext:
    settings: Settings
    store: DeliveryStore
    claims: Claims
    publisher: Publisher
    events: EventPublisher
    providers: Mapping[str, Provider]
    rules: Callable[[], RoutingRules]
    breakers: BreakerBoard
    throttle: ProviderThrottle
    otp: OtpRenderer


class Delivery:
    def __init__(self, ctx: DeliveryContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings

    async def handle(
        self,
        raw: bytes,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
        queue: str | None = None,
    ) -> Disposition:
        """Deliver one message. A body that is no envelope is dead-lettered at once; an
        outage of our services defers it (bounded); any other exception is a crash of
        our code on this message, retried ``crash_retries`` times, then dead-lettered."""
        headers = headers or {}
        source = _source_headers(message_id, queue)
        try:
            message = Envelope.from_bytes(raw)
        except EnvelopeError as exc:
            return await self._unreadable(raw, headers, source, str(exc))
        URGENT.set(message.priority is Priority.HIGH)  # this task only (a task per message)
        try:
            return await self._deliver(message, raw, headers)
        except Exception as exc:  # noqa: BLE001 - every crash is logged and dead-lettered
            if is_infrastructure(exc):
                log.warning("delivery_infra_error", notification_id=message.id, error=repr(exc))
                return await self._defer(
                    message, raw, headers, reason="infrastructure", error=repr(exc)
                )
            return await self._crashed(message, raw, headers, source, exc)

    async def _deliver(
        self, message: Envelope, raw: bytes, headers: Mapping[str, Any]
    ) -> Disposition:
        ctx = self.ctx
        now = utcnow()
        if message.is_expired(now):
            return await self._expire(message, raw)

        claim = await ctx.claims.acquire(message.id, message.generation)
        if claim is ClaimResult.DONE:
            metrics.DUPLICATES_SKIPPED.labels("already_sent").inc()
            return Disposition.ACK
        if claim is ClaimResult.HELD:
            # Another worker holds the lease; if it died, the lease runs out and this copy
            # (or its own redelivered one) takes over.
            return await self._defer(message, raw, headers, reason="claimed_elsewhere")

        try:
            return await self._deliver_claimed(message, raw, now)
        except BaseException:
            await self._release_quietly(message)
            raise

    async def _deliver_claimed(self, message: Envelope, raw: bytes, now: datetime) -> Disposition:
        ctx = self.ctx
        if message.otp_id is not None:
            rendered = await ctx.otp.render(message)
            if isinstance(rendered, str) or await self._earlier_channel_delivered(message):
                await ctx.claims.release(message.id, message.generation)
                if rendered in ("dead", "expired"):
                    return await self._expire(message, raw)
                return await self._not_needed(message, now)
            message = rendered
        rules = ctx.rules()
        available = await ctx.breakers.availability(rules.providers)
        route = plan(rules, message, available)
        if not route.considered:
            return await self._no_route(message, raw, now)
        attempt_no: int | None = None
        failure: SendFailure | None = None
        for candidate in route.order:
            provider = ctx.providers.get(candidate.provider)
            if provider is None or not await ctx.breakers.acquire(candidate.provider):
                continue
            default_rate = getattr(provider, "default_max_per_s", None)
            if not await ctx.throttle.wait_turn(rules.providers[candidate.provider], default_rate):
                continue  # at its max_per_s: try the next candidate rather than queue here
            if attempt_no is None:
                begun = await ctx.store.begin(
                    message.id, message.generation, provider.name, now, rules.version
                )
                if isinstance(begun, Skip):
                    return await self._skip(message, raw, begun)
                if isinstance(begun, Interrupted):
                    if await self._reconcile(message, begun):
                        return Disposition.ACK
                    attempt_no = begun.pending.attempt_no
                    attempt_id = await ctx.store.start_attempt(
                        message.id, message.generation, attempt_no, provider.name, utcnow()
                    )
                else:
                    attempt_no, attempt_id = begun.attempt_no, begun.attempt_id
            else:  # failover within the same delivery: a new attempt row, same round
                attempt_id = await ctx.store.start_attempt(
                    message.id, message.generation, attempt_no, provider.name, utcnow()
                )
            outcome = await self._call(message, provider, attempt_id)
            if isinstance(outcome, Receipt):
                return Disposition.ACK
            if outcome.permanent:
                return await self._fail(message, raw, outcome, attempt_no)
            failure = outcome

        await ctx.claims.release(message.id, message.generation)
        if attempt_no is None or failure is None:
            return await self._wait_for_health(message, raw, now)
        return await self._retry_or_exhaust(message, raw, failure, attempt_no)

    async def _call(
        self, message: Envelope, provider: Provider, attempt_id: int
    ) -> Receipt | SendFailure:
        """One provider call, recorded; the breaker learns the outcome."""
        ctx = self.ctx
        labels = (message.channel.value, message.category.value, provider.name)
        started = time.perf_counter()
        try:
            receipt = await asyncio.wait_for(
                provider.send(message), timeout=self.settings.provider_timeout_s
            )
        except PermanentProviderError as exc:
            failure = SendFailure(provider.name, str(exc), exc.code, True, None)
            metrics.FAILED.labels(*labels).inc()
        except (TransientProviderError, TimeoutError) as exc:
            transient = exc if isinstance(exc, TransientProviderError) else None
            failure = SendFailure(
                provider.name,
                str(exc) or "provider call timed out",
                transient.code if transient else "timeout",
                False,
                transient.retry_after if transient else None,
            )
        else:
            latency = _ms_since(started)
            metrics.PROVIDER_LATENCY.labels(provider.name).observe(latency / 1000)
            await ctx.breakers.record(provider.name, ok=True, latency_ms=latency)
            await self._record_sent(message, attempt_id, receipt, latency)
            metrics.SENT.labels(*labels).inc()
            return receipt
        latency = _ms_since(started)
        # A final "no" is the vendor answering: it says nothing against its health.
        await ctx.breakers.record(provider.name, ok=failure.permanent, latency_ms=latency)
        await ctx.store.finish(
            notification_id=message.id,
            attempt_id=attempt_id,
            outcome=(
                AttemptOutcome.PERMANENT_ERROR
                if failure.permanent
                else AttemptOutcome.TRANSIENT_ERROR
            ),
            # After a transient error the delivery goes on with the next candidate.
            status=Status.FAILED if failure.permanent else Status.SENDING,
            now=utcnow(),
            latency_ms=latency,
            error=failure.error,
            error_code=failure.code,
        )
        log.info(
            "send_failed" if failure.permanent else "send_transient",
            notification_id=message.id,
            provider=provider.name,
            code=failure.code,
        )
        return failure

    async def _earlier_channel_delivered(self, message: Envelope) -> bool:
        """An OTP fallback is needed only while no earlier channel delivered the code
        (``sent`` counts as delivered for a vendor that sends no receipts)."""
        chain = message.metadata.get("otp_chain") or []
        for status, provider_name in await self.ctx.store.delivery_states(chain):
            if status == Status.DELIVERED.value:
                return True
            provider = self.ctx.providers.get(provider_name or "")
            if status == Status.SENT.value and not getattr(provider, "supports_receipts", False):
                return True
        return False

    async def _not_needed(self, message: Envelope, now: datetime) -> Disposition:
        """Nothing was lost (the code was verified, or came through on another channel):
        ``expired`` without a dead letter."""
        await self.ctx.store.set_status(
            message.id,
            Status.EXPIRED,
            now,
            error="not needed: the code was used or delivered",
            error_code="otp_not_needed",
            only_if_not_terminal=True,
        )
        return Disposition.ACK

    async def _hurry_fallback(self, message: Envelope) -> None:
        """This OTP message failed for good: its next fallback channel goes now."""
        assert message.otp_id is not None
        chain = await fallback_ids(self.ctx.otp.redis, message.otp_id)
        position = chain.index(message.id) + 1 if message.id in chain else 0
        if position < len(chain):
            await self.ctx.store.publish_now(chain[position])

    async def _fail(
        self, message: Envelope, raw: bytes, failure: SendFailure, attempt_no: int
    ) -> Disposition:
        await self.ctx.claims.release(message.id, message.generation)
        return await self._dead_letter(
            message,
            raw,
            DeadLetterReason.PERMANENT_ERROR,
            failure.error,
            failure.code,
            failure.provider,
            attempt_no,
            Status.FAILED,
        )

    async def _retry_or_exhaust(
        self, message: Envelope, raw: bytes, failure: SendFailure, attempt_no: int
    ) -> Disposition:
        """Every candidate failed transiently: back off, or give up when out of attempts."""
        policy = self.settings.backoff_for(message.category.value)
        if attempt_no >= policy.max_attempts:
            await self.ctx.store.set_status(message.id, Status.DEAD_LETTERED, utcnow())
            return await self._dead_letter(
                message,
                raw,
                DeadLetterReason.EXHAUSTED,
                failure.error,
                failure.code,
                failure.provider,
                attempt_no,
                Status.DEAD_LETTERED,
            )
        await self.ctx.store.set_status(message.id, Status.RETRY_SCHEDULED, utcnow())
        metrics.RETRIED.labels(
            message.channel.value, message.category.value, failure.provider
        ).inc()
        delay = backoff_delay(attempt_no, policy, retry_after=failure.retry_after)
        return await self._schedule_retry(message, raw, delay, at_least_s=failure.retry_after)

    async def _wait_for_health(self, message: Envelope, raw: bytes, now: datetime) -> Disposition:
        """No candidate could take it now (breakers open, or at their max_per_s): wait,
        neither charged an attempt nor dead-lettered."""
        await self.ctx.store.set_status(
            message.id,
            Status.RETRY_SCHEDULED,
            now,
            error="no provider available now: breakers open or throughput limits reached",
            error_code="no_healthy_provider",
            only_if_not_terminal=True,
        )
        metrics.DEFERRED.labels("no_healthy_provider").inc()
        return await self._schedule_retry(message, raw, self.ctx.breakers.config.cooldown_s)

    async def _no_route(self, message: Envelope, raw: bytes, now: datetime) -> Disposition:
        await self.ctx.store.set_status(
            message.id,
            Status.FAILED,
            now,
            error="no routing rule matches this message",
            error_code="no_route",
            only_if_not_terminal=True,
        )
        await self.ctx.claims.release(message.id, message.generation)
        return await self._dead_letter(
            message,
            raw,
            DeadLetterReason.NO_ROUTE,
            "no routing rule matches this message",
            "no_route",
            None,
            0,
            Status.FAILED,
        )

    async def _record_sent(
        self,
        message: Envelope,
        attempt_id: int,
        receipt: Receipt,
        latency_ms: float | None,
        outcome: AttemptOutcome = AttemptOutcome.SENT,
    ) -> None:
        ctx = self.ctx
        await ctx.store.finish(
            notification_id=message.id,
            attempt_id=attempt_id,
            outcome=outcome,
            status=Status.SENT,
            now=utcnow(),
            latency_ms=latency_ms,
            vendor_message_id=receipt.vendor_message_id,
        )
        await ctx.claims.mark_done(message.id, message.generation)
        await ctx.events.publish("sent", message, provider=receipt.provider)

    async def _reconcile(self, message: Envelope, interrupted: Interrupted) -> bool:
        """A previous worker died mid-send: ask the vendor before sending again."""
        ctx = self.ctx
        pending = interrupted.pending
        provider = ctx.providers.get(pending.provider)
        receipt = await provider.lookup(message) if provider is not None else None
        if receipt is not None:
            log.info("send_reconciled", notification_id=message.id, provider=pending.provider)
            await self._record_sent(message, pending.id, receipt, None, AttemptOutcome.RECONCILED)
            return True
        await ctx.store.finish(
            notification_id=message.id,
            attempt_id=pending.id,
            outcome=AttemptOutcome.UNKNOWN,
            status=Status.SENDING,
            now=utcnow(),
            latency_ms=None,
            error="worker stopped during the provider call; vendor has no record",
            error_code="interrupted",
        )
        return False

    async def _skip(self, message: Envelope, raw: bytes, skip: Skip) -> Disposition:
        ctx = self.ctx
        if skip.status is None:  # no such notification: a message we never accepted
            await ctx.claims.release(message.id, message.generation)
            error = f"no notification {message.id} in the database (never accepted here?)"
            log.error("delivery_unknown_notification", notification_id=message.id)
            metrics.DEAD_LETTERED.labels(
                message.channel.value, message.category.value, DeadLetterReason.UNREADABLE
            ).inc()
            return await self._to_dlx(
                message.id,
                raw,
                _dlq_headers(DeadLetterReason.UNREADABLE, error, "unknown_notification"),
            )
        metrics.DUPLICATES_SKIPPED.labels(skip.reason).inc()
        if skip.status is Status.SENT or skip.status is Status.DELIVERED:
            await ctx.claims.mark_done(message.id, message.generation)
        else:
            await ctx.claims.release(message.id, message.generation)
        if (
            skip.status in (Status.FAILED, Status.DEAD_LETTERED, Status.EXPIRED)
            and skip.reason == "terminal"
        ):
            # We may have died after recording the outcome but before the dead-letter
            # publish: publish again (the ingester ignores a duplicate).
            details = await ctx.store.dead_letter_details(message.id) or {}
            reason = {
                Status.FAILED: DeadLetterReason.PERMANENT_ERROR,
                Status.DEAD_LETTERED: DeadLetterReason.EXHAUSTED,
                Status.EXPIRED: DeadLetterReason.EXPIRED,
            }[skip.status]
            if details.get("last_error_code") == "no_route":
                reason = DeadLetterReason.NO_ROUTE
            return await self._publish_dead_letter(
                message,
                raw,
                reason,
                _str(details.get("last_error")),
                _str(details.get("last_error_code")),
                _str(details.get("last_provider")),
                int(details.get("attempt_count") or 0),  # type: ignore[call-overload]
            )
        return Disposition.ACK

    async def _expire(self, message: Envelope, raw: bytes) -> Disposition:
        changed = await self.ctx.store.set_status(
            message.id,
            Status.EXPIRED,
            utcnow(),
            error="expired before it could be sent",
            error_code="expired",
            only_if_not_terminal=True,
        )
        if not changed:
            return Disposition.ACK  # already terminal (sent, or expired before)
        details = await self.ctx.store.dead_letter_details(message.id) or {}
        return await self._dead_letter(
            message,
            raw,
            DeadLetterReason.EXPIRED,
            "expired before it could be sent",
            "expired",
            _str(details.get("last_provider")),
            int(details.get("attempt_count") or 0),  # type: ignore[call-overload]
            Status.EXPIRED,
        )

    async def _dead_letter(
        self,
        message: Envelope,
        raw: bytes,
        reason: DeadLetterReason,
        error: str | None,
        code: str | None,
        provider: str | None,
        attempts: int,
        status: Status,
    ) -> Disposition:
        metrics.DEAD_LETTERED.labels(
            message.channel.value, message.category.value, reason.value
        ).inc()
        if message.otp_id is not None:
            await self._hurry_fallback(message)
        await self.ctx.events.publish(status.value, message, reason=reason.value, error_code=code)
        return await self._publish_dead_letter(
            message, raw, reason, error, code, provider, attempts
        )

    async def _publish_dead_letter(
        self,
        message: Envelope,
        raw: bytes,
        reason: DeadLetterReason,
        error: str | None,
        code: str | None,
        provider: str | None,
        attempts: int,
    ) -> Disposition:
        headers = _dlq_headers(reason, error, code, provider, attempts)
        return await self._to_dlx(message.id, raw, headers)

    async def _to_dlx(
        self, notification_id: str, raw: bytes, headers: Mapping[str, Any]
    ) -> Disposition:
        """Hand the message to ``herald.dlq`` (the ingester stores it); ack once confirmed."""
        try:
            await self.ctx.publisher.publish(
                names.DLX, "", raw, notification_id=notification_id, headers=headers
            )
        except BROKER_ERRORS as exc:
            log.warning(
                "dead_letter_publish_failed", notification_id=notification_id, error=repr(exc)
            )
            return Disposition.REQUEUE
        return Disposition.ACK

    async def _unreadable(
        self, raw: bytes, headers: Mapping[str, Any], source: dict[str, str], error: str
    ) -> Disposition:
        """Not an envelope: certain poison, so straight to the dead letters (raw bytes kept)."""
        claimed = headers.get(names.HEADER_NOTIFICATION_ID)
        notification_id = claimed if isinstance(claimed, str) else ""
        metrics.DEAD_LETTERED.labels("unknown", "unknown", DeadLetterReason.UNREADABLE).inc()
        log.error("delivery_unreadable", notification_id=notification_id, error=error)
        dlq = _dlq_headers(DeadLetterReason.UNREADABLE, error, "bad_envelope")
        # The sender's headers go along (credentials dropped) for on-call to read.
        kept = {k: v for k, v in headers.items() if not SECRET_HEADER.search(str(k))}
        return await self._to_dlx(notification_id, raw, {**kept, **dlq, **source})

    async def _crashed(
        self,
        message: Envelope,
        raw: bytes,
        headers: Mapping[str, Any],
        source: dict[str, str],
        exc: Exception,
    ) -> Disposition:
        """Our code raised on this message: one more try (``crash_retries``), then the
        dead letters with the exception type, instead of a requeue loop."""
        code = exception_code(exc)
        crashes = count_of(headers, HEADER_CRASHES) + 1
        metrics.CRASHES.labels(code).inc()
        log.error(
            "delivery_crashed",
            notification_id=message.id,
            crashes=crashes,
            error_type=code,
            exc_info=message.otp_id is None,  # an OTP's traceback may quote its code
        )
        if crashes <= self.settings.crash_retries:
            return await self._schedule_retry(
                message,
                raw,
                self.settings.retry_buckets_ms[0] / 1000,
                headers=carried(headers, crashes=crashes),
            )
        text = crash_text(exc, withhold_detail=message.otp_id is not None)
        dlq = _dlq_headers(DeadLetterReason.CRASHED, text, code)
        return await self._dead_letter_unrecorded(message, raw, {**dlq, **source})

    async def _dead_letter_unrecorded(
        self, message: Envelope, raw: bytes, headers: Mapping[str, Any]
    ) -> Disposition:
        """Dead-letter without writing the status here (the database may be what fails):
        the ingester marks the notification ``dead_lettered`` when it stores the row."""
        reason = str(headers[names.HEADER_DLQ_REASON])
        metrics.DEAD_LETTERED.labels(message.channel.value, message.category.value, reason).inc()
        await self.ctx.events.publish(
            Status.DEAD_LETTERED.value,
            message,
            reason=reason,
            error_code=headers.get("x-herald-error-code"),
        )
        return await self._to_dlx(message.id, raw, headers)

    async def _schedule_retry(
        self,
        message: Envelope,
        raw: bytes,
        delay_s: float,
        *,
        at_least_s: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> Disposition:
        """Publish a copy to a retry queue; ``headers`` are the counters it carries."""
        bucket = retry_bucket_ms(delay_s, self.settings.retry_buckets_ms, at_least_s=at_least_s)
        try:
            await self.ctx.publisher.publish(
                names.RETRY_EXCHANGE,
                message.routing_key,
                raw,
                notification_id=message.id,
                headers={**(headers or {}), names.HEADER_RETRY_BUCKET: bucket},
            )
        except BROKER_ERRORS as exc:
            log.warning("retry_publish_failed", notification_id=message.id, error=repr(exc))
            return Disposition.REQUEUE
        return Disposition.ACK

    async def _defer(
        self,
        message: Envelope,
        raw: bytes,
        headers: Mapping[str, Any],
        *,
        reason: str,
        error: str | None = None,
    ) -> Disposition:
        """Try again shortly without charging an attempt (claimed elsewhere, infra trouble),
        at most ``max_deferrals`` times in a row (counted in a header), then dead-letter."""
        deferrals = count_of(headers, HEADER_DEFERRALS) + 1
        if deferrals > self.settings.max_deferrals:
            text = f"put back {deferrals - 1} times in a row without an attempt; last: {reason}"
            dlq = _dlq_headers(
                DeadLetterReason.INFRASTRUCTURE, f"{text} ({error})" if error else text, reason
            )
            return await self._dead_letter_unrecorded(message, raw, dlq)
        metrics.DEFERRED.labels(reason).inc()
        log.debug("delivery_deferred", notification_id=message.id, reason=reason)
        return await self._schedule_retry(
            message,
            raw,
            self.settings.retry_buckets_ms[0] / 1000,
            headers=carried(headers, deferrals=deferrals),
        )

    async def _release_quietly(self, message: Envelope) -> None:
        with contextlib.suppress(RedisError):  # the lease runs out by itself
            await self.ctx.claims.release(message.id, message.generation)


def _dlq_headers(
    reason: DeadLetterReason,
    error: str | None,
    code: str | None,
    provider: str | None = None,
    attempts: int = 0,
) -> dict[str, Any]:
    """The ``x-herald-*`` headers the ingester reads a worker's decision from."""
    return {
        names.HEADER_DLQ_REASON: reason.value,
        "x-herald-error": (error or "")[:1000],
        "x-herald-error-code": (code or "")[:64],
        "x-herald-provider": provider or "",
        "x-herald-attempts": attempts,
    }


def _source_headers(message_id: str | None, queue: str | None) -> dict[str, str]:
    """Where a dead-lettered message came from (the ingester dedupes on the message id)."""
    out = {HEADER_SOURCE_MESSAGE_ID: message_id or "", HEADER_SOURCE_QUEUE: queue or ""}
    return {k: v for k, v in out.items() if v}


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _str(value: object) -> str | None:
    return None if value is None else str(value)
