"""The node's composition root and lifecycle (layer: apps).

:func:`build_node` is the ONLY place where concrete adapters are chosen (house
style §3.1): the record store (sqlite, or memory for ``DMP_DB_PATH=:memory:``),
the TSIG keystore, the bearer-token store with its audit log, the DNS handler
and the HTTP app. Tests and simulations pass their own fakes instead.

:func:`run_node` runs everything in ONE anyio task group on one event loop:

* the DNS server (UDP and TCP on one port),
* the HTTP API (Quart app on hypercorn),
* the expiry sweep (every ``DMP_CLEANUP_INTERVAL``, first run after one interval),
* the anti-entropy worker (:mod:`dmp.apps.node.sync`; every ``DMP_SYNC_INTERVAL``,
  first tick after one interval) when ``DMP_SYNC_PEER_TOKEN`` and ``DMP_SYNC_PEERS``
  are set,
* a signal watcher: SIGTERM or SIGINT starts a graceful stop.

Startup logs one ``listening`` line per bound socket with the real port (port
0 allowed; tests parse ``listening dns udp+tcp HOST:PORT`` and ``listening
http HOST:PORT``), then ``ready``. Graceful stop: the DNS server closes its
sockets, hypercorn stops accepting and lets in-flight requests finish, the
store finishes the writes already submitted, then the stores close and the
process exits 0. A second signal during the stop cancels whatever is left.

:func:`serve` is what ``dmp-node`` calls: logging, uvloop when available,
build, run.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs

from dmp.apps.node.config import MEMORY, ConfigError, NodeConfig
from dmp.ports.clock import Clock
from dmp.ports.store import RecordStore, TsigKeyStore

__all__ = ["Node", "StartupError", "build_node", "log_unimplemented", "run_node", "serve"]

log = logging.getLogger("dmp.node")


class StartupError(Exception):
    """The node could not start (a port, a file); names the variable to change."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@attrs.define(kw_only=True)
class Node:
    """A built node: configuration plus every adapter, ready for :func:`run_node`.

    Attributes:
        config: the validated configuration.
        clock: wall clock (or a SimClock in simulations).
        store: signed TXT records.
        tsig_keys: TSIG keystore, or None when DNS UPDATE is off.
        tokens: bearer-token store (also the audit log), or None when not needed.
        dns_handler: the DNS request handler (wire in, wire out).
        http_app: the ASGI app.
        sync_worker: the anti-entropy worker, or None when it does not run.
        bound: ``{"dns": (host, port), "http": (host, port)}`` once listening.
    """

    config: NodeConfig
    clock: Clock
    store: RecordStore
    tsig_keys: TsigKeyStore | None = None
    tokens: Any = None
    dns_handler: Any = None
    http_app: Any = None
    sync_worker: Any = None
    bound: dict[str, tuple[str, int]] = attrs.Factory(dict)
    started_at: float = attrs.Factory(time.monotonic)
    _closers: list[Callable[[], Awaitable[None]]] = attrs.Factory(list)

    async def aclose(self) -> None:
        """Close every adapter that :func:`build_node` opened, newest first."""
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:
                log.exception("error while closing %r", closer)


# ---------------------------------------------------------------- build


def _prepare_parent(path: Path, variable: str) -> None:
    parent = path.expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(variable, f"cannot create directory {parent}: {exc.strerror}") from None


async def build_node(
    config: NodeConfig,
    *,
    clock: Clock,
    store: RecordStore | None = None,
    tsig_keys: TsigKeyStore | None = None,
    tokens: Any = None,
) -> Node:
    """Choose and open the adapters for ``config``.

    Args:
        config: validated configuration.
        clock: the clock every component uses.
        store: a record store to use instead of the configured one.
        tsig_keys: a TSIG keystore to use instead of the configured one.
        tokens: a token store (with audit log) to use instead of the configured one.

    Returns:
        The node, not yet listening. Close it with :meth:`Node.aclose` (``run_node``
        does so when it ends).

    Raises:
        StartupError: a database cannot be created or opened.
    """
    node = Node(config=config, clock=clock, store=store)  # type: ignore[arg-type]
    try:
        if store is None:
            node.store = await _open_record_store(config)
            node._closers.append(node.store.aclose)
        if config.dns_update_enabled:
            if tsig_keys is None:
                tsig_keys = await _open_tsig_store(config)
                node._closers.append(tsig_keys.aclose)
            node.tsig_keys = tsig_keys
        if config.token_store_needed:
            if tokens is None:
                tokens = await _open_token_store(config)
                node._closers.append(tokens.aclose)
            node.tokens = tokens
        if config.sync_worker_enabled:
            node.sync_worker = _build_sync_worker(node)
            node._closers.append(node.sync_worker.aclose)
        node.dns_handler = _build_dns_handler(node)
        node.http_app = _build_http_app(node)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await node.aclose()
        raise
    return node


