"""Provider types by name: adding a vendor is one module and one line here."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from herald.domain import Channel
from herald.logs import get_logger
from providers import fcm, msg91, ses, smtp, sns, twilio
from providers.base import Provider
from providers.credentials import VendorPolicy
from providers.sandbox import SandboxProvider, SandboxStore
from router.rules import RoutingRules


@dataclass(slots=True)
class ProviderDeps:
    """Clients shared by every provider of a process (made once at start-up)."""

    sandbox_store: SandboxStore
    redis: Redis
    #: Where blocking SDK calls run, bounded so a slow vendor cannot eat every thread.
    blocking: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=16, thread_name_prefix="vendor")
    )
    #: The operator's credentials and endpoints; unset, the strictest (no endpoint listed).
    policy: VendorPolicy = field(default_factory=VendorPolicy)


log = get_logger(__name__)

Factory = Callable[[str, Channel, dict[str, Any], ProviderDeps], Provider]


def _sandbox(name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps) -> Provider:
    return SandboxProvider(name, channel, spec, store=deps.sandbox_store)


#: Provider type → factory. A new vendor is one module and one line here.
REGISTRY: dict[str, Factory] = {
    "sandbox": _sandbox,
    "sns": sns.factory,
    "ses": ses.factory,
    "twilio": twilio.factory,
    "msg91": msg91.factory,
    "smtp": smtp.factory,
    "fcm": fcm.factory,
}


def build_provider(name: str, spec: dict[str, Any], deps: ProviderDeps) -> Provider:
    """A provider client, after the operator's policy approved its credentials and
    endpoint: a document saved before the policy existed, or the routing file, gets no
    client for what the policy refuses (``CredentialRefused``, ``EndpointRefused``)."""
    kind = spec["type"]
    factory = REGISTRY.get(kind)
    if factory is None:
        raise ValueError(f"provider {name!r}: unknown type {kind!r}")
    deps.policy.check(name, spec)
    return factory(name, Channel(spec["channel"]), spec, deps)


class ProviderSet(Mapping[str, Provider]):
    """The providers a worker can send through, kept in step with the routing rules.

    On a rules change only the providers whose spec changed are rebuilt; removed ones
    are closed. Clients are made once per provider, never per message.
    """

    def __init__(self, deps: ProviderDeps) -> None:
        self.deps = deps
        self._providers: dict[str, Provider] = {}
        self._specs: dict[str, dict[str, Any]] = {}

    def __getitem__(self, name: str) -> Provider:
        return self._providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    async def sync(self, rules: RoutingRules) -> None:
        wanted = {name: spec.raw for name, spec in rules.providers.items()}
        for name in list(self._providers):
            if name not in wanted or wanted[name] != self._specs[name]:
                old = self._providers.pop(name)
                del self._specs[name]
                await old.close()
        for name, spec in wanted.items():
            if name not in self._providers:
                try:
                    self._providers[name] = build_provider(name, spec, self.deps)
                except Exception as exc:  # noqa: BLE001 - one bad provider must not stop the rest
                    log.error("provider_unusable", provider=name, error=str(exc))
                    continue
                self._specs[name] = spec

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()
        self._specs.clear()
        self.deps.blocking.shutdown(wait=False, cancel_futures=True)
