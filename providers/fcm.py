"""Push through Firebase Cloud Messaging's HTTP v1 API, with pyfcm.

Rules document::

    fcm:
      type: fcm
      channel: push
      credentials: {service_account: env:FCM_SERVICE_ACCOUNT}   # + optional project_id
      endpoint: https://fcm.googleapis.com                       # optional base URL

``service_account`` is the service-account key: its JSON text (what secret stores
inject) or the path of its JSON file, told apart by the leading ``{``. ``project_id``
defaults to the key's own. The key's ``token_uri`` is where OAuth tokens come from
(google-auth), so a test's key points it at a local fake, as ``endpoint`` does for FCM.

pyfcm is synchronous (requests), so every call runs in the worker's bounded thread pool
(``ProviderDeps.blocking``) under ``asyncio.wait_for``; one client per provider, one
OAuth token per process (refreshed under a lock, a few minutes before it expires).
``HeraldFcmClient`` keeps pyfcm's payload building, endpoint and sessions, and changes
what a notification service cannot live with: pyfcm sleeps in the thread for a
``Retry-After`` and then sends again (unbounded), retries POSTs on 502/503 (a duplicate
push), tells errors apart by HTTP status only (``THIRD_PARTY_AUTH_ERROR`` and an expired
token are both 401), and fetches tokens with a 120 s timeout.

FCM's ``data`` is a map of strings: string values go as they are, any other JSON value
as its JSON text (``42`` → ``"42"``, ``{"a": 1}`` → ``'{"a":1}'``).

A token FCM calls ``UNREGISTERED`` is remembered (providers.tokens), so later sends to
it fail at once without a call.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import google.auth.exceptions
import google.auth.transport.requests
import orjson
import requests
from google.auth.credentials import TokenState
from google.oauth2 import service_account
from pyfcm import FCMNotification
from redis.asyncio import Redis
from requests.adapters import HTTPAdapter

from herald.domain import Channel, Envelope
from herald.errors import PermanentProviderError
from herald.logs import get_logger
from providers.base import BaseProvider, Receipt, Verdict, retry_after_seconds
from providers.credentials import MissingCredential, resolve_credentials
from providers.tokens import UnregisteredTokens

if TYPE_CHECKING:
    from providers.registry import ProviderDeps

log = get_logger(__name__)

FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_BASE_URL: Final = "https://fcm.googleapis.com"
DEFAULT_TIMEOUT_S: Final = 8.0  # under the worker's default 10 s provider timeout
FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

#: FCM v1 error codes (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)
#: and, for answers without one, the google.rpc status → (permanent, meaning).
ERROR_CODES: Final[dict[str, tuple[bool, str]]] = {
    "UNREGISTERED": (True, "the device token is no longer registered (app uninstalled?)"),
    "INVALID_ARGUMENT": (True, "the token or the message is invalid"),
    "SENDER_ID_MISMATCH": (True, "the token belongs to another Firebase project"),
    "THIRD_PARTY_AUTH_ERROR": (True, "APNs or web push refused the project's credentials"),
    "QUOTA_EXCEEDED": (False, "sending quota exceeded"),
    "UNAVAILABLE": (False, "FCM is overloaded"),
    "INTERNAL": (False, "FCM internal error"),
    "UNSPECIFIED_ERROR": (False, "FCM gave no reason"),
    # google.rpc statuses with no FcmError detail: about our call, not the message.
    "UNAUTHENTICATED": (False, "FCM refused our OAuth token"),
    "PERMISSION_DENIED": (False, "the service account may not send for this project"),
    "NOT_FOUND": (False, "no such Firebase project"),
    "RESOURCE_EXHAUSTED": (False, "sending quota exceeded"),
    "AUTH_TOKEN": (False, "no OAuth token from the token endpoint"),
}
#: Our set-up is wrong (key, project, permissions): transient, so the breaker opens and
#: traffic fails over, and logged as errors for whoever owns the credentials.
CONFIG_CODES: Final = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"})


class FcmHttpError(Exception):
    """A non-200 answer of the send endpoint, as FCM gave it."""

    def __init__(self, status: int, body: Any, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class FcmTokenError(Exception):
    """The token endpoint gave no access token (unreachable, or it refused our key)."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def _rpc_error(body: Any) -> tuple[str | None, str | None, str]:
    """``(FcmError errorCode, google.rpc status, message)`` of an error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None, ""
    code = next(
        (
            d.get("errorCode")
            for d in error.get("details") or []
            if isinstance(d, dict) and d.get("@type") == FCM_ERROR_TYPE
        ),
        None,
    )
    return code, error.get("status"), str(error.get("message") or "")


def http_verdict(status: int, body: Any, retry_after: str | None = None) -> Verdict:
    """The error table: FCM's errorCode when there is one, else the rpc status; a code
    not in the table (or no code at all) is transient, and logged once by the provider."""
    error_code, rpc_status, message = _rpc_error(body)
    wait = retry_after_seconds(retry_after)
    code = error_code or rpc_status
    if code in ERROR_CODES:
        permanent, meaning = ERROR_CODES[code]
        config = error_code is None and code in CONFIG_CODES
        return Verdict(
            permanent, code, meaning, message, None if permanent else wait, config=config
        )
    code = code or f"HTTP_{status}"
    return Verdict(False, code, f"unlisted answer (HTTP {status})", message, wait, listed=False)


def failure_verdict(exc: BaseException) -> Verdict:
    """Failures without an FCM answer: the token endpoint, the network, our timeout."""
    match exc:
        case FcmHttpError():
            return http_verdict(exc.status, exc.body, exc.retry_after)
        case FcmTokenError(refused=refused):
            return Verdict(
                False, "AUTH_TOKEN", ERROR_CODES["AUTH_TOKEN"][1], str(exc), config=refused
            )
        case requests.Timeout() | TimeoutError():
            return Verdict(False, "timeout", "timed out", str(exc))
        case requests.ConnectionError():
            return Verdict(False, "connect_error", "could not connect", str(exc))
    return Verdict(False, "request_error", "request failed", repr(exc), listed=False)


#: What a send turns into provider errors; anything else is a bug and propagates.
SEND_ERRORS: tuple[type[BaseException], ...] = (
    FcmHttpError,
    FcmTokenError,
    requests.RequestException,
    TimeoutError,
)


def push_data(data: Mapping[str, Any]) -> dict[str, str]:
    """FCM's ``data`` is string → string: strings stay, other values become JSON text."""
    return {
        str(key): value if isinstance(value, str) else orjson.dumps(value).decode()
        for key, value in data.items()
    }


