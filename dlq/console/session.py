"""Console sign-in sessions and CSRF tokens, with no server-side state.

The cookie holds the API key's *id* (never the key) and a random nonce, signed and
timestamped with itsdangerous; every request looks the key up again, so a revoked key
or a changed scope takes effect at once. The CSRF token is an HMAC of the nonce: a page
can only carry it if the server rendered it for this session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "herald_console"
#: Set by the sign-in page so the sign-in form itself is CSRF-protected (double submit).
LOGIN_COOKIE = "herald_console_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    key_id: str
    nonce: str


class SessionCodec:
    def __init__(self, secret: bytes, *, max_age_s: int) -> None:
        self._secret = secret
        self.max_age_s = max_age_s
        self._signer = URLSafeTimedSerializer(secret, salt="herald-console-session")

    def issue(self, key_id: str) -> str:
        return self._signer.dumps({"k": key_id, "n": secrets.token_urlsafe(16)})

    def read(self, cookie: str | None) -> ConsoleSession | None:
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # also a SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("k"), str):
            return None
        return ConsoleSession(key_id=data["k"], nonce=str(data.get("n", "")))

    def csrf_token(self, session: ConsoleSession) -> str:
        return hmac.new(self._secret, f"csrf:{session.nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: ConsoleSession, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))


def console_secret(configured: str | None, otp_secret: str) -> bytes:
    """``HERALD_CONSOLE_SECRET``, or else a key derived from the OTP secret (so a
    deployment that set one strong secret needs no second one)."""
    if configured:
        return configured.encode()
    return hmac.new(otp_secret.encode(), b"herald-console-cookie", hashlib.sha256).digest()
