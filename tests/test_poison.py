"""Poison messages (issue 11 finding 2, issue 12 item 7): every message that reaches
``herald.dlq`` ends as exactly one dead-letter row, nothing is left unacked, a message that
crashes a worker is dead-lettered after one retry (not the queue's 20 redeliveries), and
an outage of our own services is waited out, with a bound, while a bug is not."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import orjson
import pytest
import redis.exceptions
import sqlalchemy.exc
from prometheus_client import REGISTRY as METRICS
from redis.asyncio import Redis
from sqlalchemy import select

from dlq.ingester import dead_letter_row
from dlq.unreadable import MAX_RAW_BYTES, unreadable_row
from herald import names
from herald.domain import Envelope, EnvelopeError
from herald.storage.models import DeadLetter, Notification
from providers import registry
from providers.base import Receipt
from providers.sandbox import SandboxProvider
from tests.support.console import signed_in
from tests.support.private_redis import PrivateRedis
from tests.support.stack import TEST_AMQP_URL, Stack, running_stack, stack_settings
from workers.poison import HEADER_CRASHES, carried, count_of, exception_code, is_infrastructure

pytestmark = pytest.mark.integration

VHOST = TEST_AMQP_URL.rsplit("/", 1)[-1]
SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "hi"}
#: A recipient the brittle vendor adapter below raises on.
POISON_TO = "+447400999111"


def envelope_dict(**changes: Any) -> dict[str, Any]:
    base = {
        "id": str(uuid.uuid4()),
        "channel": "sms",
        "to": "+447400123456",
        "category": "transactional",
        "priority": "normal",
        "body": "hello",
        "generation": 0,
    }
    base.update(changes)
    return base


def hand_made() -> dict[str, bytes]:
    """The eight messages of the issue, by name."""
    missing = envelope_dict()
    del missing["to"]
    return {
        "not_json": b"this is not json {",
        "empty": b"",
        "missing_fields": orjson.dumps(missing),
        "json_list": b"[1, 2, 3]",
        "json_string": b'"just a string"',
        "channel_fax": orjson.dumps(envelope_dict(channel="fax")),
        "integer_expires_at": orjson.dumps(envelope_dict(expires_at=1767225600)),
        "unknown_notification": orjson.dumps(envelope_dict()),
    }


# -- pure rules, no servers ------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in hand_made() if n != "unknown_notification"])
def test_each_malformed_body_is_an_envelope_error_naming_what_failed(name: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        Envelope.from_bytes(hand_made()[name])
    expected = {
        "not_json": "body",
        "empty": "body",
        "missing_fields": "to",
        "json_list": "body",
        "json_string": "body",
        "channel_fax": "channel",
        "integer_expires_at": "expires_at",
    }[name]
    assert caught.value.field == expected


def test_a_naive_expiry_or_a_boolean_generation_is_refused_at_parse_time() -> None:
    for bad, field in (
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"generation": True}, "generation"),
        ({"generation": "1"}, "generation"),
        ({"data": [1]}, "data"),
        ({"id": "x" * 37}, "id"),
    ):
        with pytest.raises(EnvelopeError) as caught:
            Envelope.from_dict(envelope_dict(**bad))
        assert caught.value.field == field


def _integrity_error() -> Exception:
    return sqlalchemy.exc.IntegrityError("INSERT …", {}, Exception("UNIQUE constraint failed"))


def _lost_connection() -> Exception:
    error = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("gone"))
    error.connection_invalidated = True
    return error


@pytest.mark.parametrize(
    ("exc", "infrastructure"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("database is locked")), True),
        (sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("closed")), True),
        (_lost_connection(), True),
        (redis.exceptions.ConnectionError("down"), True),
        (redis.exceptions.TimeoutError("slow"), True),
        # Bugs, not outages: these used to be deferred every second, forever.
        (_integrity_error(), False),
        (sqlalchemy.exc.DataError("INSERT …", {}, Exception("value too long")), False),
        (sqlalchemy.exc.ProgrammingError("SELECT …", {}, Exception("syntax")), False),
        (IsADirectoryError(21, "Is a directory"), False),
        (FileNotFoundError(2, "No such file"), False),
        (PermissionError(13, "denied"), False),
        (OSError("plain"), False),
        (KeyError("to"), False),
    ],
)
def test_only_real_outages_count_as_infrastructure(exc: Exception, infrastructure: bool) -> None:
    assert is_infrastructure(exc) is infrastructure


def test_counters_travel_in_headers_and_ignore_garbage() -> None:
    assert count_of({HEADER_CRASHES: 2}, HEADER_CRASHES) == 2
    for junk in ("2", -1, True, 2.0, None, b"2"):
        assert count_of({HEADER_CRASHES: junk}, HEADER_CRASHES) == 0
    assert carried({HEADER_CRASHES: 1, "other": "x"}, deferrals=3) == {
        "x-herald-crashes": 1,
        "x-herald-deferrals": 3,
    }
    assert carried(None) == {}
    assert exception_code(_integrity_error()) == "sqlalchemy.exc.IntegrityError"
    assert exception_code(KeyError("x")) == "KeyError"


def test_an_unreadable_row_keeps_capped_bytes_and_no_credentials() -> None:
    big = b"\xff\x00" * MAX_RAW_BYTES  # binary, twice the cap
    row = unreadable_row(
        big,
        {
            "authorization": "Bearer hk_live_secret",
            "X-Api-Key": "k",
            "x-death": [{"queue": "herald.sms.normal", "count": 1}],
            "when": b"\x00\x01",
        },
        message_id="m1",
        routing_key="sms.normal",
        error="body: not JSON",
        code="bad_envelope",
    )
    assert row["notification_id"] is None and row["reason"] == "unreadable"
    raw = row["payload"]["raw"]
    assert raw["size"] == len(big) and raw["truncated"] is True
    assert base64.b64decode(raw["base64"]) == big[:MAX_RAW_BYTES]
    headers = row["payload"]["headers"]
    assert headers["authorization"] == headers["X-Api-Key"] == "[withheld]"
    assert "hk_live_secret" not in json.dumps(row["payload"])
    assert headers["x-death"] == [{"queue": "herald.sms.normal", "count": 1}]
    assert row["source_key"] is not None
    text_row = unreadable_row(
        b'{"channel": "email", "id": "abc"}',
        {},
        message_id=None,
        routing_key=None,
        error="to: missing",
        code="bad_envelope",
    )
    assert text_row["payload"]["raw"]["text"] == '{"channel": "email", "id": "abc"}'
    assert text_row["channel"] == "email" and text_row["source_key"] is None
    assert text_row["payload"]["claimed_notification_id"] == "abc"


def test_the_ingester_reads_a_workers_reason_and_trusts_nothing_else() -> None:
    """Which rows also mark the notification ``dead_lettered`` (no worker recorded it),
    and what a forged or missing reason becomes."""
    envelope = Envelope.from_dict(envelope_dict(caller="c" * 300))
    cases = {
        "broker": ({"x-first-death-reason": "delivery_limit"}, "exhausted", True),
        "nobody": ({}, "exhausted", True),
        "forged": ({"x-herald-reason": "DROP TABLE", "x-herald-attempts": "9"}, "exhausted", True),
        "worker": ({"x-herald-reason": "permanent_error", "x-herald-attempts": 2}, None, False),
        "crashed": ({"x-herald-reason": "crashed"}, "crashed", True),
        "outage": ({"x-herald-reason": "infrastructure"}, "infrastructure", True),
    }
    for name, (headers, reason, mark) in cases.items():
        row, marks = dead_letter_row(envelope, headers)
        assert marks is mark, name
        assert row["reason"] == (reason or "permanent_error"), name
        assert len(row["caller"]) == 100
    assert dead_letter_row(envelope, {})[0]["last_error_code"] == "no_reason"
    broker = dead_letter_row(envelope, cases["broker"][0])[0]
    assert broker["last_error_code"] == "broker_delivery_limit"
    assert dead_letter_row(envelope, cases["worker"][0])[0]["attempts"] == 2
    assert dead_letter_row(envelope, cases["forged"][0])[0]["attempts"] == 0


# -- against the real stack --------------------------------------------------------------


def metric(name: str, **labels: str) -> float:
    """The sum of a counter over every label set matching ``labels``."""
    total = 0.0
    for family in METRICS.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def queue_counts() -> dict[str, tuple[int, int]]:
    """``rabbitmqctl list_queues``: (ready, unacknowledged) per queue of our vhost."""
    out = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "-p",
            VHOST,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return {q["name"]: (q["messages_ready"], q["messages_unacknowledged"]) for q in json.loads(out)}


async def wait_settled(timeout: float = 20) -> None:
    """Every queue of the vhost empty, nothing held unacked by any consumer."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await asyncio.to_thread(queue_counts)
        busy = {name: c for name, c in counts.items() if c != (0, 0)}
        if not busy:
            return
        assert time.monotonic() < deadline, f"messages left: {busy}"
        await asyncio.sleep(0.2)


