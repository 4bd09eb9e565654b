"""Node configuration: DMP_* variables and CLI flags to a frozen :class:`NodeConfig`.

Layer: apps (edge). Every variable the reference node reads for this role
keeps its name and default (behaviour.md §c); a few are ours (marked *dmp*
below). :func:`load_config` validates everything up front: a bad value raises
:class:`ConfigError`, whose text is one line naming the variable (and the flag
when the value came from the command line), so the daemon never starts half
configured. Precedence, lowest first: built-in default, environment,
``--dev`` presets, command-line flags.

Rules:
- An empty variable (``DMP_X=``) counts as unset, as in docker env files.
- Booleans accept ``1/true/yes/on`` and ``0/false/no/off`` (any case);
  anything else is an error rather than a silent "false".
- Rates are requests per second (``5/3600`` fraction syntax accepted);
  ``0`` turns a limit off. Durations are seconds, or ``N`` plus one of
  ``s m h d w``.
- ``DMP_DB_PATH=:memory:`` selects the in-memory store (tests, demos).

Differences from the reference, on purpose:
- ``DMP_DNS_RATE``/``DMP_DNS_BURST`` default to 2000 q/s and 10000 per
  source IP (reference: 50/200). A busy recursive resolver funnels every one
  of its clients through one source address; at 50 q/s it would be throttled
  within seconds and its users would see timeouts. 2000 q/s per source is
  still a small fraction of what the node answers, so one source cannot
  starve the others, and ``DMP_DNS_RATE=50 DMP_DNS_BURST=200`` restores the
  reference behaviour.
- Contradictions the reference silently ignores are errors here:
  registration without multi-tenant auth or a node hostname, DNS UPDATE
  without a served zone, loose and tight TSIG scope together, legacy auth
  without an operator token.
- ``DMP_SYNC_OPERATOR_SPK`` must be 64 hex digits (the reference starts
  with a malformed one).
- Anti-entropy: ``DMP_SYNC_PEERS`` must be a comma list of ``http://`` or
  ``https://`` base URLs (the reference accepts anything and fails later);
  the pulling worker runs when ``DMP_SYNC_PEER_TOKEN`` and at least one peer
  (other than ``DMP_SYNC_SELF_ENDPOINT``) are set. There is no
  ``DMP_CLUSTER_FILE``: the peer set starts as ``DMP_SYNC_PEERS`` and is
  replaced by manifest gossip; ``DMP_NODE_ID`` names this node in a manifest.
- Reference variables this node does not implement (``DMP_CLUSTER_FILE``,
  ``DMP_HEARTBEAT_*``) are listed in
  :attr:`NodeConfig.unimplemented_variables` when set, and the daemon logs
  them in one warning line at startup.
- ``DMP_HTTP_TRUSTED_PROXIES`` (*dmp*): comma list of proxy addresses or
  CIDRs whose ``X-Forwarded-For`` is honoured for the per-IP HTTP limit.
- ``DMP_DB_SYNCHRONOUS`` (*dmp*): ``NORMAL`` (default, the reference's own
  level) commits into the WAL without an fsync: an acknowledged write
  survives a crash or SIGKILL of the node, and the WAL is fsynced at least
  every second, so an OS crash or power loss loses at most the last second of
  writes (the reference has no bound in time). ``FULL`` fsyncs every commit
  before acknowledging it, so nothing acknowledged is lost even to power
  loss; group commit shares one fsync among writes that arrive together, so
  FULL costs most on a single serial writer (~2.5x slower serial TSIG
  UPDATEs here, see bench/node.py). TSIG keys are always committed FULL.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal, TypeVar, cast

import attrs

__all__ = [
    "AUTH_MODES",
    "FLAGS",
    "LOG_FORMATS",
    "UNIMPLEMENTED_VARIABLES",
    "ConfigError",
    "NodeConfig",
    "load_config",
    "sibling_path",
    "store_paths",
    "unimplemented_variables",
]

AuthMode = Literal["open", "legacy", "multi-tenant"]
LogFormat = Literal["text", "json"]
DbPath = Path | Literal[":memory:"]
AUTH_MODES: Final = ("open", "legacy", "multi-tenant")
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MEMORY: Final = ":memory:"
DEV_DB: Final = Path("var") / "dmp.db"
LOOPBACK: Final = "127.0.0.1"

#: Command-line flag for each variable that has one (``dmp-node --help``).
FLAGS: Final[Mapping[str, str]] = {
    "DMP_DB_PATH": "--db-path",
    "DMP_DNS_HOST": "--dns-host",
    "DMP_DNS_PORT": "--dns-port",
    "DMP_HTTP_HOST": "--http-host",
    "DMP_HTTP_PORT": "--http-port",
    "DMP_DOMAIN": "--domain",
    "DMP_SERVED_ZONE": "--served-zone",
    "DMP_NODE_HOSTNAME": "--node-hostname",
    "DMP_LOG_LEVEL": "--log-level",
    "DMP_LOG_FORMAT": "--log-format",
    "DMP_AUTH_MODE": "--auth-mode",
    "DMP_TOKEN_DB_PATH": "--token-db-path",
    "DMP_TSIG_DB_PATH": "--tsig-db-path",
    "DMP_DNS_UPDATE_ENABLED": "--dns-update",
    "DMP_REGISTRATION_ENABLED": "--registration",
    "DMP_CLEANUP_INTERVAL": "--cleanup-interval",
}

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration value is missing, malformed or contradicts another.

    Attributes:
        variable: the DMP_* variable (with its flag, when given on the command line).
        message: what is wrong, one line.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


@attrs.frozen(kw_only=True)
class NodeConfig:
    """Everything the node needs to start, validated (behaviour.md §c).

    Paths are as given (relative paths resolve against the working
    directory at start). ``None`` for an optional name means "not set".
    """

    # storage
    db_path: DbPath = Path("/var/lib/dmp/dmp.db")
    db_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    cleanup_interval_s: float = 60.0
    # DNS
    dns_host: str = "0.0.0.0"
    dns_port: int = 5353
    dns_ttl: int = 60
    dns_rate: float = 2000.0
    dns_burst: float = 10000.0
    dns_max_concurrency: int = 128
    apex_a: tuple[str, ...] = ()
    apex_aaaa: tuple[str, ...] = ()
    apex_ns: tuple[str, ...] = ()
    apex_soa_rname: str | None = None
    # HTTP
    http_host: str = "0.0.0.0"
    http_port: int = 8053
    http_rate: float = 10.0
    http_burst: float = 100.0
    http_max_concurrency: int = 64
    http_trusted_proxies: tuple[str, ...] = ()
    # auth
    operator_token: str | None = attrs.field(default=None, repr=False)
    sync_peer_token: str | None = attrs.field(default=None, repr=False)
    sync_operator_spk: bytes | None = None
    cluster_base_domain: str | None = None
    # anti-entropy (pull side)
    sync_peers: tuple[str, ...] = ()
    sync_interval_s: float = 10.0
    sync_self_endpoint: str | None = None
    node_id: str | None = None
    auth_mode: AuthMode = "open"
    allow_open_public_bind: bool = False
    token_db_path: DbPath | None = None
    token_db_explicit: bool = False
    # record caps
    max_ttl: int = 86400
    max_value_bytes: int = 2048
    max_values_per_name: int = 64
    # zone and identity
    domain: str | None = None
    served_zone: str | None = None
    node_hostname: str | None = None
    claim_provider_zone: str | None = None
    # DNS UPDATE / TSIG
    dns_update_enabled: bool = False
    tsig_db_path: DbPath | None = None
    tsig_loose_scope: bool = False
    tsig_tight_scope: bool = False
    # registration
    registration_enabled: bool = False
    registration_allowlist: tuple[str, ...] = ()
    registration_token_ttl_s: int = 7_776_000
    registration_issued_rate: float = 10.0
    registration_issued_burst: float = 50.0
    registration_endpoint_rate: float = 5 / 3600
    registration_endpoint_burst: float = 5.0
    # claims (un-TSIG'd UPDATE path)
    claim_provider: bool = True
    receiver_claim_notifications: bool = False
    claim_max_ttl: int = 86400
    claim_rate: float = 0.5
    claim_burst: float = 30.0
    # logging and mode
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    dev: bool = False
    unimplemented_variables: tuple[str, ...] = ()

    @property
    def in_memory(self) -> bool:
        """True when the record store is the in-memory one."""
        return self.db_path == MEMORY

    @property
    def claim_provider_active(self) -> bool:
        """The M8.3 claim-provider role is on and can work (zone + UPDATE)."""
        return self.claim_provider and self.served_zone is not None and self.dns_update_enabled

    @property
    def sync_worker_enabled(self) -> bool:
        """The anti-entropy worker runs: a peer token and at least one peer."""
        return bool(self.sync_peer_token) and bool(self.sync_peers)

    @property
    def token_store_needed(self) -> bool:
        """A bearer-token store is opened (multi-tenant, or DMP_TOKEN_DB_PATH set)."""
        return self.auth_mode == "multi-tenant" or self.token_db_explicit


# ---------------------------------------------------------------- sources


class _Source:
    """Looks variables up in the overrides (flags), the dev presets, then the environment."""

    def __init__(
        self,
        environ: Mapping[str, str],
        overrides: Mapping[str, str],
        presets: Mapping[str, str],
    ) -> None:
        self.environ = environ
        self.overrides = overrides
        self.presets = presets

    def raw(self, var: str, *aliases: str) -> tuple[str, str] | None:
        """``(value, label)`` for the first non-empty source, or None."""
        if self.overrides.get(var, "") != "":
            flag = FLAGS.get(var)
            label = f"{flag} ({var})" if flag else var
            return self.overrides[var], label
        if self.presets.get(var, "") != "":
            return self.presets[var], f"--dev ({var})"
        for name in (var, *aliases):
            value = self.environ.get(name, "")
            if value.strip() != "":
                return value, name
        return None

    def get(self, var: str, parse: Callable[[str, str], T], default: T, *aliases: str) -> T:
        found = self.raw(var, *aliases)
        if found is None:
            return default
        value, label = found
        return parse(value.strip(), label)

    def given(self, var: str, *aliases: str) -> bool:
        return self.raw(var, *aliases) is not None

    def label(self, var: str, *aliases: str) -> str:
        found = self.raw(var, *aliases)
        return found[1] if found else var


# ---------------------------------------------------------------- value parsers

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _bool(value: str, label: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(label, f"expected one of 1/true/yes/on or 0/false/no/off, got {value!r}")


def _int_in(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(value: str, label: str) -> int:
        try:
            n = int(value, 10)
        except ValueError:
            raise ConfigError(label, f"expected an integer, got {value!r}") from None
        if not lo <= n <= hi:
            raise ConfigError(label, f"must be between {lo} and {hi}, got {n}")
        return n

    return parse


_port = _int_in(0, 65535)


def _nonneg_float(value: str, label: str) -> float:
    try:
        if "/" in value:
            num, _, den = value.partition("/")
            x = float(num) / float(den)
        else:
            x = float(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(label, f"expected a non-negative number, got {value!r}") from None
    if not x >= 0 or x == float("inf"):
        raise ConfigError(label, f"expected a non-negative number, got {value!r}")
    return x


def _positive_float(value: str, label: str) -> float:
    x = _nonneg_float(value, label)
    if x <= 0:
        raise ConfigError(label, f"must be greater than 0, got {value!r}")
    return x


def _duration(value: str, label: str) -> int:
    m = _DURATION.match(value.lower())
    if not m:
        raise ConfigError(label, f"expected seconds or N[smhdw] (e.g. 90d), got {value!r}")
    n = int(m.group(1)) * _UNITS[m.group(2)]
    if n <= 0:
        raise ConfigError(label, f"must be greater than 0, got {value!r}")
    return n


def _dns_name(value: str, label: str) -> str:
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(lab) for lab in name.split(".")):
        raise ConfigError(label, f"expected a DNS name such as mesh.example.com, got {value!r}")
    return name


def _host(value: str, label: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return _dns_name(value, label)
    except ConfigError:
        raise ConfigError(
            label, f"expected an IP address or host name to bind, got {value!r}"
        ) from None


def _ip_list(version: int) -> Callable[[str, str], tuple[str, ...]]:
    def parse(value: str, label: str) -> tuple[str, ...]:
        out = []
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            try:
                addr = ipaddress.ip_address(item)
            except ValueError:
                addr = None
            if addr is None or addr.version != version:
                raise ConfigError(label, f"expected IPv{version} addresses, got {item!r}")
            out.append(str(addr))
        return tuple(out)

    return parse


def _name_list(value: str, label: str) -> tuple[str, ...]:
    return tuple(_dns_name(v, label) for v in value.split(",") if v.strip())


def _networks(value: str, label: str) -> tuple[str, ...]:
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(label, f"expected IP addresses or CIDRs, got {item!r}") from None
    return tuple(out)


def _choice(
    options: tuple[str, ...], aliases: Mapping[str, str] | None = None
) -> Callable[[str, str], str]:
    def parse(value: str, label: str) -> str:
        low = value.lower()
        low = (aliases or {}).get(low, low)
        if low.upper() in options:
            low = low.upper()
        if low not in options:
            raise ConfigError(label, f"expected one of {', '.join(options)}, got {value!r}")
        return low

    return parse


def _log_level(value: str, label: str) -> str:
    return _choice(
        LOG_LEVELS, {"warn": "WARNING", "fatal": "CRITICAL"} | {lv.lower(): lv for lv in LOG_LEVELS}
    )(value, label)


def _text(value: str, label: str) -> str:
    return value


def _ed25519_key(value: str, label: str) -> bytes:
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(label, f"expected 64 hex digits (an Ed25519 public key), got {value!r}")
    return key


def _peer_url(item: str, label: str) -> str:
    """One ``http(s)://host[:port][/path]`` base URL, without its trailing slash."""
    try:
        parts = urllib.parse.urlsplit(item)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if (
        parts is None
        or not port_ok
        or parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(ch.isspace() for ch in item)
    ):
        raise ConfigError(
            label,
            f"expected http:// or https:// base URLs such as http://10.0.0.2:8053, got {item!r}",
        )
    return item.rstrip("/")


