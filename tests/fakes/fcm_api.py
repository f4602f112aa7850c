"""A local FCM HTTP v1 API and its OAuth token endpoint: enough for pyfcm and google-auth.

``POST /token`` checks the JWT-bearer grant (an assertion signed with the test key by
its service account, for Google's token audience, with FCM's scope) and hands out an
access token; ``POST /v1/projects/{project}/messages:send`` checks ``Authorization:
Bearer <that token>`` and the message as FCM does (a token, string-only data), records
it, and can answer each error of the adapter's table in FCM's own error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.twilio_api import LocalServer

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: What Google checks as the assertion's audience, wherever the token endpoint is.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLIENT_EMAIL = "herald@herald-test.iam.gserviceaccount.com"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

#: errorCode → (HTTP status, google.rpc status), as FCM answers them.
FCM_ERRORS: dict[str, tuple[int, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "UNSPECIFIED_ERROR": (500, "UNKNOWN"),
}


@dataclass(frozen=True, slots=True)
class FakeError:
    """One error answer. ``error_code=None``: a google.rpc error with no FcmError detail
    (what FCM says about our call rather than the message: a bad token, no permission)."""

    error_code: str | None
    status: int = 0
    rpc_status: str = ""
    message: str = "error"
    retry_after: str | None = None
    token: str | None = None  # only for this device token; None: any

    @classmethod
    def of(cls, error_code: str, **extra: Any) -> FakeError:
        status, rpc_status = FCM_ERRORS[error_code]
        return cls(error_code, status, rpc_status, **extra)


def service_account_key() -> tuple[dict[str, Any], str]:
    """A fresh RSA key as a service-account key (without ``token_uri``), and its public PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "herald-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": private_pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
    }
    return info, public_pem


@dataclass(slots=True)
class FakeFcm:
    public_key_pem: str
    project_id: str = "herald-test"
    url: str = ""
    #: Every message accepted: its JSON ``message`` plus the bearer token it came with.
    received: list[dict[str, Any]] = field(default_factory=list)
    #: Answered one per matching request, in turn, before anything else.
    errors: deque[FakeError] = field(default_factory=deque)
    #: Answered to every matching request while set (an outage).
    outage: FakeError | None = None
    tokens_issued: list[str] = field(default_factory=list)
    sends: int = 0  # every request to the send endpoint, accepted or not
    token_requests: int = 0
    delay_s: float = 0.0

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self._send, methods=["POST"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve until the block ends; yields the base URL for the rules' ``endpoint``."""
        server = LocalServer(self.app())
        self.url = server.url
        await server.start()
        try:
            yield server.url
        finally:
            await server.stop()

    def fail_next(self, *errors: FakeError) -> None:
        self.errors.extend(errors)

    def reset(self) -> None:
        self.received.clear()
        self.errors.clear()
        self.outage = None
        self.delay_s = 0.0
        self.sends = 0

    def sent_to(self, device_token: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["message"].get("token") == device_token]

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("grant_type") != JWT_BEARER:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            claims = jwt.decode(
                form.get("assertion", ""), certs=self.public_key_pem, audience=GOOGLE_TOKEN_AUDIENCE
            )
        except ValueError as exc:  # bad signature, audience or expiry
            return JSONResponse(
                {"error": "invalid_grant", "error_description": str(exc)}, status_code=400
            )
        if claims.get("iss") != CLIENT_EMAIL:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        token = f"ya29.fake-{uuid.uuid4().hex}"
        self.tokens_issued.append(token)
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def _send(self, request: Request) -> Response:
        self.sends += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens_issued:
            return _error(FakeError(None, 401, "UNAUTHENTICATED", "invalid credentials"))
        if request.path_params["project"] != self.project_id:
            return _error(FakeError(None, 404, "NOT_FOUND", "project not found"))
        try:
            message = json.loads(await request.body())["message"]
        except (ValueError, KeyError, TypeError):
            return _error(FakeError.of("INVALID_ARGUMENT", message="not a message"))
        error = self._error_for(message.get("token"))
        if error is None:
            error = _invalid(message)
        if error is not None:
            return _error(error)
        name = f"projects/{self.project_id}/messages/0:{time.time_ns()}"
        self.received.append({"message": message, "bearer": bearer, "name": name})
        return JSONResponse({"name": name})

    def _error_for(self, device_token: str | None) -> FakeError | None:
        for error in self.errors:
            if error.token in (None, device_token):
                self.errors.remove(error)
                return error
        if self.outage is not None and self.outage.token in (None, device_token):
            return self.outage
        return None


def _invalid(message: dict[str, Any]) -> FakeError | None:
    """What FCM itself refuses: no target, or data values that are not strings."""
    if not message.get("token"):
        return FakeError.of("INVALID_ARGUMENT", message="a target is required")
    data = message.get("data") or {}
    if not all(isinstance(v, str) for v in data.values()):
        return FakeError.of("INVALID_ARGUMENT", message="data values must be strings")
    return None


def _error(error: FakeError) -> Response:
    body: dict[str, Any] = {
        "code": error.status,
        "message": error.message,
        "status": error.rpc_status,
    }
    if error.error_code is not None:
        body["details"] = [{"@type": FCM_ERROR_TYPE, "errorCode": error.error_code}]
    headers = {"Retry-After": error.retry_after} if error.retry_after else None
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)
