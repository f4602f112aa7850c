"""Rate limits and abuse guards as callers meet them: exact across processes, standard
headers, SMS-pumping cut-offs, country lists and the daily spend cap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.stack import ADMIN_KEY, ApiProcess, free_port, running_stack, stack_settings
from tests.test_routing_api import two_sms_providers

pytestmark = pytest.mark.integration
SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "hi"}


async def test_a_limit_of_n_admits_exactly_n_across_two_api_processes(
    sqlite_url: str, tmp_path: Path
) -> None:
    base = stack_settings(
        sqlite_url,
        limit_api_key={"rate": 20, "period_s": 60},
        limit_recipient={"rate": 1000, "period_s": 60},
    )
    apis = [
        ApiProcess({**base, "api_port": free_port()}, tmp_path / f"api-{i}.log").start()
        for i in range(2)
    ]
    try:
        urls = [await api.wait_ready() for api in apis]
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(headers=headers, timeout=15) as client:
            responses = await asyncio.gather(
                *(client.post(f"{urls[i % 2]}/v1/notifications", json=SMS) for i in range(60))
            )
    finally:
        for api in apis:
            api.close()
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 20 and codes.count(429) == 40
    assert {r.headers["ratelimit-limit"] for r in responses} == {"20"}


async def test_standard_headers_on_accept_and_on_refusal(database_url: str) -> None:
    values = stack_settings(database_url, limit_recipient={"rate": 2, "period_s": 60})
    async with running_stack(values, workers=0) as api:
        first = await api.send(**SMS)
        assert first.status_code == 202
        assert (
            first.headers["ratelimit-limit"] == "2" and first.headers["ratelimit-remaining"] == "1"
        )
        assert int(first.headers["ratelimit-reset"]) >= 1
        assert first.headers["ratelimit-policy"].startswith("2;w=60")
        assert (await api.send(**SMS)).status_code == 202
        refused = await api.send(**SMS)
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["errors"] == [{"field": "policy", "message": "recipient"}]
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert refused.headers["ratelimit-remaining"] == "0"
        other = await api.send(**{**SMS, "to": "+447400123457"})
        assert other.status_code == 202, "another recipient is not affected"


async def test_pumping_burst_to_one_prefix_is_cut_off_before_any_vendor_call(
    database_url: str,
) -> None:
    values = stack_settings(
        database_url, otp_resend_cooldown_s=0, limit_otp_prefix={"rate": 3, "period_s": 60}
    )
    async with running_stack(values) as stack:
        responses = [
            await stack.client.post("/v1/otp", json={"to": f"+4474001234{n:02}"}) for n in range(10)
        ]
        assert [r.status_code for r in responses] == [202] * 3 + [429] * 7
        assert {r.json()["errors"][0]["message"] for r in responses[3:]} == {"otp_prefix"}
        accepted = [r.json()["notification_id"] for r in responses[:3]]
        await stack.wait_all_terminal(accepted)
        everything = (await stack.client.get("/v1/sandbox/messages")).json()["items"]
        assert len(everything) == 3, "no vendor call beyond the limit"


async def test_a_denied_country_is_refused_with_no_vendor_call(database_url: str) -> None:
    async with running_stack(stack_settings(database_url, sms_country_deny=["GB"])) as stack:
        otp = await stack.client.post("/v1/otp", json={"to": "+447400123456"})
        plain = await stack.send(**SMS)
        for response in (otp, plain):
            assert response.status_code == 422
            assert response.json()["errors"][0]["field"] == "to"
            assert "GB" in response.json()["errors"][0]["message"]
        india = await stack.send(**{**SMS, "to": "+919876543210"})
        assert india.status_code == 202, "other countries still go"
        await asyncio.sleep(0.5)
        items = (await stack.client.get("/v1/sandbox/messages")).json()["items"]
        assert [item["to"] for item in items] == ["+919876543210"]


async def test_daily_spend_cap_per_api_key(database_url: str, tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(two_sms_providers()))  # cheapest SMS costs 0.001
    values = stack_settings(
        database_url, routing_file=str(routing), spend_cap_per_key_per_day=0.0025
    )
    async with running_stack(values, workers=0) as api:
        assert (await api.send(**SMS)).status_code == 202
        assert (await api.send(**{**SMS, "to": "+447400123457"})).status_code == 202
        capped = await api.send(**{**SMS, "to": "+447400123458"})
        assert capped.status_code == 429
        assert capped.json()["title"] == "Daily spend cap reached"
        assert int(capped.headers["retry-after"]) <= 86_401
        email = await api.send(
            channel="email", to="a@example.com", subject="s", category="transactional", body="b"
        )
        assert email.status_code == 202, "a free channel is not capped"
