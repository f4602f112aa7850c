"""MSG91 SMS over its REST API (httpx; MSG91 publishes no Python SDK of its own).

We use the v5 Flow API, ``POST {endpoint}/api/v5/flow`` with the ``authkey`` header:
Indian operators only carry SMS that match a DLT-registered template, and the Flow API
is MSG91's way of naming one (``template_id``). The message body travels as a template
variable (``body`` by default, i.e. ``##body##`` in the template); string values of the
message's ``data`` travel as further variables, for templates with several.

The answer is JSON ``{"type": "success", "message": "<request id>"}`` or
``{"type": "error", "message": "…", "code": "…"}`` (with HTTP 200 or an error status);
``code`` is MSG91's numeric error code, mapped through ``ERROR_TABLE``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import httpx

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


#: MSG91 error codes → what they mean for us. Permanent: the same request would fail
#: again until someone changes the message or Herald's MSG91 set-up (auth key, sender,
#: template, IP allow-list: DESIGN §3 wants those in the dead-letter store, to replay
#: once fixed). Transient: worth a retry, and they count against MSG91's breaker, so a
#: run of them moves traffic to the next provider.
ERROR_TABLE: Final[dict[str, tuple[Kind, str]]] = {
    "101": ("permanent", "mobile number missing"),
    "102": ("permanent", "message missing"),
    "103": ("permanent", "sender ID missing: check the MSG91 flow or the 'sender' setting"),
    "106": ("permanent", "auth key missing"),
    "202": ("permanent", "invalid mobile number"),
    "203": ("permanent", "invalid sender ID or DLT entity ID missing"),
    "207": ("permanent", "invalid auth key: check the auth_key credential"),
    "208": ("permanent", "this IP is blacklisted by MSG91"),
    "301": ("transient", "insufficient balance: top up (auto-recharge) and it recovers"),
    "302": ("permanent", "the MSG91 account has expired"),
    "303": ("permanent", "the MSG91 account is banned"),
    "306": ("transient", "this route is unavailable at the moment"),
    "310": ("permanent", "SMS too long"),
    "311": ("permanent", "duplicate of a request MSG91 accepted in the last 10 s"),
    "418": ("permanent", "this IP is not on the auth key's allow-list"),
    "505": ("permanent", "demo account: sending is not enabled"),
}

#: Answers with no MSG91 code (a gateway, or an outage): decided by HTTP status.
HTTP_STATUS_TABLE: Final[dict[int, tuple[Kind, str]]] = {
    401: ("permanent", "authentication failed: check the auth_key credential"),
    **GATEWAY_STATUS_TABLE,
}

DEFAULT_BASE_URL: Final = "https://control.msg91.com"
FLOW_PATH: Final = "/api/v5/flow"
DEFAULT_TIMEOUT_S: Final = 8.0  # under the worker's default 10 s provider timeout
BODY_VARIABLE: Final = "body"


class Msg91Provider(BaseProvider):
    """SMS through MSG91's Flow API.

    Credentials (``env:`` references): ``auth_key`` and ``template_id`` (the MSG91
    template, itself mapped to a DLT template for India); optional ``sender`` (a sender
    ID, when the template's sender is "FromAPI").
    """

    type_name = "msg91"
    max_body_chars: ClassVar[int | None] = 1530  # ten 153-character GSM-7 parts
    default_max_per_s: ClassVar[float | None] = 50.0
    max_segments: ClassVar[int] = DEFAULT_MAX_SEGMENTS

    def __init__(
        self,
        name: str,
        channel: Channel,
        spec: dict[str, Any],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name, channel, spec)
        credentials = resolve_credentials(name, spec, env)
        self.template_id = credentials["template_id"]
        self.sender = credentials.get("sender")
        self.timeout_s = timeout_s
        # httpx builds no connection until the first request: safe outside the loop.
        self._http = httpx.AsyncClient(
            base_url=str(spec.get("endpoint") or DEFAULT_BASE_URL).rstrip("/"),
            headers={"authkey": credentials["auth_key"], "accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def payload(self, message: Envelope, body: str) -> dict[str, Any]:
        """The Flow API request: one recipient, the body and ``data`` as variables."""
        recipient: dict[str, str] = {
            key: value for key, value in message.data.items() if isinstance(value, str)
        }
        recipient[BODY_VARIABLE] = body
        recipient["mobiles"] = message.to.removeprefix("+")  # MSG91 wants 91XXXXXXXXXX
        payload: dict[str, Any] = {
            "template_id": self.template_id,
            "short_url": "0",
            "recipients": [recipient],
        }
        if self.sender:
            payload["sender"] = self.sender
        return payload

    async def send(self, message: Envelope) -> Receipt:
        body = message.body or ""
        if not body:
            raise PermanentProviderError(f"{self.name}: an SMS needs a body", code="102")
        check_sms_body(body, self.max_segments)
        try:
            response = await self._http.post(FLOW_PATH, json=self.payload(message, body))
        except httpx.TimeoutException as exc:
            raise TransientProviderError(
                f"{self.name}: no answer within {self.timeout_s}s", code="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"{self.name}: connection failed: {exc!r}", code="connection_error"
            ) from exc
        return self._receipt(response)

    def _receipt(self, response: httpx.Response) -> Receipt:
        """The request id of a success, or the error the answer stands for."""
        answer = _json(response)
        if response.is_success and answer.get("type") == "success" and answer.get("message"):
            return Receipt(provider=self.name, vendor_message_id=str(answer["message"]))
        code = answer.get("code")
        raise classify(
            self.name,
            response.status_code,
            str(code) if code not in (None, "") else None,
            detail=str(answer.get("message") or "")[:200],
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
            on_unknown=self._log_unknown_once,
        )

    def _log_unknown_once(self, code: str, status: int) -> None:
        if self._unlisted_seen(code):
            log.warning(
                "msg91_unknown_error_code", provider=self.name, code=code, http_status=status
            )

    async def close(self) -> None:
        await self._http.aclose()


def factory(name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps) -> Msg91Provider:
    """Registry entry: httpx is asyncio-native, no thread pool needed."""
    return Msg91Provider(name, channel, spec)


def classify(
    provider: str,
    status: int,
    code: str | None,
    *,
    detail: str = "",
    retry_after: float | None = None,
    on_unknown: Callable[[str, int], None] | None = None,
) -> ProviderError:
    """The error Herald raises for an MSG91 answer: the code's row, else (no code) the
    HTTP status row, else transient and reported once."""
    if code is not None and code in ERROR_TABLE:
        kind, meaning = ERROR_TABLE[code]
    elif code is None and status in HTTP_STATUS_TABLE:
        kind, meaning = HTTP_STATUS_TABLE[status]
    else:
        code = code or f"http_{status}"
        kind, meaning = "transient", f"unknown MSG91 error {code} (HTTP {status})"
        if on_unknown is not None:
            on_unknown(code, status)
    code = code or str(status)
    text = f"{provider}: MSG91 {code}: {meaning}" + (f" ({detail})" if detail else "")
    return provider_error(kind == "permanent", text, code=code, retry_after=retry_after)


def _json(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or ``{}`` for anything else (an HTML error page)."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
