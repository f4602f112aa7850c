"""Issue 10, findings 1 and 3, as the attacks: a rules editor trying to read the server's
secrets and send them to an endpoint of their own, and routing documents built to stall
the server. Each test makes the request the issue shows, then checks the refusal and that
nothing leaked, changed or was sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from herald.cli import app as cli
from herald.storage.db import make_engine, make_session_factory
from producer.auth import KeyStore
from providers.credentials import CredentialRefused, EndpointRefused, VendorPolicy
from providers.registry import ProviderDeps, build_provider
from router.rules import DocumentRefused, load_json, load_yaml
from router.store import RulesStore
from router.validation import MAX_ISSUES, RulesInvalid, RulesPolicy, validate_document
from tests.fakes.msg91_api import FakeMsg91
from tests.support.console import post_form, signed_in
from tests.support.stack import Stack, running_stack, stack_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "hello"}
MESSAGE = {k: SMS[k] for k in ("channel", "to", "category")}
OTP_SECRET = "test-otp-secret-0123456789abcdef0123456789"
MSG91_KEY = "msg91-vendor-key"


class CountingListener:
    """The attacker's endpoint: a TCP listener that counts every connection and answers
    any HTTP request with a 200 (so a request that reached it would look delivered)."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            self.received += await asyncio.wait_for(reader.read(65536), 2)
            body = b'{"type": "success", "message": "ok"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CountingListener]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            yield self


def default_rules() -> dict[str, Any]:
    return {
        "providers": {
            "sandbox-sms": {"type": "sandbox", "channel": "sms", "cost": {"default": 0.01}},
            "sandbox-email": {"type": "sandbox", "channel": "email", "cost": {"default": 0}},
            "sandbox-push": {"type": "sandbox", "channel": "push", "cost": {"default": 0}},
        },
        "rules": [
            {"name": "sms-default", "match": {"channel": "sms"}, "tiers": [["sandbox-sms"]]},
            {"name": "email-default", "match": {"channel": "email"}, "tiers": [["sandbox-email"]]},
            {"name": "push-default", "match": {"channel": "push"}, "tiers": [["sandbox-push"]]},
        ],
    }


