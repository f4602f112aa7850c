"""One strict reading of every JSON request body, before any route sees it.

FastAPI's own ``json.loads`` takes documents that later crash the service or lose data
silently: integers beyond 64 bits (orjson, the database and most clients cannot hold
them), lone UTF-16 surrogates (no UTF-8 encoding exists for them), duplicate keys (the
last one wins, so a proxy and Herald can read different requests), ``NaN``, NUL
characters (PostgreSQL text and JSONB refuse them) and nesting deep enough to exhaust
the recursion limit. ``StrictJsonBodies`` refuses each with a problem+json naming the
field, so what reaches a route is a document every later step can store and serialize.

Cost: the common body takes the fast path (orjson, one walk over the parsed values and a
byte count of the ``":`` key separators); only a body that could hide one of the faults
above is parsed again, exactly, by ``json.loads`` with hooks.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from producer.limits import replay_body
from producer.problems import FieldError, Problem, problem_response

#: Containers inside containers: a send body needs 3 or 4; the routing document 6.
MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: A key's closing quote followed by whitespace before its colon: the byte count of
#: ``":`` would miss that key, so such a body takes the exact path.
_SPACED_COLON = re.compile(rb'"\s+:')
#: A JSON string (with the colon after it, when it is a key) or a bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"\s*:?|[\[\]{}]')
#: orjson turns an integer beyond 64 bits into a float of the same magnitude.
_FLOAT_FROM_BIG_INT = float(2**63)


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<something>+json``, as FastAPI decides."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The document in ``raw``, or a ``Problem``: 400 naming ``body`` (with line and
    column) when it is not JSON, 422 naming the field at fault otherwise."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _exact(raw, max_depth, fast_error=str(exc))
    keys = _plain_keys(value, max_depth)
    if keys is None or raw.count(b'":') != keys or _SPACED_COLON.search(raw) or b"\\u0000" in raw:
        return _exact(raw, max_depth, fast_error=None)  # finds and names the fault, if any
    return value


# -- the fast path: orjson's result, checked in one walk -------------------------------


def _plain_keys(value: Any, max_depth: int) -> int | None:
    """How many object keys ``value`` has, or ``None`` when something needs the exact
    path: nesting past the limit, an integer beyond 64 bits (orjson gives a float of its
    magnitude for one past 2**64). No paths are built here: this runs on every body."""
    keys = 0
    stack: list[tuple[Any, int]] = [([value], 0)]  # the root, as if in a list
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return None
        if type(node) is dict:
            keys += len(node)
            items = node.values()
        else:
            items = node
        for item in items:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif kind is int:
                if not INT64_MIN <= item <= INT64_MAX:
                    return None
            elif kind is float and abs(item) >= _FLOAT_FROM_BIG_INT:
                return None
    return keys


# -- the exact path: json.loads with hooks, for what the fast path cannot see -----------


class _Duplicated(dict[str, Any]):
    """An object in which ``key`` appeared more than once."""

    key: str


class _NotJson(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            duplicated = _Duplicated(out)
            duplicated.key = key
            return duplicated
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _exact(raw: bytes, max_depth: int, *, fast_error: str | None) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_json(f"is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise _not_json(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _NotJson as exc:
        raise _not_json(str(exc)) from None
    except RecursionError:
        raise _too_deep(_deep_member(raw, max_depth), max_depth) from None
    _walk_exact(value, max_depth)
    if fast_error is not None:  # json.loads took what orjson refused, and no check knew why
        raise _not_json(fast_error)
    return value


def check_values(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """The same checks on a document another parser read (the YAML of a rules edit):
    every string with a UTF-8 form and no NUL, integers within 64 bits, finite numbers,
    nesting within ``max_depth``; a ``FieldError`` naming the path otherwise."""
    _walk_exact(value, max_depth)


def _walk_exact(value: Any, max_depth: int) -> None:
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            _check_depth(depth, max_depth, path)
            if isinstance(node, _Duplicated):
                raise FieldError(_field((*path, node.key)), "appears more than once")
            for key, item in node.items():
                _check_text(key, (*path, key))
                stack.append((item, depth + 1, (*path, key)))
        elif isinstance(node, list):
            _check_depth(depth, max_depth, path)
            stack.extend((v, depth + 1, (*path, str(i))) for i, v in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, path)
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int):
            _check_int(node, path)
        elif isinstance(node, float) and not math.isfinite(node):
            raise FieldError(_field(path), "is a number too large for a double")


# -- the checks, each naming the field -------------------------------------------------


def _check_depth(depth: int, max_depth: int, path: tuple[str, ...]) -> None:
    if depth > max_depth:
        raise _too_deep(path, max_depth)


def _check_int(value: int, path: tuple[str, ...]) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        raise FieldError(_field(path), "is an integer outside the signed 64-bit range")


def _check_text(value: str, path: tuple[str, ...]) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FieldError(
            _field(path), f"contains a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X})"
        ) from None
    if "\x00" in value:
        raise FieldError(_field(path), "contains a NUL character (U+0000)")


def _deep_member(raw: bytes, max_depth: int) -> tuple[str, ...]:
    """The top-level member of a document too deep for any parser to read, found by
    scanning its brackets only as far as the limit (empty: the document itself)."""
    depth = 0
    member: tuple[str, ...] = ()
    for token in _TOKENS.finditer(raw):
        text = token.group()
        if text[:1] == b'"':
            if depth == 1 and text.endswith(b":"):
                member = _key(text[:-1].rstrip())
        elif text in (b"{", b"["):
            depth += 1
            if depth > max_depth:
                return member
        else:
            depth -= 1
    return ()


def _key(token: bytes) -> tuple[str, ...]:
    try:
        return (str(json.loads(token)),)
    except ValueError:  # a bad escape: the document is refused anyway, for its depth
        return ()


def _too_deep(path: tuple[str, ...], max_depth: int) -> Problem:
    # The top-level member says where; the full path of a hostile document is noise.
    return FieldError(_field(path[:1]), f"is nested more than {max_depth} levels deep")


def _not_json(why: str) -> Problem:
    return FieldError("body", f"is not valid JSON: {why}", status=400)


def _field(path: tuple[str, ...]) -> str:
    """``metadata.a.b``, with any lone surrogate in a key shown as its escape."""
    if not path:
        return "body"
    return ".".join(path).encode("utf-8", "backslashreplace").decode("utf-8")


# -- the middleware ---------------------------------------------------------------------


class StrictJsonBodies:
    """Refuse a JSON body ``parse_json`` refuses, before routing and auth, as FastAPI
    reads bodies before it runs dependencies. Sits inside the size limit, which hands
    it the whole body in one message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_json(_header(scope, b"content-type")):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw:
            try:
                parse_json(raw)
            except Problem as problem:
                await problem_response(problem, scope.get("path"))(scope, receive, send)
                return
        await self.app(scope, replay_body(raw, receive), send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None
