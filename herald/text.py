"""redis-py answers ``bytes`` (or ``str`` with decode_responses); we want ``str``."""

from __future__ import annotations


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
