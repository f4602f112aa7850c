"""Optional py-spy sampling of a measured process, and a plain-text digest of it.

``py-spy record --gil --format raw`` samples only the thread holding the GIL, i.e. where
the process spends CPU on Python, and writes collapsed stacks (``frame;frame;… count``).
The digest groups samples by library (SQLAlchemy's greenlet bridge splits stacks, so a
per-library share is steadier than per-function inclusive time), then lists the top
self-time frames and the Herald functions the samples pass through.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

from bench.config import VENV_BIN
from bench.procs import Proc, base_env, spawn

HERALD_PACKAGES = ("herald/", "producer/", "workers/", "providers/", "router/", "dlq/")
#: (label, path fragments): the first that any frame of a stack matches wins.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLAlchemy + aiosqlite (incl. greenlet bridge)", ("sqlalchemy/", "aiosqlite/", "asyncpg/")),
    ("redis-py", ("redis/",)),
    ("aio-pika / aiormq / pamqp", ("aio_pika/", "aiormq/", "pamqp/")),
    ("FastAPI / Starlette / uvicorn / pydantic", ("fastapi/", "starlette/", "uvicorn/")),
    ("phonenumbers", ("phonenumbers/",)),
    ("logging / structlog", ("structlog/", "logging/")),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    found = VENV_BIN / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def start(target: Proc, out: Path, duration_s: int, log_dir: Path) -> Proc | None:
    """Sample ``target`` for ``duration_s`` (or until it exits); None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    argv = [
        binary,
        "record",
        "--gil",
        "--nonblocking",
        "--rate=100",
        f"--duration={duration_s}",
        "--format=raw",
        f"--output={out}",
        f"--pid={target.pid}",
    ]
    return spawn(f"py-spy-{target.name}", argv, env=base_env(), log_dir=log_dir)


def _label(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def _library(frames: list[str]) -> str:
    for label, fragments in LIBRARIES:
        if any(fragment in frame for frame in frames for fragment in fragments):
            return label
    if frames[-1].startswith("Runner.run"):
        return "event loop itself (uvloop C code, socket I/O)"
    return "other Python (Herald's own code, asyncio)"


def digest(raw_path: Path, top: int = 25) -> str:
    """Top self-time frames and top inclusive Herald frames, as percentages of samples."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        libraries[_library(frames)] += count
        for frame in set(frames):
            if any(f"({p}" in frame for p in HERALD_PACKAGES):
                inclusive[frame] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples (GIL holder only)", "", "by library:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in libraries.most_common()]
    lines += ["", "self time (where the CPU is):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    lines += ["", "inclusive time of Herald's own functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)
