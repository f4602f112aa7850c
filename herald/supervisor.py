"""Run N copies of a ``herald`` command as child processes, to use every core.

``herald api --workers N`` and ``herald worker --processes N`` start here: each child is a
whole, ordinary process (its own event loop, connections and pools), so nothing is shared
but the servers. The supervisor forwards SIGTERM/SIGINT (each child stops gracefully, as
alone), restarts a child that dies on its own (with a growing pause, so a crash loop does
not spin), and exits non-zero if any child had to be killed or failed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from herald.logs import get_logger

log = get_logger(__name__)

PR_SET_PDEATHSIG = 1
#: A child that lived this long is healthy again: its restart pause starts over.
HEALTHY_AFTER_S = 30.0
MAX_RESTART_PAUSE_S = 30.0


@dataclass(slots=True)
class ChildSpec:
    """One child: its arguments after ``herald`` and its extra environment."""

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


def herald_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "herald", *args]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM us if the supervisor dies (even by SIGKILL), so
    no orphaned worker keeps consuming with nobody to stop it (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, children: Sequence[ChildSpec], *, grace_s: float) -> None:
        self.children = list(children)
        self.grace_s = grace_s
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        results = await asyncio.gather(*(self._keep(i, c) for i, c in enumerate(self.children)))
        return 0 if all(code == 0 for code in results) else 1

    async def _keep(self, index: int, spec: ChildSpec) -> int:
        """Run one child until we stop; restart it whenever it ends on its own."""
        pause = 1.0
        while True:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *herald_command(spec.args),
                env={**os.environ, **spec.env},
                preexec_fn=_die_with_parent,
            )
            log.info("child_started", index=index, pid=process.pid, args=" ".join(spec.args))
            code = await self._until_exit_or_stop(process)
            if self._stopping.is_set():
                return code
            log.error("child_exited", index=index, pid=process.pid, exit_code=code)
            if time.monotonic() - started > HEALTHY_AFTER_S:
                pause = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=pause)
            if self._stopping.is_set():
                return code
            pause = min(pause * 2, MAX_RESTART_PAUSE_S)

    async def _until_exit_or_stop(self, process: asyncio.subprocess.Process) -> int:
        stop = asyncio.create_task(self._stopping.wait())
        exited = asyncio.create_task(process.wait())
        await asyncio.wait({stop, exited}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if exited.done():
            return exited.result()
        process.send_signal(signal.SIGTERM)
        try:
            # Each child has its own shutdown grace; give it that and a little more.
            return await asyncio.wait_for(exited, timeout=self.grace_s + 5)
        except TimeoutError:
            log.error("child_killed", pid=process.pid, after_s=self.grace_s + 5)
            process.kill()
            await exited
            return 1
