"""HTTP client adapters against the node's Quart app in process, and against httpx fakes.

The happy paths run through ``httpx.ASGITransport`` over
:func:`dmp.adapters.http_api.create_app` (wire.md §8, §10); transport
failures and odd replies use ``httpx.MockTransport``. The last test goes all
the way: register a TSIG key over HTTP, then write through the node's real
DNS server with :class:`TsigUpdateWriter` and read back with
:class:`DirectReader`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import attrs
import dns.name
import httpx
import pytest

from dmp.adapters.clock import SystemClock
from dmp.adapters.dns_client import DirectReader, TsigUpdateWriter
from dmp.adapters.http_api import HttpConfig, create_app
from dmp.adapters.http_client import (
    MAX_CONNECTIONS,
    BearerWriter,
    RegistrationClient,
    normalize_base_url,
)
from dmp.adapters.memory_store import MemoryRecordStore, MemoryTsigKeyStore
from dmp.adapters.token_store import MemoryTokenStore
from dmp.domain import registration as reg
from dmp.domain.crypto import x25519_public
from dmp.domain.keys import ed25519_public_from_seed
from dmp.ports.transport import (
    ExchangeTimeout,
    PeerRejected,
    PeerUnreachable,
    RecordWriter,
)

pytestmark = pytest.mark.anyio

ZONE = "mesh.example"
NODE = "dmp.mesh.example"
BASE = "http://node.test"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


ALICE_ID = dns.name.from_text(f"id-{_sha('alice')[:16]}.{ZONE}.")
BOB_ID = dns.name.from_text(f"id-{_sha('bob')[:16]}.{ZONE}.")


@attrs.frozen
class Node:
    app: Any
    store: MemoryRecordStore
    tsig_keys: MemoryTsigKeyStore
    clock: SystemClock

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self.app, client=("192.0.2.10", 40000))


def make_node() -> Node:
    config = HttpConfig(
        http_host="127.0.0.1",
        http_rate=0,
        auth_mode="multi-tenant",
        operator_token="operator-secret",
        node_hostname=NODE,
        served_zone=ZONE,
        registration_enabled=True,
        dns_update_enabled=True,
        registration_endpoint_rate=0,
    )
    store, tokens, tsig_keys, clock = (
        MemoryRecordStore(),
        MemoryTokenStore(),
        MemoryTsigKeyStore(),
        SystemClock(),
    )
    app = create_app(
        config,
        store=store,
        clock=clock,
        random_bytes=os.urandom,
        tokens=tokens,
        audit=tokens,
        tsig_keys=tsig_keys,
    )
    return Node(app, store, tsig_keys, clock)


@pytest.fixture
def node() -> Node:
    return make_node()


@pytest.fixture
async def registrar(node: Node) -> AsyncIterator[RegistrationClient]:
    async with RegistrationClient(BASE, transport=node.transport()) as client:
        yield client


@attrs.frozen
class User:
    name: str

    @property
    def seed(self) -> bytes:
        return hashlib.sha256(b"ed:" + self.name.encode()).digest()

    @property
    def x_priv(self) -> bytes:
        return hashlib.sha256(b"x:" + self.name.encode()).digest()

    @property
    def spk(self) -> bytes:
        return ed25519_public_from_seed(self.seed)

    @property
    def subject(self) -> str:
        return f"{self.name}@{ZONE}"


ALICE = User("alice")


async def signed_challenge(client: RegistrationClient, user: User) -> dict[str, Any]:
    ch = await client.challenge()
    challenge = bytes.fromhex(ch["challenge"])
    payload = reg.signing_payload(challenge, user.subject, ch["node"])
    return {
        "subject": user.subject,
        "ed25519_spk": user.spk,
        "challenge": challenge,
        "signature": reg.sign_registration(user.seed, payload),
        "_server_x25519_pub": bytes.fromhex(ch["server_x25519_pub"]),
    }


async def values_at(node: Node, owner: dns.name.Name) -> list[str]:
    rows = await node.store.get(owner.to_text(omit_final_dot=True), node.clock.now())
    return [r.value for r in rows]


# ---- against the node's app -------------------------------------------------------


def test_bearer_writer_is_a_record_writer() -> None:
    assert isinstance(BearerWriter(BASE, "t"), RecordWriter)


async def test_health(registrar: RegistrationClient) -> None:
    assert await registrar.health() == {"status": "ok"}


async def test_register_then_publish_and_delete_with_the_token(
    node: Node, registrar: RegistrationClient
) -> None:
    """A self-registered token publishes at the user's identity owner and deletes there."""
    proof = await signed_challenge(registrar, ALICE)
    proof.pop("_server_x25519_pub")
    minted = await registrar.confirm(**proof)
    assert minted["subject"] == ALICE.subject
    assert minted["token"].startswith("dmp_v1_")

    async with BearerWriter(BASE, minted["token"], transport=node.transport()) as writer:
        await writer.publish(ALICE_ID, "v=dmp1;t=identity;one", 600)
        await writer.publish(ALICE_ID, "v=dmp1;t=identity;two", 600)
        assert sorted(await values_at(node, ALICE_ID)) == [
            "v=dmp1;t=identity;one",
            "v=dmp1;t=identity;two",
        ]

        await writer.delete(ALICE_ID, "v=dmp1;t=identity;one")
        assert await values_at(node, ALICE_ID) == ["v=dmp1;t=identity;two"]

        await writer.delete(ALICE_ID, "never-published")  # 404: already gone
        await writer.delete(ALICE_ID)
        assert await values_at(node, ALICE_ID) == []

        with pytest.raises(PeerRejected) as exc:
            await writer.publish(BOB_ID, "v=dmp1;t=identity;forged", 600)
    assert exc.value.status in (401, 403)
    assert await values_at(node, BOB_ID) == []


