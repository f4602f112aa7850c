"""``herald worker --processes N`` and ``herald api --workers N``: N real processes that
share the load, stop together on SIGTERM, and the supervisor restarts one that dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from herald import names
from herald.storage.models import ReadinessProbe
from tests.support.stack import (
    ApiProcess,
    Stack,
    as_env,
    consumer_count,
    running_stack,
    stack_settings,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration]

#: A worker child consumes 4-5 s after it starts on a quiet 2-core box, 15-20 s when five
#: suites share it: the waits allow for that (they return as soon as the child is up).
STARTUP_S = 60
SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}


class Command(ApiProcess):
    """``herald <args…>`` in a child process (``wait_ready`` for an API)."""

    def __init__(self, args: list[str], values: dict[str, Any], log_path: Path) -> None:
        super().__init__(values, log_path)
        self.args = args

    def start(self) -> Command:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "herald", *self.args],
            env=as_env(self.values),
            stdout=self._log,
            stderr=self._log,
        )
        return self


async def consumers_are(values: dict[str, Any], queue: str, expected: int) -> bool:
    return await consumer_count(str(values["amqp_url"]), queue) == expected


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_worker_processes_share_the_queues_and_stop_together(
    settings_for, tmp_path: Path
) -> None:
    values = settings_for()
    async with running_stack(values, workers=0) as stack:
        workers = Command(["worker", "--processes", "2"], values, tmp_path / "w.log").start()
        assert workers.proc is not None
        try:
            queue = names.all_work_queues()[0]
            await wait_until(lambda: consumers_are(values, queue, 2), STARTUP_S)
            first_children = children_of(workers.proc.pid)
            assert len(first_children) == 2

            # A child that dies is replaced; the other keeps consuming meanwhile.
            os.kill(first_children[0], signal.SIGKILL)
            await wait_until(lambda: first_children[0] not in children_of(workers.proc.pid))
            await wait_until(lambda: len(children_of(workers.proc.pid)) == 2, STARTUP_S)
            await wait_until(lambda: consumers_are(values, queue, 2), STARTUP_S)

            responses = await asyncio.gather(*(stack.send(**SMS) for _ in range(60)))
            ids = [r.json()["id"] for r in responses]
            assert set((await stack.wait_all_terminal(ids)).values()) == {"sent"}
            assert set((await stack.sandbox_copies(ids)).values()) == {1}

            children = children_of(workers.proc.pid)
            assert await asyncio.to_thread(workers.terminate, 40) == 0
            assert not [p for p in children if alive(p)], "children left behind"
            assert await consumers_are(values, queue, 0)
        finally:
            workers.close()


async def test_api_workers_serve_one_port_from_several_processes(
    sqlite_url: str, tmp_path: Path
) -> None:
    values = stack_settings(sqlite_url)
    api = Command(["api", "--workers", "2"], values, tmp_path / "api.log").start()
    assert api.proc is not None
    stack = Stack(values)
    try:
        await api.wait_ready(STARTUP_S)
        await wait_until(lambda: len(children_of(api.proc.pid)) == 2)  # type: ignore[union-attr]
        # Each /readyz writes its process's probe row; fresh connections reach both.
        for _ in range(30):
            async with httpx.AsyncClient() as fresh:
                assert (await fresh.get(f"{stack.url}/readyz")).status_code == 200
        async with stack.sessions() as session:
            probes = (await session.execute(select(ReadinessProbe.process))).scalars().all()
        assert len([p for p in probes if p.endswith(":api")]) == 2
        responses = await asyncio.gather(*(stack.send(**SMS) for _ in range(40)))
        assert {r.status_code for r in responses} == {202}
        assert await asyncio.to_thread(api.terminate, 40) == 0
    finally:
        api.close()
        await stack.close()
