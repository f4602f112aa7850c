"""Push through FCM: pyfcm and google-auth against a local FCM API and token endpoint,
every row of the error table, unregistered tokens remembered, and the whole pipeline."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from redis.asyncio import Redis
from sqlalchemy import select

from herald import names
from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.storage.migrate import upgrade
from herald.storage.models import Notification
from providers.credentials import MissingCredential
from providers.fcm import ERROR_CODES, FcmProvider, http_verdict, push_data
from providers.tokens import DEFAULT_TTL_S, token_hash
from tests.fakes.fcm_api import FakeError, FakeFcm, service_account_key
from tests.support.stack import TEST_REDIS_URL, Stack, running_stack, stack_settings

DEVICE = "fcm-device-token_abc:123"


def envelope(**overrides: Any) -> Envelope:
    values: dict[str, Any] = {
        "id": "0190f2c4-0000-7000-8000-000000000002",
        "channel": Channel.PUSH,
        "to": DEVICE,
        "category": Category.TRANSACTIONAL,
        "priority": Priority.NORMAL,
        "subject": "Order shipped",
        "body": "Your parcel is on its way",
    }
    return Envelope(**{**values, **overrides})


# -- pure parts -------------------------------------------------------------------------


def test_data_values_become_strings() -> None:
    data = {"order": 42, "paid": True, "note": None, "items": [1, 2], "who": {"a": 1}, "s": "x"}
    assert push_data(data) == {
        "order": "42",
        "paid": "true",
        "note": "null",
        "items": "[1,2]",
        "who": '{"a":1}',
        "s": "x",
    }


def fcm_body(error_code: str | None, status: str, message: str = "m") -> dict[str, Any]:
    error: dict[str, Any] = {"code": 0, "message": message, "status": status}
    if error_code:
        detail = {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError"}
        error["details"] = [{**detail, "errorCode": error_code}]
    return {"error": error}


def test_the_error_code_wins_over_the_rpc_status_and_http_status() -> None:
    verdict = http_verdict(401, fcm_body("THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED"))
    assert verdict.code == "THIRD_PARTY_AUTH_ERROR"
    assert (verdict.permanent, verdict.config) == (True, False)
    verdict = http_verdict(401, fcm_body(None, "UNAUTHENTICATED"))
    assert (verdict.permanent, verdict.config) == (False, True)
    assert verdict.code == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [(502, "<html>bad gateway</html>", "HTTP_502"), (418, None, "HTTP_418"),
     (400, fcm_body("BRAND_NEW_CODE", "INVALID_ARGUMENT"), "BRAND_NEW_CODE")],
)  # fmt: skip
def test_unlisted_answers_are_transient(status: int, body: Any, code: str) -> None:
    verdict = http_verdict(status, body, "3")
    assert (verdict.permanent, verdict.code, verdict.listed, verdict.retry_after) == (
        False,
        code,
        False,
        3.0,
    )


# -- the adapter against the local FCM --------------------------------------------------


@pytest.fixture(scope="module")
def key() -> tuple[dict[str, Any], str]:
    return service_account_key()


@pytest.fixture(scope="module")
async def fcm_api(key: tuple[dict[str, Any], str]) -> AsyncIterator[FakeFcm]:
    fake = FakeFcm(key[1])
    async with fake.running():
        yield fake


@pytest.fixture
def fake(fcm_api: FakeFcm) -> FakeFcm:
    fcm_api.reset()
    return fcm_api


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4, thread_name_prefix="vendor") as executor:
        yield executor


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(names.unregistered_token_key("*", "*"))]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def key_json(key: tuple[dict[str, Any], str], token_uri: str, **extra: Any) -> str:
    return json.dumps({**key[0], "token_uri": token_uri, **extra})


def fcm_spec(endpoint: str, *, project: bool = False) -> dict[str, Any]:
    credentials = {"service_account": "env:HERALD_VENDOR_TEST_FCM_KEY"}
    if project:
        credentials["project_id"] = "env:HERALD_VENDOR_TEST_FCM_PROJECT"
    return {"type": "fcm", "channel": "push", "endpoint": endpoint, "credentials": credentials}


@pytest.fixture
def make_fcm(
    fake: FakeFcm,
    key: tuple[dict[str, Any], str],
    redis: Redis,
    pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., FcmProvider]:
    def make(
        *, endpoint: str | None = None, timeout_s: float = 2, key_value: str | None = None
    ) -> FcmProvider:
        monkeypatch.setenv("HERALD_VENDOR_TEST_FCM_KEY", key_value or key_json(key, fake.token_uri))
        return FcmProvider(
            f"fcm-{uuid.uuid4().hex[:8]}",  # its own unregistered-token memory
            Channel.PUSH,
            fcm_spec(endpoint or fake.url),
            redis=redis,
            blocking=pool,
            timeout_s=timeout_s,
        )

    return make


async def failure(provider: FcmProvider, message: Envelope | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.send(message or envelope())
    return caught.value


async def test_a_push_arrives_with_title_body_string_data_and_our_bearer_token(
    make_fcm: Any, fake: FakeFcm
) -> None:
    fcm = make_fcm()
    receipt = await fcm.send(envelope(data={"order": 42, "kind": "shipped"}))
    await fcm.send(envelope())

    first = fake.received[0]
    assert first["message"] == {
        "token": DEVICE,
        "notification": {"title": "Order shipped", "body": "Your parcel is on its way"},
        "data": {"order": "42", "kind": "shipped"},
    }
    assert first["bearer"] in fake.tokens_issued
    assert receipt.vendor_message_id == first["name"]
    assert receipt.vendor_message_id.startswith("projects/herald-test/messages/")
    assert fake.received[1]["bearer"] == first["bearer"]  # one token, reused


async def test_a_data_only_push_has_no_notification(make_fcm: Any, fake: FakeFcm) -> None:
    await make_fcm().send(envelope(subject=None, body=None, data={"sync": "1"}))
    assert fake.received[0]["message"] == {"token": DEVICE, "data": {"sync": "1"}}


FCM_ROWS = ["UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR",
            "QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "UNSPECIFIED_ERROR"]  # fmt: skip


@pytest.mark.parametrize("code", FCM_ROWS)
async def test_each_fcm_error_code_of_the_table(make_fcm: Any, fake: FakeFcm, code: str) -> None:
    fake.fail_next(FakeError.of(code, retry_after="7"))
    error = await failure(make_fcm())

    permanent = ERROR_CODES[code][0]
    assert isinstance(error, PermanentProviderError if permanent else TransientProviderError)
    assert error.code == code
    if not permanent:  # Retry-After honoured on every transient answer
        assert isinstance(error, TransientProviderError) and error.retry_after == 7.0
    assert DEVICE not in str(error)


@pytest.mark.parametrize(
    ("status", "rpc_status"),
    [(403, "PERMISSION_DENIED"), (429, "RESOURCE_EXHAUSTED"), (404, "NOT_FOUND")],
)
async def test_rpc_statuses_without_an_fcm_code(
    make_fcm: Any, fake: FakeFcm, status: int, rpc_status: str
) -> None:
    fake.fail_next(FakeError(None, status, rpc_status))
    error = await failure(make_fcm())
    assert isinstance(error, TransientProviderError) and error.code == rpc_status


async def test_a_refused_access_token_is_renewed_once(make_fcm: Any, fake: FakeFcm) -> None:
    fcm = make_fcm()
    await fcm.send(envelope())
    fake.fail_next(FakeError(None, 401, "UNAUTHENTICATED", "token expired"))

    await fcm.send(envelope())

    assert len(fake.received) == 2 and fake.received[1]["bearer"] == fake.tokens_issued[-1]
    assert fake.received[0]["bearer"] != fake.received[1]["bearer"]


async def test_an_access_token_refused_twice_is_a_transient_setup_error(
    make_fcm: Any, fake: FakeFcm
) -> None:
    unauthenticated = FakeError(None, 401, "UNAUTHENTICATED", "invalid credentials")
    fake.fail_next(unauthenticated, unauthenticated)
    with structlog.testing.capture_logs() as logs:
        error = await failure(make_fcm())
    assert isinstance(error, TransientProviderError) and error.code == "UNAUTHENTICATED"
    assert [e["code"] for e in logs if e["event"] == "fcm_setup_error"] == ["UNAUTHENTICATED"]


async def test_a_key_the_token_endpoint_refuses_is_a_transient_setup_error(
    make_fcm: Any, fake: FakeFcm
) -> None:
    stranger = service_account_key()  # signed with a key the token endpoint does not know
    fcm = make_fcm(key_value=key_json(stranger, fake.token_uri))
    with structlog.testing.capture_logs() as logs:
        error = await failure(fcm)
    assert isinstance(error, TransientProviderError) and error.code == "AUTH_TOKEN"
    assert any(e["event"] == "fcm_setup_error" for e in logs)
    assert fake.sends == 0


async def test_an_unreachable_token_endpoint_is_transient(
    make_fcm: Any, key: tuple[dict[str, Any], str]
) -> None:
    fcm = make_fcm(key_value=key_json(key, "http://127.0.0.1:9/token"))
    error = await failure(fcm)
    assert isinstance(error, TransientProviderError) and error.code == "AUTH_TOKEN"


async def test_an_unreachable_fcm_is_transient(make_fcm: Any) -> None:
    error = await failure(make_fcm(endpoint="http://127.0.0.1:9"))
    assert isinstance(error, TransientProviderError) and error.code == "connect_error"


async def test_a_slow_fcm_times_out_as_transient(make_fcm: Any, fake: FakeFcm) -> None:
    fcm = make_fcm(timeout_s=0.3)
    await fcm.send(envelope())  # the token first, so the timeout falls on the send
    fake.delay_s = 1.0
    error = await failure(fcm)
    assert isinstance(error, TransientProviderError) and error.code == "timeout"


async def test_an_unlisted_code_is_logged_once(make_fcm: Any, fake: FakeFcm) -> None:
    fcm = make_fcm()
    brand_new = FakeError("BRAND_NEW_CODE", 400, "FAILED_PRECONDITION")
    fake.fail_next(brand_new, brand_new)
    with structlog.testing.capture_logs() as logs:
        errors = [await failure(fcm), await failure(fcm)]
    assert all(isinstance(e, TransientProviderError) for e in errors)
    assert [e["code"] for e in logs if e["event"] == "fcm_unlisted_error"] == ["BRAND_NEW_CODE"]


async def test_an_unregistered_token_is_remembered_by_its_hash(
    make_fcm: Any, fake: FakeFcm, redis: Redis
) -> None:
    fcm = make_fcm()
    fake.fail_next(FakeError.of("UNREGISTERED", token=DEVICE))
    first = await failure(fcm)
    second = await failure(fcm)
    await fcm.send(envelope(to="another-device"))

    assert isinstance(second, PermanentProviderError)
    assert second.code == first.code == "UNREGISTERED"
    assert fake.sends == 2  # the second send to DEVICE never reached FCM
    key = names.unregistered_token_key(fcm.name, token_hash(DEVICE))
    assert 0 < await redis.ttl(key) <= DEFAULT_TTL_S
    keys = [k.decode() async for k in redis.scan_iter(names.unregistered_token_key("*", "*"))]
    assert keys == [key] and DEVICE not in key


async def test_the_memory_is_best_effort_when_redis_is_down(
    fake: FakeFcm,
    key: tuple[dict[str, Any], str],
    pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERALD_VENDOR_TEST_FCM_KEY", key_json(key, fake.token_uri))
    down = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    fcm = FcmProvider("fcm-no-redis", Channel.PUSH, fcm_spec(fake.url), redis=down, blocking=pool)
    await fcm.send(envelope())
    fake.fail_next(FakeError.of("UNREGISTERED"))
    assert (await failure(fcm)).code == "UNREGISTERED"
    await down.aclose()
    assert len(fake.received) == 1 and fake.sends == 2


async def test_key_file_path_and_project_override(
    fake: FakeFcm,
    key: tuple[dict[str, Any], str],
    redis: Redis,
    pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = tmp_path / "key.json"
    path.write_text(key_json(key, fake.token_uri, project_id="from-the-key"))
    monkeypatch.setenv("HERALD_VENDOR_TEST_FCM_KEY", str(path))
    monkeypatch.setenv("HERALD_VENDOR_TEST_FCM_PROJECT", "herald-test")
    spec = fcm_spec(fake.url, project=True)
    fcm = FcmProvider("fcm-file", Channel.PUSH, spec, redis=redis, blocking=pool)
    await fcm.send(envelope())
    assert fcm.client.fcm_end_point == f"{fake.url}/v1/projects/herald-test/messages:send"


@pytest.mark.parametrize("value", ["/nonexistent/key.json", "{not json", '{"type": "x"}'])
def test_unusable_keys_are_refused_without_quoting_them(
    value: str, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor
) -> None:
    monkeypatch.setenv("HERALD_VENDOR_TEST_FCM_KEY", value)
    with pytest.raises(MissingCredential) as caught:
        FcmProvider("fcm-x", Channel.PUSH, fcm_spec("http://x"), redis=Redis(), blocking=pool)
    assert "not json" not in str(caught.value)


# -- the whole pipeline -----------------------------------------------------------------

pipeline = pytest.mark.integration


@pytest.fixture(scope="module")
async def push_stack(
    fcm_api: FakeFcm, key: tuple[dict[str, Any], str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """``fcm-a`` and ``fcm-b`` (same project, ``fcm-a`` cheaper) in one tier; marketing
    through ``fcm-a`` only, so a transient error there is retried, not failed over."""
    doc = {
        "providers": {  # a spec each: one shared dict would be dumped as a YAML alias
            "fcm-a": {**fcm_spec(fcm_api.url), "cost": {"default": 0.0001}},
            "fcm-b": {**fcm_spec(fcm_api.url), "cost": {"default": 0.0002}},
        },
        "rules": [
            {"name": "push-marketing", "match": {"channel": "push", "category": "marketing"},
             "tiers": [["fcm-a"]]},
            {"name": "push", "match": {"channel": "push"}, "tiers": [["fcm-a", "fcm-b"]]},
        ],
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("push-stack")
    (folder / "routing.yaml").write_text(yaml.safe_dump(doc))
    database = f"sqlite+aiosqlite:///{folder}/herald.db"
    await asyncio.to_thread(upgrade, database)  # Alembic runs a loop of its own
    values = stack_settings(database, routing_file=str(folder / "routing.yaml"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HERALD_VENDOR_TEST_FCM_KEY", key_json(key, fcm_api.token_uri))
        async with running_stack(values) as stack:
            yield stack


async def send_push(stack: Stack, to: str, **extra: Any) -> str:
    payload = {"channel": "push", "to": to, "category": "transactional", "subject": "Hi"}
    response = await stack.send(**{**payload, "body": "Hello", **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pipeline
async def test_pipeline_delivers_a_push(push_stack: Stack, fake: FakeFcm) -> None:
    nid = await send_push(push_stack, "device-1", data={"order": 42, "deep": {"link": "/o/42"}})
    done = await push_stack.wait_status(nid, "sent")

    [received] = fake.received
    assert received["message"] == {
        "token": "device-1",
        "notification": {"title": "Hi", "body": "Hello"},
        "data": {"order": "42", "deep": '{"link":"/o/42"}'},
    }
    assert received["bearer"] in fake.tokens_issued
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("fcm-a", "sent")]
    async with push_stack.sessions() as session:
        stored = await session.scalar(
            select(Notification.vendor_message_id).where(Notification.id == nid)
        )
    assert stored == received["name"]


@pipeline
async def test_pipeline_permanent_error_fails_once_and_is_dead_lettered(
    push_stack: Stack, fake: FakeFcm
) -> None:
    fake.fail_next(FakeError.of("INVALID_ARGUMENT", token="device-2"))
    nid = await send_push(push_stack, "device-2")

    done = await push_stack.wait_status(nid, "failed")
    assert [(a["provider"], a["error_code"]) for a in done["attempts"]] == [
        ("fcm-a", "INVALID_ARGUMENT")
    ]
    [letter] = await wait_dead_letters(push_stack, nid)
    assert (letter.reason, letter.last_error_code, letter.attempts) == (
        "permanent_error",
        "INVALID_ARGUMENT",
        1,
    )
    assert fake.received == []


@pipeline
async def test_pipeline_transient_error_is_retried_then_sent(
    push_stack: Stack, fake: FakeFcm
) -> None:
    fake.fail_next(FakeError.of("UNAVAILABLE", token="device-3"))
    nid = await send_push(push_stack, "device-3", category="marketing")

    done = await push_stack.wait_status(nid, "sent")
    assert [(a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("transient_error", "UNAVAILABLE"),
        ("sent", None),
    ]
    assert len(fake.sent_to("device-3")) == 1


@pipeline
async def test_pipeline_fails_over_within_the_tier(push_stack: Stack, fake: FakeFcm) -> None:
    fake.fail_next(FakeError.of("INTERNAL", token="device-4"))
    nid = await send_push(push_stack, "device-4")

    done = await push_stack.wait_status(nid, "sent")
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
        ("fcm-a", "transient_error"),
        ("fcm-b", "sent"),
    ]


@pipeline
async def test_pipeline_unregistered_token_fails_at_once_the_second_time(
    push_stack: Stack, fake: FakeFcm
) -> None:
    fake.fail_next(FakeError.of("UNREGISTERED", token="device-gone"))
    first = await send_push(push_stack, "device-gone")
    await push_stack.wait_status(first, "failed")
    calls = fake.sends

    second = await send_push(push_stack, "device-gone")
    done = await push_stack.wait_status(second, "failed")

    assert [(a["provider"], a["error_code"]) for a in done["attempts"]] == [
        ("fcm-a", "UNREGISTERED")
    ]
    assert fake.sends == calls  # answered from the memory: FCM saw nothing more
    assert fake.received == []


async def wait_dead_letters(stack: Stack, notification_id: str) -> list[Any]:
    for _ in range(200):
        letters = [d for d in await stack.dead_letters() if d.notification_id == notification_id]
        if letters:
            return letters
        await asyncio.sleep(0.05)
    raise AssertionError(f"{notification_id} never reached the dead-letter store")
