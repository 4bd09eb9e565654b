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

import contextlib
import ipaddress
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dmp.apps.client.config import ClientConfig
    from dmp.apps.client.deps import ClientDeps
    from dmp.domain.crypto import IdentityKeys, KdfParams
    from dmp.ports.transport import ClaimSender, RecordReader, RecordWriter

__all__ = [
    "DEFAULT_DNS_PORT",
    "KDF_PROFILE_ENV",
    "NO_WRITER_REASON",
    "PUBLIC_RESOLVERS",
    "PUBLIC_RESOLVER_ADDRESSES",
    "build_claim_sender",
    "build_reader",
    "build_writer",
    "endpoint_host",
    "has_writer",
    "kdf_params",
    "node_dns_server",
    "open_deps",
    "open_intro_queue",
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

PUBLIC_RESOLVER_ADDRESSES = frozenset(a for _, a in PUBLIC_RESOLVERS)


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


# ---------------------------------------------------------------- composition


def _system_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of resolv.conf that are IP literals."""
    out: list[tuple[str, int]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                out.append(parse_resolver(parts[1].split("%")[0]))
    return out


def node_dns_server(config: ClientConfig) -> tuple[str, int] | None:
    """Where our own node answers DNS: ``local_node_dns_*``, else the TSIG server, else None."""
    if config.local_node_dns_server and config.local_node_dns_port:
        return config.local_node_dns_server, int(config.local_node_dns_port)
    if config.tsig_dns_server:
        return config.tsig_dns_server, int(config.tsig_dns_port or DEFAULT_DNS_PORT)
    return None


def build_reader(config: ClientConfig) -> RecordReader:
    """The TXT reader: the resolver pool, else ``dns_host``, else our node, else resolv.conf.

    Raises:
        ConfigError: a ``dns_resolvers`` entry is invalid, or no DNS server is known.
    """
    from dmp.adapters.dns_client import DirectReader, ResolverPool
    from dmp.apps.client.config import ConfigError

    if config.dns_resolvers:
        try:
            upstreams = [parse_resolver(e) for e in config.dns_resolvers]
        except ValueError as exc:
            raise ConfigError(f"dns_resolvers in config.yaml: {exc}") from None
        return ResolverPool(upstreams, require_dnssec=config.dnssec_required)
    if config.dns_host:
        return DirectReader(config.dns_host, int(config.dns_port or DEFAULT_DNS_PORT))
    node = node_dns_server(config)
    if node is not None:
        return DirectReader(*node)
    system = _system_nameservers()
    if not system:
        raise ConfigError("no DNS resolver configured: set dns_resolvers or dns_host")
    return ResolverPool(system, require_dnssec=config.dnssec_required)


class _NoWriter:
    """The writer when neither a TSIG key nor an endpoint is configured."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def publish(self, owner: Any, value: str, ttl: int) -> None:
        from dmp.ports.transport import PeerUnreachable

        raise PeerUnreachable(self.reason)

    async def delete(self, owner: Any, value: str | None = None) -> None:
        from dmp.ports.transport import PeerUnreachable

        raise PeerUnreachable(self.reason)


NO_WRITER_REASON = (
    "no way to publish: configure an endpoint (`dnsmesh init --endpoint URL`) "
    "or register a TSIG key (`dnsmesh tsig register`)"
)


def has_writer(config: ClientConfig) -> bool:
    """Whether the config can publish (a TSIG block or an endpoint)."""
    return bool((config.tsig_key_name and config.tsig_secret_hex) or config.endpoint)


def build_writer(config: ClientConfig, tokens_dir: Path, now: float) -> RecordWriter:
    """TSIG block ⇒ DNS UPDATE + TSIG; else HTTP bearer (explicit token, else the saved one).

    Raises:
        ConfigError: the TSIG block is malformed.
    """
    from dmp.apps.client.config import ConfigError

    if config.tsig_key_name and config.tsig_secret_hex:
        from dmp.adapters.dns_client import TsigUpdateWriter

        try:
            secret = bytes.fromhex(config.tsig_secret_hex)
        except ValueError:
            raise ConfigError("tsig_secret_hex in config.yaml is not hex") from None
        host = config.tsig_dns_server or endpoint_host(config.endpoint)
        if not host:
            raise ConfigError("tsig_dns_server is empty in config.yaml")
        zone = (config.tsig_zone or config.effective_domain).rstrip(".") + "."
        return TsigUpdateWriter(
            (host, int(config.tsig_dns_port or DEFAULT_DNS_PORT)),
            zone,
            config.tsig_key_name,
            secret,
            config.tsig_algorithm or "hmac-sha256",
        )
    if not config.endpoint:
        return _NoWriter(NO_WRITER_REASON)
    from dmp.adapters.http_client import BearerWriter

    token = config.http_token
    if not token:
        from dmp.adapters.client_state import FileTokenFiles
        from dmp.ports.client_state import ClientStateError

        try:
            saved = FileTokenFiles(tokens_dir).load(config.endpoint)
        except ClientStateError:
            saved = None
        if saved is not None and saved.is_usable(int(now)):
            token = saved.token
    return BearerWriter(config.endpoint, token or None)


def build_claim_sender(config: ClientConfig, environ: Mapping[str, str]) -> ClaimSender:
    """Un-TSIG'd claim UPDATEs; claims for our own zone go to our node when we know it.

    Raises:
        ConfigError: ``DMP_PROVIDER_DNS_PORT`` is not a port number.
    """
    import dns.name

    from dmp.adapters.dns_client import UdpClaimSender
    from dmp.apps.client.config import ConfigError

    text = environ.get("DMP_PROVIDER_DNS_PORT", "").strip()
    try:
        port = int(text) if text else DEFAULT_DNS_PORT
    except ValueError:
        raise ConfigError(f"DMP_PROVIDER_DNS_PORT={text!r} is not a port number") from None
    targets: dict[dns.name.Name, tuple[str, int]] = {}
    node = node_dns_server(config)
    if node is not None:
        for zone in {config.effective_domain, config.domain.rstrip("."), config.tsig_zone}:
            if zone:
                targets[dns.name.from_text(zone.rstrip(".") + ".")] = node
    return UdpClaimSender(port, targets=targets)


def open_intro_queue(home: Path) -> Any:
    """The intro queue and denylist in ``<home>/intros.db`` (close it after use)."""
    from dmp.adapters.client_state import SqliteIntroQueue

    return SqliteIntroQueue(home / "intros.db")


@contextlib.asynccontextmanager
async def open_deps(
    config: ClientConfig,
    keys: IdentityKeys,
    *,
    home: Path,
    tokens_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[ClientDeps]:
    """Build :class:`ClientDeps` with the concrete adapters; closes them on exit.

    Args:
        config: the loaded configuration (changes are saved to ``home``).
        keys: the unlocked identity.
        home: the config home (state files live beside ``config.yaml``).
        tokens_dir: the tokens home.
        environ: the environment (``os.environ`` when None).

    Raises:
        ConfigError: the configuration cannot be turned into adapters.
    """
    import random

    from dmp.adapters.client_state import (
        FileTokenFiles,
        JsonReplayCache,
        SqliteIntroQueue,
        SqlitePrekeyStore,
    )
    from dmp.adapters.clock import SystemClock
    from dmp.apps.client.config import save_config
    from dmp.apps.client.deps import ClientDeps

    env = os.environ if environ is None else environ
    clock = SystemClock()
    writer = build_writer(config, tokens_dir, clock.now())
    prekeys = SqlitePrekeyStore(home / "prekeys.db")
    intros = SqliteIntroQueue(home / "intros.db")
    deps = ClientDeps(
        config=config,
        keys=keys,
        clock=clock,
        reader=build_reader(config),
        writer=writer,
        claim_sender=build_claim_sender(config, env),
        replay=JsonReplayCache(home / "replay_cache.json"),
        prekeys=prekeys,
        intros=intros,
        tokens=FileTokenFiles(tokens_dir),
        rng=random.SystemRandom(),
        persist_config=lambda cfg: save_config(home, cfg),
    )
    try:
        yield deps
    finally:
        aclose = getattr(writer, "aclose", None)
        if aclose is not None:
            await aclose()
        prekeys.close()
        intros.close()
