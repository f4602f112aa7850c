"""Fault tests for the database the accept path writes to: another process holding SQLite's
write lock, and a full disk. The API must answer ``503`` with ``Retry-After`` within its
deadline and store nothing, and ``/readyz`` must say what the accept path would meet."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from herald.storage.migrate import upgrade
from herald.storage.models import Notification
from tests.conftest import in_thread
from tests.support.stack import running_stack, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}

HOLD_LOCK = """
import sqlite3, sys
# Waits up to 30 s for a writer of the API to commit (the default 5 s ran out on a
# shared box: the holder exited and the test read no "locked").
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


def _start_holder(database: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def write_lock_held(database: Path) -> Iterator[subprocess.Popen[str]]:
    holder = _start_holder(database)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)


@contextlib.asynccontextmanager
async def write_lock_held_off_the_loop(database: Path) -> AsyncIterator[subprocess.Popen[str]]:
    """``write_lock_held`` for a test whose API runs in its own event loop: waiting for
    "locked" on the loop would stop the API from committing the write the holder waits for."""
    holder = _start_holder(database)
    try:
        assert holder.stdout is not None
        assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "locked"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        await asyncio.to_thread(holder.wait, 10)


async def test_a_held_sqlite_write_lock_gets_503_not_a_queue(tmp_path: Path) -> None:
    database = tmp_path / "herald.db"
    url = f"sqlite+aiosqlite:///{database}"
    in_thread(upgrade, url)
    async with running_stack(stack_settings(url, database_wait_s=1), workers=0) as api:
        assert (await api.send(**SMS)).status_code == 202
        async with write_lock_held_off_the_loop(database) as holder:
            refused = await asyncio.gather(*(api.send(**SMS) for _ in range(20)))
            assert holder.poll() is None, "answered while the lock was still held"
            ready = await api.client.get("/readyz")
        assert {r.status_code for r in refused} == {503}
        assert all(r.headers["retry-after"] for r in refused)
        assert all(r.headers["content-type"] == "application/problem+json" for r in refused)
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
        # Nothing of the refused requests was stored later, once the lock was gone.
        assert (await api.send(**SMS)).status_code == 202
        assert await api.count(Notification) == 2
        assert (await api.client.get("/readyz")).status_code == 200


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 65536)
    return filler


async def test_a_full_disk_fails_readiness_like_it_fails_accepts(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk") as disk:
        url = f"sqlite+aiosqlite:///{disk}/herald.db"
        in_thread(upgrade, url)
        async with running_stack(stack_settings(url), workers=0) as api:
            assert (await api.send(**SMS)).status_code == 202
            assert (await api.client.get("/readyz")).status_code == 200
            filler = fill(disk)
            # SQLite may still fit a few rows in pages it already has: write until it can't.
            statuses = []
            for _ in range(400):
                statuses.append((await api.send(**SMS, metadata={"pad": "x" * 2000})).status_code)
                if statuses[-1] != 202:
                    break
            assert statuses[-1] == 503, f"never refused on a full disk: {set(statuses)}"
            ready = await api.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
            filler.unlink()
            assert (await api.client.get("/readyz")).status_code == 200
            assert (await api.send(**SMS)).status_code == 202
