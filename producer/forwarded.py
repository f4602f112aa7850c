"""Who is calling, and which URL they called, behind proxies we trust and no others.

``X-Forwarded-For``, ``-Proto`` and ``-Host`` are believed only when the TCP peer is one
of ``HERALD_TRUSTED_PROXIES`` (IPs or CIDRs; none by default): any client can send them,
so from anyone else they would let a caller pick its own address (and escape the
failed-key throttle) or the URL a webhook signature is checked against. uvicorn's own
proxy-header handling is off (herald/service.py) so there is one rule, this one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: IPv6 clients are counted per /64: one subscriber usually holds a whole /64.
IPV6_CLIENT_PREFIX = 64


def trusted(host: str | None, proxies: Sequence[Network]) -> bool:
    """Whether ``host`` (an IP literal) is inside one of ``proxies``."""
    if not host or not proxies:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in proxies)


def peer(request: Request) -> str:
    return request.client.host if request.client else ""


def _proxies(request: Request) -> Sequence[Network]:
    proxies: Sequence[Network] = request.app.state.settings.trusted_proxies
    return proxies


def client_address(request: Request) -> str:
    """The caller's address: the TCP peer, or, when the peer is a trusted proxy, the
    nearest untrusted hop of ``X-Forwarded-For`` (read from the right, as each proxy
    appends the address it saw)."""
    proxies = _proxies(request)
    address = peer(request)
    if not trusted(address, proxies):
        return address
    hops = [
        hop.strip()
        for value in request.headers.getlist("x-forwarded-for")
        for hop in value.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not trusted(hop, proxies):
            return hop
        address = hop
    return address


def throttle_subject(address: str) -> str:
    """The bucket an address counts against: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def public_origin(request: Request) -> tuple[str, str]:
    """The scheme and host the client called: the proxy's ``X-Forwarded-Proto`` and
    ``-Host`` when the peer is a trusted proxy, else what this server saw."""
    headers = request.headers
    host = headers.get("host") or request.url.netloc
    if not trusted(peer(request), _proxies(request)):
        return request.url.scheme, host
    scheme = _first(headers.get("x-forwarded-proto")) or request.url.scheme
    return scheme, _first(headers.get("x-forwarded-host")) or host


def _first(value: str | None) -> str | None:
    """First entry of a forwarded header a chain of proxies may have extended."""
    if not value:
        return None
    return value.split(",")[0].strip() or None
