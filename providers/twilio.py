"""Twilio SMS through the official SDK's asyncio client (``twilio`` ≥ 9).

The SDK's ``AsyncTwilioHttpClient`` (aiohttp) keeps one connection pool per provider;
we subclass it for three things the SDK leaves out: a real timeout (the SDK passes
``timeout=None`` to aiohttp on every call, which means *no* timeout, whatever the
client was built with), the ``Retry-After`` of an error answer (the SDK's exceptions
drop the headers), and quiet (the SDK logs each request in several INFO lines).

The rules document's ``endpoint`` replaces ``https://api.twilio.com`` through the SDK's
own ``Domain.base_url`` (regional endpoints, egress proxies, local fakes in tests).
"""

from __future__ import annotations

import base64
import contextvars
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import aiohttp
import twilio.rest.api  # noqa: F401 - the SDK imports it lazily, on the first send, in the loop
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from herald.domain import Channel, Envelope
from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.logs import get_logger
from providers.base import (
    GATEWAY_STATUS_TABLE,
    BaseProvider,
    Kind,
    Receipt,
    provider_error,
    retry_after_seconds,
)
from providers.credentials import resolve_credentials
from providers.sms import DEFAULT_MAX_SEGMENTS, check_sms_body

if TYPE_CHECKING:
    from providers.registry import ProviderDeps

log = get_logger(__name__)


#: Twilio error codes (https://www.twilio.com/docs/api/errors) → what they mean for us.
#: Permanent: this message would fail the same way through Twilio again. Account set-up
#: errors (auth, sender, region) are permanent too, as DESIGN §3 wants: every message
#: fails at once and lands in the dead-letter store, to replay once the set-up is fixed.
#: Transient: worth a retry (and they count against Twilio's circuit breaker).
ERROR_TABLE: Final[dict[int, tuple[Kind, str]]] = {
    20003: ("permanent", "authentication failed: check the account SID and auth token"),
    20404: ("permanent", "account or resource not found: check the account SID"),
    20429: ("transient", "too many requests: Twilio is throttling this account"),
    20500: ("transient", "Twilio internal error"),
    20503: ("transient", "Twilio service unavailable"),
    21211: ("permanent", "invalid 'To' phone number"),
    21212: ("permanent", "invalid 'From' number: check the sender configured for Herald"),
    21408: ("permanent", "sending to this region is not enabled on the Twilio account"),
    21602: ("permanent", "message body is required"),
    21606: ("permanent", "the 'From' number cannot send SMS: check the sender"),
    21610: ("permanent", "the recipient unsubscribed (replied STOP)"),
    21612: ("permanent", "Twilio cannot route to this number from this sender"),
    21614: ("permanent", "the 'To' number is not a mobile number"),
    21617: ("permanent", "message body over 1,600 characters"),
    30001: ("transient", "Twilio's outbound queue overflowed"),
    30002: ("permanent", "the Twilio account is suspended"),
    30003: ("permanent", "unreachable destination handset"),
    30005: ("permanent", "unknown destination handset"),
    30006: ("permanent", "landline or unreachable carrier"),
    30007: ("permanent", "message filtered by the carrier (spam filter)"),
    30022: ("transient", "US A2P 10DLC throughput limit exceeded"),
}

#: Answers with no Twilio code (from a proxy or load balancer): decided by HTTP status.
HTTP_STATUS_TABLE: Final[dict[int, tuple[Kind, str]]] = {
    401: ("permanent", "authentication failed: check the account SID and auth token"),
    403: ("permanent", "forbidden: the account may not use this API"),
    **GATEWAY_STATUS_TABLE,
}

DEFAULT_BASE_URL: Final = "https://api.twilio.com"
DEFAULT_TIMEOUT_S: Final = 8.0  # under the worker's default 10 s provider timeout

#: The SDK reads TWILIO_EDGE and TWILIO_REGION from the process environment and rewrites
#: the host with them (which would mangle a custom endpoint); Herald's vendor settings
#: come from the rules document only, so we hand the SDK an environment without them.
_NO_AMBIENT_SETTINGS: Final[Mapping[str, str]] = {"TWILIO_EDGE": "", "TWILIO_REGION": ""}

#: ``Retry-After`` of the last answer in this task. The SDK raises before we can see the
#: response, so the HTTP client leaves the header here; each send runs in its own task
#: (the worker's ``wait_for``, ``gather``), so concurrent sends never read each other's.
_last_retry_after: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "twilio_last_retry_after", default=None
)


class HeraldTwilioHttpClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client with a timeout on every call, ``Retry-After`` kept, the
    SDK's per-request INFO logging off (we log outcomes ourselves, structured), and Basic
    auth sent as a header (the SDK's ``aiohttp.BasicAuth`` is deprecated in aiohttp 3.14
    and warns on every request)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout_s)

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's interface
        allow_redirects: bool = False,
    ) -> Any:
        _last_retry_after.set(None)
        response = await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=_with_basic_auth(headers, auth),
            auth=None,
            timeout=timeout or self.timeout,
            allow_redirects=allow_redirects,
        )
        _last_retry_after.set(response.headers.get("Retry-After"))
        return response

    def log_request(self, kwargs: dict[str, Any]) -> None:
        return None

    def log_response(self, status_code: int, response: Any) -> None:
        return None


