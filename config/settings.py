"""Typed settings from ``HERALD_*`` environment variables; secrets print masked."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ROUTING_FILE = Path(__file__).with_name("routing.yaml")


#: Names of settings and URL query parameters that hold secrets (``password``,
#: ``auth_token``, ``console_secret``, ``api_key``, ``sslkey``…).
SECRET_NAME = re.compile(r"pass|pwd|secret|token|credential|auth|key$|_key|apikey", re.I)
#: The OTP secret ``herald dev`` uses when none is set; refused outside dev mode.
DEV_OTP_SECRET = "dev-only-otp-secret-change-me"
#: The admin key ``make run`` prints; public, so refused outside dev mode.
DEV_BOOTSTRAP_API_KEY = "dev-admin-key"
#: The shortest OTP or console secret a non-dev process starts with (HMAC-SHA256 keys).
MIN_SECRET_BYTES = 32


def mask_url(url: str) -> str:
    """Hide a DSN's password, in the userinfo (``postgresql://u:***@host/db``) and in
    query parameters with a secret-looking name (``amqp://h/?password=***``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can read: show nothing of it
        return "***"
    masked = url
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        masked = masked.replace(parts.netloc, f"{userinfo.partition(':')[0]}:***@{host}", 1)
    if parts.query:
        query = "&".join(_mask_query_pair(pair) for pair in parts.query.split("&"))
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def _mask_query_pair(pair: str) -> str:
    name, sep, _ = pair.partition("=")
    return f"{name}=***" if sep and SECRET_NAME.search(unquote_plus(name)) else pair


def _masked(name: str, value: Any) -> Any:
    """One setting ready to print: secrets as ``***``, URL passwords hidden, recursively."""
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, str):
        if value and SECRET_NAME.search(name):
            return "***"
        return mask_url(value) if "://" in value or name.endswith("_url") else value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(name, v) for v in value]
    return value


