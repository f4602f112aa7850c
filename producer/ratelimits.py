"""The rate-limit and abuse policies of the send and OTP endpoints (DESIGN §8).

Checks are built here from settings; ``ratelimit.Guard`` applies them. A refusal is a
``429`` with ``Retry-After`` and ``RateLimit-*`` headers naming the policy; an OTP limit
that cannot be decided (Redis down) is a ``503``. Nothing is queued by a refusal.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.settings import LimitPolicy, Settings
from herald import names
from herald.domain import Channel
from herald.logs import get_logger
from herald.otp import recipient_key
from producer.auth import Principal
from producer.problems import FieldError, Problem
from ratelimit import Limit, rate_limit_headers
from ratelimit.guard import Check, Guard, Verdict

log = get_logger(__name__)


def limit_of(policy: LimitPolicy) -> Limit:
    return _limit(policy.rate, policy.period_s, policy.burst)


@functools.lru_cache(maxsize=256)
def _limit(rate: int, period_s: float, burst: int | None) -> Limit:
    """Limits are immutable values, built (and checked) once, not on every request."""
    return Limit(rate=rate, period_s=period_s, burst=burst)


def send_checks(
    settings: Settings, principal: Principal, channel: Channel, to: str, *, country: str | None
) -> list[Check]:
    """Every send: the caller's rate, the recipient's (floods hurt people) and, for SMS,
    the pumping velocity limits. ``country`` is the number's region, from validation."""
    return [
        Check("api_key", f"key:{principal.id}", limit_of(settings.limit_api_key)),
        Check(
            "recipient",
            f"rcpt:{recipient_key(channel.value, to)}",
            limit_of(settings.limit_recipient),
        ),
        *sms_checks(settings, channel, to, country=country),
    ]


def sms_checks(
    settings: Settings, channel: Channel, to: str, *, country: str | None
) -> list[Check]:
    """SMS pumping (premium ranges that pay the fraudster per message) is not only an OTP
    risk: every SMS counts per destination country and number prefix. These counters are
    apart from the OTP ones, so a legitimate transactional burst never spends the OTP
    budget of a country; like the other general limits they fail open to a local limiter.
    """
    if channel is not Channel.SMS:
        return []
    region, prefix = _destination(settings, to, country)
    return [
        Check("sms_country", f"sms-country:{region}", limit_of(settings.limit_sms_country)),
        Check("sms_prefix", f"sms-prefix:{prefix}", limit_of(settings.limit_sms_prefix)),
    ]


def _destination(settings: Settings, to: str, country: str | None) -> tuple[str, str]:
    return country or "unknown", to[: settings.otp_prefix_length]


def verify_checks(settings: Settings, principal: Principal) -> list[Check]:
    """OTP verification, per API key first (so one key that guesses spends only its own
    budget before it reaches the global one), then for the whole service. Both fail
    closed: without Redis nobody can count guesses, so none are judged."""
    return [
        Check(
            "otp_verify_key",
            f"otp-verify-key:{principal.id}",
            limit_of(settings.limit_otp_verify_key),
            fail_closed=True,
        ),
        Check(
            "otp_verify_global",
            "otp-verify-global",
            limit_of(settings.limit_otp_verify_global),
            fail_closed=True,
        ),
    ]


def otp_checks(
    settings: Settings, channel: Channel, to: str, *, country: str | None
) -> list[Check]:
    """OTP sends fail closed: the resend cooldown, sends per window, and for SMS the
    pumping velocity limits per destination country and number prefix."""
    recipient = recipient_key(channel.value, to)
    checks = [
        Check(
            "otp_resend_cooldown",
            f"otp-cooldown:{recipient}",
            _limit(1, max(settings.otp_resend_cooldown_s, 1), 1),
            fail_closed=True,
        ),
        Check(
            "otp_sends",
            f"otp-sends:{recipient}",
            _limit(settings.otp_max_sends, settings.otp_send_window_s, None),
            fail_closed=True,
        ),
    ]
    if channel is Channel.SMS:
        region, prefix = _destination(settings, to, country)
        checks += [
            Check(
                "otp_country",
                f"otp-country:{region}",
                limit_of(settings.limit_otp_country),
                fail_closed=True,
            ),
            Check(
                "otp_prefix",
                f"otp-prefix:{prefix}",
                limit_of(settings.limit_otp_prefix),
                fail_closed=True,
            ),
        ]
    return checks


#: The OTP checks that also guard an OTP a caller sends itself through /v1/notifications.
PUMPING_POLICIES = ("otp_country", "otp_prefix")


def check_destination(settings: Settings, channel: Channel, *, country: str | None) -> None:
    """Countries SMS may (not) go to: a clear 422 before anything is stored or paid."""
    if channel is not Channel.SMS:
        return
    if settings.sms_country_deny and country in settings.sms_country_deny:
        raise FieldError("to", f"SMS to {country} numbers is not allowed")
    if settings.sms_country_allow and country not in settings.sms_country_allow:
        raise FieldError("to", f"SMS to {country} numbers is not allowed (not in the allow list)")


async def enforce(guard: Guard, checks: list[Check]) -> dict[str, str]:
    """Spend from every check; the headers to send back, or a 429/503 problem."""
    verdict = await guard.check(checks)
    if verdict.backend_down:
        raise Problem(
            503,
            "Service unavailable",
            "rate limits that protect one-time passcodes cannot be checked right now",
            headers={"Retry-After": "5"},
        )
    headers = _headers(verdict)
    if not verdict.allowed:
        raise Problem(
            429,
            "Too many requests",
            f"limit '{verdict.policy}' reached; retry after {headers.get('Retry-After', '1')} s",
            errors=[{"field": "policy", "message": verdict.policy or "rate limit"}],
            headers=headers,
        )
    return headers


def _headers(verdict: Verdict) -> dict[str, str]:
    if verdict.decision is None or verdict.limit is None:
        return {}
    return rate_limit_headers(verdict.decision, verdict.limit)


#: KEYS[1]: the key's spend today. ARGV: the cost, the cap, the key's TTL in seconds.
#: Adds the cost unless that passes the cap; returns 1 if charged, 0 if refused.
_CHARGE = """
local total = tonumber(redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if total <= tonumber(ARGV[2]) then return 1 end
redis.call('INCRBYFLOAT', KEYS[1], -tonumber(ARGV[1]))
return 0
"""


class SpendGuard:
    """A daily spend cap per API key, counted from the routing costs of what was accepted.

    One script call per charge (add, expire, and take it back if over the cap). It fails
    open (Redis down: no cap for the moment, logged), like the general limits.
    """

    def __init__(self, redis: Redis, cap: float | None) -> None:
        self.redis = redis
        self.cap = cap
        self._charge = redis.register_script(_CHARGE)

    async def charge(self, principal: Principal, cost: float) -> None:
        if self.cap is None or cost <= 0:
            return
        now = datetime.now(UTC)
        key = names.spend_key(principal.id, now.strftime("%Y%m%d"))
        try:
            charged = await self._charge(keys=[key], args=[repr(cost), repr(self.cap), 2 * 86400])
        except RedisError as exc:
            log.warning("spend_cap_unchecked", error=repr(exc))
            return
        if charged:
            return
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        raise Problem(
            429,
            "Daily spend cap reached",
            f"this API key may spend {self.cap} per day; it resets at 00:00 UTC",
            errors=[{"field": "policy", "message": "spend_cap"}],
            headers={"Retry-After": str(int((midnight - now).total_seconds()) + 1)},
        )
