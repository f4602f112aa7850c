"""Readers beside the writer: on SQLite, read-only work never waits for the write lock,
cannot write, and sees every commit; writers still take the lock at BEGIN and queue; each
transaction costs few hand-offs to aiosqlite's thread; ``synchronous`` is a setting."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from bench.sqlite_hops import measure
from config.settings import Settings
from herald.storage.db import Engines, make_engines, make_session_factory
from herald.storage.models import Notification
from tests.support.stack import running_stack, stack_settings

pytestmark = pytest.mark.integration

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}


def database_file(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


@contextlib.contextmanager
def write_lock_held(database: Path) -> Iterator[sqlite3.Connection]:
    """Another connection (as another process would) holding SQLite's write lock."""
    # It waits as long as it must for the lock: on a loaded box a commit's fsync may not.
    holder = sqlite3.connect(database, isolation_level=None, timeout=60)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[Engines]:
    made = make_engines(database_url, wait_s=0.5)
    yield made
    await made.dispose()


def row(nid: str, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": nid,
        "channel": "sms",
        "to": "+447911123456",
        "category": "transactional",
        "priority": "normal",
        "status": "accepted",
        "generation": 0,
        "attempt_count": 0,
        "created_at": now,
        "updated_at": now,
        **extra,
    }


async def test_a_status_read_is_served_while_another_connection_holds_the_write_lock(
    sqlite_url: str,
) -> None:
    settings = stack_settings(sqlite_url, database_wait_s=1)
    async with running_stack(settings, workers=0) as api:
        accepted = await api.send(**SMS)
        assert accepted.status_code == 202
        nid = accepted.json()["id"]
        with write_lock_held(database_file(sqlite_url)):
            status = await api.client.get(f"/v1/notifications/{nid}")
            dead_letters = await api.client.get("/v1/dlq")
            refused = await api.send(**SMS)  # the lock is real: a write cannot get it
        assert status.status_code == 200, status.text
        assert status.json()["id"] == nid and status.json()["status"] in ("accepted", "queued")
        assert dead_letters.status_code == 200 and dead_letters.json()["items"] == []
        assert refused.status_code == 503


async def test_the_reader_cannot_write_on_sqlite(sqlite_url: str) -> None:
    engines = make_engines(sqlite_url)
    try:
        assert engines.reader is not engines.writer
        with pytest.raises(OperationalError, match="readonly"):
            async with make_session_factory(engines.reader).begin() as session:
                await session.execute(insert(Notification).values(**row("r1")))
        async with make_session_factory(engines.writer)() as session:
            assert (await session.execute(select(func.count(Notification.id)))).scalar() == 0
    finally:
        await engines.dispose()


async def test_postgresql_reads_and_writes_share_one_pool(postgres_schema: str) -> None:
    engines = make_engines(postgres_schema)
    try:
        assert engines.reader is engines.writer
    finally:
        await engines.dispose()


async def test_a_reader_sees_each_commit_at_once(engines: Engines) -> None:
    writes, reads = make_session_factory(engines.writer), make_session_factory(engines.reader)
    for n in range(3):
        async with writes.begin() as session:
            await session.execute(insert(Notification).values(**row(f"n{n}")))
        async with reads() as session:
            seen = (await session.execute(select(func.count(Notification.id)))).scalar()
        assert seen == n + 1


async def test_readers_do_not_take_the_lock_and_writers_take_it_at_begin(sqlite_url: str) -> None:
    engines = make_engines(sqlite_url, wait_s=0.3)
    writes, reads = make_session_factory(engines.writer), make_session_factory(engines.reader)
    try:
        with write_lock_held(database_file(sqlite_url)):
            async with reads() as session:
                await session.execute(select(Notification.id))
            # A writer's transaction asks for the lock first, even before a read.
            with pytest.raises(OperationalError, match="locked"):
                async with writes.begin() as session:
                    await session.execute(select(Notification.id))
        # The failed BEGIN left nothing behind: the next transaction runs normally.
        async with writes.begin() as session:
            await session.execute(insert(Notification).values(**row("after")))
        async with reads() as session:
            assert (await session.execute(select(Notification.id))).scalars().all() == ["after"]
    finally:
        await engines.dispose()


