"""Issuing and verifying one-time passcodes (state in Redis, atomic where it matters).

Per recipient: a pointer to the OTP currently valid, the OTP's record (nonce, MAC,
expiry, template; never the code) and an attempts budget. Verification spends one
attempt atomically *before* comparing, so concurrent guesses can never exceed the
budget, and a right code is consumed atomically, so it is valid exactly once. The budget
exists whether or not the recipient has a code: answers never reveal which, and neither
does the work: every verification that is not locked makes the same three Redis calls
(reserve, read the MAC, settle) and one HMAC and one constant-time compare, against a
dummy MAC when there is no code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from hmac import compare_digest

from redis.asyncio import Redis

from config.settings import Settings
from herald import names
from herald.domain import Channel, utcnow
from herald.ids import new_id
from herald.otp import code_mac, derive_code, new_nonce, recipient_key
from herald.text import as_text

_RESERVE = """
local left = redis.call('GET', KEYS[2])
if left then
  left = tonumber(left)
  if left <= 0 then return {-1, ''} end
  redis.call('SET', KEYS[2], left - 1, 'KEEPTTL')
else
  left = tonumber(ARGV[1])
  redis.call('SET', KEYS[2], left - 1, 'PX', ARGV[2])
end
local current = redis.call('GET', KEYS[1]) or ''
return {left - 1, current}
"""

# KEYS: the OTP record, the recipient's current pointer, its attempts budget.
# ARGV: the OTP id, '1' if the code matched, attempts left after this one.
# A match consumes the code (returns 1); the last wrong try kills it. With no record
# (no code pending: a dummy id) nothing changes, in the same one call.
_SETTLE = """
if redis.call('HGET', KEYS[1], 'otp_id') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'live' then return 0 end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'used')
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
if tonumber(ARGV[3]) <= 0 then redis.call('HSET', KEYS[1], 'state', 'dead') end
return 0
"""

#: Stands in for the OTP id and MAC when a recipient has no code pending, so that path
#: computes and compares exactly as much as the other.
DUMMY_OTP_ID = "0" * 26
DUMMY_MAC = "0" * 64


@dataclass(frozen=True, slots=True)
class IssuedOtp:
    otp_id: str
    expires_at: datetime
    resent: bool


@dataclass(frozen=True, slots=True)
class VerifyResult:
    valid: bool
    attempts_left: int
    locked: bool = False


class OtpStore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.secret = settings.otp_secret.get_secret_value().encode()
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    async def issue(
        self,
        channel: Channel,
        to: str,
        *,
        ttl_s: int,
        length: int,
        template: str | None,
        locale: str | None,
    ) -> IssuedOtp:
        """The code still valid for this recipient (same code), or a new one."""
        recipient = recipient_key(channel.value, to)
        now = utcnow()
        current = await self.redis.get(names.otp_current_key(recipient))
        if current:
            record = await self.redis.hgetall(names.otp_record_key(as_text(current)))
            if record.get(b"state") == b"live":
                expires = datetime.fromisoformat(as_text(record[b"expires_at"]))
                if expires > now:
                    return IssuedOtp(as_text(current), expires, resent=True)
        otp_id = new_id()
        nonce = new_nonce()
        code = derive_code(self.secret, otp_id, nonce, length)
        expires_at = now + timedelta(seconds=ttl_s)
        ttl_ms = ttl_s * 1000
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                names.otp_record_key(otp_id),
                mapping={
                    "otp_id": otp_id,
                    "recipient": recipient,
                    "nonce": nonce,
                    "length": length,
                    "mac": code_mac(self.secret, otp_id, recipient, code),
                    "expires_at": expires_at.isoformat(),
                    "minutes": max(1, round(ttl_s / 60)),
                    "template": template or "",
                    "locale": locale or "",
                    "state": "live",
                },
            )
            pipe.pexpire(names.otp_record_key(otp_id), ttl_ms)
            pipe.set(names.otp_current_key(recipient), otp_id, px=ttl_ms)
            pipe.set(names.otp_attempts_key(recipient), self.settings.otp_max_attempts, px=ttl_ms)
            await pipe.execute()
        return IssuedOtp(otp_id, expires_at, resent=False)

    async def set_fallbacks(self, otp_id: str, notification_ids: list[str]) -> None:
        await self.redis.hset(names.otp_record_key(otp_id), "fallbacks", ",".join(notification_ids))

    async def hold_message(
        self, channel: Channel, to: str, *, body: str | None, subject: str | None, ttl_s: int
    ) -> str:
        """Keep a caller's own OTP text in Redis only, for ``ttl_s``: the id the worker
        renders it from (like a generated code), so no database row, outbox entry, queue
        or dead letter carries it. Once it expires the message can no longer be sent."""
        otp_id = new_id()
        expires_at = utcnow() + timedelta(seconds=ttl_s)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                names.otp_record_key(otp_id),
                mapping={
                    "otp_id": otp_id,
                    "recipient": recipient_key(channel.value, to),
                    "kind": "message",
                    "body": body or "",
                    "subject": subject or "",
                    "expires_at": expires_at.isoformat(),
                    "state": "live",
                },
            )
            pipe.pexpire(names.otp_record_key(otp_id), ttl_s * 1000)
            await pipe.execute()
        return otp_id

    async def verify(self, channel: Channel, to: str, code: str) -> VerifyResult:
        recipient = recipient_key(channel.value, to)
        left, current = await self._reserve(
            keys=[names.otp_current_key(recipient), names.otp_attempts_key(recipient)],
            args=[self.settings.otp_max_attempts, self.settings.otp_max_ttl_s * 1000],
        )
        left = int(left)
        if left < 0:
            return VerifyResult(False, 0, locked=True)
        otp_id = as_text(current) or DUMMY_OTP_ID
        record_key = names.otp_record_key(otp_id)
        stored_mac = await self.redis.hget(record_key, "mac")
        offered = code_mac(self.secret, otp_id, recipient, code)
        matched = compare_digest(as_text(stored_mac) if stored_mac else DUMMY_MAC, offered)
        consumed = await self._settle(
            keys=[record_key, names.otp_current_key(recipient), names.otp_attempts_key(recipient)],
            args=[otp_id, 1 if matched and stored_mac else 0, left],
        )
        return VerifyResult(bool(consumed), left)
