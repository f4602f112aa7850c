"""The ``unreadable`` dead-letter row: a message on ``herald.dlq`` that is no notification
Herald holds (not JSON, not an envelope, or for an id the database does not know).

Pure functions, no I/O. The row keeps what on-call needs to find the sender: the raw
bytes (at most ``MAX_RAW_BYTES``; text when it is clean UTF-8, else base64), the AMQP
headers (JSON-safe, bounded, credentials dropped), where it came from and what failed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import orjson

from herald.domain import Category, Channel, DeadLetterReason, utcnow
from herald.ids import new_id
from workers.poison import SECRET_HEADER

#: Most bytes of the body kept (the rest is counted, not stored).
MAX_RAW_BYTES = 64 * 1024
#: Most bytes of the kept headers (as JSON); past it, only their names are kept.
MAX_HEADER_BYTES = 8 * 1024
_MAX_TEXT = 1000
_MAX_ITEMS = 50
_MAX_DEPTH = 4
#: Control characters that make text unsafe to show or to store as JSON text.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def raw_body(body: bytes) -> dict[str, Any]:
    """The body as stored: ``text`` when it is clean UTF-8, else ``base64``; capped."""
    kept = body[:MAX_RAW_BYTES]
    out: dict[str, Any] = {"size": len(body), "truncated": len(body) > MAX_RAW_BYTES}
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError:  # binary, or cut inside a character
        text = None
    if text is not None and not _UNSAFE.search(text):
        out["text"] = text
    else:
        out["base64"] = base64.b64encode(kept).decode("ascii")
    return out


def safe_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers as JSON-safe values, credentials left out, at most ~8 KiB."""
    out: dict[str, Any] = {}
    for name, value in list((headers or {}).items())[:_MAX_ITEMS]:
        key = clean(str(name), 100)
        out[key] = "[withheld]" if SECRET_HEADER.search(key) else _json_safe(value, 0)
    if len(orjson.dumps(out)) > MAX_HEADER_BYTES:
        return {key: "[too large to keep]" for key in out}
    return out


def clean(text: str, limit: int = _MAX_TEXT) -> str:
    """Text a database column takes: PostgreSQL refuses U+0000 in text, so it becomes
    U+FFFD (a NUL in a caller name or error must not make the row unstorable)."""
    return text[:limit].replace("\x00", "\ufffd")


def _json_safe(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, bytes | bytearray):
        return raw_body(bytes(value[:_MAX_TEXT]))
    if isinstance(value, datetime | date):
        return value.isoformat()
    if depth >= _MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, Mapping):
        return {
            clean(str(k), 100): "[withheld]"
            if SECRET_HEADER.search(str(k))
            else _json_safe(v, depth + 1)
            for k, v in list(value.items())[:_MAX_ITEMS]
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return repr(value)[:_MAX_TEXT]  # Decimal and the like


def source_key(message_id: str | None, body: bytes) -> str | None:
    """Identity of one unreadable message: a redelivered copy (same AMQP message id and
    bytes) maps to the same key. Without a message id there is nothing to tell copies by."""
    if not message_id:
        return None
    digest = hashlib.sha256(message_id.encode("utf-8", "replace") + b"\0" + body)
    return digest.hexdigest()


def loose_json(body: bytes) -> Any:
    """The body as JSON if it is JSON at all (for hints), else ``None``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def hints(decoded: Any, source_queue: str | None) -> dict[str, str | None]:
    """What the row can still say about the message: channel (from the body, else from
    the work queue it came from), category and caller, each only when valid."""
    fields = decoded if isinstance(decoded, dict) else {}
    channel = _member(fields.get("channel"), Channel)
    if channel is None and source_queue and source_queue.count(".") == 2:
        channel = _member(source_queue.split(".")[1], Channel)
    caller = fields.get("caller")
    claimed = fields.get("id")
    return {
        "channel": channel,
        "category": _member(fields.get("category"), Category),
        "caller": clean(caller, 100) if isinstance(caller, str) else None,
        "claimed_id": clean(claimed, 100) if isinstance(claimed, str) else None,
    }


def _member(value: Any, kind: type[Channel] | type[Category]) -> str | None:
    values = {m.value for m in kind}
    return value if isinstance(value, str) and value in values else None


def unreadable_row(
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    message_id: str | None,
    routing_key: str | None,
    error: str,
    code: str,
) -> dict[str, Any]:
    """The ``dead_letters`` row for a message no notification can be made of."""
    headers = headers or {}
    source_queue = _first_str(headers, "x-herald-source-queue", "x-first-death-queue")
    found = hints(loose_json(body), source_queue)
    claimed = found["claimed_id"] or _first_str(headers, "x-herald-notification-id")
    return {
        "id": new_id(),
        "notification_id": None,
        "generation": 0,
        "channel": found["channel"],
        "category": found["category"],
        "caller": found["caller"],
        "reason": DeadLetterReason.UNREADABLE.value,
        "last_error": clean(error),
        "last_error_code": clean(code, 64),
        "last_provider": None,
        "attempts": 0,
        "state": "open",
        "payload": {
            "unreadable": True,
            "error": clean(error),
            "claimed_notification_id": claimed,
            "source_queue": source_queue,
            "message_id": clean(message_id or "", 200) or None,
            "routing_key": clean(routing_key or "", 200) or None,
            "raw": raw_body(body),
            "headers": safe_headers(headers),
        },
        "dead_lettered_at": utcnow(),
        "source_key": source_key(
            _first_str(headers, "x-herald-source-message-id") or message_id, body
        ),
    }


def _first_str(headers: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value:
            return clean(value, 200)
    return None
