"""The provider interface: one module per vendor, registered by type name.

A provider raises ``TransientProviderError`` or ``PermanentProviderError`` (herald.errors)
and never returns a failure flag. Permanent errors never trip a circuit breaker.
"""

from __future__ import annotations

from dataclasses import dataclass
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
