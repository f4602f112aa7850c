"""A real SMTP server (aiosmtpd's protocol) on 127.0.0.1, for the SMTP adapter's tests.

It runs in the test's event loop (as the stack's API does) rather than in aiosmtpd's
``Controller`` thread: nothing to join, and what it records is read without locks. It
records every message it accepts, checks AUTH when given a username and password (over
plain TCP too, as tests need), offers STARTTLS or implicit TLS when given a certificate,
and can be told to answer any SMTP reply to MAIL, RCPT or DATA, to drop the connection,
or to be slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

Stage = Literal["mail", "rcpt", "data"]
#: A reply that is no reply: the server closes the connection instead.
DROP = "drop"


@dataclass(slots=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    username: str | None  # who authenticated, None when nobody did
    tls: bool  # whether the session was encrypted (STARTTLS or implicit)

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=email.policy.default).parsebytes(self.content)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(slots=True)
class Refusal:
    reply: str  # e.g. "550 5.1.1 mailbox unavailable", or DROP
    stage: Stage
    address: str | None  # only for this recipient; None: every message
    times: int | None  # answered this many times, then forgotten; None: until reset


@dataclass(slots=True)
class FakeSmtp:
    username: str | None = None
    password: str | None = None
    #: With a server certificate: STARTTLS is offered and required, or (``implicit_tls``)
    #: the whole connection is TLS.
    tls_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    received: list[Received] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    delay_s: float = 0.0
    port: int = 0
    _sessions: list[SMTP] = field(default_factory=list)

    @property
    def connections(self) -> int:
        """How many connections clients opened so far."""
        return len(self._sessions)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve until the block ends; yields ``host:port`` for the rules' ``endpoint``."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._protocol,
            "127.0.0.1",
            0,
            ssl=self.tls_context if self.implicit_tls else None,
        )
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield f"127.0.0.1:{self.port}"
        finally:
            server.close()
            for session in self._sessions:  # what the clients left open
                if session.transport is not None:
                    session.transport.close()
            await server.wait_closed()

    def refuse(
        self,
        reply: str,
        *,
        stage: Stage = "rcpt",
        address: str | None = None,
        times: int | None = None,
    ) -> None:
        self.refusals.append(Refusal(reply, stage, address, times))

    def reset(self) -> None:
        self.received.clear()
        self.refusals.clear()
        self.delay_s = 0.0

    def sent_to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]

    # -- aiosmtpd hooks ------------------------------------------------------------------

    def _protocol(self) -> SMTP:
        starttls = self.tls_context if not self.implicit_tls else None
        session = SMTP(
            self,
            hostname="fake-smtp.test",  # not socket.getfqdn(): no DNS lookup per connection
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=self._authenticate if self.username else None,
            auth_require_tls=False,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.append(session)
        return session

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (
            data.login.decode(),
            data.password.decode(),
        ) == (self.username, self.password)
        # handled=False: aiosmtpd answers the refusal itself (535 5.7.8).
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.username and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if reply := self._refusal("mail", address):
            return self._answer(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if reply := self._refusal("rcpt", address):
            return self._answer(server, reply)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for address in envelope.rcpt_tos:
            if reply := self._refusal("data", address):
                return self._answer(server, reply)
        auth = session.auth_data
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content or envelope.content,
                username=auth.login.decode() if isinstance(auth, LoginPassword) else None,
                tls=_encrypted(server),
            )
        )
        return f"250 2.0.0 Ok: queued as fake{len(self.received)}"

    def _refusal(self, stage: Stage, address: str) -> str | None:
        for refusal in self.refusals:
            if refusal.stage == stage and refusal.address in (None, address):
                if refusal.times is not None:
                    refusal.times -= 1
                    if refusal.times <= 0:
                        self.refusals.remove(refusal)
                return refusal.reply
        return None

    @staticmethod
    def _answer(server: SMTP, reply: str) -> str:
        if reply == DROP:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "421 4.3.0 closing"  # never reaches the client
        return reply


def _encrypted(server: SMTP) -> bool:
    """STARTTLS done, or implicit TLS from the first byte."""
    transport = server.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None
