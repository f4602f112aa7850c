"""What a rules document may point a provider at: the operator binds credentials and
endpoints, the rules editor only picks among them.

- Credentials are ``env:VAR`` references (the rules never hold a secret), and ``VAR``
  must start with one of the operator's prefixes (``HERALD_CREDENTIAL_ENV_PREFIXES``,
  default ``HERALD_VENDOR_``). Herald's own settings (``HERALD_*`` outside
  ``HERALD_VENDOR_``, or any name a setting is read from) are refused whatever the
  operator sets: a rules editor must never be able to mail the OTP secret somewhere.
- Endpoints come from the operator's allow-list (``HERALD_ALLOWED_ENDPOINTS``): base URLs
  for HTTP vendors, ``host:port`` for SMTP. ``https`` only, except plain ``http`` to a
  loopback address the operator listed (a local fake or egress sidecar). Link-local,
  unspecified and multicast addresses are refused even when listed. Under ``herald dev``
  (``dev_mode``) loopback endpoints need no listing.

IP literals are classified in every form a resolver accepts (decimal ``2130706433``,
hex, octal, short ``127.1``, IPv4-mapped IPv6). Host names are never resolved here: a
name is accepted only when the operator listed it, so its DNS is the operator's to
trust, and nothing resolved at validation time could differ at send time.

The same checks run when a document is validated and when a provider is built
(``providers.registry``), so a document stored before these rules cannot bypass them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from herald.errors import HeraldError

if TYPE_CHECKING:
    from config.settings import Settings

ENV_PREFIX = "env:"
VENDOR_PREFIX = "HERALD_VENDOR_"
DEFAULT_CREDENTIAL_PREFIXES: tuple[str, ...] = (VENDOR_PREFIX,)
HTTP_SCHEMES = ("https", "http")
SMTP_SCHEMES = ("smtp+starttls", "smtps", "smtp")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class MissingCredential(HeraldError):
    """A provider's credential reference names an unset variable (a deploy problem)."""


class CredentialRefused(MissingCredential):
    """A credential reference names a variable the operator did not allow."""


class EndpointRefused(HeraldError):
    """A provider's endpoint is not one the operator allowed."""


# Credentials ---------------------------------------------------------------------------


@cache
def _setting_names() -> frozenset[str]:
    """The environment names Herald reads its own settings from (upper case)."""
    from config.settings import Settings  # late: settings import nothing from here

    return frozenset(f"HERALD_{name.upper()}" for name in Settings.model_fields)


def is_herald_setting(variable: str) -> bool:
    """``HERALD_OTP_SECRET``, ``herald_amqp_url``, ``HERALD_BACKOFF__OTP``: never a credential.

    pydantic-settings matches names case-insensitively, so this does too.
    """
    upper = variable.upper()
    if not upper.startswith("HERALD_"):
        return False
    if not upper.startswith(VENDOR_PREFIX):
        return True
    return any(upper == name or upper.startswith(f"{name}__") for name in _setting_names())


def check_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The operator's prefixes, refused when one is empty or not a variable-name start."""
    checked = tuple(prefixes)
    for prefix in checked:
        if not _VARIABLE.fullmatch(prefix):
            raise ValueError(
                f"HERALD_CREDENTIAL_ENV_PREFIXES: {prefix!r} is not the start of a variable name"
            )
    return checked


def reference_refusal(variable: str, prefixes: Iterable[str]) -> str | None:
    """Why ``env:variable`` may not be used, or ``None``. The answer is the same whether
    or not the variable exists, so it is no oracle for the host's environment."""
    allowed = tuple(prefixes)
    if is_herald_setting(variable) or not variable.startswith(allowed):
        names = ", ".join(f"{p}*" for p in allowed) or "(none)"
        return (
            f"env:{variable} is not allowed: credentials must name a variable the operator "
            f"set aside for vendors ({names}, HERALD_CREDENTIAL_ENV_PREFIXES), never a "
            "Herald setting"
        )
    return None


