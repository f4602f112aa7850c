"""Puts an OTP's code into its message body at the last moment, in the worker's memory.

The envelope on the queue carries only the OTP id; the code is derived here from the
record's nonce and ``HERALD_OTP_SECRET``. An OTP already used, dead (too many wrong
tries) or expired is not sent.
"""

from __future__ import annotations

import dataclasses

from redis.asyncio import Redis

from herald import names
from herald.domain import Channel, Envelope
from herald.otp import derive_code, render
from herald.text import as_text

EMAIL_SUBJECT = "Your verification code"


class OtpRenderer:
    def __init__(self, redis: Redis, secret: bytes) -> None:
        self.redis = redis
        self.secret = secret

    async def render(self, message: Envelope) -> Envelope | None:
        """The message with its code in the body, or None when the OTP is no longer live."""
        assert message.otp_id is not None
        record = await self.redis.hgetall(names.otp_record_key(message.otp_id))
        if record.get(b"state") != b"live":
            return None
        code = derive_code(
            self.secret, message.otp_id, as_text(record[b"nonce"]), int(record[b"length"])
        )
        body = render(
            as_text(record.get(b"template", b"")) or None,
            as_text(record.get(b"locale", b"")) or None,
            code,
            int(record.get(b"minutes", b"10")),
        )
        subject = message.subject or (EMAIL_SUBJECT if message.channel is Channel.EMAIL else None)
        return dataclasses.replace(message, body=body, subject=subject)
