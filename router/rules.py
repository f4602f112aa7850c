"""The routing-rules document (DESIGN §6) parsed into typed, immutable objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from herald.domain import Channel
from herald.errors import HeraldError


class RulesError(HeraldError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    type: str
    channel: Channel
    cost: dict[str, float]
    max_per_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def cost_for(self, country: str | None) -> float:
        if country and country in self.cost:
            return self.cost[country]
        return self.cost.get("default", 0.0)


@dataclass(frozen=True, slots=True)
class TierEntry:
    provider: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    channel: Channel | None
    countries: frozenset[str] | None
    categories: frozenset[str] | None
    callers: frozenset[str] | None
    tiers: tuple[tuple[TierEntry, ...], ...]


@dataclass(frozen=True, slots=True)
class RoutingRules:
    providers: dict[str, ProviderSpec]
    rules: tuple[Rule, ...]
    version: int = 1


def _as_set(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def parse_rules(doc: dict[str, Any], *, version: int = 1) -> RoutingRules:
    """Parse a rules document; raise ``RulesError`` naming the path of the first problem."""
    if not isinstance(doc, dict):
        raise RulesError("$", "the document must be a mapping")
    providers: dict[str, ProviderSpec] = {}
    for name, spec in (doc.get("providers") or {}).items():
        path = f"providers.{name}"
        if not isinstance(spec, dict) or "type" not in spec or "channel" not in spec:
            raise RulesError(path, "needs 'type' and 'channel'")
        try:
            channel = Channel(spec["channel"])
        except ValueError:
            raise RulesError(f"{path}.channel", f"unknown channel {spec['channel']!r}") from None
        providers[name] = ProviderSpec(
            name=name,
            type=spec["type"],
            channel=channel,
            cost={k: float(v) for k, v in (spec.get("cost") or {"default": 0}).items()},
            max_per_s=spec.get("max_per_s"),
            raw=spec,
        )
    rules: list[Rule] = []
    for i, rule in enumerate(doc.get("rules") or []):
        path = f"rules[{i}]"
        match = rule.get("match") or {}
        tiers: list[tuple[TierEntry, ...]] = []
        for t, tier in enumerate(rule.get("tiers") or []):
            entries: list[TierEntry] = []
            for e, item in enumerate(tier):
                entry = (
                    TierEntry(item)
                    if isinstance(item, str)
                    else TierEntry(item["provider"], float(item.get("weight", 1)))
                )
                if entry.provider not in providers:
                    raise RulesError(
                        f"{path}.tiers[{t}][{e}]", f"unknown provider {entry.provider!r}"
                    )
                entries.append(entry)
            tiers.append(tuple(entries))
        rules.append(
            Rule(
                name=rule.get("name", f"rule-{i}"),
                channel=Channel(match["channel"]) if match.get("channel") else None,
                countries=_as_set(match.get("country")),
                categories=_as_set(match.get("category")),
                callers=_as_set(match.get("caller")),
                tiers=tuple(tiers),
            )
        )
    return RoutingRules(providers=providers, rules=tuple(rules), version=version)


def load_rules_file(path: Path) -> RoutingRules:
    with path.open() as fh:
        return parse_rules(yaml.safe_load(fh))
