"""The SNS side of an HTTP subscription, for tests: a signing key with a self-signed
certificate served by a tiny local HTTP server (which also answers, and records, the
``SubscribeURL`` GET of a subscription confirmation), and messages signed as SNS signs
them (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA)."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from producer.webhooks.ses import string_to_sign

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:herald-ses-events"
CERT_PATH = "/SimpleNotificationService-test.pem"


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class SnsSigner:
    """Signs SNS messages; serves its certificate at ``cert_url``."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = _self_signed(self.key)
        #: Paths of every GET the server answered, in order.
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.cert_url = self.base_url + CERT_PATH
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        signer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                signer.requests.append(self.path)
                body = signer.pem if self.path == CERT_PATH else b"<ConfirmSubscriptionResponse/>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def start(self) -> SnsSigner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(string_to_sign(message), padding.PKCS1v15(), digest)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": self.cert_url,
        }

    def notification(
        self, event: dict[str, Any], *, topic: str = TOPIC_ARN, version: str = "2"
    ) -> dict[str, Any]:
        """An SNS Notification carrying an SES event, signed."""
        return self.sign(
            {
                "Type": "Notification",
                "MessageId": str(uuid.uuid4()),
                "TopicArn": topic,
                "Message": orjson.dumps(event).decode(),
                "Timestamp": _now(),
                "UnsubscribeURL": f"{self.base_url}/unsubscribe",
            },
            version,
        )

    def subscription_confirmation(self, *, topic: str = TOPIC_ARN) -> dict[str, Any]:
        token = uuid.uuid4().hex
        return self.sign(
            {
                "Type": "SubscriptionConfirmation",
                "MessageId": str(uuid.uuid4()),
                "Token": token,
                "TopicArn": topic,
                "Message": f"You have chosen to subscribe to the topic {topic}.",
                "SubscribeURL": f"{self.base_url}/confirm?Token={token}",
                "Timestamp": _now(),
            }
        )


def ses_event(kind: str, message_id: str, **detail: Any) -> dict[str, Any]:
    """An SES event-publishing record (``eventType``) about one sent message."""
    mail = {
        "timestamp": _now(),
        "source": "noreply@herald.test",
        "messageId": message_id,
        "destination": ["alice@example.com"],
    }
    return {"eventType": kind, "mail": mail, **detail}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@contextmanager
def sns_signer() -> Iterator[SnsSigner]:
    signer = SnsSigner().start()
    try:
        yield signer
    finally:
        signer.stop()