def reference_variable(reference: Any) -> str | None:
    """``"env:HERALD_VENDOR_X"`` → ``"HERALD_VENDOR_X"``; ``None`` for anything else."""
    if not isinstance(reference, str) or not reference.startswith(ENV_PREFIX):
        return None
    variable = reference[len(ENV_PREFIX) :]
    return variable if _VARIABLE.fullmatch(variable) else None


def resolve_credentials(
    provider: str,
    spec: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    prefixes: Iterable[str] | None = None,
) -> dict[str, str]:
    """``{"auth_token": "env:HERALD_VENDOR_TWILIO_AUTH_TOKEN"}`` → ``{"auth_token": "…"}``.

    A Herald setting is refused always; with ``prefixes`` (the registry passes the
    operator's), so is any variable outside them.
    """
    env = os.environ if env is None else env
    resolved: dict[str, str] = {}
    for field, reference in (spec.get("credentials") or {}).items():
        where = f"{provider}.credentials.{field}"
        variable = reference_variable(reference)
        if variable is None:
            raise CredentialRefused(f"{where}: must be an env: reference")
        if is_herald_setting(variable):
            raise CredentialRefused(f"{where}: env:{variable} names a Herald setting")
        if prefixes is not None and (refusal := reference_refusal(variable, prefixes)):
            raise CredentialRefused(f"{where}: {refusal}")
        value = env.get(variable)
        if not value:
            raise MissingCredential(f"{where}: environment variable {variable} is not set")
        resolved[field] = value
    return resolved


# Endpoints -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where an endpoint leads: ``scheme`` is ``""`` for SMTP (the TLS mode is apart)."""

    scheme: str
    host: str
    port: int
    path: str = ""
    ip: IP | None = None

    @property
    def loopback(self) -> bool:
        if self.ip is not None:
            return self.ip.is_loopback
        return self.host in _LOOPBACK_NAMES or self.host.endswith(".localhost")

    def within(self, allowed: Target) -> bool:
        """Same scheme, host and port, and the path at or under the allowed one."""
        if (self.scheme, self.host, self.port) != (allowed.scheme, allowed.host, allowed.port):
            return False
        base = allowed.path.rstrip("/")
        return not base or self.path == base or self.path.startswith(f"{base}/")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{self.port}"
        return f"{self.scheme}://{where}{self.path}" if self.scheme else where


def parse_ip(host: str) -> IP | None:
    """The address a host literal means to a resolver, in any spelling; ``None`` for a
    name. IPv4-mapped IPv6 (``::ffff:169.254.169.254``) is its IPv4 address."""
    try:
        ip: IP = ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[0-9a-fA-FxX.]+", host):
            return None
        try:  # the forms inet_aton (and so getaddrinfo) accepts: 2130706433, 0x7f.1, 0177.1
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return mapped
    return ip


def never_allowed(ip: IP | None) -> str | None:
    """Addresses no operator may allow: cloud metadata and its like, and nonsense."""
    if ip is None:
        return None
    if ip.is_link_local:
        return "a link-local address (such as the cloud metadata service) is never allowed"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return f"{ip} is not an address a vendor can have"
    return None


def _host(hostname: str | None, endpoint: str) -> tuple[str, IP | None]:
    if not hostname:
        raise ValueError(f"no host in {endpoint!r}")
    if not hostname.isascii():
        raise ValueError("write the host name in ASCII (punycode)")
    name = hostname.rstrip(".")  # "169.254.169.254." is that address to a resolver
    ip = parse_ip(name)
    return (ip.compressed if ip is not None else name), ip


