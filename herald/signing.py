"""Keys derived from the operator's secrets, and the signed paging cursors made with them.

One secret, ``HERALD_CONSOLE_SECRET``, signs what Herald hands a client to bring back
(console session cookies, paging cursors); each use gets its own key derived with HMAC,
so a value signed for one purpose never verifies for another. Only ``herald dev`` may
derive the console key from the OTP secret: a production process refuses to start
without a console secret of its own (``Settings.insecure_secrets``).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer

from config.settings import Settings
from herald.errors import StartupRefused

#: Longer than any cursor we hand out: a bigger one is refused before it is decoded.
MAX_CURSOR_CHARS = 512


class BadCursor(ValueError):
    """A cursor this service did not hand out (tampered, crafted, or for another list)."""


def derive(key: bytes, purpose: str) -> bytes:
    """A key for one purpose only (HMAC-SHA256 of the purpose under ``key``)."""
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()


def console_key(settings: Settings) -> bytes:
    """``HERALD_CONSOLE_SECRET``; under ``herald dev`` only, derived from the OTP secret."""
    if settings.console_secret is not None and settings.console_secret.get_secret_value():
        return settings.console_secret.get_secret_value().encode()
    if settings.dev_mode:
        return derive(settings.otp_secret.get_secret_value().encode(), "herald-console-cookie")
    raise StartupRefused("herald: refusing to start: set HERALD_CONSOLE_SECRET")


class CursorCodec:
    """Keyset cursors ``(time, id)`` signed for one list (``kind``), so a client can only
    bring back a cursor this service made for that list."""

    def __init__(self, key: bytes) -> None:
        self._signer = URLSafeSerializer(derive(key, "herald-cursor"), salt="herald-cursor")

    @classmethod
    def for_settings(cls, settings: Settings) -> CursorCodec:
        return cls(console_key(settings))

    def encode(self, kind: str, at: datetime, id_: str) -> str:
        return str(self._signer.dumps([kind, at.isoformat(), id_]))

    def decode(self, kind: str, cursor: str) -> tuple[datetime, str]:
        """The position a cursor names; ``BadCursor`` unless we signed it for ``kind``."""
        if len(cursor) > MAX_CURSOR_CHARS:
            raise BadCursor("too long")
        try:
            data = self._signer.loads(cursor)
        except BadSignature:
            raise BadCursor("not signed by this service") from None
        if not (
            isinstance(data, list) and len(data) == 3 and all(isinstance(v, str) for v in data)
        ):
            raise BadCursor("not a cursor")
        cursor_kind, at, id_ = data
        if cursor_kind != kind:
            raise BadCursor(f"a cursor of another list ({cursor_kind})")
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError:
            raise BadCursor("not a cursor") from None
        if parsed.tzinfo is None:  # every cursor we sign carries one
            raise BadCursor("not a cursor")
        return parsed, id_
