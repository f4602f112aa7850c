"""Engine and session factories, tuned per dialect (SQLite is the embedded default)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import Insert

SessionFactory = async_sessionmaker[AsyncSession]


#: How long a transaction may wait for a pooled connection, and on SQLite for the write
#: lock, before it fails (and the API answers 503) instead of queueing without bound.
DEFAULT_WAIT_S = 5.0


def make_engine(url: str, *, pool_size: int = 10, wait_s: float = DEFAULT_WAIT_S) -> AsyncEngine:
    if url.startswith("sqlite"):
        # One connection per process: SQLite has one writer at a time, so transactions
        # queue here, in asyncio, instead of sleeping in SQLite's busy handler (which
        # polls with growing sleeps and cut throughput tenfold under concurrency).
        engine = create_async_engine(
            url,
            connect_args={"timeout": wait_s},
            pool_size=1,
            max_overflow=0,
            pool_timeout=wait_s,
        )
        _tune_sqlite(engine, busy_timeout_ms=int(wait_s * 1000))
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=wait_s,
    )


def _tune_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    """WAL for concurrent readers; BEGIN IMMEDIATE so writers queue instead of deadlocking."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


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
