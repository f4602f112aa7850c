"""Unit tests for settings (DESIGN §11): HERALD_* environment, masked secrets, backoff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import DEFAULT_ROUTING_FILE, BackoffPolicy, Settings, _masked, mask_url

SECRETS = ("s3cret", "amqp-pw", "redis-pw", "otp-hmac-key", "bootstrap-admin-key")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the HERALD_* variables they set themselves."""
    for name in list(os.environ):
        if name.upper().startswith("HERALD_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HERALD_DATABASE_URL", "postgresql+asyncpg://u:s3cret@db/x")
    monkeypatch.setenv("HERALD_AMQP_URL", "amqp://herald:amqp-pw@mq:5672/prod")
    monkeypatch.setenv("HERALD_REDIS_URL", "redis://:redis-pw@cache:6379/2")
    monkeypatch.setenv("HERALD_OTP_SECRET", "otp-hmac-key")
    monkeypatch.setenv("HERALD_BOOTSTRAP_API_KEY", "bootstrap-admin-key")
    return Settings()


def test_defaults_match_the_design() -> None:
    s = Settings()
    assert s.database_url.startswith("sqlite")
    assert s.is_sqlite
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.api_port == 8000
    assert s.routing_file == DEFAULT_ROUTING_FILE
    assert s.routing_file.is_file()
    assert s.bootstrap_api_key is None


def test_herald_env_vars_are_parsed_into_typed_fields(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    monkeypatch.setenv("HERALD_DATABASE_URL", "postgresql+asyncpg://u@db/x")
    monkeypatch.setenv("HERALD_API_PORT", "9123")
    monkeypatch.setenv("HERALD_ROUTING_FILE", str(rules))
    monkeypatch.setenv("HERALD_LOG_JSON", "false")
    monkeypatch.setenv("HERALD_MAX_BODY_CHARS", "500")
    monkeypatch.setenv("HERALD_RETRY_BUCKETS_MS", "[500, 2000]")
    monkeypatch.setenv("HERALD_METRICS_PORT", "9100")
    monkeypatch.setenv("HERALD_OTP_SECRET", "otp-hmac-key")
    s = Settings()
    assert s.database_url == "postgresql+asyncpg://u@db/x"
    assert not s.is_sqlite
    assert s.api_port == 9123
    assert s.routing_file == rules
    assert s.log_json is False
    assert s.max_body_chars == 500
    assert s.retry_buckets_ms == [500, 2000]
    assert s.metrics_port == 9100
    assert s.otp_secret.get_secret_value() == "otp-hmac-key"


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "1234")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    s = Settings()
    assert s.api_port == 8000
    assert s.is_sqlite


def test_a_malformed_value_is_an_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERALD_API_PORT", "eighty")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert info.value.errors()[0]["loc"] == ("api_port",)


# Secrets never print ----------------------------------------------------------------


@pytest.mark.parametrize("render", [str, repr], ids=["str", "repr"])
def test_no_secret_appears_when_settings_are_printed(secret_env: Settings, render: type) -> None:
    text = render(secret_env)
    for secret in SECRETS:
        assert secret not in text
    assert "postgresql+asyncpg://u:***@db/x" in text


def test_masked_hides_every_secret_and_is_json_serialisable(secret_env: Settings) -> None:
    masked = secret_env.masked()
    dumped = json.dumps(masked)
    for secret in SECRETS:
        assert secret not in dumped
    assert masked["database_url"] == "postgresql+asyncpg://u:***@db/x"
    assert masked["amqp_url"] == "amqp://herald:***@mq:5672/prod"
    assert masked["redis_url"] == "redis://:***@cache:6379/2"
    assert masked["otp_secret"] == "***"
    assert masked["bootstrap_api_key"] == "***"


def test_masked_keeps_the_rest_readable(secret_env: Settings) -> None:
    masked = secret_env.masked()
    assert masked["api_port"] == 8000
    assert masked["routing_file"] == str(DEFAULT_ROUTING_FILE)
    assert masked["backoff"]["otp"]["cap_s"] == 30


def test_secrets_remain_usable_by_the_code(secret_env: Settings) -> None:
    assert secret_env.database_url == "postgresql+asyncpg://u:s3cret@db/x"
    assert secret_env.otp_secret.get_secret_value() == "otp-hmac-key"
    assert secret_env.bootstrap_api_key is not None
    assert secret_env.bootstrap_api_key.get_secret_value() == "bootstrap-admin-key"


