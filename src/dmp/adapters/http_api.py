"""The node's HTTP API: a Quart app factory and a hypercorn runner (layer: adapters).

Endpoints (behaviour.md §d; wire.md §8, §10):

* ``GET /health``: ``{"status": "ok"}``, or 503 ``{"status": "degraded", "store": ...}``.
* ``GET /metrics``: Prometheus text from a per-app registry (operator bearer
  when an operator token is configured).
* ``GET /stats``: ``{"records": N}``.
* ``GET /v1/registration/challenge``, ``POST /v1/registration/confirm``,
  ``POST /v1/registration/tsig-confirm``: :mod:`dmp.apps.node.registration`.
* ``GET/POST/DELETE /v1/records/{name}``: read (operator bearer when
  configured), append-publish, delete.
* ``GET /v1/sync/digest``, ``POST /v1/sync/pull``,
  ``GET /v1/sync/cluster-manifest``: anti-entropy between
  cluster peers (wire.md §9; shapes in :mod:`dmp.adapters.http_sync`). Only
  ``Authorization: Bearer <DMP_SYNC_PEER_TOKEN>`` is let in (403
  ``forbidden`` otherwise, always when no peer token is configured); they
  share the records routes' per-IP bucket, checked first.

Auth modes: ``open`` (anyone writes), ``legacy`` (operator token writes),
``multi-tenant`` (operator token, or a bearer token within its scope class;
see :mod:`dmp.ports.tokens`). Every error is JSON ``{"error": ...}``.
Request bodies are capped (413). Records routes share a per-client-IP token
bucket (``DMP_HTTP_RATE``/``DMP_HTTP_BURST``); the three registration routes
share another (``DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC``/``_BURST``). The
client IP is the TCP peer, or, when the peer is a configured trusted proxy,
the right-most ``X-Forwarded-For`` address that is not itself a trusted proxy.

A ``201`` is sent only after ``await store.put`` has returned, and the store
commits before returning: an acknowledged write is durable.

Nothing here is global: :func:`create_app` takes every dependency, and
:func:`serve_http` runs hypercorn inside the caller's event loop.

Serving cost (one POST over a fresh connection, the reference CLI's
pattern): hypercorn with h11 takes ~250 µs of CPU, Quart ~90 µs, the
handlers ~20 µs, the store the rest. What is trimmed here, each measured:
a connection the client closed is released at once and its keep-alive timer
is a loop timer, not tasks (:class:`_Connection`); a request runs in the task
hypercorn made for it (:class:`_HttpConnection`); the body deadline and small
responses need no extra task; request counters are cached label children
(:class:`_Gate`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal

import anyio
import attrs
import quart
from anyio.abc import TaskStatus
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import AsyncioSingleTask
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event as HypercornEvent
from hypercorn.events import Updated
from hypercorn.typing import TaskGroup as HypercornTaskGroup
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from quart.asgi import ASGIHTTPConnection
from werkzeug.exceptions import HTTPException, RequestTimeout

from dmp.adapters.http_sync import (
    SyncRequestError,
    cluster_manifest_body,
    digest_body,
    parse_digest_query,
    parse_pull_names,
    pull_body,
    sync_token_matches,
)
from dmp.apps.node.registration import (
    RandomBytes,
    Refused,
    Registrar,
    RegistrationSettings,
)
from dmp.domain.ratelimit import KeyedBuckets, TokenBucket
from dmp.domain.registration import token_hash
from dmp.ports.clock import Clock
from dmp.ports.store import RecordStore, StoreError, StoreFull, TsigKeyStore
from dmp.ports.tokens import (
    AuditEntry,
    AuditEvent,
    AuditLog,
    ScopeClass,
    TokenRecord,
    TokenStore,
    classify_owner,
    owner_allowed,
)

__all__ = [
    "AuthMode",
    "HttpConfig",
    "HttpConfigError",
    "NodeMetrics",
    "create_app",
    "serve_http",
]

log = logging.getLogger("dmp.http")

AuthMode = Literal["open", "legacy", "multi-tenant"]
HEALTH_PROBE_OWNER: Final = "__dmp_health_probe__"
DEFAULT_TTL: Final = 300


class HttpConfigError(ValueError):
    """The HTTP configuration is inconsistent (the node exits 2 on it)."""


@attrs.frozen(kw_only=True)
class HttpConfig:
    """Settings of the HTTP API; field names follow the DMP_* variables (behaviour.md §c).

    Attributes:
        http_host, http_port: ``DMP_HTTP_HOST``/``DMP_HTTP_PORT`` (only used
            for the open-mode public-bind check; :func:`serve_http` binds).
        http_rate, http_burst: per-IP bucket for the records routes (0: off).
        http_max_concurrency: ``DMP_HTTP_MAX_CONCURRENCY``: requests handled
            at once; beyond it a request is answered 503 at once.
        http_max_body_bytes: request body cap (413 above it; reference 16 KiB).
        http_trusted_proxies: ``DMP_HTTP_TRUSTED_PROXIES``: addresses or
            CIDRs whose ``X-Forwarded-For`` is honoured.
        operator_token: ``DMP_OPERATOR_TOKEN`` (alias ``DMP_HTTP_TOKEN``).
        sync_peer_token: ``DMP_SYNC_PEER_TOKEN``: the bearer cluster peers
            present on ``/v1/sync/*`` (unset: those routes answer 403).
        sync_operator_spk: ``DMP_SYNC_OPERATOR_SPK``: the pinned operator
            key the served cluster manifest must verify under.
        cluster_base_domain: ``DMP_CLUSTER_BASE_DOMAIN``: the manifest is
            served from ``cluster.<base>`` (none: 204).
        auth_mode: ``DMP_AUTH_MODE``; None means auto (``legacy`` with an
            operator token, else ``open``).
        allow_open_public_bind: ``DMP_ALLOW_OPEN_PUBLIC_BIND``.
        max_ttl, max_value_bytes, max_values_per_name: publish caps.
        served_zone, node_hostname: ``DMP_SERVED_ZONE``, ``DMP_NODE_HOSTNAME``.
        dns_update_enabled: ``DMP_DNS_UPDATE_ENABLED`` (TSIG registration).
        tsig_loose_scope, tsig_tight_scope: ``DMP_TSIG_LOOSE/TIGHT_SCOPE``.
        registration_*: the ``DMP_REGISTRATION_*`` variables.
    """

    http_host: str = "0.0.0.0"
    http_port: int = 8053
    http_rate: float = 10.0
    http_burst: float = 100.0
    http_max_concurrency: int = 64
    http_max_body_bytes: int = 16 * 1024
    http_trusted_proxies: tuple[str, ...] = ()
    operator_token: str | None = attrs.field(default=None, repr=False)
    sync_peer_token: str | None = attrs.field(default=None, repr=False)
    sync_operator_spk: bytes | None = None
    cluster_base_domain: str | None = None
    auth_mode: AuthMode | None = None
    allow_open_public_bind: bool = False
    max_ttl: int = 86400
    max_value_bytes: int = 2048
    max_values_per_name: int = 64
    served_zone: str | None = None
    node_hostname: str | None = None
    dns_update_enabled: bool = False
    tsig_loose_scope: bool = False
    tsig_tight_scope: bool = False
    registration_enabled: bool = False
    registration_allowlist: tuple[str, ...] = ()
    registration_token_ttl_s: int = 7_776_000
    registration_issued_rate: float = 10.0
    registration_issued_burst: float = 50.0
    registration_endpoint_rate: float = 5 / 3600
    registration_endpoint_burst: float = 5.0

    @classmethod
    def from_attributes(cls, source: object) -> HttpConfig:
        """Copy every field that ``source`` has an attribute of the same name for.

        The node's configuration uses the same field names, so
        ``HttpConfig.from_attributes(node_config)`` picks out the HTTP part.
        """
        values = {
            f.name: getattr(source, f.name) for f in attrs.fields(cls) if hasattr(source, f.name)
        }
        return cls(**values)

    @property
    def effective_auth_mode(self) -> AuthMode:
        if self.auth_mode is not None:
            return self.auth_mode
        return "legacy" if self.operator_token else "open"

    def check(self) -> None:
        """Refuse inconsistent settings.

        Raises:
            HttpConfigError: ``open`` mode on a non-loopback bind without
                ``allow_open_public_bind``; ``legacy`` without an operator
                token; an unparseable trusted proxy.
        """
        mode = self.effective_auth_mode
        if mode == "open" and not _is_loopback(self.http_host) and not self.allow_open_public_bind:
            raise HttpConfigError(
                f"DMP_AUTH_MODE=open on public bind {self.http_host}: set DMP_OPERATOR_TOKEN, "
                "DMP_AUTH_MODE=multi-tenant, or DMP_ALLOW_OPEN_PUBLIC_BIND=1"
            )
        if mode == "legacy" and not self.operator_token:
            raise HttpConfigError("DMP_AUTH_MODE=legacy needs DMP_OPERATOR_TOKEN")
        _parse_networks(self.http_trusted_proxies)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse_networks(
    items: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(i.strip(), strict=False) for i in items)
    except ValueError as exc:
        raise HttpConfigError(f"DMP_HTTP_TRUSTED_PROXIES: {exc}") from exc


class NodeMetrics:
    """The node's Prometheus metrics, in their own registry.

    The DNS server increments :attr:`dns_queries` (label ``outcome``); the HTTP
    app counts its requests and sets :attr:`records` at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.dns_queries = Counter(
            "dmp_dns_queries", "DNS queries by outcome", ["outcome"], registry=self.registry
        )
        self.http_requests = Counter(
            "dmp_http_requests",
            "HTTP requests by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        self.records = Gauge("dmp_records", "Stored TXT values", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- helpers -----------------------------------------------------------------


#: Responses up to this size fit the socket's send buffer, so sending one never
#: waits on the client and Quart's per-response timeout (an asyncio task per
#: response) is skipped for them; larger ones keep it (RESPONSE_TIMEOUT).
_SMALL_RESPONSE = 16 * 1024
#: How long a request body may take to arrive (Quart's BODY_TIMEOUT default).
_BODY_TIMEOUT_S = 60.0


def _small(response: quart.Response) -> quart.Response:
    response.timeout = None
    return response


def _json(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> quart.Response:
    body = json.dumps(obj)
    response = quart.Response(body, status=status, content_type="application/json", headers=headers)
    return _small(response) if len(body) <= _SMALL_RESPONSE else response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> quart.Response:
    return _json({"error": message}, status, headers)


_DNS_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
# Control characters, the double quote, and lone surrogates (JSON "\ud800"
# decodes to one; it cannot be stored as UTF-8).
_CONTROL = re.compile('[\x00-\x1f\x7f"\ud800-\udfff]')


def _owner_from_path(raw: str) -> str | None:
    """The canonical owner for a ``/v1/records/{name}`` path, or None when invalid.

    URL-unquoted by the router; one trailing dot stripped; labels 1-63 of
    ``[A-Za-z0-9_-]`` without a leading or trailing ``-``; at most 253
    octets; lowercased (the DNS side looks names up lowercase).
    """
    name = raw[:-1] if raw.endswith(".") else raw
    if not name or len(name) > 253 or not name.isascii():
        return None
    if not all(_DNS_LABEL.match(label) for label in name.split(".")):
        return None
    return name.lower()


def _bearer(request: quart.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


@attrs.frozen
class _Caller:
    """Who is writing: ``anyone`` (open mode), the operator, or a token."""

    kind: Literal["anyone", "operator", "token"]
    token: TokenRecord | None = None


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _Gate:
    """ASGI middleware: the concurrency limit and the request counter.

    Beyond ``limit`` requests in flight a request is answered 503 at once.
    Every response is counted in ``requests`` (labels ``method``, ``status``;
    methods outside the usual set count as ``OTHER`` so that clients cannot
    grow the label set). The labelled children are looked up once and kept:
    ``Counter.labels()`` costs more than the increment itself.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, requests: Counter) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0
        self._requests = requests
        self._children: dict[tuple[str, int], Any] = {}

    def count(self, method: str, status: int) -> None:
        key = (method if method in _METHODS else "OTHER", status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(key[0], str(status))
        child.inc()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            body = b'{"error": "server busy"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            self.count(scope["method"], 503)
            return
        status = 0

        async def counted_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.inflight += 1
        try:
            await self.app(scope, receive, counted_send)
        finally:
            self.inflight -= 1
            if status:
                self.count(scope["method"], status)


class _HttpConnection(ASGIHTTPConnection):
    """Quart's per-request ASGI handler, running the request in the task hypercorn gave it.

    Quart starts two tasks per request, one feeding the body in and one
    running the handler, waits for the first to finish and cancels the
    other. Here the handler runs in the calling task and only the body
    feeder is a task of its own (one task, one ``asyncio.wait`` and one
    cancellation fewer per request, ~15 µs CPU).

    A client that disconnects before its request body is complete has the
    handler cancelled, as in Quart. Once the whole request is in, a
    disconnect no longer cancels it: the handler finishes (a write it
    started is committed either way) and its response goes out if the
    client still reads, e.g. after closing only its sending side. Quart
    would cancel such a request whenever the handler had to wait (a
    committing store), so a half-closed client never got its 201.
    """

    _handling = True
    _disconnected = False

    async def __call__(self, receive: Any, send: Any) -> None:
        request = self._create_request_from_scope(send)
        task = asyncio.current_task()
        assert task is not None
        feeder = asyncio.get_running_loop().create_task(self._feed(request, receive, task))
        try:
            await self.handle_request(request, send)
        except asyncio.CancelledError:
            if not self._disconnected or task.cancelling() > 1:
                raise  # someone else cancels us too
        finally:
            self._handling = False
            feeder.cancel()
            if self._disconnected:
                task.uncancel()  # withdraw our own cancellation

    async def _feed(self, request: quart.Request, receive: Any, handler: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.request":
                request.body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    request.body.set_complete()
                    return  # the request is complete: a disconnect no longer cancels it
            elif message["type"] == "http.disconnect":
                if self._handling:
                    self._disconnected = True
                    handler.cancel()
                return


class _TokenBuckets:
    """One bucket per token hash at that token's own rate; LRU-bounded."""

    def __init__(self, max_keys: int = 65536) -> None:
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._max = max_keys

    def allow(self, token: TokenRecord, now: float) -> bool:
        bucket = self._buckets.get(token.token_hash)
        if bucket is None or bucket.rate != token.rate_per_sec:
            bucket = TokenBucket(token.rate_per_sec, token.rate_burst, now)
            self._buckets[token.token_hash] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(token.token_hash)
        return bucket.allow(now)


class _Api:
    """The request handlers' shared state (one per app)."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        store: RecordStore,
        clock: Clock,
        random_bytes: RandomBytes,
        tokens: TokenStore | None,
        audit: AuditLog | None,
        tsig_keys: TsigKeyStore | None,
        metrics: NodeMetrics,
    ) -> None:
        self.config = config
        self.mode = config.effective_auth_mode
        self.store = store
        self.clock = clock
        self.tokens = tokens
        self.audit = audit
        self.metrics = metrics
        self.trusted = _parse_networks(config.http_trusted_proxies)
        self.ip_buckets: KeyedBuckets[str] = KeyedBuckets(config.http_rate, config.http_burst)
        self.reg_buckets: KeyedBuckets[str] = KeyedBuckets(
            config.registration_endpoint_rate, config.registration_endpoint_burst
        )
        self.token_buckets = _TokenBuckets()
        self.registrar: Registrar | None = None
        if (
            config.registration_enabled
            and self.mode == "multi-tenant"
            and tokens is not None
            and audit is not None
            and config.node_hostname
        ):
            self.registrar = Registrar(
                RegistrationSettings(
                    node_hostname=config.node_hostname,
                    served_zone=config.served_zone,
                    allowlist=config.registration_allowlist,
                    token_ttl_s=config.registration_token_ttl_s,
                    issued_rate=config.registration_issued_rate,
                    issued_burst=config.registration_issued_burst,
                    tsig_enabled=config.dns_update_enabled,
                    tsig_loose_scope=config.tsig_loose_scope,
                    tsig_tight_scope=config.tsig_tight_scope,
                ),
                tokens=tokens,
                audit=audit,
                tsig_keys=tsig_keys,
                random_bytes=random_bytes,
            )

    # -- client identity -------------------------------------------------------

    def client_ip(self, request: quart.Request) -> str:
        client = request.scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if not self.trusted or not self._is_trusted(peer):
            return peer
        forwarded: list[str] = []
        for header in request.headers.getlist("X-Forwarded-For"):
            forwarded += [p.strip() for p in header.split(",") if p.strip()]
        for hop in reversed(forwarded):
            try:
                addr = str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from an untrusted hop: fall back to the proxy
            if not self._is_trusted(addr):
                return addr
        return peer

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def is_operator(self, request: quart.Request) -> bool:
        op = self.config.operator_token
        presented = _bearer(request)
        return bool(op and presented and hmac.compare_digest(presented.encode(), op.encode()))

    # -- audit -----------------------------------------------------------------

    async def audit_event(
        self,
        event: AuditEvent,
        token: TokenRecord | None,
        detail: str,
        remote: str,
        *,
        anonymous: bool = False,
    ) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.append(
                AuditEntry(
                    ts=self.clock.now(),
                    event=event,
                    subject=None if anonymous or token is None else token.subject,
                    token_hash=None if anonymous or token is None else token.token_hash,
                    detail=detail,
                    remote=remote,
                )
            )
        except Exception:  # the audit log must never fail a request
            log.exception("audit append failed")

    # -- record write authorization ------------------------------------------

    async def authorize_write(
        self, request: quart.Request, owner: str, method: str, remote: str
    ) -> _Caller | quart.Response:
        """Decide whether this request may write ``owner`` (behaviour.md §d)."""
        if self.is_operator(request):
            return _Caller("operator")
        if self.mode == "open":
            return _Caller("anyone")
        unauthorized = _error(401, "unauthorized", {"WWW-Authenticate": "Bearer"})
        if self.mode == "legacy" or self.tokens is None:
            return unauthorized
        presented = _bearer(request)
        if presented is None:
            return unauthorized
        now = self.clock.now()
        token = await self.tokens.get(token_hash(presented))
        what = f"{method} {owner}"
        if token is None:
            await self.audit_event(AuditEvent.REJECTED, None, f"{what}: unknown token", remote)
            return unauthorized
        if not token.live(now):
            why = "revoked" if token.revoked else "expired"
            await self.audit_event(AuditEvent.REJECTED, token, f"{what}: token {why}", remote)
            return unauthorized
        scope = classify_owner(owner)
        shared = scope is ScopeClass.SHARED_POOL
        if shared:
            allowed = method == "POST"
        elif scope is ScopeClass.OWNER_EXCLUSIVE:
            allowed = owner_allowed(owner, token)
        else:
            allowed = False
        if not allowed:
            await self.audit_event(
                AuditEvent.REJECTED,
                token,
                f"{what}: outside token scope ({scope.value})",
                remote,
                anonymous=shared,
            )
            return _error(401, "token not authorized for this name", {"WWW-Authenticate": "Bearer"})
        if not self.token_buckets.allow(token, now):
            await self.audit_event(AuditEvent.THROTTLED, token, what, remote, anonymous=shared)
            return _error(429, "token rate limit exceeded", {"Retry-After": "1"})
        await self.audit_event(AuditEvent.USED, token, what, remote, anonymous=shared)
        return _Caller("token", token)


async def _read_json(request: quart.Request) -> tuple[bool, object]:
    """``(present, value)``: the parsed JSON body; ``value`` is None when not JSON.

    Raises:
        RequestEntityTooLarge: the body exceeds MAX_CONTENT_LENGTH (413).
        RequestTimeout: the body took longer than ``_BODY_TIMEOUT_S`` (408).
    """
    try:
        async with asyncio.timeout(_BODY_TIMEOUT_S):
            data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    except TimeoutError as exc:
        raise RequestTimeout() from exc
    if not data or not data.strip():
        return False, None
    try:
        return True, json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return True, None


def create_app(
    config: HttpConfig,
    *,
    store: RecordStore,
    clock: Clock,
    random_bytes: RandomBytes,
    tokens: TokenStore | None = None,
    audit: AuditLog | None = None,
    tsig_keys: TsigKeyStore | None = None,
    metrics: NodeMetrics | None = None,
) -> quart.Quart:
    """Build the node's Quart app.

    Args:
        config: HTTP settings (checked with :meth:`HttpConfig.check`).
        store: the record store.
        clock: time source (``clock.now()`` in POSIX seconds).
        random_bytes: randomness for challenges, tokens and TSIG secrets.
        tokens: bearer-token store (needed for ``multi-tenant``).
        audit: audit log (usually the same object as ``tokens``).
        tsig_keys: TSIG keystore for ``tsig-confirm``.
        metrics: shared metrics (a fresh per-app registry when None).

    Raises:
        HttpConfigError: inconsistent settings.
    """
    config.check()
    if config.effective_auth_mode == "multi-tenant" and tokens is None:
        raise HttpConfigError("DMP_AUTH_MODE=multi-tenant needs a token store")
    api = _Api(
        config,
        store=store,
        clock=clock,
        random_bytes=random_bytes,
        tokens=tokens,
        audit=audit,
        tsig_keys=tsig_keys,
        metrics=metrics if metrics is not None else NodeMetrics(),
    )
    app = quart.Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.http_max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.extensions["dmp"] = api
    # Bodies are read with their own deadline in _read_json (no task per read).
    app.config["BODY_TIMEOUT"] = None
    app.asgi_http_class = _HttpConnection
    app.asgi_app = _Gate(  # type: ignore[method-assign]
        app.asgi_app, config.http_max_concurrency, api.metrics.http_requests
    )

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> quart.Response:
        code = exc.code or 500
        message = {404: "not found", 405: "method not allowed", 413: "request body too large"}
        return _error(code, message.get(code, (exc.name or "error").lower()))

    @app.errorhandler(Exception)
    async def _internal(exc: Exception) -> quart.Response:
        log.exception("unhandled error in HTTP handler")
        return _error(500, "internal error")

    def ip_limited(bucket: KeyedBuckets[str], remote: str) -> quart.Response | None:
        if bucket.allow(remote, api.clock.now()):
            return None
        return _error(429, "rate limit exceeded", {"Retry-After": "1"})

    # -- service endpoints ---------------------------------------------------

    @app.get("/health")
    async def health() -> quart.Response:
        try:
            await api.store.get(HEALTH_PROBE_OWNER, api.clock.now())
        except Exception as exc:
            log.warning("health probe failed: %s", exc)
            return _json({"status": "degraded", "store": str(exc) or type(exc).__name__}, 503)
        return _json({"status": "ok"})

    @app.get("/metrics")
    async def metrics_route() -> quart.Response:
        if config.operator_token and not api.is_operator(quart.request):
            return _error(401, "unauthorized", {"WWW-Authenticate": "Bearer"})
        try:
            api.metrics.records.set(await api.store.count())
        except StoreError:
            log.warning("record count unavailable for /metrics")
        return quart.Response(api.metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.get("/stats")
    async def stats() -> quart.Response:
        try:
            return _json({"records": await api.store.count()})
        except StoreError:
            return _error(503, "store unavailable")

    # -- registration --------------------------------------------------------

    def registration_gate(remote: str, *, tsig: bool) -> Registrar | quart.Response:
        reg = api.registrar
        if reg is None:
            return _error(404, "registration disabled")
        if tsig and not reg.tsig_available:
            return _error(404, "tsig registration disabled")
        limited = ip_limited(api.reg_buckets, remote)
        return limited if limited is not None else reg

    @app.get("/v1/registration/challenge")
    async def challenge() -> quart.Response:
        remote = api.client_ip(quart.request)
        reg = registration_gate(remote, tsig=False)
        if isinstance(reg, quart.Response):
            return reg
        ch = reg.issue_challenge(int(api.clock.now()))
        return _json(ch.to_json(reg.settings.node_hostname))

    async def confirm(*, tsig: bool) -> quart.Response:
        remote = api.client_ip(quart.request)
        reg = registration_gate(remote, tsig=tsig)
        if isinstance(reg, quart.Response):
            return reg
        _, body = await _read_json(quart.request)
        now = int(api.clock.now())
        try:
            if tsig:
                result: Any = await reg.confirm_tsig(body, now, remote)
            else:
                result = await reg.confirm_token(body, now, remote)
        except Exception:
            log.exception("registration failed")
            return _error(500, "registration failed")
        if isinstance(result, Refused):
            return _json(result.to_json(), result.status)
        return _json(result.to_json())

    @app.post("/v1/registration/confirm")
    async def confirm_token() -> quart.Response:
        return await confirm(tsig=False)

    @app.post("/v1/registration/tsig-confirm")
    async def confirm_tsig() -> quart.Response:
        return await confirm(tsig=True)

    # -- records ---------------------------------------------------------------

    @app.get("/v1/records/<path:name>")
    async def get_records(name: str) -> quart.Response:
        remote = api.client_ip(quart.request)
        limited = ip_limited(api.ip_buckets, remote)
        if limited is not None:
            return limited
        if config.operator_token and not api.is_operator(quart.request):
            return _error(401, "unauthorized", {"WWW-Authenticate": "Bearer"})
        owner = _owner_from_path(name)
        if owner is None:
            return _error(400, "invalid record name")
        try:
            rows = await api.store.get(owner, api.clock.now())
        except StoreError:
            return _error(503, "store unavailable")
        values = [r.value for r in rows]
        return _json({"name": owner, "values": values}, 200 if values else 404)

    async def write_gate(name: str, method: str) -> str | quart.Response:
        """Before a record write: the per-IP limit, the owner name, the caller's right to write it.

        Returns:
            The owner, or the response that refuses the request.
        """
        remote = api.client_ip(quart.request)
        limited = ip_limited(api.ip_buckets, remote)
        if limited is not None:
            return limited
        owner = _owner_from_path(name)
        if owner is None:
            return _error(400, "invalid record name")
        caller = await api.authorize_write(quart.request, owner, method, remote)
        if isinstance(caller, quart.Response):
            return caller
        return owner

    @app.post("/v1/records/<path:name>")
    async def post_record(name: str) -> quart.Response:
        owner = await write_gate(name, "POST")
        if isinstance(owner, quart.Response):
            return owner
        _, body = await _read_json(quart.request)
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        value = body.get("value")
        ttl = body.get("ttl", DEFAULT_TTL)
        if not isinstance(value, str) or not value:
            return _error(400, "value must be a non-empty string")
        if _CONTROL.search(value):
            return _error(400, "value contains a quote or control character")
        if len(value.encode("utf-8")) > config.max_value_bytes:
            return _error(400, f"value exceeds {config.max_value_bytes} bytes")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            return _error(400, "ttl must be a positive integer")
        if ttl > config.max_ttl:
            return _error(400, f"ttl exceeds {config.max_ttl}")
        try:
            await api.store.put(
                owner, value, ttl, api.clock.now(), max_values=config.max_values_per_name
            )
        except StoreFull:
            return _error(413, f"{owner} already holds {config.max_values_per_name} values")
        except StoreError:
            log.exception("record write failed for %s", owner)
            return _error(502, "store write failed")
        return _json({"ok": True}, 201)

    @app.delete("/v1/records/<path:name>")
    async def delete_record(name: str) -> quart.Response:
        owner = await write_gate(name, "DELETE")
        if isinstance(owner, quart.Response):
            return owner
        present, body = await _read_json(quart.request)
        value: str | None = None
        if present:
            if not isinstance(body, dict):
                return _error(400, "request body must be a JSON object")
            raw = body.get("value")
            if raw is not None and not isinstance(raw, str):
                return _error(400, "value must be a string")
            if raw is not None and _CONTROL.search(raw):
                return _error(400, "value contains a quote or control character")
            value = raw
        try:
            removed = await api.store.delete(owner, value)
        except StoreError:
            log.exception("record delete failed for %s", owner)
            return _error(502, "store write failed")
        if removed == 0:
            return _error(404, "no matching record")
        return _small(quart.Response(b"", status=204))

    # -- anti-entropy (wire.md §9) ---------------------------------------------

    def sync_gate() -> quart.Response | None:
        """The per-IP bucket, then the peer token (403 without it)."""
        limited = ip_limited(api.ip_buckets, api.client_ip(quart.request))
        if limited is not None:
            return limited
        if not sync_token_matches(config.sync_peer_token, _bearer(quart.request)):
            return _error(403, "forbidden")
        return None

    @app.get("/v1/sync/digest")
    async def sync_digest() -> quart.Response:
        refused = sync_gate()
        if refused is not None:
            return refused
        try:
            cursor, limit = parse_digest_query(quart.request.args)
        except SyncRequestError as exc:
            return _error(400, str(exc))
        now = api.clock.now()
        after = (cursor.stored_ts_ms, cursor.owner, cursor.value_hash)
        try:
            rows = await api.store.digest(after, limit + 1, now)
        except StoreError:
            return _error(503, "store unavailable")
        return _json(digest_body(rows, cursor, limit, now))

    @app.post("/v1/sync/pull")
    async def sync_pull() -> quart.Response:
        refused = sync_gate()
        if refused is not None:
            return refused
        try:
            owners = parse_pull_names(*await _read_json(quart.request))
        except SyncRequestError as exc:
            return _error(400, str(exc))
        now = api.clock.now()
        try:
            rows = [rec for owner in owners for rec in await api.store.get(owner, now)]
        except StoreError:
            return _error(503, "store unavailable")
        return _json(pull_body(rows, now))

    @app.get("/v1/sync/cluster-manifest")
    async def sync_cluster_manifest() -> quart.Response:
        refused = sync_gate()
        if refused is not None:
            return refused
        base = config.cluster_base_domain
        body = None
        if base:
            now = api.clock.now()
            try:
                rows = await api.store.get(f"cluster.{base}", now)
            except StoreError:
                return _error(503, "store unavailable")
            body = cluster_manifest_body(
                (r.value for r in rows),
                operator_spk=config.sync_operator_spk,
                base=base,
                now=int(now),
            )
        if body is None:
            return _small(quart.Response(b"", status=204))
        return _json(body)

    return app


async def serve_http(
    app: quart.Quart,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    shutdown: anyio.Event | None = None,
    graceful_timeout: float = 5.0,
    keep_alive_timeout: float = 5.0,
) -> None:
    """Serve ``app`` with hypercorn in the current (asyncio) event loop.

    The listening socket is bound here, so ``port=0`` works: the bound port is
    reported through ``task_status.started(port)`` (use ``await tg.start(...)``).
    The server stops gracefully (in-flight requests get ``graceful_timeout``
    seconds) when ``shutdown`` is set or when the calling task is cancelled.
    A keep-alive connection idle for ``keep_alive_timeout`` seconds is closed.

    Connections are hypercorn's own (``TCPServer``, h11), accepted by
    :func:`_serve_hypercorn` so that a connection the client has closed is
    released at once (see :class:`_Connection`).

    Raises:
        OSError: the address cannot be bound.
    """
    from hypercorn.config import Config

    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(1024)  # queue connections made before we start accepting
        bound_port = int(sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise
    cfg = Config()
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("dmp.http.server")
    cfg.graceful_timeout = graceful_timeout
    cfg.keep_alive_timeout = keep_alive_timeout
    cfg.include_server_header = False
    cfg.backlog = 1024

    trigger = shutdown if shutdown is not None else anyio.Event()
    finished = anyio.Event()

    async def run() -> None:
        try:
            # Shielded: the server stops only through its trigger, so that its
            # graceful shutdown runs to the end even when we are cancelled.
            with anyio.CancelScope(shield=True):
                await _serve_hypercorn(app, cfg, sock, trigger.wait)
        finally:
            finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        task_status.started(bound_port)
        try:
            await finished.wait()
        finally:
            trigger.set()
            with anyio.CancelScope(shield=True):
                await finished.wait()


class _IdleTimer(AsyncioSingleTask):
    """hypercorn's keep-alive timer as one loop timer instead of a task.

    ``TCPServer`` re-arms its idle timer on every request boundary (armed at
    connect, stopped when a request starts, re-armed after the response,
    stopped at close); hypercorn's ``AsyncioSingleTask`` creates a task and
    cancels it each time, four tasks per one-request connection. Here each is
    a ``call_later`` handle. When it fires, the connection is closed as
    hypercorn's own timer does; at shutdown :func:`_serve_hypercorn` fires
    every armed timer at once (hypercorn's timer also ends on ``terminated``).
    """

    def __init__(self, conn: _Connection, armed: set[_IdleTimer]) -> None:
        # AsyncioSingleTask.__init__ is not called: nothing of it is used.
        self._conn = conn
        self._armed = armed
        self._timer: asyncio.TimerHandle | None = None
        self._group: HypercornTaskGroup | None = None

    async def restart(self, task_group: HypercornTaskGroup, action: Callable[..., Any]) -> None:
        self._cancel()
        self._group = task_group
        if self._conn.context.terminated.is_set():
            self.fire()
            return
        loop, timeout = self._conn.loop, self._conn.config.keep_alive_timeout
        self._timer = loop.call_later(timeout, self.fire)
        self._armed.add(self)

    async def stop(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._armed.discard(self)

    def fire(self) -> None:
        """Close the idle connection now (the timer ran out, or the server stops)."""
        self._cancel()
        if self._group is not None:
            self._group.spawn(self._conn._initiate_server_close)


class _Connection(TCPServer):
    """hypercorn's HTTP/1.1 connection, released as soon as the client has closed it.

    After each response hypercorn (0.17, 0.18) arms a keep-alive timer task
    and stops it only when the *server* closes the connection. When the
    client closes first (one connection per request, as the reference CLI
    does), the connection's task, its h11 state, task group and buffers stayed
    alive until the timer fired ``keep_alive_timeout`` (5 s) later: at
    ~1,500 requests/s that is ~7,500 dead connections held at any time, and
    what survives that long is only reclaimed by full (generation 2) garbage
    collections, so RSS grew to ~150 MiB under sustained load. Once the read
    loop has seen end-of-file nothing more can arrive, so the timer is
    stopped there, and a response still in flight (a client that half-closed
    after its request) closes the connection when it ends instead of
    re-arming the timer. The connection's objects are then freed by the
    young-generation collector (RSS stays flat). The timer itself is an
    :class:`_IdleTimer`.
    """

    _peer_closed = False

    def __init__(self, *args: Any, armed: set[_IdleTimer]) -> None:
        super().__init__(*args)
        self.idle_task = _IdleTimer(self, armed)

    async def _read_data(self) -> None:
        await super()._read_data()
        self._peer_closed = True
        await self.idle_task.stop()

    async def protocol_send(self, event: HypercornEvent) -> None:
        if self._peer_closed and isinstance(event, Updated) and event.idle:
            await self._close()  # the response is out and no request can follow
            return
        await super().protocol_send(event)


async def _serve_hypercorn(
    app: quart.Quart,
    config: HypercornConfig,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[object]],
) -> None:
    """Accept HTTP/1.1 connections on ``sock`` with hypercorn's machinery until the trigger.

    What ``hypercorn.asyncio.serve`` does for one plain-TCP socket, with
    :class:`_Connection` for each connection: ASGI lifespan startup, accept
    until ``shutdown_trigger()`` returns, then stop accepting, let idle
    keep-alive connections close and in-flight requests finish (up to
    ``config.graceful_timeout`` seconds; stragglers are cancelled), and run
    the lifespan shutdown.
    """
    from hypercorn.asyncio.lifespan import Lifespan
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app

    loop = asyncio.get_running_loop()
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, loop, state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    context = WorkerContext(None)
    connections: set[asyncio.Task[Any]] = set()
    idle: set[_IdleTimer] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)
            task.add_done_callback(connections.discard)
        await _Connection(asgi, loop, config, context, state, reader, writer, armed=idle)

    server = await asyncio.start_server(on_connect, sock=sock, backlog=config.backlog)
    try:
        await shutdown_trigger()
    finally:
        await context.terminated.set()  # connections finishing a request close after it
        for timer in list(idle):
            timer.fire()  # idle keep-alive connections close now
        server.close()  # stop accepting
        if connections:
            _, late = await asyncio.wait(set(connections), timeout=config.graceful_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        # after the connections: from Python 3.12 on this waits for them to close
        await server.wait_closed()
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lifespan_task
