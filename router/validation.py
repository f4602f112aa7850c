"""Validate a routing-rules document (DESIGN §6) and name the path of every problem.

Two passes over the raw document: the JSON schema (``config/routing.schema.json``, every
error, each translated to a path like ``rules[0].tiers[0][1]``), then the checks a schema
cannot express: providers known and of the rule's channel, rules that can never match,
duplicate names, credentials and endpoints the operator allows (``VendorPolicy``),
credentials set in the environment, and unused providers or channels.
The semantic checks read the raw document defensively: whatever has the wrong shape was
already reported by the schema and is skipped here, so nothing is reported twice and
nothing raises. Credential values are never echoed: only their path and variable name,
and "is not set" only for names the operator allows (elsewhere the answer is the same
whether the variable exists or not). At most ``MAX_ISSUES`` issues are reported.

Every caller of the HTTP API and the console validates off the event loop
(``run_check``), with the time limit of ``DocumentLimits``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import phonenumbers
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from herald.domain import Category, Channel
from providers.credentials import VendorPolicy, reference_variable
from router.rules import (
    DocumentLimits,
    DocumentRefused,
    RoutingRules,
    RulesError,
    check_shape,
    parse_rules,
)

if TYPE_CHECKING:
    from config.settings import Settings

Severity = Literal["error", "warning"]
PathPart = str | int

KNOWN_PROVIDER_TYPES: frozenset[str] = frozenset(
    {"sandbox", "twilio", "sns", "ses", "smtp", "fcm", "msg91"}
)
CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)
CATEGORIES: frozenset[str] = frozenset(c.value for c in Category)
CREDENTIALS_MESSAGE = "credentials must be env: references, never the secret itself"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: Issues reported at most; the rest are counted in one last issue.
MAX_ISSUES = 50
#: Past these counts only the schema runs (it reports the excess): the cross-rule checks
#: grow with the square of the number of rules.
MAX_RULES = 500
MAX_PROVIDERS = 200
T = TypeVar("T")
#: Where documents are parsed and validated: off the event loop, two at a time, so a
#: flood of edits queues here instead of taking every thread of the process.
_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rules-check")


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}: {prefix}{self.message}"


class RulesInvalid(RulesError):
    """The document has errors; ``issues`` holds every one of them (and the warnings)."""

    def __init__(self, issues: Sequence[ValidationIssue]) -> None:
        self.issues = tuple(issues)
        errors = self.errors
        first = errors[0] if errors else ValidationIssue("$", "invalid")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first.path, first.message + more)

    @property
    def errors(self) -> tuple[ValidationIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")


@dataclass(frozen=True, slots=True)
class RulesPolicy:
    """What this deployment accepts in a routing document: the operator's credentials
    and endpoints, and the parser's bounds."""

    vendor: VendorPolicy = dataclass_field(default_factory=VendorPolicy)
    limits: DocumentLimits = dataclass_field(default_factory=DocumentLimits)

    @classmethod
    def from_settings(cls, settings: Settings) -> RulesPolicy:
        return cls(
            VendorPolicy.from_settings(settings),
            DocumentLimits(
                max_bytes=settings.max_rules_bytes, timeout_s=settings.rules_validation_timeout_s
            ),
        )


async def run_check(check: Callable[[], T], limits: DocumentLimits) -> T:
    """Run a parse or validation in a worker thread, so the event loop (``/healthz``,
    every send) never waits on it; past ``limits.timeout_s`` it is ``DocumentRefused``
    (the parser also stops itself at that deadline)."""
    future = asyncio.get_running_loop().run_in_executor(_CHECKS, check)
    try:
        return await asyncio.wait_for(future, limits.timeout_s)
    except TimeoutError:
        raise DocumentRefused(
            f"checking the document took longer than {limits.timeout_s:g} s"
        ) from None


# Public API ---------------------------------------------------------------------------


