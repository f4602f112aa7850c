"""E-mail through any SMTP relay, with aiosmtplib (asyncio: nothing blocks the loop).

Rules document::

    smtp-main:
      type: smtp
      channel: email
      endpoint: smtp.example.com:587      # host:port; STARTTLS by default
      credentials: {from: env:SMTP_FROM, username: env:SMTP_USERNAME,
                    password: env:SMTP_PASSWORD}

The TLS mode is ``starttls`` (the default), ``tls`` (implicit TLS, port 465) or ``none``
(plain, for a relay on localhost and for tests): a ``tls`` key of the provider, or the
endpoint's scheme (``smtp+starttls://``, ``smtps://``, ``smtp://``), which needs no key.

Connections: a small pool per provider (``pool_size``, 4), each connection opened on
first use, kept open and reused, so a message costs MAIL, RCPT and DATA and not a TCP,
TLS and AUTH handshake. A connection idle for ``idle_check_s`` is checked with NOOP
before it carries a message (relays drop idle clients), and one that failed in an
unknown state (timeout, disconnect, cancellation) is closed and opened afresh by its
next user. No message is retried on a fresh connection inside the call: the server
may have taken it already; the delivery loop's retry and the fixed Message-ID
(providers.email_message) handle that.

Errors follow RFC 5321's reply classes (``REPLY_CODES`` below): 5xx permanent, 4xx
transient. Exceptions: the authentication replies (530, 534, 535, 538) and anything
that fails before MAIL FROM (connect, EHLO, STARTTLS, AUTH) say nothing about the
message: they are transient, and a refusal is logged as an error, so the breaker opens
and traffic fails over to the next provider instead of every message failing at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.errors
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

import aiosmtplib

from herald.domain import Channel, Envelope
from herald.errors import PermanentProviderError
from herald.logs import get_logger
from providers.base import BaseProvider, Receipt, Verdict
from providers.credentials import MissingCredential, resolve_credentials
from providers.email_message import InvalidEmail, Sender, build_email

if TYPE_CHECKING:
    from providers.registry import ProviderDeps

log = get_logger(__name__)

TlsMode = Literal["starttls", "tls", "none"]
TLS_MODES: tuple[TlsMode, ...] = ("starttls", "tls", "none")
DEFAULT_PORTS: dict[TlsMode, int] = {"starttls": 587, "tls": 465, "none": 25}
SCHEMES: dict[str, TlsMode] = {"smtp+starttls": "starttls", "smtps": "tls", "smtp": "none"}

#: SMTP reply code → (permanent, meaning). RFC 5321 §4.2 and RFC 4954 (AUTH).
REPLY_CODES: dict[int, tuple[bool, str]] = {
    421: (False, "service not available, closing the connection"),
    450: (False, "mailbox unavailable (busy or greylisted)"),
    451: (False, "local error in processing"),
    452: (False, "insufficient system storage"),
    454: (False, "temporary authentication or TLS failure"),
    455: (False, "server unable to accommodate parameters"),
    500: (True, "syntax error, command unrecognised"),
    501: (True, "syntax error in parameters (a malformed address)"),
    502: (True, "command not implemented"),
    503: (False, "bad sequence of commands (connection state)"),
    504: (True, "command parameter not implemented"),
    530: (False, "authentication required"),
    534: (False, "authentication mechanism too weak"),
    535: (False, "authentication credentials invalid"),
    538: (False, "encryption required for the authentication mechanism"),
    550: (True, "mailbox unavailable"),
    551: (True, "user not local"),
    552: (True, "exceeded storage allocation (mailbox full or message too large)"),
    553: (True, "mailbox name not allowed"),
    554: (True, "transaction failed (rejected by policy or as spam)"),
    555: (True, "MAIL or RCPT parameters not recognised"),
    556: (True, "domain does not accept mail"),
}
#: Replies that say our configuration is wrong, not the message: logged as errors.
CONFIG_CODES = frozenset({530, 534, 535, 538})

DEFAULT_TIMEOUT_S = 8.0  # under the delivery loop's default 10 s, so ours answers first


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    tls: TlsMode


def smtp_target(provider: str, spec: Mapping[str, Any]) -> SmtpTarget:
    """``endpoint`` (``host:port`` or ``scheme://host:port``) and ``tls`` → where and how."""
    endpoint = spec.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f"{provider}.endpoint: the SMTP relay's host:port is required")
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "", endpoint
    if scheme and scheme not in SCHEMES:
        raise ValueError(f"{provider}.endpoint: unknown scheme {scheme!r} (one of {list(SCHEMES)})")
    key = spec.get("tls")
    if key is not None and key not in TLS_MODES:
        raise ValueError(f"{provider}.tls: must be one of {', '.join(TLS_MODES)}, not {key!r}")
    by_scheme = SCHEMES.get(scheme)
    if key is not None and by_scheme is not None and key != by_scheme:
        raise ValueError(f"{provider}: tls {key!r} contradicts the endpoint scheme {scheme!r}")
    mode: TlsMode = key or by_scheme or "starttls"
    parts = urlsplit(f"//{rest}")
    if not parts.hostname:
        raise ValueError(f"{provider}.endpoint: no host in {endpoint!r}")
    return SmtpTarget(parts.hostname, parts.port or DEFAULT_PORTS[mode], mode)