def _with_basic_auth(
    headers: dict[str, str] | None, auth: tuple[str, str] | None
) -> dict[str, str] | None:
    if auth is None:
        return headers
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
    return {**(headers or {}), "Authorization": f"Basic {token}"}


class TwilioProvider(BaseProvider):
    """SMS through Twilio's Messages API.

    Credentials (``env:`` references): ``account_sid``, ``auth_token``, ``from`` (a
    phone number, or a Messaging Service SID ``MG…``), optional ``status_callback`` (the
    public URL of ``/v1/webhooks/twilio/status``; a top-level ``status_callback`` in the
    spec is used first when the rules schema allows it).
    """

    type_name = "twilio"
    max_body_chars: ClassVar[int | None] = 1600
    default_max_per_s: ClassVar[float | None] = 100.0  # Twilio queues beyond a sender's rate
    max_segments: ClassVar[int] = DEFAULT_MAX_SEGMENTS

    def __init__(
        self,
        name: str,
        channel: Channel,
        spec: dict[str, Any],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, channel, spec)
        credentials = resolve_credentials(name, spec, env)
        self.account_sid = credentials["account_sid"]
        self._auth_token = credentials["auth_token"]
        self.sender = credentials["from"]
        self.status_callback: str | None = spec.get("status_callback") or credentials.get(
            "status_callback"
        )
        self.base_url = str(spec.get("endpoint") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout_s = timeout_s
        self._client: Client | None = None
        self._http: HeraldTwilioHttpClient | None = None

    def _sdk(self) -> Any:
        """The SDK client, made on first use (aiohttp needs the running loop) and then
        reused by every send of this provider."""
        if self._client is None:
            self._http = HeraldTwilioHttpClient(self.timeout_s)
            client = Client(
                self.account_sid,
                self._auth_token,
                http_client=self._http,
                environment=_NO_AMBIENT_SETTINGS,
            )
            client.api.base_url = self.base_url
            self._client = client
        return self._client

    def _message_fields(self, message: Envelope, body: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"to": message.to, "body": body}
        if self.sender.startswith("MG"):
            fields["messaging_service_sid"] = self.sender
        else:
            fields["from_"] = self.sender
        if self.status_callback:
            fields["status_callback"] = self.status_callback
        return fields

    async def send(self, message: Envelope) -> Receipt:
        body = message.body or ""
        if not body:
            raise PermanentProviderError(f"{self.name}: an SMS needs a body", code="21602")
        check_sms_body(body, self.max_segments)
        try:
            created = await self._sdk().messages.create_async(**self._message_fields(message, body))
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._classify(exc, _last_retry_after.get()) from exc
        except TimeoutError as exc:  # aiohttp's timeouts derive from it
            raise TransientProviderError(
                f"{self.name}: no answer within {self.timeout_s}s", code="timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransientProviderError(
                f"{self.name}: connection failed: {exc!r}", code="connection_error"
            ) from exc
        return Receipt(provider=self.name, vendor_message_id=str(created.sid))

    def _classify(
        self, exc: TwilioRestException | TwilioServiceException, retry_after: str | None
    ) -> ProviderError:
        status = int(exc.status)
        code = _as_int(exc.code, default=status)
        return classify(
            self.name,
            status,
            code,
            retry_after=retry_after_seconds(retry_after),
            on_unknown=self._log_unknown_once,
        )

    def _log_unknown_once(self, code: str, status: int) -> None:
        if self._unlisted_seen(code):
            log.warning(
                "twilio_unknown_error_code", provider=self.name, code=code, http_status=status
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._client = self._http = None


def factory(
    name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps
) -> TwilioProvider:
    """Registry entry: the SDK's async client needs no thread pool."""
    return TwilioProvider(name, channel, spec)


def classify(
    provider: str,
    status: int,
    code: int,
    *,
    retry_after: float | None = None,
    on_unknown: Callable[[str, int], None] | None = None,
) -> ProviderError:
    """The error Herald raises for a Twilio answer: the code's table row, else (for an
    answer without a Twilio code) its HTTP status row, else transient and reported."""
    if code in ERROR_TABLE:
        kind, meaning = ERROR_TABLE[code]
    elif code == status and status in HTTP_STATUS_TABLE:
        kind, meaning = HTTP_STATUS_TABLE[status]
    else:
        kind, meaning = "transient", f"unknown Twilio error {code} (HTTP {status})"
        if on_unknown is not None:
            on_unknown(str(code), status)
    text = f"{provider}: Twilio {code}: {meaning}"
    return provider_error(kind == "permanent", text, code=str(code), retry_after=retry_after)


def _as_int(value: object, *, default: int) -> int:
    """A Twilio code as an int (the SDK passes the HTTP status when the body has none)."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default