def service_account_info(provider: str, value: str) -> dict[str, Any]:
    """The key's JSON text, or the path of its file. Errors never quote the secret."""
    where = f"{provider}.credentials.service_account"
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
    except OSError as exc:
        raise MissingCredential(f"{where}: cannot read the key file ({exc.strerror})") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise MissingCredential(f"{where}: not a service-account JSON key") from None
    if not isinstance(info, dict):
        raise MissingCredential(f"{where}: not a service-account JSON key")
    return info


class HeraldFcmClient(FCMNotification):
    """pyfcm's client with our endpoint, one shared token, and errors left to us."""

    def __init__(
        self,
        credentials: service_account.Credentials,
        *,
        project_id: str,
        base_url: str,
        timeout_s: float,
        pool_size: int = 16,
    ) -> None:
        # No urllib3 retries: a retried POST can push twice, and its waits block a thread.
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=pool_size)
        super().__init__(credentials=credentials, project_id=project_id, adapter=adapter)
        self.timeout_s = timeout_s
        self._endpoint = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._token_lock = threading.Lock()
        self._token_http = requests.Session()  # used under the lock only

    @property
    def fcm_end_point(self) -> str:
        """Ours, whatever the key's project: pyfcm would prefer the key's project id."""
        return self._endpoint

    def request_headers(self, *, renew: bool = False) -> dict[str, str]:
        """One token for every thread, refreshed before it goes stale, with a timeout."""
        with self._token_lock:
            if renew or self.credentials.token_state is not TokenState.FRESH:
                request = google.auth.transport.requests.Request(session=self._token_http)
                try:
                    self.credentials.refresh(functools.partial(request, timeout=self.timeout_s))
                except google.auth.exceptions.RefreshError as exc:
                    raise FcmTokenError(f"token refused: {exc}", refused=True) from exc
                except google.auth.exceptions.TransportError as exc:
                    raise FcmTokenError(f"token endpoint: {exc}", refused=False) from exc
            token = self.credentials.token
        return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def send_request(self, payload: bytes | None = None, timeout: float | None = None) -> Any:
        """One POST, plus one more with a new token if FCM says ours is no good."""
        response = self._post(payload, timeout, renew=False)
        if response.status_code == 401 and _rpc_error(_json(response))[0] is None:
            response = self._post(payload, timeout, renew=True)
        return response

    def _post(self, payload: bytes | None, timeout: float | None, *, renew: bool) -> Any:
        return self.requests_session.post(
            self.fcm_end_point,
            data=payload,
            timeout=timeout,
            headers=self.request_headers(renew=renew),
        )

    def parse_response(self, response: Any) -> dict[str, Any]:
        if response.status_code == 200:
            body = _json(response)
            return body if isinstance(body, dict) else {}
        raise FcmHttpError(
            response.status_code, _json(response), response.headers.get("Retry-After")
        )

    def close(self) -> None:
        """The token session; the send sessions are per thread and die with the pool."""
        self._token_http.close()


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class FcmProvider(BaseProvider):
    type_name = "fcm"
    #: FCM takes 4,096 bytes of payload (title, body and data together); it answers
    #: INVALID_ARGUMENT beyond, so this is an upper bound for a plain-ASCII body alone.
    max_body_chars: ClassVar[int | None] = 4000
    #: FCM's default project quota: 600,000 messages a minute.
    default_max_per_s: ClassVar[float | None] = 10_000.0

    def __init__(
        self,
        name: str,
        channel: Channel,
        spec: dict[str, Any],
        *,
        redis: Redis,
        blocking: ThreadPoolExecutor,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(name, channel, spec)
        if channel is not Channel.PUSH:
            raise ValueError(f"{name}: an fcm provider sends push, not {channel}")
        secrets = resolve_credentials(name, spec)
        if "service_account" not in secrets:
            raise MissingCredential(f"{name}.credentials.service_account: the key is required")
        info = service_account_info(name, secrets["service_account"])
        project_id = secrets.get("project_id") or info.get("project_id")
        if not project_id:
            raise MissingCredential(f"{name}.credentials.project_id: not set, not in the key")
        try:
            credentials = service_account.Credentials.from_service_account_info(
                info, scopes=[FCM_SCOPE]
            )
        except ValueError:
            raise MissingCredential(
                f"{name}.credentials.service_account: an incomplete service-account key"
            ) from None
        self.timeout_s = timeout_s
        self.blocking = blocking
        self.tokens = UnregisteredTokens(redis, name)
        self.client = HeraldFcmClient(
            credentials,
            project_id=project_id,
            base_url=spec.get("endpoint") or DEFAULT_BASE_URL,
            timeout_s=timeout_s,
        )

    async def send(self, message: Envelope) -> Receipt:
        if await self.tokens.is_unregistered(message.to):
            raise PermanentProviderError(
                f"{self.name}: FCM UNREGISTERED {ERROR_CODES['UNREGISTERED'][1]} (remembered)",
                code="UNREGISTERED",
            )
        call = functools.partial(
            self.client.notify,
            fcm_token=message.to,
            notification_title=message.subject,
            notification_body=message.body,
            data_payload=push_data(message.data) or None,
            timeout=self.timeout_s,
        )
        loop = asyncio.get_running_loop()
        try:
            answer = await asyncio.wait_for(
                loop.run_in_executor(self.blocking, call), self.timeout_s
            )
        except SEND_ERRORS as exc:
            verdict = failure_verdict(exc)
            if verdict.code == "UNREGISTERED":
                await self.tokens.remember(message.to)
            raise self.error_for(verdict, "FCM", message) from exc
        return Receipt(provider=self.name, vendor_message_id=str(answer.get("name") or ""))

    async def close(self) -> None:
        self.client.close()


def factory(name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps) -> FcmProvider:
    """Registry entry: pyfcm blocks, so it gets the worker's bounded thread pool."""
    return FcmProvider(name, channel, spec, redis=deps.redis, blocking=deps.blocking)
