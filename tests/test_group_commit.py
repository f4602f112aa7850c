"""Group-committed accepts: concurrent requests share a transaction, each with its own answer.

First the batching alone (no servers): what forms a batch, what a failed batch does, and
that a row which waited past its deadline is never written. Then the accept service on
both databases: fewer transactions than requests, an idempotency key used twice in one
batch, one poisoned row inside a batch, and the API with its database down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import Settings
from herald.domain import Category, Channel, Priority, utcnow
from herald.storage.db import make_engine, make_session_factory
from herald.storage.models import IdempotencyKey, Notification, OutboxEntry
from producer.accept import AcceptService
from producer.auth import Principal
from producer.group_commit import CommitWaitTimeout, GroupCommit
from producer.outbox import Outbox
from producer.problems import Problem
from producer.validation import ValidSend
from tests.support.stack import free_port, running_stack, stack_settings
from tests.support.tcpproxy import TcpProxy

# -- the batching alone --------------------------------------------------------------


class Recorder:
    """A ``write`` that records its batches; ``gate`` holds a batch until released."""

    def __init__(self, *, bad: set[str] | None = None, shared: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.bad = bad or set()
        self.shared = shared
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.bad & set(items):
            raise (ConnectionError if self.shared else ValueError)(f"bad row in {list(items)}")
        return [f"stored {item}" for item in items]


def committer(write: Recorder, wait_s: float = 5.0) -> GroupCommit[str, str]:
    return GroupCommit(
        write, wait_s=wait_s, shared_failure=lambda exc: isinstance(exc, ConnectionError)
    )


async def test_a_lone_row_is_written_at_once_and_concurrent_rows_share_a_batch() -> None:
    write = Recorder()
    group = committer(write)
    assert await group.submit("a") == "stored a"
    assert write.batches == [["a"]]
    results = await asyncio.gather(*(group.submit(f"r{i}") for i in range(10)))
    assert results == [f"stored r{i}" for i in range(10)]
    assert write.batches[1:] == [[f"r{i}" for i in range(10)]]
    assert group.stats.batches == 2 and group.stats.largest == 10


async def test_rows_that_arrive_during_a_commit_form_the_next_batch() -> None:
    write = Recorder()
    write.gate = asyncio.Event()
    group = committer(write)
    first = asyncio.ensure_future(group.submit("first"))
    await asyncio.sleep(0)  # the writer has taken "first" and waits in its commit
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(group.submit(f"later{i}")) for i in range(3)]
    await asyncio.sleep(0)
    assert write.batches == [["first"]]
    write.gate.set()
    assert await first == "stored first"
    assert [await f for f in later] == ["stored later0", "stored later1", "stored later2"]
    assert write.batches == [["first"], ["later0", "later1", "later2"]]


async def test_one_bad_row_fails_only_its_own_request() -> None:
    write = Recorder(bad={"r2"})
    group = committer(write)
    results = await asyncio.gather(
        *(group.submit(f"r{i}") for i in range(5)), return_exceptions=True
    )
    assert isinstance(results[2], ValueError)
    assert [r for i, r in enumerate(results) if i != 2] == [
        "stored r0",
        "stored r1",
        "stored r3",
        "stored r4",
    ]
    # The batch, then each row alone.
    assert write.batches == [["r0", "r1", "r2", "r3", "r4"], ["r0"], ["r1"], ["r2"], ["r3"], ["r4"]]


async def test_a_failure_of_the_whole_database_fails_the_batch_without_retries() -> None:
    write = Recorder(bad={"r0"}, shared=True)
    group = committer(write)
    results = await asyncio.gather(
        *(group.submit(f"r{i}") for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    assert write.batches == [["r0", "r1", "r2", "r3"]]
    # The writer is free again: the next row goes through.
    write.bad.clear()
    assert await group.submit("after") == "stored after"


async def test_a_row_queued_past_its_deadline_fails_and_is_never_written() -> None:
    write = Recorder()
    write.gate = asyncio.Event()
    group = committer(write, wait_s=0.2)
    stuck = asyncio.ensure_future(group.submit("stuck"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(group.submit("waiting"))
    with pytest.raises(CommitWaitTimeout):
        await waiting
    write.gate.set()
    assert await stuck == "stored stuck"  # taken before its deadline: it waits for its commit
    assert await group.submit("next") == "stored next"
    assert write.batches == [["stuck"], ["next"]]


# -- the accept service on both databases --------------------------------------------

PRINCIPAL = Principal("key-1", "billing", frozenset({"send"}))


def sms(body: str = "Hi") -> ValidSend:
    return ValidSend(
        channel=Channel.SMS,
        to="+447911123456",
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        subject=None,
        body=body,
        data={},
        metadata={},
        expires_at=None,
        send_at=None,
        country="GB",
    )


class Offline:
    """A publisher that is never connected: accepted rows stay in the outbox."""

    connected = False


class Transactions:
    """Counts committed transactions that inserted notifications."""

    def __init__(self) -> None:
        self.count = 0
        self._writing: set[int] = set()

    def on_execute(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO NOTIFICATIONS"):
            self._writing.add(id(conn))

    def on_commit(self, conn: Any) -> None:
        if id(conn) in self._writing:
            self._writing.discard(id(conn))
            self.count += 1


@contextlib.contextmanager
def counting_transactions(target: Any) -> Iterator[Transactions]:
    counter = Transactions()
    event.listen(target, "before_cursor_execute", counter.on_execute)
    event.listen(target, "commit", counter.on_commit)
    try:
        yield counter
    finally:
        event.remove(target, "before_cursor_execute", counter.on_execute)
        event.remove(target, "commit", counter.on_commit)


@contextlib.asynccontextmanager
async def accept_service(database_url: str, **overrides: Any) -> AsyncIterator[AcceptService]:
    """The service over the real database and Redis (or an unreachable Redis)."""
    from redis.asyncio import Redis

    settings = Settings(**stack_settings(database_url, **overrides))
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    outbox = Outbox(sessions, Offline(), settings)  # type: ignore[arg-type]
    try:
        yield AcceptService(sessions, redis, outbox, settings)
    finally:
        await redis.aclose()
        await engine.dispose()


async def count(service: AcceptService, model: Any) -> int:
    from sqlalchemy import func, select

    async with service.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


def engine_of(service: AcceptService) -> AsyncEngine:
    bind = service.sessions.kw["bind"]
    assert isinstance(bind, AsyncEngine)
    return bind


async def test_concurrent_accepts_commit_together_each_with_its_own_answer(
    database_url: str,
) -> None:
    async with accept_service(database_url) as service:
        with counting_transactions(engine_of(service).sync_engine) as transactions:
            accepted = await asyncio.gather(
                *(
                    service.accept(PRINCIPAL, sms(f"n{i}"), idempotency_key=None, fingerprint=None)
                    for i in range(20)
                )
            )
        assert len({a.id for a in accepted}) == 20
        assert not any(a.replayed for a in accepted)
        assert 1 <= transactions.count < 20
        assert await count(service, Notification) == 20
        assert await count(service, OutboxEntry) == 20
        async with service.sessions() as session:
            bodies: dict[str, str] = dict(
                (await session.execute(text("SELECT id, body FROM notifications"))).all()
            )
        assert {bodies[a.id] for a in accepted} == {f"n{i}" for i in range(20)}


async def test_one_key_twice_in_a_batch_stores_one_notification(database_url: str) -> None:
    # Redis unreachable: no fast 409, so every request reaches the writer at once.
    down = f"redis://127.0.0.1:{free_port()}/0"
    async with accept_service(database_url, redis_url=down) as service:
        key, fingerprint = "order-7", "f" * 64
        with counting_transactions(engine_of(service).sync_engine) as transactions:
            answers = await asyncio.gather(
                *(
                    service.accept(PRINCIPAL, sms(), idempotency_key=key, fingerprint=fingerprint)
                    for _ in range(6)
                )
            )
        assert transactions.count == 1
        assert len({a.id for a in answers}) == 1
        assert sum(not a.replayed for a in answers) == 1
        assert await count(service, Notification) == 1
        assert await count(service, IdempotencyKey) == 1
        # The same key with another body, in one batch with a new key: 422 for it alone.
        results = await asyncio.gather(
            service.accept(PRINCIPAL, sms("other"), idempotency_key=key, fingerprint="0" * 64),
            service.accept(PRINCIPAL, sms(), idempotency_key="order-8", fingerprint=fingerprint),
            return_exceptions=True,
        )
        assert isinstance(results[0], Problem) and results[0].status == 422
        assert not isinstance(results[1], BaseException) and not results[1].replayed
        assert await count(service, Notification) == 2


async def test_an_expired_key_in_a_batch_is_taken_anew(database_url: str) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    async with accept_service(database_url, redis_url=down) as service:
        first = await service.accept(PRINCIPAL, sms(), idempotency_key="k", fingerprint="a" * 64)
        async with service.sessions.begin() as session:
            await session.execute(
                update(IdempotencyKey).values(created_at=utcnow() - timedelta(days=2))
            )
        again = await service.accept(PRINCIPAL, sms(), idempotency_key="k", fingerprint="b" * 64)
        assert again.id != first.id and not again.replayed
        assert await count(service, Notification) == 2
        assert await count(service, IdempotencyKey) == 1


POISON_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER poison BEFORE INSERT ON notifications WHEN NEW.body = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poison row'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION herald_poison() RETURNS trigger AS $$ BEGIN "
        "IF NEW.body = 'poison' THEN RAISE EXCEPTION 'poison row'; END IF; RETURN NEW; "
        "END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER poison BEFORE INSERT ON notifications "
        "FOR EACH ROW EXECUTE FUNCTION herald_poison()",
    ],
}


@contextlib.asynccontextmanager
async def poisoned(engine: AsyncEngine) -> AsyncIterator[None]:
    """A database that refuses, by trigger, any notification whose body is 'poison'."""
    async with engine.begin() as conn:
        for statement in POISON_TRIGGER[engine.dialect.name]:
            await conn.execute(text(statement))
    try:
        yield
    finally:
        drop = "DROP TRIGGER poison"
        if engine.dialect.name == "postgresql":
            drop += " ON notifications"
        async with engine.begin() as conn:
            await conn.execute(text(drop))


async def test_a_failing_row_inside_a_batch_fails_only_its_own_request(
    database_url: str,
) -> None:
    async with accept_service(database_url) as service, poisoned(engine_of(service)):
        bodies = ["n0", "n1", "poison", "n3", "n4"]
        results = await asyncio.gather(
            *(
                service.accept(PRINCIPAL, sms(b), idempotency_key=None, fingerprint=None)
                for b in bodies
            ),
            return_exceptions=True,
        )
        assert isinstance(results[2], Exception) and "poison row" in str(results[2])
        accepted = [r for i, r in enumerate(results) if i != 2]
        assert not any(isinstance(r, BaseException) for r in accepted)
        assert service.writer.stats.singles_after_failure == 5
        assert await count(service, Notification) == 4
        assert await count(service, OutboxEntry) == 4


# -- the API ---------------------------------------------------------------------------

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}


async def test_concurrent_api_requests_share_transactions(database_url: str) -> None:
    async with running_stack(stack_settings(database_url), workers=0) as api:
        with counting_transactions(Engine) as transactions:
            responses = await asyncio.gather(*(api.send(**SMS) for _ in range(32)))
        assert {r.status_code for r in responses} == {202}
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 32
        assert 1 <= transactions.count < 32
        assert await api.count(Notification) == 32


async def test_postgresql_down_gives_503_to_every_waiting_request_and_stores_nothing(
    postgres_schema: str,
) -> None:
    from tests.conftest import _truncate, in_thread

    in_thread(asyncio.run, _truncate(postgres_schema))
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    url = postgres_schema.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with running_stack(stack_settings(url, database_wait_s=2), workers=0) as api:
            assert (await api.send(**SMS)).status_code == 202
            proxy.cut()
            refused = await asyncio.gather(*(api.send(**SMS) for _ in range(16)))
            assert {r.status_code for r in refused} == {503}
            assert all(r.headers["content-type"] == "application/problem+json" for r in refused)
            assert all(r.headers["retry-after"] for r in refused)
            proxy.heal()
            assert (await api.send(**SMS)).status_code == 202
            assert await api.count(Notification) == 2

            # Only the two accepted requests left rows to publish (a message may still be
            # published twice, the relay's known duplicate, which workers dedupe by claim).
            async with api.sessions() as session:
                outbox = set((await session.execute(select(OutboxEntry.notification_id))).scalars())
                stored = set((await session.execute(select(Notification.id))).scalars())
            assert outbox <= stored
    finally:
        await proxy.stop()


async def test_sqlite_locked_gives_503_to_every_waiting_request_and_stores_nothing(
    sqlite_url: str,
) -> None:
    from tests.test_database_faults import write_lock_held_off_the_loop

    database = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    async with running_stack(stack_settings(sqlite_url, database_wait_s=1), workers=0) as api:
        assert (await api.send(**SMS)).status_code == 202
        async with write_lock_held_off_the_loop(Path(database)) as holder:
            refused = await asyncio.gather(*(api.send(**SMS) for _ in range(24)))
            assert holder.poll() is None, "answered only once the lock was gone"
        assert {r.status_code for r in refused} == {503}
        assert all(r.headers["content-type"] == "application/problem+json" for r in refused)
        assert (await api.send(**SMS)).status_code == 202
        assert await api.count(Notification) == 2
        assert await api.count(OutboxEntry) <= 2
