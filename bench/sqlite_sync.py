"""What SQLite's ``synchronous`` level costs on this disk, per commit and per row.

With WAL, ``NORMAL`` fsyncs only at checkpoints: a process crash loses nothing committed,
a power cut or kernel crash may lose the last commits. ``FULL`` fsyncs the WAL at every
commit. Group commit (many accepts or outcomes per transaction) spreads that fsync over a
batch, which is what this measures: commits/s and rows/s for batches of 1, 10 and 100
rows the size of a notification, through plain sqlite3 (the driver's own cost is not
what is compared here).

    .venv/bin/python -m bench.sqlite_sync [--dir DIR] [--seconds 2]

``DIR`` defaults to the current directory, where Herald's default ``./herald.db`` lives
(a tmpfs would hide the fsync).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

LEVELS = ("NORMAL", "FULL")
BATCHES = (1, 10, 100)
ROW = (
    "sms",
    "+447911123456",
    "transactional",
    "normal",
    "accepted",
    '{"campaign": "bench", "pad": "' + "x" * 200 + '"}',
)


def commits_per_s(path: Path, level: str, batch: int, seconds: float) -> tuple[float, float]:
    """(commits/s, rows/s) of ``BEGIN IMMEDIATE``; ``batch`` inserts; ``COMMIT``."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={level}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS n (id TEXT PRIMARY KEY, channel TEXT, recipient TEXT,"
        " category TEXT, priority TEXT, status TEXT, metadata TEXT)"
    )
    commits = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO n VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(uuid.uuid4().hex, *ROW) for _ in range(batch)],
        )
        db.execute("COMMIT")
        commits += 1
    elapsed = time.perf_counter() - started
    db.close()
    return commits / elapsed, commits * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"{'synchronous':12} {'batch':>6} {'commits/s':>10} {'rows/s':>10}")
    for level in LEVELS:
        for batch in BATCHES:
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="sqlite-sync-") as tmp:
                commits, rows = commits_per_s(Path(tmp) / "sync.db", level, batch, args.seconds)
            print(f"{level:12} {batch:>6} {commits:>10,.0f} {rows:>10,.0f}")


if __name__ == "__main__":
    main()
