"""Structured logs (structlog) with personal data masked before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_ADDRESS_KEYS = frozenset({"to", "recipient", "address", "phone", "email"})
_SECRET_KEYS = frozenset({"body", "code", "otp", "api_key", "authorization", "password"})
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")
_PHONE = re.compile(r"\+\d[\d \-().]{5,20}\d")


def mask_address(value: str) -> str:
    """``+447400123456`` → ``+44********56``; ``alice@example.com`` → ``a***@example.com``."""
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) <= 6:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


def mask_text(text: str) -> str:
    """Mask every phone number and e-mail address inside free text (error messages)."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: mask_address(re.sub(r"[^\d+]", "", m.group(0))), text)


def mask_personal_data(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key in _SECRET_KEYS and value is not None:
            event[key] = "[redacted]"
        elif key in _ADDRESS_KEYS and isinstance(value, str):
            event[key] = mask_address(value)
        elif isinstance(value, str):
            event[key] = mask_text(value)
    return event


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # before masking: tracebacks quote data
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("aiormq", "aio_pika", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