def parse_url_target(endpoint: str) -> Target:
    """An HTTP vendor's base URL; ``ValueError`` says what is wrong with it."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in HTTP_SCHEMES:
        raise ValueError(f"must be an https:// URL, not {parts.scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    if parts.query or parts.fragment:
        raise ValueError("must be a base URL, without a query or fragment")
    if ".." in parts.path.split("/"):
        raise ValueError("must not contain '..' path segments")
    host, ip = _host(parts.hostname, endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, host, port, parts.path.rstrip("/"), ip)


def parse_smtp_target(provider: str, spec: Mapping[str, Any]) -> Target:
    """The relay an SMTP provider connects to, exactly as the adapter works it out."""
    from providers.smtp import smtp_target  # late: smtp imports this module

    target = smtp_target(provider, spec)
    host, ip = _host(target.host, str(spec.get("endpoint")))
    return Target("", host, target.port, "", ip)


def parse_allowed(entry: str) -> Target:
    """One ``HERALD_ALLOWED_ENDPOINTS`` entry: a base URL, or ``host:port`` for SMTP."""
    text = entry.strip()
    scheme, sep, _ = text.partition("://")
    if sep and scheme in HTTP_SCHEMES:
        target = parse_url_target(text)
    else:
        target = parse_smtp_target("HERALD_ALLOWED_ENDPOINTS", {"endpoint": text})
    if reason := never_allowed(target.ip):
        raise ValueError(f"HERALD_ALLOWED_ENDPOINTS: {entry!r}: {reason}")
    if target.scheme == "http" and not target.loopback:
        raise ValueError(f"HERALD_ALLOWED_ENDPOINTS: {entry!r}: plain http only to loopback")
    return target


# The operator's policy -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VendorPolicy:
    """The credentials and endpoints this deployment's rules may use (from settings)."""

    prefixes: tuple[str, ...] = DEFAULT_CREDENTIAL_PREFIXES
    endpoints: tuple[Target, ...] = ()
    dev_mode: bool = False

    @classmethod
    def build(
        cls, prefixes: Iterable[str], endpoints: Iterable[str], *, dev_mode: bool = False
    ) -> VendorPolicy:
        """From the settings' lists; ``ValueError`` names a bad entry (refuse to start)."""
        return cls(check_prefixes(prefixes), tuple(parse_allowed(e) for e in endpoints), dev_mode)

    @classmethod
    def from_settings(cls, settings: Settings) -> VendorPolicy:
        return cls.build(
            settings.credential_env_prefixes,
            settings.allowed_endpoints,
            dev_mode=settings.dev_mode,
        )

    def credential_refusal(self, variable: str) -> str | None:
        return reference_refusal(variable, self.prefixes)

    def endpoint_refusal(self, provider: str, spec: Mapping[str, Any]) -> str | None:
        """Why the provider's ``endpoint`` may not be used, or ``None`` (none set is the
        vendor's own default, always allowed)."""
        endpoint = spec.get("endpoint")
        if endpoint is None:
            return None
        if not isinstance(endpoint, str):
            return "must be a string"
        try:
            target = (
                parse_smtp_target(provider, spec)
                if spec.get("type") == "smtp"
                else parse_url_target(endpoint)
            )
        except ValueError as exc:
            return str(exc).removeprefix(f"{provider}.endpoint: ")
        return self._target_refusal(target)

    def _target_refusal(self, target: Target) -> str | None:
        if reason := never_allowed(target.ip):
            return reason
        if self.dev_mode and target.loopback:
            return None
        if not any(target.within(allowed) for allowed in self.endpoints):
            return (
                f"{target} is not an endpoint the operator allowed (HERALD_ALLOWED_ENDPOINTS)"
                + ("" if target.scheme != "http" else "; vendors are reached over https")
            )
        return None

    def spec_issues(self, name: str, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(field, message)`` for every credential or endpoint of a provider this
        policy refuses; fields are relative to the provider (``credentials.auth_key``)."""
        issues: list[tuple[str, str]] = []
        credentials = spec.get("credentials")
        if isinstance(credentials, Mapping):
            for field, reference in credentials.items():
                variable = reference_variable(reference)
                if variable is not None and (refusal := self.credential_refusal(variable)):
                    issues.append((f"credentials.{field}", refusal))
        if refusal := self.endpoint_refusal(name, spec):
            issues.append(("endpoint", refusal))
        return issues

    def check(self, name: str, spec: Mapping[str, Any]) -> None:
        """Raise when the provider may not be built as specified."""
        issues = self.spec_issues(name, spec)
        if not issues:
            return
        first_field = issues[0][0]
        error = EndpointRefused if first_field == "endpoint" else CredentialRefused
        raise error("; ".join(f"{name}.{field}: {message}" for field, message in issues))
