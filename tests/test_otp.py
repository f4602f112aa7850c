"""One-time passcodes end to end: send, read the code where the vendor got it, verify."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from herald.otp import check_template, code_mac, derive_code, render
from tests.support.stack import (
    ApiProcess,
    Stack,
    WorkerProcess,
    free_port,
    running_stack,
    stack_settings,
)

pytestmark = pytest.mark.integration
PHONE = "+447400123456"


def test_codes_are_digits_of_the_asked_length_and_macs_bind_the_recipient() -> None:
    secret = b"s3cret"
    code = derive_code(secret, "otp-1", "nonce", 6)
    assert re.fullmatch(r"\d{6}", code) and derive_code(secret, "otp-1", "nonce", 6) == code
    assert len(derive_code(secret, "otp-1", "nonce", 10)) == 10
    others = {derive_code(b"another secret", f"otp-{i}", "nonce", 6) for i in range(20)}
    mine = {derive_code(secret, f"otp-{i}", "nonce", 6) for i in range(20)}
    assert others != mine, "the code depends on the secret"
    assert code_mac(secret, "otp-1", "alice", code) != code_mac(secret, "otp-1", "bob", code)
    assert "123456" in render(None, "fr", "123456", 10) and "minutes" in render(None, "fr", "1", 10)
    with pytest.raises(ValueError, match="exactly once"):
        check_template("no code here")
    with pytest.raises(ValueError, match="unknown placeholder"):
        check_template("{code} {name}")


@pytest.fixture
async def otp(database_url: str) -> AsyncIterator[Stack]:
    # Budgets per code are tested here; verify rate limits in test_security_sandbox_otp.
    values = stack_settings(
        database_url,
        otp_resend_cooldown_s=1,
        limit_otp_verify_key={"rate": 10_000, "period_s": 1},
        limit_otp_verify_global={"rate": 10_000, "period_s": 1},
    )
    async with running_stack(values) as stack:
        yield stack


async def send_otp(stack: Stack, **extra: Any) -> dict[str, Any]:
    response = await stack.client.post("/v1/otp", json={"to": PHONE, "channel": "sms", **extra})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


async def delivered_code(stack: Stack, notification_id: str) -> str:
    await stack.wait_status(notification_id, "sent")
    [message] = await stack.sandbox(notification_id)
    match = re.search(r"\b(\d{4,10})\b", message["body"])
    assert match, message["body"]
    return match.group(1)


async def verify(stack: Stack, code: str, to: str = PHONE) -> tuple[int, dict[str, Any]]:
    response = await stack.client.post("/v1/otp/verify", json={"to": to, "code": code})
    return response.status_code, response.json()


async def test_send_read_verify_once(otp: Stack) -> None:
    sent = await send_otp(otp)
    assert {"otp_id", "expires_at", "resend_after", "notification_id"} <= set(sent)
    code = await delivered_code(otp, sent["notification_id"])
    assert len(code) == 6
    notification = await otp.notification(sent["notification_id"])
    assert notification["priority"] == "high" and notification["category"] == "otp"
    assert await verify(otp, code) == (200, {"valid": True, "attempts_left": 4})
    status, body = await verify(otp, code)
    assert status == 200 and body["valid"] is False, "a code is single use"


async def test_wrong_codes_spend_the_budget_then_429(otp: Stack) -> None:
    sent = await send_otp(otp)
    code = await delivered_code(otp, sent["notification_id"])
    wrong = "000000" if code != "000000" else "111111"
    lefts = [(await verify(otp, wrong))[1]["attempts_left"] for _ in range(5)]
    assert lefts == [4, 3, 2, 1, 0]
    status, body = await verify(otp, code)  # even the right code: the code is dead
    assert status == 429 and body["errors"][0]["field"] == "code"


async def test_unknown_recipients_look_the_same(otp: Stack) -> None:
    status, body = await verify(otp, "123456", to="+447400999888")
    assert (status, body) == (200, {"valid": False, "attempts_left": 4})


async def test_resend_gives_the_same_code_after_the_cooldown_and_429_within_it(otp: Stack) -> None:
    first = await send_otp(otp)
    too_soon = await otp.client.post("/v1/otp", json={"to": PHONE, "channel": "sms"})
    assert too_soon.status_code == 429
    assert int(too_soon.headers["retry-after"]) >= 1
    assert too_soon.json()["errors"][0]["message"] == "otp_resend_cooldown"
    await asyncio.sleep(1.1)
    second = await send_otp(otp)
    assert second["otp_id"] == first["otp_id"] and second["resent"] is True
    codes = {await delivered_code(otp, s["notification_id"]) for s in (first, second)}
    assert len(codes) == 1


async def test_an_expired_code_is_invalid(otp: Stack) -> None:
    sent = await send_otp(otp, ttl_s=1)
    code = await delivered_code(otp, sent["notification_id"])
    await asyncio.sleep(1.2)
    assert (await verify(otp, code))[1]["valid"] is False


async def test_concurrent_guesses_never_exceed_the_budget_and_one_right_code_wins_once(
    otp: Stack,
) -> None:
    sent = await send_otp(otp)
    code = await delivered_code(otp, sent["notification_id"])
    wrong = "000000" if code != "000000" else "111111"
    answers = await asyncio.gather(*(verify(otp, wrong) for _ in range(50)))
    assert sum(status == 200 for status, _ in answers) == 5
    assert sum(status == 429 for status, _ in answers) == 45

    other = "+447400123457"
    await asyncio.sleep(1.1)
    sent = await send_otp(otp, to=other)
    code = await delivered_code(otp, sent["notification_id"])
    answers = await asyncio.gather(*(verify(otp, code, to=other) for _ in range(10)))
    assert sum(1 for status, body in answers if status == 200 and body["valid"]) == 1


async def test_email_otp_and_custom_template(otp: Stack) -> None:
    sent = await send_otp(otp, to="carol@example.com", channel="email", template="Code: {code}")
    await otp.wait_status(sent["notification_id"], "sent")
    [message] = await otp.sandbox(sent["notification_id"])
    assert message["subject"] == "Your verification code"
    assert re.fullmatch(r"Code: \d{6}", message["body"])
    bad = await otp.client.post("/v1/otp", json={"to": PHONE, "template": "no placeholder"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "template"


async def test_no_code_reaches_the_database_or_the_logs(sqlite_url: str, tmp_path: Path) -> None:
    values = stack_settings(sqlite_url, otp_resend_cooldown_s=0, log_level="INFO")
    api = ApiProcess(values, tmp_path / "api.log").start()
    worker = WorkerProcess(values, tmp_path / "worker.log").start()
    stack = Stack(values)
    try:
        await api.wait_ready()
        codes = []
        for i in range(5):
            to = f"+4474001234{i:02}"
            response = await stack.client.post("/v1/otp", json={"to": to})
            assert response.status_code == 202
            codes.append(await delivered_code(stack, response.json()["notification_id"]))
            wrong = "999999" if codes[-1] != "999999" else "888888"
            await stack.client.post("/v1/otp/verify", json={"to": to, "code": wrong})
            await stack.client.post("/v1/otp/verify", json={"to": to, "code": codes[-1]})
    finally:
        worker.close()
        api.close()
        await stack.close()
    database = Path(sqlite_url.split("///", 1)[1])
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    logs = (tmp_path / "api.log").read_bytes() + (tmp_path / "worker.log").read_bytes()
    assert b"worker_started" in logs, "the worker logged at INFO"
    for code in codes:
        assert code.encode() not in stored, "a code in the database"
        assert code.encode() not in logs, "a code in the logs"


async def test_redis_down_otp_refused_plain_sends_accepted(database_url: str) -> None:
    values = stack_settings(database_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_stack(values, workers=0) as api:
        refused = await api.client.post("/v1/otp", json={"to": PHONE})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        refused = await api.client.post("/v1/otp/verify", json={"to": PHONE, "code": "123456"})
        assert refused.status_code == 503
        accepted = await api.send(channel="sms", to=PHONE, category="transactional", body="hi")
        assert accepted.status_code == 202


FALLBACK = [{"channel": "email", "to": "dave@example.com"}]


async def test_fallback_goes_out_at_once_when_the_first_channel_fails_for_good(
    database_url: str,
) -> None:
    async with running_stack(stack_settings(database_url, otp_fallback_after_s=60)) as stack:
        await stack.set_sandbox("sandbox-sms", "permanent")
        sent = await send_otp(stack, fallback=FALLBACK)
        [email_id] = sent["fallback_notification_ids"]
        await stack.wait_status(sent["notification_id"], "failed")
        code = await delivered_code(stack, email_id)  # long before the 60 s fallback time
        [email] = await stack.sandbox(email_id)
        assert email["to"] == "dave@example.com"
        assert await verify(stack, code) == (200, {"valid": True, "attempts_left": 4})


async def test_fallback_after_the_wait_when_the_first_channel_has_not_delivered(
    database_url: str,
) -> None:
    async with running_stack(stack_settings(database_url, otp_fallback_after_s=1)) as stack:
        await stack.set_sandbox("sandbox-sms", "transient")  # retrying, never delivering
        sent = await send_otp(stack, fallback=FALLBACK)
        [email_id] = sent["fallback_notification_ids"]
        code = await delivered_code(stack, email_id)
        assert (await verify(stack, code))[1]["valid"] is True


async def test_no_fallback_when_the_first_channel_delivered(database_url: str) -> None:
    async with running_stack(stack_settings(database_url, otp_fallback_after_s=1)) as stack:
        sent = await send_otp(stack, fallback=FALLBACK)
        [email_id] = sent["fallback_notification_ids"]
        await stack.wait_status(sent["notification_id"], "sent")
        skipped = await stack.wait_status(email_id, "expired", timeout=15)
        assert skipped["last_error_code"] == "otp_not_needed"
        assert await stack.sandbox(email_id) == []
        assert (await stack.client.get("/v1/dlq")).json()["items"] == [], "nothing was lost"
