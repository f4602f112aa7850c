"""``GET /v1/audit``: newest first, filters, and keyset (cursor) pagination."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert

from dlq.audit import AUDIT
from herald.ids import new_id
from herald.signing import CursorCodec
from tests.support.stack import Stack, running_stack, stack_settings
from tests.test_dlq_api import unsigned_cursor

pytestmark = pytest.mark.integration

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACTORS = ("alice", "bob", "carol")
ACTIONS = ("dlq.replay", "dlq.discard", "routing.save", "breaker.override", "dlq.bulk_replay")


def entries(count: int) -> list[dict[str, Any]]:
    """``count`` entries, three to a second, so several share one time and only the id
    orders them: page boundaries fall inside such ties."""
    return [
        {
            "id": new_id(),
            "at": BASE + timedelta(seconds=i // 3),
            "actor": ACTORS[i % 3],
            "action": ACTIONS[i % 5],
            "target": f"t{i:02}",
            "reason": None,
            "details": {"n": i},
        }
        for i in range(count)
    ]


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["at"], r["id"]), reverse=True)]


@pytest.fixture
async def logged(database_url: str) -> AsyncIterator[tuple[Stack, list[dict[str, Any]]]]:
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        rows = entries(25)
        shuffled = random.sample(rows, len(rows))  # insertion order must not matter
        async with stack.engine.begin() as conn:
            await conn.execute(insert(AUDIT), shuffled)
        yield stack, rows


async def pages(stack: Stack, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page, following ``next_cursor`` until it is null."""
    out: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await stack.client.get("/v1/audit", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        out.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 50, "the cursor does not advance"


def ids_of(found: list[list[dict[str, Any]]]) -> list[str]:
    return [e["id"] for page in found for e in page]


async def test_paging_returns_every_entry_once_newest_first(
    logged: tuple[Stack, list[dict[str, Any]]],
) -> None:
    stack, rows = logged
    found = await pages(stack, limit=10)
    assert [len(p) for p in found] == [10, 10, 5]
    assert ids_of(found) == newest_first(rows), "all 25, once each, newest first"
    first = found[0][0]
    assert first["at"] == (BASE + timedelta(seconds=8)).isoformat()
    assert set(first) == {"id", "at", "actor", "action", "target", "reason", "details"}
    # A last page that is exactly full still says it is the last.
    assert [len(p) for p in await pages(stack, limit=5)] == [5] * 5
    one = (await stack.client.get("/v1/audit", params={"limit": 25})).json()
    assert len(one["items"]) == 25 and one["next_cursor"] is None


async def test_filters_each_and_combined_with_paging(
    logged: tuple[Stack, list[dict[str, Any]]],
) -> None:
    stack, rows = logged

    def expected(**match: Any) -> list[str]:
        return newest_first([r for r in rows if all(r[k] == v for k, v in match.items())])

    bob = await pages(stack, actor="bob", limit=3)
    assert ids_of(bob) == expected(actor="bob") and len(ids_of(bob)) == 8
    replays = await pages(stack, action="dlq.replay", limit=2)
    assert ids_of(replays) == expected(action="dlq.replay")
    both = await pages(stack, actor="alice", action="dlq.discard")
    assert ids_of(both) == expected(actor="alice", action="dlq.discard") != []
    assert ids_of(await pages(stack, actor="nobody")) == []

    # since is inclusive, until exclusive (as in GET /v1/dlq); seconds 2..5 hold 12 entries.
    since, until = BASE + timedelta(seconds=2), BASE + timedelta(seconds=6)
    window = await pages(stack, since=since.isoformat(), until=until.isoformat(), limit=5)
    assert ids_of(window) == newest_first([r for r in rows if since <= r["at"] < until])
    assert len(ids_of(window)) == 12
    # Another timezone names the same instant.
    in_ist = since.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert ids_of(await pages(stack, since=in_ist.isoformat())) == newest_first(
        [r for r in rows if r["at"] >= since]
    )
    carol_window = await pages(stack, actor="carol", since=since.isoformat(), limit=2)
    assert ids_of(carol_window) == newest_first(
        [r for r in rows if r["actor"] == "carol" and r["at"] >= since]
    )

    for name in ("since", "until"):
        naive = await stack.client.get("/v1/audit", params={name: "2026-03-01T12:00:00"})
        assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == name


async def test_a_cursor_it_did_not_return_is_a_422_naming_cursor(
    logged: tuple[Stack, list[dict[str, Any]]],
) -> None:
    stack, _ = logged
    naive_time = unsigned_cursor(datetime(2026, 3, 1, 12, 0), new_id())
    crafted = unsigned_cursor(datetime(2100, 1, 1, tzinfo=UTC), new_id())
    real = (await stack.client.get("/v1/audit", params={"limit": 1})).json()["next_cursor"]
    assert real is not None
    tampered = real[:-2] + ("AA" if real[-2:] != "AA" else "BB")
    foreign = CursorCodec(b"another-secret" * 3).encode("audit", BASE, new_id())
    for bad in ("!!!", "bm9wZQ", "not-a-cursor", naive_time, crafted, tampered, foreign):
        response = await stack.client.get("/v1/audit", params={"cursor": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "cursor"
