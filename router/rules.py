"""The routing-rules document (DESIGN §6) parsed into typed, immutable objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
import yaml

from herald.domain import Channel
from herald.errors import HeraldError

if TYPE_CHECKING:
    from router.validation import ValidationIssue

Split = Literal["cheapest", "weighted"]
SPLITS: tuple[Split, ...] = ("cheapest", "weighted")


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
    #: How a tier shares traffic: the cheapest healthy provider, or in proportion to weight.
    split: Split = "cheapest"


@dataclass(frozen=True, slots=True)
class RoutingRules:
    providers: dict[str, ProviderSpec]
    rules: tuple[Rule, ...]
    version: int = 1
    #: Warnings found by ``router.validation.parse_and_validate`` (not part of equality).
    warnings: tuple[ValidationIssue, ...] = field(default=(), compare=False)


def _as_set(value: Any, path: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset([value])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(path, "must be a string or a list of strings")
    return frozenset(value)


def _channel(value: Any, path: str) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        choices = ", ".join(c.value for c in Channel)
        raise RulesError(path, f"unknown channel {value!r} (one of {choices})") from None


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(path, f"must be a number, not {value!r}")
    return float(value)


def _provider(name: str, spec: Any) -> ProviderSpec:
    path = f"providers.{name}"
    if not isinstance(spec, dict) or "type" not in spec or "channel" not in spec:
        raise RulesError(path, "needs 'type' and 'channel'")
    cost = spec.get("cost") or {"default": 0}
    if not isinstance(cost, dict):
        raise RulesError(f"{path}.cost", "must map countries (and 'default') to prices")
    return ProviderSpec(
        name=name,
        type=spec["type"],
        channel=_channel(spec["channel"], f"{path}.channel"),
        cost={k: _number(v, f"{path}.cost.{k}") for k, v in cost.items()},
        max_per_s=spec.get("max_per_s"),
        raw=spec,
    )


def _split(value: Any, path: str) -> Split:
    for split in SPLITS:
        if value == split:
            return split
    raise RulesError(path, f"must be one of {', '.join(SPLITS)}, not {value!r}")


def _tier_entry(item: Any, path: str, providers: dict[str, ProviderSpec]) -> TierEntry:
    if isinstance(item, str):
        entry = TierEntry(item)
    elif isinstance(item, dict) and isinstance(item.get("provider"), str):
        entry = TierEntry(item["provider"], _number(item.get("weight", 1), f"{path}.weight"))
    else:
        raise RulesError(path, "must be a provider name or {provider: NAME, weight: N}")
    if entry.provider not in providers:
        raise RulesError(path, f"unknown provider {entry.provider!r}")
    return entry


def _rule(i: int, rule: Any, providers: dict[str, ProviderSpec]) -> Rule:
    path = f"rules[{i}]"
    if not isinstance(rule, dict):
        raise RulesError(path, "must be a mapping with 'match' and 'tiers'")
    match = rule.get("match") or {}
    if not isinstance(match, dict):
        raise RulesError(f"{path}.match", "must be a mapping")
    tiers = rule.get("tiers") or []
    if not isinstance(tiers, list) or not all(isinstance(t, list) for t in tiers):
        raise RulesError(f"{path}.tiers", "must be a list of lists of providers")
    return Rule(
        name=str(rule.get("name", f"rule-{i}")),
        channel=_channel(match["channel"], f"{path}.match.channel")
        if match.get("channel")
        else None,
        countries=_as_set(match.get("country"), f"{path}.match.country"),
        categories=_as_set(match.get("category"), f"{path}.match.category"),
        callers=_as_set(match.get("caller"), f"{path}.match.caller"),
        tiers=tuple(
            tuple(
                _tier_entry(item, f"{path}.tiers[{t}][{e}]", providers)
                for e, item in enumerate(tier)
            )
            for t, tier in enumerate(tiers)
        ),
        split=_split(rule.get("split", "cheapest"), f"{path}.split"),
    )


def parse_rules(doc: Any, *, version: int = 1) -> RoutingRules:
    """Parse a rules document; raise ``RulesError`` naming the path of the first problem."""
    if not isinstance(doc, dict):
        raise RulesError("$", "the document must be a mapping")
    raw_providers = doc.get("providers") or {}
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_providers, dict):
        raise RulesError("providers", "must be a mapping of names to providers")
    if not isinstance(raw_rules, list):
        raise RulesError("rules", "must be a list")
    providers = {name: _provider(name, spec) for name, spec in raw_providers.items()}
    rules = tuple(_rule(i, rule, providers) for i, rule in enumerate(raw_rules))
    return RoutingRules(providers=providers, rules=rules, version=version)


def load_rules_file(path: Path, limits: DocumentLimits | None = None) -> RoutingRules:
    return parse_rules(load_document(path.read_bytes(), limits=limits))


# Reading a document: every parser of a routing document goes through here ------------


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """Bounds on a routing document, checked before anything is built from it. A real
    document is a few KiB, about 6 levels deep, a few hundred nodes."""

    max_bytes: int = 64 * 1024
    max_depth: int = 20
    max_nodes: int = 20_000
    #: Parse and validation together; the parser also checks it as it goes.
    timeout_s: float = 5.0


class DocumentRefused(RulesError):
    """The document is too big, too deep, too slow, or uses YAML aliases (a 422)."""

    def __init__(self, message: str) -> None:
        super().__init__("$", message)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing anchors and aliases (the billion-laughs shape: each
    alias expands to a copy) and capping depth and node count while composing, before
    any object is constructed. Depth is capped before the composer recurses, so a deep
    document is a refusal, not a ``RecursionError``."""

    def __init__(self, stream: str, limits: DocumentLimits, deadline: float) -> None:
        super().__init__(stream)
        self.limits = limits
        self.deadline = deadline
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise DocumentRefused(
                f"line {line}: YAML anchors and aliases (&name, *name, <<) are not allowed "
                "in routing rules; write each value out"
            )
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise DocumentRefused(f"more than {self.limits.max_nodes} values")
        if self.nodes % 512 == 0 and time.monotonic() > self.deadline:
            raise DocumentRefused(f"reading it took longer than {self.limits.timeout_s:g} s")
        if self.depth >= self.limits.max_depth:
            raise DocumentRefused(f"line {line}: nested deeper than {self.limits.max_depth}")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _text(raw: bytes | str, limits: DocumentLimits) -> str:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "replace"))
    if size > limits.max_bytes:
        raise DocumentRefused(f"the document is {size} bytes, over {limits.max_bytes}")
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentRefused("the document is not UTF-8") from None


