"""The source address of a request, and whether a per-source limit applies to it.

Behind a reverse proxy every request comes from the proxy: only a peer in
``trusted_proxies`` is believed about ``X-Forwarded-For``, and the source is the right-most
address there that is not a trusted proxy (each proxy appends the address it saw, so
anything left of that is what the client chose to write). Sources in
``source_limit_exempt`` (loopback by default: the simulator and the benches) have no
per-source limit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from emostream.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str], setting: str) -> tuple[Network, ...]:
    """CIDRs of a setting as networks; a clear error naming the setting when one is not a CIDR."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise SystemExit(f"EMOSTREAM_{setting.upper()}: {cidr!r} is not an address or CIDR") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _within(address: Any, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


class SourcePolicy:
    """Which address a request comes from, and whether a per-source limit applies to it."""

    # Answers remembered per (peer, X-Forwarded-For): the same few peers send most requests.
    MEMO_ENTRIES = 16_384

    def __init__(self, trusted_proxies: Iterable[str] = (), exempt: Iterable[str] = ()):
        self.trusted = parse_networks(trusted_proxies, "trusted_proxies")
        self.exempt = parse_networks(exempt, "source_limit_exempt")
        self._memo: dict[tuple[str, str | None], str | None] = {}

    @classmethod
    def of(cls, settings: Settings) -> SourcePolicy:
        return cls(settings.trusted_proxies, settings.source_limit_exempt)

    def source(self, peer: str, forwarded_for: str | None = None) -> str:
        """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
        ``X-Forwarded-For`` hop that is not one (each proxy appends the address it saw)."""
        address = _address(peer)
        if not forwarded_for or not _within(address, self.trusted):
            return str(address) if address is not None else peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            hop_address = _address(hop)
            if not _within(hop_address, self.trusted):
                # What a trusted proxy wrote; a hop that is no address still names one sender.
                return str(hop_address) if hop_address is not None else hop[:64]
        return str(_address(hops[0])) if hops else str(address)

    def limited_source(self, peer: str, forwarded_for: str | None = None) -> str | None:
        """The source address a per-source limit counts, or None when the source is exempt."""
        memo_key = (peer, forwarded_for)
        try:
            return self._memo[memo_key]
        except KeyError:
            pass
        source = self.source(peer, forwarded_for)
        limited = None if _within(_address(source), self.exempt) else source
        if len(self._memo) >= self.MEMO_ENTRIES:
            self._memo.clear()
        self._memo[memo_key] = limited
        return limited

    def of_environ(self, environ: dict[str, Any]) -> str | None:
        return self.limited_source(environ.get("REMOTE_ADDR") or "", environ.get("HTTP_X_FORWARDED_FOR"))
