"""The HTTP API over real sockets: hypercorn on 127.0.0.1 port 0, driven by httpx."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup

from dmp.adapters.clock import SystemClock
from dmp.adapters.http_api import HttpConfig, create_app, serve_http
from dmp.adapters.memory_store import MemoryRecordStore
from dmp.adapters.sqlite_store import SqliteRecordStore, SqliteTsigKeyStore
from dmp.adapters.token_store import SqliteTokenStore
from dmp.domain import registration as reg
from dmp.domain.crypto import x25519_public
from dmp.domain.keys import ed25519_public_from_seed

pytestmark = pytest.mark.anyio

ZONE = "mesh.example"
NODE = "dmp.mesh.example"
OPERATOR = "op-token"
SEED = hashlib.sha256(b"integration/alice").digest()
X_PRIV = hashlib.sha256(b"integration/alice/x25519").digest()
OWN = f"id-{hashlib.sha256(b'alice').hexdigest()[:16]}.{ZONE}"
SLOT = f"slot-4.mb-{'ab' * 6}.{ZONE}"

CONFIG = HttpConfig(
    http_host="127.0.0.1",
    auth_mode="multi-tenant",
    operator_token=OPERATOR,
    node_hostname=NODE,
    served_zone=ZONE,
    dns_update_enabled=True,
    registration_enabled=True,
)


class Stores:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    async def __aenter__(self) -> Stores:
        self.records = await SqliteRecordStore.open(self.tmp / "dmp.db")
        self.tokens = await SqliteTokenStore.open(self.tmp / "dmp_tokens.db")
        self.tsig = await SqliteTsigKeyStore.open(self.tmp / "dmp_tsig.db")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.records.aclose()
        await self.tokens.aclose()
        await self.tsig.aclose()

    def app(self) -> Any:
        return create_app(
            CONFIG,
            store=self.records,
            clock=SystemClock(),
            random_bytes=os.urandom,
            tokens=self.tokens,
            audit=self.tokens,
            tsig_keys=self.tsig,
        )


def _plain_app(store: MemoryRecordStore | None = None) -> Any:
    """The API with no auth over ``store`` (a fresh in-memory store by default)."""
    return create_app(
        HttpConfig(http_host="127.0.0.1"),
        store=MemoryRecordStore() if store is None else store,
        clock=SystemClock(),
        random_bytes=os.urandom,
    )


async def _serve(tg: TaskGroup, app: Any, **options: Any) -> int:
    """Start ``serve_http(app, **options)`` on 127.0.0.1, port 0, in ``tg``; the bound port."""
    port: int = await tg.start(functools.partial(serve_http, app, "127.0.0.1", 0, **options))
    return port


async def _get_health(stream: Any) -> bytes:
    """Send ``GET /health`` on a kept-alive ``stream`` and read up to the end of its reply."""
    await stream.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b'{"status": "ok"}'):
        data += await stream.receive()
    return data


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _signed_request(c: httpx.AsyncClient, *, tsig: bool) -> dict[str, Any]:
    ch = await c.get("/v1/registration/challenge")
    assert ch.status_code == 200, ch.text
    body = ch.json()
    assert body["node"] == NODE
    challenge = bytes.fromhex(body["challenge"])
    subject = "alice@mesh.example"
    req: dict[str, Any] = {
        "subject": subject,
        "ed25519_spk": ed25519_public_from_seed(SEED).hex(),
        "challenge": body["challenge"],
        "signature": reg.sign_registration(
            SEED, reg.signing_payload(challenge, subject, NODE)
        ).hex(),
    }
    if tsig:
        x_pub = x25519_public(X_PRIV)
        server_pub = bytes.fromhex(body["server_x25519_pub"])
        req["x25519_pub"] = x_pub.hex()
        req["x25519_pop"] = reg.x25519_pop(X_PRIV, server_pub, challenge, subject, x_pub).hex()
    return req


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_registration_publish_delete_and_restart(tmp_path: Path) -> None:
    """Register over HTTP, publish and delete with the bearer token, and keep it all across a restart."""
    async with Stores(tmp_path) as stores, anyio.create_task_group() as tg:
        port = await _serve(tg, stores.app())
        assert port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert (await c.get("/health")).json() == {"status": "ok"}

            r = await c.post("/v1/registration/confirm", json=await _signed_request(c, tsig=False))
            assert r.status_code == 200, r.text
            issued = r.json()
            token = issued["token"]
            assert token.startswith("dmp_v1_")
            assert len(token) == 7 + 52
            assert (issued["rate_per_sec"], issued["rate_burst"]) == (10.0, 50)

            r = await c.post(
                "/v1/registration/tsig-confirm", json=await _signed_request(c, tsig=True)
            )
            assert r.status_code == 200, r.text
            key_name = r.json()["tsig_key_name"]

            for value in ("v=dmp1;t=identity;one", "v=dmp1;t=identity;two"):
                r = await c.post(f"/v1/records/{OWN}", json={"value": value}, headers=bearer(token))
                assert (r.status_code, r.json()) == (201, {"ok": True})
            r = await c.post(
                f"/v1/records/{SLOT}", json={"value": "m", "ttl": 60}, headers=bearer(token)
            )
            assert r.status_code == 201
            assert (await c.delete(f"/v1/records/{SLOT}", headers=bearer(token))).status_code == 401
            r = await c.request(
                "DELETE",
                f"/v1/records/{OWN}",
                json={"value": "v=dmp1;t=identity;one"},
                headers=bearer(token),
            )
            assert r.status_code == 204
            r = await c.get(f"/v1/records/{OWN}", headers=bearer(OPERATOR))
            assert r.json() == {"name": OWN, "values": ["v=dmp1;t=identity;two"]}
        tg.cancel_scope.cancel()
    assert _port_closed(port)

    # restart on the same files: the token, the TSIG key and the records are all there
    async with Stores(tmp_path) as stores, anyio.create_task_group() as tg:
        port = await _serve(tg, stores.app())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            r = await c.get(f"/v1/records/{OWN}", headers=bearer(OPERATOR))
            assert r.json()["values"] == ["v=dmp1;t=identity;two"]
            r = await c.get(f"/v1/records/{SLOT}", headers=bearer(OPERATOR))
            assert r.json()["values"] == ["m"]
            assert (await c.delete(f"/v1/records/{OWN}", headers=bearer(token))).status_code == 204
        assert await stores.tsig.get(key_name) is not None
        events = [e.event.value for e in await stores.tokens.tail(limit=100)]
        assert {"issued", "used", "rejected"} <= set(events)
        tg.cancel_scope.cancel()


async def test_graceful_shutdown_finishes_in_flight_writes() -> None:
    """Setting the shutdown event lets an in-flight write finish with 201 before the server stops."""
    gate = anyio.Event()
    entered = anyio.Event()

    class SlowStore(MemoryRecordStore):
        async def put(self, *args: Any, **kw: Any) -> None:
            entered.set()
            await gate.wait()
            await super().put(*args, **kw)

    store = SlowStore()
    app = _plain_app(store)
    shutdown = anyio.Event()
    statuses: list[int] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            port = await _serve(tg, app, shutdown=shutdown)

            async def publish() -> None:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                    r = await c.post("/v1/records/a.mesh.example", json={"value": "x"})
                    statuses.append(r.status_code)

            tg.start_soon(publish)
            await entered.wait()
            shutdown.set()
            await anyio.sleep(0.05)  # let hypercorn stop accepting before the write completes
            gate.set()
    assert statuses == [201]
    assert await store.count() == 1
    assert _port_closed(port)


async def test_bind_failure_is_reported() -> None:
    """A port that is already taken raises OSError before anything is served."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = _plain_app()
        with pytest.raises(OSError, match="in use"), anyio.fail_after(10):
            await serve_http(app, "127.0.0.1", port)


