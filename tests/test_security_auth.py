"""Issue 10, findings 4, 12, 13, 14 and 16, each written as the attack: a production
process on the default secrets, passwords in `config show`, guessing API keys and
console sign-ins, a spoofed client address, and a revoked key that keeps working."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis.asyncio import Redis
from sqlalchemy import select

from config.settings import DEV_OTP_SECRET, Settings
from dlq.console.session import ConsoleSession, SessionStore, SessionsUnavailable
from herald.signing import console_key
from herald.storage.models import ApiKey
from producer.auth import KeyStore
from producer.forwarded import throttle_subject, trusted
from tests.support.console import csrf_of
from tests.support.stack import (
    ADMIN_KEY,
    TEST_AMQP_URL,
    TEST_REDIS_URL,
    ApiProcess,
    Stack,
    as_env,
    free_port,
    running_stack,
    stack_settings,
)
from tests.test_cli import herald

LONG = "0123456789abcdef0123456789abcdef"

# Finding 4: no production start on the default secrets -----------------------------


def production(**values: Any) -> dict[str, str]:
    """The environment of an operator who set everything but what ``values`` says."""
    base: dict[str, Any] = {
        "database_url": "sqlite+aiosqlite:////nonexistent/never-opened.db",
        "api_port": free_port(),
        "metrics_port": None,
        "otp_secret": "otp-" + LONG,
        "console_secret": "console-" + LONG,
    }
    base.update(values)
    return as_env({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    ("command", "values", "variable"),
    [
        ("api", {"otp_secret": None}, "HERALD_OTP_SECRET"),  # the built-in default
        ("api", {"otp_secret": DEV_OTP_SECRET}, "HERALD_OTP_SECRET"),
        ("api", {"otp_secret": "short-secret"}, "HERALD_OTP_SECRET"),
        ("api", {"console_secret": None}, "HERALD_CONSOLE_SECRET"),
        ("api", {"console_secret": "otp-" + LONG}, "HERALD_CONSOLE_SECRET"),  # = OTP secret
        ("api", {"bootstrap_api_key": "dev-admin-key"}, "HERALD_BOOTSTRAP_API_KEY"),
        ("worker", {"otp_secret": None}, "HERALD_OTP_SECRET"),
        ("worker", {"otp_secret": "short-secret"}, "HERALD_OTP_SECRET"),
    ],
)
async def test_api_and_worker_refuse_to_start_on_default_or_missing_secrets(
    command: str, values: dict[str, Any], variable: str
) -> None:
    code, out, err = await herald(command, env=production(**values))
    assert code == 78, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one clear line, no traceback
    assert lines[0].startswith("herald: refusing to start:")
    assert variable in lines[0]
    assert "Traceback" not in err


async def test_the_api_refuses_the_default_secret_before_opening_anything(tmp_path: Path) -> None:
    """Nothing is started: no database file is created, the port stays free."""
    db = tmp_path / "herald.db"
    env = production(otp_secret=None, database_url=f"sqlite+aiosqlite:///{db}")
    port = int(env["HERALD_API_PORT"])
    code, _, err = await herald("api", env=env)
    assert code == 78 and "HERALD_OTP_SECRET" in err
    assert not db.exists()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/healthz")


class DevProcess(ApiProcess):
    command = "dev"


@pytest.mark.integration
async def test_herald_dev_starts_with_no_secrets_at_all(tmp_path: Path) -> None:
    """``make run`` on a fresh machine: no OTP or console secret, the public dev key."""
    values = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/herald.db",
        "amqp_url": TEST_AMQP_URL,
        "redis_url": TEST_REDIS_URL,
        "api_port": free_port(),
        "metrics_port": None,
        "bootstrap_api_key": "dev-admin-key",
        "log_level": "WARNING",
    }
    dev = DevProcess(values, tmp_path / "dev.log").start()
    try:
        url = await dev.wait_ready()
        async with httpx.AsyncClient(base_url=url) as client:
            listed = await client.get("/v1/dlq", headers={"Authorization": "Bearer dev-admin-key"})
            assert listed.status_code == 200, listed.text
            assert (await client.get("/console/login")).status_code == 200
        assert await asyncio.to_thread(dev.terminate) == 0
    finally:
        dev.close()


def test_dev_mode_needs_no_secrets_and_derives_the_console_key() -> None:
    """``herald dev`` (``make run`` on a fresh machine) starts with no settings at all."""
    dev = Settings(dev_mode=True)
    assert dev.insecure_secrets() == []
    assert len(console_key(dev)) == 32
    assert Settings(otp_secret=LONG, console_secret="c" + LONG).insecure_secrets() == []


COMPOSE_FILE = Path(__file__).parents[1] / "docker-compose.yml"
COMPOSE_SECRETS = ("HERALD_BOOTSTRAP_API_KEY", "HERALD_OTP_SECRET", "HERALD_CONSOLE_SECRET")


def test_docker_compose_requires_the_key_and_secrets_and_ships_no_default() -> None:
    """The published API must not come up with ``dev-admin-key`` or a known secret."""
    environment = yaml.safe_load(COMPOSE_FILE.read_text())["x-herald-env"]
    for name in COMPOSE_SECRETS:
        assert environment[name].startswith(f"${{{name}:?"), environment[name]
    assert "dev-admin-key" not in COMPOSE_FILE.read_text()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose here")
def test_docker_compose_config_fails_without_the_secrets() -> None:
    def config(**values: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
        return subprocess.run(
            ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
            env={**env, **values},
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = config()
    assert missing.returncode != 0 and "HERALD_BOOTSTRAP_API_KEY" in missing.stderr
    assert config(**{name: "x" * 40 for name in COMPOSE_SECRETS}).returncode == 0


# Finding 12: `herald config show` masks passwords in query parameters ----------------


async def test_config_show_masks_passwords_given_as_query_parameters() -> None:
    env = as_env(
        {
            "amqp_url": "amqp://mq.internal/?password=amqp-s3cret&heartbeat=30",
            "redis_url": "redis://cache.internal/0?password=redis-s3cret",
            "database_url": "postgresql+asyncpg://herald:pg-s3cret@db/herald?sslpassword=ssl-s3cret",
            "console_secret": "console-s3cret-" + LONG,
            "bootstrap_api_key": "key-s3cret",
        }
    )
    code, out, _ = await herald("config", "show", env=env)
    assert code == 0
    assert "s3cret" not in out
    shown = json.loads(out)
    assert shown["amqp_url"] == "amqp://mq.internal/?password=***&heartbeat=30"
    assert shown["redis_url"] == "redis://cache.internal/0?password=***"
    assert shown["database_url"] == "postgresql+asyncpg://herald:***@db/herald?sslpassword=***"
    assert shown["console_secret"] == "***"


# Finding 13: failed keys are throttled per address and overall ----------------------


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    """The default failed-key limits (20 at once per address, then 10 a minute)."""
    values = stack_settings(sqlite_url)
    for name in ("limit_auth_failures_client", "limit_auth_failures_global"):
        values.pop(name, None)
    async with running_stack(values, workers=0) as s:
        yield s


async def guess(client: httpx.AsyncClient, n: int, **headers: str) -> list[httpx.Response]:
    return [
        await client.get("/v1/dlq", headers={"Authorization": f"Bearer hk_guess{i:04}", **headers})
        for i in range(n)
    ]


async def test_two_hundred_wrong_keys_from_one_address_are_throttled(stack: Stack) -> None:
    """The attack: 200 wrong keys as fast as one client can send them."""
    async with httpx.AsyncClient(base_url=stack.url) as attacker:
        answers = await guess(attacker, 200)
    counts = Counter(r.status_code for r in answers)
    assert set(counts) == {401, 429}
    # 20 at once, then 10 a minute: the run takes seconds, so a refill or two at most.
    assert 20 <= counts[401] <= 22, counts
    refused = answers[-1]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"][0]["field"] == "authorization"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Nothing was learnt: a throttled guess is not even checked, valid or not.
    assert counts[429] >= 178


async def test_a_known_key_keeps_working_from_a_throttled_address(stack: Stack) -> None:
    """The admin key worked from this address before the storm; a key first used from
    the throttled address waits like a guess (it cannot be told from one unchecked)."""
    fresh = await KeyStore(stack.sessions).create("fresh", ["dlq:read"])
    assert (await stack.client.get("/v1/dlq")).status_code == 200
    async with httpx.AsyncClient(base_url=stack.url) as attacker:
        await guess(attacker, 30)
    # Past the process's cache, so the known key is looked up again, not served cached.
    keys: KeyStore = stack._server.config.app.state.keys
    keys._cache.clear()
    known = await stack.client.get("/v1/dlq", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert known.status_code == 200
    unseen = await stack.client.get("/v1/dlq", headers={"Authorization": f"Bearer {fresh}"})
    assert unseen.status_code == 429


async def test_console_sign_in_is_throttled_the_same(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as attacker:
        login = await attacker.get("/console/login")
        token = csrf_of(login.text)
        statuses = [
            (
                await attacker.post(
                    "/console/login", data={"api_key": f"guess-{i}", "csrf_token": token}
                )
            ).status_code
            for i in range(40)
        ]
        assert statuses.count(401) <= 22 and statuses[-1] == 429
        refused = await attacker.post(
            "/console/login", data={"api_key": "guess-x", "csrf_token": token}
        )
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        assert "Too many failed sign-ins" in refused.text
        assert "herald_console=" not in refused.headers.get("set-cookie", "")


async def test_failures_from_many_addresses_hit_the_global_limit(sqlite_url: str) -> None:
    """Spread over addresses (through a trusted proxy), guesses still meet the total."""
    values = stack_settings(
        sqlite_url,
        trusted_proxies=["127.0.0.1"],
        limit_auth_failures_global={"rate": 1, "period_s": 60, "burst": 10},
    )
    async with running_stack(values, workers=0) as s, httpx.AsyncClient(base_url=s.url) as c:
        statuses = [
            (
                await c.get(
                    "/v1/dlq",
                    headers={"Authorization": "Bearer nope", "X-Forwarded-For": f"203.0.113.{i}"},
                )
            ).status_code
            for i in range(30)
        ]
    assert statuses.count(401) <= 11 and statuses[-1] == 429


# Finding 14: forwarded headers only from trusted proxies -----------------------------


async def test_a_spoofed_x_forwarded_for_does_not_escape_the_throttle(stack: Stack) -> None:
    """The attack: a fresh X-Forwarded-For per guess, hoping each counts as a new client.
    No proxy is trusted by default, so every guess counts against the real peer."""
    async with httpx.AsyncClient(base_url=stack.url) as attacker:
        answers = [
            await attacker.get(
                "/v1/dlq",
                headers={"Authorization": f"Bearer g{i}", "X-Forwarded-For": f"198.51.100.{i}"},
            )
            for i in range(60)
        ]
    assert Counter(r.status_code for r in answers)[401] <= 22
    assert answers[-1].status_code == 429


async def test_a_trusted_proxy_names_the_client(sqlite_url: str) -> None:
    """Behind a trusted proxy each real client has its own bucket, read from the right of
    X-Forwarded-For (a client cannot prepend its way into another's bucket)."""
    values = stack_settings(
        sqlite_url,
        trusted_proxies=["127.0.0.0/8"],
        limit_auth_failures_client={"rate": 1, "period_s": 60, "burst": 3},
    )
    async with running_stack(values, workers=0) as s, httpx.AsyncClient(base_url=s.url) as c:

        async def status(forwarded: str) -> int:
            headers = {"Authorization": "Bearer nope", "X-Forwarded-For": forwarded}
            return (await c.get("/v1/dlq", headers=headers)).status_code

        assert [await status("198.51.100.7") for _ in range(4)] == [401, 401, 401, 429]
        assert await status("198.51.100.8") == 401  # another client behind the proxy
        assert await status("198.51.100.8, 198.51.100.7") == 429  # spoofed left, real right
        assert await status("198.51.100.7, 127.0.0.1") == 429  # a second trusted hop


# Finding 16: revoked keys stop working within the stated bound -----------------------


async def api_key_answers(stack: Stack, key: str) -> int:
    response = await stack.client.get("/v1/dlq", headers={"Authorization": f"Bearer {key}"})
    return response.status_code


async def refused_within(stack: Stack, key: str, seconds: float) -> float:
    """Seconds until ``key`` got 401; fails if it still works after ``seconds``."""
    started = time.monotonic()
    while (status := await api_key_answers(stack, key)) == 200:
        assert time.monotonic() - started < seconds, f"still accepted after {seconds} s"
        await asyncio.sleep(0.05)
    assert status == 401
    return time.monotonic() - started


async def test_keys_revoke_is_broadcast_to_running_processes(sqlite_url: str) -> None:
    """With a 5-minute cache, only the broadcast can make the refusal this quick."""
    values = stack_settings(sqlite_url, api_key_cache_s=300)
    async with running_stack(values, workers=0) as stack:
        key = await KeyStore(stack.sessions).create("ops-laptop", ["dlq:read"])
        assert await api_key_answers(stack, key) == 200  # cached now
        env = as_env(values)
        code, out, err = await herald("keys", "revoke", "ops-laptop", env=env)
        assert code == 0, err
        assert "ops-laptop" in out and "revoked" in out
        await refused_within(stack, key, 5)
        code, out, _ = await herald("keys", "list", env=env)
        assert code == 0 and "ops-laptop" in out and "revoked" in out


async def test_a_revocation_missed_by_a_process_holds_within_the_cache_bound(
    sqlite_url: str,
) -> None:
    """Revoked straight in the database (no broadcast): the cache is the bound."""
    values = stack_settings(sqlite_url, api_key_cache_s=1)
    async with running_stack(values, workers=0) as stack:
        store = KeyStore(stack.sessions)
        key = await store.create("batch-job", ["dlq:read"])
        assert await api_key_answers(stack, key) == 200
        revoked = await store.revoke("batch-job")  # no announce_revoked
        assert not revoked.already
        await refused_within(stack, key, 1 + 2)


async def key_ids(stack: Stack) -> dict[str, str]:
    async with stack.sessions() as session:
        rows = await session.execute(select(ApiKey.id, ApiKey.name))
        return {row.id: row.name for row in rows}


async def test_keys_revoke_by_an_ambiguous_or_unknown_name_changes_nothing(
    sqlite_url: str,
) -> None:
    values = stack_settings(sqlite_url)
    async with running_stack(values, workers=0) as stack:
        store = KeyStore(stack.sessions)
        first = await store.create("first", ["dlq:read"])
        [first_id] = [k for k, _ in (await key_ids(stack)).items() if _ == "first"]
        second = await store.create(first_id, ["dlq:read"])  # named like the other's id
        env = as_env(values)
        code, _, err = await herald("keys", "revoke", first_id, env=env)
        assert code == 1 and "names 2 keys" in err
        code, _, err = await herald("keys", "revoke", "nobody", env=env)
        assert code == 1 and "no key" in err
        assert await api_key_answers(stack, first) == 200
        assert await api_key_answers(stack, second) == 200


@pytest.mark.parametrize(
    ("address", "subject"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # one subscriber's /64 is one client
        ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("", "unknown"),
    ],
)
def test_failed_keys_count_per_address_and_per_ipv6_64(address: str, subject: str) -> None:
    assert throttle_subject(address) == subject


def test_only_listed_proxies_are_trusted() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert trusted("10.1.2.3", proxies) and trusted("::1", proxies)
    assert not trusted("11.0.0.1", proxies)
    assert not trusted("not-an-ip", proxies)
    assert not trusted("10.1.2.3", [])  # the default: nobody


@pytest.mark.parametrize("trusted_proxy", [False, True])
async def test_the_console_cookie_is_secure_when_a_trusted_proxy_says_https(
    sqlite_url: str, trusted_proxy: bool
) -> None:
    """uvicorn's own proxy headers are off; the cookie's Secure flag follows the scheme
    a trusted TLS proxy reports, and no client can flip it by sending the header."""
    proxies = ["127.0.0.1"] if trusted_proxy else []
    values = stack_settings(sqlite_url, trusted_proxies=proxies)
    async with running_stack(values, workers=0) as s, httpx.AsyncClient(base_url=s.url) as c:
        login = await c.get("/console/login")
        response = await c.post(
            "/console/login",
            data={"api_key": ADMIN_KEY, "csrf_token": csrf_of(login.text)},
            headers={"X-Forwarded-Proto": "https"},
        )
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("herald_console=")
    )
    assert ("Secure" in cookie) is trusted_proxy


async def test_console_sessions_fail_closed_without_redis() -> None:
    """A cookie alone never signs anyone in: with Redis unreachable the console cannot
    tell a live session from a signed-out one, so it refuses (the pages answer 503)."""
    unreachable = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    store = SessionStore(unreachable, ttl_s=60)
    try:
        for call in (
            store.start("key-id"),
            store.active(ConsoleSession("key-id", "nonce")),
            store.end(ConsoleSession("key-id", "nonce")),
        ):
            with pytest.raises(SessionsUnavailable):
                await call
    finally:
        await unreachable.aclose()