def validate_document(
    doc: Any,
    *,
    env: Mapping[str, str] | None = None,
    provider_types: frozenset[str] | set[str] = KNOWN_PROVIDER_TYPES,
    check_env: bool = True,
    policy: RulesPolicy | None = None,
) -> list[ValidationIssue]:
    """Every problem of a rules document, schema errors first; an empty list means clean.

    ``env`` is where credential ``env:VAR`` references must resolve (default
    ``os.environ``); ``check_env=False`` skips that check (CI without the secrets).
    ``policy`` is the operator's (default: the strictest, no endpoint allowed).
    """
    policy = policy or RulesPolicy()
    try:
        check_shape(doc, policy.limits)
    except DocumentRefused as exc:
        return [ValidationIssue(exc.path, exc.message)]
    issues = schema_issues(doc)
    if not isinstance(doc, dict):
        return cap_issues(issues)
    providers = _mapping(doc.get("providers"))
    rules = _list(doc.get("rules"))
    if len(providers) > MAX_PROVIDERS or len(rules) > MAX_RULES:
        return cap_issues(sorted(issues, key=_order))
    issues += provider_type_issues(providers, provider_types)
    issues += vendor_policy_issues(providers, policy.vendor)
    issues += country_issues(providers, rules)
    issues += tier_issues(providers, rules)
    issues += never_matching_issues(rules)
    issues += duplicate_name_issues(rules)
    if check_env:
        environ = os.environ if env is None else env
        issues += credential_env_issues(providers, environ, policy.vendor)
    issues += coverage_warnings(providers, rules)
    return cap_issues(sorted(issues, key=_order))


def cap_issues(issues: list[ValidationIssue], limit: int = MAX_ISSUES) -> list[ValidationIssue]:
    """The first ``limit`` issues, and one more that counts the rest."""
    if len(issues) <= limit:
        return issues
    rest = issues[limit:]
    errors = sum(1 for i in rest if i.severity == "error")
    summary = ValidationIssue(
        "$",
        f"and {len(rest)} more issues ({errors} errors) not shown; fix these first",
        "error" if errors else "warning",
    )
    return [*issues[:limit], summary]


def parse_and_validate(
    doc: Any,
    *,
    version: int = 1,
    env: Mapping[str, str] | None = None,
    provider_types: frozenset[str] | set[str] = KNOWN_PROVIDER_TYPES,
    check_env: bool = True,
    policy: RulesPolicy | None = None,
) -> RoutingRules:
    """Validate, then parse; raise ``RulesInvalid`` on any error, attach the warnings."""
    issues = validate_document(
        doc, env=env, provider_types=provider_types, check_env=check_env, policy=policy
    )
    if any(i.severity == "error" for i in issues):
        raise RulesInvalid(issues)
    parsed = parse_rules(doc, version=version)
    return RoutingRules(
        providers=parsed.providers,
        rules=parsed.rules,
        version=parsed.version,
        warnings=tuple(issues),
    )


def format_path(parts: Sequence[PathPart]) -> str:
    """``["rules", 0, "tiers", 0, 1]`` → ``rules[0].tiers[0][1]``; the root is ``$``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "$"


# The schema ---------------------------------------------------------------------------


@cache
def routing_schema() -> dict[str, Any]:
    text = resources.files("config").joinpath("routing.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Any:
    return Draft202012Validator(routing_schema())


def schema_issues(doc: Any) -> list[ValidationIssue]:
    leaves = (leaf for error in _validator().iter_errors(doc) for leaf in _leaves(error))
    return list({issue: None for leaf in leaves for issue in _translate(leaf)})


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    """For ``anyOf``: the errors of the alternatives of the instance's own type, if any."""
    if error.validator in ("anyOf", "oneOf"):
        relevant = [e for e in error.context or () if e.relative_path or e.validator != "type"]
        if relevant:
            for sub in relevant:
                yield from _leaves(sub)
            return
    yield error


