"""Hostile request bodies get a clear 4xx problem+json naming the field, never a 500 or a
stall, and nothing is stored or queued (issue 10 #3, #9, #11; issue 11 #7).

The first half reads ``parse_json`` (the one strict reading of every JSON body) without
servers; the second half sends each attack of the issues to a real API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError
from herald.storage.migrate import upgrade
from herald.storage.models import AuditEntry, ReplayJob
from producer.jsonbody import INT64_MAX, INT64_MIN, MAX_DEPTH, is_json, parse_json
from producer.problems import FieldError, Problem
from providers.ses import unsafe_for_ses
from tests.conftest import _truncate, in_thread
from tests.support.stack import Stack, running_stack, stack_settings

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}
EMAIL = {
    "channel": "email",
    "to": "alice@example.com",
    "category": "transactional",
    "subject": "Your receipt",
    "body": "Thanks",
}
#: Every line separator ``str.splitlines`` knows, and other controls (issue 10 #9).
SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\r", "\n", "\x00", "\x1e", "\t"]


def refused(raw: bytes | str) -> Problem:
    with pytest.raises(Problem) as info:
        parse_json(raw.encode() if isinstance(raw, str) else raw)
    return info.value


def assert_names(problem: Problem, status: int, field: str) -> str:
    assert isinstance(problem, FieldError)
    assert problem.status == status
    assert [e["field"] for e in problem.errors] == [field]
    return problem.errors[0]["message"]


def nested(depth: int) -> bytes:
    """``{"a": {"a": … 1 …}}``, ``depth`` objects deep, as JSON text."""
    return b'{"a": ' * depth + b"1" + b"}" * depth


def with_member(document: dict[str, Any], name: str, raw_value: bytes) -> bytes:
    """``document`` with one more member whose value is written as given."""
    head = json.dumps(document).encode()[:-1] + (b", " if document else b"")
    return head + f'"{name}": '.encode() + raw_value + b"}"


# -- parse_json: what it takes -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"channel": "sms", "to": "+447911123456", "metadata": {"order": [1, 2.5, null]}}',
        b'{"a" : 1, "b"\n: {"c": true}}',  # whitespace before a colon: the exact path
        b'{"body": "He said \\"stop\\": fine"}',  # an escaped quote and colon in a value
        b'{"emoji": "\\ud83d\\ude00", "big": 1e30, "neg": -9223372036854775808}',
        b'{"edge": 9223372036854775807, "floaty": -9.3e18}',
        b"[]",
    ],
)
def test_ordinary_documents_read_as_json_reads_them(raw: bytes) -> None:
    assert parse_json(raw) == json.loads(raw)


KEYS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(value=JSON_VALUES, spaced=st.booleans(), ascii_only=st.booleans())
def test_any_valid_document_reads_unchanged(value: Any, spaced: bool, ascii_only: bool) -> None:
    separators = (", ", " : " if spaced else ": ")
    raw = json.dumps(value, separators=separators, ensure_ascii=ascii_only).encode()
    assert parse_json(raw) == json.loads(raw)


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(KEYS, JSON_VALUES, min_size=1))
def test_any_duplicated_key_is_refused_by_name(value: dict[str, Any]) -> None:
    key = next(iter(value))
    raw = json.dumps(value)[:-1] + ", " + json.dumps(key) + ": 0}"
    message = assert_names(refused(raw), 422, _printable(key))
    assert "more than once" in message


def _printable(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode()


# -- parse_json: what it refuses, naming the field ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"metadata": {"n": 9223372036854775808}}', "metadata.n"),
        ('{"data": {"n": 18446744073709551615}}', "data.n"),  # fits u64, not i64
        ('{"data": {"n": 18446744073709551616}}', "data.n"),  # orjson: a float
        ('{"data": [1, -9223372036854775809]}', "data.1"),  # as a float, equals -2**63
        ('{"version": 1' + "0" * 40 + "}", "version"),
    ],
)
def test_an_integer_beyond_64_bits_is_422_naming_it(raw: str, field: str) -> None:
    message = assert_names(refused(raw), 422, field)
    assert "64-bit" in message


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"body": "a\\ud800"}', "body"),
        ('{"subject": "\\udfff tail"}', "subject"),
        ('{"metadata": {"k": ["ok", "\\ud83d"]}}', "metadata.k.1"),
        ('{"metadata": {"\\udc00": 1}}', "metadata.\\udc00"),
    ],
)
def test_a_lone_surrogate_is_422_naming_it(raw: str, field: str) -> None:
    message = assert_names(refused(raw), 422, field)
    assert "surrogate" in message


def test_a_nul_character_is_422_naming_it() -> None:
    # PostgreSQL refuses U+0000 in text and JSONB: this was a 500 at the insert.
    assert_names(refused('{"metadata": {"note": "a\\u0000b"}}'), 422, "metadata.note")
    assert parse_json(b'{"path": "C:\\\\u0000"}') == {"path": "C:\\u0000"}  # a backslash


def test_duplicate_keys_are_422_naming_the_key_path() -> None:
    assert_names(refused('{"channel": "sms", "channel": "email"}'), 422, "channel")
    assert_names(refused('{"metadata": {"a": 1, "b": {"x": 1, "x" : 2}}}'), 422, "metadata.b.x")


def test_nesting_deeper_than_the_limit_is_422_naming_the_top_member() -> None:
    assert parse_json(with_member({}, "metadata", nested(MAX_DEPTH - 1)))
    for depth in (MAX_DEPTH, 500, 1_100):  # past ours, and past orjson's own limit
        raw = with_member({}, "metadata", nested(depth))
        message = assert_names(refused(raw), 422, "metadata")
        assert f"more than {MAX_DEPTH} levels" in message


def test_nesting_past_the_recursion_limit_is_422_not_a_crash() -> None:
    raw = b'{"to": "x", "metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert_names(refused(raw), 422, "metadata")
    assert_names(refused(b"[" * 30_000 + b"]" * 30_000), 422, "body")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b'{"channel": "sms",', "line 1 column 19"),
        (b'{\n  "a": 1\n  "b": 2\n}', "line 3 column 3"),
        (b'{"x": NaN}', "NaN"),
        (b'{"x": -Infinity}', "-Infinity"),
        (b'\xef\xbb\xbf{"a": 1}', "BOM"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded as if UTF-8
        ("{}".encode("utf-16"), "UTF-8"),
    ],
)
def test_what_is_not_json_is_400_naming_body_and_where(raw: bytes, expect: str) -> None:
    message = assert_names(refused(raw), 400, "body")
    assert expect in message


def test_a_number_beyond_a_double_is_422_naming_it() -> None:
    assert_names(refused('{"metadata": {"x": 1e400}}'), 422, "metadata.x")


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("text/json", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types_are_those_fastapi_reads_as_json(
    content_type: str | None, expected: bool
) -> None:
    assert is_json(content_type) is expected


# -- the e-mail adapters: a bad header is a permanent error ------------------------------


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_ses_refuses_a_header_that_breaks_lines(sep: str) -> None:
    message = Envelope(
        id="n-1",
        channel=Channel.EMAIL,
        to="alice@example.com",
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        subject=f"Hi{sep}Bcc: all@example.com",
        body="b",
    )
    why = unsafe_for_ses(message)
    assert why is not None and why.startswith("subject:")
    assert unsafe_for_ses(Envelope(**{**vars_of(message), "subject": "Hi"})) is None
    assert unsafe_for_ses(Envelope(**{**vars_of(message), "subject": "Hi", "body": "\ud800"}))


def vars_of(message: Envelope) -> dict[str, Any]:
    return {f: getattr(message, f) for f in message.__dataclass_fields__}


async def test_the_ses_adapter_raises_permanent_for_a_bad_subject() -> None:
    from providers.ses import SesProvider

    class NoCalls:
        options = {"from": "shop@example.com"}

        def require(self) -> None:
            return None

        async def call(self, *_: Any, **__: Any) -> dict[str, Any]:
            raise AssertionError("SES must not be called")

    provider = SesProvider("ses", Channel.EMAIL, {}, aws=NoCalls())  # type: ignore[arg-type]
    message = Envelope(
        id="n-2",
        channel=Channel.EMAIL,
        to="alice@example.com",
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        subject="Hi\u2028Bcc: all@example.com",
        body="b",
    )
    with pytest.raises(PermanentProviderError) as info:
        await provider.send(message)
    assert info.value.code == "invalid_message"


# -- the attacks, against a real API -----------------------------------------------------


async def _database(
    kind: str, request: pytest.FixtureRequest, folder: pytest.TempPathFactory
) -> str:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{folder.mktemp('hostile')}/herald.db"
        await asyncio.to_thread(upgrade, url)
        return url
    url = str(request.getfixturevalue("postgres_schema"))
    in_thread(asyncio.run, _truncate(url))
    return url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One API per database for the whole module (nothing consumes): every attack is
    refused, so the database and the queues stay empty, and each test says so. For the
    attacks whose refusal could depend on the database (what it stores, its integers)."""
    url = await _database(request.param, request, tmp_path_factory)
    async with running_stack(stack_settings(url), workers=0) as stack:
        yield stack


