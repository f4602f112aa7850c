"""The console's dead-letter filter form: query parameters to a ``DeadLetterFilter`` and
back to a query string (for paging, the bulk replay preview and the API's filter body)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from dlq.queries import DeadLetterFilter
from herald.domain import Channel, DeadLetterReason, utcnow

#: "In the last …" choices, as the on-call engineer thinks of them.
WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
}
FIELDS = ("channel", "category", "provider", "reason", "error_code", "caller", "window")
STATES = ("open", "replayed", "discarded", "any")


@dataclass(frozen=True, slots=True)
class FilterForm:
    values: dict[str, str]
    state: str
    problems: dict[str, str]

    @classmethod
    def parse(cls, params: Any) -> FilterForm:
        values = {f: str(params.get(f, "")).strip() for f in FIELDS if params.get(f)}
        problems: dict[str, str] = {}
        if values.get("channel") and values["channel"] not in {c.value for c in Channel}:
            problems["channel"] = "is not sms, email or push"
        if values.get("reason") and values["reason"] not in {r.value for r in DeadLetterReason}:
            problems["reason"] = "is not a dead-letter reason"
        if values.get("window") and values["window"] not in WINDOWS:
            problems["window"] = "is not one of " + ", ".join(WINDOWS)
        state = str(params.get("state") or "open")
        if state not in STATES:
            problems["state"] = "is not one of " + ", ".join(STATES)
            state = "open"
        return cls({k: v for k, v in values.items() if k not in problems}, state, problems)

    def since(self, now: datetime | None = None) -> datetime | None:
        window = self.values.get("window")
        return (now or utcnow()) - WINDOWS[window] if window else None

    def to_filter(self, *, open_only: bool = False) -> DeadLetterFilter:
        v = self.values
        return DeadLetterFilter(
            channel=v.get("channel"),
            category=v.get("category"),
            provider=v.get("provider"),
            reason=v.get("reason"),
            error_code=v.get("error_code"),
            caller=v.get("caller"),
            since=self.since(),
            state="open" if open_only or self.state == "open" else _state(self.state),
        )

    def api_filters(self) -> dict[str, Any]:
        """The filter as a bulk-replay job stores it (JSON, absolute ``since``)."""
        filters: dict[str, Any] = {k: v for k, v in self.values.items() if k != "window"}
        since = self.since()
        if since is not None:
            filters["since"] = since.isoformat()
        return filters

    def query(self, **extra: str) -> str:
        state = {"state": self.state} if self.state != "open" else {}
        return urlencode({**self.values, **state, **extra})


def _state(state: str) -> str | None:
    return None if state == "any" else state
