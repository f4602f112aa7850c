"""Issue 10, written as the attacks: sandbox reads by other callers, OTP verify sprays
and timing, a `send` key sending OTPs, and replays through another channel's provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from herald import names
from herald.domain import Channel
from herald.otp import recipient_key
from herald.storage.models import Notification
from herald.text import as_text
from producer import otp as otp_module
from producer.auth import KeyStore
from producer.otp import OtpStore
from providers.sandbox import SandboxBehaviour, SandboxStore
from tests.support.console import EMAIL, csrf_of, dead_letters_from, signed_in
from tests.support.private_redis import PrivateRedis
from tests.support.stack import (
    ADMIN_KEY,
    TEST_REDIS_URL,
    ApiProcess,
    Stack,
    WorkerProcess,
    running_stack,
    stack_settings,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
PHONE = "+447400123456"
SMS_FAILING = {"channel": "sms", "to": PHONE, "category": "transactional", "body": "Hi"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(stack: Stack, name: str, *scopes: str) -> dict[str, str]:
    return bearer(await KeyStore(stack.sessions).create(name, list(scopes)))


def assert_problem(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in response.json()["errors"]], response.json()


# -- finding 5: verify limits per API key and overall --------------------------------------


async def test_a_verify_spray_over_many_recipients_is_cut_off_per_key(database_url: str) -> None:
    """The attack: 1,500 guesses over 300 recipients in 2.5 s, all judged. Now a key
    gets its limit's worth judged; the rest are 429 with the standard headers, and a
    refused guess spends nothing of the recipient's attempts."""
    values = stack_settings(
        database_url,
        limit_otp_verify_key={"rate": 5, "period_s": 60},
        limit_otp_verify_global={"rate": 1000, "period_s": 60},
    )
    async with running_stack(values, workers=0) as api:
        attacker = await new_key(api, "attacker", "otp")
        bystander = await new_key(api, "bystander", "otp")
        guesses = [
            api.client.post(
                "/v1/otp/verify",
                json={"to": f"+4474001{n:05}", "code": "123456"},
                headers=attacker,
            )
            for n in range(40)
        ]
        answers = await asyncio.gather(*guesses)
        judged = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert len(judged) == 5 and len(refused) == 35
        for response in refused:
            assert_problem(response, 429, "policy")
            assert response.json()["errors"][0]["message"] == "otp_verify_key"
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["ratelimit-policy"].startswith("5;w=60")
            assert response.headers["ratelimit-remaining"] == "0"
        assert judged[0].headers["ratelimit-limit"] == "5"
        budgets = [
            names.otp_attempts_key(recipient_key("sms", f"+4474001{n:05}")) for n in range(40)
        ]
        assert await api.redis.exists(*budgets) == 5, "refused guesses spent no attempts"
        other = await api.client.post(
            "/v1/otp/verify", json={"to": PHONE, "code": "123456"}, headers=bystander
        )
        assert other.status_code == 200, "another key keeps its own budget"


async def test_the_global_verify_limit_holds_across_keys(database_url: str) -> None:
    values = stack_settings(
        database_url,
        limit_otp_verify_key={"rate": 5, "period_s": 60},
        limit_otp_verify_global={"rate": 8, "period_s": 60},
    )
    async with running_stack(values, workers=0) as api:
        keys = [await new_key(api, f"caller-{i}", "otp") for i in range(3)]
        codes = []
        for i, headers in enumerate(keys):
            for n in range(5):
                response = await api.client.post(
                    "/v1/otp/verify",
                    json={"to": f"+44740012{i}{n:03}", "code": "123456"},
                    headers=headers,
                )
                codes.append(response.status_code)
                if response.status_code == 429:
                    assert response.json()["errors"][0]["message"] == "otp_verify_global"
        assert codes.count(200) == 8 and codes.count(429) == 7


# -- finding 6: the same work with and without a pending code ------------------------------


@pytest.fixture
async def otp_store() -> AsyncIterator[OtpStore]:
    redis = Redis.from_url(TEST_REDIS_URL)
    await redis.flushdb()
    settings = Settings(otp_secret="structural-test-secret-0123456789abcdef")
    yield OtpStore(redis, settings)
    await redis.flushdb()
    await redis.aclose()