async def _open_record_store(config: NodeConfig) -> RecordStore:
    if config.db_path == MEMORY:
        from dmp.adapters.memory_store import MemoryRecordStore

        return MemoryRecordStore()
    from dmp.adapters.sqlite_store import SqliteRecordStore
    from dmp.ports.store import StoreError

    path = Path(config.db_path)
    _prepare_parent(path, "DMP_DB_PATH")
    try:
        return await SqliteRecordStore.open(path, synchronous=config.db_synchronous)
    except StoreError as exc:
        raise StartupError("DMP_DB_PATH", f"cannot open {path}: {exc}") from None


async def _open_tsig_store(config: NodeConfig) -> TsigKeyStore:
    if config.tsig_db_path == MEMORY or config.tsig_db_path is None:
        from dmp.adapters.memory_store import MemoryTsigKeyStore

        return MemoryTsigKeyStore()
    from dmp.adapters.sqlite_store import SqliteTsigKeyStore
    from dmp.ports.store import StoreError

    path = Path(config.tsig_db_path)
    _prepare_parent(path, "DMP_TSIG_DB_PATH")
    try:
        # its generation also moves when another process (dmp-node admin tsig) changes keys;
        # FULL whatever DMP_DB_SYNCHRONOUS says: keys are few and a lost one locks a user out
        return await SqliteTsigKeyStore.open(path, synchronous="FULL")
    except StoreError as exc:
        raise StartupError("DMP_TSIG_DB_PATH", f"cannot open {path}: {exc}") from None


async def _open_token_store(config: NodeConfig) -> Any:
    from dmp.adapters.token_store import MemoryTokenStore, SqliteTokenStore
    from dmp.ports.tokens import TokenStoreError

    if config.token_db_path == MEMORY or config.token_db_path is None:
        return MemoryTokenStore()
    path = Path(config.token_db_path)
    _prepare_parent(path, "DMP_TOKEN_DB_PATH")
    try:
        return await SqliteTokenStore.open(path)
    except TokenStoreError as exc:
        raise StartupError("DMP_TOKEN_DB_PATH", str(exc)) from None


def _copy_fields(cls: Any, source: object, **extra: Any) -> Any:
    """``cls(**{f: source.f for every attrs field f of cls that source has}, **extra)``."""
    values = {f.name: getattr(source, f.name) for f in attrs.fields(cls) if hasattr(source, f.name)}
    values.update(extra)
    return cls(**values)


def _build_sync_worker(node: Node) -> Any:
    """The anti-entropy worker over HTTP peers (DMP_SYNC_PEERS, DMP_SYNC_PEER_TOKEN)."""
    from dmp.adapters.http_sync_client import HttpSyncPeer
    from dmp.apps.node.sync import SyncWorker

    cfg = node.config
    assert cfg.sync_peer_token is not None
    token = cfg.sync_peer_token

    def peer(url: str) -> HttpSyncPeer:
        return HttpSyncPeer(url, token)

    return SyncWorker(
        node.store,
        node.clock,
        [peer(url) for url in cfg.sync_peers],
        interval=cfg.sync_interval_s,
        operator_spk=cfg.sync_operator_spk,
        max_values_per_name=cfg.max_values_per_name,
        cluster_base=cfg.cluster_base_domain,
        peer_factory=peer,
        self_endpoint=cfg.sync_self_endpoint,
        node_id=cfg.node_id,
    )


