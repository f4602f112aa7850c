"""Which messages of a batch take the batched path: a pure decision, no I/O.

The batched path covers the common case only: a readable, unexpired, non-OTP message
whose first planned provider is plainly usable (configured, breaker closed, no
``max_per_s`` to book). Everything else goes to the one-by-one path, which owns the
rules for OTP fallbacks, expiry, probes, throttling and reconciliation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from herald.domain import Envelope
from router.rules import RoutingRules
from router.select import Candidate, plan


@dataclass(frozen=True, slots=True)
class FastSend:
    """A message the batch sends to ``provider``; ``remaining`` is its failover order."""

    message: Envelope
    provider: str
    remaining: tuple[Candidate, ...]


def choose_fast(
    message: Envelope,
    now: datetime,
    rules: RoutingRules,
    available: Mapping[str, bool],
    usable: Callable[[str], bool],
) -> FastSend | None:
    """The batched path's plan for ``message``, or ``None`` for the one-by-one path."""
    if message.otp_id is not None or message.is_expired(now):
        return None
    route = plan(rules, message, available)
    if not route.order or not usable(route.order[0].provider):
        return None
    return FastSend(message, route.order[0].provider, route.order[1:])