def _translate(error: ValidationError) -> list[ValidationIssue]:
    parts: list[PathPart] = list(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        parts.append(str(error.instance))
    if _under_credentials(parts) and error.validator in ("type", "pattern"):
        return [ValidationIssue(format_path(parts), CREDENTIALS_MESSAGE)]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [ValidationIssue(format_path([*parts, k]), "is required") for k in missing]
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        allowed = f"unknown key (allowed: {', '.join(known)})"
        extra = [k for k in error.instance if k not in known]
        return [ValidationIssue(format_path([*parts, str(k)]), allowed) for k in extra]
    return [ValidationIssue(format_path(parts), _message(error))]


def _message(error: ValidationError) -> str:
    value, expected, about = error.instance, error.validator_value, error.schema
    match error.validator:
        case "type":
            return f"must be {_json_type(expected)}, not {_kind(value)}"
        case "enum":
            return f"{_show(value)} is not one of: {', '.join(map(str, expected))}"
        case "minimum":
            return f"must be at least {expected}, not {_show(value)}"
        case "exclusiveMinimum":
            return f"must be greater than {expected}, not {_show(value)}"
        case "minItems" | "minLength":
            return "must not be empty"
        case "uniqueItems":
            return "has duplicate items"
        case "pattern" if "description" in about:
            return f"{_show(value)} is not {about['description']}"
        case "anyOf" | "oneOf" if "description" in about:
            return f"must be {about['description']}, not {_kind(value)}"
        case "maxItems":
            return f"has {len(value)} items, more than {expected}"
        case "maxProperties":
            return f"has {len(value)} entries, more than {expected}"
        case _:  # jsonschema's own words quote the value: never a whole document
            text = str(error.message)
            return text if len(text) <= 200 else text[:197] + "..."


def _under_credentials(parts: Sequence[PathPart]) -> bool:
    return len(parts) == 4 and parts[0] == "providers" and parts[2] == "credentials"


_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "null": "null",
}


def _json_type(expected: str | list[str]) -> str:
    names = [expected] if isinstance(expected, str) else expected
    return " or ".join(_JSON_TYPES.get(n, n) for n in names)


def _kind(value: Any) -> str:
    match value:
        case bool():
            return "true or false"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "a mapping"
        case None:
            return "empty (null)"
        case _:
            return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _order(issue: ValidationIssue) -> tuple[bool, list[tuple[int, int | str]]]:
    """Errors first, then warnings; each by path (indexes numerically), else as found."""
    parts = (p for p in re.split(r"[.\[\]]+", issue.path) if p)
    return issue.severity != "error", [(0, int(p)) if p.isdigit() else (1, p) for p in parts]


# Semantic checks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Match:
    """A well-formed ``match``; ``None`` on a dimension means any value."""

    channel: str | None
    countries: frozenset[str] | None
    categories: frozenset[str] | None
    callers: frozenset[str] | None

    def covers(self, other: _Match) -> bool:
        """Whether every message ``other`` matches is matched by ``self`` too."""
        pairs = (
            (_one(self.channel), _one(other.channel)),
            (self.countries, other.countries),
            (self.categories, other.categories),
            (self.callers, other.callers),
        )
        return all(mine is None or (other is not None and other <= mine) for mine, other in pairs)

    def channels(self) -> tuple[str, ...]:
        """The channels this match can see: only SMS has a country."""
        if self.channel is not None:
            return (self.channel,)
        return ("sms",) if self.countries is not None else CHANNELS


def _one(value: str | None) -> frozenset[str] | None:
    return None if value is None else frozenset([value])


class _Malformed(Exception):
    """A part of ``match`` with the wrong shape (the schema reports it)."""


def _values(value: Any, allowed: frozenset[str] | None = None) -> frozenset[str] | None:
    """A match dimension as a set; ``None`` means any value (absent, or every value)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise _Malformed
    found = frozenset(items)
    if allowed is not None and not found <= allowed:
        raise _Malformed
    return None if found == allowed else found


def _match_of(rule: Any) -> _Match | None:
    """The rule's match, or ``None`` when it is missing or malformed (a schema error)."""
    match = rule.get("match") if isinstance(rule, dict) else None
    if not isinstance(match, dict):
        return None
    channel = match.get("channel")
    if channel is not None and channel not in CHANNELS:
        return None
    try:
        return _Match(
            channel,
            _values(match.get("country")),
            _values(match.get("category"), CATEGORIES),
            _values(match.get("caller")),
        )
    except _Malformed:
        return None


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _channel_of(spec: Any) -> str | None:
    channel = _mapping(spec).get("channel")
    return channel if channel in CHANNELS else None


