"""Issue 10, written as the attacks: sandbox reads by other callers, OTP verify sprays
and timing, a `send` key sending OTPs, and replays through another channel's provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
from producer import otp as otp_module
from producer.auth import KeyStore
from producer.otp import OtpStore
from tests.support.stack import TEST_REDIS_URL, Stack, running_stack, stack_settings

pytestmark = pytest.mark.integration
PHONE = "+447400123456"


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
    code = otp_module.derive_code(otp_store.secret, issued.otp_id, record[b"nonce"].decode(), 6)
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
