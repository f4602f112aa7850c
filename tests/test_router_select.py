"""Unit tests for the routing rules and candidate ordering (DESIGN §6)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from config.settings import DEFAULT_ROUTING_FILE
from herald.domain import Category, Channel, Envelope, Priority
from router.rules import RulesError, TierEntry, load_rules_file, parse_rules
from router.select import Candidate, candidates, destination_country, match_rule

UK_MOBILE = "+447400123456"  # GB; +447911... is a Guernsey (GG) range
IN_MOBILE = "+919876543210"
US_NUMBER = "+14155552671"

# The example document of DESIGN §6, plus a caller-specific rule and a cheap push tier.
DESIGN_DOC = yaml.safe_load(
    """
providers:
  msg91-in:  {type: msg91,   channel: sms, cost: {IN: 0.0020, default: 0.05}, max_per_s: 50}
  twilio:    {type: twilio,  channel: sms, cost: {default: 0.0079, IN: 0.0450}}
  sns:       {type: sns,     channel: sms, cost: {default: 0.0065}}
  ses:       {type: ses,     channel: email, cost: {default: 0.0001}}
  smtp:      {type: smtp,    channel: email, cost: {default: 0.0003}}
  fcm:       {type: fcm,     channel: push, cost: {default: 0}}
rules:
  - name: otp-india
    match: {channel: sms, country: [IN], category: [otp]}
    tiers: [[msg91-in, twilio], [sns]]
  - name: billing-sms
    match: {channel: sms, caller: billing}
    tiers: [[sns]]
  - name: sms-default
    match: {channel: sms}
    tiers: [[twilio, {provider: sns, weight: 3}]]
  - name: email-default
    match: {channel: email}
    tiers: [[smtp], [ses]]
"""
)
RULES = parse_rules(DESIGN_DOC)


def message(
    channel: str = "sms",
    to: str = UK_MOBILE,
    category: str = "transactional",
    caller: str | None = None,
    provider_override: str | None = None,
) -> Envelope:
    return Envelope(
        id="n-1",
        channel=Channel(channel),
        to=to,
        category=Category(category),
        priority=Priority.NORMAL,
        caller=caller,
        provider_override=provider_override,
    )


def order(msg: Envelope) -> list[tuple[str, int]]:
    return [(c.provider, c.tier) for c in candidates(RULES, msg)]


# Parsing ------------------------------------------------------------------------------


def test_default_routing_file_sends_every_channel_to_its_sandbox() -> None:
    rules = load_rules_file(DEFAULT_ROUTING_FILE)
    assert set(rules.providers) == {"sandbox-sms", "sandbox-email", "sandbox-push"}
    assert all(p.type == "sandbox" for p in rules.providers.values())
    assert [r.name for r in rules.rules] == ["sms-default", "email-default", "push-default"]
    for channel, to in (("sms", UK_MOBILE), ("email", "a@example.com"), ("push", "tok")):
        for category in ("otp", "transactional", "marketing"):
            got = candidates(rules, message(channel, to, category))
            assert got == [Candidate(f"sandbox-{channel}", 0, 0.0)]


def test_parse_keeps_providers_costs_and_weights() -> None:
    msg91 = RULES.providers["msg91-in"]
    assert msg91.channel is Channel.SMS
    assert msg91.max_per_s == 50
    assert msg91.cost_for("IN") == pytest.approx(0.002)
    assert msg91.cost_for("GB") == pytest.approx(0.05)
    assert msg91.cost_for(None) == pytest.approx(0.05)
    sms_default = RULES.rules[2]
    assert sms_default.tiers == ((TierEntry("twilio"), TierEntry("sns", 3.0)),)


def test_provider_without_cost_is_free() -> None:
    rules = parse_rules({"providers": {"p": {"type": "sandbox", "channel": "push"}}})
    assert rules.providers["p"].cost_for("GB") == 0


def test_match_fields_accept_a_single_value_or_a_list() -> None:
    doc = {
        "providers": {"p": {"type": "sandbox", "channel": "sms"}},
        "rules": [{"match": {"country": "IN", "category": ["otp", "transactional"]}, "tiers": []}],
    }
    rule = parse_rules(doc).rules[0]
    assert rule.countries == frozenset({"IN"})
    assert rule.categories == frozenset({"otp", "transactional"})
    assert rule.channel is None
    assert rule.callers is None
    assert rule.name == "rule-0"


def test_unknown_provider_in_a_tier_names_its_path() -> None:
    doc: dict[str, Any] = {
        "providers": {"twilio": {"type": "twilio", "channel": "sms"}},
        "rules": [{"match": {"channel": "sms"}, "tiers": [["twilio", "nexmo"]]}],
    }
    with pytest.raises(RulesError) as info:
        parse_rules(doc)
    assert info.value.path == "rules[0].tiers[0][1]"
    assert "nexmo" in str(info.value)


def test_unknown_provider_in_a_later_rule_and_tier_names_its_path() -> None:
    doc: dict[str, Any] = {
        "providers": {"a": {"type": "sandbox", "channel": "sms"}},
        "rules": [
            {"match": {"channel": "sms"}, "tiers": [["a"]]},
            {"match": {"channel": "sms"}, "tiers": [["a"], [{"provider": "ghost"}]]},
        ],
    }
    with pytest.raises(RulesError) as info:
        parse_rules(doc)
    assert info.value.path == "rules[1].tiers[1][0]"


def test_bad_provider_channel_names_its_path() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules({"providers": {"x": {"type": "sandbox", "channel": "fax"}}})
    assert info.value.path == "providers.x.channel"
    assert "fax" in str(info.value)


@pytest.mark.parametrize("spec", [{"type": "sandbox"}, {"channel": "sms"}, "sandbox"])
def test_provider_missing_type_or_channel_names_the_provider(spec: Any) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules({"providers": {"x": spec}})
    assert info.value.path == "providers.x"


def test_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert info.value.path == "$"


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ({"match": {"channel": "SMS"}, "tiers": [["a"]]}, "rules[0].match.channel"),
        ({"match": {"channel": "sms"}, "tiers": [[{"weight": 2}]]}, "rules[0].tiers[0][0]"),
    ],
    ids=["bad-match-channel", "tier-entry-without-provider"],
)
def test_malformed_rule_is_a_rules_error_naming_its_path(rule: dict[str, Any], where: str) -> None:
    """`herald routing validate` and the API only turn RulesError into a named-path answer."""
    doc = {"providers": {"a": {"type": "sandbox", "channel": "sms"}}, "rules": [rule]}
    with pytest.raises(RulesError) as info:
        parse_rules(doc)
    assert info.value.path.startswith(where)


# Selection ----------------------------------------------------------------------------


def test_destination_country_comes_from_the_number() -> None:
    assert destination_country(Channel.SMS, IN_MOBILE) == "IN"
    assert destination_country(Channel.SMS, UK_MOBILE) == "GB"
    assert destination_country(Channel.SMS, "not a number") is None
    assert destination_country(Channel.EMAIL, "a@example.in") is None


def test_otp_to_india_takes_the_india_rule_cheapest_first_by_country_cost() -> None:
    msg = message(to=IN_MOBILE, category="otp")
    assert match_rule(RULES, msg).name == "otp-india"  # type: ignore[union-attr]
    got = candidates(RULES, msg)
    assert [(c.provider, c.tier) for c in got] == [("msg91-in", 0), ("twilio", 0), ("sns", 1)]
    assert [c.cost for c in got] == pytest.approx([0.002, 0.045, 0.0065])


def test_country_cost_reverses_the_order_outside_that_country() -> None:
    """Same tier, an OTP-India-like rule matched for the UK: twilio's default is cheaper."""
    doc = dict(DESIGN_DOC)
    doc["rules"] = [{"match": {"channel": "sms"}, "tiers": [["msg91-in", "twilio"]]}]
    rules = parse_rules(doc)
    assert [c.provider for c in candidates(rules, message(to=UK_MOBILE))] == ["twilio", "msg91-in"]
    assert [c.provider for c in candidates(rules, message(to=IN_MOBILE))] == ["msg91-in", "twilio"]


