"""Validation of the routing-rules document (DESIGN §6): every problem, each with its path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from config.settings import DEFAULT_ROUTING_FILE
from herald.cli import app
from herald.domain import Category, Channel
from router.rules import RulesError, parse_rules
from router.validation import (
    CREDENTIALS_MESSAGE,
    KNOWN_PROVIDER_TYPES,
    RulesInvalid,
    ValidationIssue,
    format_path,
    parse_and_validate,
    routing_schema,
    validate_document,
)

# The example document of DESIGN §6, with its credentials under the vendor prefix.
DESIGN_EXAMPLE = """
providers:
  msg91-in:  {type: msg91,   channel: sms, cost: {IN: 0.0020, default: 0.05}, max_per_s: 50,
              credentials: {auth_key: env:HERALD_VENDOR_MSG91_AUTH_KEY}}
  twilio:    {type: twilio,  channel: sms, cost: {default: 0.0079, IN: 0.0450},
              credentials: {account_sid: env:HERALD_VENDOR_TWILIO_ACCOUNT_SID,
                            auth_token: env:HERALD_VENDOR_TWILIO_AUTH_TOKEN,
                            from: env:HERALD_VENDOR_TWILIO_FROM}}
  sns:       {type: sns,     channel: sms, cost: {default: 0.0065}}
  ses:       {type: ses,     channel: email, cost: {default: 0.0001}}
  fcm:       {type: fcm,     channel: push, cost: {default: 0}}
rules:
  - name: otp-india
    match: {channel: sms, country: [IN], category: [otp]}
    tiers: [[msg91-in, twilio], [sns]]       # cheapest healthy in a tier first
  - name: sms-default
    match: {channel: sms}
    tiers: [[twilio, {provider: sns, weight: 3}]]
  - name: email-default
    match: {channel: email}
    tiers: [[ses]]