def _entries(rule: Any, i: int) -> Iterator[tuple[str, str]]:
    """``(path, provider name)`` of every well-formed tier entry of rule ``i``."""
    for t, tier in enumerate(_list(_mapping(rule).get("tiers"))):
        for e, item in enumerate(_list(tier)):
            name = item.get("provider") if isinstance(item, dict) else item
            if isinstance(name, str) and name:
                yield f"rules[{i}].tiers[{t}][{e}]", name


def _name(rule: Any, i: int) -> str:
    name = _mapping(rule).get("name")
    return repr(name) if isinstance(name, str) else f"rules[{i}]"


def provider_type_issues(
    providers: Mapping[Any, Any], provider_types: frozenset[str] | set[str]
) -> list[ValidationIssue]:
    known = ", ".join(sorted(provider_types))
    return [
        ValidationIssue(
            format_path(["providers", str(name), "type"]),
            f"unknown provider type {kind!r} (known: {known})",
        )
        for name, spec in providers.items()
        if isinstance(kind := _mapping(spec).get("type"), str)
        and kind
        and kind not in provider_types
    ]


def country_issues(providers: Mapping[Any, Any], rules: Sequence[Any]) -> list[ValidationIssue]:
    """Well-formed codes that no phone number belongs to (``UK`` for ``GB``, say)."""
    places: list[tuple[list[PathPart], Any]] = [
        (["providers", str(name), "cost", key], key)
        for name, spec in providers.items()
        for key in _mapping(_mapping(spec).get("cost"))
    ]
    for i, rule in enumerate(rules):
        country = _mapping(_mapping(rule).get("match")).get("country")
        if isinstance(country, str):
            places.append((["rules", i, "match", "country"], country))
        for n, code in enumerate(_list(country)):
            places.append((["rules", i, "match", "country", n], code))
    return [
        ValidationIssue(
            format_path(parts),
            f"unknown country {code!r}: no phone number belongs to it (ISO 3166-1 alpha-2)",
        )
        for parts, code in places
        if isinstance(code, str)
        and re.fullmatch(r"[A-Z]{2}", code)
        and code not in phonenumbers.SUPPORTED_REGIONS
    ]


def tier_issues(providers: Mapping[Any, Any], rules: Sequence[Any]) -> list[ValidationIssue]:
    """Unknown providers, providers of another channel, and repeated providers."""
    issues: list[ValidationIssue] = []
    for i, rule in enumerate(rules):
        issues += _rule_tier_issues(providers, rule, i)
    return issues


def _rule_tier_issues(providers: Mapping[Any, Any], rule: Any, i: int) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    match = _match_of(rule)
    seen: dict[str, str] = {}
    by_channel: dict[str, list[str]] = defaultdict(list)
    for path, name in _entries(rule, i):
        if name in seen:
            issues.append(_warn(path, f"provider {name!r} is already in this rule at {seen[name]}"))
            continue
        seen[name] = path
        if name not in providers:
            issues.append(ValidationIssue(path, f"unknown provider {name!r}"))
            continue
        channel = _channel_of(providers[name])
        if channel is None or match is None:
            continue
        by_channel[channel].append(name)
        if match.channel is not None and channel != match.channel:
            issues.append(
                ValidationIssue(
                    path,
                    f"provider {name!r} sends {channel}, but rule {_name(rule, i)} "
                    f"matches {match.channel}",
                )
            )
    if match is not None and match.channel is None:
        issues += _channelless_rule_issues(match, by_channel, rule, i)
    return issues


def _channelless_rule_issues(
    match: _Match, by_channel: Mapping[str, list[str]], rule: Any, i: int
) -> list[ValidationIssue]:
    if len(by_channel) > 1:
        mix = "; ".join(f"{c}: {', '.join(names)}" for c, names in sorted(by_channel.items()))
        return [
            ValidationIssue(
                f"rules[{i}].tiers",
                f"rule {_name(rule, i)} has no match.channel and mixes providers of "
                f"several channels ({mix})",
            )
        ]
    if len(by_channel) == 1 and len(match.channels()) > 1:
        (channel,) = by_channel
        others = " and ".join(c for c in match.channels() if c != channel)
        return [
            _warn(
                f"rules[{i}].match",
                f"rule {_name(rule, i)} has no channel, so it also matches {others} "
                f"messages, but its providers only send {channel} (add channel: {channel})",
            )
        ]
    return []