def record_work(
    store: OtpStore, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], tuple[list[str], int, int]]:
    """Record each Redis command the store sends, and count HMACs and compares."""
    commands: list[str] = []
    counts = {"mac": 0, "compare": 0}
    execute = store.redis.execute_command

    async def counting_execute(*args: Any, **options: Any) -> Any:
        name = str(args[0]).upper()
        if name == "EVALSHA":  # name the script, not its hash
            name = f"EVALSHA:{[s.sha for s in (store._reserve, store._settle)].index(args[1])}"
        commands.append(name)
        return await execute(*args, **options)

    def counting_mac(*args: Any) -> str:
        counts["mac"] += 1
        return real_mac(*args)

    def counting_compare(a: str, b: str) -> bool:
        counts["compare"] += 1
        return real_compare(a, b)

    real_mac, real_compare = otp_module.code_mac, otp_module.compare_digest
    monkeypatch.setattr(store.redis, "execute_command", counting_execute)
    monkeypatch.setattr(otp_module, "code_mac", counting_mac)
    monkeypatch.setattr(otp_module, "compare_digest", counting_compare)

    def taken() -> tuple[list[str], int, int]:
        out = (commands[:], counts["mac"], counts["compare"])
        commands.clear()
        counts.update(mac=0, compare=0)
        return out

    return taken


