"""A ``redis-server`` of a test's own (no persistence), so a fault test can stop it,
restart it empty or flush it without touching the shared one."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import redis.exceptions
from redis.asyncio import Redis

from tests.support.stack import free_port


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start it and wait until it answers."""
        binary = shutil.which("redis-server") or "redis-server"
        command = [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starts at once, never waited on
            [*command, "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (OSError, redis.exceptions.ConnectionError):
                    assert time.monotonic() < deadline, "private redis-server did not start"
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    async def flushall(self) -> None:
        client = Redis.from_url(self.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def restart_empty(self) -> None:
        self.stop()
        await self.start()
