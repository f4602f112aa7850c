"""Puts an OTP's code into its message body at the last moment, in the worker's memory.

The envelope on the queue carries only the OTP id; the code is derived here from the
record's nonce and ``HERALD_OTP_SECRET``. An OTP already used, dead (too many wrong
tries) or expired is not sent. Its record lives in Redis exactly as long as the OTP, so a
record missing while the message's expiry is still ahead means Redis lost it
(``otp_state_lost``): the nonce is gone and the code cannot be rebuilt.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from redis.asyncio import Redis

from herald import names
from herald.domain import Channel, Envelope, utcnow
from herald.otp import derive_code, render
from herald.text import as_text

EMAIL_SUBJECT = "Your verification code"
#: The record is gone before the OTP's expiry: Redis lost its data.
OTP_STATE_LOST = "otp_state_lost"
CLOCK_SKEW = timedelta(seconds=2)


async def fallback_ids(redis: Redis, otp_id: str) -> list[str]:
    """The notifications queued to carry this OTP on the fallback channels, in order."""
    raw = await redis.hget(names.otp_record_key(otp_id), "fallbacks")
    return [i for i in as_text(raw).split(",") if i] if raw else []


class OtpRenderer:
    def __init__(self, redis: Redis, secret: bytes) -> None:
        self.redis = redis
        self.secret = secret

    async def render(self, message: Envelope) -> Envelope | str:
        """The message with its code in the body, or why it must not be sent: ``"used"``
        (verified already), ``"dead"`` (too many wrong tries), ``"expired"``, or
        ``OTP_STATE_LOST``."""
        assert message.otp_id is not None
        record = await self.redis.hgetall(names.otp_record_key(message.otp_id))
        if b"state" not in record:  # gone (or re-created without its state by a late write)
            # Within a clock skew of its expiry, Redis merely expired it on time.
            nearly_expired = message.is_expired(utcnow() + CLOCK_SKEW)
            return "expired" if nearly_expired else OTP_STATE_LOST
        state = as_text(record[b"state"])
        if state != "live":
            return state
        if record.get(b"kind") == b"message":  # a caller's own OTP text, kept out of storage
            return dataclasses.replace(
                message,
                body=as_text(record.get(b"body", b"")) or None,
                subject=as_text(record.get(b"subject", b"")) or message.subject,
            )
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
