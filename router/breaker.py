"""Circuit-breaker state transitions: pure functions, no I/O (the board stores them in Redis).

closed ──(failure rate ≥ threshold over the window, with ≥ min_calls)──▶ open
open ──(cool-down elapsed, on the next send)──▶ half_open
half_open ──(``probes`` successes)──▶ closed;  ──(any probe failure)──▶ open
At most ``probes`` sends are let through while half-open; a new round of probes starts
only once the last round's could have answered (``probe_timeout_s``: a vendor that is
slow rather than down gets ``probes`` calls per round, not per cool-down). A manual
override (drain = forced open, or forced closed) beats every transition until it is cleared.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Override(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_s: int = 10
    min_calls: int = 10
    failure_rate: float = 0.5
    cooldown_s: float = 5.0
    probes: int = 3
    #: How long a round of probes may go unanswered before another round starts (the
    #: provider call timeout, plus a little); never less than ``cooldown_s``.
    probe_timeout_s: float = 0.0

    @property
    def probe_round_s(self) -> float:
        return max(self.cooldown_s, self.probe_timeout_s)


@dataclass(frozen=True, slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    probes_started: int = 0
    probe_successes: int = 0
    override: Override | None = None

    def to_redis(self) -> dict[Any, Any]:
        return {
            "state": self.state.value,
            "opened_at": repr(self.opened_at),
            "probes_started": str(self.probes_started),
            "probe_successes": str(self.probe_successes),
            "override": self.override.value if self.override else "",
        }

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> Breaker:
        d = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        if not d:
            return cls()
        return cls(
            state=BreakerState(d.get("state", "closed")),
            opened_at=float(d.get("opened_at", 0) or 0),
            probes_started=int(d.get("probes_started", 0) or 0),
            probe_successes=int(d.get("probe_successes", 0) or 0),
            override=Override(d["override"]) if d.get("override") else None,
        )


def should_trip(calls: int, failures: int, cfg: BreakerConfig) -> bool:
    return calls >= cfg.min_calls and calls > 0 and failures / calls >= cfg.failure_rate


def after_window(b: Breaker, calls: int, failures: int, now: float, cfg: BreakerConfig) -> Breaker:
    """A closed breaker opens when the window's failure rate crosses the threshold."""
    if b.state is BreakerState.CLOSED and should_trip(calls, failures, cfg):
        return Breaker(BreakerState.OPEN, opened_at=now, override=b.override)
    return b


def request_send(b: Breaker, now: float, cfg: BreakerConfig) -> tuple[bool, Breaker]:
    """May we send through this provider now? Returns the answer and the new state."""
    if b.override is Override.OPEN:
        return False, b
    if b.override is Override.CLOSED:
        return True, b
    if b.state is BreakerState.CLOSED:
        return True, b
    if b.state is BreakerState.OPEN:
        if now - b.opened_at < cfg.cooldown_s:
            return False, b
        b = replace(
            b, state=BreakerState.HALF_OPEN, opened_at=now, probes_started=0, probe_successes=0
        )
    if b.probes_started >= cfg.probes:
        if now - b.opened_at < cfg.probe_round_s:
            return False, b
        # The probes never reported (their worker died): start a new round.
        b = replace(b, opened_at=now, probes_started=0, probe_successes=0)
    return True, replace(b, probes_started=b.probes_started + 1)


def after_probe(b: Breaker, ok: bool, now: float, cfg: BreakerConfig) -> Breaker:
    """A half-open probe's outcome: one failure reopens, ``probes`` successes close."""
    if b.state is not BreakerState.HALF_OPEN:
        return b
    if not ok:
        return Breaker(BreakerState.OPEN, opened_at=now, override=b.override)
    successes = b.probe_successes + 1
    if successes >= cfg.probes:
        return Breaker(BreakerState.CLOSED, override=b.override)
    return replace(b, probe_successes=successes)


def looks_available(b: Breaker, now: float, cfg: BreakerConfig) -> bool:
    """The cheap, cached check used to order candidates (the real gate is request_send)."""
    if b.override is not None:
        return b.override is Override.CLOSED
    if b.state is BreakerState.OPEN:
        return now - b.opened_at >= cfg.cooldown_s
    if b.state is BreakerState.HALF_OPEN:
        return b.probes_started < cfg.probes or now - b.opened_at >= cfg.probe_round_s
    return True


def displayed_state(b: Breaker) -> BreakerState:
    if b.override is Override.OPEN:
        return BreakerState.OPEN
    if b.override is Override.CLOSED:
        return BreakerState.CLOSED
    return b.state