def test_first_matching_rule_wins_even_when_a_later_one_also_matches() -> None:
    msg = message(to=IN_MOBILE, category="otp", caller="billing")
    assert match_rule(RULES, msg).name == "otp-india"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("to", "category"),
    [(IN_MOBILE, "transactional"), (IN_MOBILE, "marketing"), (UK_MOBILE, "otp")],
    ids=["india-not-otp", "india-marketing", "otp-not-india"],
)
def test_rule_needs_every_condition_to_match(to: str, category: str) -> None:
    msg = message(to=to, category=category)
    assert match_rule(RULES, msg).name == "sms-default"  # type: ignore[union-attr]
    assert order(msg) == [("sns", 0), ("twilio", 0)]


def test_caller_rule_matches_only_that_caller() -> None:
    assert order(message(caller="billing")) == [("sns", 0)]
    assert match_rule(RULES, message(caller="growth")).name == "sms-default"  # type: ignore[union-attr]
    assert match_rule(RULES, message(caller=None)).name == "sms-default"  # type: ignore[union-attr]


def test_tiers_are_tried_in_order_even_when_a_later_tier_is_cheaper() -> None:
    msg = message("email", "alice@example.com")
    assert order(msg) == [("smtp", 0), ("ses", 1)]


def test_channel_decides_the_rule() -> None:
    assert match_rule(RULES, message("email", "a@example.com")).name == "email-default"  # type: ignore[union-attr]


def test_no_matching_rule_gives_no_candidates() -> None:
    assert match_rule(RULES, message("push", "tok")) is None
    assert candidates(RULES, message("push", "tok")) == []


def test_provider_override_bypasses_the_rules() -> None:
    msg = message(to=IN_MOBILE, category="otp", provider_override="sns")
    assert candidates(RULES, msg) == [Candidate("sns", 0, 0.0065)]


def test_unknown_provider_override_falls_back_to_the_rules() -> None:
    msg = message(to=IN_MOBILE, category="otp", provider_override="retired-vendor")
    assert order(msg)[0] == ("msg91-in", 0)


def test_equal_cost_is_broken_by_weight() -> None:
    """DESIGN §6: "the cheapest healthy one (ties by weight)"."""
    tier = ["light", {"provider": "heavy", "weight": 3}]
    doc = {
        "providers": {
            "light": {"type": "sandbox", "channel": "sms", "cost": {"default": 0.01}},
            "heavy": {"type": "sandbox", "channel": "sms", "cost": {"default": 0.01}},
        },
        "rules": [{"match": {"channel": "sms"}, "tiers": [tier]}],
    }
    rules = parse_rules(doc)
    firsts = Counter(candidates(rules, message())[0].provider for _ in range(200))
    # Whether ties go to the heavier provider always or in proportion to weight (3:1),
    # the weight-3 provider must lead most of the time; ignoring weight never puts it first.
    assert firsts["heavy"] > 100
