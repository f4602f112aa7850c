"""What the SNS and SES adapters share: one boto3 client per provider, calls off the event
loop, and AWS errors turned into Herald's transient or permanent provider errors.

boto3 blocks, so every call runs in ``ProviderDeps.blocking`` (a bounded thread pool)
under ``asyncio.wait_for``; botocore's own connect and read timeouts bound how long a
thread stays busy after we stopped waiting for it. botocore does not retry
(``total_max_attempts=1``): Herald owns retries (backoff, failover, circuit breakers), and
an SDK retry after a lost answer would send the same SMS or e-mail twice without any
record of it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.logs import get_logger
from providers.base import retry_after_seconds
from providers.credentials import MissingCredential, resolve_credentials

log = get_logger(__name__)
T = TypeVar("T")

#: Seconds to open a connection and to wait for an answer; a thread is busy at most
#: about their sum after the caller gave up.
CONNECT_TIMEOUT_S: Final = 3.0
READ_TIMEOUT_S: Final = 5.0
#: The whole call as the event loop sees it (a little over botocore's own bound).
CALL_TIMEOUT_S: Final = CONNECT_TIMEOUT_S + READ_TIMEOUT_S + 1.0
#: HTTP connections a client keeps: as many as the shared thread pool can use at once.
MAX_POOL_CONNECTIONS: Final = 16
#: Region used when neither the rules' credentials nor the environment name one.
DEFAULT_REGION: Final = "us-east-1"

#: Credential fields that are AWS's own; anything else in ``credentials`` is for the adapter.
AWS_FIELDS: Final = ("access_key_id", "secret_access_key", "session_token", "region")


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """How one vendor error code is treated, and what it means for the sender (docs)."""

    permanent: bool
    meaning: str


#: Errors every AWS service may answer with (AWS "common errors").
COMMON_ERRORS: Final[dict[str, ErrorRule]] = {
    "Throttling": ErrorRule(False, "request rate over the account's limit; retried later"),
    "ThrottlingException": ErrorRule(False, "request rate over the account's limit"),
    "RequestLimitExceeded": ErrorRule(False, "request rate over the account's limit"),
    "ServiceUnavailable": ErrorRule(False, "AWS is temporarily unavailable"),
    "InternalFailure": ErrorRule(False, "an error inside AWS"),
    "InternalError": ErrorRule(False, "an error inside AWS"),
    "RequestTimeout": ErrorRule(False, "AWS timed out reading the request"),
    "InvalidClientTokenId": ErrorRule(True, "the access key id is unknown: fix the credentials"),
    "UnrecognizedClientException": ErrorRule(True, "the access key id is unknown"),
    "SignatureDoesNotMatch": ErrorRule(True, "the secret access key is wrong"),
    "ExpiredToken": ErrorRule(True, "the session token has expired"),
    "AccessDenied": ErrorRule(True, "the IAM policy does not allow this call"),
    "AccessDeniedException": ErrorRule(True, "the IAM policy does not allow this call"),
    "ValidationError": ErrorRule(True, "AWS refused a parameter of the request"),
    "ValidationException": ErrorRule(True, "AWS refused a parameter of the request"),
}


@dataclass(frozen=True, slots=True)
class AwsConfig:
    """Where and as whom a provider talks to AWS (secrets never printed)."""

    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    endpoint_url: str | None

    def __repr__(self) -> str:
        key = "set" if self.access_key_id else "default chain"
        return f"AwsConfig(region={self.region!r}, keys={key}, endpoint={self.endpoint_url!r})"


def aws_config(name: str, spec: Mapping[str, Any]) -> tuple[AwsConfig, dict[str, str]]:
    """The AWS part of a provider spec, and the adapter's own credential fields.

    Without ``access_key_id`` and ``secret_access_key`` boto3's default chain applies
    (``AWS_*`` variables, shared config files, the instance or task role).
    """
    credentials = resolve_credentials(name, spec)
    has_key, has_secret = "access_key_id" in credentials, "secret_access_key" in credentials
    if has_key != has_secret:
        raise MissingCredential(
            f"{name}.credentials: access_key_id and secret_access_key go together"
        )
    config = AwsConfig(
        region=credentials.get("region"),
        access_key_id=credentials.get("access_key_id"),
        secret_access_key=credentials.get("secret_access_key"),
        session_token=credentials.get("session_token"),
        endpoint_url=spec.get("endpoint"),
    )
    extra = {k: v for k, v in credentials.items() if k not in AWS_FIELDS}
    return config, extra


def client_config() -> Config:
    return Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )


def make_client(service: str, config: AwsConfig) -> Any:
    """A boto3 client of its own session (sessions are not thread-safe; clients are)."""
    session = boto3.session.Session(
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        aws_session_token=config.session_token,
        region_name=config.region,
    )
    return session.client(
        service,
        region_name=config.region or session.region_name or DEFAULT_REGION,
        endpoint_url=config.endpoint_url,
        config=client_config(),
    )


class AwsClient:
    """One boto3 client per provider, made on first use in a pool thread.

    Making a client reads the service model from disk (tens of milliseconds), so it
    happens once, off the event loop; every call then shares it. A credential problem is
    kept and raised by each call instead of at build time: the worker still starts and
    routes everything else, and each message shows the problem as a permanent error.
    """

    def __init__(self, service: str, name: str, spec: Mapping[str, Any], pool: Executor) -> None:
        self.service = service
        self.pool = pool
        self.config: AwsConfig | None = None
        #: The adapter's own credential fields (``from``, ``sender_id``, ...).
        self.options: dict[str, str] = {}
        self._problem: str | None = None
        try:
            self.config, self.options = aws_config(name, spec)
        except MissingCredential as exc:
            self._problem = str(exc)
        self._client: Any = None
        self._lock = threading.Lock()

    def require(self) -> AwsConfig:
        """The configuration, or ``MissingCredential`` naming what is missing."""
        if self.config is None:
            raise MissingCredential(self._problem or "no AWS configuration")
        return self.config

    def _get(self) -> Any:
        config = self.require()
        with self._lock:
            if self._client is None:
                self._client = make_client(self.service, config)
            return self._client

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """``client.<operation>(**params)`` in the pool, bounded by ``CALL_TIMEOUT_S``."""

        def run() -> dict[str, Any]:
            method: Callable[..., dict[str, Any]] = getattr(self._get(), operation)
            return method(**params)

        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self.pool, run), CALL_TIMEOUT_S)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


# -- errors --------------------------------------------------------------------------

_unknown_logged: set[tuple[str, str]] = set()
_unknown_lock = threading.Lock()


def _log_unknown_once(vendor: str, code: str, message: str) -> None:
    """An unmapped code is retried; say so once per code, so the table can learn it."""
    with _unknown_lock:
        if (vendor, code) in _unknown_logged:
            return
        _unknown_logged.add((vendor, code))
    log.warning("vendor_error_code_unknown", vendor=vendor, code=code, error=message[:300])


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), or ``None`` when absent or bad."""
    return retry_after_seconds(headers.get("retry-after") or headers.get("Retry-After"))