async def test_verify_does_the_same_work_with_and_without_a_pending_code(
    otp_store: OtpStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing differed (1.61 vs 1.42 ms) because the no-code path skipped a Redis read
    and the HMAC. Counted, not timed: same commands in the same order, one HMAC and one
    constant-time compare on each path, also on the last wrong try."""
    await otp_store.issue(
        Channel.SMS, "+447400000001", ttl_s=60, length=6, template=None, locale=None
    )
    taken = record_work(otp_store, monkeypatch)
    await otp_store.verify(Channel.SMS, "+447400000001", "000000")
    with_code = taken()
    await otp_store.verify(Channel.SMS, "+447400000002", "000000")
    without_code = taken()
    assert with_code == without_code
    assert with_code == (["EVALSHA:0", "HGET", "EVALSHA:1"], 1, 1)
    for _ in range(3):
        await otp_store.verify(Channel.SMS, "+447400000001", "000000")
        await otp_store.verify(Channel.SMS, "+447400000002", "000000")
    taken()
    last_with = await otp_store.verify(Channel.SMS, "+447400000001", "000000")
    assert taken() == with_code, "the last try (which kills the code) costs the same"
    last_without = await otp_store.verify(Channel.SMS, "+447400000002", "000000")
    assert taken() == with_code
    assert (last_with.attempts_left, last_without.attempts_left) == (0, 0)


async def test_the_settle_step_still_kills_and_consumes(otp_store: OtpStore) -> None:
    issued = await otp_store.issue(
        Channel.SMS, "+447400000003", ttl_s=60, length=6, template=None, locale=None
    )
    record = await otp_store.redis.hgetall(names.otp_record_key(issued.otp_id))
    nonce = as_text(record[b"nonce"])
    code = otp_module.derive_code(otp_store.secret, issued.otp_id, nonce, 6)
    right = await otp_store.verify(Channel.SMS, "+447400000003", code)
    again = await otp_store.verify(Channel.SMS, "+447400000003", code)
    assert (right.valid, again.valid) == (True, False)
    issued = await otp_store.issue(
        Channel.SMS, "+447400000004", ttl_s=60, length=6, template=None, locale=None
    )
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        await otp_store.verify(Channel.SMS, "+447400000004", wrong)
    state = await otp_store.redis.hget(names.otp_record_key(issued.otp_id), "state")
    assert state == b"dead"
    assert await otp_store.redis.exists(names.otp_record_key(otp_module.DUMMY_OTP_ID)) == 0


# -- finding 8: category otp needs the otp scope, bodies stay out of the database ----------


async def test_a_send_key_cannot_send_category_otp(database_url: str) -> None:
    async with running_stack(stack_settings(database_url), workers=0) as api:
        sender = await new_key(api, "billing", "send")
        forged = await api.send(
            channel="sms",
            to=PHONE,
            category="otp",
            body="Your verification code is 111111",
            headers=sender,
        )
        assert_problem(forged, 403, "category")
        assert "otp" in forged.json()["detail"]
        assert await api.nothing_stored_or_queued()
        assert await api.count(Notification) == 0


async def test_a_callers_own_otp_text_never_reaches_the_database(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with running_stack(stack_settings(sqlite_url)) as stack:
        caller = await new_key(stack, "login-service", "send", "otp")
        texts = [f"Your login code is 7{n}3915 (do not share)" for n in range(3)]
        ids = []
        for text in texts:
            response = await stack.send(
                channel="sms",
                to=PHONE,
                category="otp",
                body=text,
                expires_in_s=300,
                headers=caller,
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        email = await stack.send(
            channel="email",
            to="erin@example.com",
            category="otp",
            subject="Code 7X3915 inside",
            body="Your login code is 7X3915",
            headers=caller,
        )
        assert email.status_code == 202
        ids.append(email.json()["id"])
        for nid in ids:
            await stack.wait_status(nid, "sent")
        delivered = {(await stack.sandbox(nid))[0]["body"] for nid in ids}
        assert delivered == {*texts, "Your login code is 7X3915"}, "the vendor got the text"
        [mail] = await stack.sandbox(ids[-1])
        assert mail["subject"] == "Code 7X3915 inside"
        shown = await stack.notification(ids[0])
        assert shown["expires_at"] is not None
    database = Path(sqlite_url.split("///", 1)[1])
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for secret in (b"3915", b"7X3915", b"do not share"):
        assert secret not in stored, "an OTP text in the SQLite file"


async def test_a_callers_otp_text_is_held_only_until_the_message_expires(
    database_url: str,
) -> None:
    async with running_stack(stack_settings(database_url), workers=0) as api:
        response = await api.send(
            channel="sms", to=PHONE, category="otp", body="Code 424242", expires_in_s=30
        )
        assert response.status_code == 202
        held = [k async for k in api.redis.scan_iter(names.otp_record_key("*"))]
        assert len(held) == 1
        assert 0 < await api.redis.ttl(held[0]) <= 30
        await api.redis.delete(*held)
        later = (datetime.now(UTC) + timedelta(seconds=120)).isoformat()
        scheduled = await api.send(
            channel="sms", to=PHONE, category="otp", body="Code 434343", send_at=later
        )
        assert scheduled.status_code == 202, scheduled.text
        [held] = [k async for k in api.redis.scan_iter(names.otp_record_key("*"))]
        assert 600 < await api.redis.ttl(held) <= 720, "HERALD_OTP_TTL_S after its send_at"


async def test_every_sms_counts_against_the_pumping_guard_with_its_own_counters(
    database_url: str,
) -> None:
    """Pumping limits applied only when the caller picked `otp`. Now every SMS counts
    per prefix and country (its own counters: transactional bursts do not spend the OTP
    budget), e-mail does not."""
    values = stack_settings(
        database_url,
        limit_sms_prefix={"rate": 3, "period_s": 60},
        limit_otp_prefix={"rate": 2, "period_s": 60},
        otp_resend_cooldown_s=0,
    )
    async with running_stack(values, workers=0) as api:
        codes = []
        for n in range(5):
            response = await api.send(
                channel="sms", to=f"+4474001234{n:02}", category="transactional", body="hi"
            )
            codes.append(response.status_code)
            if response.status_code == 429:
                assert response.json()["errors"][0]["message"] == "sms_prefix"
        assert codes == [202, 202, 202, 429, 429]
        marketing = await api.send(
            channel="sms", to="+447400123499", category="marketing", body="sale"
        )
        assert marketing.status_code == 429, "marketing SMS are guarded too"
        email = await api.send(
            channel="email", to="a@example.com", subject="s", category="transactional", body="b"
        )
        assert email.status_code == 202
        other_prefix = await api.send(
            channel="sms", to="+447400223456", category="transactional", body="hi"
        )
        assert other_prefix.status_code == 202
        otp = await api.client.post("/v1/otp", json={"to": "+447400223457"})
        assert otp.status_code == 202, "the OTP prefix budget was not spent by plain SMS"


# -- finding 2: the sandbox --------------------------------------------------------------


async def sandbox_items(stack: Stack, headers: dict[str, str], **params: Any) -> httpx.Response:
    return await stack.client.get("/v1/sandbox/messages", params=params, headers=headers)


async def test_a_send_key_cannot_read_the_sandbox_or_change_it(database_url: str) -> None:
    """The attack: another caller's `send` key read "Your verification code is 323853"."""
    async with running_stack(stack_settings(database_url)) as stack:
        sent = await stack.client.post("/v1/otp", json={"to": PHONE})
        await stack.wait_status(sent.json()["notification_id"], "sent")
        intruder = await new_key(stack, "intruder", "send")
        for response in (
            await sandbox_items(stack, intruder),
            await sandbox_items(stack, intruder, notification_id=sent.json()["notification_id"]),
            await stack.client.get("/v1/sandbox/providers", headers=intruder),
            await stack.client.put(
                "/v1/sandbox/providers/sandbox-sms", json={"mode": "permanent"}, headers=intruder
            ),
            await stack.client.delete("/v1/sandbox/messages", headers=intruder),
        ):
            assert response.status_code == 403, response.text
            assert "verification code" not in response.text
        behaviours = (await stack.client.get("/v1/sandbox/providers")).json()["items"]
        assert {b["mode"] for b in behaviours} == {"ok"}, "nothing changed"


async def test_a_sandbox_key_sees_only_its_own_messages_and_never_otp_texts(
    database_url: str,
) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        alice = await new_key(stack, "alice", "send", "otp", "sandbox")
        mallory = await new_key(stack, "mallory", "send", "otp", "sandbox")
        # One at a time: the sandbox lists in the order it "sent", and an OTP (high lane)
        # sent together with a transactional message may overtake it.
        otp = await stack.client.post("/v1/otp", json={"to": PHONE}, headers=alice)
        await stack.wait_status(otp.json()["notification_id"], "sent")
        plain = await stack.send(
            channel="sms", to=PHONE, category="transactional", body="Your parcel", headers=alice
        )
        await stack.wait_status(plain.json()["id"], "sent")
        own = await stack.send(
            channel="sms", to=PHONE, category="transactional", body="Mallory's", headers=mallory
        )
        await stack.wait_status(own.json()["id"], "sent")
        ids = [otp.json()["notification_id"], plain.json()["id"], own.json()["id"]]

        seen_by_mallory = [
            (await sandbox_items(stack, mallory)).json()["items"],
            (await sandbox_items(stack, mallory, to=PHONE)).json()["items"],
            (await sandbox_items(stack, mallory, notification_id=ids[0])).json()["items"],
            (await sandbox_items(stack, mallory, provider="sandbox-sms")).json()["items"],
        ]
        assert [[i["notification_id"] for i in items] for items in seen_by_mallory] == [
            [ids[2]],
            [ids[2]],
            [],
            [ids[2]],
        ]
        mine = (await sandbox_items(stack, alice)).json()["items"]
        assert [i["notification_id"] for i in mine] == [ids[1], ids[0]], "newest first"
        assert mine[0]["body"] == "Your parcel" and mine[0]["caller"] == "alice"
        assert mine[1]["body"] == "[redacted]", "an OTP text is never listed for a non-admin"

        [as_admin] = await stack.sandbox(ids[0])
        code = as_admin["body"].split()[4].rstrip(".")
        assert code.isdigit(), "admins (the tests) still read the code while it is valid"
        verified = await stack.client.post(
            "/v1/otp/verify", json={"to": PHONE, "code": code}, headers=alice
        )
        assert verified.json()["valid"] is True


async def test_an_otp_text_is_kept_only_until_the_otp_expires(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        sent = await stack.client.post("/v1/otp", json={"to": PHONE, "ttl_s": 60})
        nid = sent.json()["notification_id"]
        await stack.wait_status(nid, "sent")
        [kept] = [k async for k in stack.redis.scan_iter(names.sandbox_otp_text_key("*"))]
        assert 0 < await stack.redis.ttl(kept) <= 61
        for raw in await stack.redis.lrange(names.sandbox_messages_key(), 0, -1):
            assert b"verification code" not in raw, "the kept record holds no OTP text"
        await stack.redis.delete(kept)  # what its expiry does
        [expired] = await stack.sandbox(nid)
        assert expired["body"] == "[redacted]"


async def test_reads_touch_only_what_is_asked(database_url: str) -> None:
    """`?limit=1` read all 100,000 kept records. Counted, not timed: the Redis reads a
    query makes, with 3,000 records kept."""
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        store: SandboxStore = SandboxStore(stack.redis)
        for n in range(3000):
            await store.record(
                {
                    "notification_id": f"n-{n}",
                    "generation": 0,
                    "provider": "sandbox-sms" if n % 2 else "sandbox-email",
                    "vendor_message_id": f"v-{n}",
                    "channel": "sms",
                    "to": f"+4474001{n % 300:05}",
                    "caller": "bootstrap" if n % 3 else "someone",
                    "subject": None,
                    "body": f"message {n}",
                    "sent_at": "2026-01-01T00:00:00+00:00",
                }
            )
        reads: list[tuple[Any, ...]] = []
        app_redis = stack._server.config.app.state.redis
        real = app_redis.execute_command

        async def counting(*args: Any, **options: Any) -> Any:
            if str(args[1]).startswith(f"{names.REDIS_PREFIX}sandbox"):  # not auth's calls
                reads.append(args)
            return await real(*args, **options)

        app_redis.execute_command = counting
        try:
            latest = (await stack.client.get("/v1/sandbox/messages?limit=1")).json()["items"]
            assert [i["notification_id"] for i in latest] == ["n-2999"]
            assert [r[0] for r in reads] == ["LRANGE"] and reads[0][2:] == (0, 0)
            reads.clear()
            one = (await stack.client.get("/v1/sandbox/messages?notification_id=n-7")).json()
            assert [i["body"] for i in one["items"]] == ["message 7"]
            assert [(r[0], r[1]) for r in reads] == [
                ("LRANGE", names.sandbox_by_notification_key("n-7"))
            ]
            reads.clear()
            to = "+447400100007"
            rcpt = (await stack.client.get("/v1/sandbox/messages", params={"to": to})).json()
            assert len(rcpt["items"]) == 10 and {i["to"] for i in rcpt["items"]} == {to}
            assert len(reads) == 1 and reads[0][2:] == (0, 99), "one read of that recipient"
        finally:
            app_redis.execute_command = real


async def test_sandbox_reads_answer_503_when_redis_is_gone(
    database_url: str, private_redis: PrivateRedis
) -> None:
    """A stale Redis connection gave bare 500s."""
    values = stack_settings(database_url, redis_url=private_redis.url)
    async with running_stack(values, workers=0) as api:
        assert (await api.client.get("/v1/sandbox/messages")).status_code == 200
        private_redis.stop()
        for response in (
            await api.client.get("/v1/sandbox/messages"),
            await api.client.get("/v1/sandbox/providers"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["retry-after"]) >= 1


async def test_with_the_sandbox_off_its_api_is_gone_and_its_sends_fail_visibly(
    database_url: str,
) -> None:
    async with running_stack(stack_settings(database_url, sandbox_enabled=False)) as stack:
        assert (await stack.client.get("/v1/sandbox/messages")).status_code == 404
        nid = (
            await stack.send(channel="sms", to=PHONE, category="transactional", body="hi")
        ).json()["id"]
        done = await stack.wait_status(nid, "failed")
        assert done["last_error_code"] == "sandbox_disabled"

        async def dead_letters() -> list[dict[str, Any]]:
            return list((await stack.client.get("/v1/dlq")).json()["items"])

        async def stored() -> bool:
            return bool(await dead_letters())

        # The ingester stores the dead letter just after the status is written.
        await wait_until(stored, 10, "the dead letter")
        [dead] = await dead_letters()
        assert dead["notification_id"] == nid and dead["reason"] == "permanent_error"
        assert await stack.redis.exists(names.sandbox_messages_key()) == 0, "nothing recorded"


async def test_herald_api_and_worker_outside_dev_warn_when_rules_route_to_a_sandbox(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Outside `herald dev` the sandbox is off; the default rules still route every
    channel to it: both processes say so at start, and the sandbox API is gone."""
    values = stack_settings(sqlite_url, log_level="INFO", sandbox_enabled=None)
    worker = WorkerProcess(values, tmp_path / "worker.log").start()
    api = ApiProcess(values, tmp_path / "api.log").start()
    try:
        url = await api.wait_ready()
        async with httpx.AsyncClient(base_url=url, headers=bearer(ADMIN_KEY)) as client:
            assert (await client.get("/v1/sandbox/messages")).status_code == 404
        deadline = asyncio.get_running_loop().time() + 30
        while b"worker_started" not in (tmp_path / "worker.log").read_bytes():
            assert asyncio.get_running_loop().time() < deadline, "worker did not start"
            await asyncio.sleep(0.1)
    finally:
        worker.close()
        api.close()
    for log_file in ("worker.log", "api.log"):
        warnings = [
            line
            for line in (tmp_path / log_file).read_text().splitlines()
            if "sandbox_routed_outside_dev" in line
        ]
        assert len(warnings) == 1, log_file
        assert "sandbox-sms" in warnings[0] and "sandbox_disabled" in warnings[0]


async def test_behaviours_are_cached_briefly_and_a_local_change_is_seen_at_once() -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    await redis.delete(names.sandbox_config_key())
    now = [0.0]
    worker = SandboxStore(redis, cache_s=1.0, clock=lambda: now[0])
    api = SandboxStore(redis)
    try:
        assert (await worker.behaviour("sandbox-sms")).mode == "ok"
        await api.set_behaviour("sandbox-sms", SandboxBehaviour(mode="transient"))
        now[0] = 0.9
        assert (await worker.behaviour("sandbox-sms")).mode == "ok", "its copy is 0.9 s old"
        now[0] = 1.0
        assert (await worker.behaviour("sandbox-sms")).mode == "transient"
        await worker.set_behaviour("sandbox-sms", SandboxBehaviour(mode="permanent"))
        assert (await worker.behaviour("sandbox-sms")).mode == "permanent"
    finally:
        await redis.delete(names.sandbox_config_key())
        await redis.aclose()


# -- finding 10: a replay through a provider of another channel ----------------------------


async def dead_letter_ids(stack: Stack, nids: list[str]) -> dict[str, str]:
    items = (await stack.client.get("/v1/dlq")).json()["items"]
    return {i["notification_id"]: i["id"] for i in items if i["notification_id"] in nids}


async def nothing_replayed(stack: Stack, nids: list[str]) -> None:
    for nid in nids:
        shown = await stack.notification(nid)
        assert (shown["status"], shown["generation"]) == ("failed", 0)
        assert await stack.sandbox(nid) == []
    assert (await stack.client.get("/v1/dlq")).json()["items"], "still open"
    for action in ("dlq.replay", "dlq.bulk_replay"):
        audit = await stack.client.get("/v1/audit", params={"action": action})
        assert audit.json()["items"] == [], "no replay recorded"


async def test_a_replay_through_a_provider_of_another_channel_is_refused(
    database_url: str,
) -> None:
    """The attack: an SMS replayed through `sandbox-push`, e-mails "sent" by SMS through a
    bulk override. Each is a 422 naming the field; nothing is replayed."""
    async with running_stack(stack_settings(database_url)) as stack:
        nids = await dead_letters_from(stack, [SMS_FAILING, EMAIL])
        dead = await dead_letter_ids(stack, nids)
        sms_through_push = await stack.client.post(
            f"/v1/dlq/{dead[nids[0]]}/replay", json={"provider": "sandbox-push"}
        )
        assert_problem(sms_through_push, 422, "provider")
        assert "push" in sms_through_push.json()["errors"][0]["message"]
        email_through_sms = await stack.client.post(
            f"/v1/dlq/{dead[nids[1]]}/replay", json={"provider": "sandbox-sms"}
        )
        assert_problem(email_through_sms, 422, "provider")
        for filters in ({"channel": "email"}, {}, {"channel": "email", "dry_run": True}):
            bulk = await stack.client.post(
                "/v1/dlq/replay", json={**filters, "override_provider": "sandbox-sms"}
            )
            assert_problem(bulk, 422, "override_provider")
        await nothing_replayed(stack, nids)

        same_channel = await stack.client.post(
            f"/v1/dlq/{dead[nids[0]]}/replay", json={"provider": "sandbox-sms"}
        )
        assert same_channel.status_code == 202, "a provider of its own channel still works"
        await stack.wait_status(nids[0], "sent")


async def test_the_console_refuses_a_replay_through_another_channel(sqlite_url: str) -> None:
    async with running_stack(stack_settings(sqlite_url)) as stack:
        nids = await dead_letters_from(stack, [SMS_FAILING, EMAIL])
        dead = await dead_letter_ids(stack, nids)
        async with signed_in(stack.url) as client:
            form = await client.get(f"/console/dead-letters/{dead[nids[0]]}/replay")
            assert 'value="sandbox-sms"' in form.text
            assert 'value="sandbox-push"' not in form.text, "the form offers its channel only"
            one = await client.post(
                f"/console/dead-letters/{dead[nids[0]]}/replay",
                data={"csrf_token": csrf_of(form.text), "provider": "sandbox-push"},
            )
            assert one.status_code == 422 and "sends push" in one.text
            preview = await client.get("/console/replay", params={"channel": "email"})
            assert 'value="sandbox-email"' in preview.text
            assert 'value="sandbox-sms"' not in preview.text
            mixed = await client.get("/console/replay")
            assert 'value="sandbox-email"' not in mixed.text, "no override over mixed channels"
            bulk = await client.post(
                "/console/replay",
                data={
                    "csrf_token": csrf_of(preview.text),
                    "channel": "email",
                    "override_provider": "sandbox-sms",
                    "max_per_s": "50",
                },
            )
            assert bulk.status_code == 422 and "sends sms" in bulk.text
        await nothing_replayed(stack, nids)