def _peer_urls(value: str, label: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in (v.strip() for v in value.split(",")):
        if item:
            url = _peer_url(item, label)
            if url not in out:
                out.append(url)
    return tuple(out)


#: Node variables the reference reads that this node does not (behaviour.md §c);
#: a name ending in ``_`` stands for every variable with that prefix.
UNIMPLEMENTED_VARIABLES: Final = (
    "DMP_CLUSTER_FILE",
    "DMP_CLUSTER_MANIFEST_PATH",
    "DMP_HEARTBEAT_",
)


def unimplemented_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The reference node's variables set (non-empty) in ``environ`` that this node ignores, sorted."""
    found = set()
    for name, value in environ.items():
        if not value.strip():
            continue
        for known in UNIMPLEMENTED_VARIABLES:
            if name == known or (known.endswith("_") and name.startswith(known)):
                found.add(name)
    return tuple(sorted(found))


def _path(value: str, label: str) -> DbPath:
    if value == MEMORY:
        return MEMORY
    if "\x00" in value:
        raise ConfigError(label, "path contains a NUL byte")
    return Path(value)


def sibling_path(db_path: Path, tag: str) -> Path:
    """``/var/lib/dmp/dmp.db`` + ``tokens`` -> ``/var/lib/dmp/dmp_tokens.db`` (behaviour.md §c)."""
    return db_path.with_name(f"{db_path.stem}_{tag}{db_path.suffix}")


def store_paths(environ: Mapping[str, str] | None = None) -> dict[str, DbPath]:
    """Where the node keeps its databases, from the environment only (for ``dmp-node admin``).

    Only ``DMP_DB_PATH``, ``DMP_TOKEN_DB_PATH`` and ``DMP_TSIG_DB_PATH`` are
    read, so the admin commands work whatever the rest of the configuration.

    Returns:
        ``{"records": ..., "tokens": ..., "tsig": ...}``.

    Raises:
        ConfigError: a path is malformed.
    """
    src = _Source(os.environ if environ is None else environ, {}, {})
    default_db: DbPath = Path("/var/lib/dmp/dmp.db")
    db = src.get("DMP_DB_PATH", _path, default_db)
    token_default: DbPath = MEMORY
    tsig_default: DbPath = MEMORY
    if db != MEMORY:
        token_default = sibling_path(Path(db), "tokens")
        tsig_default = sibling_path(Path(db), "tsig")
    return {
        "records": db,
        "tokens": src.get("DMP_TOKEN_DB_PATH", _path, token_default),
        "tsig": src.get("DMP_TSIG_DB_PATH", _path, tsig_default),
    }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- loader


def load_config(
    environ: Mapping[str, str] | None = None,
    argv_overrides: Mapping[str, str] | None = None,
    *,
    dev: bool = False,
) -> NodeConfig:
    """Build and validate the node configuration.

    Args:
        environ: the process environment (``os.environ`` when None).
        argv_overrides: values from command-line flags, keyed by the variable
            they override (``{"DMP_DNS_PORT": "0"}``); they win over everything.
        dev: ``--dev``: bind DNS and HTTP to 127.0.0.1 and keep the sqlite
            store under ``./var/`` unless a flag says otherwise.

    Returns:
        The validated :class:`NodeConfig`.

    Raises:
        ConfigError: a value is malformed or two settings contradict each other.
    """
    env = os.environ if environ is None else environ
    presets: dict[str, str] = {}
    if dev:
        presets = {
            "DMP_DNS_HOST": LOOPBACK,
            "DMP_HTTP_HOST": LOOPBACK,
            "DMP_DB_PATH": str(DEV_DB),
        }
    src = _Source(env, argv_overrides or {}, presets)

    default_db: DbPath = Path("/var/lib/dmp/dmp.db")
    db_path = src.get("DMP_DB_PATH", _path, default_db)
    dns_host = src.get("DMP_DNS_HOST", _host, "0.0.0.0")
    http_host = src.get("DMP_HTTP_HOST", _host, "0.0.0.0")

    domain = src.get("DMP_DOMAIN", _dns_name, None)
    explicit_zone = src.get("DMP_SERVED_ZONE", _dns_name, None)
    claim_zone = src.get("DMP_CLAIM_PROVIDER_ZONE", _dns_name, None)
    cluster_base = src.get("DMP_CLUSTER_BASE_DOMAIN", _dns_name, None)
    node_hostname = src.get("DMP_NODE_HOSTNAME", _dns_name, None)
    served_zone = explicit_zone or claim_zone or cluster_base or domain or node_hostname

    operator_token = src.get("DMP_OPERATOR_TOKEN", _text, None, "DMP_HTTP_TOKEN")
    auth_default = "legacy" if operator_token else "open"
    auth_mode = src.get(
        "DMP_AUTH_MODE",
        _choice(AUTH_MODES, {"multi_tenant": "multi-tenant", "multitenant": "multi-tenant"}),
        auth_default,
    )
    allow_open_public = src.get("DMP_ALLOW_OPEN_PUBLIC_BIND", _bool, False)

    token_db_explicit = src.given("DMP_TOKEN_DB_PATH")
    default_token_db: DbPath = MEMORY
    default_tsig_db: DbPath = MEMORY
    if db_path != MEMORY:
        default_token_db = sibling_path(Path(db_path), "tokens")
        default_tsig_db = sibling_path(Path(db_path), "tsig")
    token_db = src.get("DMP_TOKEN_DB_PATH", _path, default_token_db)
    tsig_db = src.get("DMP_TSIG_DB_PATH", _path, default_tsig_db)

    sync_self = src.get("DMP_SYNC_SELF_ENDPOINT", _peer_url, None)
    sync_peers = tuple(
        url
        for url in src.get("DMP_SYNC_PEERS", _peer_urls, ())
        if sync_self is None or url.lower() != sync_self.lower()
    )

    cfg = NodeConfig(
        db_path=db_path,
        db_synchronous=cast(
            Literal["FULL", "NORMAL"],
            src.get("DMP_DB_SYNCHRONOUS", _choice(("FULL", "NORMAL")), "NORMAL"),
        ),
        cleanup_interval_s=src.get("DMP_CLEANUP_INTERVAL", _positive_float, 60.0),
        dns_host=dns_host,
        dns_port=src.get("DMP_DNS_PORT", _port, 5353),
        dns_ttl=src.get("DMP_DNS_TTL", _int_in(0, 2**31 - 1), 60),
        dns_rate=src.get("DMP_DNS_RATE", _nonneg_float, 2000.0),
        dns_burst=src.get("DMP_DNS_BURST", _nonneg_float, 10000.0),
        dns_max_concurrency=src.get("DMP_DNS_MAX_CONCURRENCY", _int_in(1, 1_000_000), 128),
        apex_a=src.get("DMP_DNS_APEX_A", _ip_list(4), ()),
        apex_aaaa=src.get("DMP_DNS_APEX_AAAA", _ip_list(6), ()),
        apex_ns=src.get("DMP_DNS_APEX_NS", _name_list, ()),
        apex_soa_rname=src.get("DMP_DNS_APEX_SOA_RNAME", _dns_name, None),
        http_host=http_host,
        http_port=src.get("DMP_HTTP_PORT", _port, 8053),
        http_rate=src.get("DMP_HTTP_RATE", _nonneg_float, 10.0),
        http_burst=src.get("DMP_HTTP_BURST", _nonneg_float, 100.0),
        http_max_concurrency=src.get("DMP_HTTP_MAX_CONCURRENCY", _int_in(1, 1_000_000), 64),
        http_trusted_proxies=src.get("DMP_HTTP_TRUSTED_PROXIES", _networks, ()),
        operator_token=operator_token,
        sync_peer_token=src.get("DMP_SYNC_PEER_TOKEN", _text, None),
        sync_operator_spk=src.get("DMP_SYNC_OPERATOR_SPK", _ed25519_key, None),
        cluster_base_domain=cluster_base,
        sync_peers=sync_peers,
        sync_interval_s=src.get(
            "DMP_SYNC_INTERVAL", _positive_float, 10.0, "DMP_SYNC_INTERVAL_SECONDS"
        ),
        sync_self_endpoint=sync_self,
        node_id=src.get("DMP_NODE_ID", _text, None),
        auth_mode=auth_mode,  # type: ignore[arg-type]
        allow_open_public_bind=allow_open_public,
        token_db_path=token_db,
        token_db_explicit=token_db_explicit,
        max_ttl=src.get("DMP_MAX_TTL", _int_in(1, 2**31 - 1), 86400),
        max_value_bytes=src.get("DMP_MAX_VALUE_BYTES", _int_in(1, 65535), 2048),
        max_values_per_name=src.get("DMP_MAX_VALUES_PER_NAME", _int_in(1, 1_000_000), 64),
        domain=domain,
        served_zone=served_zone,
        node_hostname=node_hostname,
        claim_provider_zone=claim_zone,
        dns_update_enabled=src.get("DMP_DNS_UPDATE_ENABLED", _bool, False),
        tsig_db_path=tsig_db,
        tsig_loose_scope=src.get("DMP_TSIG_LOOSE_SCOPE", _bool, False),
        tsig_tight_scope=src.get("DMP_TSIG_TIGHT_SCOPE", _bool, False),
        registration_enabled=src.get("DMP_REGISTRATION_ENABLED", _bool, False),
        registration_allowlist=src.get("DMP_REGISTRATION_ALLOWLIST", _name_list, ()),
        registration_token_ttl_s=src.get(
            "DMP_REGISTRATION_TOKEN_TTL_SECONDS", _duration, 7_776_000
        ),
        registration_issued_rate=src.get(
            "DMP_REGISTRATION_ISSUED_RATE_PER_SEC", _nonneg_float, 10.0
        ),
        registration_issued_burst=src.get("DMP_REGISTRATION_ISSUED_BURST", _nonneg_float, 50.0),
        registration_endpoint_rate=src.get(
            "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC", _nonneg_float, 5 / 3600
        ),
        registration_endpoint_burst=src.get("DMP_REGISTRATION_ENDPOINT_BURST", _nonneg_float, 5.0),
        claim_provider=src.get("DMP_CLAIM_PROVIDER", _bool, True),
        receiver_claim_notifications=src.get("DMP_RECEIVER_CLAIM_NOTIFICATIONS", _bool, False),
        claim_max_ttl=src.get("DMP_CLAIM_MAX_TTL", _int_in(1, 2**31 - 1), 86400),
        claim_rate=src.get("DMP_CLAIM_RATE_PER_USER_PER_SEC", _nonneg_float, 0.5),
        claim_burst=src.get("DMP_CLAIM_RATE_BURST", _nonneg_float, 30.0),
        log_level=src.get("DMP_LOG_LEVEL", _log_level, "INFO"),
        log_format=src.get("DMP_LOG_FORMAT", _choice(LOG_FORMATS), "text"),  # type: ignore[arg-type]
        dev=dev,
        unimplemented_variables=unimplemented_variables(env),
    )
    _check_consistency(cfg, src)
    return cfg


def _check_consistency(cfg: NodeConfig, src: _Source) -> None:
    """Cross-field rules; each error names the variable to change."""
    if (
        cfg.auth_mode == "open"
        and not _is_loopback(cfg.http_host)
        and not cfg.allow_open_public_bind
    ):
        label = src.label("DMP_AUTH_MODE") if src.given("DMP_AUTH_MODE") else "DMP_AUTH_MODE"
        raise ConfigError(
            label,
            f"open auth (anyone may write) on non-loopback DMP_HTTP_HOST={cfg.http_host} is "
            "refused; set DMP_OPERATOR_TOKEN, bind to 127.0.0.1, "
            "or set DMP_ALLOW_OPEN_PUBLIC_BIND=1",
        )
    if cfg.auth_mode == "legacy" and not cfg.operator_token:
        raise ConfigError(src.label("DMP_AUTH_MODE"), "legacy auth needs DMP_OPERATOR_TOKEN")
    if cfg.tsig_loose_scope and cfg.tsig_tight_scope:
        raise ConfigError(
            "DMP_TSIG_TIGHT_SCOPE", "cannot be combined with DMP_TSIG_LOOSE_SCOPE; choose one"
        )
    if cfg.dns_update_enabled and cfg.served_zone is None:
        raise ConfigError(
            src.label("DMP_DNS_UPDATE_ENABLED"),
            "needs a served zone: set DMP_SERVED_ZONE (or DMP_DOMAIN)",
        )
    if cfg.receiver_claim_notifications and cfg.served_zone is None:
        raise ConfigError(
            "DMP_RECEIVER_CLAIM_NOTIFICATIONS",
            "needs a served zone: set DMP_SERVED_ZONE (or DMP_DOMAIN)",
        )
    if cfg.registration_enabled:
        label = src.label("DMP_REGISTRATION_ENABLED")
        if cfg.auth_mode != "multi-tenant":
            raise ConfigError(label, "needs DMP_AUTH_MODE=multi-tenant")
        if cfg.node_hostname is None:
            raise ConfigError(label, "needs DMP_NODE_HOSTNAME (it is bound into signatures)")
    if cfg.apex_soa_rname is not None and not cfg.apex_ns:
        raise ConfigError("DMP_DNS_APEX_SOA_RNAME", "needs DMP_DNS_APEX_NS for the SOA MNAME")
    if (cfg.apex_a or cfg.apex_aaaa or cfg.apex_ns) and cfg.served_zone is None:
        raise ConfigError(
            "DMP_DNS_APEX_NS" if cfg.apex_ns else "DMP_DNS_APEX_A",
            "apex records need a served zone: set DMP_SERVED_ZONE (or DMP_DOMAIN)",
        )
