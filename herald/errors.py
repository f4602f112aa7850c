"""One root exception for Herald; every package's errors derive from it."""

from __future__ import annotations


class HeraldError(Exception):
    """Root of every error Herald raises on purpose."""


class InfrastructureError(HeraldError):
    """A backing service (database, Redis, broker) failed; the work is retried later."""


class ProviderError(HeraldError):
    """A vendor refused or failed a send."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientProviderError(ProviderError):
    """Worth a retry: timeouts, 5xx, throttling. ``retry_after`` honours the vendor's hint."""

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Final: a bad number, a rejected address, an unsubscribed device. Never retried."""


class NoRouteError(HeraldError):
    """No provider is configured for this message."""


class StartupRefused(HeraldError):
    """Settings a production process must not run with; the message says what to set."""