def with_msg91(doc: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with an msg91 provider ``msg91-in`` put first in the SMS tier (cheapest)."""
    doc["providers"]["msg91-in"] = {"type": "msg91", "channel": "sms", **spec}
    doc["rules"][0]["tiers"] = [["msg91-in", "sandbox-sms"]]
    return doc


def exfiltrating_msg91(endpoint: str) -> dict[str, Any]:
    """The issue's request: the OTP secret and the admin key as msg91 credentials."""
    return {
        "cost": {"default": 0.001},
        "endpoint": endpoint,
        "credentials": {
            "auth_key": "env:HERALD_OTP_SECRET",
            "template_id": "env:HERALD_BOOTSTRAP_API_KEY",
        },
    }


def routing_file(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


async def key(stack: Stack, *scopes: str) -> dict[str, str]:
    created = await KeyStore(stack.sessions).create(f"key-{'-'.join(scopes)}", list(scopes))
    return {"Authorization": f"Bearer {created}"}


async def put_rules(stack: Stack, doc: Any, headers: dict[str, str] | None = None) -> Any:
    etag = (await stack.client.get("/v1/routing/rules")).headers["etag"]
    return await stack.client.put(
        "/v1/routing/rules", json=doc, headers={**(headers or {}), "If-Match": etag}
    )


async def in_force(stack: Stack) -> dict[str, Any]:
    body: dict[str, Any] = (await stack.client.get("/v1/routing/rules")).json()
    return body


def fields(response: Any) -> list[str]:
    assert response.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in response.json()["errors"]]


# Finding 1: credentials and endpoints are the operator's ---------------------------------


@pytest.fixture
def herald_secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets a real deployment has in its environment, where env: would find them."""
    monkeypatch.setenv("HERALD_OTP_SECRET", OTP_SECRET)
    monkeypatch.setenv("HERALD_BOOTSTRAP_API_KEY", "test-admin-key")
    monkeypatch.setenv("HERALD_AMQP_URL", "amqp://herald:broker-password@10.0.0.5:5672/")


async def test_a_rules_editor_cannot_send_the_otp_secret_and_admin_key_to_its_endpoint(
    database_url: str, herald_secrets_in_env: None
) -> None:
    async with (
        CountingListener().running() as listener,
        running_stack(stack_settings(database_url)) as stack,
    ):
        attack = with_msg91(default_rules(), exfiltrating_msg91(listener.url))
        before = await in_force(stack)

        editor = await key(stack, "routing:read", "routing:write")
        refused = await put_rules(stack, attack, editor)
        assert refused.status_code == 403, refused.text
        assert fields(refused) == ["providers.msg91-in.endpoint", "providers.msg91-in.credentials"]

        # Even an admin may not: the names and the endpoint are outside the operator's.
        as_admin = await put_rules(stack, attack)
        assert as_admin.status_code == 422, as_admin.text
        assert fields(as_admin) == [
            "providers.msg91-in.credentials.auth_key",
            "providers.msg91-in.credentials.template_id",
            "providers.msg91-in.endpoint",
        ]
        assert OTP_SECRET not in as_admin.text and "test-admin-key" not in as_admin.text

        sent = await stack.send(**SMS)
        done = await stack.wait_status(sent.json()["id"], "sent")
        assert [a["provider"] for a in done["attempts"]] == ["sandbox-sms"]
        assert listener.connections == 0, listener.received
        after = await in_force(stack)
        assert (after["version"], after["document"]) == (before["version"], before["document"])


async def test_an_smtp_from_address_cannot_carry_the_broker_password(
    sqlite_url: str, herald_secrets_in_env: None
) -> None:
    async with running_stack(stack_settings(sqlite_url), workers=0) as stack:
        doc = default_rules()
        doc["providers"]["mail"] = {
            "type": "smtp",
            "channel": "email",
            "endpoint": "smtp.example.com:587",
            "credentials": {"from": "env:HERALD_AMQP_URL"},
        }
        doc["rules"][1]["tiers"] = [["mail", "sandbox-email"]]
        editor = await key(stack, "routing:read", "routing:write")
        assert (await put_rules(stack, doc, editor)).status_code == 403
        refused = await put_rules(stack, doc)
        assert refused.status_code == 422
        assert fields(refused) == ["providers.mail.credentials.from", "providers.mail.endpoint"]
        assert "broker-password" not in refused.text
        assert (await in_force(stack))["version"] == 1


async def test_validation_is_no_oracle_for_the_hosts_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = with_msg91(default_rules(), {"credentials": {"auth_key": "env:AWS_SECRET_ACCESS_KEY"}})
    async with running_stack(stack_settings(sqlite_url), workers=0) as stack:
        answers = []
        for present in (False, True):
            if present:
                monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
            else:
                monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
            api = await put_rules(stack, doc)
            async with signed_in(stack.url) as console:
                typed = await post_form(
                    console,
                    "/console/routing",
                    "/console/routing/validate",
                    document=yaml.safe_dump(doc),
                )
            answers.append((api.status_code, api.json()["errors"], typed.text))
        assert answers[0] == answers[1], "the answer must not depend on the variable existing"
        assert answers[0][0] == 422 and "is not set" not in str(answers[0])
        assert "aws-secret-value" not in str(answers[1])


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "http://0xa9fea9fe/",
        "http://169.254.169.254./",
        "http://0251.0376.0251.0376/",
        "http://[fe80::1]/",
        "http://0.0.0.0:8000/",
        "http://vendor.example.com/",  # plain http outside dev mode, though the host is listed
        "http://127.0.0.1:9/",  # loopback outside dev mode, not listed
        "https://attacker.example.net/",
        "https://user:pass@vendor.example.com/",
    ],
)
def test_endpoints_outside_the_allow_list_are_refused(endpoint: str) -> None:
    policy = RulesPolicy(VendorPolicy.build(["HERALD_VENDOR_"], ["https://vendor.example.com"]))
    doc = with_msg91(default_rules(), {"endpoint": endpoint})
    found = [i for i in validate_document(doc, policy=policy, env={}) if i.severity == "error"]
    assert [i.path for i in found] == ["providers.msg91-in.endpoint"]
    deps = ProviderDeps(sandbox_store=None, redis=None, policy=policy.vendor)  # type: ignore[arg-type]
    with pytest.raises(EndpointRefused):
        build_provider("msg91-in", doc["providers"]["msg91-in"], deps)


def test_the_operator_cannot_allow_link_local_or_remote_plain_http() -> None:
    for entry in (
        "http://169.254.169.254",
        "https://[::ffff:169.254.169.254]",
        "https://169.254.169.254.",
        "169.254.169.254:25",
        "http://10.0.0.7",
    ):
        with pytest.raises(ValueError, match="HERALD_ALLOWED_ENDPOINTS"):
            VendorPolicy.build(["HERALD_VENDOR_"], [entry])


def test_herald_settings_are_refused_whatever_the_operator_allows() -> None:
    policy = RulesPolicy(VendorPolicy.build(["HERALD_", "HERALD_VENDOR_"], []))
    doc = with_msg91(
        default_rules(),
        {
            "credentials": {
                "auth_key": "env:HERALD_OTP_SECRET",
                "template_id": "env:herald_console_secret",
                "sender": "env:HERALD_VENDOR_SENDER",
            }
        },
    )
    found = validate_document(doc, policy=policy, env={"HERALD_VENDOR_SENDER": "HRLD"})
    assert [i.path for i in found if i.severity == "error"] == [
        "providers.msg91-in.credentials.auth_key",
        "providers.msg91-in.credentials.template_id",
    ]
    deps = ProviderDeps(sandbox_store=None, redis=None, policy=policy.vendor)  # type: ignore[arg-type]
    with pytest.raises(CredentialRefused):
        build_provider("msg91-in", doc["providers"]["msg91-in"], deps)


def test_dev_mode_allows_loopback_but_never_link_local() -> None:
    policy = RulesPolicy(VendorPolicy(dev_mode=True))
    local = with_msg91(default_rules(), {"endpoint": "http://127.0.0.1:18399"})
    assert not [i for i in validate_document(local, policy=policy, env={}) if i.severity == "error"]
    metadata = with_msg91(default_rules(), {"endpoint": "http://169.254.169.254"})
    found = validate_document(metadata, policy=policy, env={})
    assert [i.path for i in found if i.severity == "error"] == ["providers.msg91-in.endpoint"]


@pytest.fixture
async def msg91() -> AsyncIterator[tuple[FakeMsg91, str]]:
    fake = FakeMsg91(auth_key=MSG91_KEY)
    async with fake.running() as url:
        yield fake, url


@pytest.fixture
def vendor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_VENDOR_MSG91_AUTH_KEY", MSG91_KEY)
    monkeypatch.setenv("HERALD_VENDOR_MSG91_TEMPLATE", "tmpl-1")


def vendor_msg91(endpoint: str, cost: float = 0.001) -> dict[str, Any]:
    return {
        "cost": {"default": cost},
        "endpoint": endpoint,
        "credentials": {
            "auth_key": "env:HERALD_VENDOR_MSG91_AUTH_KEY",
            "template_id": "env:HERALD_VENDOR_MSG91_TEMPLATE",
        },
    }


async def test_an_admin_can_route_through_an_allow_listed_endpoint(
    sqlite_url: str, msg91: tuple[FakeMsg91, str], vendor_env: None
) -> None:
    fake, url = msg91
    async with running_stack(stack_settings(sqlite_url, allowed_endpoints=[url])) as stack:
        saved = await put_rules(stack, with_msg91(default_rules(), vendor_msg91(url)))
        assert saved.status_code == 200, saved.text
        await stack.workers_on_rules(saved.json()["version"])
        await wait_until(lambda: "msg91-in" in stack._workers[0][1].worker.providers)
        sent = await stack.send(**SMS)
        done = await stack.wait_status(sent.json()["id"], "sent")
        assert [a["provider"] for a in done["attempts"]] == ["msg91-in"]
        assert [r["mobiles"] for r in fake.received] == ["447400123456"]
        assert fake.received[0]["template_id"] == "tmpl-1"


async def test_routing_write_changes_costs_but_not_where_credentials_go(
    sqlite_url: str, tmp_path: Path, msg91: tuple[FakeMsg91, str], vendor_env: None
) -> None:
    _, url = msg91
    doc = with_msg91(default_rules(), vendor_msg91(url))
    values = stack_settings(sqlite_url, routing_file=routing_file(tmp_path, doc))
    async with running_stack(values, workers=0) as stack:
        editor = await key(stack, "routing:read", "routing:write")
        cheaper = with_msg91(default_rules(), vendor_msg91(url, cost=0.0005))
        cheaper["providers"]["msg91-in"]["max_per_s"] = 20
        cheaper["rules"][0]["tiers"] = [["sandbox-sms", {"provider": "msg91-in", "weight": 3}]]
        assert (await put_rules(stack, cheaper, editor)).status_code == 200

        changes: list[tuple[dict[str, Any], str]] = [
            ({"endpoint": "https://attacker.example.net"}, "providers.msg91-in.endpoint"),
            ({"type": "twilio"}, "providers.msg91-in.type"),
            (
                {"credentials": {"auth_key": "env:HERALD_VENDOR_OTHER", "template_id": "x"}},
                "providers.msg91-in.credentials.auth_key",
            ),
        ]
        for change, field in changes:
            moved = with_msg91(default_rules(), {**vendor_msg91(url, 0.0005), **change})
            refused = await put_rules(stack, moved, editor)
            assert refused.status_code == 403, refused.text
            assert field in fields(refused)
        assert (await in_force(stack))["version"] == 2

        # Back to the routing file: only costs and weights differ, so routing:write may.
        back = await stack.client.post(
            "/v1/routing/rules/rollback", json={"version": 1}, headers=editor
        )
        assert back.status_code == 200, back.text
        assert (await in_force(stack))["document"] == doc


async def test_rollback_across_a_credential_change_needs_admin(
    sqlite_url: str,
    tmp_path: Path,
    msg91: tuple[FakeMsg91, str],
    vendor_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = msg91
    monkeypatch.setenv("HERALD_VENDOR_MSG91_NEW_KEY", "rotated")
    doc = with_msg91(default_rules(), vendor_msg91(url))
    values = stack_settings(sqlite_url, routing_file=routing_file(tmp_path, doc))
    async with running_stack(values, workers=0) as stack:
        rotated = with_msg91(default_rules(), vendor_msg91(url))
        rotated["providers"]["msg91-in"]["credentials"]["auth_key"] = (
            "env:HERALD_VENDOR_MSG91_NEW_KEY"
        )
        assert (await put_rules(stack, rotated)).status_code == 200  # an admin rotates it
        editor = await key(stack, "routing:read", "routing:write")
        refused = await stack.client.post(
            "/v1/routing/rules/rollback", json={"version": 1}, headers=editor
        )
        assert refused.status_code == 403, refused.text
        assert fields(refused) == ["providers.msg91-in.credentials.auth_key"]
        async with signed_in(stack.url, editor["Authorization"].removeprefix("Bearer ")) as c:
            etag = (await stack.client.get("/v1/routing/rules")).headers["etag"]
            console = await post_form(
                c, "/console/routing", "/console/routing/rollback", version="1", etag=etag
            )
        assert console.status_code == 403 and "credentials.auth_key" in console.text
        assert (await in_force(stack))["version"] == 2
        back = await stack.client.post("/v1/routing/rules/rollback", json={"version": 1})
        assert back.status_code == 200, "an admin may"


async def test_a_stored_pre_fix_document_with_a_bad_endpoint_is_never_built(
    sqlite_url: str, tmp_path: Path, vendor_env: None
) -> None:
    async with (
        CountingListener().running() as listener,
        running_stack(stack_settings(sqlite_url)) as stack,
    ):
        # Saved straight into the store, as an edit before this fix would have been.
        bad = with_msg91(default_rules(), vendor_msg91(listener.url))
        store = RulesStore(stack.sessions, tmp_path / "unused.yaml")
        saved = await store.save(bad, if_match="*", who="before-the-fix")
        worker = stack._workers[0][1].worker
        await stack.workers_on_rules(saved.version)
        assert "msg91-in" not in worker.providers and "sandbox-sms" in worker.providers

        sent = await stack.send(**SMS)
        done = await stack.wait_status(sent.json()["id"], "sent")
        assert [a["provider"] for a in done["attempts"]] == ["sandbox-sms"]
        assert listener.connections == 0


async def test_simulating_a_draft_builds_no_provider_and_sends_nothing(
    sqlite_url: str, msg91: tuple[FakeMsg91, str], vendor_env: None
) -> None:
    fake, url = msg91
    async with running_stack(
        stack_settings(sqlite_url, allowed_endpoints=[url]), workers=0
    ) as stack:
        draft = with_msg91(default_rules(), vendor_msg91(url))
        simulated = await stack.client.post(
            "/v1/routing/simulate", json={**MESSAGE, "rules": draft}
        )
        assert simulated.status_code == 200, simulated.text
        assert simulated.json()["candidates"][0]["provider"] == "msg91-in"
        reader = await key(stack, "routing:read")
        refused = await stack.client.post(
            "/v1/routing/simulate", json={**MESSAGE, "rules": draft}, headers=reader
        )
        assert refused.status_code == 403
        assert "providers.msg91-in.endpoint" in fields(refused)
        assert fake.requests == 0


async def test_the_console_refuses_a_credential_change_from_a_routing_write_key(
    sqlite_url: str, herald_secrets_in_env: None
) -> None:
    async with (
        CountingListener().running() as listener,
        running_stack(stack_settings(sqlite_url), workers=0) as stack,
    ):
        editor = await key(stack, "routing:read", "routing:write")
        attack = with_msg91(default_rules(), exfiltrating_msg91(listener.url))
        token = editor["Authorization"].removeprefix("Bearer ")
        async with signed_in(stack.url, token) as console:
            etag = (await stack.client.get("/v1/routing/rules")).headers["etag"]
            saved = await post_form(
                console,
                "/console/routing",
                "/console/routing",
                document=yaml.safe_dump(attack),
                etag=etag,
            )
        assert saved.status_code == 403
        assert "providers.msg91-in.endpoint" in saved.text
        assert (await in_force(stack))["version"] == 1


# Finding 3: no parser may stall the server ---------------------------------------------

BILLION_LAUGHS = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
providers: {}
rules: [*h]
"""
DEEP_YAML = "providers: {}\nrules: " + "[" * 2000 + "]" * 2000 + "\n"


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[Stack]:
    async with running_stack(stack_settings(sqlite_url), workers=0) as stack:
        yield stack


async def put_yaml(stack: Stack, text: str) -> Any:
    etag = (await stack.client.get("/v1/routing/rules")).headers["etag"]
    return await stack.client.put(
        "/v1/routing/rules",
        content=text,
        headers={"If-Match": etag, "Content-Type": "application/yaml"},
    )


async def test_billion_laughs_is_refused_and_healthz_answers_meanwhile(api: Stack) -> None:
    async def healthz_while(put: asyncio.Task[Any]) -> list[int]:
        answers: list[int] = []
        while not put.done() or not answers:
            answers.append((await api.client.get("/healthz")).status_code)
        return answers

    put = asyncio.create_task(put_yaml(api, BILLION_LAUGHS))
    health = await healthz_while(put)
    refused = put.result()
    assert refused.status_code == 422
    assert fields(refused) == ["$"] and "aliases" in refused.json()["errors"][0]["message"]
    assert len(refused.content) < 2000
    assert health and set(health) == {200}
    assert (await in_force(api))["version"] == 1


async def test_deep_documents_are_422_not_500(api: Stack) -> None:
    deep = await put_yaml(api, DEEP_YAML)
    assert deep.status_code == 422 and "deeper" in deep.text
    etag = (await api.client.get("/v1/routing/rules")).headers["etag"]
    deep_json = await api.client.put(
        "/v1/routing/rules",
        content=b'{"providers": {}, "rules": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        headers={"If-Match": etag, "Content-Type": "application/json"},
    )
    assert deep_json.status_code == 422
    assert (await in_force(api))["version"] == 1


async def test_a_document_with_thousands_of_issues_reports_a_capped_list(api: Stack) -> None:
    doc = default_rules()
    doc["rules"] += [
        {"name": f"r{i}", "match": {"channel": "sms"}, "tiers": [[f"nobody-{i}"]]}
        for i in range(400)
    ]
    refused = await put_rules(api, doc)
    assert refused.status_code == 422
    errors = refused.json()["errors"]
    assert len(errors) == MAX_ISSUES + 1
    assert errors[-1]["field"] == "$" and "more issues" in errors[-1]["message"]


async def test_the_consoles_validate_as_you_type_has_the_same_limits(api: Stack) -> None:
    async with signed_in(api.url) as console:
        for text, words in [(BILLION_LAUGHS, "aliases"), (DEEP_YAML, "deeper")]:
            answer = await post_form(
                console, "/console/routing", "/console/routing/validate", document=text
            )
            assert answer.status_code == 200 and words in answer.text
            assert len(answer.content) < 5000
        health = await api.client.get("/healthz")
        assert health.status_code == 200


def test_every_parser_refuses_aliases_depth_and_size(tmp_path: Path) -> None:
    for text in (BILLION_LAUGHS, DEEP_YAML, "x: " + "y" * 70_000):
        with pytest.raises(DocumentRefused):
            load_yaml(text)
        path = tmp_path / "rules.yaml"
        path.write_text(text)
        result = CliRunner().invoke(cli, ["routing", "validate", "--no-env", str(path)])
        assert result.exit_code == 1 and f"{path}: $: " in result.stderr
    with pytest.raises(DocumentRefused):
        load_json(b'{"a": ' * 30 + b"1" + b"}" * 30)


def test_too_many_rules_or_providers_is_one_short_issue_each() -> None:
    sandbox = {"type": "sandbox", "channel": "sms"}
    doc = {
        "providers": {f"p{i}": sandbox for i in range(201)},
        "rules": [{"name": f"r{i}", "match": {}, "tiers": [["p1"]]} for i in range(501)],
    }
    found = validate_document(doc)
    assert [(i.path, i.message) for i in found] == [
        ("providers", "has 201 entries, more than 200"),
        ("rules", "has 501 items, more than 500"),
    ]


async def test_a_document_that_takes_too_long_to_check_is_a_422(sqlite_url: str) -> None:
    values = stack_settings(sqlite_url, rules_validation_timeout_s=0.001)
    async with running_stack(values, workers=0) as stack:
        doc = default_rules()
        doc["rules"][0:0] = [
            {"name": f"r{i}", "match": {"channel": "sms", "country": ["GB"]}, "tiers": [["x"]]}
            for i in range(450)
        ]
        refused = await put_rules(stack, doc)
        assert refused.status_code == 422, refused.text
        assert fields(refused) == ["$"] and "longer than" in refused.text
        assert (await stack.client.get("/healthz")).status_code == 200
        assert (await in_force(stack))["version"] == 1


async def test_a_routing_file_pointing_at_the_metadata_service_is_refused_at_start(
    sqlite_url: str, tmp_path: Path
) -> None:
    bad = with_msg91(default_rules(), {"endpoint": "http://169.254.169.254/latest/"})
    path = Path(routing_file(tmp_path, bad))
    engine = make_engine(sqlite_url)
    policy = RulesPolicy(VendorPolicy.build(["HERALD_VENDOR_"], [], dev_mode=True))
    try:
        with pytest.raises(RulesInvalid, match=r"providers\.msg91-in\.endpoint"):
            await RulesStore(make_session_factory(engine), path, policy).current()
    finally:
        await engine.dispose()