def test_masked_leaves_an_unset_bootstrap_key_as_none() -> None:
    assert Settings().masked()["bootstrap_api_key"] is None


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("sqlite+aiosqlite:///./herald.db", "sqlite+aiosqlite:///./herald.db"),
        ("amqp://h/?password=pw&heartbeat=30", "amqp://h/?password=***&heartbeat=30"),
        ("redis://h/0?password=pw", "redis://h/0?password=***"),
        ("postgresql://u:pw@h/d?sslpassword=pw2&x=1", "postgresql://u:***@h/d?sslpassword=***&x=1"),
        ("redis://h/0?Auth_Token=pw", "redis://h/0?Auth_Token=***"),
        ("redis://h/0?pass%77ord=pw", "redis://h/0?pass%77ord=***"),  # %77 is "w"
        ("sqlite:///x.db?mode=ro", "sqlite:///x.db?mode=ro"),
        ("postgresql://u:p@ss@h/d", "postgresql://u:***@h/d"),
        ("http://[::1", "***"),  # unreadable: hidden whole
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_masked_hides_settings_whose_name_looks_secret_and_urls_anywhere() -> None:
    """A setting added later (a vendor token as a plain string, a URL in a list) is
    masked by its name or its shape, not by someone remembering to use SecretStr."""
    shown = Settings(console_secret="c" * 40).masked()
    assert shown["console_secret"] == "***"
    masked = _masked("vendor_auth_token", "tok-s3cret")
    assert masked == "***"
    assert _masked("endpoints", ["https://u:s3cret@h/x?token=t0k"]) == [
        "https://u:***@h/x?token=***"
    ]
    assert _masked("limit_api_key", {"rate": 5}) == {"rate": 5}  # policies stay readable


# Secrets a production process needs --------------------------------------------------

STRONG = "0123456789abcdef0123456789abcdef"


def test_a_production_process_needs_strong_distinct_secrets() -> None:
    assert len(Settings().insecure_secrets()) == 2  # the default OTP secret, no console one
    ok = Settings(otp_secret="o" + STRONG, console_secret="c" + STRONG)
    assert ok.insecure_secrets() == []
    short = Settings(otp_secret="o" * 31, console_secret="c" + STRONG).insecure_secrets()
    assert ["HERALD_OTP_SECRET" in p for p in short] == [True]
    same = Settings(otp_secret=STRONG, console_secret=STRONG).insecure_secrets()
    assert ["HERALD_CONSOLE_SECRET" in p for p in same] == [True]
    dev_key = Settings(
        otp_secret="o" + STRONG, console_secret="c" + STRONG, bootstrap_api_key="dev-admin-key"
    )
    assert ["HERALD_BOOTSTRAP_API_KEY" in p for p in dev_key.insecure_secrets()] == [True]
    assert Settings(dev_mode=True, bootstrap_api_key="dev-admin-key").insecure_secrets() == []
    # A worker renders codes but serves no console and creates no bootstrap key.
    worker = Settings(otp_secret="o" + STRONG, bootstrap_api_key="dev-admin-key")
    assert worker.insecure_secrets(serves_api=False) == []
    assert len(Settings().insecure_secrets(serves_api=False)) == 1


def test_trusted_proxies_are_parsed_and_bad_ones_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_TRUSTED_PROXIES", '["10.0.0.1", "fd00::/8"]')
    assert [str(n) for n in Settings().trusted_proxies] == ["10.0.0.1/32", "fd00::/8"]
    monkeypatch.setenv("HERALD_TRUSTED_PROXIES", '["proxy.internal"]')
    with pytest.raises(ValidationError) as info:
        Settings()
    assert info.value.errors()[0]["loc"][0] == "trusted_proxies"


# Backoff per category ---------------------------------------------------------------


def test_backoff_defaults_per_category() -> None:
    s = Settings()
    otp = s.backoff_for("otp")
    assert (otp.base_s, otp.cap_s, otp.max_attempts) == (1, 30, 4)
    assert s.backoff_for("transactional") == BackoffPolicy()
    marketing = s.backoff_for("marketing")
    assert (marketing.base_s, marketing.cap_s, marketing.max_attempts) == (5, 600, 6)


def test_backoff_for_an_unknown_category_falls_back_to_the_defaults() -> None:
    policy = Settings().backoff_for("newsletter")
    assert policy == BackoffPolicy()
    assert (policy.base_s, policy.factor, policy.cap_s, policy.max_attempts) == (1, 2, 300, 8)


def test_backoff_json_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_BACKOFF", '{"otp": {"base_s": 2}}')
    assert Settings().backoff_for("otp").base_s == 2


def test_backoff_nested_delimiter_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_BACKOFF__MARKETING__MAX_ATTEMPTS", "3")
    assert Settings().backoff_for("marketing").max_attempts == 3


def test_backoff_override_keeps_the_other_fields_of_that_category(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Changing the OTP base must not silently raise the OTP cap from 30 s to 5 min."""
    monkeypatch.setenv("HERALD_BACKOFF", '{"otp": {"base_s": 2}}')
    otp = Settings().backoff_for("otp")
    assert (otp.base_s, otp.cap_s, otp.max_attempts) == (2, 30, 4)


def test_backoff_override_keeps_the_other_categories(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuning OTP retries must not change the marketing schedule."""
    monkeypatch.setenv("HERALD_BACKOFF", '{"otp": {"base_s": 2}}')
    marketing = Settings().backoff_for("marketing")
    assert (marketing.base_s, marketing.cap_s, marketing.max_attempts) == (5, 600, 6)


def test_an_invalid_backoff_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_BACKOFF", '{"otp": {"base_s": 0}}')
    with pytest.raises(ValidationError):
        Settings()
