"""The provider interface: one module per vendor, registered by type name.

A provider raises ``TransientProviderError`` or ``PermanentProviderError`` (herald.errors)
and never returns a failure flag. Permanent errors never trip a circuit breaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Final, Literal, Protocol

from herald.domain import Channel, Envelope
from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.logs import get_logger, mask_text

log = get_logger(__name__)
Kind = Literal["transient", "permanent"]

#: Answers from a proxy, gateway or overloaded vendor that carry no vendor code: the same
#: for every HTTP vendor, so each adapter's status table adds only its own rows.
GATEWAY_STATUS_TABLE: Final[dict[int, tuple[Kind, str]]] = {
    429: ("transient", "too many requests"),
    500: ("transient", "server error"),
    502: ("transient", "bad gateway"),
    503: ("transient", "service unavailable"),
    504: ("transient", "gateway timeout"),
}


def provider_error(
    permanent: bool, text: str, *, code: str, retry_after: float | None = None
) -> ProviderError:
    """The exception for a classified vendor failure (a retry hint only if transient)."""
    if permanent:
        return PermanentProviderError(text, code=code)
    return TransientProviderError(text, code=code, retry_after=retry_after)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a vendor failure means for the message, read from an adapter's error table."""

    permanent: bool
    code: str
    meaning: str
    detail: str = ""
    retry_after: float | None = None
    listed: bool = True  # False: not in the table, classified by class or status only
    config: bool = False  # our set-up is wrong (credentials, TLS): logged as an error


@dataclass(frozen=True, slots=True)
class Receipt:
    provider: str
    vendor_message_id: str


class Provider(Protocol):
    name: str
    channel: Channel

    async def send(self, message: Envelope) -> Receipt:
        """Hand the message to the vendor; raise a ProviderError subclass on failure."""
        ...

    async def lookup(self, message: Envelope) -> Receipt | None:
        """Did the vendor already accept this message? ``None`` when unknown or unsupported.

        Used to reconcile a crash between the vendor's answer and our record.
        """
        ...

    async def close(self) -> None: ...


class BaseProvider:
    """Defaults for the optional parts of the interface."""

    type_name: ClassVar[str]
    #: Does this vendor report delivery (receipts)? Without them, ``sent`` is the best
    #: news we get, and an OTP fallback treats it as delivered.
    supports_receipts: ClassVar[bool] = False
    max_body_chars: ClassVar[int | None] = None
    default_max_per_s: ClassVar[float | None] = None

    def __init__(self, name: str, channel: Channel, spec: dict[str, Any]) -> None:
        self.name = name
        self.channel = channel
        self.spec = spec
        self._unlisted_seen = FirstTime()

    def error_for(self, verdict: Verdict, vendor: str, message: Envelope) -> ProviderError:
        """The error to raise for ``verdict``; a set-up error is logged as an error, a code
        missing from the table once per provider (``<type>_setup_error``,
        ``<type>_unlisted_error``)."""
        text = f"{self.name}: {vendor} {verdict.code} {verdict.meaning}"
        if verdict.detail:
            text += f": {mask_text(verdict.detail)[:300]}"
        if verdict.config:
            log.error(
                f"{self.type_name}_setup_error", provider=self.name, code=verdict.code, error=text
            )
        elif not verdict.listed and self._unlisted_seen(verdict.code):
            log.warning(
                f"{self.type_name}_unlisted_error",
                provider=self.name,
                code=verdict.code,
                permanent=verdict.permanent,
                notification_id=message.id,
            )
        return provider_error(
            verdict.permanent, text, code=verdict.code, retry_after=verdict.retry_after
        )

    async def lookup(self, message: Envelope) -> Receipt | None:
        return None

    async def close(self) -> None:
        return None


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A vendor's ``Retry-After`` header (seconds or an HTTP date) as seconds from now.

    Vendors throttle with ``429`` and this hint; honouring it (instead of our own
    shorter backoff) keeps us from being throttled again. ``None`` when absent or garbled.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class FirstTime:
    """Says True the first time it sees a key: a vendor code missing from an adapter's
    error table is worth one log line per provider, not one per message."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
