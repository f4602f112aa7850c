"""The rules a process routes with: the latest saved version, reloaded without a restart.

A save is broadcast on Redis (``herald:routing:changed``); every process also checks the
latest version every ``poll_s`` seconds, so a missed broadcast heals itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from herald import names
from herald.logs import get_logger
from router.rules import RoutingRules, RulesError, parse_rules
from router.store import RulesStore

log = get_logger(__name__)
OnChange = Callable[[RoutingRules], Awaitable[None]]


class RulesSource:
    def __init__(self, store: RulesStore, redis: Redis, *, poll_s: float = 1.0) -> None:
        self.store = store
        self.redis = redis
        self.poll_s = poll_s
        self._rules: RoutingRules | None = None
        self._listeners: list[OnChange] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    def current(self) -> RoutingRules:
        assert self._rules is not None, "call load() first"
        return self._rules

    def on_change(self, listener: OnChange) -> None:
        self._listeners.append(listener)

    async def load(self) -> RoutingRules:
        await self.refresh()
        return self.current()

    async def refresh(self) -> bool:
        """Load the latest version if it is newer than ours; True when it changed."""
        async with self._lock:
            latest = await self.store.latest_version()
            if self._rules is not None and latest <= self._rules.version:
                return False
            stored = await self.store.get(latest)
            assert stored is not None
            try:  # off the loop: a stored document is bounded, but sends must not wait on it
                rules = await asyncio.to_thread(
                    parse_rules, stored.document, version=stored.version
                )
            except RulesError as exc:
                if self._rules is None:
                    raise  # nothing to route with: refuse to start
                log.error("routing_version_unusable", version=stored.version, error=str(exc))
                return False
            self._rules = rules
            for listener in self._listeners:
                await listener(rules)
            log.info("routing_rules_loaded", version=rules.version)
            return True

    async def announce(self, version: int) -> None:
        """Tell every process a new version was saved (best effort: they also poll)."""
        with contextlib.suppress(RedisError):
            await self.redis.publish(names.ROUTING_CHANGED_CHANNEL, str(version))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self._refresh_quietly()

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - keep routing with what we have
            log.warning("routing_refresh_failed", error=repr(exc))

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(names.ROUTING_CHANGED_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._refresh_quietly()
            except (RedisError, OSError) as exc:
                log.debug("routing_broadcast_lost", error=repr(exc))
                await asyncio.sleep(self.poll_s)
