"""The e-mail Herald sends, built from an envelope: a pure function, no I/O.

Kept apart from the SMTP adapter so the exact message (headers, parts, charsets) is
tested without a server, and so another e-mail adapter can send the same message.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from herald.domain import Envelope, utcnow

#: Lets a bounce, a complaint or a support ticket be traced back to the notification.
HEADER_NOTIFICATION_ID = "X-Herald-Notification-Id"
#: ``envelope.data["html"]``: the HTML alternative of the plain-text body.
HTML_KEY = "html"

#: 7-bit transfer encodings (quoted-printable or base64) for non-ASCII parts, so the
#: message survives relays without 8BITMIME; CRLF line ends, as SMTP wants.
POLICY = email.policy.SMTP.clone(cte_type="7bit")

#: What a header value must not carry: C0 and C1 controls (tab included), DEL, and the
#: Unicode line and paragraph separators. That is every character ``str.splitlines``
#: breaks on (CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029), which Python's e-mail
#: package refuses in a header with a ValueError, and NUL, which it lets through.
HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def header_unsafe(value: str) -> str | None:
    """Why ``value`` cannot be a header value (the first bad character), or ``None``."""
    found = HEADER_UNSAFE.search(value)
    if found is None:
        return None
    return (
        "must not contain line breaks or control characters "
        f"(U+{ord(found.group()):04X} at position {found.start()})"
    )


class InvalidEmail(ValueError):
    """The envelope cannot become a safe e-mail: sending it again cannot help."""


@dataclass(frozen=True, slots=True)
class Sender:
    """The ``From`` of every message of one provider, parsed once."""

    header: str  # as written in the From header, display name included
    address: str  # the bare address: the SMTP envelope sender

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @classmethod
    def parse(cls, value: str) -> Sender:
        """``"Shop <noreply@shop.example>"`` or ``"noreply@shop.example"``."""
        _refuse_unsafe("from", value)
        _, address = email.utils.parseaddr(value)
        local, _, domain = address.rpartition("@")
        if not local or not domain or " " in address:
            raise InvalidEmail(f"from: {value!r} is not an e-mail address")
        return cls(header=value.strip(), address=address)


def message_id(message: Envelope, domain: str) -> str:
    """The same id for every send of one notification generation.

    Deterministic rather than ``make_msgid``'s random one, on purpose: if a send is
    repeated (a crash after the server's ``250``, a timeout after it accepted the
    DATA), receiving systems that drop duplicates by Message-ID (Gmail does) show it
    once. A replay is a new generation, so it gets a new id and is shown again.
    """
    return f"<{message.id}.{message.generation}@{domain}>"


def build_email(message: Envelope, sender: Sender, *, now: datetime | None = None) -> EmailMessage:
    """Plain text, plus a ``multipart/alternative`` HTML part when ``data["html"]`` is set.

    Raises ``InvalidEmail`` (never anything else) for an envelope that cannot become a
    safe message: the API refuses such input, but a message stored before a rule was
    tightened, or published by hand, must fail for good instead of crashing a worker.
    """
    try:
        subject = message.subject or ""
        _refuse_unsafe("subject", subject)
        _refuse_unsafe("to", message.to)
        out = _assemble(message, sender, subject, now or utcnow())
        out.as_bytes()  # fold and encode every header and part now, not inside the send
    except InvalidEmail:
        raise
    except (ValueError, TypeError, email.errors.MessageError) as exc:
        raise InvalidEmail(f"cannot build the message: {exc}") from exc
    return out


def _assemble(message: Envelope, sender: Sender, subject: str, now: datetime) -> EmailMessage:
    out = EmailMessage(policy=POLICY)
    out["From"] = sender.header
    out["To"] = message.to
    out["Subject"] = subject
    out["Date"] = email.utils.format_datetime(now)
    out["Message-ID"] = message_id(message, sender.domain)
    out[HEADER_NOTIFICATION_ID] = message.id
    out.set_content(message.body or "")
    html = message.data.get(HTML_KEY)
    if html is not None:
        if not isinstance(html, str):
            raise InvalidEmail(f"data.{HTML_KEY}: must be a string (an HTML document)")
        out.add_alternative(html, subtype="html")
    return out


def _refuse_unsafe(field: str, value: str) -> None:
    """A line break in a header value would let the caller write headers of their own."""
    why = header_unsafe(value)
    if why is not None:
        raise InvalidEmail(f"{field}: {why}")
