"""Provider types by name: adding a vendor is one module and one line here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from herald.domain import Channel
from providers.base import Provider
from providers.sandbox import SandboxProvider, SandboxStore


@dataclass(slots=True)
class ProviderDeps:
    """Clients shared by every provider of a process (made once at start-up)."""

    sandbox_store: SandboxStore


def build_provider(name: str, spec: dict[str, Any], deps: ProviderDeps) -> Provider:
    kind = spec["type"]
    channel = Channel(spec["channel"])
    if kind == "sandbox":
        return SandboxProvider(name, channel, spec, store=deps.sandbox_store)
    raise ValueError(f"provider {name!r}: unknown type {kind!r}")


PROVIDER_TYPES = frozenset({"sandbox"})