class BackoffPolicy(BaseModel):
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base*factor^n)]."""

    base_s: float = Field(1.0, gt=0)
    factor: float = Field(2.0, ge=1)
    cap_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    jitter: bool = True


class LimitPolicy(BaseModel):
    """``rate`` requests per ``period_s`` seconds, up to ``burst`` at once (default ``rate``)."""

    rate: int = Field(ge=1)
    period_s: float = Field(gt=0)
    burst: int | None = Field(None, ge=1)


DEFAULT_BACKOFF: dict[str, dict[str, Any]] = {
    "otp": {"base_s": 1, "factor": 2, "cap_s": 30, "max_attempts": 4},
    "transactional": {},
    "marketing": {"base_s": 5, "factor": 2, "cap_s": 600, "max_attempts": 6},
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HERALD_", env_nested_delimiter="__", extra="ignore", env_parse_none_str="null"
    )

    database_url: str = "sqlite+aiosqlite:///./herald.db"
    #: Most a transaction waits for a pooled connection (and, on SQLite, for the write
    #: lock) before failing: an accept then answers 503 instead of queueing unboundedly.
    database_wait_s: float = Field(5.0, gt=0, le=60)
    #: SQLite's ``PRAGMA synchronous`` (docs/sqlite.md): FULL fsyncs every commit, so a
    #: ``202`` survives a power cut; NORMAL survives process crashes only, and is faster
    #: per commit. Group commit makes FULL's fsync one per batch.
    sqlite_synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "FULL"
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    redis_url: str = "redis://localhost:6379/0"
    routing_file: Path = DEFAULT_ROUTING_FILE
    #: Keys the OTP codes' HMAC; outside ``herald dev``, at least 32 bytes and not the default.
    otp_secret: SecretStr = SecretStr(DEV_OTP_SECRET)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    bootstrap_api_key: SecretStr | None = None
    #: Signs console session cookies and paging cursors; required outside ``herald dev``
    #: (which derives one from OTP_SECRET when it is unset).
    console_secret: SecretStr | None = None
    #: How long a console sign-in lasts.
    console_session_hours: float = Field(12, gt=0, le=24 * 7)
    #: How long a process trusts a looked-up API key. A revocation is also broadcast on
    #: Redis, so this is only the bound when the broadcast is missed.
    api_key_cache_s: float = Field(5.0, ge=0, le=300)
    #: Failed API keys and console sign-ins, per client address (IPv6: per /64) and in
    #: total; past either, keys not seen to work lately get 429 without being checked.
    limit_auth_failures_client: LimitPolicy = LimitPolicy(rate=10, period_s=60, burst=20)
    limit_auth_failures_global: LimitPolicy = LimitPolicy(rate=100, period_s=1, burst=1000)
    #: Proxies (IPs or CIDRs) whose X-Forwarded-For/-Proto/-Host headers are believed.
    trusted_proxies: list[IPvAnyNetwork] = []
    log_level: str = "INFO"
    log_json: bool = True
    #: ``herald dev`` sets it: the laxer defaults of a developer's machine (sandbox on,
    #: loopback vendor endpoints, the built-in dev secrets). Never set it in production.
    dev_mode: bool = False

    # What routing rules may point providers at (providers/credentials.py).
    #: Credential ``env:`` references must name a variable under one of these prefixes;
    #: a Herald setting is refused whatever this says.
    credential_env_prefixes: list[str] = ["HERALD_VENDOR_"]
    #: Vendor endpoints the rules may use: base URLs (``https``; ``http`` only to a
    #: loopback address) and ``host:port`` for SMTP. Under dev_mode loopback needs no entry.
    allowed_endpoints: list[str] = []
    #: The largest routing document (YAML or JSON) any parser accepts.
    max_rules_bytes: int = Field(64 * 1024, ge=1024)
    #: How long parsing and validating one routing document may take before it is a 422.
    rules_validation_timeout_s: float = Field(5.0, gt=0)

    # Send API limits.
    max_request_bytes: int = 64 * 1024
    max_body_chars: int = 16 * 1024
    max_metadata_bytes: int = 4 * 1024
    idempotency_ttl_s: int = 24 * 3600

    # Durable accept.
    outbox_relay_after_s: float = 5.0
    outbox_relay_interval_s: float = 1.0

    # Broker topology.
    queue_delivery_limit: int = 20
    retry_buckets_ms: list[int] = [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 300000]

    # Workers.
    worker_prefetch: int = 64
    worker_high_prefetch: int = 32
    #: Messages one delivery batch takes from what is already waiting on a queue (1: one
    #: at a time, the old loop). No timer: a quiet queue's message goes alone, at once.
    worker_batch_max: int = Field(64, ge=1, le=1000)
    claim_lease_s: float = 30.0
    provider_timeout_s: float = 10.0
    shutdown_grace_s: float = 25.0
    #: Times in a row a message may be put back without an attempt (our database, Redis
    #: or broker failing, or its claim held elsewhere) before it is dead-lettered with
    #: reason ``infrastructure``: 1,800 waits of the first retry queue (1 s) ≈ 30 min.
    max_deferrals: int = Field(1800, ge=1)
    #: More tries a message gets after it crashed a worker (our code raised on it) before
    #: it is dead-lettered with reason ``crashed``; 0 dead-letters it on the first crash.
    crash_retries: int = Field(1, ge=0, le=5)
    #: Per category; an override changes only the fields it names (see ``_merge_backoff``).
    backoff: dict[str, BackoffPolicy] = Field(
        default_factory=lambda: {k: BackoffPolicy(**v) for k, v in DEFAULT_BACKOFF.items()}
    )

    # Circuit breakers (per provider, shared through Redis).
    breaker_window_s: int = 10
    breaker_min_calls: int = 10
    breaker_failure_rate: float = Field(0.5, gt=0, le=1)
    breaker_cooldown_s: float = 5.0
    breaker_probes: int = 3
    #: How long a worker trusts its cached copy of the breaker states.
    breaker_cache_s: float = 1.0
    #: How often workers check for a new routing-rules version (besides the broadcast).
    rules_poll_s: float = 1.0

    # Rate limits (GCRA in Redis; general ones fail open to a local limiter, OTP ones closed).
    limit_api_key: LimitPolicy = LimitPolicy(rate=200, period_s=1, burst=400)
    #: Per channel and recipient: protects people from floods.
    limit_recipient: LimitPolicy = LimitPolicy(rate=10, period_s=60)
    #: SMS-pumping defence for OTP SMS: per destination country and per number prefix.
    limit_otp_country: LimitPolicy = LimitPolicy(rate=300, period_s=60)
    limit_otp_prefix: LimitPolicy = LimitPolicy(rate=10, period_s=60)
    #: SMS-pumping defence for every SMS (OTP or not), counted apart from the OTP ones.
    limit_sms_country: LimitPolicy = LimitPolicy(rate=1000, period_s=60)
    limit_sms_prefix: LimitPolicy = LimitPolicy(rate=60, period_s=60)
    #: OTP verification: per API key, and for the whole service (both fail closed).
    limit_otp_verify_key: LimitPolicy = LimitPolicy(rate=10, period_s=1, burst=20)
    limit_otp_verify_global: LimitPolicy = LimitPolicy(rate=50, period_s=1, burst=100)
    #: How many leading characters of the E.164 number (with "+") make a prefix.
    otp_prefix_length: int = Field(8, ge=3, le=15)
    #: ISO country codes SMS may go to (empty: any) and may never go to.
    sms_country_allow: list[str] = []
    sms_country_deny: list[str] = []
    #: Most a caller (API key) may spend per UTC day, in the routing costs' currency.
    spend_cap_per_key_per_day: float | None = None

    # One-time passcodes.
    otp_ttl_s: int = Field(600, ge=30)
    otp_max_ttl_s: int = Field(1800, ge=30)
    otp_resend_cooldown_s: int = Field(30, ge=0)
    otp_max_sends: int = Field(5, ge=1)
    otp_send_window_s: int = Field(600, ge=1)
    otp_max_attempts: int = Field(5, ge=1)
    otp_code_length: int = Field(6, ge=4, le=10)
    #: When the first channel has not delivered by then, the code goes out on the fallback.
    otp_fallback_after_s: int = Field(60, ge=1)

    # Sandbox providers.
    #: The sandbox API and providers; unset, on only under ``herald dev``.
    sandbox_enabled: bool | None = None
    sandbox_keep: int = Field(100_000, ge=1)
    #: How long a process trusts its copy of the sandbox behaviours (0: read per message).
    sandbox_cache_s: float = Field(1.0, ge=0)
    #: Where ``herald worker`` serves /metrics (the API serves its own on API_PORT).
    metrics_port: int | None = 9100

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper_synchronous(cls, value: Any) -> Any:
        """``normal`` works as well as ``NORMAL``, as in SQLite itself."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("backoff", mode="before")
    @classmethod
    def _merge_backoff(cls, value: Any) -> Any:
        """``HERALD_BACKOFF='{"otp": {"base_s": 2}}'`` keeps every other default."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {k: dict(v) for k, v in DEFAULT_BACKOFF.items()}
        for category, policy in value.items():
            if isinstance(policy, BackoffPolicy):
                policy = policy.model_dump()
            merged[category] = {**merged.get(category, {}), **policy}
        return merged

    def backoff_for(self, category: str) -> BackoffPolicy:
        return self.backoff.get(category) or BackoffPolicy()

    @property
    def sandbox_on(self) -> bool:
        """Whether the sandbox API and providers are available in this process."""
        return self.dev_mode if self.sandbox_enabled is None else self.sandbox_enabled

    def insecure_secrets(self, *, serves_api: bool = True) -> list[str]:
        """What must be set before a non-dev process may start (empty: nothing).

        A default or short OTP secret lets anyone compute codes (every process renders
        or checks them); a console secret derived from it (or equal to it) lets whoever
        learns one forge console sessions and cursors, and the public dev key is an admin
        key: those two matter only where the API runs (``serves_api``).
        """
        if self.dev_mode:
            return []
        problems = []
        otp = self.otp_secret.get_secret_value()
        if otp == DEV_OTP_SECRET or len(otp.encode()) < MIN_SECRET_BYTES:
            problems.append(
                f"set HERALD_OTP_SECRET to a random value of at least {MIN_SECRET_BYTES} bytes"
            )
        if not serves_api:
            return problems
        console = self.console_secret.get_secret_value() if self.console_secret else ""
        if len(console.encode()) < MIN_SECRET_BYTES or console == otp:
            problems.append(
                f"set HERALD_CONSOLE_SECRET to a random value of at least {MIN_SECRET_BYTES} "
                "bytes, other than HERALD_OTP_SECRET"
            )
        key = self.bootstrap_api_key.get_secret_value() if self.bootstrap_api_key else None
        if key == DEV_BOOTSTRAP_API_KEY:
            problems.append("set HERALD_BOOTSTRAP_API_KEY to a value other than the dev key")
        return problems

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def masked(self) -> dict[str, Any]:
        """Every setting, ready to print: secrets as ``***``, DSN passwords hidden."""
        return {name: _masked(name, value) for name, value in self.model_dump().items()}

    def __repr_args__(self) -> Any:
        return list(self.masked().items())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