async def test_bad_token_is_rejected_with_the_servers_reason(node: Node) -> None:
    async with BearerWriter(BASE, "dmp_v1_nope", transport=node.transport()) as writer:
        with pytest.raises(PeerRejected) as exc:
            await writer.publish(ALICE_ID, "x", 60)

    assert exc.value.status == 401
    assert "unauthorized" in str(exc.value).lower()
    assert exc.value.rcode is None


async def test_registration_errors_carry_status_and_error_text(
    registrar: RegistrationClient,
) -> None:
    proof = await signed_challenge(registrar, ALICE)
    proof.pop("_server_x25519_pub")
    proof["signature"] = bytes(64)

    with pytest.raises(PeerRejected) as exc:
        await registrar.confirm(**proof)

    assert exc.value.status == 401
    assert "HTTP 401" in str(exc.value)
    reused = await signed_challenge(registrar, ALICE)
    reused.pop("_server_x25519_pub")
    await registrar.confirm(**reused)
    with pytest.raises(PeerRejected) as again:
        await registrar.confirm(**reused)  # the challenge is single-use
    assert again.value.status == 400
    assert "challenge" in str(again.value)


@pytest.fixture
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


async def test_tsig_registration_then_update_through_the_nodes_dns(
    node: Node, registrar: RegistrationClient, task_group: anyio.abc.TaskGroup
) -> None:
    """A TSIG key minted over HTTP writes a >255-byte value through the node's DNS server."""
    from dmp.adapters.dns_server import serve_dns
    from dmp.apps.node.dns_handler import DnsConfig, DnsHandler

    proof = await signed_challenge(registrar, ALICE)
    server_pub = proof.pop("_server_x25519_pub")
    x_pub = x25519_public(ALICE.x_priv)
    pop = reg.x25519_pop(ALICE.x_priv, server_pub, proof["challenge"], ALICE.subject, x_pub)
    minted = await registrar.tsig_confirm(**proof, x25519_pub=x_pub, x25519_pop=pop)
    assert minted["zone"].rstrip(".") == ZONE

    handler = DnsHandler(
        DnsConfig(served_zone=ZONE, dns_update_enabled=True),
        node.store,
        clock=node.clock,
        tsig_keys=node.tsig_keys,
    )
    port = await task_group.start(serve_dns, handler, "127.0.0.1", 0)
    writer = TsigUpdateWriter(
        ("127.0.0.1", port),
        minted["zone"],
        minted["tsig_key_name"],
        bytes.fromhex(minted["tsig_secret_hex"]),
        minted["tsig_algorithm"],
    )
    mailbox = hashlib.sha256(hashlib.sha256(x_pub).digest()).hexdigest()[:12]
    slot = dns.name.from_text(f"slot-4.mb-{mailbox}.{ZONE}.")
    value = "v=dmp1;t=manifest;" + "m" * 700

    await writer.publish(slot, value, 300)

    assert await values_at(node, slot) == [value]
    assert await DirectReader("127.0.0.1", port).query_txt(slot) == [value]

    await writer.delete(slot, value)
    assert await DirectReader("127.0.0.1", port).query_txt(slot) == []

    stranger = TsigUpdateWriter(
        ("127.0.0.1", port), ZONE, minted["tsig_key_name"], bytes(32), minted["tsig_algorithm"]
    )
    with pytest.raises(PeerRejected) as exc:
        await stranger.publish(slot, value, 300)
    assert exc.value.rcode == 9  # NOTAUTH


