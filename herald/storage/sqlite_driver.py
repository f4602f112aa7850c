"""aiosqlite with one thread hand-off per statement, and none for an empty transaction.

aiosqlite runs every call on its connection's thread and wakes the event loop after each,
and SQLAlchemy's adapter makes four such calls per statement (open a cursor, execute,
fetch, close) plus one for ``BEGIN``'s own cursor dance, one per commit and one per
rollback, even when no transaction is open. Here a statement is one call that executes,
fetches and closes on the thread; the ``BEGIN`` a transaction asked for travels with its
first statement; and commit or rollback of a connection with no open transaction is
skipped. The result is the same SQL in the same order, with fewer wake-ups.

Registered as the ``sqlite+herald_aiosqlite`` driver; ``herald.storage.db`` picks it for
``sqlite+aiosqlite`` URLs. Built on SQLAlchemy's aiosqlite adapter classes, so it is
tested against the pinned SQLAlchemy (tests/test_sqlite_engines.py counts the hand-offs).
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "herald_aiosqlite"

_Outcome = tuple[Any, list[Any], int, int | None]


def _run(
    conn: sqlite3.Connection, begin: str | None, operation: str, parameters: Any, many: bool
) -> _Outcome:
    """On the connection's thread: the pending ``BEGIN``, the statement and all its rows."""
    if begin is not None:
        conn.execute(begin)
    if many:
        cursor = conn.executemany(operation, parameters)
    elif parameters is None:
        cursor = conn.execute(operation)
    else:
        cursor = conn.execute(operation, parameters)
    try:
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose ``execute`` is one call on the connection's thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: HeraldConnection) -> None:  # no aiosqlite cursor
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._rows = collections.deque()
        self._soft_closed_memoized = EMPTY_DICT
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        """Nothing to close: the thread closed its cursor after fetching."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        return self._call(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        return self._call(operation, seq_of_parameters, many=True)

    def _call(self, operation: str, parameters: Any, *, many: bool) -> None:
        adapt: HeraldConnection = self._adapt_connection  # type: ignore[assignment]
        begin, adapt._pending_begin = adapt._pending_begin, None
        try:
            raw = cast(aiosqlite.Connection, self._connection)
            outcome: _Outcome = await_(
                raw._execute(_run, raw._conn, begin, operation, parameters, many)
            )
        except Exception as error:  # noqa: BLE001 - re-raised as the DBAPI error, as upstream
            adapt._handle_exception(error)
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

    def setinputsizes(self, *inputsizes: Any) -> None:
        """sqlite3 ignores input sizes."""

    def nextset(self) -> None:
        """sqlite3 has one result set per statement."""


class HeraldConnection(AsyncAdapt_aiosqlite_connection):
    """Holds a requested ``BEGIN`` until the first statement, and skips idle commits."""

    __slots__ = ("_pending_begin",)
    _cursor_cls = OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._pending_begin: str | None = None

    def begin_with_first_statement(self, sql: str) -> None:
        """Send ``sql`` (``BEGIN`` or ``BEGIN IMMEDIATE``) in the first statement's call."""
        self._pending_begin = sql

    def cursor(self, server_side: bool = False) -> Any:
        if server_side and self._pending_begin is not None:
            # A streamed result runs on aiosqlite's own cursor: send the BEGIN first.
            begin, self._pending_begin = self._pending_begin, None
            raw = cast(aiosqlite.Connection, self._connection)
            try:
                await_(raw._execute(raw._conn.execute, begin))
            except Exception as error:  # noqa: BLE001 - re-raised as the DBAPI error
                self._handle_exception(error)
        return super().cursor(server_side)

    def _in_transaction(self) -> bool:
        raw = cast(aiosqlite.Connection, self._connection)._connection
        return raw is not None and bool(raw.in_transaction)

    def commit(self) -> None:
        self._pending_begin = None
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        self._pending_begin = None
        if self._in_transaction():
            super().rollback()


class HeraldDbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> HeraldConnection:
        adapted = super().connect(*arg, **kw)
        return HeraldConnection(self, adapted._connection)


class HeraldSQLiteDialect(SQLiteDialect_aiosqlite):
    """SQLAlchemy's aiosqlite dialect with the one-call cursor above."""

    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> HeraldDbapi:
        return HeraldDbapi(aiosqlite, sqlite3)


registry.register(f"sqlite.{DRIVER}", __name__, "HeraldSQLiteDialect")
