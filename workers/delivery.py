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
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.logs import get_logger
from providers.base import Provider, Receipt
from router.health import BreakerBoard
from router.rules import RoutingRules
from router.select import Candidate, plan
from workers.backoff import backoff_delay, retry_bucket_ms
from workers.claims import ClaimResult, Claims, LeaseTokens, lease_seconds
from workers.events import EventPublisher
from workers.otp_render import OTP_STATE_LOST, OtpRenderer, fallback_ids
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
from workers.store import (
    TIMEOUT_CODE,
    URGENT,
    Begun,
    DeliveryStore,
    Held,
    Interrupted,
    Lease,
    Skip,
    StatusWrite,
)
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
class _Round:
    """Where one delivery round stands: its lease token, the attempt it is on (``None``
    until the first call), what was charged before it, whether every call so far was a
    half-open probe, and the last transient failure."""

    owner: str
    attempt_no: int | None = None
    charged_before: int = 0
    only_probes: bool = True
    failure: SendFailure | None = None


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
        self.lease_s = lease_seconds(ctx.settings)
        self._tokens = LeaseTokens(ctx.claims.owner.decode())
        self._running: set[asyncio.Task[Disposition]] = set()

    async def handle(
        self,
        raw: bytes,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
        queue: str | None = None,
    ) -> Disposition:
        """Deliver one message in a task of its own that the caller cannot cancel.

        Whatever cancels the caller (a lane closing at shutdown, a channel closing under
        a consumer callback) never cancels a vendor call in progress: the delivery
        finishes and records its outcome, the ack is lost with the channel, and the copy
        RabbitMQ redelivers finds the outcome recorded and is skipped.
        """
        return await self._shielded(self._handle(raw, headers, message_id=message_id, queue=queue))

    async def resume(
        self,
        message: Envelope,
        raw: bytes,
        headers: Mapping[str, Any],
        work: Callable[[], Awaitable[Disposition]],
        *,
        message_id: str | None = None,
        queue: str | None = None,
    ) -> Disposition:
        """Finish, one by one, a delivery a batch began (its claim is held): ``work`` runs
        with the same handling of outages and crashes as ``handle``, and is shielded
        the same way."""
        source = _source_headers(message_id, queue)

        async def guarded() -> Disposition:
            URGENT.set(message.priority is Priority.HIGH)
            try:
                try:
                    return await work()
                except BaseException:
                    await self.release_quietly(message)
                    raise
            except Exception as exc:  # noqa: BLE001 - every crash is logged and dead-lettered
                return await self._on_exception(message, raw, headers, source, exc)

        return await self._shielded(guarded())

    async def _shielded(self, work: Coroutine[Any, Any, Disposition]) -> Disposition:
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                log.warning("delivery_outlives_its_channel", in_flight=len(self._running))
                task.add_done_callback(_report_orphan)
            raise

    async def after_first_call(
        self,
        message: Envelope,
        raw: bytes,
        headers: Mapping[str, Any],
        *,
        rules: RoutingRules,
        remaining: Sequence[Candidate],
        attempt_id: int,
        attempt_no: int,
        owner: str,
        failure: SendFailure,
        latency_ms: float,
        now: datetime,
    ) -> Disposition:
        """A batch's first call failed: record it, then go on as the one-by-one round
        would after that call (fail over to the next candidate, retry, dead-letter)."""
        lease = self._lease(owner)
        await self._record_failure(message, attempt_id, failure, latency_ms, lease)
        if failure.permanent:
            return await self._fail(message, raw, failure, attempt_no)
        round_ = _Round(owner, attempt_no, attempt_no - 1, only_probes=False, failure=failure)
        return await self._try_candidates(message, raw, headers, now, rules, remaining, round_)

    async def sent_alone(
        self, message: Envelope, attempt_id: int, receipt: Receipt, latency_ms: float, owner: str
    ) -> Disposition:
        """Record one send by itself (a batch's settle failed as a whole)."""
        await self._record_success(message, attempt_id, receipt, latency_ms, self._lease(owner))
        return Disposition.ACK

    async def _record_success(
        self, message: Envelope, attempt_id: int, receipt: Receipt, latency_ms: float, lease: Lease
    ) -> None:
        """The breaker counts the call, then the send is recorded (one by one)."""
        await self.ctx.breakers.record(receipt.provider, ok=True, latency_ms=latency_ms)
        await self._record_sent(message, attempt_id, receipt, latency_ms, lease)

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, for deliveries still running, those whose consumer
        callback was cancelled (a broker cut before a SIGTERM) included."""
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=max(0.0, timeout_s))
        if pending:
            log.warning("shutdown_grace_exceeded", in_flight=len(pending))

    async def _handle(
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
            return await self._on_exception(message, raw, headers, source, exc)

    async def _on_exception(
        self,
        message: Envelope,
        raw: bytes,
        headers: Mapping[str, Any],
        source: dict[str, str],
        exc: Exception,
    ) -> Disposition:
        """An outage of our services defers (bounded); anything else is our crash."""
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
            return await self._expire(message, raw, headers)

        claim = await ctx.claims.acquire(message.id, message.generation)
        if claim is ClaimResult.DONE:
            metrics.DUPLICATES_SKIPPED.labels("already_sent").inc()
            return Disposition.ACK
        if claim is ClaimResult.HELD:
            # Another worker holds the lease; if it died, the lease runs out and this copy
            # (or its own redelivered one) takes over.
            return await self._defer(message, raw, headers, reason="claimed_elsewhere")

        try:
            return await self._deliver_claimed(message, raw, now, headers)
        except BaseException:
            await self.release_quietly(message)
            raise

    async def _deliver_claimed(
        self, message: Envelope, raw: bytes, now: datetime, headers: Mapping[str, Any]
    ) -> Disposition:
        ctx = self.ctx
        if message.otp_id is not None:
            rendered = await ctx.otp.render(message)
            if isinstance(rendered, str) or await self._earlier_channel_delivered(message):
                await ctx.claims.release(message.id, message.generation)
                if rendered == OTP_STATE_LOST:
                    return await self._otp_state_lost(message, raw, headers)
                if rendered in ("dead", "expired"):
                    return await self._expire(message, raw, headers)
                return await self._not_needed(message, raw, now, headers)
            message = rendered
        rules = ctx.rules()
        available = await ctx.breakers.availability(rules.providers)
        route = plan(rules, message, available)
        if not route.considered:
            return await self._no_route(message, raw, now, headers)
        return await self._try_candidates(
            message, raw, headers, now, rules, route.order, _Round(self.new_owner())
        )

    async def _try_candidates(
        self,
        message: Envelope,
        raw: bytes,
        headers: Mapping[str, Any],
        now: datetime,
        rules: RoutingRules,
        candidates: Sequence[Candidate],
        round_: _Round,
    ) -> Disposition:
        """Each candidate in turn until one takes the message or fails it for good; then
        retry, wait for health, or dead-letter. ``round_`` is where the round stands (a
        batch hands over a message whose first call failed with it half done)."""
        ctx = self.ctx
        lease = self._lease(round_.owner)
        for candidate in candidates:
            provider = ctx.providers.get(candidate.provider)
            if provider is None or not await ctx.breakers.acquire(candidate.provider):
                continue
            probe = ctx.breakers.probing(candidate.provider)
            default_rate = getattr(provider, "default_max_per_s", None)
            if not await ctx.throttle.wait_turn(rules.providers[candidate.provider], default_rate):
                continue  # at its max_per_s: try the next candidate rather than queue here
            lease = self._lease(round_.owner)  # each attempt renews it for one more call
            attempt_id: int | None
            if round_.attempt_no is None:
                begun = await ctx.store.begin(
                    message.id, message.generation, provider.name, utcnow(), lease, rules.version
                )
                if isinstance(begun, Skip):
                    return await self._skip(message, raw, begun)
                if isinstance(begun, Held):
                    # Redis said free but the database says another delivery is sending:
                    # Redis lost its claims. Wait for that send to finish (or its lease to
                    # lapse), never send beside it.
                    await ctx.claims.release(message.id, message.generation)
                    return await self._defer(message, raw, headers, reason="leased_elsewhere")
                if isinstance(begun, Interrupted):
                    if await self._reconcile(message, begun, lease):
                        return Disposition.ACK
                    round_.attempt_no = round_.charged_before = begun.pending.attempt_no
                    attempt_id = await ctx.store.start_attempt(
                        message.id,
                        message.generation,
                        round_.attempt_no,
                        provider.name,
                        utcnow(),
                        lease,
                    )
                else:
                    round_.attempt_no, attempt_id = begun.attempt_no, begun.attempt_id
                    round_.charged_before = begun.attempt_no - 1
                    if begun.timed_out and await self._found_after_timeout(message, begun, lease):
                        return Disposition.ACK
            else:  # failover within the same delivery: a new attempt row, same round
                attempt_id = await ctx.store.start_attempt(
                    message.id,
                    message.generation,
                    round_.attempt_no,
                    provider.name,
                    utcnow(),
                    lease,
                )
            if attempt_id is None:
                return self._lease_lost(message)
            outcome = await self._call(message, provider, attempt_id, lease)
            if isinstance(outcome, Receipt):
                return Disposition.ACK
            if outcome.permanent:
                return await self._fail(message, raw, outcome, round_.attempt_no)
            round_.failure = outcome
            round_.only_probes = round_.only_probes and probe
        return await self._end_round(message, raw, now, round_, lease)

    async def _end_round(
        self, message: Envelope, raw: bytes, now: datetime, round_: _Round, lease: Lease
    ) -> Disposition:
        """No candidate took it: wait for health, or (some call failed) retry later."""
        await self.ctx.claims.release(message.id, message.generation)
        if round_.attempt_no is None or round_.failure is None:
            return await self._wait_for_health(message, raw, now)
        if round_.only_probes:
            return await self._probe_failed(
                message, raw, round_.failure, round_.charged_before, lease
            )
        return await self._retry_or_exhaust(message, raw, round_.failure, round_.attempt_no, lease)

    def new_owner(self) -> str:
        """A lease token no other delivery (or batch) of this worker shares."""
        return self._tokens.next()

    def _lease(self, owner: str) -> Lease:
        return Lease(owner, utcnow() + timedelta(seconds=self.lease_s))

    def _lease_lost(self, message: Envelope) -> Disposition:
        """This delivery's lease lapsed and another delivery took the row over (with its
        own copy of the message): that one owns the outcome now; this copy is done."""
        log.warning("delivery_lease_lost", notification_id=message.id)
        metrics.DUPLICATES_SKIPPED.labels("lease_lost").inc()
        return Disposition.ACK

    async def _call(
        self, message: Envelope, provider: Provider, attempt_id: int, lease: Lease
    ) -> Receipt | SendFailure:
        """One provider call, recorded; the breaker learns the outcome (a timeout is a
        failure like any transient one)."""
        outcome, latency = await self.send_once(message, provider)
        if isinstance(outcome, Receipt):
            await self._record_success(message, attempt_id, outcome, latency, lease)
            return outcome
        await self._record_failure(message, attempt_id, outcome, latency, lease)
        return outcome

    async def send_once(
        self, message: Envelope, provider: Provider
    ) -> tuple[Receipt | SendFailure, float]:
        """The vendor call alone, its answer as a value (and its latency in ms): nothing
        is recorded here."""
        labels = (message.channel.value, message.category.value, provider.name)
        started = time.perf_counter()
        try:
            receipt = await asyncio.wait_for(
                provider.send(message), timeout=self.settings.provider_timeout_s
            )
        except PermanentProviderError as exc:
            metrics.FAILED.labels(*labels).inc()
            return SendFailure(provider.name, str(exc), exc.code, True, None), _ms_since(started)
        except (TransientProviderError, TimeoutError) as exc:
            transient = exc if isinstance(exc, TransientProviderError) else None
            failure = SendFailure(
                provider.name,
                str(exc) or "provider call timed out",
                transient.code if transient else TIMEOUT_CODE,
                False,
                transient.retry_after if transient else None,
            )
            return failure, _ms_since(started)
        latency = _ms_since(started)
        metrics.PROVIDER_LATENCY.labels(provider.name).observe(latency / 1000)
        metrics.SENT.labels(*labels).inc()
        return receipt, latency

    async def _record_failure(
        self,
        message: Envelope,
        attempt_id: int,
        failure: SendFailure,
        latency: float,
        lease: Lease,
    ) -> None:
        # A final "no" is the vendor answering: it says nothing against its health.
        await self.ctx.breakers.record(failure.provider, ok=failure.permanent, latency_ms=latency)
        await self.ctx.store.finish(
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
            lease=lease,
            error=failure.error,
            error_code=failure.code,
        )
        log.info(
            "send_failed" if failure.permanent else "send_transient",
            notification_id=message.id,
            provider=failure.provider,
            code=failure.code,
        )

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

    async def _not_needed(
        self, message: Envelope, raw: bytes, now: datetime, headers: Mapping[str, Any]
    ) -> Disposition:
        """Nothing was lost (the code was verified, or came through on another channel):
        ``expired`` without a dead letter."""
        written = await self.ctx.store.set_status(
            message.id,
            Status.EXPIRED,
            now,
            error="not needed: the code was used or delivered",
            error_code="otp_not_needed",
            only_if_not_terminal=True,
        )
        if written is StatusWrite.HELD:
            return await self._defer(message, raw, headers, reason="leased_elsewhere")
        return Disposition.ACK

    async def _otp_state_lost(
        self, message: Envelope, raw: bytes, headers: Mapping[str, Any]
    ) -> Disposition:
        """The OTP's record vanished from Redis before its expiry (Redis lost its data):
        the code cannot be rebuilt, so this message fails for good, dead-lettered so
        on-call sees the loss; the caller must ask for a new code (the old one no longer
        verifies either)."""
        error = (
            "the one-time passcode's state was lost from Redis before it expired "
            "(Redis restarted empty or failed over): it cannot be sent; ask for a new code"
        )
        written = await self.ctx.store.set_status(
            message.id,
            Status.FAILED,
            utcnow(),
            error=error,
            error_code=OTP_STATE_LOST,
            only_if_not_terminal=True,
        )
        if written is StatusWrite.HELD:
            return await self._defer(message, raw, headers, reason="leased_elsewhere")
        if written is StatusWrite.FINAL:
            return Disposition.ACK
        log.warning("otp_state_lost", notification_id=message.id, otp_id=message.otp_id)
        details = await self.ctx.store.dead_letter_details(message.id) or {}
        return await self._dead_letter(
            message,
            raw,
            DeadLetterReason.PERMANENT_ERROR,
            error,
            OTP_STATE_LOST,
            _str(details.get("last_provider")),
            int(details.get("attempt_count") or 0),  # type: ignore[call-overload]
            Status.FAILED,
        )

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
        self, message: Envelope, raw: bytes, failure: SendFailure, attempt_no: int, lease: Lease
    ) -> Disposition:
        """Every candidate failed transiently: back off, or give up when out of attempts."""
        policy = self.settings.backoff_for(message.category.value)
        if attempt_no >= policy.max_attempts:
            written = await self.ctx.store.set_status(
                message.id, Status.DEAD_LETTERED, utcnow(), lease=lease
            )
            if written is StatusWrite.HELD:
                return self._lease_lost(message)
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
        written = await self.ctx.store.set_status(
            message.id, Status.RETRY_SCHEDULED, utcnow(), lease=lease
        )
        if written is StatusWrite.HELD:
            return self._lease_lost(message)
        metrics.RETRIED.labels(
            message.channel.value, message.category.value, failure.provider
        ).inc()
        delay = backoff_delay(attempt_no, policy, retry_after=failure.retry_after)
        return await self._schedule_retry(message, raw, delay, at_least_s=failure.retry_after)

    async def _probe_failed(
        self,
        message: Envelope,
        raw: bytes,
        failure: SendFailure,
        charged_before: int,
        lease: Lease,
    ) -> Disposition:
        """Every call of this round was a half-open probe and failed: the vendor is still
        unhealthy, which is the breaker's test, not the message's attempt. It goes back to
        waiting for health with its attempts as they were (the call stays in its history)."""
        written = await self.ctx.store.set_status(
            message.id,
            Status.RETRY_SCHEDULED,
            utcnow(),
            error=failure.error,
            error_code=failure.code,
            lease=lease,
            attempt_count=charged_before,
        )
        if written is StatusWrite.HELD:
            return self._lease_lost(message)
        metrics.DEFERRED.labels("probe_failed").inc()
        return await self._schedule_retry(message, raw, self.ctx.breakers.config.cooldown_s)

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

    async def _no_route(
        self, message: Envelope, raw: bytes, now: datetime, headers: Mapping[str, Any]
    ) -> Disposition:
        written = await self.ctx.store.set_status(
            message.id,
            Status.FAILED,
            now,
            error="no routing rule matches this message",
            error_code="no_route",
            only_if_not_terminal=True,
        )
        await self.ctx.claims.release(message.id, message.generation)
        if written is StatusWrite.HELD:
            return await self._defer(message, raw, headers, reason="leased_elsewhere")
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
        lease: Lease,
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
            lease=lease,
            vendor_message_id=receipt.vendor_message_id,
            provider=receipt.provider,
        )
        await ctx.claims.mark_done(message.id, message.generation)
        await ctx.events.publish("sent", message, provider=receipt.provider)

    async def _reconcile(self, message: Envelope, interrupted: Interrupted, lease: Lease) -> bool:
        """A previous worker died mid-send (its lease lapsed): ask the vendor before
        sending again; if it cannot tell, mark that attempt ``unknown`` first."""
        ctx = self.ctx
        pending = interrupted.pending
        receipt = await self._lookup(message, pending.provider)
        if receipt is not None:
            log.info("send_reconciled", notification_id=message.id, provider=pending.provider)
            await self._record_sent(
                message, pending.id, receipt, None, lease, AttemptOutcome.RECONCILED
            )
            return True
        await ctx.store.finish(
            notification_id=message.id,
            attempt_id=pending.id,
            outcome=AttemptOutcome.UNKNOWN,
            status=Status.SENDING,
            now=utcnow(),
            latency_ms=None,
            lease=lease,
            error="worker stopped during the provider call; vendor has no record",
            error_code="interrupted",
        )
        return False

    async def _found_after_timeout(self, message: Envelope, begun: Begun, lease: Lease) -> bool:
        """An earlier call timed out, so the vendor may have sent it: ask each such vendor
        that can answer (``Provider.lookup``) before sending again. Found: this attempt
        records that send (``reconciled``) and nothing is resent."""
        for name in begun.timed_out:
            receipt = await self._lookup(message, name)
            if receipt is None:
                continue
            log.info("send_found_after_timeout", notification_id=message.id, provider=name)
            await self._record_sent(
                message, begun.attempt_id, receipt, None, lease, AttemptOutcome.RECONCILED
            )
            return True
        return False

    async def _lookup(self, message: Envelope, provider_name: str) -> Receipt | None:
        """Did ``provider_name`` already accept this message? ``None`` when it does not
        know, cannot say (no lookup), fails, or takes longer than a send may."""
        provider = self.ctx.providers.get(provider_name)
        if provider is None:
            return None
        try:
            return await asyncio.wait_for(
                provider.lookup(message), timeout=self.settings.provider_timeout_s
            )
        except (ProviderError, TimeoutError) as exc:
            log.warning(
                "lookup_failed", notification_id=message.id, provider=provider_name, error=str(exc)
            )
            return None

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

    async def _expire(
        self, message: Envelope, raw: bytes, headers: Mapping[str, Any]
    ) -> Disposition:
        written = await self.ctx.store.set_status(
            message.id,
            Status.EXPIRED,
            utcnow(),
            error="expired before it could be sent",
            error_code="expired",
            only_if_not_terminal=True,
        )
        if written is StatusWrite.HELD:
            # A send that began before the expiry is in progress: its outcome stands, and
            # if its worker died, this copy expires the row once the lease lapses.
            return await self._defer(message, raw, headers, reason="leased_elsewhere")
        if written is StatusWrite.FINAL:
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

    async def release_quietly(self, message: Envelope) -> None:
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


def _report_orphan(task: asyncio.Task[Disposition]) -> None:
    """A delivery whose consumer callback was cancelled ended: nobody acks it (its channel
    is gone), so say how it ended; the redelivered copy finds the recorded outcome."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("delivery_failed_after_channel_loss", exc_info=exc)
    else:
        log.info("delivery_finished_after_channel_loss", disposition=task.result().value)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _str(value: object) -> str | None:
    return None if value is None else str(value)
