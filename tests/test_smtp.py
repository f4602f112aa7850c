"""E-mail through SMTP: the message built, the adapter against a real SMTP server
(aiosmtpd), every row of the error table, and the whole pipeline end to end."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.errors
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from email.message import MIMEPart
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.storage.migrate import upgrade
from herald.storage.models import Notification
from producer.validation import ValidSend
from providers.credentials import MissingCredential
from providers.email_message import (
    HEADER_NOTIFICATION_ID,
    InvalidEmail,
    Sender,
    build_email,
    message_id,
)
from providers.smtp import REPLY_CODES, SmtpProvider, SmtpTarget, smtp_target, smtp_verdict
from tests.fakes.smtp_server import DROP, FakeSmtp
from tests.support.stack import ADMIN_KEY, Stack, running_stack, stack_settings

FROM = "Herald Shop <noreply@shop.example>"
USER, PASSWORD = "mailer", "s3cret"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def envelope(**overrides: Any) -> Envelope:
    values: dict[str, Any] = {
        "id": "0190f2c4-0000-7000-8000-000000000001",
        "channel": Channel.EMAIL,
        "to": "alice@example.com",
        "category": Category.TRANSACTIONAL,
        "priority": Priority.NORMAL,
        "subject": "Your receipt",
        "body": "Thanks for your order.",
    }
    return Envelope(**{**values, **overrides})


def content(part: MIMEPart) -> str:
    """A text part's content; base64 parts keep SMTP's CRLF line ends."""
    return str(part.get_content()).replace("\r\n", "\n")


# -- the message ------------------------------------------------------------------------


def test_plain_text_message_has_every_header() -> None:
    mail = build_email(envelope(), Sender.parse(FROM), now=NOW)

    assert mail["From"] == FROM
    assert mail["To"] == "alice@example.com"
    assert mail["Subject"] == "Your receipt"
    assert mail["Date"] == "Sun, 01 Mar 2026 12:00:00 +0000"
    assert mail["Message-ID"] == "<0190f2c4-0000-7000-8000-000000000001.0@shop.example>"
    assert mail[HEADER_NOTIFICATION_ID] == "0190f2c4-0000-7000-8000-000000000001"
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content() == "Thanks for your order.\n"


def test_html_makes_a_multipart_alternative_text_first() -> None:
    html = "<p>Thanks for your <b>order</b>.</p>"
    mail = build_email(envelope(data={"html": html}), Sender.parse(FROM), now=NOW)

    assert mail.get_content_type() == "multipart/alternative"
    text, rich = mail.iter_parts()
    assert (text.get_content_type(), content(text)) == ("text/plain", "Thanks for your order.\n")
    assert (rich.get_content_type(), content(rich)) == ("text/html", html + "\n")


def test_non_ascii_is_utf8_in_seven_bit_encodings() -> None:
    mail = build_email(
        envelope(subject="Reçu n° 42 ✓", body="Merci, Zoë — 12 €", data={"html": "<p>Zoë</p>"}),
        Sender.parse("Boutique Éclair <noreply@shop.example>"),
        now=NOW,
    )
    raw = mail.as_bytes()
    raw.decode("ascii")  # every byte 7-bit: safe through relays without 8BITMIME
    assert b"=?utf-8?" in raw  # RFC 2047 encoded words for the subject and the name
    assert mail["Subject"] == "Reçu n° 42 ✓"
    for part in mail.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    text, rich = mail.iter_parts()
    assert content(text) == "Merci, Zoë — 12 €\n"
    assert content(rich) == "<p>Zoë</p>\n"


def test_message_id_is_the_same_for_a_resend_and_new_for_a_replay() -> None:
    first = envelope()
    assert message_id(first, "shop.example") == message_id(envelope(), "shop.example")
    assert message_id(envelope(generation=1), "shop.example") != message_id(first, "shop.example")


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hi\r\nBcc: everyone@example.com"},
        {"subject": "Hi\nthere"},
        {"to": "alice@example.com\r\nBcc: x@example.com"},
        {"data": {"html": ["not", "a", "document"]}},
    ],
)
def test_unsafe_messages_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidEmail):
        build_email(envelope(**overrides), Sender.parse(FROM))


#: Every character ``str.splitlines`` breaks on, NUL and TAB (issue 10 #9: a subject with
#: U+2028, NEL, VT or FF crashed the SMTP worker 21 times instead of failing once).
HEADER_BREAKERS = [
    "\r", "\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\t",
]  # fmt: skip


@pytest.mark.parametrize("sep", HEADER_BREAKERS, ids=[f"U+{ord(s):04X}" for s in HEADER_BREAKERS])
def test_a_line_separator_in_any_header_is_refused_never_raised_as_something_else(
    sep: str,
) -> None:
    for field in ("subject", "to"):
        with pytest.raises(InvalidEmail) as info:
            build_email(envelope(**{field: f"Hi{sep}Bcc: all@example.com"}), Sender.parse(FROM))
        assert info.value.args[0].startswith(f"{field}:")
        assert f"U+{ord(sep):04X}" in info.value.args[0]
    with pytest.raises(InvalidEmail):
        Sender.parse(f"Shop{sep} <noreply@shop.example>")


@pytest.mark.parametrize(
    "overrides",
    [{"body": "a\ud800"}, {"subject": "\udfff"}, {"data": {"html": "<p>\ud800</p>"}}],
    ids=["body", "subject", "html"],
)
def test_text_with_no_utf8_form_is_refused_not_raised_as_unicode_error(
    overrides: dict[str, Any],
) -> None:
    with pytest.raises(InvalidEmail):
        build_email(envelope(**overrides), Sender.parse(FROM))


def test_sender_with_and_without_a_display_name() -> None:
    assert Sender.parse(FROM) == Sender(FROM, "noreply@shop.example")
    assert Sender.parse("noreply@shop.example").domain == "shop.example"
    for bad in ("not an address", "shop.example", "a@b\r\nBcc: c@d"):
        with pytest.raises(InvalidEmail):
            Sender.parse(bad)


# -- where to connect -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        ({"endpoint": "smtp.example.com:2525"}, SmtpTarget("smtp.example.com", 2525, "starttls")),
        ({"endpoint": "smtp.example.com"}, SmtpTarget("smtp.example.com", 587, "starttls")),
        ({"endpoint": "smtps://smtp.example.com"}, SmtpTarget("smtp.example.com", 465, "tls")),
        ({"endpoint": "smtp://127.0.0.1:1025"}, SmtpTarget("127.0.0.1", 1025, "none")),
        ({"endpoint": "smtp+starttls://mx:25"}, SmtpTarget("mx", 25, "starttls")),
        ({"endpoint": "mx:465", "tls": "tls"}, SmtpTarget("mx", 465, "tls")),
        ({"endpoint": "[::1]:25", "tls": "none"}, SmtpTarget("::1", 25, "none")),
    ],
)
def test_endpoint_and_tls_mode(spec: dict[str, Any], target: SmtpTarget) -> None:
    assert smtp_target("smtp", spec) == target


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"endpoint": "http://mx:25"},
        {"endpoint": "mx:25", "tls": "ssl"},
        {"endpoint": "smtps://mx", "tls": "none"},
    ],
)
def test_bad_endpoints_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        smtp_target("smtp", spec)


# -- the adapter against a real SMTP server ---------------------------------------------


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_VENDOR_TEST_SMTP_FROM", FROM)
    monkeypatch.setenv("HERALD_VENDOR_TEST_SMTP_USER", USER)
    monkeypatch.setenv("HERALD_VENDOR_TEST_SMTP_PASSWORD", PASSWORD)


def smtp_spec(endpoint: str, *, auth: bool = True) -> dict[str, Any]:
    credentials = {"from": "env:HERALD_VENDOR_TEST_SMTP_FROM"}
    if auth:
        credentials |= {
            "username": "env:HERALD_VENDOR_TEST_SMTP_USER",
            "password": "env:HERALD_VENDOR_TEST_SMTP_PASSWORD",
        }
    return {"type": "smtp", "channel": "email", "endpoint": endpoint, "credentials": credentials}


@pytest.fixture
async def relay() -> AsyncIterator[tuple[FakeSmtp, str]]:
    fake = FakeSmtp(username=USER, password=PASSWORD)
    async with fake.running() as endpoint:
        yield fake, f"smtp://{endpoint}"


@pytest.fixture
async def smtp(relay: tuple[FakeSmtp, str], smtp_env: None) -> AsyncIterator[SmtpProvider]:
    provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(relay[1]), timeout_s=2)
    yield provider
    await provider.close()


async def failure(provider: SmtpProvider, message: Envelope | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.send(message or envelope())
    return caught.value


async def test_a_message_arrives_authenticated_over_one_reused_connection(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str]
) -> None:
    fake, _ = relay
    messages = [envelope(id=f"n-{i}", data={"html": "<p>hi</p>"}) for i in range(3)]
    receipts = [await smtp.send(m) for m in messages]

    assert [r.vendor_message_id for r in receipts] == [f"<n-{i}.0@shop.example>" for i in range(3)]
    assert fake.connections == 1
    first = fake.received[0]
    assert (first.mail_from, first.rcpt_tos, first.username) == (
        "noreply@shop.example",
        ["alice@example.com"],
        USER,
    )
    assert first.message["Message-ID"] == receipts[0].vendor_message_id
    assert first.message.get_content_type() == "multipart/alternative"


@pytest.mark.parametrize(("code", "row"), sorted(REPLY_CODES.items()))
async def test_each_reply_code_of_the_table(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str], code: int, row: tuple[bool, str]
) -> None:
    permanent, _ = row
    relay[0].refuse(f"{code} x.x.x refused for the test", address="alice@example.com")

    error = await failure(smtp)

    assert isinstance(error, PermanentProviderError if permanent else TransientProviderError)
    assert error.code == str(code)
    assert "alice@example.com" not in str(error)


@pytest.mark.parametrize(("code", "permanent"), [(459, False), (557, True)])
async def test_unlisted_codes_follow_their_reply_class_and_are_logged_once(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str], code: int, permanent: bool
) -> None:
    relay[0].refuse(f"{code} something new")
    with structlog.testing.capture_logs() as logs:
        errors = [await failure(smtp), await failure(smtp)]

    assert all(isinstance(e, PermanentProviderError) == permanent for e in errors)
    assert [e["code"] for e in logs if e["event"] == "smtp_unlisted_error"] == [str(code)]


@pytest.mark.parametrize(
    ("stage", "reply", "kind"),
    [
        ("data", "451 4.3.0 try again later", TransientProviderError),
        ("data", "554 5.7.1 rejected as spam", PermanentProviderError),
        ("data", "552 5.3.4 message too big", PermanentProviderError),
        ("mail", "421 4.7.0 too many connections", TransientProviderError),
    ],
)
async def test_refusals_at_mail_and_data(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str], stage: Any, reply: str, kind: type
) -> None:
    relay[0].refuse(reply, stage=stage, times=1)
    error = await failure(smtp)
    assert isinstance(error, kind) and error.code == reply[:3]
    assert await smtp.send(envelope())  # the connection (or a new one) still works
    assert len(relay[0].received) == 1


async def test_sender_refused_is_permanent_and_logged_as_a_setup_error(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str]
) -> None:
    relay[0].refuse("553 5.7.1 sender not allowed", stage="mail")
    with structlog.testing.capture_logs() as logs:
        error = await failure(smtp)
    assert isinstance(error, PermanentProviderError) and error.code == "553"
    assert [e["code"] for e in logs if e["event"] == "smtp_setup_error"] == ["553"]


async def test_wrong_password_is_transient_and_logged_as_a_setup_error(
    relay: tuple[FakeSmtp, str], smtp_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERALD_VENDOR_TEST_SMTP_PASSWORD", "wrong")
    provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(relay[1]), timeout_s=2)
    with structlog.testing.capture_logs() as logs:
        error = await failure(provider)
    await provider.close()

    assert isinstance(error, TransientProviderError) and error.code == "535"
    assert [e["code"] for e in logs if e["event"] == "smtp_setup_error"] == ["535"]
    assert relay[0].received == []


async def test_auth_required_but_not_configured_is_transient(
    relay: tuple[FakeSmtp, str], smtp_env: None
) -> None:
    provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(relay[1], auth=False))
    error = await failure(provider)
    await provider.close()
    assert isinstance(error, TransientProviderError) and error.code == "530"


async def test_connection_refused_is_transient(smtp_env: None) -> None:
    async with FakeSmtp().running() as endpoint:
        pass  # the port is closed again
    provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(f"smtp://{endpoint}"))
    error = await failure(provider)
    assert isinstance(error, TransientProviderError) and error.code == "connect_error"


async def test_a_dropped_connection_is_transient_and_the_next_send_reconnects(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str]
) -> None:
    fake, _ = relay
    fake.refuse(DROP, stage="data", times=1)
    error = await failure(smtp)
    assert isinstance(error, TransientProviderError) and error.code == "disconnected"

    await smtp.send(envelope())
    assert (fake.connections, len(fake.received)) == (2, 1)


async def test_a_slow_server_times_out_as_transient(
    relay: tuple[FakeSmtp, str], smtp_env: None
) -> None:
    fake, endpoint = relay
    fake.delay_s = 1.0
    provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(endpoint), timeout_s=0.3)
    error = await failure(provider)
    fake.delay_s = 0
    await provider.send(envelope())  # a fresh connection: the timed-out one was closed
    await provider.close()
    assert isinstance(error, TransientProviderError) and error.code == "timeout"
    assert fake.connections == 2


async def test_an_idle_connection_dropped_by_the_relay_is_replaced_before_use(
    relay: tuple[FakeSmtp, str], smtp_env: None
) -> None:
    fake, endpoint = relay
    provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(endpoint), idle_check_s=0)
    await provider.send(envelope())
    for session in fake._sessions:  # the relay's idle timeout
        assert session.transport is not None
        session.transport.close()
    await asyncio.sleep(0.05)
    await provider.send(envelope())
    await provider.close()
    assert (fake.connections, len(fake.received)) == (2, 2)


async def test_an_address_that_needs_smtputf8_is_permanent_without_it(
    smtp: SmtpProvider,
) -> None:
    error = await failure(smtp, envelope(to="zoë@example.com"))
    assert isinstance(error, PermanentProviderError) and error.code == "not_supported"


async def test_unsafe_messages_fail_permanently_before_any_connection(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str]
) -> None:
    error = await failure(smtp, envelope(subject="a\r\nBcc: b@example.com"))
    assert isinstance(error, PermanentProviderError) and error.code == "invalid_message"
    assert relay[0].connections == 0


@pytest.mark.parametrize(
    "exc",
    [
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        email.errors.HeaderParseError("expected a header"),
    ],
    ids=["unicode", "header-parse"],
)
def test_a_message_the_client_cannot_encode_is_a_permanent_error(exc: Exception) -> None:
    verdict = smtp_verdict(exc)
    assert verdict.permanent and verdict.code == "invalid_message"


@pytest.mark.parametrize("sep", ["\u2028", "\x85", "\x0b", "\x0c", "\x00"])
async def test_a_header_line_separator_fails_permanently_before_any_connection(
    smtp: SmtpProvider, relay: tuple[FakeSmtp, str], sep: str
) -> None:
    error = await failure(smtp, envelope(subject=f"Hi{sep}Bcc: all@example.com"))
    assert isinstance(error, PermanentProviderError) and error.code == "invalid_message"
    assert relay[0].connections == 0


def test_missing_or_half_credentials_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = smtp_spec("mx:25")
    with pytest.raises(MissingCredential):
        SmtpProvider("smtp-test", Channel.EMAIL, spec)  # nothing set
    monkeypatch.setenv("HERALD_VENDOR_TEST_SMTP_FROM", FROM)
    monkeypatch.setenv("HERALD_VENDOR_TEST_SMTP_USER", USER)
    spec["credentials"].pop("password")
    with pytest.raises(MissingCredential):
        SmtpProvider("smtp-test", Channel.EMAIL, spec)


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (EC keys: quick to make)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(("mode", "implicit"), [("starttls", False), ("tls", True)])
async def test_starttls_and_implicit_tls(
    certificate: tuple[Path, Path], smtp_env: None, mode: str, implicit: bool
) -> None:
    cert_path, key_path = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_path, key_path)
    client_tls = ssl.create_default_context(cafile=str(cert_path))
    fake = FakeSmtp(username=USER, password=PASSWORD, tls_context=server_tls, implicit_tls=implicit)
    async with fake.running() as endpoint:
        spec = {**smtp_spec(endpoint), "tls": mode}
        provider = SmtpProvider("smtp-test", Channel.EMAIL, spec, tls_context=client_tls)
        await provider.send(envelope())
        await provider.close()
    [received] = fake.received
    assert received.tls and received.username == USER


async def test_starttls_is_required_not_opportunistic(smtp_env: None) -> None:
    async with FakeSmtp().running() as endpoint:  # offers no STARTTLS
        provider = SmtpProvider("smtp-test", Channel.EMAIL, smtp_spec(endpoint, auth=False))
        with structlog.testing.capture_logs() as logs:
            error = await failure(provider)
        await provider.close()
    assert isinstance(error, TransientProviderError) and error.code == "smtp_error"
    assert any(e["event"] == "smtp_setup_error" for e in logs)


# -- the whole pipeline -----------------------------------------------------------------

pipeline = pytest.mark.integration


@pytest.fixture(scope="module")
def mail_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HERALD_VENDOR_TEST_SMTP_FROM", FROM)
        patch.setenv("HERALD_VENDOR_TEST_SMTP_USER", USER)
        patch.setenv("HERALD_VENDOR_TEST_SMTP_PASSWORD", PASSWORD)
        yield


@pytest.fixture(scope="module")
async def relays() -> AsyncIterator[tuple[FakeSmtp, FakeSmtp, str, str]]:
    first, second = FakeSmtp(USER, PASSWORD), FakeSmtp(USER, PASSWORD)
    async with first.running() as a, second.running() as b:
        yield first, second, a, b


def mail_rules(a: str, b: str) -> dict[str, Any]:
    """Two relays in one tier (``smtp-a`` cheaper); marketing mail through ``smtp-a`` only,
    so a transient error there is retried rather than failed over."""
    return {
        "providers": {
            "smtp-a": {**smtp_spec(f"smtp://{a}"), "cost": {"default": 0.001}},
            "smtp-b": {**smtp_spec(f"smtp://{b}"), "cost": {"default": 0.002}},
        },
        "rules": [
            {"name": "mail-marketing", "match": {"channel": "email", "category": "marketing"},
             "tiers": [["smtp-a"]]},
            {"name": "mail", "match": {"channel": "email"}, "tiers": [["smtp-a", "smtp-b"]]},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
async def mail_stack(
    relays: tuple[FakeSmtp, FakeSmtp, str, str],
    mail_env: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    folder = tmp_path_factory.mktemp("mail-stack")
    routing = folder / "routing.yaml"
    routing.write_text(yaml.safe_dump(mail_rules(relays[2], relays[3])))
    database = f"sqlite+aiosqlite:///{folder}/herald.db"
    await asyncio.to_thread(upgrade, database)  # Alembic runs a loop of its own
    async with running_stack(stack_settings(database, routing_file=str(routing))) as stack:
        yield stack


@pytest.fixture
def fakes(relays: tuple[FakeSmtp, FakeSmtp, str, str]) -> tuple[FakeSmtp, FakeSmtp]:
    for fake in relays[:2]:
        fake.reset()
    return relays[0], relays[1]


async def send_mail(stack: Stack, to: str, **extra: Any) -> str:
    payload = {"channel": "email", "to": to, "category": "transactional", "subject": "Hello"}
    response = await stack.send(**{**payload, "body": "Plain hello", **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def vendor_id(stack: Stack, notification_id: str) -> str | None:
    async with stack.sessions() as session:
        return (
            await session.execute(
                select(Notification.vendor_message_id).where(Notification.id == notification_id)
            )
        ).scalar_one()


@pipeline
async def test_pipeline_delivers_text_and_html_with_the_headers(
    mail_stack: Stack, fakes: tuple[FakeSmtp, FakeSmtp]
) -> None:
    nid = await send_mail(
        mail_stack,
        "carol@example.com",
        subject="Votre reçu",
        body="Merci !",
        data={"html": "<p>Merci&nbsp;!</p>"},
    )
    done = await mail_stack.wait_status(nid, "sent")

    [received] = fakes[0].received
    mail = received.message
    assert received.username == USER and received.rcpt_tos == ["carol@example.com"]
    assert (mail["From"], mail["To"], mail["Subject"]) == (FROM, "carol@example.com", "Votre reçu")
    assert mail[HEADER_NOTIFICATION_ID] == nid
    text, html = mail.iter_parts()
    assert content(text) == "Merci !\n"
    assert content(html) == "<p>Merci&nbsp;!</p>\n"
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("smtp-a", "sent")]
    assert await vendor_id(mail_stack, nid) == mail["Message-ID"]
    assert fakes[1].received == []


@pipeline
async def test_pipeline_permanent_refusal_fails_once_and_is_dead_lettered(
    mail_stack: Stack, fakes: tuple[FakeSmtp, FakeSmtp]
) -> None:
    for fake in fakes:
        fake.refuse("550 5.1.1 no such mailbox", address="gone@example.com")
    nid = await send_mail(mail_stack, "gone@example.com")

    done = await mail_stack.wait_status(nid, "failed")
    assert [(a["provider"], a["error_code"]) for a in done["attempts"]] == [("smtp-a", "550")]
    [letter] = await wait_dead_letters(mail_stack, nid)
    assert (letter.reason, letter.last_error_code, letter.attempts) == ("permanent_error", "550", 1)
    assert fakes[0].received == fakes[1].received == []


@pipeline
async def test_pipeline_transient_refusal_is_retried_then_sent(
    mail_stack: Stack, fakes: tuple[FakeSmtp, FakeSmtp]
) -> None:
    fakes[0].refuse("451 4.7.1 greylisted, try again", address="dave@example.com", times=2)
    nid = await send_mail(mail_stack, "dave@example.com", category="marketing")

    done = await mail_stack.wait_status(nid, "sent")
    outcomes = [(a["outcome"], a["error_code"]) for a in done["attempts"]]
    assert outcomes == [("transient_error", "451"), ("transient_error", "451"), ("sent", None)]
    assert len(fakes[0].sent_to("dave@example.com")) == 1


@pipeline
async def test_pipeline_fails_over_to_the_second_relay(
    mail_stack: Stack, fakes: tuple[FakeSmtp, FakeSmtp]
) -> None:
    fakes[0].refuse("421 4.3.2 service shutting down", stage="mail")
    nid = await send_mail(mail_stack, "erin@example.com")

    done = await mail_stack.wait_status(nid, "sent")
    attempts = [(a["provider"], a["outcome"]) for a in done["attempts"]]
    assert attempts == [("smtp-a", "transient_error"), ("smtp-b", "sent")]
    assert fakes[0].received == [] and len(fakes[1].sent_to("erin@example.com")) == 1


@pipeline
async def test_pipeline_a_stored_message_with_a_line_separator_fails_once(
    mail_stack: Stack, fakes: tuple[FakeSmtp, FakeSmtp]
) -> None:
    """A message accepted before the API refused U+2028 in a subject (issue 10 #9) fails
    for good on its first attempt: no crash, no redelivery loop, nothing sent."""
    state = mail_stack._server.config.app.state
    principal = await state.keys.authenticate(ADMIN_KEY)
    stored = ValidSend(
        channel=Channel.EMAIL,
        to="frank@example.com",
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        subject="Your receipt\u2028Bcc: everyone@example.com",
        body="Thanks",
        data={},
        metadata={},
        expires_at=None,
        send_at=None,
    )
    accepted = await state.accept.accept(principal, stored, idempotency_key=None, fingerprint=None)

    done = await mail_stack.wait_status(accepted.id, "failed")
    assert [(a["provider"], a["error_code"]) for a in done["attempts"]] == [
        ("smtp-a", "invalid_message")
    ]
    [letter] = await wait_dead_letters(mail_stack, accepted.id)
    assert (letter.reason, letter.attempts) == ("permanent_error", 1)
    assert fakes[0].received == fakes[1].received == []


async def wait_dead_letters(stack: Stack, notification_id: str) -> list[Any]:
    for _ in range(200):
        letters = [d for d in await stack.dead_letters() if d.notification_id == notification_id]
        if letters:
            return letters
        await asyncio.sleep(0.05)
    raise AssertionError(f"{notification_id} never reached the dead-letter store")
