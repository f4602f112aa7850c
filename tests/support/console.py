"""A console user in tests: signs in through the login form like a browser and posts
forms with the CSRF token the pages carry."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.support.stack import ADMIN_KEY

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


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
