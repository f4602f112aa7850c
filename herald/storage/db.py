"""Engine and session factories, tuned per dialect (SQLite is the embedded default).

On SQLite a process has two engines: one writer connection, whose transactions take the
write lock up front (``BEGIN IMMEDIATE``) so writers queue in asyncio, and a small pool of
read-only connections (``PRAGMA query_only``, deferred ``BEGIN``) that WAL lets read beside
the writer, so a status read or a console page never waits behind writes. On PostgreSQL
both are the same engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, Result, event, make_url
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import Insert

from herald.storage import sqlite_driver

SessionFactory = async_sessionmaker[AsyncSession]

#: SQLite's ``PRAGMA synchronous`` levels Herald accepts (see docs/sqlite.md).
Synchronous = Literal["NORMAL", "FULL", "EXTRA"]

#: How long a transaction may wait for a pooled connection, and on SQLite for the write
#: lock, before it fails (and the API answers 503) instead of queueing without bound.
DEFAULT_WAIT_S = 5.0

#: Read-only SQLite connections per process: reads run on their threads in parallel.
DEFAULT_READERS = 4


@dataclass(frozen=True, slots=True)
class Engines:
    """The engine for transactions that may write, and the one for read-only work."""

    writer: AsyncEngine
    reader: AsyncEngine

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def make_engines(
    url: str,
    *,
    pool_size: int = 10,
    readers: int = DEFAULT_READERS,
    wait_s: float = DEFAULT_WAIT_S,
    synchronous: Synchronous = "FULL",
) -> Engines:
    """A writer and a reader: separate on a SQLite file, the same engine elsewhere."""
    writer = make_engine(url, pool_size=pool_size, wait_s=wait_s, synchronous=synchronous)
    if not _is_sqlite_file(url):
        return Engines(writer, writer)
    reader = make_engine(
        url, pool_size=readers, wait_s=wait_s, synchronous=synchronous, readonly=True
    )
    return Engines(writer, reader)


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    wait_s: float = DEFAULT_WAIT_S,
    synchronous: Synchronous = "FULL",
    readonly: bool = False,
) -> AsyncEngine:
    """One engine; on SQLite the single-connection writer unless ``readonly``."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            _fewer_hand_offs(url),
            connect_args={"timeout": wait_s},
            # The writer is one connection per process: SQLite has one writer at a time,
            # so transactions queue here, in asyncio, instead of sleeping in SQLite's busy
            # handler (which polls with growing sleeps and cut throughput tenfold).
            pool_size=pool_size if readonly else 1,
            max_overflow=0,
            pool_timeout=wait_s,
        )
        _tune_sqlite(
            engine,
            busy_timeout_ms=int(wait_s * 1000),
            synchronous=synchronous,
            readonly=readonly,
        )
        return engine
    # No pre-ping: it is a round trip per transaction. A connection that died with the
    # server fails its transaction once (503 / deferred delivery) and SQLAlchemy then
    # invalidates the whole pool, so the next transaction reconnects.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=wait_s
    )


def _is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


def _fewer_hand_offs(url: str) -> str:
    """``sqlite+aiosqlite`` becomes our one-call-per-statement variant of the same driver."""
    parsed = make_url(url)
    if parsed.drivername != "sqlite+aiosqlite":
        return url
    return parsed.set(drivername=f"sqlite+{sqlite_driver.DRIVER}").render_as_string(
        hide_password=False
    )


def _tune_sqlite(
    engine: AsyncEngine, *, busy_timeout_ms: int, synchronous: Synchronous, readonly: bool
) -> None:
    """WAL for readers beside the writer; writers take the lock at BEGIN, readers never."""
    begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if readonly:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        dbapi_connection = conn.connection.dbapi_connection
        if isinstance(dbapi_connection, sqlite_driver.HeraldConnection):
            dbapi_connection.begin_with_first_statement(begin)
        else:
            conn.exec_driver_sql(begin)


def make_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


def insert_ignoring_conflicts(engine: AsyncEngine, table: Any) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` in the engine's dialect (idempotent ingest)."""
    if engine.dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


def upsert(engine: AsyncEngine, table: Any, keys: list[str], row: dict[str, Any]) -> Insert:
    """``INSERT row … ON CONFLICT (keys) DO UPDATE`` the other columns, in the engine's dialect."""
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(**row)
    updates = {k: statement.excluded[k] for k in row if k not in keys}
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)


def inserted_id(result: Result[Any]) -> int:
    """The integer primary key an ``INSERT`` produced."""
    key = cast(CursorResult[Any], result).inserted_primary_key
    assert key is not None
    return int(key[0])