def _build_dns_handler(node: Node) -> Any:
    """The authoritative DNS logic over the node's store and TSIG keystore."""
    from dmp.apps.node.dns_handler import DnsConfig, DnsHandler

    dns_config = _copy_fields(DnsConfig, node.config)
    return DnsHandler(dns_config, node.store, clock=node.clock, tsig_keys=node.tsig_keys)


class _Metrics:
    """Builds the shared Prometheus metrics, syncing DNS counters at scrape time."""

    @staticmethod
    def create(node: Node) -> Any:
        from prometheus_client import Counter

        from dmp.adapters.http_api import NodeMetrics

        class SyncedMetrics(NodeMetrics):
            """``render()`` first copies the DNS handler's counters into ``dns_queries``."""

            def __init__(self) -> None:
                super().__init__()
                self._seen: dict[str, int] = {}
                self._sync_seen: dict[str, int] = {}
                self.sync_values = Counter(
                    "dmp_sync_values",
                    "Anti-entropy outcomes by kind (stored, refused, bad_row, missing, peer_error)",
                    ["outcome"],
                    registry=self.registry,
                )

            def sync(self) -> None:
                handler = node.dns_handler
                if handler is None:
                    return
                current = dict(handler.counters)
                current["cache_hit"] = int(handler.cache_hits)
                for outcome, total in current.items():
                    delta = total - self._seen.get(outcome, 0)
                    if delta > 0:
                        self.dns_queries.labels(outcome=outcome).inc(delta)
                        self._seen[outcome] = total
                worker = node.sync_worker
                if worker is not None:
                    for outcome, total in dict(worker.counters).items():
                        delta = total - self._sync_seen.get(outcome, 0)
                        if delta > 0:
                            self.sync_values.labels(outcome=outcome).inc(delta)
                            self._sync_seen[outcome] = total

            def render(self) -> bytes:
                self.sync()
                return bytes(super().render())

        return SyncedMetrics()


def _build_http_app(node: Node) -> Any:
    """The Quart app (dmp.adapters.http_api.create_app) with every store it needs.

    Raises:
        ConfigError: the HTTP settings are inconsistent.
    """
    import os

    from dmp.adapters.http_api import HttpConfig, HttpConfigError, create_app

    http_config = _copy_fields(HttpConfig, node.config)
    try:
        return create_app(
            http_config,
            store=node.store,
            clock=node.clock,
            random_bytes=os.urandom,
            tokens=node.tokens,
            audit=node.tokens,
            tsig_keys=node.tsig_keys,
            metrics=_Metrics.create(node),
        )
    except HttpConfigError as exc:
        raise ConfigError("DMP_AUTH_MODE", str(exc)) from None


# ---------------------------------------------------------------- run


async def _sweep_worker(node: Node) -> None:
    interval = node.config.cleanup_interval_s
    while True:
        await node.clock.sleep(interval)
        try:
            removed = await node.store.sweep_expired(node.clock.now())
        except Exception:
            log.exception("expiry sweep failed")
            continue
        if removed:
            log.info("swept expired records", extra={"removed": removed})