async def test_writers_in_one_process_queue_for_the_one_writer_connection(
    sqlite_url: str,
) -> None:
    engines = make_engines(sqlite_url)
    writes = make_session_factory(engines.writer)
    first_inside, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with writes.begin() as session:
            await session.execute(insert(Notification).values(**row("first")))
            first_inside.set()
            await release.wait()
            order.append("first commits")

    async def second() -> None:
        await first_inside.wait()
        async with writes.begin() as session:
            await session.execute(insert(Notification).values(**row("second")))
            order.append("second wrote")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    try:
        await first_inside.wait()
        for _ in range(20):  # let the second writer run as far as it can
            await asyncio.sleep(0.01)
        assert order == []
        release.set()
        await asyncio.gather(*tasks)
        assert order == ["first commits", "second wrote"]
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await engines.dispose()


async def test_a_failed_statement_rolls_back_and_leaves_the_connection_clean(
    engines: Engines,
) -> None:
    writes, reads = make_session_factory(engines.writer), make_session_factory(engines.reader)
    async with writes.begin() as session:
        await session.execute(insert(Notification), [row(f"m{n}") for n in range(5)])
    with pytest.raises(IntegrityError):
        async with writes.begin() as session:
            await session.execute(insert(Notification).values(**row("lost")))
            await session.execute(insert(Notification).values(**row("m0")))  # duplicate
    async with writes.begin() as session:
        await session.execute(insert(Notification).values(**row("kept")))
    async with reads() as session:
        ids = set((await session.execute(select(Notification.id))).scalars())
    assert ids == {"m0", "m1", "m2", "m3", "m4", "kept"}


async def test_a_streamed_first_read_still_takes_the_lock_at_begin(sqlite_url: str) -> None:
    """A streamed result runs on aiosqlite's own cursor: the BEGIN must precede it too."""
    engines = make_engines(sqlite_url, wait_s=0.3)
    writes = make_session_factory(engines.writer)
    try:
        async with writes.begin() as session:
            await session.execute(insert(Notification), [row(f"s{n}") for n in range(3)])
        with write_lock_held(database_file(sqlite_url)), pytest.raises(OperationalError):
            async with writes.begin() as session:
                await session.stream(select(Notification.id))
        async with writes.begin() as session:
            streamed = await session.stream_scalars(select(Notification.id).order_by("id"))
            assert [nid async for nid in streamed] == ["s0", "s1", "s2"]
            updated = await session.execute(
                update(Notification).where(Notification.id != "s0").values(generation=1)
            )
            assert updated.rowcount == 2  # type: ignore[attr-defined]
    finally:
        await engines.dispose()


def test_each_transaction_costs_few_hand_offs_to_the_sqlite_thread(tmp_path: Path) -> None:
    """Before: 13 for a status read, 8 for a one-row write (bench/sqlite_hops.py)."""
    from herald.storage.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path}/hops.db"
    upgrade(url)
    results = asyncio.run(measure(url))
    hand_offs = {name: result[0] for name, result in results.items()}
    assert hand_offs == {
        "status read (get + attempts)": 3,  # two statements, the rollback at close
        "one-row write": 2,  # BEGIN IMMEDIATE with the INSERT, then COMMIT
        "write with no match": 2,
        "read with no match": 2,
    }


@pytest.mark.parametrize(("setting", "pragma"), [(None, 2), ("normal", 1), ("FULL", 2)])
async def test_sqlite_synchronous_is_a_setting_full_by_default(
    sqlite_url: str, setting: str | None, pragma: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setting is not None:
        monkeypatch.setenv("HERALD_SQLITE_SYNCHRONOUS", setting)
    settings = Settings(database_url=sqlite_url)
    engines = make_engines(sqlite_url, synchronous=settings.sqlite_synchronous)
    try:
        for engine in (engines.writer, engines.reader):
            async with engine.connect() as conn:
                assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == pragma
    finally:
        await engines.dispose()


def test_an_unknown_synchronous_level_is_refused() -> None:
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        Settings(sqlite_synchronous="sometimes")
