"""AWS faked at its network boundary: moto's server mode in a thread of the test process.

The adapters talk real HTTP to it through boto3 (``endpoint`` in the rules → boto3's
``endpoint_url``); tests read what it received through its ``/moto-api/`` endpoints, as
they would from a server in another process.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import httpx
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
#: moto accepts any keys; these only have to be present and look like keys.
ACCESS_KEY_ID = "AKIAHERALDTEST000000"
SECRET_ACCESS_KEY = "herald-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_endpoint() -> str:
    """A local URL nothing listens on: every call fails to connect (a vendor outage)."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """A local URL that takes connections and never answers (a hung vendor): the kernel
    completes the handshake from the listen backlog, nobody ever reads."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> MotoServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self, service: str) -> Any:
        """A boto3 client for test set-up (verifying a sender, ...)."""
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    async def _models(self, service: str, model: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.get("/moto-api/data.json")
        response.raise_for_status()
        return list(response.json().get(service, {}).get(model, []))

    async def sms_messages(self) -> dict[str, dict[str, Any]]:
        """SMS published to phone numbers, by SNS MessageId."""
        return {m["message_id"]: m for m in await self._models("sns", "SMS")}

    async def emails(self) -> dict[str, dict[str, Any]]:
        """E-mails SES accepted, by MessageId (moto keeps the HTML part when there is one,
        else the text part, as ``body``)."""
        return {m["id"]: m for m in await self._models("ses", "Message")}


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()