@pytest.fixture(scope="module")
async def sqlite_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """For refusals made before any route or database is reached (size, media type)."""
    url = await _database("sqlite", request, tmp_path_factory)
    async with running_stack(stack_settings(url), workers=0) as stack:
        yield stack


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"]
    if field is None:
        return ""
    fields = [e["field"] for e in body["errors"]]
    assert field in fields, body
    return str(body["errors"][fields.index(field)]["message"])


async def post_raw(api: Stack, path: str, raw: bytes, content_type: str | None) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    return await api.client.post(path, content=raw, headers=headers)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


BODY_ATTACKS: list[tuple[str, bytes, int, str]] = [
    ("metadata 500 deep", with_member(SMS, "metadata", nested(500)), 422, "metadata"),
    ("data 5,000 deep", with_member(SMS, "data", nested(5_000)), 422, "data"),
    ("integer beyond 64 bits in data", dumps({**SMS, "data": {"n": 2**64}}), 422, "data.n"),
    ("integer beyond 64 bits in metadata", dumps({**SMS, "metadata": {"n": 2**70}}), 422,
     "metadata.n"),
    ("lone surrogate in body", dumps({**SMS, "body": "a\ud800"}), 422, "body"),
    ("lone surrogate in to", dumps({**SMS, "to": "+44791112345\udc00"}), 422, "to"),
    ("lone surrogate in a metadata key", dumps({**SMS, "metadata": {"\udc00": 1}}), 422,
     "metadata.\\udc00"),
    ("NUL in body", dumps({**SMS, "body": "a\x00b"}), 422, "body"),
    ("duplicate key", b'{"channel": "sms", "channel": "email", "to": "+447911123456",'
     b' "category": "transactional", "body": "b"}', 422, "channel"),
    ("invalid JSON", b'{"channel": "sms",', 400, "body"),
    ("NaN", with_member(SMS, "metadata", b'{"x": NaN}'), 400, "body"),
    ("expires_in_s true", dumps({**SMS, "expires_in_s": True}), 422, "expires_in_s"),
    ('expires_in_s "60"', dumps({**SMS, "expires_in_s": "60"}), 422, "expires_in_s"),
    ("send_at as a Unix time", dumps({**SMS, "send_at": 1_900_000_000}), 422, "send_at"),
    ("send_at in the past", dumps({**SMS, "send_at": "2020-01-01T00:00:00Z"}), 422, "send_at"),
    ("send_at with no UTC instant", dumps({**SMS, "send_at": "0001-01-01T00:00:00+14:00"}),
     422, "send_at"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "raw", "status", "field"), BODY_ATTACKS, ids=[a[0] for a in BODY_ATTACKS]
)
async def test_hostile_send_bodies_are_refused_naming_the_field(
    api: Stack, case: str, raw: bytes, status: int, field: str
) -> None:
    response = await post_raw(api, "/v1/notifications", raw, "application/json")
    assert_problem(response, status, field)
    assert await api.nothing_stored_or_queued()