def reply_verdict(code: int, detail: str) -> Verdict:
    if code in REPLY_CODES:
        permanent, meaning = REPLY_CODES[code]
        return Verdict(permanent, str(code), meaning, detail, config=code in CONFIG_CODES)
    # Not in the table: RFC 5321 §4.2.1 says the first digit decides (5 permanent).
    return Verdict(code // 100 == 5, str(code), "unlisted reply", detail, listed=False)


class RelaySetupFailed(Exception):
    """Connecting, STARTTLS, EHLO or AUTH failed: before MAIL FROM, so never the message's
    fault. Whatever the reply code, it is transient (the breaker opens, traffic fails
    over), and a refusal by the relay is a set-up problem, logged as an error."""


def smtp_verdict(exc: BaseException) -> Verdict:
    """The error table, for every exception a send can raise."""
    match exc:
        case RelaySetupFailed(__cause__=BaseException() as cause):
            inner = smtp_verdict(cause)
            refused = isinstance(cause, aiosmtplib.SMTPResponseException)
            return replace(inner, permanent=False, config=inner.config or refused)
        case aiosmtplib.SMTPRecipientsRefused(recipients=[first, *_]):
            return reply_verdict(first.code, first.message)
        case aiosmtplib.SMTPSenderRefused():  # a 5xx for our From is a set-up problem
            verdict = reply_verdict(exc.code, exc.message)
            return replace(verdict, config=verdict.config or verdict.permanent)
        case aiosmtplib.SMTPResponseException():
            return reply_verdict(exc.code, exc.message)
        case aiosmtplib.SMTPNotSupported():
            # An address needs SMTPUTF8 and this relay lacks it: it will not change.
            return Verdict(True, "not_supported", "not supported by the relay", str(exc))
        case aiosmtplib.SMTPTimeoutError() | TimeoutError():
            return Verdict(False, "timeout", "timed out", str(exc))
        case aiosmtplib.SMTPConnectError():
            return Verdict(False, "connect_error", "could not connect", str(exc))
        case aiosmtplib.SMTPServerDisconnected():
            return Verdict(False, "disconnected", "server disconnected", str(exc))
        case ssl.SSLError():
            return Verdict(False, "tls_error", "TLS failed", str(exc), config=True)
        case OSError():
            return Verdict(False, "connect_error", "network error", str(exc))
        case UnicodeError() | email.errors.MessageError():  # cannot be encoded: never will
            return Verdict(True, "invalid_message", "the message cannot be encoded", str(exc))
        case ValueError():  # aiosmtplib refuses an address unsafe on a command line
            return Verdict(True, "invalid_address", "address refused by the client", str(exc))
        case aiosmtplib.SMTPException():  # e.g. STARTTLS or AUTH not offered by the relay
            return Verdict(False, "smtp_error", "relay set-up", str(exc), config=True)
    return Verdict(False, "unknown", "unexpected error", repr(exc), listed=False)


#: What ``SmtpProvider.send`` turns into provider errors; anything else is a bug.
SEND_ERRORS: tuple[type[BaseException], ...] = (
    RelaySetupFailed,
    aiosmtplib.SMTPException,
    OSError,
    ValueError,
    email.errors.MessageError,
)


class _Slot:
    """One pooled connection: an ``aiosmtplib.SMTP`` client and when it was last used."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.last_used = time.monotonic()

    async def ready(self, idle_check_s: float) -> aiosmtplib.SMTP:
        """Connected (and STARTTLS + AUTH done by ``connect``); NOOP first after a long idle."""
        if self.client.is_connected and time.monotonic() - self.last_used > idle_check_s:
            try:
                await self.client.noop()
            except (aiosmtplib.SMTPException, OSError):
                self.client.close()  # the relay dropped us while idle: reconnect below
        if not self.client.is_connected:
            await self.client.connect()
        return self.client


class SmtpPool:
    """A fixed set of reused connections; a caller waits (within its timeout) for a free one."""

    def __init__(self, clients: list[aiosmtplib.SMTP], *, idle_check_s: float) -> None:
        self.idle_check_s = idle_check_s
        self._slots = [_Slot(c) for c in clients]
        self._free: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        for slot in self._slots:  # last in, first out: warm connections are reused first
            self._free.put_nowait(slot)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        slot = await self._free.get()
        try:
            try:
                client = await slot.ready(self.idle_check_s)
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise RelaySetupFailed(str(exc)) from exc
            yield client
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            raise  # the relay answered; aiosmtplib sent RSET, the connection is reusable
        except BaseException:
            slot.client.close()  # state unknown (timeout, cancel, disconnect): start afresh
            raise
        finally:
            slot.last_used = time.monotonic()
            self._free.put_nowait(slot)

    def close(self) -> None:
        for slot in self._slots:
            slot.client.close()


class SmtpProvider(BaseProvider):
    type_name = "smtp"
    #: No limit of ours: the relay's SIZE limit answers 552 (permanent) when exceeded.
    max_body_chars: ClassVar[int | None] = None
    #: Relays differ too much for a default; set ``max_per_s`` in the rules to yours.
    default_max_per_s: ClassVar[float | None] = None

    def __init__(
        self,
        name: str,
        channel: Channel,
        spec: dict[str, Any],
        *,
        pool_size: int = 4,
        idle_check_s: float = 30.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(name, channel, spec)
        if channel is not Channel.EMAIL:
            raise ValueError(f"{name}: an smtp provider sends e-mail, not {channel}")
        credentials = resolve_credentials(name, spec)
        if "from" not in credentials:
            raise MissingCredential(f"{name}.credentials.from: the sender address is required")
        if ("username" in credentials) != ("password" in credentials):
            raise MissingCredential(f"{name}.credentials: username and password go together")
        self.sender = Sender.parse(credentials["from"])
        self.target = smtp_target(name, spec)
        self.timeout_s = timeout_s
        self._pool = SmtpPool(
            [
                aiosmtplib.SMTP(
                    hostname=self.target.host,
                    port=self.target.port,
                    use_tls=self.target.tls == "tls",
                    start_tls=self.target.tls == "starttls",  # required, never opportunistic
                    username=credentials.get("username"),
                    password=credentials.get("password"),
                    timeout=timeout_s,
                    tls_context=tls_context,
                )
                for _ in range(pool_size)
            ],
            idle_check_s=idle_check_s,
        )

    async def send(self, message: Envelope) -> Receipt:
        try:
            mail = build_email(message, self.sender)
        except InvalidEmail as exc:
            raise PermanentProviderError(f"{self.name}: {exc}", code="invalid_message") from exc
        try:
            async with asyncio.timeout(self.timeout_s), self._pool.connection() as client:
                await client.send_message(mail, sender=self.sender.address, recipients=[message.to])
        except SEND_ERRORS as exc:
            raise self.error_for(smtp_verdict(exc), "SMTP", message) from exc
        return Receipt(provider=self.name, vendor_message_id=str(mail["Message-ID"]))

    async def close(self) -> None:
        self._pool.close()


def factory(name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps) -> SmtpProvider:
    """Registry entry: aiosmtplib is asyncio, so no thread pool; its own connection pool."""
    return SmtpProvider(name, channel, spec)