async def dead_letter_items(
    stack: Stack, expected: int, timeout: float = 20
) -> list[dict[str, Any]]:
    """Poll ``GET /v1/dlq`` until ``expected`` rows are listed (and no more appear)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await stack.client.get("/v1/dlq", params={"limit": 500})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        if len(items) >= expected:
            return items
        assert time.monotonic() < deadline, f"{len(items)} of {expected} dead letters: {items}"
        await asyncio.sleep(0.1)


async def publish(
    exchange: str, routing_key: str, bodies: dict[str, bytes], **headers: Any
) -> None:
    connection = await aio_pika.connect(TEST_AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        for name, body in bodies.items():
            await target.publish(
                aio_pika.Message(
                    body,
                    message_id=f"hand-made-{name}-{uuid.uuid4().hex[:8]}",
                    headers={"x-test-name": name, **headers},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
            )


async def a_real_failure_is_still_stored(stack: Stack, already: int) -> None:
    """The ingester is not wedged: a real permanent failure reaches the dead letters."""
    await stack.set_sandbox("sandbox-sms", "permanent")
    nid = (await stack.send(**SMS)).json()["id"]
    items = await dead_letter_items(stack, already + 1)
    [real] = [i for i in items if i["notification_id"] == nid]
    assert real["reason"] == "permanent_error"
    await stack.set_sandbox("sandbox-sms", "ok")


async def test_hand_made_messages_on_a_work_queue_each_end_as_one_dead_letter(
    settings_for: Any,
) -> None:
    """The attack: eight malformed messages published straight to ``herald.sms.normal``.
    Before, each crashed the worker 20 times and the ingester dropped or wedged on them."""
    bodies = hand_made()
    async with running_stack(settings_for()) as stack:
        unreadable_before = metric("herald_dead_lettered_total", reason="unreadable")
        crashes_before = metric("herald_delivery_crashes_total")
        await publish(names.EXCHANGE, "sms.normal", bodies, authorization="Bearer hk_secret_1")
        items = await dead_letter_items(stack, len(bodies))
        await wait_settled()
        await asyncio.sleep(0.3)  # a second copy of any row would have been stored by now
        items = (await stack.client.get("/v1/dlq", params={"limit": 500})).json()["items"]
        assert len(items) == len(bodies), items
        assert {i["reason"] for i in items} == {"unreadable"}
        codes = sorted(i["last_error_code"] for i in items)
        assert codes == ["bad_envelope"] * 7 + ["unknown_notification"]
        assert all(i["notification_id"] is None for i in items)
        # Each was handled by the worker once: dead-lettered at once, never a crash loop.
        handled = metric("herald_dead_lettered_total", reason="unreadable") - unreadable_before
        assert handled == len(bodies)
        assert metric("herald_delivery_crashes_total") == crashes_before
        rows = await stack.dead_letters()
        # The sender's headers travel with an unparsable message (the unknown id's row
        # is the worker's own decision, made after parsing: it carries the raw bytes).
        by_name = {r.payload["headers"].get("x-test-name", "unknown_notification"): r for r in rows}
        assert set(by_name) == set(bodies)
        for name, body in bodies.items():
            raw = by_name[name].payload["raw"]
            assert raw["size"] == len(body)
            assert raw.get("text", "").encode() == body
            assert by_name[name].channel == "sms"  # from the body, or the queue it came from
        assert by_name["json_list"].payload["source_queue"] == "herald.sms.normal"
        assert "hk_secret_1" not in str([r.payload for r in rows])
        assert "fax" in by_name["channel_fax"].last_error
        assert "expires_at" in by_name["integer_expires_at"].last_error
        await a_real_failure_is_still_stored(stack, len(bodies))
        await wait_settled()


async def test_hand_made_messages_on_the_dead_letter_queue_never_wedge_the_ingester(
    settings_for: Any,
) -> None:
    """The attack: the same eight, plus 50 of a kind that used to stay unacked (enough to
    fill the ingester's prefetch), published straight to ``herald.dlq``."""
    bodies = hand_made()
    bodies.update({f"list_{i}": f"[{i}]".encode() for i in range(50)})
    async with running_stack(settings_for()) as stack:
        await publish("", names.DLQ, bodies, Authorization="Bearer hk_secret_2")
        items = await dead_letter_items(stack, len(bodies))
        await wait_settled()
        assert len(items) == len(bodies)
        assert {i["reason"] for i in items} == {"unreadable"}
        rows = await stack.dead_letters()
        assert {r.payload["headers"]["x-test-name"] for r in rows} == set(bodies)
        assert "hk_secret_2" not in str([r.payload for r in rows])
        unknown = [r for r in rows if r.last_error_code == "unknown_notification"]
        assert len(unknown) == 1 and unknown[0].payload["claimed_notification_id"]
        await a_real_failure_is_still_stored(stack, len(bodies))
        await wait_settled()


async def test_a_redelivered_unreadable_message_is_stored_once(settings_for: Any) -> None:
    """At-least-once: the same message (same AMQP id and bytes) arriving twice is one row."""
    async with running_stack(settings_for(), workers=0, api=False) as stack:
        from dlq.ingester import DeadLetterIngester, Settle

        ingester = DeadLetterIngester(None, stack.sessions)  # type: ignore[arg-type]
        for _ in range(2):
            settle = await ingester.ingest(b"[1]", {}, message_id="m-1", routing_key="")
            assert settle is Settle.ACK
        assert len(await stack.dead_letters()) == 1


async def test_a_row_the_database_refuses_is_stored_as_unreadable_not_retried_forever(
    database_url: str, settings_for: Any
) -> None:
    """The attack: a dead letter for a real notification whose generation (2**40) fits
    the envelope but not PostgreSQL's integer column. The insert fails inside the
    ingester, which must not wedge: the message is kept as an unreadable row with the
    database's error and acked. (SQLite has no integer width: there it is a plain row.)"""
    async with running_stack(settings_for()) as stack:
        nid = (await stack.send(**SMS)).json()["id"]
        await stack.wait_status(nid, "sent")
        body = orjson.dumps(envelope_dict(id=nid, generation=2**40))
        await publish("", names.DLQ, {"too_big": body}, **{"x-herald-reason": "exhausted"})
        [entry] = await dead_letter_items(stack, 1)
        await wait_settled()
        if database_url.startswith("postgresql"):
            assert entry["reason"] == "unreadable" and entry["notification_id"] is None
            assert entry["last_error_code"] == "ingester_error"
            assert "the ingester failed on it" in entry["last_error"]
        else:
            assert entry["reason"] == "exhausted" and entry["notification_id"] == nid
        await a_real_failure_is_still_stored(stack, 1)


async def test_nul_characters_in_a_dead_letter_never_make_it_unstorable(
    settings_for: Any,
) -> None:
    """The attack: U+0000 (which PostgreSQL refuses in text) in a caller name, an error
    header and a header name, both in an unreadable message and in a readable dead letter
    for a real notification. Each still ends as exactly one row, and the queue drains."""
    async with running_stack(settings_for()) as stack:
        nid = (await stack.send(**SMS)).json()["id"]
        await stack.wait_status(nid, "sent")
        readable = orjson.dumps(envelope_dict(id=nid, caller="evil\u0000caller"))
        unreadable = orjson.dumps(envelope_dict(channel="fax", caller="evil\u0000caller"))
        nul_headers = {"x-herald-reason": "exhausted", "x-herald-error": "a\x00b", "x\x00y": "z"}
        await publish(
            "", names.DLQ, {"readable": readable, "unreadable": unreadable}, **nul_headers
        )
        items = await dead_letter_items(stack, 2)
        await wait_settled()
        assert len(items) == 2
        assert sorted(i["reason"] for i in items) == ["exhausted", "unreadable"]
        assert "\\u0000" not in json.dumps(items)  # U+FFFD took each NUL's place


async def test_a_database_outage_puts_dead_letters_back_until_it_ends(sqlite_url: str) -> None:
    """Another process holds SQLite's write lock: the ingester cannot commit, so it acks
    nothing (the messages wait in ``herald.dlq``), and stores each once the lock is gone."""
    path = sqlite_url.split("///", 1)[1]
    async with running_stack(stack_settings(sqlite_url)) as stack:
        pauses = metric("herald_dead_letter_store_pauses_total")
        locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            locker.execute("BEGIN IMMEDIATE")
            await publish("", names.DLQ, {"a": b"[1]", "b": b"[2]"})
            deadline = time.monotonic() + 20
            while metric("herald_dead_letter_store_pauses_total") - pauses < 2:
                assert time.monotonic() < deadline, "the ingester never hit the lock"
                await asyncio.sleep(0.1)
            ready, unacked = (await asyncio.to_thread(queue_counts))[names.DLQ]
            assert ready + unacked == 2  # nothing acked while nothing could be stored
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        items = await dead_letter_items(stack, 2)
        await wait_settled()
        assert sorted(i["last_error_code"] for i in items) == ["bad_envelope"] * 2


async def test_an_unreadable_dead_letter_is_listed_refuses_replay_and_can_be_discarded(
    settings_for: Any,
) -> None:
    async with running_stack(settings_for(), workers=1) as stack:
        await publish("", names.DLQ, {"garbage": b"\x00\x01garbage"})
        [entry] = await dead_letter_items(stack, 1)
        assert entry["notification_id"] is None and entry["channel"] is None
        shown = (await stack.client.get(f"/v1/dlq/{entry['id']}")).json()
        assert shown["payload"]["raw"]["base64"] == base64.b64encode(b"\x00\x01garbage").decode()
        assert shown["history"] == []
        replay = await stack.client.post(f"/v1/dlq/{entry['id']}/replay")
        assert replay.status_code == 409, replay.text
        assert replay.headers["content-type"].startswith("application/problem+json")
        assert "nothing to replay" in replay.json()["detail"]
        async with signed_in(stack.url) as console:
            page = await console.get(f"/console/dead-letters/{entry['id']}")
            assert page.status_code == 200 and "Unreadable message" in page.text
            assert 'id="replay"' not in page.text and 'id="discard"' in page.text
            listing = await console.get("/console/dead-letters", params={"reason": "unreadable"})
            assert listing.status_code == 200 and entry["id"] in listing.text
            refused = await console.get(f"/console/dead-letters/{entry['id']}/replay")
            assert refused.status_code == 409 and "Not replayable" in refused.text
        bulk = await stack.client.post(
            "/v1/dlq/replay", json={"reason": "unreadable", "dry_run": True}
        )
        assert bulk.status_code == 200 and bulk.json()["count"] == 0  # nothing replayable
        gone = await stack.client.request(
            "DELETE", f"/v1/dlq/{entry['id']}", json={"reason": "inspected the bytes"}
        )
        assert gone.status_code == 204
        assert (await stack.client.get("/v1/dlq")).json()["items"] == []
        assert await stack.count(Notification) == 0  # nothing was (re)queued


# -- poison inside a delivery ----------------------------------------------------------


class BrittleVendor(SandboxProvider):
    """The sandbox adapter, except that sending to ``POISON_TO`` raises ``error`` (an
    adapter bug, e.g. an unwrapped OSError), counting the calls per notification."""

    error: Exception = IsADirectoryError(21, "Is a directory: '/etc/herald/cert'")
    calls: dict[str, int] = {}

    async def send(self, message: Envelope) -> Receipt:
        if message.to == POISON_TO:
            BrittleVendor.calls[message.id] = BrittleVendor.calls.get(message.id, 0) + 1
            raise BrittleVendor.error
        return await super().send(message)


@pytest.fixture
def brittle_vendor(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[BrittleVendor]]:
    def factory(name: str, channel: Any, spec: dict[str, Any], deps: Any) -> BrittleVendor:
        return BrittleVendor(name, channel, spec, store=deps.sandbox_store)

    monkeypatch.setitem(registry.REGISTRY, "sandbox", factory)
    BrittleVendor.calls = {}
    yield BrittleVendor


@pytest.mark.parametrize(
    "error",
    [IsADirectoryError(21, "Is a directory: '/etc/herald/cert'"), _integrity_error()],
    ids=["plain-oserror", "integrity-error"],
)
async def test_a_message_that_crashes_the_worker_is_dead_lettered_after_one_retry(
    database_url: str, settings_for: Any, brittle_vendor: type[BrittleVendor], error: Exception
) -> None:
    """The attack: a message an adapter raises a non-connection error on. Before, an
    ``OSError`` or ``DBAPIError`` was 'infrastructure': republished every second, forever."""
    brittle_vendor.error = error
    # The crashed attempt's lease blocks the retry until it runs out: keep it short.
    async with running_stack(settings_for(claim_lease_s=1, provider_timeout_s=1)) as stack:
        code = exception_code(error)
        crashes_before = metric("herald_delivery_crashes_total", error=code)
        nid = (await stack.send(**{**SMS, "to": POISON_TO})).json()["id"]
        healthy = (await stack.send(**SMS)).json()["id"]
        [entry] = await dead_letter_items(stack, 1)
        assert entry["notification_id"] == nid
        assert entry["reason"] == "crashed" and entry["last_error_code"] == code
        assert code in entry["last_error"]
        await stack.wait_status(nid, "dead_lettered")
        await stack.wait_status(healthy, "sent")
        await wait_settled()
        assert brittle_vendor.calls[nid] == 2  # the first crash and one retry, not 20
        assert metric("herald_delivery_crashes_total", error=code) - crashes_before == 2


# -- outages: waited out with a bound ----------------------------------------------------


async def test_a_redis_outage_is_waited_out_and_every_message_sent_once(
    settings_for: Any, private_redis: PrivateRedis
) -> None:
    """A real outage (the worker's Redis stopped, then back) is not a crash: messages wait
    without being charged, and are each sent once when it returns."""
    async with running_stack(settings_for(), workers=0) as stack:
        await stack.start_worker(redis_url=private_redis.url)
        private_redis.stop()
        deferred_before = metric("herald_deferred_total", reason="infrastructure")
        ids = [(await stack.send(**SMS)).json()["id"] for _ in range(5)]
        deadline = time.monotonic() + 10
        while metric("herald_deferred_total", reason="infrastructure") - deferred_before < 10:
            assert time.monotonic() < deadline, "the worker never deferred during the outage"
            await asyncio.sleep(0.05)
        await private_redis.start()
        statuses = await stack.wait_all_terminal(ids, timeout=30)
        assert set(statuses.values()) == {"sent"}
        worker_redis = Redis.from_url(private_redis.url)
        try:
            for nid in ids:  # the sandbox records in the worker's Redis
                assert await worker_redis.llen(names.sandbox_by_notification_key(nid)) == 1
        finally:
            await worker_redis.aclose()
        assert await stack.dead_letters() == []
        await wait_settled()


async def test_an_outage_past_the_deferral_bound_is_dead_lettered_as_infrastructure(
    settings_for: Any, private_redis: PrivateRedis
) -> None:
    """Waiting is bounded: with Redis gone for good, the message is put back
    ``max_deferrals`` times, then dead-lettered with reason ``infrastructure``."""
    async with running_stack(settings_for(), workers=0) as stack:
        await stack.start_worker(redis_url=private_redis.url, max_deferrals=3)
        private_redis.stop()
        nid = (await stack.send(**SMS)).json()["id"]
        [entry] = await dead_letter_items(stack, 1)
        assert entry["notification_id"] == nid and entry["reason"] == "infrastructure"
        assert "3 times" in entry["last_error"]
        await stack.wait_status(nid, "dead_lettered")
        await wait_settled()
        async with stack.sessions() as session:
            row = (await session.execute(select(DeadLetter))).scalar_one()
        assert row.last_error_code == "infrastructure"