@pytest.mark.integration
@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
async def test_a_line_separator_in_an_email_subject_is_refused_at_the_api(
    api: Stack, sep: str
) -> None:
    response = await api.send(**{**EMAIL, "subject": f"Hello{sep}Bcc: everyone@example.com"})
    message = assert_problem(response, 422, "subject")
    assert f"U+{ord(sep):04X}" in message
    assert await api.nothing_stored_or_queued()


WRONG_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
JSON_ROUTES = [
    ("POST", "/v1/notifications", SMS),
    ("POST", "/v1/otp", {"to": "+447911123456"}),
    ("POST", "/v1/otp/verify", {"to": "+447911123456", "code": "123456"}),
    ("POST", "/v1/dlq/replay", {"dry_run": True}),
    ("POST", "/v1/dlq/no-such-letter/replay", {"reason": "x"}),  # an optional body
    ("DELETE", "/v1/dlq/no-such-letter", {"reason": "gone for good"}),
    ("POST", "/v1/routing/simulate", {"channel": "sms", "to": "+447911123456"}),
    ("POST", "/v1/routing/rules/rollback", {"version": 1}),
    ("PUT", "/v1/sandbox/providers/sandbox-sms", {"mode": "ok"}),
    ("PUT", "/v1/providers/sandbox-sms/breaker", {"state": "auto"}),
]


