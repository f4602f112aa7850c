"""The web console over HTTP: sign-in, session cookie, CSRF, scopes, and each page doing
what its API twin does (the browser test drives the same pages through Chromium)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from sqlalchemy import insert, select, update

from dlq.console.overview import sends_per_minute
from herald.storage.models import ApiKey, Attempt, AuditEntry, DeadLetter, Notification
from producer.auth import KeyStore
from tests.support.console import EMAIL, SMS, csrf_of, dead_letters_from, post_form, signed_in
from tests.support.stack import Stack, running_stack, stack_settings

pytestmark = pytest.mark.integration


@dataclass
class Console:
    """A running stack with six real dead letters: even ones SMS, odd ones e-mail."""

    stack: Stack
    nids: list[str]

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture
async def console(sqlite_url: str) -> AsyncIterator[Console]:
    async with running_stack(stack_settings(sqlite_url)) as stack:
        yield Console(stack, await dead_letters_from(stack, [SMS, EMAIL] * 3))


async def key_with(console: Console, *scopes: str) -> str:
    return await KeyStore(console.stack.sessions).create(f"key-{'-'.join(scopes)}", list(scopes))


async def dead_letter(console: Console, i: int) -> DeadLetter:
    async with console.stack.sessions() as session:
        return (
            await session.execute(
                select(DeadLetter).where(DeadLetter.notification_id == console.nids[i])
            )
        ).scalar_one()


async def dead_letter_id(console: Console, i: int) -> str:
    return (await dead_letter(console, i)).id


async def state_of(console: Console, i: int) -> str:
    return (await dead_letter(console, i)).state


async def test_pages_send_a_stranger_to_sign_in_and_back(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as anonymous:
        response = await anonymous.get("/console/dead-letters?provider=sandbox-sms")
        assert response.status_code == 303
        assert response.headers["location"] == (
            "/console/login?next=%2Fconsole%2Fdead-letters%3Fprovider%3Dsandbox-sms"
        )
        login = await anonymous.get(response.headers["location"])
        assert 'name="next" value="/console/dead-letters?provider=sandbox-sms"' in login.text


async def test_sign_in_sets_a_strict_httponly_cookie_holding_no_key(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as browser:
        login = await browser.get("/console/login")
        response = await browser.post(
            "/console/login",
            data={"api_key": "test-admin-key", "csrf_token": csrf_of(login.text)},
        )
        assert response.status_code == 303
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("herald_console=")
        )
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/console" in cookie
        assert "test-admin-key" not in cookie
        page = await browser.get("/console")
        assert page.status_code == 200
        assert "Signed in as" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_sign_in_is_refused_without_its_form_token_or_with_a_bad_key(
    console: Console,
) -> None:
    async with httpx.AsyncClient(base_url=console.url) as browser:
        forged = await browser.post("/console/login", data={"api_key": "test-admin-key"})
        assert forged.status_code == 403
        assert "herald_console=" not in forged.headers.get("set-cookie", "")
        login = await browser.get("/console/login")
        wrong = await browser.post(
            "/console/login", data={"api_key": "nope", "csrf_token": csrf_of(login.text)}
        )
        assert wrong.status_code == 401
        assert "Unknown or revoked API key" in wrong.text


async def test_a_key_without_console_scopes_cannot_sign_in(console: Console) -> None:
    key = await key_with(console, "send")
    async with httpx.AsyncClient(base_url=console.url) as browser:
        login = await browser.get("/console/login")
        response = await browser.post(
            "/console/login", data={"api_key": key, "csrf_token": csrf_of(login.text)}
        )
        assert response.status_code == 403
        assert "none of the scopes the console needs" in response.text


async def test_sign_in_never_redirects_off_the_console(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as browser:
        login = await browser.get("/console/login")
        response = await browser.post(
            "/console/login",
            data={
                "api_key": "test-admin-key",
                "csrf_token": csrf_of(login.text),
                "next": "https://evil.example/console",
            },
        )
        assert response.headers["location"] == "/console"


async def test_a_replay_without_the_csrf_token_is_refused_and_changes_nothing(
    console: Console,
) -> None:
    dead = await dead_letter_id(console, 1)
    async with signed_in(console.url) as client:
        forged = await client.post(f"/console/dead-letters/{dead}/replay", data={})
        assert forged.status_code == 403
        other = await client.post(
            f"/console/dead-letters/{dead}/replay", data={"csrf_token": "0" * 64}
        )
        assert other.status_code == 403
        assert await state_of(console, 1) == "open"

        response = await post_form(
            client,
            f"/console/dead-letters/{dead}/replay",
            f"/console/dead-letters/{dead}/replay",
            reason="vendor fixed",
        )
        assert response.status_code == 303
        assert await state_of(console, 1) == "replayed"
        listing = await client.get(response.headers["location"])
        assert f"Replayed notification {console.nids[1]}" in listing.text
        assert f'data-notification="{console.nids[1]}"' not in listing.text
    async with console.stack.sessions() as session:
        entry = (
            await session.execute(select(AuditEntry).where(AuditEntry.action == "dlq.replay"))
        ).scalar_one()
    assert (entry.actor, entry.target, entry.reason) == (
        "bootstrap",
        console.nids[1],
        "vendor fixed",
    )
    async with signed_in(console.url) as client:
        audit = await client.get("/console/audit", params={"action": "dlq.replay"})
    assert audit.status_code == 200
    assert console.nids[1] in audit.text and "vendor fixed" in audit.text


async def test_the_csrf_token_of_one_session_does_not_work_in_another(console: Console) -> None:
    dead = await dead_letter_id(console, 2)
    async with signed_in(console.url) as first, signed_in(console.url) as second:
        token = csrf_of((await first.get(f"/console/dead-letters/{dead}/replay")).text)
        response = await second.post(
            f"/console/dead-letters/{dead}/replay", data={"csrf_token": token}
        )
        assert response.status_code == 403
    assert await state_of(console, 2) == "open"


async def test_scopes_are_the_apis(console: Console) -> None:
    dead = await dead_letter_id(console, 3)
    async with signed_in(console.url, await key_with(console, "dlq:read")) as reader:
        assert (await reader.get("/console/dead-letters")).status_code == 200
        page = await reader.get(f"/console/dead-letters/{dead}")
        assert page.status_code == 200
        assert "Replay…" not in page.text  # no button it could not use
        assert (await reader.get(f"/console/dead-letters/{dead}/replay")).status_code == 403
        token = csrf_of(page.text)
        refused = await reader.post(
            f"/console/dead-letters/{dead}/replay", data={"csrf_token": token}
        )
        assert refused.status_code == 403
        assert (await reader.get("/console/routing")).status_code == 403
    assert await state_of(console, 3) == "open"


async def test_a_revoked_key_is_signed_out_at_once(console: Console) -> None:
    key = await key_with(console, "dlq:read")
    async with signed_in(console.url, key) as client:
        assert (await client.get("/console/dead-letters")).status_code == 200
        async with console.stack.sessions.begin() as session:
            await session.execute(
                update(ApiKey)
                .where(ApiKey.name == "key-dlq:read")
                .values(revoked_at=datetime.now(UTC))
            )
        response = await client.get("/console/dead-letters")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/login")


def shown(console: Console, html: str) -> set[int]:
    return {i for i, nid in enumerate(console.nids) if f'data-notification="{nid}"' in html}


async def test_the_list_filters_like_the_api(console: Console) -> None:
    async with signed_in(console.url) as client:
        page = await client.get("/console/dead-letters", params={"provider": "sandbox-sms"})
        assert page.status_code == 200
        assert shown(console, page.text) == {0, 2, 4}
        partial = await client.get(
            "/console/dead-letters",
            params={"channel": "email", "window": "15m"},
            headers={"HX-Request": "true"},
        )
        assert "<html" not in partial.text  # htmx gets the results alone
        assert shown(console, partial.text) == {1, 3, 5}
        bad = await client.get("/console/dead-letters", params={"channel": "fax"})
        assert bad.status_code == 422
        assert "channel is not sms, email or push" in bad.text


async def test_the_detail_page_shows_the_timeline_and_masks_the_recipient(
    console: Console,
) -> None:
    dead = await dead_letter_id(console, 0)
    async with signed_in(console.url) as client:
        page = await client.get(f"/console/dead-letters/{dead}")
    assert "Attempt timeline" in page.text
    assert page.text.count('class="badge outcome-permanent_error"') == 1
    assert "sandbox-sms" in page.text
    assert "+447400123456" not in page.text
    assert "+44********56" in page.text


async def test_a_discard_needs_a_reason(console: Console) -> None:
    dead = await dead_letter_id(console, 4)
    async with signed_in(console.url) as client:
        page = f"/console/dead-letters/{dead}/discard"
        refused = await post_form(client, page, page, reason="")
        assert refused.status_code == 422
        assert await state_of(console, 4) == "open"
        done = await post_form(client, page, page, reason="customer left")
        assert done.status_code == 303
    assert await state_of(console, 4) == "discarded"


async def test_bulk_replay_goes_from_a_dry_run_count_to_a_finished_job(console: Console) -> None:
    async with signed_in(console.url) as client:
        preview = await client.get("/console/replay", params={"channel": "email"})
        assert preview.status_code == 200
        assert '<span id="dry-run-count">3</span>' in preview.text
        assert [await state_of(console, i) for i in range(6)] == ["open"] * 6  # a dry run
        started = await client.post(
            "/console/replay",
            data={
                "csrf_token": csrf_of(preview.text),
                "channel": "email",
                "max_per_s": "50",
                "comment": "ses back",
            },
        )
        assert started.status_code == 303
        progress_url = started.headers["location"]
        for _ in range(100):
            progress = await client.get(progress_url)
            if "<strong>done</strong>" in progress.text:
                break
            await asyncio.sleep(0.1)
        assert "3 replayed" in progress.text
    assert [await state_of(console, i) for i in range(6)] == [
        "open",
        "replayed",
        "open",
        "replayed",
        "open",
        "replayed",
    ]


async def rules_yaml(console: Console) -> str:
    response = await console.stack.client.get(
        "/v1/routing/rules", headers={"Accept": "application/yaml"}
    )
    return response.text


async def test_routing_validates_inline_and_refuses_to_save_an_invalid_document(
    console: Console,
) -> None:
    document = yaml.safe_load(await rules_yaml(console))
    document["rules"][0]["tiers"] = [["sandbox-smz"]]
    broken = yaml.safe_dump(document, sort_keys=False)
    async with signed_in(console.url) as client:
        page = await client.get("/console/routing")
        token = csrf_of(page.text)
        checked = await client.post(
            "/console/routing/validate", data={"csrf_token": token, "document": broken}
        )
        assert "sandbox-smz" in checked.text and "<code>rules[0]" in checked.text
        assert "not saveable" in checked.text
        refused = await client.post(
            "/console/routing",
            data={"csrf_token": token, "document": broken, "etag": '"x"'},
        )
        assert refused.status_code == 422
        assert "sandbox-smz" in refused.text  # the draft is kept for fixing
    assert (await console.stack.client.get("/v1/routing/rules")).json()["version"] == 1


async def test_routing_saves_diffs_simulates_and_rolls_back(console: Console) -> None:
    document = yaml.safe_load(await rules_yaml(console))
    document["providers"]["sandbox-sms"]["cost"] = {"default": 0.5}
    edited = yaml.safe_dump(document, sort_keys=False)
    async with signed_in(console.url) as client:
        page = await client.get("/console/routing")
        etag = (await console.stack.client.get("/v1/routing/rules")).headers["etag"]
        saved = await client.post(
            "/console/routing",
            data={
                "csrf_token": csrf_of(page.text),
                "document": edited,
                "etag": etag,
                "comment": "pricier",
            },
        )
        assert saved.status_code == 303, saved.text
        page = await client.get(saved.headers["location"])
        assert "Saved version 2" in page.text
        assert 'class="add">+' in page.text and "0.5" in page.text  # the diff with v1
        simulated = await client.post(
            "/console/routing/simulate",
            data={
                "csrf_token": csrf_of(page.text),
                "channel": "sms",
                "to": "+447400123456",
                "category": "transactional",
            },
        )
        assert "sandbox-sms" in simulated.text
        new_etag = (await console.stack.client.get("/v1/routing/rules")).headers["etag"]
        assert new_etag != etag
        rolled = await client.post(
            "/console/routing/rollback",
            data={"csrf_token": csrf_of(page.text), "version": "1", "etag": new_etag},
        )
        assert rolled.status_code == 303
    rules = (await console.stack.client.get("/v1/routing/rules")).json()
    assert rules["version"] == 3
    audit = (await console.stack.client.get("/v1/audit")).json()["items"]
    assert [e["action"] for e in audit[:2]] == ["routing.rollback", "routing.save"]


async def test_the_overview_counts_what_is_dead_and_why(console: Console) -> None:
    async with signed_in(console.url) as client:
        page = await client.get("/console")
    assert '<span class="big bad">6</span>' in page.text
    assert (
        'href="/console/dead-letters?provider=sandbox-sms">sandbox-sms</a></td><td class="num">3'
        in page.text
    )
    assert "herald.sms.high" in page.text  # queue depths from RabbitMQ
    assert "breaker-closed" in page.text


async def test_sends_per_minute_buckets_attempts_by_minute(database_url: str) -> None:
    async with running_stack(stack_settings(database_url), workers=0, api=False) as stack:
        now = datetime(2026, 11, 22, 3, 30, 30, tzinfo=UTC)
        async with stack.sessions.begin() as session:
            await session.execute(
                insert(Notification).values(
                    id="n",
                    channel="sms",
                    to="+447400123456",
                    category="transactional",
                    priority="normal",
                    status="sent",
                    attempt_count=3,
                    created_at=now,
                    updated_at=now,
                )
            )
            for offset_s, outcome in (
                (0, "sent"),
                (-5, "transient_error"),
                (-70, "sent"),
                (-3600, "sent"),
            ):
                await session.execute(
                    insert(Attempt).values(
                        notification_id="n",
                        generation=0,
                        attempt_no=1,
                        provider="p",
                        outcome=outcome,
                        started_at=now + timedelta(seconds=offset_s),
                    )
                )
        minutes = await sends_per_minute(stack.sessions, minutes=15, now=now)
    assert len(minutes) == 15
    assert (minutes[-1].sent, minutes[-1].failed) == (1, 1)
    assert (minutes[-2].sent, minutes[-2].failed) == (1, 0)
    assert sum(m.sent for m in minutes) == 2  # an hour ago is outside the window


async def test_signing_out_ends_the_session(console: Console) -> None:
    """The attack: copy the session cookie, let its owner sign out, then reuse the copy.
    The server forgot the session at sign-out, so the copy gets the sign-in page (pages
    and forms alike) and changes nothing."""
    async with signed_in(console.url) as client:
        page = await client.get("/console/dead-letters")
        copied = client.cookies["herald_console"]
        token = csrf_of(page.text)
        response = await client.post("/console/logout", data={"csrf_token": token})
        assert response.status_code == 303
        assert 'herald_console=""' in response.headers["set-cookie"]
        after = await client.get("/console")
        assert after.status_code == 303
        assert after.headers["location"].startswith("/console/login")
    dead = await dead_letter_id(console, 0)
    async with httpx.AsyncClient(base_url=console.url) as thief:
        thief.cookies.set("herald_console", copied, path="/console")
        for path in ("/console", "/console/dead-letters", f"/console/dead-letters/{dead}"):
            reused = await thief.get(path)
            assert reused.status_code == 303, path
            assert reused.headers["location"].startswith("/console/login")
        replay = await thief.post(
            f"/console/dead-letters/{dead}/replay", data={"csrf_token": token}
        )
        assert replay.status_code == 303
        assert replay.headers["location"].startswith("/console/login")
    assert await state_of(console, 0) == "open"
    # Another session of the same key is not affected by this one's sign-out.
    async with signed_in(console.url) as other:
        assert (await other.get("/console")).status_code == 200


async def test_on_call_drains_a_provider_from_the_overview(console: Console) -> None:
    async with signed_in(console.url) as client:
        page = await client.get("/console")
        assert 'action="/console/providers/sandbox-sms/breaker"' in page.text
        response = await client.post(
            "/console/providers/sandbox-sms/breaker",
            data={"csrf_token": csrf_of(page.text), "state": "open"},
        )
        assert response.status_code == 303
    providers = (await console.stack.client.get("/v1/providers")).json()["items"]
    sms = next(p for p in providers if p["name"] == "sandbox-sms")
    assert (sms["breaker"], sms["override"]) == ("open", "open")
    [entry] = (
        await console.stack.client.get("/v1/audit", params={"action": "breaker.override"})
    ).json()["items"]
    assert (entry["actor"], entry["target"], entry["details"]) == (
        "bootstrap",
        "sandbox-sms",
        {"state": "open"},
    )
    async with signed_in(
        console.url, await key_with(console, "dlq:read", "routing:read")
    ) as reader:
        page = await reader.get("/console")
        assert "/breaker" not in page.text  # no override without routing:write
        refused = await reader.post(
            "/console/providers/sandbox-sms/breaker",
            data={"csrf_token": csrf_of(page.text), "state": "auto"},
        )
        assert refused.status_code == 403
