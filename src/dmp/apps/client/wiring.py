"""The client's composition root: concrete adapters from a :class:`ClientConfig` (layer: apps).

This module is the ONLY place where the ``dnsmesh`` CLI chooses concrete
client adapters (house style §3.1); the use cases see ports only.

* Writer (behaviour.md §a, "writer selection"): a TSIG block in the config
  (``tsig_key_name`` + ``tsig_secret_hex``) ⇒ :class:`TsigUpdateWriter` to
  ``tsig_dns_server:tsig_dns_port``; otherwise the HTTP bearer writer against
  ``endpoint`` with the explicit ``http_token`` or the token saved for the
  endpoint's host under ``<tokens-home>/<host>.json``.
* Reader: a :class:`ResolverPool` over ``dns_resolvers`` (IP literals with
  optional ports); with no resolvers, direct reads from the node
  (``local_node_dns_server/port``, else ``dns_host:dns_port``).
* Claims: un-TSIG'd UPDATEs; a claim for our own zone goes to the node we
  already know (``local_node_dns_*`` or the TSIG server) rather than to the
  zone's apex host. ``DMP_PROVIDER_DNS_PORT`` sets the port for other zones.

Also here, because they are the CLI's only direct network calls:
:func:`probe_node_dns` (``init`` / ``doctor``) and :func:`probe_resolver`
(``resolvers discover``).

KDF parameters: the real Argon2id parameters (wire.md §3.1) unless
``DMP_KDF_PROFILE=test``, which selects very cheap parameters. **Test-only**:
identities derived with it are different keys and cannot talk to anyone
using the real parameters.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmp.domain.crypto import KdfParams

__all__ = [
    "DEFAULT_DNS_PORT",
    "KDF_PROFILE_ENV",
    "PUBLIC_RESOLVERS",
    "endpoint_host",
    "kdf_params",
    "parse_resolver",
    "parse_resolver_list",
    "probe_node_dns",
    "probe_resolver",
]

DEFAULT_DNS_PORT = 53
KDF_PROFILE_ENV = "DMP_KDF_PROFILE"

#: Well-known public resolvers probed by ``resolvers discover`` (name, address).
PUBLIC_RESOLVERS: tuple[tuple[str, str], ...] = (
    ("Cloudflare", "1.1.1.1"),
    ("Cloudflare", "1.0.0.1"),
    ("Google", "8.8.8.8"),
    ("Google", "8.8.4.4"),
    ("Quad9", "9.9.9.9"),
    ("Quad9", "149.112.112.112"),
    ("OpenDNS", "208.67.222.222"),
    ("OpenDNS", "208.67.220.220"),
)


def kdf_params(environ: Mapping[str, str] | None = None) -> KdfParams:
    """The Argon2id parameters: real ones, or the test-only profile (``DMP_KDF_PROFILE=test``).

    Raises:
        ValueError: ``DMP_KDF_PROFILE`` has an unknown value.
    """
    from dmp.domain.crypto import DEFAULT_KDF_PARAMS, KdfParams

    env = os.environ if environ is None else environ
    profile = env.get(KDF_PROFILE_ENV, "").strip().lower()
    if profile in ("", "default", "reference"):
        return DEFAULT_KDF_PARAMS
    if profile == "test":
        return KdfParams(time_cost=1, memory_cost_kib=8, parallelism=1, hash_len=32)
    raise ValueError(f"{KDF_PROFILE_ENV}={profile!r}: expected 'test' or unset")


# ---------------------------------------------------------------- resolvers


def parse_resolver(entry: str, default_port: int = DEFAULT_DNS_PORT) -> tuple[str, int]:
    """``IP``, ``IP:port``, ``[IPv6]:port`` or a bare IPv6 literal to ``(ip, port)``.

    Raises:
        ValueError: a hostname, a malformed literal or a port outside 1-65535.
    """
    text = entry.strip()
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"resolver entry {entry!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"resolver entry {entry!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"resolver entry {entry!r}: {host!r} is not an IPv4 or IPv6 address "
            "(hostnames are not accepted)"
        ) from None
    port = default_port
    if port_text:
        if not port_text.isdigit():
            raise ValueError(f"resolver entry {entry!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"resolver entry {entry!r}: port {port} is outside 1-65535")
    return str(ip), port


def parse_resolver_list(text: str) -> list[str]:
    """Validate a comma-separated ``--dns-resolvers`` value; returns the entries as given.

    Raises:
        ValueError: an entry is invalid, or the list is empty.
    """
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise ValueError("no resolver given")
    for entry in entries:
        parse_resolver(entry)
    return entries


# ---------------------------------------------------------------- probes


async def probe_node_dns(
    host: str, ports: tuple[int, ...], leg_timeout_s: float = 1.0
) -> int | None:
    """Find the port on which a dmp node answers DNS at ``host``.

    Sends an un-TSIG'd UPDATE for ``_dmp-probe.<host>`` to each port in turn. A
    dmp node refuses it (REFUSED or NOTAUTH): that port is returned. Nothing
    (timeout, unreachable, another rcode) on every port: ``None``.
    """
    import dns.name
    import dns.rcode

    from dmp.adapters.dns_client import build_txt_update, exchange
    from dmp.ports.transport import TransportError

    label = host.strip("[]").replace(":", "-") or "localhost"
    zone = dns.name.from_text(f"_dmp-probe.{label}")
    for port in ports:
        update = build_txt_update(zone, zone, add=("dmp-probe", 60))
        try:
            reply = await exchange(update, host, port, leg_timeout_s=leg_timeout_s)
        except TransportError:
            continue
        if reply.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            return port
    return None


async def probe_resolver(address: str, leg_timeout_s: float) -> float:
    """Ask ``address`` (``ip[:port]``) for ``google.com`` TXT; returns the latency in seconds.

    Raises:
        TransportError: no usable answer.
        ValueError: ``address`` is not an IP literal.
    """
    import time

    import dns.name
    import dns.rcode

    from dmp.adapters.dns_client import build_txt_query, exchange
    from dmp.ports.transport import PeerRejected

    host, port = parse_resolver(address)
    started = time.perf_counter()
    reply = await exchange(
        build_txt_query(dns.name.from_text("google.com")), host, port, leg_timeout_s=leg_timeout_s
    )
    if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
        raise PeerRejected(f"{address}: {dns.rcode.to_text(reply.rcode())}")
    return time.perf_counter() - started


def endpoint_host(endpoint: str) -> str:
    """The host part of an endpoint URL (no scheme, port or path), lowercased."""
    from urllib.parse import urlsplit

    text = endpoint if "://" in endpoint else f"https://{endpoint}"
    return (urlsplit(text).hostname or "").lower()
