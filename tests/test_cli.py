"""The ``herald`` command line, run as a user would: a real process."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from herald.storage.db import make_engine, make_session_factory
from producer.auth import KeyStore
from tests.support.stack import ADMIN_KEY, Stack, as_env

HERALD = str(Path(sys.executable).with_name("herald"))

#: For the commands that talk to a running Herald over HTTP: what they prove is the
#: command line (arguments, output, exit codes), the same whatever database the server
#: has behind it, so they run against one (SQLite, as under ``herald dev``); the API and
#: the storage under it are tested on both databases in their own files.
_ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def over_http(test: Any) -> Any:
    return pytest.mark.integration(_ONE_DATABASE(test))


async def herald(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        HERALD, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_keys_create_prints_a_key_that_works_with_its_scopes(sqlite_url: str) -> None:
    env = as_env({"database_url": sqlite_url})
    code, out, _ = await herald(
        "keys", "create", "--name", "ops", "--scopes", "send,dlq:read", env=env
    )
    assert code == 0
    key = out.strip()
    engine = make_engine(sqlite_url)
    try:
        principal = await KeyStore(make_session_factory(engine)).authenticate(key)
    finally:
        await engine.dispose()
    assert principal is not None and principal.name == "ops"
    assert principal.allows("dlq:read") and not principal.allows("dlq:write")

    code, _, err = await herald("keys", "create", "--name", "x", "--scopes", "send,root", env=env)
    assert code == 2 and "unknown scopes: root" in err


async def test_config_show_masks_secrets() -> None:
    env = as_env(
        {
            "database_url": "postgresql+asyncpg://herald:pg-s3cret@db/herald",
            "otp_secret": "otp-s3cret",
            "bootstrap_api_key": "key-s3cret",
        }
    )
    code, out, _ = await herald("config", "show", env=env)
    assert code == 0
    assert "s3cret" not in out
    shown = json.loads(out)
    assert shown["database_url"] == "postgresql+asyncpg://herald:***@db/herald"
    assert shown["otp_secret"] == "***"


async def test_routing_validate_names_the_bad_path(tmp_path: Path) -> None:
    good = Path(__file__).parents[1] / "config" / "routing.yaml"
    code, out, _ = await herald("routing", "validate", str(good))
    assert code == 0 and "ok" in out
    bad = tmp_path / "rules.yaml"
    bad.write_text("providers: {a: {type: sandbox, channel: sms}}\nrules:\n  - tiers: [[a, b]]\n")
    code, _, err = await herald("routing", "validate", str(bad))
    assert code == 1 and "rules[0].tiers[0][1]" in err and "unknown provider 'b'" in err


@over_http
async def test_send_and_sandbox_commands_talk_to_a_running_herald(stack: Stack) -> None:
    env = as_env({"api_key": ADMIN_KEY})
    common = ["--url", stack.url]
    code, out, _ = await herald(
        "send",
        "--channel",
        "sms",
        "--to",
        "+447911123456",
        "--body",
        "from the CLI",
        *common,
        env=env,
    )
    assert code == 0
    nid = json.loads(out)["id"]
    await stack.wait_status(nid, "sent")

    code, out, _ = await herald("sandbox", "messages", "--id", nid, *common, env=env)
    assert code == 0 and json.loads(out)["items"][0]["body"] == "from the CLI"

    code, _, err = await herald(
        "send", "--channel", "sms", "--to", "+4412", "--body", "x", *common, env=env
    )
    assert code == 1 and "to: is not a valid phone number" in err

    code, out, _ = await herald(
        "sandbox", "set", "sandbox-sms", "--mode", "permanent", *common, env=env
    )
    assert code == 0 and json.loads(out)["mode"] == "permanent"


@over_http
async def test_routing_and_providers_commands(stack: Stack, tmp_path: Path) -> None:
    import yaml

    from tests.test_routing_api import two_sms_providers

    env = as_env({"api_key": ADMIN_KEY})
    common = ["--url", stack.url]
    code, out, err = await herald("routing", "get", *common, env=env)
    assert code == 0 and "version 1" in err and "sandbox-sms" in yaml.safe_load(out)["providers"]

    draft = tmp_path / "rules.yaml"
    draft.write_text(yaml.safe_dump(two_sms_providers()))
    code, out, _ = await herald(
        "routing",
        "simulate",
        "--channel",
        "sms",
        "--to",
        "+447400123456",
        "--file",
        str(draft),
        *common,
        env=env,
    )
    assert code == 0 and out.splitlines()[1].split()[2] == "sandbox-sms-cheap"

    code, out, _ = await herald(
        "routing", "put", str(draft), "--comment", "cheaper", *common, env=env
    )
    assert code == 0 and json.loads(out)["version"] == 2
    code, out, _ = await herald("routing", "versions", *common, env=env)
    assert out.splitlines()[0].split()[0] == "2" and "cheaper" in out
    code, out, _ = await herald("routing", "diff", *common, env=env)
    assert "+  sandbox-sms-cheap:" in out
    code, out, _ = await herald("routing", "rollback", "1", *common, env=env)
    assert json.loads(out)["version"] == 3

    code, out, _ = await herald("providers", "drain", "sandbox-sms", *common, env=env)
    assert json.loads(out)["breaker"] == "open"
    code, out, _ = await herald("providers", "list", *common, env=env)
    assert "open (forced)" in out
    code, out, _ = await herald("providers", "auto", "sandbox-sms", *common, env=env)
    assert json.loads(out)["override"] is None

    broken = tmp_path / "broken.yaml"
    broken.write_text("providers: {}\nrules: [{name: r, match: {}, tiers: [[ghost]]}]\n")
    code, _, err = await herald("routing", "put", str(broken), *common, env=env)
    assert code == 1 and "422" in err


@over_http
async def test_otp_commands(stack: Stack) -> None:
    import re

    env = as_env({"api_key": ADMIN_KEY})
    common = ["--url", stack.url]
    code, out, _ = await herald("otp", "send", "--to", "+447400123456", *common, env=env)
    assert code == 0
    nid = json.loads(out)["notification_id"]
    await stack.wait_status(nid, "sent")
    [message] = await stack.sandbox(nid)
    match = re.search(r"\d{6}", message["body"])
    assert match is not None
    code, out, _ = await herald(
        "otp", "verify", "--to", "+447400123456", "--code", match.group(0), *common, env=env
    )
    assert code == 0 and json.loads(out) == {"valid": True, "attempts_left": 4}


@over_http
async def test_dlq_commands(stack: Stack) -> None:
    env = as_env({"api_key": ADMIN_KEY})
    common = ["--url", stack.url]
    await stack.set_sandbox("sandbox-sms", "permanent")
    nid = (
        await stack.send(channel="sms", to="+447400123456", category="transactional", body="x")
    ).json()["id"]
    await stack.wait_status(nid, "failed")
    await stack.set_sandbox("sandbox-sms", "ok")
    for _ in range(100):  # the ingester stores it shortly after the failure
        if nid in (await stack.client.get("/v1/dlq")).text:
            break
        await asyncio.sleep(0.1)
    code, out, _ = await herald("dlq", "list", "--reason", "permanent_error", *common, env=env)
    assert code == 0 and "permanent_error" in out and "sandbox-sms" in out
    dead_id = out.splitlines()[1].split()[0]
    code, out, _ = await herald("dlq", "show", dead_id, *common, env=env)
    assert json.loads(out)["notification_id"] == nid
    code, out, _ = await herald(
        "dlq", "replay", dead_id, "--reason", "vendor fixed", *common, env=env
    )
    assert code == 0 and json.loads(out)["status"] == "accepted"
    await stack.wait_status(nid, "sent")
    code, _, err = await herald("dlq", "discard", dead_id, "--reason", "too late", *common, env=env)
    assert code == 1 and "409" in err


@over_http
async def test_dlq_replay_all_with_progress(stack: Stack) -> None:
    from tests.test_dlq_replay import fail_many

    env = as_env({"api_key": ADMIN_KEY})
    common = ["--url", stack.url]
    ids = await fail_many(stack, 6)
    code, out, _ = await herald("dlq", "replay-all", "--dry-run", *common, env=env)
    assert code == 0 and json.loads(out)["count"] == 6
    code, out, _ = await herald("dlq", "replay-all", "--max-per-s", "20", *common, env=env)
    assert code == 0 and "replayed 6, skipped 0" in out
    await stack.wait_all_terminal(ids)
    assert set((await stack.statuses(ids)).values()) == {"sent"}
