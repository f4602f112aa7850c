"""Vendor credentials come from the environment, named by ``env:VAR`` references in the
rules document; the rules never hold a secret."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from herald.errors import HeraldError

ENV_PREFIX = "env:"


class MissingCredential(HeraldError):
    """A provider's credential reference names an unset variable (a deploy problem)."""


def resolve_credentials(
    provider: str, spec: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{"auth_token": "env:TWILIO_AUTH_TOKEN"}`` → ``{"auth_token": "<its value>"}``."""
    env = os.environ if env is None else env
    resolved: dict[str, str] = {}
    for field, reference in (spec.get("credentials") or {}).items():
        if not isinstance(reference, str) or not reference.startswith(ENV_PREFIX):
            raise MissingCredential(f"{provider}.credentials.{field}: must be an env: reference")
        variable = reference[len(ENV_PREFIX) :]
        value = env.get(variable)
        if not value:
            raise MissingCredential(
                f"{provider}.credentials.{field}: environment variable {variable} is not set"
            )
        resolved[field] = value
    return resolved
