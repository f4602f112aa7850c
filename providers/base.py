"""The provider interface: one module per vendor, registered by type name.

A provider raises ``TransientProviderError`` or ``PermanentProviderError`` (herald.errors)
and never returns a failure flag. Permanent errors never trip a circuit breaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Protocol

from herald.domain import Channel, Envelope


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