def client_error(
    exc: ClientError, table: Mapping[str, ErrorRule], *, vendor: str, provider: str
) -> ProviderError:
    """A vendor's answer → permanent or transient by the table; 5xx and unknowns retry."""
    error = exc.response.get("Error") or {}
    meta = exc.response.get("ResponseMetadata") or {}
    code = str(error.get("Code") or "unknown")
    text = f"{provider}: {vendor} {code}: {error.get('Message') or exc}"
    status = int(meta.get("HTTPStatusCode") or 0)
    retry_after = retry_after_s(meta.get("HTTPHeaders") or {})
    rule = table.get(code) or COMMON_ERRORS.get(code)
    if rule is not None and rule.permanent:
        return PermanentProviderError(text, code=code)
    if rule is None and status < 500:
        _log_unknown_once(vendor, code, text)
    return TransientProviderError(text, code=code, retry_after=retry_after)


def provider_error(
    exc: BaseException, table: Mapping[str, ErrorRule], *, vendor: str, provider: str
) -> ProviderError:
    """Any failure of an AWS call → the ProviderError the delivery loop acts on."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientError):
        return client_error(exc, table, vendor=vendor, provider=provider)
    if isinstance(exc, TimeoutError | ConnectTimeoutError | ReadTimeoutError):
        return TransientProviderError(f"{provider}: {vendor} timed out", code="timeout")
    if isinstance(exc, BotoConnectionError | ConnectionClosedError | HTTPClientError):
        return TransientProviderError(f"{provider}: {exc}", code="connection_error")
    if isinstance(
        exc, MissingCredential | NoCredentialsError | PartialCredentialsError | NoRegionError
    ):
        # A deploy problem: every message fails the same way until it is fixed, then the
        # dead letters are replayed (DESIGN §3).
        return PermanentProviderError(f"{provider}: {exc}", code="misconfigured")
    if isinstance(exc, ParamValidationError):
        return PermanentProviderError(f"{provider}: {exc}", code="invalid_request")
    code = type(exc).__name__
    _log_unknown_once(vendor, code, str(exc))
    return TransientProviderError(f"{provider}: {vendor} {code}: {exc}", code=code)


#: What an AWS call may raise that ``provider_error`` understands.
AWS_CALL_ERRORS: Final = (BotoCoreError, ClientError, TimeoutError, MissingCredential)
