"""Every RabbitMQ and Redis name Herald uses, in one place."""

from __future__ import annotations

from herald.domain import Channel, Priority

EXCHANGE = "herald"
DLX = "herald.dlx"
DLQ = "herald.dlq"
RETRY_EXCHANGE = "herald.retry"
EVENTS_EXCHANGE = "herald.events"

HEADER_NOTIFICATION_ID = "x-herald-notification-id"
HEADER_ATTEMPT = "x-herald-attempt"
# Not "x-…": RabbitMQ's headers exchange ignores x- headers when matching.
HEADER_RETRY_BUCKET = "herald-delay-ms"
HEADER_DLQ_REASON = "x-herald-reason"


def work_queue(channel: Channel | str, priority: Priority | str) -> str:
    return f"herald.{channel}.{priority}"


def all_work_queues() -> list[str]:
    return [work_queue(c, p) for c in Channel for p in Priority]


def retry_queue(delay_ms: int) -> str:
    return f"herald.retry.{delay_ms}ms"


# Redis keys.
REDIS_PREFIX = "herald:"


def claim_key(notification_id: str, generation: int) -> str:
    return f"{REDIS_PREFIX}claim:{notification_id}:{generation}"


def idempotency_lock_key(api_key_id: str, key: str) -> str:
    return f"{REDIS_PREFIX}idem-lock:{api_key_id}:{key}"


def breaker_key(provider: str) -> str:
    return f"{REDIS_PREFIX}breaker:{provider}"


def breaker_window_key(provider: str, second: int) -> str:
    return f"{REDIS_PREFIX}breaker:{provider}:w:{second}"


def latency_key(provider: str) -> str:
    return f"{REDIS_PREFIX}latency:{provider}"


ROUTING_CHANGED_CHANNEL = f"{REDIS_PREFIX}routing:changed"
#: A revoked API key's id is published here: every process drops it from its cache.
KEYS_REVOKED_CHANNEL = f"{REDIS_PREFIX}keys:revoked"


def console_session_key(nonce_hash: str) -> str:
    """A live console session (SHA-256 of its nonce, never the nonce): deleted at sign-out."""
    return f"{REDIS_PREFIX}console:session:{nonce_hash}"


def sandbox_config_key() -> str:
    return f"{REDIS_PREFIX}sandbox:config"


def sandbox_messages_key() -> str:
    return f"{REDIS_PREFIX}sandbox:messages"


def sandbox_by_notification_key(notification_id: str) -> str:
    return f"{REDIS_PREFIX}sandbox:sent:{notification_id}"


def sandbox_by_recipient_key(recipient: str) -> str:
    """What the sandbox sent to one recipient (a hash of it: keys never hold the number)."""
    return f"{REDIS_PREFIX}sandbox:to:{recipient}"


def sandbox_by_caller_key(caller: str) -> str:
    return f"{REDIS_PREFIX}sandbox:caller:{caller}"


def sandbox_otp_text_key(ref: str) -> str:
    """An OTP's text as the sandbox received it, kept only until the OTP expires."""
    return f"{REDIS_PREFIX}sandbox:otp-text:{ref}"


def sandbox_message_patterns() -> tuple[str, ...]:
    """SCAN patterns for every key of what the sandbox sent (not its behaviour)."""
    return tuple(f"{REDIS_PREFIX}sandbox:{kind}:*" for kind in ("sent", "to", "caller", "otp-text"))


def ratelimit_key(key: str) -> str:
    """One GCRA bucket (its theoretical arrival time); ``key`` names the policy and subject."""
    return f"{REDIS_PREFIX}rl:{key}"


def otp_current_key(recipient: str) -> str:
    """The OTP id currently valid for a recipient (a hash, never the address itself)."""
    return f"{REDIS_PREFIX}otp:current:{recipient}"


def otp_record_key(otp_id: str) -> str:
    return f"{REDIS_PREFIX}otp:record:{otp_id}"


def otp_attempts_key(recipient: str) -> str:
    return f"{REDIS_PREFIX}otp:attempts:{recipient}"


def spend_key(api_key_id: str, day: str) -> str:
    return f"{REDIS_PREFIX}spend:{api_key_id}:{day}"


def unregistered_token_key(provider: str, token_hash: str) -> str:
    """A push token the vendor said is gone; ``token_hash`` (SHA-256), never the token."""
    return f"{REDIS_PREFIX}push:unregistered:{provider}:{token_hash}"
