"""DNS transport: UDP and TCP on one port, anyio for structure (layer: adapters).

Transport only; the answers come from a :class:`DnsWireHandler` (the node's
``dmp.apps.node.dns_handler.DnsHandler``). Every message is first offered to
``handler.answer_cached(wire, peer, transport)``, which is synchronous; when it
returns ``None`` the message goes to ``await handler.handle(wire, peer,
transport)``. A returned empty ``bytes`` means "send nothing".

UDP hot path, chosen by measurement (issue 4: a minimal UDP loop answering
from a dict served 34k q/s with an asyncio ``DatagramProtocol``, 19k/69k q/s
with an anyio UDP socket on asyncio/uvloop, 180k q/s with a
``DatagramProtocol`` on uvloop): a ``DatagramProtocol`` whose
``datagram_received`` answers cache hits synchronously, with no task per
packet. Anything else becomes one asyncio task, at most ``max_pending`` at a
time (more are dropped, like a full socket buffer). So this adapter needs the
asyncio backend of anyio (uvloop recommended: ``anyio.run(...,
backend_options={"use_uvloop": True})``).

TCP (RFC 1035 §4.2.2, RFC 7766): 2-byte length framing, any number of
queries per connection, pipelined: cache hits are answered inline, other
messages run concurrently (at most ``tcp_max_inflight`` per connection; the
reader waits beyond that) and replies may come back out of order, each
written whole under a lock. A connection idle for ``tcp_idle_timeout_s`` is
closed; at most ``max_tcp_connections`` are open (more are closed at once).

Robustness: the handler is expected never to raise; if it does anyway the
message is dropped and logged, and the server keeps serving.

Lifecycle: :func:`serve_dns` (or :meth:`DnsServer.serve`) binds, reports the
bound port through ``task_status.started(port)`` and serves until cancelled.
Port 0 picks a free port that is free for both UDP and TCP. On cancellation it
stops reading and accepting, gives in-flight messages up to
``shutdown_grace_s`` to finish and send their replies (an UPDATE whose store
write has been submitted is committed either way: the store port guarantees
it), then closes both sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["DnsServer", "DnsWireHandler", "serve_dns"]

_log = logging.getLogger("dmp.dns.server")

_UDP_RCVBUF = 1 << 22
_BIND_ATTEMPTS = 20


class DnsWireHandler(Protocol):
    """What the transport needs from the DNS logic."""

    def answer_cached(self, wire: bytes, peer: Any, transport: Any = "udp") -> bytes | None:
        """A reply, ``b""`` to drop, or ``None`` to defer to :meth:`handle`. Synchronous."""
        ...

    async def handle(self, wire: bytes, peer: Any, transport: Any = "udp") -> bytes | None:
        """A reply, or ``None``/``b""`` to send nothing."""
        ...


class _UdpProtocol(asyncio.DatagramProtocol):
    """Answers cache hits inline; defers the rest to bounded tasks."""

    def __init__(self, handler: DnsWireHandler, max_pending: int) -> None:
        self.handler = handler
        self.max_pending = max_pending
        self.transport: Any = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.dropped = 0
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.closing:
            return
        try:
            reply = self.handler.answer_cached(data, addr, "udp")
        except Exception:
            _log.exception("answer_cached raised on a %d-byte datagram from %r", len(data), addr)
            return
        if reply is not None:
            if reply:
                self.transport.sendto(reply, addr)
            return
        if len(self.tasks) >= self.max_pending:
            self.dropped += 1
            return
        task = self._loop.create_task(self._slow(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _slow(self, data: bytes, addr: Any) -> None:
        try:
            reply = await self.handler.handle(data, addr, "udp")
        except Exception:
            _log.exception("DNS handler raised on a %d-byte datagram from %r", len(data), addr)
            return
        transport = self.transport
        if reply and transport is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable from a vanished client): nothing to do.
        _log.debug("UDP error: %s", exc)


def _tcp_host(host: str) -> str | None:
    """The TCP listener's ``local_host`` for ``host``.

    ``"::"`` binds a dual-stack UDP socket (Linux ``bindv6only=0``), but anyio
    sets ``IPV6_V6ONLY`` on its TCP sockets, so the same host would refuse
    IPv4 over TCP. ``None`` makes anyio listen on every IPv4 *and* IPv6
    address instead, which matches what the UDP socket accepts.
    """
    return None if host in ("::", "[::]") else host


class DnsServer:
    """UDP + TCP DNS listener on one port.

    Args:
        handler: the DNS logic.
        host: address to bind (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``).
        port: port to bind; 0 picks one free for both protocols.
        max_pending: slow-path UDP messages in flight (``DMP_DNS_MAX_CONCURRENCY``);
            more are dropped.
        max_tcp_connections: open TCP connections; more are closed at once.
        tcp_idle_timeout_s: seconds a TCP connection may wait for its next message.
        tcp_max_inflight: messages of one TCP connection handled concurrently.
        shutdown_grace_s: how long shutdown waits for in-flight messages.
        message_timeout_s: longest one slow-path TCP message may take.

    Attributes:
        port: the bound port, once :meth:`serve` has started (else 0).
    """

    def __init__(
        self,
        handler: DnsWireHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_pending: int = 128,
        max_tcp_connections: int = 256,
        tcp_idle_timeout_s: float = 10.0,
        tcp_max_inflight: int = 16,
        shutdown_grace_s: float = 5.0,
        message_timeout_s: float = 30.0,
    ) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.port = 0
        self.max_pending = max_pending
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.tcp_max_inflight = tcp_max_inflight
        self.shutdown_grace_s = shutdown_grace_s
        self.message_timeout_s = message_timeout_s
        self.tcp_connections = 0
        self.tcp_rejected = 0
        self._udp: _UdpProtocol | None = None
        self._tcp_scopes: set[anyio.CancelScope] = set()

    @property
    def closing(self) -> bool:
        """True once shutdown has begun (no new messages are read)."""
        return self._udp is not None and self._udp.closing

    @property
    def udp_dropped(self) -> int:
        """UDP messages dropped because ``max_pending`` were in flight."""
        return self._udp.dropped if self._udp is not None else 0

    async def _bind(
        self,
    ) -> tuple[Any, _UdpProtocol, anyio.abc.Listener[anyio.abc.SocketStream]]:
        loop = asyncio.get_running_loop()
        attempts = _BIND_ATTEMPTS if self.requested_port == 0 else 1
        for attempt in range(attempts):
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self.handler, self.max_pending),
                local_addr=(self.host, self.requested_port),
            )
            port = int(transport.get_extra_info("sockname")[1])
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
            try:
                listener = await anyio.create_tcp_listener(
                    local_host=_tcp_host(self.host), local_port=port
                )
            except OSError as exc:
                transport.close()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                continue
            return transport, protocol, listener
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")  # pragma: no cover

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report the port with ``task_status.started(port)``, serve until cancelled.

        Raises:
            RuntimeError: not running on anyio's asyncio backend.
            OSError: the port cannot be bound for UDP and TCP.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "dmp's DNS server needs anyio's asyncio backend (uvloop welcome)"
            ) from None
        transport, protocol, listener = await self._bind()
        self._udp = protocol
        self.port = int(transport.get_extra_info("sockname")[1])
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._connection, tg)
                _log.info("DNS listening on %s port %d (UDP+TCP)", self.host, self.port)
                task_status.started(self.port)
                try:
                    await anyio.sleep_forever()
                finally:
                    # Shutdown: stop taking datagrams, and give in-flight TCP
                    # messages shutdown_grace_s (the task group waits for them).
                    protocol.closing = True
                    grace_end = anyio.current_time() + self.shutdown_grace_s
                    for scope in tuple(self._tcp_scopes):
                        scope.deadline = min(scope.deadline, grace_end)
        finally:
            with anyio.CancelScope(shield=True):
                protocol.closing = True
                await listener.aclose()
                pending = set(protocol.tasks)
                if pending:
                    _, late = await asyncio.wait(pending, timeout=self.shutdown_grace_s)
                    for task in late:
                        task.cancel()
                transport.close()
                _log.info("DNS on port %d closed", self.port)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        if self.tcp_connections >= self.max_tcp_connections:
            self.tcp_rejected += 1
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        self.tcp_connections += 1
        try:
            peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
        except Exception:
            peer = ("?", 0)
        reader = BufferedByteReceiveStream(stream)
        send_lock = anyio.Lock()
        inflight = anyio.Semaphore(self.tcp_max_inflight)
        handler = self.handler

        async def send(reply: bytes) -> None:
            if len(reply) > 0xFFFF:
                return
            async with send_lock:
                await stream.send(len(reply).to_bytes(2, "big") + reply)

        async def slow(wire: bytes) -> None:
            # Shielded: once a message is being handled, shutdown lets it finish
            # and send its reply (bounded by message_timeout_s, and by
            # shutdown_grace_s once shutdown has begun).
            deadline = anyio.current_time() + self.message_timeout_s
            scope = anyio.CancelScope(shield=True, deadline=deadline)
            self._tcp_scopes.add(scope)
            try:
                with scope:
                    try:
                        reply = await handler.handle(wire, peer, "tcp")
                    except Exception:
                        _log.exception("DNS handler raised on a TCP message from %r", peer)
                        return
                    if reply:
                        await send(reply)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                self._tcp_scopes.discard(scope)
                inflight.release()

        try:
            async with anyio.create_task_group() as conn_tg:
                # Errors of the connection end the read loop here, inside the
                # task group, so in-flight messages still finish and reply.
                with contextlib.suppress(
                    anyio.IncompleteRead,
                    anyio.EndOfStream,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                    OSError,
                ):
                    while True:
                        with anyio.move_on_after(self.tcp_idle_timeout_s) as idle:
                            length = int.from_bytes(await reader.receive_exactly(2), "big")
                            wire = await reader.receive_exactly(length)
                        if idle.cancelled_caught:
                            break
                        try:
                            reply = handler.answer_cached(wire, peer, "tcp")
                        except Exception:
                            _log.exception("answer_cached raised on a TCP message from %r", peer)
                            continue
                        if reply is not None:
                            if reply:
                                await send(reply)
                            continue
                        await inflight.acquire()
                        conn_tg.start_soon(slow, wire)
        finally:
            self.tcp_connections -= 1
            with anyio.CancelScope(shield=True):
                await stream.aclose()


async def serve_dns(
    handler: DnsWireHandler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve DNS on ``host``:``port`` (UDP and TCP) until cancelled.

    ``await tg.start(serve_dns, handler, "127.0.0.1", 0)`` returns the bound
    port. ``options`` are :class:`DnsServer`'s keyword arguments.

    Raises:
        RuntimeError: not on anyio's asyncio backend.
        OSError: the port cannot be bound.
    """
    await DnsServer(handler, host, port, **options).serve(task_status=task_status)
