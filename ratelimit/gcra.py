"""GCRA, the generic cell rate algorithm: pure arithmetic, no I/O, no clock.

Per key we store one number, the theoretical arrival time ``TAT``: the moment the key would
be empty again had all admitted requests been spread out at the nominal rate. With

    T   = period / rate          emission interval (integer µs, rounded up: see Limit)
    cap = burst * T              how far ahead of ``now`` the TAT may run

a request of cost ``n`` at time ``now`` computes

    tat      = max(TAT, now)                 (no TAT, or one in the past: a full bucket)
    new_tat  = tat + n * T
    allow_at = new_tat - cap                 (earliest time this request fits)

    allowed        iff now >= allow_at       then TAT := new_tat
    remaining      = floor((cap - (TAT' - now)) / T)   TAT' = the TAT after the decision
    retry_after    = allow_at - now          (0 when allowed)
    reset_after    = TAT' - now              (time until a full bucket again)

Guarantees (proved in the tests' docstrings, checked by property tests): with units of
cost, a key admits at most ``burst`` at one instant; at most ``burst + floor(L / T)`` in
any closed interval of length ``L`` (so at most ``burst + rate * L / period``); and at most
``burst + ceil(L / T) - 1`` in any half-open one, which is ``rate + burst - 1`` for
``L = period``. It is never stricter than that: a refused request is admitted at exactly
``now + retry_after`` if nothing else spends from the key meanwhile.

All times are integer microseconds, so this module and the Redis Lua script (which mirrors
:func:`decide` line for line in doubles, exact below 2**53) give identical answers.
"""

from __future__ import annotations

from ratelimit.base import US_PER_S, Decision, Limit, check_cost


def decide(limit: Limit, tat_us: int | None, now_us: int, cost: int = 1) -> tuple[Decision, int]:
    """Decide one request; returns the decision and the TAT to store afterwards.

    The returned TAT equals the stored one (or ``now_us`` if none) when refused. A caller
    that stores it should drop the key once the TAT is not after ``now``: the state is then
    the same as no state at all.
    """
    check_cost(limit, cost)
    interval = limit.interval_us
    capacity = limit.burst * interval
    tat = now_us if tat_us is None else max(tat_us, now_us)
    new_tat = tat + cost * interval
    allow_at = new_tat - capacity
    if now_us < allow_at:
        # ``max(0, …)`` only matters if a clock ran backwards past the stored TAT.
        remaining = max(0, capacity - (tat - now_us)) // interval
        decision = Decision(
            False, remaining, (allow_at - now_us) / US_PER_S, (tat - now_us) / US_PER_S
        )
        return decision, tat
    remaining = (now_us - allow_at) // interval
    return Decision(True, remaining, 0.0, (new_tat - now_us) / US_PER_S), new_tat
