"""Scenario 2a and 3 baseline: consume with aio-pika and ack, doing (almost) nothing else.

``--count N`` drains N messages and exits (2a: the ceiling of one Python consumer on this
broker); ``--count 0`` consumes until SIGTERM. ``--setnx`` adds one Redis ``SET NX`` per
message before the ack (3: the least a deduplicating consumer does); its value is the
wall clock at that moment, so the bench can read each message's accept -> consumer
latency afterwards at no extra cost to the consumer. The same consume
pattern as Herald's worker: a callback per message, manual ack, the same prefetch.
Timestamps (wall clock) go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    marks: dict[str, float] = {}
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    redis = Redis.from_url(args.redis_url) if args.setnx else None
    connection = await aio_pika.connect(args.amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=args.prefetch)
    queue = await channel.get_queue(args.queue, ensure=False)
    acked = 0
    checkpoints = {"p10": args.count * 0.1, "p90": args.count * 0.9} if args.count else {}

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal acked
        if redis is not None:
            await redis.set(
                f"bench:bare:{message.message_id}", f"{time.time():.6f}", nx=True, ex=3600
            )
        await message.ack()
        acked += 1
        if acked == 1:
            marks["first"] = time.time()
        for name, at in checkpoints.items():
            if name not in marks and acked >= at:
                marks[name] = time.time()
        if args.count and acked >= args.count:
            done.set()

    await queue.consume(on_message, no_ack=False)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=args.max_seconds)
    finished = time.time()
    cpu = time.process_time()
    await connection.close()
    if redis is not None:
        await redis.aclose()
    return {
        "started_at": started,
        "finished_at": finished,
        "acked": acked,
        "cpu_s": cpu,
        **marks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, default=0, help="0: until SIGTERM")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--setnx", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(consume(args))
    except ImportError:
        result = asyncio.run(consume(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
