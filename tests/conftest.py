"""Fixtures: a clean database per test (SQLite and PostgreSQL), the test vhost, stacks."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from herald.storage.db import make_engine
from herald.storage.migrate import downgrade, upgrade
from herald.storage.models import Base
from tests.support.private_redis import PrivateRedis
from tests.support.stack import Stack, running_stack, stack_settings

#: A database of the suite's own, made on the machine's PostgreSQL (reached through the
#: ``test`` database), so other users of ``test`` never lock our tables.
TEST_PG_ADMIN_URL = os.environ.get(
    "HERALD_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TEST_PG_DATABASE = os.environ.get("HERALD_TEST_PG_DATABASE", "herald_test")
TEST_PG_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{TEST_PG_DATABASE}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a ``long`` test first, the rest in their usual order. Under
    ``--dist loadfile --no-loadscope-reorder`` (``make test``) a worker then starts on a
    minute-long test while the other takes the short files, instead of one worker waiting
    out the longest test alone at the end."""
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: item.path not in long_files)


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_test_vhost() -> None:
    """Tests use their own vhost, so a running `herald dev` is never disturbed."""
    vhost = os.environ.get("HERALD_TEST_AMQP_URL", "/herald_test").rsplit("/", 1)[-1]
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], capture_output=True, check=False)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        capture_output=True,
        check=True,
    )


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking set-up (Alembic runs its own event loop) away from the test loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


async def _create_database() -> None:
    connection = await asyncpg.connect(TEST_PG_ADMIN_URL)
    try:
        exists = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", TEST_PG_DATABASE
        )
        if not exists:
            await connection.execute(f'CREATE DATABASE "{TEST_PG_DATABASE}"')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_schema() -> str:
    in_thread(asyncio.run, _create_database())
    in_thread(downgrade, TEST_PG_URL, "base")
    in_thread(upgrade, TEST_PG_URL)
    return TEST_PG_URL


async def _truncate(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database migrated to head per session; each test gets a byte copy
    (about 1 ms) instead of running every migration again (0.2-0.4 s per test)."""
    directory = tmp_path_factory.mktemp("sqlite-template")
    in_thread(upgrade, f"sqlite+aiosqlite:///{directory}/herald.db")
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["herald.db"], f"the migrated database left {files}: copy them too"
    return directory / "herald.db"


def fresh_sqlite_url(template: Path, directory: Path) -> str:
    """A migrated database of this test's own at ``directory/herald.db``."""
    shutil.copyfile(template, directory / "herald.db")
    return f"sqlite+aiosqlite:///{directory}/herald.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return fresh_sqlite_url(request.getfixturevalue("sqlite_template"), tmp_path)
    url: str = request.getfixturevalue("postgres_schema")
    in_thread(asyncio.run, _truncate(url))
    return url


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    return fresh_sqlite_url(sqlite_template, tmp_path)


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(stack_settings(database_url)) as s:
        yield s


@pytest.fixture
def settings_for(database_url: str):  # type: ignore[no-untyped-def]
    def make(**overrides: Any) -> dict[str, Any]:
        return stack_settings(database_url, **overrides)

    return make


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A ``redis-server`` of this test's own that it may stop, restart empty or flush."""
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        server.stop()
