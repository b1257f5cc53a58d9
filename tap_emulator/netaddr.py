"""Shared: network addresses, as settings spell them (HOST:PORT) and as gRPC reports peers."""

from __future__ import annotations

import ipaddress


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` into its parts; raises ValueError with the reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])
        return host[1:-1], port
    if not host or ":" in host:
        raise ValueError(f"expected HOST:PORT (IPv6 in brackets), got {address!r}")
    return host, port


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string (`ipv4:10.0.0.7:5123` -> `10.0.0.7`)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer  # unix sockets and the like: the whole string names the peer