# ---- against httpx fakes -----------------------------------------------------------


Handler = Callable[[httpx.Request], httpx.Response]


def mock(handler: Handler) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


async def test_publish_and_delete_request_shapes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201 if request.method == "POST" else 204)

    owner = dns.name.from_text("_dnsmesh-claim-0123456789abcdef.Mesh.Example.")
    async with BearerWriter("node.test:8053/", "tok", transport=mock(handler)) as writer:
        await writer.publish(owner, "v=1 a b", 120)
        await writer.delete(owner, "v=1 a b")
        await writer.delete(owner)

    post, delete_one, delete_all = seen
    assert post.method == "POST"
    assert (
        str(post.url)
        == "https://node.test:8053/v1/records/_dnsmesh-claim-0123456789abcdef.Mesh.Example"
    )
    assert post.headers["Authorization"] == "Bearer tok"
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.content) == {"value": "v=1 a b", "ttl": 120}
    assert delete_one.method == "DELETE"
    assert json.loads(delete_one.content) == {"value": "v=1 a b"}
    assert delete_all.content == b""
    assert "Authorization" in delete_all.headers


async def test_no_token_sends_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True})

    async with BearerWriter(BASE, None, transport=mock(handler)) as writer:
        await writer.publish(ALICE_ID, "x", 60)

    assert "Authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("response", "status", "text"),
    [
        (httpx.Response(413, json={"error": "RRset full"}), 413, "RRset full"),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), 502, "Bad Gateway"),
        (httpx.Response(429), 429, "Too Many Requests"),
    ],
)
async def test_error_statuses_become_peer_rejected(
    response: httpx.Response, status: int, text: str
) -> None:
    async with BearerWriter(BASE, "t", transport=mock(lambda _: response)) as writer:
        with pytest.raises(PeerRejected) as exc:
            await writer.publish(ALICE_ID, "x", 60)

    assert exc.value.status == status
    assert text in str(exc.value)


async def test_delete_error_other_than_404_is_rejected() -> None:
    reply = httpx.Response(403, json={"error": "shared-pool tokens may not delete"})
    async with BearerWriter(BASE, "t", transport=mock(lambda _: reply)) as writer:
        with pytest.raises(PeerRejected, match="may not delete") as exc:
            await writer.delete(ALICE_ID)

    assert exc.value.status == 403