@pytest.mark.integration
@pytest.mark.parametrize("content_type", WRONG_TYPES, ids=[str(t) for t in WRONG_TYPES])
@pytest.mark.parametrize(("method", "path", "body"), JSON_ROUTES, ids=[r[1] for r in JSON_ROUTES])
async def test_a_json_route_answers_415_to_another_content_type(
    sqlite_api: Stack, method: str, path: str, body: dict[str, Any], content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await sqlite_api.client.request(method, path, content=dumps(body), headers=headers)
    assert_problem(response, 415, "Content-Type")
    assert await sqlite_api.nothing_stored_or_queued()


@pytest.mark.integration
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_the_rules_document_is_json_or_yaml_else_415(api: Stack, content_type: str) -> None:
    before = (await api.client.get("/v1/routing/rules")).headers["etag"]
    response = await api.client.put(
        "/v1/routing/rules",
        content=b'{"providers": {}, "rules": []}',
        headers={"content-type": content_type, "If-Match": before},
    )
    assert_problem(response, 415, "Content-Type")
    assert (await api.client.get("/v1/routing/rules")).headers["etag"] == before
    assert await api.count(AuditEntry) == 0


@pytest.mark.integration
@pytest.mark.parametrize(("escape", "why"), [("\\ud800", "surrogate"), ("\\0", "NUL")])
async def test_a_yaml_rules_document_gets_the_same_string_checks(
    api: Stack, escape: str, why: str
) -> None:
    """A lone surrogate in YAML (a double-quoted escape) was a 500 when the document was
    serialized; a NUL is what PostgreSQL refuses in text."""
    current = (await api.client.get("/v1/routing/rules")).json()
    document = current["document"]
    document["rules"][0]["name"] = "@NAME@"
    text = yaml.safe_dump(document).replace("'@NAME@'", f'"bad{escape}name"')
    text = text.replace("@NAME@", f'"bad{escape}name"')
    response = await api.client.put(
        "/v1/routing/rules",
        content=text,
        headers={"If-Match": current["etag"], "content-type": "application/yaml"},
    )
    assert why in assert_problem(response, 422, "rules.0.name")
    assert (await api.client.get("/v1/routing/rules")).headers["etag"] == current["etag"]


async def chunked(size: int) -> AsyncIterator[bytes]:
    """A body with no Content-Length (Transfer-Encoding: chunked), 1 KiB at a time."""
    for _ in range(size // 1024):
        yield b"x" * 1024


OVERSIZED_ROUTES = [
    ("POST", "/v1/notifications", "application/json"),
    ("POST", "/v1/otp", "application/json"),
    ("PUT", "/v1/routing/rules", "application/yaml"),
    ("POST", "/v1/webhooks/twilio/status", "application/x-www-form-urlencoded"),
    ("POST", "/v1/webhooks/ses", "text/plain"),
    ("POST", "/console/login", "application/x-www-form-urlencoded"),
    ("POST", "/v1/no-such-route", "application/json"),
]


@pytest.mark.integration
@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
@pytest.mark.parametrize(
    ("method", "path", "content_type"), OVERSIZED_ROUTES, ids=[r[1] for r in OVERSIZED_ROUTES]
)
async def test_an_oversized_body_is_413_on_every_route(
    sqlite_api: Stack, method: str, path: str, content_type: str, declared: bool
) -> None:
    size = sqlite_api.settings.max_request_bytes + 4096
    content: Any = b"x" * size if declared else chunked(size)
    response = await sqlite_api.client.request(
        method, path, content=content, headers={"content-type": content_type}
    )
    assert_problem(response, 413, "body")
    assert await sqlite_api.nothing_stored_or_queued()


@pytest.mark.integration
async def test_dry_run_zero_does_not_start_a_real_bulk_replay(api: Stack) -> None:
    for dry_run in (0, "false", "true", None):
        response = await api.client.post("/v1/dlq/replay", json={"dry_run": dry_run})
        assert_problem(response, 422, "dry_run")
    for max_per_s in ("10", True):
        response = await api.client.post("/v1/dlq/replay", json={"max_per_s": max_per_s})
        assert_problem(response, 422, "max_per_s")
    assert await api.count(ReplayJob) == 0
    assert await api.count(AuditEntry) == 0


ID_ATTACKS = [
    ("GET", "/v1/routing/rules/versions/99999999999999999999999", None, "version"),
    ("GET", "/v1/routing/rules/versions/2147483648", None, "version"),
    ("GET", "/v1/routing/rules/versions/0", None, "version"),
    ("GET", "/v1/routing/rules/diff?from=99999999999999999999&to=1", None, "from"),
    ("GET", "/v1/routing/rules/diff?to=-99999999999999999999", None, "to"),
    ("POST", "/v1/routing/rules/rollback", {"version": 2**70}, "version"),
    ("POST", "/v1/routing/rules/rollback", {"version": 2**40}, "version"),
    ("POST", "/v1/routing/rules/rollback", {"version": True}, "version"),
    ("POST", "/v1/routing/rules/rollback", {"version": "1"}, "version"),
    ("GET", "/v1/dlq?since=1700000000", None, "since"),
    ("GET", "/v1/dlq?until=9999-12-31T23:59:59-14:00", None, "until"),
    ("GET", "/v1/audit?since=0001-01-01T00:00:00%2B14:00", None, "since"),
    ("GET", "/v1/dlq?limit=99999999999999999999999", None, "limit"),
    ("POST", "/v1/otp", {"to": "+447911123456", "ttl_s": "60"}, "ttl_s"),
    ("POST", "/v1/otp", {"to": "+447911123456", "code_length": 6.0}, "code_length"),
    ("PUT", "/v1/sandbox/providers/sandbox-sms", {"mode": "ok", "fail_rate": True}, "fail_rate"),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path", "body", "field"), ID_ATTACKS, ids=[f"{a[1]} {a[2]}" for a in ID_ATTACKS]
)
async def test_ids_and_numbers_out_of_range_or_of_the_wrong_type_are_422(
    api: Stack, method: str, path: str, body: dict[str, Any] | None, field: str
) -> None:
    response = await api.client.request(method, path, json=body)
    assert_problem(response, 422, field)
    assert await api.count(AuditEntry) == 0
    assert await api.nothing_stored_or_queued()


URL_ATTACKS = [
    ("/v1/dlq?provider=%00", 422, "provider"),
    ("/v1/dlq?channel=sms&caller=a%00b", 422, "caller"),
    ("/v1/audit?actor=%00", 422, "actor"),
    ("/v1/sandbox/messages?to=%2B44%00", 422, "to"),
    ("/v1/routing/rules?comment=%00", 422, "comment"),
    ("/v1/notifications/%00", 400, "path"),
    ("/v1/dlq/abc%00def", 400, "path"),
    ("/v1/dlq/replays/%00", 400, "path"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("url", "status", "field"), URL_ATTACKS, ids=[a[0] for a in URL_ATTACKS])
async def test_a_nul_in_the_path_or_query_is_refused_not_a_database_error(
    api: Stack, url: str, status: int, field: str
) -> None:
    # PostgreSQL refuses U+0000 in a text parameter: each of these was a 500 there.
    assert_problem(await api.client.get(url), status, field)


FORM_ATTACKS = [
    ("/console/login", b"key=abc%00&next=/console", "key"),
    ("/v1/webhooks/twilio/status", b"MessageSid=SM1%00&MessageStatus=delivered", "MessageSid"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("path", "form", "field"), FORM_ATTACKS, ids=[a[0] for a in FORM_ATTACKS])
async def test_a_nul_in_a_form_body_is_refused_naming_the_field(
    api: Stack, path: str, form: bytes, field: str
) -> None:
    response = await post_raw(api, path, form, "application/x-www-form-urlencoded")
    assert_problem(response, 422, field)
    assert await api.count(AuditEntry) == 0


def test_url_problem_names_the_parameter_and_passes_clean_urls() -> None:
    from producer.urls import url_problem

    assert url_problem("/v1/dlq", b"provider=twilio&limit=5") is None
    assert url_problem("/v1/dlq/%30", b"") is None  # only the decoded path counts
    problem = url_problem("/v1/dlq", b"limit=5&reason=a%00")
    assert problem is not None and problem.errors[0]["field"] == "reason"
    problem = url_problem("/v1/dlq", b"%00=1")
    assert problem is not None and problem.errors[0]["field"] == "\\x00"


@pytest.mark.integration
async def test_the_openapi_document_declares_problem_answers_for_every_route(
    api: Stack,
) -> None:
    document = (await api.client.get("/openapi.json")).json()
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "patch")
    ]
    assert len(operations) > 20
    for path, method, op in operations:
        for status in ("4XX", "5XX"):
            content = op["responses"][status]["content"]
            assert content == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }, (method, path)
        assert "422" not in op["responses"], (method, path)


# -- the error answers themselves ---------------------------------------------------------


async def test_an_unexpected_error_still_answers_problem_json() -> None:
    from starlette.requests import Request

    from producer.problems import on_unexpected

    request = Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": []})
    response = await on_unexpected(request, RuntimeError("a bug"))
    assert response.status_code == 500
    assert response.media_type == "application/problem+json"
    assert json.loads(bytes(response.body))["title"] == "Internal server error"
    assert b"a bug" not in bytes(response.body)


def test_declare_problems_replaces_fastapis_422_on_every_operation() -> None:
    from producer.problems import declare_problems

    schema = {
        "paths": {
            "/a": {"get": {"responses": {"200": {}, "422": {}}}, "parameters": []},
            "/b": {"post": {"responses": {"202": {}}}},
        },
        "components": {"schemas": {"HTTPValidationError": {}, "ValidationError": {}}},
    }
    out = declare_problems(schema)
    assert set(out["components"]["schemas"]) == {"Problem"}
    assert set(out["paths"]["/a"]["get"]["responses"]) == {"200", "4XX", "5XX"}
    assert set(out["paths"]["/b"]["post"]["responses"]) == {"202", "4XX", "5XX"}
    assert out["paths"]["/a"]["parameters"] == []


def test_a_problem_echoing_a_lone_surrogate_still_renders() -> None:
    from producer.problems import problem_response

    problem = FieldError("metadata.\udc00", "no provider named '\ud800'")
    body = json.loads(bytes(problem_response(problem, "/v1/x").body))
    assert body["errors"] == [
        {"field": "metadata.\\udc00", "message": "no provider named '\\ud800'"}
    ]