def _open_connections() -> int:
    """Server-side connection tasks still alive (our acceptor's per-connection coroutine)."""
    import asyncio

    return sum(
        1
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith(
            "_serve_hypercorn.<locals>.on_connect"
        )
    )


async def _until_no_connections(limit_s: float) -> None:
    for _ in range(int(limit_s / 0.01)):
        if not _open_connections():
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"{_open_connections()} connections still open after {limit_s} s")


async def _raw_request(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes or the body ends."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        if half_close:
            await stream.send_eof()
        data = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    return data


async def test_connections_closed_by_the_client_are_released_at_once() -> None:
    """A client that closes after its response frees the server-side connection at once.

    hypercorn alone keeps such a connection (task, h11 state, buffers) until its
    keep-alive timer fires 5 s later; under one-connection-per-request load that
    held thousands of dead connections and grew RSS.
    """
    app = _plain_app()
    async with anyio.create_task_group() as tg:
        port = await _serve(tg, app)
        for i in range(20):
            body = b'{"value": "v%d"}' % i
            reply = await _raw_request(
                port,
                b"POST /v1/records/a.mesh.example HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body),
            )
            assert reply.startswith(b"HTTP/1.1 201"), reply
        # keep-alive timer is 5 s: every connection must be gone well before it
        await _until_no_connections(2.0)
        tg.cancel_scope.cancel()


async def test_half_closed_request_still_gets_its_response() -> None:
    """A client that shuts down its sending side after the request still reads the reply.

    The store yields while it "commits", as the sqlite store does: hypercorn
    reports the half-close as a disconnect while the handler waits.
    """

    class YieldingStore(MemoryRecordStore):
        async def put(self, *args: Any, **kw: Any) -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            await super().put(*args, **kw)

    store = YieldingStore()
    app = _plain_app(store)
    async with anyio.create_task_group() as tg:
        port = await _serve(tg, app)
        body = b'{"value": "half"}'
        reply = await _raw_request(
            port,
            b"POST /v1/records/h.mesh.example HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
            half_close=True,
        )
        assert reply.startswith(b"HTTP/1.1 201"), reply
        assert reply.endswith(b'{"ok": true}'), reply
        assert await store.count() == 1
        await _until_no_connections(2.0)
        tg.cancel_scope.cancel()


async def test_keep_alive_connection_serves_several_requests() -> None:
    """One connection carries several requests (the idle timer is re-armed, not fatal)."""
    app = _plain_app()
    async with anyio.create_task_group() as tg:
        port = await _serve(tg, app)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            for _ in range(3):
                with anyio.fail_after(5):
                    data = await _get_health(stream)
                assert data.startswith(b"HTTP/1.1 200")
            assert _open_connections() == 1
        tg.cancel_scope.cancel()


async def _read_until_closed(stream: Any) -> bytes:
    data = b""
    while True:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data


async def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    """A keep-alive connection left idle is closed by the server after keep_alive_timeout."""
    app = _plain_app()
    async with anyio.create_task_group() as tg:
        port = await _serve(tg, app, keep_alive_timeout=0.2)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(3):  # closed after ~0.2 s idle, not left open
                data = await _read_until_closed(stream)
        assert data.startswith(b"HTTP/1.1 200")
        assert data.endswith(b'{"status": "ok"}')
        await _until_no_connections(1.0)
        tg.cancel_scope.cancel()


async def test_shutdown_closes_idle_keep_alive_connections_at_once() -> None:
    """On shutdown an idle keep-alive connection is closed at once, not after its timer."""
    app = _plain_app()
    shutdown = anyio.Event()
    with anyio.fail_after(3):  # the keep-alive timer (60 s here) must not be waited for
        async with anyio.create_task_group() as tg:
            port = await _serve(tg, app, shutdown=shutdown, keep_alive_timeout=60)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await _get_health(stream)
                assert _open_connections() == 1
                shutdown.set()
                assert await _read_until_closed(stream) == b""
    assert _port_closed(port)


async def test_shutdown_cancels_requests_that_outlive_the_grace_period() -> None:
    """A request still running after graceful_timeout is cancelled and the server stops."""
    entered = anyio.Event()

    class StuckStore(MemoryRecordStore):
        async def put(self, *args: Any, **kw: Any) -> None:
            entered.set()
            await anyio.sleep_forever()

    app = _plain_app(StuckStore())
    shutdown = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            port = await _serve(tg, app, shutdown=shutdown, graceful_timeout=0.2)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                body = b'{"value": "x"}'
                await stream.send(
                    b"POST /v1/records/a.mesh.example HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await entered.wait()
                shutdown.set()
                reply = await _read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 500"), reply  # never 201 for an unfinished write
    assert _port_closed(port)
    assert _open_connections() == 0