"""
DESIGN_ENV = {
    "HERALD_VENDOR_MSG91_AUTH_KEY": "msg91-secret-value",
    "HERALD_VENDOR_TWILIO_ACCOUNT_SID": "AC-secret-value",
    "HERALD_VENDOR_TWILIO_AUTH_TOKEN": "twilio-token-secret-value",
    "HERALD_VENDOR_TWILIO_FROM": "+15005550006",
}


def base() -> dict[str, Any]:
    """A small document that validates with no issue at all; tests break one thing."""
    return {
        "providers": {
            "sms-a": {"type": "sandbox", "channel": "sms", "cost": {"IN": 0.01, "default": 0.02}},
            "sms-b": {"type": "twilio", "channel": "sms", "cost": {"default": 0.03}},
            "mail": {"type": "ses", "channel": "email"},
        },
        "rules": [
            {"name": "sms", "match": {"channel": "sms"}, "tiers": [["sms-a", "sms-b"]]},
            {"name": "email", "match": {"channel": "email"}, "tiers": [["mail"]]},
        ],
    }


def issues(doc: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    kwargs.setdefault("env", {})
    return [(i.path, i.message, i.severity) for i in validate_document(doc, **kwargs)]


def errors(doc: Any, **kwargs: Any) -> list[tuple[str, str]]:
    return [(path, msg) for path, msg, sev in issues(doc, **kwargs) if sev == "error"]


def warnings(doc: Any, **kwargs: Any) -> list[tuple[str, str]]:
    return [(path, msg) for path, msg, sev in issues(doc, **kwargs) if sev == "warning"]


def only_error(doc: Any, **kwargs: Any) -> tuple[str, str]:
    found = errors(doc, **kwargs)
    assert len(found) == 1, found
    return found[0]


def test_the_base_document_is_clean() -> None:
    assert issues(base()) == []


# The schema ---------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12_and_agrees_with_the_domain() -> None:
    schema = routing_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$defs"]["channel"]["enum"] == [c.value for c in Channel]
    assert schema["$defs"]["category"]["enum"] == [c.value for c in Category]


def test_missing_type() -> None:
    doc = base()
    del doc["providers"]["sms-b"]["type"]
    assert only_error(doc) == ("providers.sms-b.type", "is required")


def test_missing_type_and_channel_are_two_errors() -> None:
    doc = base()
    doc["providers"]["sms-b"] = {"cost": {"default": 1}}
    assert errors(doc) == [
        ("providers.sms-b.channel", "is required"),
        ("providers.sms-b.type", "is required"),
    ]


def test_bad_channel() -> None:
    doc = base()
    doc["providers"]["mail"]["channel"] = "fax"
    path, message = only_error(doc)
    assert path == "providers.mail.channel"
    assert message == "'fax' is not one of: sms, email, push"


def test_negative_cost() -> None:
    doc = base()
    doc["providers"]["sms-a"]["cost"]["IN"] = -0.01
    assert only_error(doc) == ("providers.sms-a.cost.IN", "must be at least 0, not -0.01")


def test_cost_without_default() -> None:
    doc = base()
    doc["providers"]["sms-a"]["cost"] = {"IN": 0.01}
    assert only_error(doc) == ("providers.sms-a.cost.default", "is required")


def test_cost_that_is_not_a_number() -> None:
    doc = base()
    doc["providers"]["sms-a"]["cost"]["default"] = "cheap"
    assert only_error(doc) == ("providers.sms-a.cost.default", "must be a number, not a string")


@pytest.mark.parametrize(
    ("where", "path"),
    [
        (("providers", "sms-a"), "providers.sms-a.colour"),
        (("rules", 0), "rules[0].colour"),
        (("rules", 0, "match"), "rules[0].match.colour"),
        (("rules", 0, "tiers", 0, 1), "rules[0].tiers[0][1].colour"),
        ((), "colour"),
    ],
    ids=["provider", "rule", "match", "tier-entry", "document"],
)
def test_unknown_key(where: tuple[Any, ...], path: str) -> None:
    doc = base()
    doc["rules"][0]["tiers"][0][1] = {"provider": "sms-b"}
    target: Any = doc
    for step in where:
        target = target[step]
    target["colour"] = "blue"
    found_path, message = only_error(doc)
    assert found_path == path
    assert message.startswith("unknown key (allowed: ")


def test_literal_credential_is_refused_without_echoing_the_secret() -> None:
    doc = base()
    doc["providers"]["sms-b"]["credentials"] = {
        "account_sid": "env:HERALD_VENDOR_TWILIO_ACCOUNT_SID",
        "auth_token": "sk_live_do_not_print_me",
    }
    found = issues(doc, env={"HERALD_VENDOR_TWILIO_ACCOUNT_SID": "AC123"})
    assert found == [("providers.sms-b.credentials.auth_token", CREDENTIALS_MESSAGE, "error")]
    assert "sk_live_do_not_print_me" not in repr(found)


@pytest.mark.parametrize("value", [12345, "env:", "env:HAS-DASH", "ENV:UPPER", ["env:A"]])
def test_credential_that_is_not_an_env_reference(value: Any) -> None:
    doc = base()
    doc["providers"]["sms-b"]["credentials"] = {"auth_token": value}
    assert only_error(doc) == ("providers.sms-b.credentials.auth_token", CREDENTIALS_MESSAGE)


def test_empty_tier() -> None:
    doc = base()
    doc["rules"][0]["tiers"].append([])
    assert only_error(doc) == ("rules[0].tiers[1]", "must not be empty")


def test_no_tiers() -> None:
    doc = base()
    doc["rules"][1]["tiers"] = []
    assert ("rules[1].tiers", "must not be empty") in errors(doc)


@pytest.mark.parametrize("weight", [0, -1])
def test_weight_must_be_positive(weight: int) -> None:
    doc = base()
    doc["rules"][0]["tiers"][0][1] = {"provider": "sms-b", "weight": weight}
    assert only_error(doc) == (
        "rules[0].tiers[0][1].weight",
        f"must be greater than 0, not {weight}",
    )


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (lambda d: d["rules"][0].pop("name"), "rules[0].name", "is required"),
        (lambda d: d["rules"][0].pop("match"), "rules[0].match", "is required"),
        (lambda d: d.pop("rules"), "rules", "is required"),
        (
            lambda d: d["providers"]["sms-a"].update(max_per_s=0),
            "providers.sms-a.max_per_s",
            "must be greater than 0, not 0",
        ),
        (
            lambda d: d["providers"]["sms-a"].update(lookup="no"),
            "providers.sms-a.lookup",
            "must be true or false, not a string",
        ),
        (
            lambda d: d["providers"]["sms-a"].update(endpoint=""),
            "providers.sms-a.endpoint",
            "must not be empty",
        ),
        (
            lambda d: d["providers"]["sms-a"]["cost"].update(india=1),
            "providers.sms-a.cost.india",
            "'india' is not an ISO 3166-1 alpha-2 country code (such as IN) or 'default'",
        ),
        (
            lambda d: d["rules"][0]["match"].update(country=["IN", "in"]),
            "rules[0].match.country[1]",
            "'in' is not an ISO 3166-1 alpha-2 country code (such as IN or GB)",
        ),
        (
            lambda d: d["rules"][0]["match"].update(category="promo"),
            "rules[0].match.category",
            "'promo' is not one of: otp, transactional, marketing",
        ),
        (
            lambda d: d["rules"][0]["match"].update(caller=[]),
            "rules[0].match.caller",
            "must not be empty",
        ),
        (
            lambda d: d["rules"][0].update(split="random"),
            "rules[0].split",
            "'random' is not one of: cheapest, weighted",
        ),
        (
            lambda d: d["rules"][0]["tiers"][0].append(42),
            "rules[0].tiers[0][2]",
            "must be a provider name or {provider: NAME, weight: N}, not a number",
        ),
        (
            lambda d: d["rules"][0]["tiers"][0].append({"weight": 2}),
            "rules[0].tiers[0][2].provider",
            "is required",
        ),
        (
            lambda d: d["rules"][0].update(tiers=["sms-a"]),
            "rules[0].tiers[0]",
            "must be a list, not a string",
        ),
    ],
    ids=[
        "rule-name",
        "rule-match",
        "no-rules",
        "max-per-s",
        "lookup",
        "endpoint",
        "cost-country",
        "match-country",
        "category",
        "caller",
        "split",
        "tier-entry-type",
        "tier-entry-no-provider",
        "tier-not-a-list",
    ],
)
def test_other_schema_errors_name_their_path(edit: Any, path: str, message: str) -> None:
    doc = base()
    edit(doc)
    assert (path, message) in errors(doc)


def test_a_document_that_is_not_a_mapping() -> None:
    assert errors(["providers"]) == [("$", "must be a mapping, not a list")]
    assert errors(None) == [("$", "must be a mapping, not empty (null)")]


def test_format_path_quotes_keys_that_are_not_plain() -> None:
    assert format_path(["rules", 0, "tiers", 0, 1]) == "rules[0].tiers[0][1]"
    assert format_path(["providers", "msg91-in", "cost", "IN"]) == "providers.msg91-in.cost.IN"
    assert format_path(["providers", "a.b c"]) == 'providers["a.b c"]'
    assert format_path([]) == "$"


# Semantic checks ----------------------------------------------------------------------


def test_unknown_provider_in_a_tier() -> None:
    doc = base()
    doc["rules"][0]["tiers"].append(["sms-a", {"provider": "nexmo"}])
    assert only_error(doc) == ("rules[0].tiers[1][1]", "unknown provider 'nexmo'")


def test_unknown_provider_type() -> None:
    doc = base()
    doc["providers"]["sms-b"]["type"] = "carrier-pigeon"
    path, message = only_error(doc)
    assert path == "providers.sms-b.type"
    assert message.startswith("unknown provider type 'carrier-pigeon' (known: fcm, msg91,")


def test_provider_types_can_be_passed_in() -> None:
    doc = base()
    doc["providers"]["sms-b"]["type"] = "carrier-pigeon"
    assert errors(doc, provider_types=KNOWN_PROVIDER_TYPES | {"carrier-pigeon"}) == []
    assert [p for p, _ in errors(base(), provider_types={"sandbox"})] == [
        "providers.mail.type",
        "providers.sms-b.type",
    ]


def test_provider_of_another_channel_than_the_rule() -> None:
    doc = base()
    doc["rules"][1]["tiers"].append(["sms-b"])
    assert only_error(doc) == (
        "rules[1].tiers[1][0]",
        "provider 'sms-b' sends sms, but rule 'email' matches email",
    )


def test_providers_of_mixed_channels_in_a_rule_without_channel() -> None:
    doc = base()
    doc["rules"].append({"name": "any", "match": {"caller": "ops"}, "tiers": [["sms-a"], ["mail"]]})
    doc["rules"].insert(0, doc["rules"].pop())
    path, message = only_error(doc)
    assert path == "rules[0].tiers"
    assert "has no match.channel and mixes providers" in message
    assert "email: mail; sms: sms-a" in message


def test_rule_without_channel_whose_providers_send_one_channel_is_a_warning() -> None:
    doc = base()
    doc["rules"].insert(0, {"name": "ops", "match": {"caller": "ops"}, "tiers": [["mail"]]})
    assert errors(doc) == []
    assert warnings(doc) == [
        (
            "rules[0].match",
            "rule 'ops' has no channel, so it also matches sms and push messages, "
            "but its providers only send email (add channel: email)",
        )
    ]


def test_country_rule_without_channel_only_sees_sms() -> None:
    doc = base()
    doc["rules"].insert(0, {"name": "in", "match": {"country": "IN"}, "tiers": [["sms-a"]]})
    assert issues(doc) == []


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ({"channel": "sms"}, {"channel": "sms"}),
        ({}, {"channel": "email", "caller": "x"}),
        ({"channel": "sms", "country": ["IN", "GB"]}, {"channel": "sms", "country": "IN"}),
        ({"channel": "sms", "category": ["otp", "transactional", "marketing"]}, {"channel": "sms"}),
        ({"channel": "sms", "caller": ["a", "b"]}, {"channel": "sms", "caller": ["b", "a"]}),
        (
            {"channel": "sms", "category": "otp"},
            {"channel": "sms", "category": ["otp"], "country": "IN", "caller": "billing"},
        ),
    ],
    ids=["same", "catch-all", "country-subset", "every-category", "same-callers", "narrower"],
)
def test_rule_shadowed_by_an_earlier_broader_rule(
    earlier: dict[str, Any], later: dict[str, Any]
) -> None:
    doc = base()
    doc["rules"] = [
        {"name": "first", "match": earlier, "tiers": [["mail"]]},
        {"name": "second", "match": later, "tiers": [["mail"]]},
    ]
    for rule in doc["rules"]:
        rule["tiers"] = [["mail"]] if rule["match"].get("channel") == "email" else [["sms-a"]]
    shadow = [e for e in errors(doc) if e[0] == "rules[1]"]
    assert shadow == [
        (
            "rules[1]",
            "rule 'second' can never match: the earlier rule 'first' (rules[0]) "
            "matches every message it would",
        )
    ]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ({"channel": "sms", "country": "IN"}, {"channel": "sms"}),
        ({"channel": "sms", "caller": "a"}, {"channel": "sms", "caller": "b"}),
        ({"channel": "sms", "category": ["otp", "marketing"]}, {"channel": "sms"}),
        ({"channel": "sms", "country": "IN"}, {"channel": "sms", "country": ["IN", "GB"]}),
        ({"channel": "sms", "caller": "a"}, {"channel": "sms", "category": "otp"}),
    ],
    ids=["later-broader", "other-caller", "not-every-category", "more-countries", "crossed"],
)
def test_rule_narrower_on_some_dimension_is_not_shadowed(
    earlier: dict[str, Any], later: dict[str, Any]
) -> None:
    doc = base()
    doc["rules"] = [
        {"name": "first", "match": earlier, "tiers": [["sms-a"]]},
        {"name": "second", "match": later, "tiers": [["sms-b"]]},
        {"name": "email", "match": {"channel": "email"}, "tiers": [["mail"]]},
    ]
    assert issues(doc) == []


def test_country_on_a_channel_without_countries_can_never_match() -> None:
    doc = base()
    doc["rules"][1]["match"]["country"] = "IN"
    assert only_error(doc) == (
        "rules[1].match.country",
        "can never match: only sms messages have a country, and rule 'email' matches email",
    )


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda d: d["rules"][0]["match"].update(country="UK"), "rules[0].match.country"),
        (
            lambda d: d["rules"][0]["match"].update(country=["GB", "UK"]),
            "rules[0].match.country[1]",
        ),
        (lambda d: d["providers"]["sms-a"]["cost"].update(UK=0.1), "providers.sms-a.cost.UK"),
    ],
    ids=["match", "match-list", "cost"],
)
def test_country_code_no_phone_number_belongs_to(edit: Any, path: str) -> None:
    doc = base()
    edit(doc)
    assert only_error(doc) == (
        path,
        "unknown country 'UK': no phone number belongs to it (ISO 3166-1 alpha-2)",
    )


def test_duplicate_rule_names() -> None:
    doc = base()
    doc["rules"].append({"name": "sms", "match": {"channel": "push"}, "tiers": [["mail"]]})
    assert ("rules[2].name", "duplicate rule name 'sms' (also rules[0])") in errors(doc)


def test_credential_whose_variable_is_unset_names_path_and_variable_only() -> None:
    doc = base()
    doc["providers"]["sms-b"]["credentials"] = {
        "account_sid": "env:HERALD_VENDOR_TWILIO_ACCOUNT_SID",
        "auth_token": "env:HERALD_VENDOR_TWILIO_AUTH_TOKEN",
    }
    env = {"HERALD_VENDOR_TWILIO_ACCOUNT_SID": "AC-secret-value"}
    found = issues(doc, env=env)
    assert found == [
        (
            "providers.sms-b.credentials.auth_token",
            "environment variable HERALD_VENDOR_TWILIO_AUTH_TOKEN is not set (or is empty)",
            "error",
        )
    ]
    assert "AC-secret-value" not in repr(found)
    assert issues(doc, env={**env, "HERALD_VENDOR_TWILIO_AUTH_TOKEN": ""}) == found
    assert issues(doc, env={**env, "HERALD_VENDOR_TWILIO_AUTH_TOKEN": "t"}) == []
    assert issues(doc, check_env=False) == []


def test_credentials_are_checked_against_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = base()
    doc["providers"]["sms-b"]["credentials"] = {
        "auth_token": "env:HERALD_VENDOR_TEST_ROUTING_TOKEN"
    }
    monkeypatch.delenv("HERALD_VENDOR_TEST_ROUTING_TOKEN", raising=False)
    assert [p for p, _ in errors(doc, env=None)] == ["providers.sms-b.credentials.auth_token"]
    monkeypatch.setenv("HERALD_VENDOR_TEST_ROUTING_TOKEN", "x")
    assert errors(doc, env=None) == []


def test_channel_with_providers_but_no_rule_is_a_warning() -> None:
    doc = base()
    doc["providers"]["phone"] = {"type": "fcm", "channel": "push"}
    assert errors(doc) == []
    assert (
        "rules",
        "no rule matches push messages, so its providers (phone) are never used",
    ) in warnings(doc)


def test_provider_used_by_no_rule_is_a_warning() -> None:
    doc = base()
    doc["rules"][0]["tiers"] = [["sms-a"]]
    assert issues(doc) == [("providers.sms-b", "is not used by any rule", "warning")]


def test_provider_twice_in_one_rule_is_a_warning() -> None:
    doc = base()
    doc["rules"][0]["tiers"].append([{"provider": "sms-a", "weight": 2}])
    assert issues(doc) == [
        (
            "rules[0].tiers[1][0]",
            "provider 'sms-a' is already in this rule at rules[0].tiers[0][0]",
            "warning",
        )
    ]


# Whole documents ----------------------------------------------------------------------


def test_every_problem_is_reported_at_once_errors_before_warnings() -> None:
    doc = base()
    del doc["providers"]["sms-a"]["cost"]["default"]
    doc["providers"]["mail"]["channel"] = "fax"
    doc["providers"]["idle"] = {"type": "sandbox", "channel": "sms"}
    doc["rules"][0]["tiers"][0].append("ghost")
    doc["rules"].append({"name": "sms", "match": {"channel": "sms", "caller": "x"}, "tiers": [[]]})
    found = issues(doc)
    assert [(p, s) for p, _, s in found] == [
        ("providers.mail.channel", "error"),
        ("providers.sms-a.cost.default", "error"),
        ("rules[0].tiers[0][2]", "error"),
        ("rules[2]", "error"),
        ("rules[2].name", "error"),
        ("rules[2].tiers[0]", "error"),
        ("providers.idle", "warning"),
    ]


def test_the_default_routing_file_is_clean() -> None:
    doc = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    assert issues(doc) == []


def test_the_design_example_validates_with_its_env_vars_set() -> None:
    doc = yaml.safe_load(DESIGN_EXAMPLE)
    assert errors(doc, env=DESIGN_ENV) == []
    # fcm is declared but no rule routes push: the example is valid, and says so.
    assert warnings(doc, env=DESIGN_ENV) == [
        ("providers.fcm", "is not used by any rule"),
        ("rules", "no rule matches push messages, so its providers (fcm) are never used"),
    ]


def test_the_design_example_without_twilio_auth_token_names_exactly_that_path() -> None:
    doc = yaml.safe_load(DESIGN_EXAMPLE)
    env = {k: v for k, v in DESIGN_ENV.items() if k != "HERALD_VENDOR_TWILIO_AUTH_TOKEN"}
    assert errors(doc, env=env) == [
        (
            "providers.twilio.credentials.auth_token",
            "environment variable HERALD_VENDOR_TWILIO_AUTH_TOKEN is not set (or is empty)",
        )
    ]


# parse_and_validate --------------------------------------------------------------------


def test_parse_and_validate_returns_the_rules_with_their_warnings() -> None:
    doc = yaml.safe_load(DESIGN_EXAMPLE)
    doc["rules"][1]["split"] = "weighted"
    rules = parse_and_validate(doc, env=DESIGN_ENV, version=7)
    assert rules.version == 7
    assert [r.name for r in rules.rules] == ["otp-india", "sms-default", "email-default"]
    assert [r.split for r in rules.rules] == ["cheapest", "weighted", "cheapest"]
    assert (
        rules.providers["twilio"].raw["credentials"]["auth_token"]
        == "env:HERALD_VENDOR_TWILIO_AUTH_TOKEN"
    )
    assert [(w.path, w.severity) for w in rules.warnings] == [
        ("providers.fcm", "warning"),
        ("rules", "warning"),
    ]
    assert rules == parse_rules(doc, version=7)  # warnings are not part of equality


def test_parse_and_validate_raises_with_every_issue() -> None:
    doc = base()
    doc["rules"][0]["tiers"][0].append("ghost")
    doc["rules"][1]["tiers"].append([])
    doc["providers"]["idle"] = {"type": "sandbox", "channel": "push"}
    with pytest.raises(RulesInvalid) as info:
        parse_and_validate(doc, env={})
    exc = info.value
    assert isinstance(exc, RulesError)
    assert exc.path == "rules[0].tiers[0][2]"
    assert str(exc) == "rules[0].tiers[0][2]: unknown provider 'ghost' (and 1 more)"
    assert [i.path for i in exc.errors] == ["rules[0].tiers[0][2]", "rules[1].tiers[1]"]
    assert {i.path for i in exc.issues} - {i.path for i in exc.errors} == {
        "providers.idle",
        "rules",
    }


def test_warnings_alone_do_not_raise() -> None:
    doc = base()
    doc["providers"]["idle"] = {"type": "sandbox", "channel": "sms"}
    rules = parse_and_validate(doc, env={})
    assert [str(w) for w in rules.warnings] == ["providers.idle: warning: is not used by any rule"]


def test_issue_str_is_path_then_message() -> None:
    assert str(ValidationIssue("rules[0]", "bad")) == "rules[0]: bad"
    assert str(ValidationIssue("rules", "meh", "warning")) == "rules: warning: meh"


# Properties ---------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "c"])
_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 3)
    | st.floats(-1, 2, allow_nan=False)
    | st.sampled_from(["", "IN", "UK", "otp", "sms", "a", "env:HERALD_VENDOR_A", "default"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["type", "channel", "provider", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)
_channel = st.sampled_from(["sms", "email", "push", "fax"])


def _one_or_list(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | st.lists(st.sampled_from(values), max_size=2)


_provider = (
    st.fixed_dictionaries(
        {"type": st.sampled_from(["sandbox", "twilio", "pigeon"]), "channel": _channel},
        optional={
            "cost": st.dictionaries(
                st.sampled_from(["IN", "GB", "UK", "default", "in"]),
                st.integers(-1, 2) | st.floats(0, 1) | st.just("x"),
                max_size=3,
            ),
            "max_per_s": st.sampled_from([0, 5, -1, "x"]),
            "credentials": st.dictionaries(
                st.sampled_from(["key", "token"]),
                st.sampled_from(["env:HERALD_VENDOR_A", "env:HERALD_VENDOR_B", "literal", 5]),
                max_size=2,
            ),
            "lookup": st.booleans(),
            "x": _junk,
        },
    )
    | _junk
)
_match = (
    st.fixed_dictionaries(
        {},
        optional={
            "channel": _channel,
            "country": _one_or_list(["IN", "GB", "UK", "in", 3]),
            "category": _one_or_list(["otp", "transactional", "marketing", "promo"]),
            "caller": _one_or_list(["billing", "ops", ""]),
        },
    )
    | _junk
)
_entry = (
    _names
    | st.fixed_dictionaries({"provider": _names}, optional={"weight": st.sampled_from([0, 1, 2.5])})
    | _junk
)
_rule = (
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["r1", "r2", "r3"]),
            "match": _match,
            "tiers": st.lists(st.lists(_entry, max_size=3), max_size=3),
        },
        optional={"split": st.sampled_from(["cheapest", "weighted", "x"])},
    )
    | _junk
)
_documents = (
    st.fixed_dictionaries(
        {
            "providers": st.dictionaries(_names, _provider, max_size=3),
            "rules": st.lists(_rule, max_size=4),
        }
    )
    | _junk
)
# Documents that are mostly right, so that clean ones with rules are common too.


def _good_values(values: list[str]) -> st.SearchStrategy[Any]:
    unique = st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True)
    return st.sampled_from(values) | unique


_good_documents = st.fixed_dictionaries(
    {
        "providers": st.dictionaries(
            _names,
            st.fixed_dictionaries(
                {"type": st.just("sandbox"), "channel": st.sampled_from(["sms", "email"])},
                optional={"cost": st.sampled_from([{"default": 0.1}, {"IN": 0.01, "default": 1}])},
            ),
            min_size=1,
            max_size=3,
        ),
        "rules": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.uuids().map(str),
                    "match": st.fixed_dictionaries(
                        {},
                        optional={
                            "channel": st.sampled_from(["sms", "email"]),
                            "country": _good_values(["IN", "GB"]),
                            "category": _good_values(["otp", "transactional", "marketing"]),
                            "caller": _good_values(["billing", "ops"]),
                        },
                    ),
                    "tiers": st.lists(
                        st.lists(
                            _names | st.builds(lambda n: {"provider": n, "weight": 2}, _names),
                            min_size=1,
                            max_size=2,
                        ),
                        min_size=1,
                        max_size=2,
                    ),
                },
                optional={"split": st.sampled_from(["cheapest", "weighted"])},
            ),
            min_size=1,
            max_size=3,
        ),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_validation_never_raises_and_refuses_whatever_the_parser_refuses(doc: Any) -> None:
    found = validate_document(doc, env={"HERALD_VENDOR_A": "1"})
    assert all(i.severity in ("error", "warning") and i.path and i.message for i in found)
    error_paths = [i.path for i in found if i.severity == "error"]
    try:
        parse_rules(copy.deepcopy(doc))
    except RulesError as exc:
        # Whatever the lenient parser refuses, validation refuses at (or under) that path.
        under = (exc.path + ".", exc.path + "[")
        assert any(p == exc.path or p.startswith(under) for p in error_paths), error_paths


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_good_documents)
def test_a_clean_document_parses_and_every_rule_keeps_to_one_channel(doc: Any) -> None:
    if any(i.severity == "error" for i in validate_document(doc, env={})):
        return
    parsed = parse_rules(doc)
    for rule in parsed.rules:
        assert rule.tiers and all(rule.tiers)
        channels = {parsed.providers[e.provider].channel for tier in rule.tiers for e in tier}
        assert channels == {rule.channel} if rule.channel else len(channels) == 1


# The command --------------------------------------------------------------------------

runner = CliRunner()


def write(tmp_path: Path, doc: Any, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc))
    return path


def test_command_prints_every_issue_with_file_and_path_and_exits_1(tmp_path: Path) -> None:
    doc = base()
    doc["rules"][0]["tiers"][0].append("ghost")
    doc["providers"]["mail"]["cost"] = {"IN": 1}
    doc["providers"]["idle"] = {"type": "sandbox", "channel": "sms"}
    path = write(tmp_path, doc)
    result = runner.invoke(app, ["routing", "validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: providers.mail.cost.default: is required",
        f"{path}: rules[0].tiers[0][2]: unknown provider 'ghost'",
        f"{path}: providers.idle: warning: is not used by any rule",
    ]


def test_command_with_only_warnings_says_ok(tmp_path: Path) -> None:
    doc = base()
    doc["providers"]["idle"] = {"type": "sandbox", "channel": "sms"}
    path = write(tmp_path, doc, "rules.json")
    result = runner.invoke(app, ["routing", "validate", str(path)])
    assert result.exit_code == 0
    assert result.stderr == f"{path}: providers.idle: warning: is not used by any rule\n"
    assert result.stdout == f"{path}: ok (4 providers, 2 rules)\n"


def test_command_checks_credentials_in_its_environment(tmp_path: Path) -> None:
    path = tmp_path / "design.yaml"
    path.write_text(DESIGN_EXAMPLE)
    env = {k: v for k, v in DESIGN_ENV.items() if k != "HERALD_VENDOR_TWILIO_AUTH_TOKEN"}
    env["HERALD_VENDOR_TWILIO_AUTH_TOKEN"] = ""
    missing = runner.invoke(app, ["routing", "validate", str(path)], env=env)
    assert missing.exit_code == 1
    assert (
        f"{path}: providers.twilio.credentials.auth_token: environment variable "
        "HERALD_VENDOR_TWILIO_AUTH_TOKEN is not set (or is empty)"
    ) in missing.stderr.splitlines()
    assert not any(secret in missing.output for secret in DESIGN_ENV.values())
    skipped = runner.invoke(app, ["routing", "validate", "--no-env", str(path)], env=env)
    assert skipped.exit_code == 0
    assert skipped.stdout == f"{path}: ok (5 providers, 3 rules)\n"


def test_command_names_the_bad_path_of_the_cli_test_document(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("providers: {a: {type: sandbox, channel: sms}}\nrules:\n  - tiers: [[a, b]]\n")
    result = runner.invoke(app, ["routing", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}: rules[0].tiers[0][1]: unknown provider 'b'" in result.stderr.splitlines()


@pytest.mark.parametrize("content", [None, "providers: [\n"], ids=["missing", "bad-yaml"])
def test_command_refuses_a_file_it_cannot_read(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "rules.yaml"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["routing", "validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}: $: cannot read the document: ")
    assert len(result.stderr.splitlines()) == 1