async def test_connect_failure_is_unreachable_and_timeout_is_exchange_timeout() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with BearerWriter(BASE, "t", transport=mock(refuse)) as writer:
        with pytest.raises(PeerUnreachable) as unreachable:
            await writer.publish(ALICE_ID, "x", 60)
    async with RegistrationClient(BASE, transport=mock(stall)) as client:
        with pytest.raises(ExchangeTimeout):
            await client.challenge()

    assert not isinstance(unreachable.value, ExchangeTimeout)


async def test_real_connection_refused_is_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with RegistrationClient(f"http://127.0.0.1:{port}", timeout=2.0) as client:
        with pytest.raises(PeerUnreachable):
            await client.health()


async def test_writes_open_at_most_max_connections_at_once() -> None:
    """16 writes at once reach the node over at most MAX_CONNECTIONS connections.

    The server here answers like the reference node: HTTP/1.0, one connection
    per request (its stdlib server has a listen backlog of 5 and reset the
    connections beyond it when a send published 16 chunks at once).
    """
    active = peak = served = 0

    async def handle(stream: anyio.abc.SocketStream) -> None:
        nonlocal active, peak, served
        async with stream:
            active += 1
            peak = max(peak, active)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                while len(body) < length:
                    body += await stream.receive()
                await anyio.sleep(0.01)  # the server's latency: lets requests overlap
                await stream.send(b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n")
                served += 1
            finally:
                active -= 1

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    owners = [dns.name.from_text(f"chunk-{i:04d}-0123456789ab.{ZONE}.") for i in range(16)]
    async with listener, anyio.create_task_group() as server:
        server.start_soon(listener.serve, handle)
        writer = BearerWriter(f"http://127.0.0.1:{port}", "t", timeout=5.0)
        async with writer, anyio.create_task_group() as writes:
            for owner in owners:
                writes.start_soon(writer.publish, owner, "v" * 300, 60)
        server.cancel_scope.cancel()

    assert served == len(owners)
    assert 2 <= peak <= MAX_CONNECTIONS


async def test_health_returns_the_degraded_body() -> None:
    reply = httpx.Response(503, json={"status": "degraded", "store": "disk on fire"})
    async with RegistrationClient(BASE, transport=mock(lambda _: reply)) as client:
        assert await client.health() == {"status": "degraded", "store": "disk on fire"}


@pytest.mark.parametrize(
    "reply",
    [httpx.Response(200, json=["not", "an", "object"]), httpx.Response(200, text="hello")],
)
async def test_non_object_replies_are_rejected(reply: httpx.Response) -> None:
    async with RegistrationClient(BASE, transport=mock(lambda _: reply)) as client:
        with pytest.raises(PeerRejected, match="JSON"):
            await client.challenge()


async def test_tsig_confirm_sends_hex_fields_and_omits_absent_pop() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"tsig_key_name": "k."})

    async with RegistrationClient(BASE, transport=mock(handler)) as client:
        await client.tsig_confirm(
            subject="alice@mesh.example",
            ed25519_spk=b"\x01" * 32,
            challenge=b"\x02" * 32,
            signature=b"\x03" * 64,
        )
        await client.tsig_confirm(
            subject="alice@mesh.example",
            ed25519_spk=b"\x01" * 32,
            challenge=b"\x02" * 32,
            signature=b"\x03" * 64,
            x25519_pub=b"\x04" * 32,
            x25519_pop=b"\x05" * 32,
        )

    assert bodies[0] == {
        "subject": "alice@mesh.example",
        "ed25519_spk": "01" * 32,
        "challenge": "02" * 32,
        "signature": "03" * 64,
    }
    assert bodies[1]["x25519_pub"] == "04" * 32
    assert bodies[1]["x25519_pop"] == "05" * 32


def test_normalize_base_url() -> None:
    assert normalize_base_url("dmp.example.com") == "https://dmp.example.com"
    assert normalize_base_url("http://127.0.0.1:8053/") == "http://127.0.0.1:8053"
    with pytest.raises(ValueError, match="empty"):
        normalize_base_url("  ")
