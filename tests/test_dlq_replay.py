"""Dead letters on-call can open, replay and discard; everything in the audit log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import update

from herald.storage.models import Notification
from producer.auth import KeyStore
from tests.support.stack import Stack, running_stack, stack_settings

pytestmark = pytest.mark.integration
SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "Hi"}


async def dead_letter_for(stack: Stack, notification_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for item in (await stack.client.get("/v1/dlq")).json()["items"]:
            if item["notification_id"] == notification_id:
                return item  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dead letter for {notification_id}")


async def a_failed_message(stack: Stack) -> tuple[str, str]:
    await stack.set_sandbox("sandbox-sms", "permanent")
    nid = (await stack.send(**SMS)).json()["id"]
    await stack.wait_status(nid, "failed")
    dead = await dead_letter_for(stack, nid)
    await stack.set_sandbox("sandbox-sms", "ok")
    return nid, dead["id"]


async def test_show_replay_and_audit(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        nid, dead_id = await a_failed_message(stack)
        shown = (await stack.client.get(f"/v1/dlq/{dead_id}")).json()
        assert shown["payload"]["to"] == "+44********56" and shown["payload"]["body"] == "Hi"
        assert [(h["outcome"], h["generation"]) for h in shown["history"]] == [
            ("permanent_error", 0)
        ]
        replayed = await stack.client.post(f"/v1/dlq/{dead_id}/replay", json={"reason": "fixed"})
        assert replayed.status_code == 202
        assert replayed.json() == {"notification_id": nid, "status": "accepted"}
        done = await stack.wait_status(nid, "sent")
        assert done["generation"] == 1
        assert [a["outcome"] for a in done["attempts"]] == ["permanent_error", "sent"]
        assert len(await stack.sandbox(nid)) == 1
        listed = (await stack.client.get("/v1/dlq")).json()["items"]
        assert dead_id not in [i["id"] for i in listed], "it left the list"
        [entry] = (await stack.client.get("/v1/audit", params={"action": "dlq.replay"})).json()[
            "items"
        ]
        assert entry["actor"] == "bootstrap" and entry["target"] == nid
        assert entry["reason"] == "fixed"


async def test_two_replays_at_once_send_once(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        nid, dead_id = await a_failed_message(stack)
        answers = await asyncio.gather(
            *(stack.client.post(f"/v1/dlq/{dead_id}/replay") for _ in range(5))
        )
        assert sorted(a.status_code for a in answers) == [202, 409, 409, 409, 409]
        await stack.wait_status(nid, "sent")
        await asyncio.sleep(0.5)
        assert len(await stack.sandbox(nid)) == 1


async def test_expired_messages_are_never_replayed(database_url: str) -> None:
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        nid = (await stack.send(**SMS, expires_in_s=1)).json()["id"]
        await asyncio.sleep(1.2)
        await stack.start_worker()
        await stack.wait_status(nid, "expired")
        dead = await dead_letter_for(stack, nid)
        refused = await stack.client.post(f"/v1/dlq/{dead['id']}/replay")
        assert refused.status_code == 409 and "expired" in refused.json()["detail"]
        assert await stack.sandbox(nid) == []


async def test_a_message_sent_meanwhile_is_skipped(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        nid, dead_id = await a_failed_message(stack)
        async with stack.sessions.begin() as session:
            await session.execute(
                update(Notification).where(Notification.id == nid).values(status="sent")
            )
        skipped = await stack.client.post(f"/v1/dlq/{dead_id}/replay")
        assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
        await asyncio.sleep(0.5)
        assert await stack.sandbox(nid) == []


async def test_discard_needs_a_reason_and_is_audited(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        nid, dead_id = await a_failed_message(stack)
        no_reason = await stack.client.request("DELETE", f"/v1/dlq/{dead_id}", json={})
        assert no_reason.status_code == 422 and no_reason.json()["errors"][0]["field"] == "reason"
        gone = await stack.client.request(
            "DELETE", f"/v1/dlq/{dead_id}", json={"reason": "customer left"}
        )
        assert gone.status_code == 204
        again = await stack.client.request(
            "DELETE", f"/v1/dlq/{dead_id}", json={"reason": "customer left"}
        )
        assert again.status_code == 409
        assert (await stack.client.post(f"/v1/dlq/{dead_id}/replay")).status_code == 409
        [entry] = (await stack.client.get("/v1/audit", params={"action": "dlq.discard"})).json()[
            "items"
        ]
        assert entry["reason"] == "customer left" and entry["target"] == nid


async def test_scopes_provider_override_and_other_audited_actions(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        _, dead_id = await a_failed_message(stack)
        reader = await KeyStore(stack.sessions).create("on-call-reader", ["dlq:read"])
        forbidden = await stack.client.post(
            f"/v1/dlq/{dead_id}/replay", headers={"Authorization": f"Bearer {reader}"}
        )
        assert forbidden.status_code == 403
        unknown = await stack.client.post(f"/v1/dlq/{dead_id}/replay", json={"provider": "nope"})
        assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "provider"
        await stack.client.put("/v1/providers/sandbox-sms/breaker", json={"state": "open"})
        actions = [e["action"] for e in (await stack.client.get("/v1/audit")).json()["items"]]
        assert actions[0] == "breaker.override"


async def fail_many(stack: Stack, count: int) -> list[str]:
    await stack.set_sandbox("sandbox-sms", "permanent")
    ids = [(await stack.send(**{**SMS, "body": f"n{i}"})).json()["id"] for i in range(count)]
    await stack.wait_all_terminal(ids)
    deadline = time.monotonic() + 20
    while (await stack.client.post("/v1/dlq/replay", json={"dry_run": True})).json()[
        "count"
    ] < count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await stack.set_sandbox("sandbox-sms", "ok")
    return ids


async def wait_done(stack: Stack, replay_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = (await stack.client.get(f"/v1/dlq/replays/{replay_id}")).json()
        if state["state"] == "done":
            return state  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.1)


async def test_bulk_replay_dry_run_then_at_a_capped_rate_each_sent_once(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        ids = await fail_many(stack, 20)
        dry = (
            await stack.client.post(
                "/v1/dlq/replay",
                json={"dry_run": True, "reason": "permanent_error", "channel": "sms"},
            )
        ).json()
        assert dry["count"] == 20 and len(dry["sample"]) == 5
        started = time.monotonic()
        job = await stack.client.post("/v1/dlq/replay", json={"max_per_s": 10})
        assert job.status_code == 202 and job.json()["count"] == 20
        done = await wait_done(stack, job.json()["replay_id"])
        elapsed = time.monotonic() - started
        assert done["replayed"] == 20 and done["refused"] == 0
        assert elapsed >= 1.8, "20 at 10/s take about 2 s: the cap held"
        await stack.wait_all_terminal(ids)
        assert set((await stack.sandbox_copies(ids)).values()) == {1}
        assert (await stack.client.post("/v1/dlq/replay", json={"dry_run": True})).json()[
            "count"
        ] == 0


async def test_bulk_replay_resumes_after_the_api_restarts(database_url: str) -> None:
    async with running_stack(stack_settings(database_url)) as stack:
        ids = await fail_many(stack, 12)
        job = (await stack.client.post("/v1/dlq/replay", json={"max_per_s": 4})).json()
        await asyncio.sleep(1.2)
        await stack.stop_api()  # mid-way through
        half = await stack.statuses(ids)
        assert 0 < list(half.values()).count("accepted") + list(half.values()).count("sent") < 12
        await stack.start_api()
        done = await wait_done(stack, job["replay_id"], timeout=60)
        assert done["replayed"] + done["refused"] == 12
        await stack.wait_all_terminal(ids)
        assert set((await stack.statuses(ids)).values()) == {"sent"}
        assert set((await stack.sandbox_copies(ids)).values()) == {1}, "none sent twice"
