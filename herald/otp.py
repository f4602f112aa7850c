"""One-time passcodes: pure derivation, MACs and message templates.

The code is never stored. Each OTP gets a random nonce (``secrets``); the code is an
HMAC-SHA256 of it under ``HERALD_OTP_SECRET``, truncated to digits (as HOTP does), so
the same code can be re-sent while valid and rendered by the worker at send time, and
nothing at rest (database, outbox, queues, Redis) reveals it without the secret.
Verification compares an HMAC bound to the OTP id and the recipient.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

DEFAULT_LOCALE = "en"
TEMPLATES: dict[str, str] = {
    "en": "Your verification code is {code}. It expires in {minutes} minutes.",
    "es": "Tu código de verificación es {code}. Caduca en {minutes} minutos.",
    "fr": "Votre code de vérification est {code}. Il expire dans {minutes} minutes.",
    "de": "Ihr Bestätigungscode lautet {code}. Er läuft in {minutes} Minuten ab.",
    "pt": "Seu código de verificação é {code}. Ele expira em {minutes} minutos.",
    "hi": "आपका सत्यापन कोड {code} है। यह {minutes} मिनट में समाप्त हो जाएगा।",
}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def new_nonce() -> str:
    return secrets.token_hex(16)


def derive_code(secret: bytes, otp_id: str, nonce: str, length: int) -> str:
    """``length`` decimal digits from HMAC-SHA256(secret, otp id, nonce); 64 bits of MAC
    against at most 10**10 codes keeps the modulo bias below 1e-9."""
    mac = hmac.new(secret, f"code|{otp_id}|{nonce}".encode(), hashlib.sha256).digest()
    return str(int.from_bytes(mac[:8], "big") % 10**length).zfill(length)


def code_mac(secret: bytes, otp_id: str, recipient: str, code: str) -> str:
    """What verification compares: binds the code to this OTP and this recipient."""
    message = f"verify|{otp_id}|{recipient}|{code}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def recipient_key(channel: str, to: str) -> str:
    """A stable, non-reversible handle for a recipient (Redis keys never hold the number)."""
    return hashlib.sha256(f"{channel}|{to}".encode()).hexdigest()[:32]


def check_template(template: str) -> str:
    """A caller's template: ``{code}`` exactly once; ``{minutes}`` optional; nothing else."""
    names = _PLACEHOLDER.findall(template)
    if names.count("code") != 1:
        raise ValueError("must contain {code} exactly once")
    unknown = sorted(set(names) - {"code", "minutes"})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {{code}} and {{minutes}}")
    return template


def render(template: str | None, locale: str | None, code: str, minutes: int) -> str:
    text = template or TEMPLATES.get(locale or DEFAULT_LOCALE) or TEMPLATES[DEFAULT_LOCALE]
    return text.replace("{code}", code).replace("{minutes}", str(minutes))
