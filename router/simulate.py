"""Where would a message go, and why: the plan for one made-up message against the
rules in force or an unsaved document, with the live breaker states."""

from __future__ import annotations

from typing import Any

from herald.domain import Category, Channel, Envelope, Priority
from router.health import BreakerBoard
from router.rules import RoutingRules
from router.select import plan


async def simulate(
    rules: RoutingRules,
    board: BreakerBoard,
    *,
    channel: Channel,
    to: str,
    category: Category,
    caller: str | None = None,
) -> dict[str, Any]:
    message = Envelope(
        id="simulation",
        channel=channel,
        to=to,
        category=category,
        priority=Priority.NORMAL,
        caller=caller,
    )
    available = await board.availability(rules.providers)
    result = plan(rules, message, available)
    return {
        "rule": result.rule,
        "version": rules.version,
        "candidates": [
            {
                "provider": c.provider,
                "tier": c.tier,
                "cost": c.cost,
                "healthy": c.healthy,
                "reason": c.reason,
            }
            for c in result.considered
        ],
    }
