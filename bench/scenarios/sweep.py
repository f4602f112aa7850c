"""Scenario 6, sustained-rate sweep: the highest offered rate the full chain keeps up with.

Each offered rate in ``Sizes.sweep_rates`` runs from a clean slate (scenario 3's load at
that rate), for Herald (API + one worker -> sandbox provider) and for the bare chain
(bare API -> consumer doing one Redis ``SET NX``). A rate is *sustained* when, over the
measured window, delivered/s is at least 95 % of offered and the backlog (accepted, not
yet delivered) is not rising: its slope is at most 5 % of the offered rate. Both are
least-squares slopes over the window's samples (every 0.5 s), not end minus start: on
this shared box a one-second stall at an edge of the window would otherwise fail a rate
the chain keeps up with. The sweep of each side
stops at its first unsustained rate. The figure is the highest sustained rate, Herald
against bare; when the bare chain sustains the top rate, its real ceiling is higher and
the ratio an upper bound (the row says so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.context import Context
from bench.report import Row, Target
from bench.scenarios.chain import Offer, bare_chain, herald_chain

SCENARIO = "6 sustained sweep"
DELIVERED_SHARE = 0.95
MAX_SLOPE_SHARE = 0.05

Chain = Callable[[Context, Offer, str], Awaitable[dict[str, Any]]]


def _fitted(result: dict[str, Any], fitted: str, fallback: str) -> float:
    value = result[fitted]
    return float(result[fallback] if value is None else value)


def sustained(result: dict[str, Any]) -> bool:
    """Delivered keeps up with offered and the backlog does not grow over the window."""
    offered = result["offered_per_s"]
    delivered = _fitted(result, "delivered_fit_per_s", "delivered_per_s")
    slope = _fitted(result, "backlog_slope_per_s", "backlog_growth_per_s")
    return delivered >= DELIVERED_SHARE * offered and slope <= MAX_SLOPE_SHARE * offered


async def _sweep(ctx: Context, chain: Chain, side: str) -> dict[str, Any]:
    sizes = ctx.cfg.sizes
    steps: list[dict[str, Any]] = []
    best = 0.0  # not even the lowest rate sustained: reported as 0, a clear miss
    for rate in sizes.sweep_rates:
        # No waiting for the backlog to clear: the next rate starts from a clean slate.
        plan = Offer(rate, sizes.sweep_warmup_s, sizes.sweep_duration_s, clear_limit_s=0)
        result = await chain(ctx, plan, f"sweep-{side}-{rate:g}")
        ok = sustained(result)
        steps.append(
            {
                "offered_per_s": rate,
                "sustained": ok,
                **{
                    k: result[k]
                    for k in (
                        "accepted_per_s",
                        "delivered_per_s",
                        "delivered_fit_per_s",
                        "backlog_slope_per_s",
                        "backlog_growth_per_s",
                        "backlog_at_window_end",
                    )
                },
                "http_p99_ms": result["http"]["latency_ms"]["p99"],
            }
        )
        ctx.log(
            f"sweep {side} {rate:g}/s: delivered "
            f"{_fitted(result, 'delivered_fit_per_s', 'delivered_per_s'):.0f}/s, backlog "
            f"{_fitted(result, 'backlog_slope_per_s', 'backlog_growth_per_s'):+.1f}/s, "
            f"sustained={ok}"
        )
        if not ok:
            break
        best = rate
    top = sizes.sweep_rates[-1]
    return {"highest_sustained_per_s": best, "capped_at_top_rate": best == top, "steps": steps}


async def run(ctx: Context) -> list[Row]:
    herald = await _sweep(ctx, herald_chain, "herald")
    bare = await _sweep(ctx, bare_chain, "bare")
    ctx.details["sweep"] = {
        "rule": f"delivered >= {DELIVERED_SHARE:.0%} of offered and backlog slope <= "
        f"{MAX_SLOPE_SHARE:.0%} of offered, per rate",
        "herald": herald,
        "bare": bare,
    }
    vs = "bare chain"
    if bare["capped_at_top_rate"]:
        vs += f" (sustained the top {ctx.cfg.sizes.sweep_rates[-1]:g}/s: ratio is an upper bound)"
    rows = [
        Row(
            SCENARIO,
            "highest sustained offered msg/s",
            herald["highest_sustained_per_s"],
            bare["highest_sustained_per_s"],
            vs,
            target=Target("ratio", ">=", 0.6, goal=0.9),
        )
    ]
    for step in herald["steps"]:
        rows.append(
            Row(
                SCENARIO,
                f"herald delivered/s at {step['offered_per_s']:g}/s offered",
                step["delivered_fit_per_s"] or step["delivered_per_s"],
                step["offered_per_s"],
                "offered",
            )
        )
    return rows