def load_yaml(raw: bytes | str, limits: DocumentLimits | None = None) -> Any:
    """One YAML document within ``limits``; ``DocumentRefused`` or ``yaml.YAMLError``."""
    limits = limits or DocumentLimits()
    loader = _BoundedLoader(_text(raw, limits), limits, time.monotonic() + limits.timeout_s)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_json(raw: bytes | str, limits: DocumentLimits | None = None) -> Any:
    """A JSON document within ``limits``; ``DocumentRefused`` or ``orjson.JSONDecodeError``."""
    limits = limits or DocumentLimits()
    document = orjson.loads(_text(raw, limits))
    check_shape(document, limits)
    return document


def load_document(
    raw: bytes | str, *, as_json: bool = False, limits: DocumentLimits | None = None
) -> Any:
    return load_json(raw, limits) if as_json else load_yaml(raw, limits)


def check_shape(document: Any, limits: DocumentLimits | None = None) -> None:
    """Depth and size of an already-parsed document (JSON, a draft in a request, a
    stored version), walked without recursion."""
    limits = limits or DocumentLimits()
    stack: list[tuple[Any, int]] = [(document, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise DocumentRefused(f"more than {limits.max_nodes} values")
        if depth > limits.max_depth:
            raise DocumentRefused(f"nested deeper than {limits.max_depth}")
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            stack.extend((child, depth + 1) for child in children)