def never_matching_issues(rules: Sequence[Any]) -> list[ValidationIssue]:
    """Rules shadowed by an earlier, at-least-as-broad rule, or with a country off SMS."""
    issues: list[ValidationIssue] = []
    earlier: list[tuple[int, _Match]] = []
    for i, rule in enumerate(rules):
        match = _match_of(rule)
        if match is None:
            continue
        if match.channel not in (None, "sms") and match.countries is not None:
            issues.append(
                ValidationIssue(
                    f"rules[{i}].match.country",
                    f"can never match: only sms messages have a country, and rule "
                    f"{_name(rule, i)} matches {match.channel}",
                )
            )
        shadow = next(((j, m) for j, m in earlier if m.covers(match)), None)
        if shadow is not None:
            j = shadow[0]
            issues.append(
                ValidationIssue(
                    f"rules[{i}]",
                    f"rule {_name(rule, i)} can never match: the earlier rule "
                    f"{_name(rules[j], j)} (rules[{j}]) matches every message it would",
                )
            )
        earlier.append((i, match))
    return issues


def duplicate_name_issues(rules: Sequence[Any]) -> list[ValidationIssue]:
    first: dict[str, int] = {}
    issues: list[ValidationIssue] = []
    for i, rule in enumerate(rules):
        name = _mapping(rule).get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            issues.append(
                ValidationIssue(
                    f"rules[{i}].name",
                    f"duplicate rule name {name!r} (also rules[{first[name]}])",
                )
            )
        else:
            first[name] = i
    return issues


def vendor_policy_issues(
    providers: Mapping[Any, Any], policy: VendorPolicy
) -> list[ValidationIssue]:
    """Credentials outside the operator's prefixes, endpoints outside their allow-list."""
    issues: list[ValidationIssue] = []
    for name, spec in providers.items():
        if not isinstance(spec, dict):
            continue
        if not isinstance(spec.get("endpoint", ""), str):  # the schema's to report
            spec = {k: v for k, v in spec.items() if k != "endpoint"}
        issues += [
            ValidationIssue(format_path(["providers", str(name), *where.split(".", 1)]), message)
            for where, message in policy.spec_issues(str(name), spec)
        ]
    return issues


def credential_env_issues(
    providers: Mapping[Any, Any], env: Mapping[str, str], policy: VendorPolicy | None = None
) -> list[ValidationIssue]:
    """``env:VAR`` references whose variable is unset or empty (the value never shown).

    Only names the operator allows are looked up: any other reference was refused by
    ``vendor_policy_issues`` with the same words whether or not it exists.
    """
    policy = policy or VendorPolicy()
    issues: list[ValidationIssue] = []
    for name, spec in providers.items():
        for field, ref in _mapping(_mapping(spec).get("credentials")).items():
            variable = reference_variable(ref)
            if variable is None or policy.credential_refusal(variable):
                continue
            if not env.get(variable):
                issues.append(
                    ValidationIssue(
                        format_path(["providers", str(name), "credentials", str(field)]),
                        f"environment variable {variable} is not set (or is empty)",
                    )
                )
    return issues


def coverage_warnings(providers: Mapping[Any, Any], rules: Sequence[Any]) -> list[ValidationIssue]:
    """Channels with providers but no rule, and providers no rule uses."""
    used = {name for i, rule in enumerate(rules) for _, name in _entries(rule, i)}
    covered: set[str] = set()
    for rule in rules:
        match = _match_of(rule)
        # A malformed match was reported already; count it as covering everything.
        covered.update(CHANNELS if match is None else match.channels())
    by_channel: dict[str, list[str]] = defaultdict(list)
    for name, spec in providers.items():
        if (channel := _channel_of(spec)) is not None:
            by_channel[channel].append(str(name))
    warnings = [
        _warn(
            "rules",
            f"no rule matches {channel} messages, so its providers "
            f"({', '.join(names)}) are never used",
        )
        for channel, names in by_channel.items()
        if channel not in covered
    ]
    warnings += [
        _warn(format_path(["providers", str(name)]), "is not used by any rule")
        for name in providers
        if name not in used
    ]
    return warnings


def _warn(path: str, message: str) -> ValidationIssue:
    return ValidationIssue(path, message, "warning")
