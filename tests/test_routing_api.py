"""Routing rules through the API: read, edit with If-Match, validate, diff, roll back,
simulate; and the providers view with manual breaker overrides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import DEFAULT_ROUTING_FILE
from producer.auth import KeyStore
from tests.support.stack import Stack, WorkerProcess, running_stack, stack_settings

pytestmark = pytest.mark.integration

SMS_TO = "+447400123456"


def two_sms_providers() -> dict[str, Any]:
    doc = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    doc["providers"]["sandbox-sms-cheap"] = {
        "type": "sandbox",
        "channel": "sms",
        "cost": {"default": 0.001},
    }
    doc["providers"]["sandbox-sms"]["cost"] = {"default": 0.01}
    doc["rules"][0]["tiers"] = [["sandbox-sms", "sandbox-sms-cheap"]]
    return doc


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        yield stack


async def current(stack: Stack) -> tuple[dict[str, Any], str]:
    response = await stack.client.get("/v1/routing/rules")
    assert response.status_code == 200
    return response.json(), response.headers["etag"]


async def test_the_routing_file_is_version_one_until_the_first_edit(api: Stack) -> None:
    body, etag = await current(api)
    assert body["version"] == 1 and etag == body["etag"]
    assert body["document"] == yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    as_yaml = await api.client.get("/v1/routing/rules", headers={"Accept": "application/yaml"})
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(as_yaml.text) == body["document"]


async def test_edit_needs_the_current_etag_and_a_valid_document(api: Stack) -> None:
    _, etag = await current(api)
    doc = two_sms_providers()

    missing = await api.client.put("/v1/routing/rules", json=doc)
    assert missing.status_code == 428
    stale = await api.client.put("/v1/routing/rules", json=doc, headers={"If-Match": '"v0-x"'})
    assert stale.status_code == 412

    broken = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    broken["rules"][0]["tiers"] = [["sandbox-sms", "nobody"]]
    invalid = await api.client.put("/v1/routing/rules", json=broken, headers={"If-Match": etag})
    assert invalid.status_code == 422
    assert invalid.headers["content-type"].startswith("application/problem+json")
    assert "rules[0].tiers[0][1]" in [e["field"] for e in invalid.json()["errors"]]

    saved = await api.client.put(
        "/v1/routing/rules",
        content=yaml.safe_dump(doc),
        headers={"If-Match": etag, "Content-Type": "application/yaml"},
        params={"comment": "cheaper SMS"},
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == 2 and saved.headers["etag"] == saved.json()["etag"]
    again = await api.client.put("/v1/routing/rules", json=doc, headers={"If-Match": etag})
    assert again.status_code == 412, "the old ETag is stale now"

    versions = (await api.client.get("/v1/routing/rules/versions")).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["created_by"] == "bootstrap" and versions[0]["comment"] == "cheaper SMS"
    changes = (await api.client.get("/v1/routing/rules/diff")).json()
    assert changes["from"] == 1 and changes["to"] == 2
    assert "+  sandbox-sms-cheap:" in changes["diff"]


async def test_rollback_restores_the_earlier_document(api: Stack) -> None:
    original, etag = await current(api)
    await api.client.put("/v1/routing/rules", json=two_sms_providers(), headers={"If-Match": etag})
    back = await api.client.post("/v1/routing/rules/rollback", json={"version": 1})
    assert back.status_code == 200 and back.json()["version"] == 3
    now, _ = await current(api)
    assert now["document"] == original["document"] and now["comment"] == "rollback to version 1"
    missing = await api.client.post("/v1/routing/rules/rollback", json={"version": 99})
    assert missing.status_code == 404


async def test_scopes_separate_readers_from_writers(api: Stack) -> None:
    reader = await KeyStore(api.sessions).create("product-reader", ["routing:read"])
    headers = {"Authorization": f"Bearer {reader}"}
    assert (await api.client.get("/v1/routing/rules", headers=headers)).status_code == 200
    _, etag = await current(api)
    put = await api.client.put(
        "/v1/routing/rules", json=two_sms_providers(), headers={**headers, "If-Match": etag}
    )
    assert put.status_code == 403


async def test_simulate_explains_the_choice_and_can_test_an_unsaved_document(api: Stack) -> None:
    live = await api.client.post(
        "/v1/routing/simulate", json={"channel": "sms", "to": SMS_TO, "category": "otp"}
    )
    assert live.status_code == 200
    assert live.json()["rule"] == "sms-default"
    assert live.json()["candidates"][0]["provider"] == "sandbox-sms"

    draft = await api.client.post(
        "/v1/routing/simulate",
        json={"channel": "sms", "to": SMS_TO, "category": "otp", "rules": two_sms_providers()},
    )
    candidates = draft.json()["candidates"]
    assert [c["provider"] for c in candidates] == ["sandbox-sms-cheap", "sandbox-sms"]
    assert candidates[0]["reason"].startswith("chosen") and candidates[0]["cost"] == 0.001
    assert candidates[1]["reason"].startswith("failover #1")
    assert all(c["healthy"] for c in candidates)

    bad = two_sms_providers()
    bad["providers"]["sandbox-sms-cheap"]["channel"] = "fax"
    refused = await api.client.post(
        "/v1/routing/simulate", json={"channel": "sms", "to": SMS_TO, "rules": bad}
    )
    assert refused.status_code == 422
    assert any(
        "providers.sandbox-sms-cheap.channel" in e["field"] for e in refused.json()["errors"]
    )


async def test_providers_view_and_manual_drain(api: Stack) -> None:
    items = {p["name"]: p for p in (await api.client.get("/v1/providers")).json()["items"]}
    assert set(items) == {"sandbox-sms", "sandbox-email", "sandbox-push"}
    assert items["sandbox-sms"]["breaker"] == "closed" and items["sandbox-sms"]["type"] == "sandbox"
    drained = await api.client.put("/v1/providers/sandbox-sms/breaker", json={"state": "open"})
    assert drained.json()["breaker"] == "open" and drained.json()["override"] == "open"
    simulated = await api.client.post("/v1/routing/simulate", json={"channel": "sms", "to": SMS_TO})
    assert simulated.json()["candidates"][0]["healthy"] is False
    auto = await api.client.put("/v1/providers/sandbox-sms/breaker", json={"state": "auto"})
    assert auto.json()["breaker"] == "closed" and auto.json()["override"] is None
    assert (
        await api.client.put("/v1/providers/nope/breaker", json={"state": "open"})
    ).status_code == 404


async def test_edits_and_rollbacks_reach_two_worker_processes_within_two_seconds(
    settings_for: Any, tmp_path: Path
) -> None:
    values = settings_for()
    async with running_stack(values, workers=0) as stack:
        workers = [WorkerProcess(values, tmp_path / f"worker-{i}.log").start() for i in range(2)]
        try:
            await expect_provider(stack, "sandbox-sms", version=1)  # both up, on version 1
            _, etag = await current(stack)
            saved = await stack.client.put(
                "/v1/routing/rules", json=two_sms_providers(), headers={"If-Match": etag}
            )
            assert saved.status_code == 200
            await asyncio.sleep(2)
            await expect_provider(stack, "sandbox-sms-cheap", version=2)
            back = await stack.client.post("/v1/routing/rules/rollback", json={"version": 1})
            assert back.status_code == 200
            await asyncio.sleep(2)
            await expect_provider(stack, "sandbox-sms", version=3)
        finally:
            for worker in workers:
                worker.close()


async def expect_provider(stack: Stack, provider: str, *, version: int) -> None:
    """Twenty sends (both workers take some) all went through ``provider`` under ``version``."""
    ids = [
        r.json()["id"]
        for r in await asyncio.gather(
            *(
                stack.send(channel="sms", to=SMS_TO, category="transactional", body="x")
                for _ in range(20)
            )
        )
    ]
    await stack.wait_all_terminal(ids)
    for nid in ids:
        [sent] = await stack.sandbox(nid)
        assert sent["provider"] == provider
        assert (await stack.notification(nid))["rules_version"] == version


async def test_simulate_agrees_with_what_the_workers_then_do(database_url: str) -> None:
    # Workers trust their copy of the breaker states for breaker_cache_s.
    values = stack_settings(database_url, breaker_cache_s=0.2)
    async with running_stack(values, workers=1) as stack:
        _, etag = await current(stack)
        await stack.client.put(
            "/v1/routing/rules", json=two_sms_providers(), headers={"If-Match": etag}
        )
        await stack.workers_on_rules(2)
        message = {"channel": "sms", "to": SMS_TO, "category": "transactional"}
        for drained in (None, "sandbox-sms-cheap"):
            if drained:
                await stack.client.put(f"/v1/providers/{drained}/breaker", json={"state": "open"})
                await asyncio.sleep(0.3)  # past the workers' breaker cache
            predicted = (await stack.client.post("/v1/routing/simulate", json=message)).json()
            chosen = next(c["provider"] for c in predicted["candidates"] if c["healthy"])
            nid = (await stack.send(**message, body="x")).json()["id"]
            await stack.wait_status(nid, "sent")
            [sent] = await stack.sandbox(nid)
            assert sent["provider"] == chosen
            assert chosen == ("sandbox-sms" if drained else "sandbox-sms-cheap")


async def test_with_every_candidate_drained_a_message_waits_instead_of_dying(
    database_url: str,
) -> None:
    async with running_stack(stack_settings(database_url), workers=1) as stack:
        await stack.client.put("/v1/providers/sandbox-sms/breaker", json={"state": "open"})
        nid = (
            await stack.send(channel="sms", to=SMS_TO, category="transactional", body="x")
        ).json()["id"]
        waiting = await stack.wait_status(nid, "retry_scheduled")
        assert waiting["last_error_code"] == "no_healthy_provider"
        assert waiting["attempts"] == []  # no attempt charged
        await asyncio.sleep(2)  # several retry rounds later it is still waiting, not dead
        assert (await stack.notification(nid))["status"] in ("retry_scheduled", "queued")
        assert (await stack.client.get("/v1/dlq")).json()["items"] == []
        await stack.client.put("/v1/providers/sandbox-sms/breaker", json={"state": "auto"})
        await stack.wait_status(nid, "sent", timeout=30)


async def test_an_invalid_routing_file_is_refused_at_start_up_with_its_path(
    database_url: str, tmp_path: Path
) -> None:
    from herald.storage.db import make_engine, make_session_factory
    from router.store import RulesStore
    from router.validation import RulesInvalid

    bad = tmp_path / "routing.yaml"
    bad.write_text(
        "providers: {a: {type: sandbox, channel: sms}}\n"
        "rules: [{name: r, match: {}, tiers: [[b]]}]\n"
    )
    engine = make_engine(database_url)
    try:
        with pytest.raises(RulesInvalid, match=r"rules\[0\]\.tiers\[0\]\[0\]"):
            await RulesStore(make_session_factory(engine), bad).current()
    finally:
        await engine.dispose()