async def _watch_signals(stop: anyio.Event, hard: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.info("stopping on %s", signal.Signals(signum).name)
                stop.set()
            else:
                log.warning("second signal: cancelling what is left")
                hard.cancel()
                return


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_node(
    node: Node,
    *,
    stop: anyio.Event | None = None,
    handle_signals: bool = True,
    task_status: anyio.abc.TaskStatus[Node] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT), then stop gracefully.

    Args:
        node: from :func:`build_node`; closed when this returns.
        stop: set it to stop the node (a fresh event when None).
        handle_signals: install the SIGTERM/SIGINT watcher (main thread only).
        task_status: ``await tg.start(run_node, node)`` returns the node once
            it is listening, with ``node.bound`` filled in.

    Raises:
        StartupError: a port cannot be bound; nothing is left running.
    """
    from dmp.adapters.dns_server import serve_dns
    from dmp.adapters.http_api import serve_http

    cfg = node.config
    stop = stop or anyio.Event()
    http_stop = anyio.Event()
    dns_scope = anyio.CancelScope()
    dns_done, http_done = anyio.Event(), anyio.Event()

    async def dns_task(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        try:
            with dns_scope:
                await serve_dns(
                    node.dns_handler,
                    cfg.dns_host,
                    cfg.dns_port,
                    task_status=task_status,
                    max_pending=cfg.dns_max_concurrency,
                    max_tcp_connections=max(8 * cfg.dns_max_concurrency, 256),
                )
        finally:
            dns_done.set()

    async def http_task(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        try:
            await serve_http(
                node.http_app,
                cfg.http_host,
                cfg.http_port,
                task_status=task_status,
                shutdown=http_stop,
            )
        finally:
            http_done.set()

    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_watch_signals, stop, tg.cancel_scope)
            try:
                dns_port = await tg.start(dns_task)
            except OSError as exc:
                raise StartupError(
                    "DMP_DNS_PORT",
                    f"cannot listen on {_hostport(cfg.dns_host, cfg.dns_port)}: {exc.strerror or exc}",
                ) from None
            node.bound["dns"] = (cfg.dns_host, dns_port)
            log.info(
                "listening dns udp+tcp %s",
                _hostport(cfg.dns_host, dns_port),
                extra={"service": "dns", "host": cfg.dns_host, "port": dns_port},
            )
            try:
                http_port = await tg.start(http_task)
            except OSError as exc:
                raise StartupError(
                    "DMP_HTTP_PORT",
                    f"cannot listen on {_hostport(cfg.http_host, cfg.http_port)}: "
                    f"{exc.strerror or exc}",
                ) from None
            node.bound["http"] = (cfg.http_host, http_port)
            log.info(
                "listening http %s",
                _hostport(cfg.http_host, http_port),
                extra={"service": "http", "host": cfg.http_host, "port": http_port},
            )
            tg.start_soon(_sweep_worker, node)
            if node.sync_worker is not None:
                tg.start_soon(node.sync_worker.run)
                log.info(
                    "anti-entropy: %d peer(s) every %gs: %s",
                    len(cfg.sync_peers),
                    cfg.sync_interval_s,
                    ", ".join(cfg.sync_peers),
                )
            elif cfg.sync_peers:
                log.warning("anti-entropy: DMP_SYNC_PEERS is set but DMP_SYNC_PEER_TOKEN is not")
            log.info(
                "ready",
                extra={"startup_ms": round((time.monotonic() - node.started_at) * 1000)},
            )
            task_status.started(node)
            await stop.wait()
            # Graceful stop: hypercorn finishes in-flight requests, the DNS server
            # lets in-flight messages reply; both close their sockets.
            http_stop.set()
            dns_scope.cancel()
            await dns_done.wait()
            await http_done.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await node.aclose()
        log.info("stopped")


# ---------------------------------------------------------------- process entry


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def log_unimplemented(config: NodeConfig) -> None:
    """One warning line naming the reference variables that are set but ignored here."""
    if config.unimplemented_variables:
        log.warning(
            "set but not implemented by dmp-node (ignored): %s",
            ", ".join(config.unimplemented_variables),
            extra={"variables": list(config.unimplemented_variables)},
        )


async def _main(config: NodeConfig) -> None:
    from dmp.adapters.clock import SystemClock

    log_unimplemented(config)

    node = await build_node(config, clock=SystemClock())
    async with anyio.create_task_group() as tg:
        await tg.start(run_node, node)
        # What exists once the node listens (modules, apps, adapters) lives as long as
        # the process: keep it out of the cyclic GC, whose full collections otherwise
        # scan all of it (~15 ms each on the bench machine, stalling every answer) while
        # the answer cache fills. Later garbage is still collected.
        gc.freeze()


def serve(config: NodeConfig) -> int:
    """Run the daemon in this process until it is stopped; returns the exit code.

    uvloop drives the event loop when it is installed (the DNS datagram path
    is several times faster on it).

    Raises:
        StartupError: a port or a database cannot be opened.
        ConfigError: a setting is rejected by a component.
    """
    backend_options: dict[str, Any] = {}
    try:
        import uvloop  # noqa: F401

        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    try:
        anyio.run(_main, config, backend="asyncio", backend_options=backend_options)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        for leaf in leaves:
            if isinstance(leaf, StartupError | ConfigError):
                raise leaf from None
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 0
        raise
    return 0
