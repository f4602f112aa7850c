"""Driver hand-offs per transaction on SQLite: how many calls cross to aiosqlite's thread.

aiosqlite runs each call (cursor, execute, fetchall, close, commit, rollback) on the
connection's own thread and wakes the event loop when it is done, so a transaction's cost
on a busy process is mostly the number of those hand-offs. This counts them, with the SQL
statements SQLAlchemy issued (``before_cursor_execute``), for the transactions Herald runs
most: a status read, a one-row write and an idle poll that finds nothing.

    .venv/bin/python -m bench.sqlite_hops [--repeat 2000]

Printed for SQLAlchemy's stock aiosqlite adapter with reads on the writer (Herald before
this change) and for Herald's engines (``herald/storage/sqlite_driver.py``), each with
the wall and CPU time per transaction on this machine (wall time is noisy on a shared
box; CPU time, of both threads, less so: compare within a run).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from herald.storage import db
from herald.storage.migrate import upgrade
from herald.storage.models import Attempt, Notification


class _CountingQueue:
    """Stands in for an aiosqlite connection's call queue and counts what goes through."""

    def __init__(self, inner: Any, counter: list[int]) -> None:
        self._inner = inner
        self._counter = counter

    def put_nowait(self, item: Any) -> None:
        self._counter[0] += 1
        self._inner.put_nowait(item)


def count_hand_offs(engine: AsyncEngine) -> tuple[list[int], list[int]]:
    """Counters of thread hand-offs and of statements, for connections made from now on."""
    hops, statements = [0], [0]

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        raw = dbapi_connection._connection  # the aiosqlite.Connection
        raw._tx = _CountingQueue(raw._tx, hops)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def on_statement(*_args: Any) -> None:
        statements[0] += 1

    return hops, statements


def _row(nid: str) -> dict[str, Any]:
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
    }


def stock_engine(url: str) -> AsyncEngine:
    """The engine as it was before: SQLAlchemy's aiosqlite adapter, reads on the writer."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def measure(
    url: str, *, stock: bool = False, repeat: int = 0
) -> dict[str, tuple[int, int, float, float]]:
    """Per kind of transaction: hand-offs, statements, and over ``repeat`` runs the wall
    time and the process CPU time (both threads) each, in µs."""
    if stock:
        writer = stock_engine(url)
        engines = db.Engines(writer, writer)
    else:
        engines = db.make_engines(url)
    writer, reader = engines.writer, engines.reader
    writes = db.make_session_factory(writer)
    reads = db.make_session_factory(reader)
    counters = {id(writer): count_hand_offs(writer)}
    if reader is not writer:
        counters[id(reader)] = count_hand_offs(reader)
    seq = iter(range(10**9))

    async def status_read() -> None:
        async with reads() as session:
            await session.get(Notification, "n0")
            await session.execute(select(Attempt).where(Attempt.notification_id == "n0"))

    async def one_row_write() -> None:
        async with writes.begin() as session:
            await session.execute(insert(Notification).values(**_row(f"w{next(seq)}")))

    async def idle_poll() -> None:
        async with writes.begin() as session:
            await session.execute(
                update(Notification).where(Notification.status == "nothing").values(generation=1)
            )

    async def empty_read() -> None:
        async with reads() as session:
            await session.execute(select(Notification.id).where(Notification.status == "x"))

    async with writes.begin() as session:
        await session.execute(insert(Notification).values(**_row("n0")))
    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "status read (get + attempts)": status_read,
        "one-row write": one_row_write,
        "write with no match": idle_poll,
        "read with no match": empty_read,
    }
    results: dict[str, tuple[int, int, float, float]] = {}
    for name, run in kinds.items():
        await run()  # warm: connect, compile caches
        before = {k: (h[0], s[0]) for k, (h, s) in counters.items()}
        await run()
        hops = sum(h[0] - before[k][0] for k, (h, _) in counters.items())
        stmts = sum(s[0] - before[k][1] for k, (_, s) in counters.items())
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            await run()
        wall_us = (time.perf_counter() - started) / max(repeat, 1) * 1e6
        cpu_us = (time.process_time() - cpu_started) / max(repeat, 1) * 1e6
        results[name] = (hops, stmts, wall_us, cpu_us)
    await engines.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000, help="timed runs of each")
    args = parser.parse_args()
    print(
        f"{'transaction':30} {'driver':8} {'hand-offs':>9} {'statements':>10}"
        f" {'wall µs':>8} {'CPU µs':>7}"
    )
    for stock in (True, False):
        with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix="sqlite-hops-") as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'hops.db'}"
            upgrade(url)
            results = asyncio.run(measure(url, stock=stock, repeat=args.repeat))
        driver = "stock" if stock else "herald"
        for name, (hops, stmts, wall_us, cpu_us) in results.items():
            print(f"{name:30} {driver:8} {hops:>9} {stmts:>10} {wall_us:>8,.0f} {cpu_us:>7,.0f}")


if __name__ == "__main__":
    main()
