"""Group commit: concurrent accepts share one transaction, each still told its own outcome.

Every accept used to pay a whole transaction (begin, three statements, commit, ~2 ms on
SQLite through the async adapter). Here requests hand their rows to one writer task per
process (a :class:`herald.batching.Batcher`); the writer commits everything queued in one
transaction and answers each request only after that commit. There is no timer: an idle
writer starts on the first row at once, and rows that arrive while it is committing form
its next batch.

A failed batch whose error the whole database shares (down, locked, timed out) fails all
its rows; any other error is retried row by row, so one bad row fails only its request.
A row still queued after ``wait_s`` (HERALD_DATABASE_WAIT_S, the deadline every wait for
the database has) is dropped unwritten with :class:`CommitWaitTimeout`, which the API
answers with its database-unavailable ``503``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import TimeoutError as PoolTimeout

from herald.batching import Batcher, BatchStats, Write

__all__ = ["BatchStats", "CommitWaitTimeout", "GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class CommitWaitTimeout(PoolTimeout):
    """The row waited too long for the writer and was not written.

    A SQLAlchemy pool timeout, so the API maps it to its database-unavailable ``503``
    like any other wait for the database that ran out."""


def _wait_timeout(wait_s: float) -> BaseException:
    return CommitWaitTimeout(f"waited {wait_s:g} s for the database writer; not stored")


class GroupCommit(Batcher[T, R]):
    """A batcher whose rows that waited too long fail as a database timeout."""

    def __init__(
        self,
        write: Write[T, R],
        *,
        wait_s: float,
        shared_failure: Callable[[BaseException], bool],
        max_batch: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(
            write,
            wait_s=wait_s,
            shared_failure=shared_failure,
            max_batch=max_batch,
            timeout_error=_wait_timeout,
            on_batch=on_batch,
        )
