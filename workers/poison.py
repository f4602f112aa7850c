"""Telling a poison message from an outage: pure rules, no I/O.

A delivery that raises is one of two things. Our backing services failing (a refused or
reset connection, a timeout, a database that lost its connection, Redis unreachable) is
*infrastructure*: the message waits and comes back, counted in a header, until a bound.
Anything else is a *crash* of our code (or an adapter's) on this message: it gets
``crash_retries`` more tries, counted in a header, and is then dead-lettered with the
exception type, so one poison message costs one or two crashes, not the queue's delivery
limit. The counters travel in the message's own headers (republished copies carry them),
so no Redis or database round trip is spent on counting.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any

import redis.exceptions
import sqlalchemy.exc

from herald.errors import InfrastructureError

#: How many times this message crashed a worker (our code raised on it).
HEADER_CRASHES = "x-herald-crashes"
#: How many times in a row it was put back without an attempt (infrastructure, claims).
HEADER_DEFERRALS = "x-herald-deferrals"
#: The AMQP ``message_id`` of the message a worker dead-lettered (the ingester dedupes on it).
HEADER_SOURCE_MESSAGE_ID = "x-herald-source-message-id"
#: The queue a worker took the message from.
HEADER_SOURCE_QUEUE = "x-herald-source-queue"

#: Header names whose values are credentials (AMQP ingress carries ``authorization``):
#: never copied onto a dead-lettered message, never stored.
SECRET_HEADER = re.compile(
    r"authori[sz]ation|cookie|token|secret|passw|api[-_]?key|signature|credential", re.I
)

#: Failures of our own backing services: the message waits (bounded), never charged.
#: Deliberately narrow: ``DBAPIError`` (IntegrityError, DataError, ProgrammingError…) and a
#: bare ``OSError`` (a missing file, a TLS set-up error) are bugs, not outages.
INFRA_ERRORS: tuple[type[BaseException], ...] = (
    InfrastructureError,
    redis.exceptions.ConnectionError,  # also BusyLoadingError, AuthenticationError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a failover in progress: the replica is not master yet
    sqlalchemy.exc.OperationalError,  # lost connection, database locked, disk full
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection in time
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,
    socket.gaierror,  # a backing service's name does not resolve
)


def is_infrastructure(exc: BaseException) -> bool:
    """Is this an outage of something we depend on (wait), rather than a bug (crash)?"""
    if isinstance(exc, INFRA_ERRORS):
        return True
    # SQLAlchemy flags any DBAPI error it recognised as a dropped connection.
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


def count_of(headers: Mapping[str, Any] | None, name: str) -> int:
    """A counter header; anything that is not a plain whole number counts as 0."""
    value = (headers or {}).get(name)
    return value if type(value) is int and value > 0 else 0


def carried(
    headers: Mapping[str, Any] | None, *, crashes: int | None = None, deferrals: int | None = None
) -> dict[str, int]:
    """The counter headers a republished copy keeps, with ``crashes``/``deferrals`` set
    when given; zero counters are left out."""
    out = {
        HEADER_CRASHES: count_of(headers, HEADER_CRASHES) if crashes is None else crashes,
        HEADER_DEFERRALS: count_of(headers, HEADER_DEFERRALS) if deferrals is None else deferrals,
    }
    return {name: value for name, value in out.items() if value}


def exception_code(exc: BaseException) -> str:
    """The exception's type as on-call would search for it (``KeyError``,
    ``sqlalchemy.exc.IntegrityError``), at most 64 characters (the column)."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return name[:64]


def crash_text(exc: BaseException, *, withhold_detail: bool) -> str:
    """What the dead letter says about the crash. ``withhold_detail`` (an OTP message,
    whose code may be in the exception's text) keeps only the type."""
    if withhold_detail:
        return f"{exception_code(exc)} (detail withheld: OTP message)"
    detail = str(exc)
    return f"{exception_code(exc)}: {detail}"[:1000] if detail else exception_code(exc)
