"""HTTP load generator, run as its own process: ``python -m bench.load --help``.

A minimal HTTP/1.1 keep-alive client (asyncio streams + uvloop + httptools' parser, both
already installed with uvicorn) rather than httpx: on a 2-core box every cycle the client
burns is taken from the server under test, and this client costs a fraction of httpx's.

Two modes:

* ``closed``: ``--concurrency`` connections, each sending its next request as soon as
  the previous answer arrives (throughput and latency at a fixed concurrency); with
  ``--count`` it stops after that many 2xx answers (used to pre-load backlogs).
* ``open``: requests start on a fixed schedule (``--rate`` per second) whatever the
  server does; latency counts from the scheduled time, so a stalled server cannot hide
  its queueing (no coordinated omission).

The summary (and, with ``--record``, one record per request: send time, status, id) is
written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools

from bench.measure import latency_summary

RECONNECT_PAUSE_S = 0.05


class ResponseReader:
    """Collects one response from httptools' callbacks."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, limit_s: float) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        response = ResponseReader()
        parser = httptools.HttpResponseParser(response)
        async with asyncio.timeout(limit_s):
            while not response.complete:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                parser.feed_data(data)
        if not parser.should_keep_alive():
            self.close()
        return parser.get_status_code(), bytes(response.body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass(slots=True)
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    ok: int = 0
    sent: int = 0
    ok_all: int = 0  # 2xx including warm-up: the denominator of the server's CPU per request
    schedule_started_at: float = 0.0  # wall clock of the first request's slot

    def add_status(self, status: int) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            self.ok += 1

    def add_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


def build_request(url: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response_id(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("id")
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


async def closed_loop(args: argparse.Namespace, host: str, port: int, raw: bytes) -> Results:
    """``--concurrency`` connections back to back; measured after ``--warmup`` seconds."""
    results = Results()
    started = time.perf_counter()
    results.schedule_started_at = time.time()
    measure_from = started + args.warmup
    end = started + args.warmup + args.duration
    budget = args.count  # None: run for the duration
    refused = 0

    async def one_connection() -> None:
        nonlocal budget, refused
        connection = Connection(host, port)
        while time.perf_counter() < end:
            if args.max_refused is not None and refused > args.max_refused:
                break  # e.g. every request gets 429: retrying until the deadline helps nobody
            if budget is not None:
                if budget <= 0:
                    break
                budget -= 1
            t0 = time.perf_counter()
            try:
                status, _ = await connection.request(raw, args.timeout)
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                connection.close()
                refused += 1
                if budget is not None:
                    budget += 1
                results.add_error(exc)
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            t1 = time.perf_counter()
            if 200 <= status < 300:
                results.ok_all += 1
            else:
                refused += 1
                if budget is not None:
                    budget += 1  # a refused pre-load request is sent again
            if t0 >= measure_from and t1 <= end:
                results.latencies_ms.append((t1 - t0) * 1000)
                results.add_status(status)
        connection.close()

    await asyncio.gather(*(one_connection() for _ in range(args.concurrency)))
    results.sent = len(results.latencies_ms)
    return results


async def open_loop(args: argparse.Namespace, host: str, port: int, raw: bytes) -> Results:
    """Requests on a fixed schedule; idle connections reused, new ones opened up to a cap."""
    results = Results()
    idle: list[Connection] = []
    opened = 0
    slots = asyncio.Semaphore(args.max_connections)
    total = int(args.rate * (args.warmup + args.duration))
    started = time.perf_counter()
    results.schedule_started_at = time.time()
    measure_from = started + args.warmup

    async def one_request(scheduled: float) -> None:
        nonlocal opened
        async with slots:
            if idle:
                connection = idle.pop()
            else:
                connection = Connection(host, port)
                opened += 1
            sent_wall = time.time()
            t0 = time.perf_counter()
            try:
                status, body = await connection.request(raw, args.timeout)
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                connection.close()
                if scheduled >= measure_from:
                    results.add_error(exc)
                return
            t1 = time.perf_counter()
            idle.append(connection)
        if 200 <= status < 300:
            results.ok_all += 1
        if scheduled < measure_from:
            return
        results.add_status(status)
        results.latencies_ms.append((t1 - scheduled) * 1000)
        if args.record:
            results.records.append(
                {
                    "sent_at": sent_wall,
                    "start_delay_ms": round((t0 - scheduled) * 1000, 3),
                    "latency_ms": round((t1 - t0) * 1000, 3),
                    "status": status,
                    "id": response_id(body),
                }
            )

    tasks: set[asyncio.Task[None]] = set()
    for i in range(total):
        scheduled = started + i / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one_request(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 5)
    for task in tasks:
        task.cancel()
    for connection in idle:
        connection.close()
    results.sent = total - int(args.rate * args.warmup)
    results.records.sort(key=lambda r: r["sent_at"])
    return results


async def main(args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    host, port, raw = build_request(args.url, body, args.header)
    began = time.time()
    t0 = time.perf_counter()
    runner = closed_loop if args.mode == "closed" else open_loop
    results = await runner(args, host, port, raw)
    elapsed = time.perf_counter() - t0
    measured = min(args.duration, max(elapsed - args.warmup, 1e-9))
    return {
        "mode": args.mode,
        "began_at": began,
        "schedule_started_at": results.schedule_started_at,
        "elapsed_s": elapsed,
        "measured_s": measured,
        "concurrency": args.concurrency if args.mode == "closed" else args.max_connections,
        "rate": args.rate if args.mode == "open" else None,
        "sent": results.sent,
        "ok": results.ok,
        "ok_all": results.ok_all,
        "ok_per_s": results.ok / measured,
        "statuses": results.statuses,
        "errors": results.errors,
        "latency_ms": latency_summary(results.latencies_ms),
        "records": results.records,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--body", help="the JSON request body")
    parser.add_argument("--body-file")
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--count", type=int, help="closed mode: stop after this many 2xx")
    parser.add_argument(
        "--max-refused", type=int, help="closed mode: give up after this many non-2xx or errors"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="open mode: requests per s")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=10.0, help="upper bound with --count")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request")
    parser.add_argument("--record", action="store_true", help="open mode: one record each")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def run() -> None:
    args = parse_args()
    body = args.body.encode() if args.body else Path(args.body_file).read_bytes()
    try:
        import uvloop

        summary = uvloop.run(main(args, body))
    except ImportError:
        summary = asyncio.run(main(args, body))
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(args.out)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run()
