"""A console user in tests: signs in through the login form like a browser and posts
forms with the CSRF token the pages carry."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select

from herald.storage.models import DeadLetter
from tests.support.stack import ADMIN_KEY, Stack

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "Hi"}
EMAIL = {
    "channel": "email",
    "to": "ops@example.com",
    "category": "transactional",
    "subject": "Hello",
    "body": "Hi",
}


def csrf_of(html: str) -> str:
    found = TOKEN.search(html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


@contextlib.asynccontextmanager
async def signed_in(url: str, key: str = ADMIN_KEY) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client signed in to the console at ``url`` with ``key``."""
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        login = await client.get("/console/login")
        response = await client.post(
            "/console/login",
            data={"api_key": key, "csrf_token": csrf_of(login.text), "next": "/console"},
        )
        assert response.status_code == 303, response.text
        yield client


async def post_form(
    client: httpx.AsyncClient, page: str, action: str, **fields: Any
) -> httpx.Response:
    """Open ``page``, take its CSRF token and post ``fields`` to ``action``."""
    html = (await client.get(page)).text
    return await client.post(action, data={"csrf_token": csrf_of(html), **fields})


async def dead_letters_from(stack: Stack, messages: list[dict[str, Any]]) -> list[str]:
    """Send ``messages`` while the sandbox refuses them for good, wait until each is a
    stored dead letter, then let the sandbox deliver again (so replays can succeed)."""
    providers = [f"sandbox-{m['channel']}" for m in messages]
    for provider in set(providers):
        await stack.set_sandbox(provider, "permanent")
    nids = [(await stack.send(**m)).json()["id"] for m in messages]
    for nid in nids:
        await stack.wait_status(nid, "failed")
    for provider in set(providers):
        await stack.set_sandbox(provider, "ok")
    for _ in range(150):
        async with stack.sessions() as session:
            stored = (await session.execute(select(DeadLetter.notification_id))).scalars()
            if set(nids) <= set(stored):
                return nids
        await asyncio.sleep(0.1)
    raise AssertionError("the dead letters were not stored")
