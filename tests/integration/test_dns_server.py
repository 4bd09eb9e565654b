"""The DNS server over real sockets on 127.0.0.1, port 0 (behaviour.md §e, wire.md §7)."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update
import pytest

from dmp.adapters.clock import SystemClock
from dmp.adapters.dns_server import DnsServer
from dmp.adapters.memory_store import MemoryRecordStore, MemoryTsigKeyStore
from dmp.apps.node.dns_handler import DnsConfig, DnsHandler
from dmp.ports.store import TsigKey

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
ZONE = "mesh.test"
SECRET = bytes(range(32))
KEYNAME = "alice-f6eff01c-29b772.mesh.test."
SCOPES = ("chunk-*-*.mesh.test", "id-0123456789abcdef.mesh.test", "slot-*.mb-*.mesh.test")
TSIG_KEY = dns.tsig.Key(KEYNAME, SECRET, "hmac-sha256")
BIG = "v=dmp1;" + "m" * 1493  # 1500 bytes: TC without EDNS, six character-strings


class Node:
    def __init__(self, **overrides: Any) -> None:
        base: dict[str, Any] = {
            "served_zone": ZONE,
            "apex_ns": ("ns1.mesh.test",),
            "apex_soa_rname": "hostmaster.mesh.test",
            "dns_update_enabled": True,
            "dns_rate": 0.0,
        }
        base.update(overrides)
        self.clock = SystemClock()
        self.store = MemoryRecordStore()
        self.keys = MemoryTsigKeyStore()
        self.handler = DnsHandler(
            DnsConfig(**base), self.store, clock=self.clock, tsig_keys=self.keys
        )

    async def seed(self) -> None:
        now = self.clock.now()
        await self.store.put("id-0123456789abcdef.mesh.test", "hello", 300, now)
        await self.store.put("big.mesh.test", BIG, 300, now)
        await self.keys.put(
            TsigKey(
                keyname=KEYNAME,
                secret=SECRET,
                algorithm="hmac-sha256",
                allowed_suffixes=SCOPES,
                subject="alice@mesh.test",
                ed25519_public="00" * 32,
                created_at=int(now),
                expires_at=int(now) + 3600,
            )
        )


@asynccontextmanager
async def serving(node: Node, **options: Any) -> AsyncIterator[DnsServer]:
    server = DnsServer(node.handler, HOST, 0, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def txt_values(msg: dns.message.Message) -> list[str]:
    return sorted(b"".join(rd.strings).decode() for rrset in msg.answer for rd in rrset)


def update(owner: str, *strings: bytes, key: dns.tsig.Key | None = TSIG_KEY) -> Any:
    u = dns.update.UpdateMessage(ZONE, keyring=key) if key else dns.update.UpdateMessage(ZONE)
    rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
    u.add(dns.name.from_text(owner + "."), 300, rd)
    return u


async def udp_raw(port: int, wire: bytes) -> bytes:
    async with await anyio.create_connected_udp_socket(HOST, port) as sock:
        await sock.send(wire)
        with anyio.fail_after(5):
            return await sock.receive()


async def read_frame(stream: Any, buf: bytearray) -> bytes:
    while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
        buf += await stream.receive()
    n = int.from_bytes(buf[:2], "big")
    frame = bytes(buf[2 : 2 + n])
    del buf[: 2 + n]
    return frame


def frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


async def test_udp_and_tcp_answer_on_the_same_port() -> None:
    """A TXT query gets the stored value over UDP and over TCP at the reported port."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        assert server.port > 0
        q = dns.message.make_query("id-0123456789abcdef.mesh.test", "TXT")
        udp = await dns.asyncquery.udp(q, HOST, port=server.port, timeout=5)
        tcp = await dns.asyncquery.tcp(q, HOST, port=server.port, timeout=5)
        for reply in (udp, tcp):
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AA
            assert txt_values(reply) == ["hello"]
        nx = await dns.asyncquery.udp(
            dns.message.make_query("nope.mesh.test", "TXT"), HOST, port=server.port, timeout=5
        )
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert [r.rdtype for r in nx.authority] == [dns.rdatatype.SOA]


async def test_edns_and_truncation_with_tcp_fallback() -> None:
    """1500 bytes: TC=1 over plain UDP, whole with EDNS 4096, whole after TCP fallback."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        plain = dns.message.make_query("big.mesh.test", "TXT")
        truncated = await dns.asyncquery.udp(plain, HOST, port=server.port, timeout=5)
        assert truncated.flags & dns.flags.TC
        assert not truncated.answer
        edns = dns.message.make_query("big.mesh.test", "TXT", use_edns=0, payload=4096)
        full = await dns.asyncquery.udp(edns, HOST, port=server.port, timeout=5)
        assert not full.flags & dns.flags.TC
        assert full.edns == 0
        assert txt_values(full) == [BIG]
        assert [len(s) for s in full.answer[0][0].strings] == [255] * 5 + [225]
        reply, used_tcp = await dns.asyncquery.udp_with_fallback(
            plain, HOST, port=server.port, timeout=5
        )
        assert used_tcp
        assert txt_values(reply) == [BIG]


async def test_pipelined_tcp_queries_on_one_connection() -> None:
    """Thirty queries written at once on one connection all get their own answers."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        names = ["id-0123456789abcdef.mesh.test", "big.mesh.test", "nope.mesh.test"] * 10
        queries = {}
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "TXT")
            q.id = 1000 + i
            queries[q.id] = name
        stream = await anyio.connect_tcp(HOST, server.port)
        async with stream:
            await stream.send(
                b"".join(
                    frame(dns.message.make_query(n, "TXT", id=i).to_wire())
                    for i, n in queries.items()
                )
            )
            buf = bytearray()
            seen: dict[int, dns.message.Message] = {}
            with anyio.fail_after(5):
                while len(seen) < len(queries):
                    reply = dns.message.from_wire(await read_frame(stream, buf))
                    seen[reply.id] = reply
        assert set(seen) == set(queries)
        for msg_id, name in queries.items():
            reply = seen[msg_id]
            assert reply.question[0].name == dns.name.from_text(name)
            if name == "nope.mesh.test":
                assert reply.rcode() == dns.rcode.NXDOMAIN
            else:
                assert reply.rcode() == dns.rcode.NOERROR
                assert txt_values(reply) == (["hello"] if name.startswith("id-") else [BIG])


async def test_tsig_update_in_scope_is_accepted() -> None:
    """A signed UPDATE under the key's scope gets a signed NOERROR, over UDP and TCP."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        owner = "slot-3.mb-abcdef012345.mesh.test"
        u = update(owner, b"x" * 255, b"y" * 45)
        reply = await dns.asyncquery.udp(u, HOST, port=server.port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.had_tsig  # dnspython verified the MAC chained to our request
        u2 = update("chunk-0-abcdef012345.mesh.test", b"over tcp")
        assert (await dns.asyncquery.tcp(u2, HOST, port=server.port, timeout=5)).rcode() == 0
        q = dns.message.make_query(owner, "TXT", use_edns=0)
        answer = await dns.asyncquery.udp(q, HOST, port=server.port, timeout=5)
        assert txt_values(answer) == ["x" * 255 + "y" * 45]


async def test_tsig_update_out_of_scope_is_refused() -> None:
    """A signed ADD outside the key's scope is REFUSED and nothing is stored."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        u = update("dmp.mesh.test", b"takeover")
        reply = await dns.asyncquery.udp(u, HOST, port=server.port, timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED
        assert await node.store.get("dmp.mesh.test", time.time()) == []


async def test_bad_mac_is_notauth() -> None:
    """A MAC made with another secret gets NOTAUTH (TSIG error BADSIG)."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        forged = dns.tsig.Key(KEYNAME, b"\x07" * 32, "hmac-sha256")
        u = update("chunk-0-abcdef012345.mesh.test", b"forged", key=forged)
        raw = await udp_raw(server.port, u.to_wire())
        reply = dns.message.from_wire(raw, keyring=False)
        assert reply.rcode() == dns.rcode.NOTAUTH
        assert reply.tsig[0].error == dns.rcode.BADSIG
        with pytest.raises(dns.tsig.PeerBadSignature):
            await dns.asyncquery.udp(u, HOST, port=server.port, timeout=5)
        assert await node.store.get("chunk-0-abcdef012345.mesh.test", time.time()) == []


async def test_stale_time_is_notauth() -> None:
    """A correctly keyed UPDATE signed two hours ago gets NOTAUTH (TSIG error BADTIME)."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        u = update("chunk-0-abcdef012345.mesh.test", b"late", key=None)
        u.id = 777
        wire = u.to_wire()
        rdata = dns.rdtypes.ANY.TSIG.TSIG(
            dns.rdataclass.ANY, dns.rdatatype.TSIG, TSIG_KEY.algorithm, 0, 300, b"", 777, 0, b""
        )
        signed, _ = dns.tsig.sign(wire, TSIG_KEY, rdata, time=int(time.time()) - 7200)
        rd_wire = signed.to_wire()
        stale = bytearray(wire)
        stale += TSIG_KEY.name.to_wire()
        stale += struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rd_wire))
        stale += rd_wire
        struct.pack_into("!H", stale, 10, struct.unpack_from("!H", stale, 10)[0] + 1)
        reply = dns.message.from_wire(await udp_raw(server.port, bytes(stale)), keyring=False)
        assert reply.rcode() == dns.rcode.NOTAUTH
        assert reply.tsig[0].error == dns.rcode.BADTIME
        assert await node.store.get("chunk-0-abcdef012345.mesh.test", time.time()) == []


async def test_idle_tcp_connection_is_closed() -> None:
    """A connection that sends nothing is closed after the idle timeout."""
    node = Node()
    async with serving(node, tcp_idle_timeout_s=0.2) as server:
        stream = await anyio.connect_tcp(HOST, server.port)
        async with stream:
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()


async def test_tcp_connection_cap() -> None:
    """Past max_tcp_connections a new connection is closed at once; the others keep working."""
    node = Node()
    await node.seed()
    async with serving(node, max_tcp_connections=2) as server:
        first = await anyio.connect_tcp(HOST, server.port)
        second = await anyio.connect_tcp(HOST, server.port)
        wire = dns.message.make_query("id-0123456789abcdef.mesh.test", "TXT").to_wire()
        async with first, second:
            for stream in (first, second):  # both are accepted and served
                await stream.send(frame(wire))
                with anyio.fail_after(5):
                    assert await read_frame(stream, bytearray())
            third = await anyio.connect_tcp(HOST, server.port)
            async with third:
                with (
                    anyio.fail_after(5),
                    pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)),
                ):
                    await third.receive()
        assert server.tcp_rejected == 1


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_shutdown_lets_an_inflight_update_finish_and_reply(transport: str) -> None:
    """Cancelling the server while an UPDATE waits on the store still commits and answers it."""

    class GatedStore(MemoryRecordStore):
        gate = anyio.Event()
        entered = anyio.Event()

        async def put(self, *args: Any, **kw: Any) -> None:
            self.entered.set()
            await self.gate.wait()
            await super().put(*args, **kw)

    node = Node()
    await node.seed()
    store = GatedStore()
    node.handler = DnsHandler(node.handler.config, store, clock=node.clock, tsig_keys=node.keys)
    server = DnsServer(node.handler, HOST, 0, shutdown_grace_s=5)
    result: list[dns.message.Message] = []

    async def client(port: int) -> None:
        u = update("chunk-0-abcdef012345.mesh.test", b"durable")
        send = dns.asyncquery.udp if transport == "udp" else dns.asyncquery.tcp
        result.append(await send(u, HOST, port=port, timeout=5))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer, anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            outer.start_soon(client, port)
            await store.entered.wait()
            tg.cancel_scope.cancel()  # shutdown begins while put is blocked
            outer.start_soon(_open_gate_when_closing, server, store.gate)
    assert result[0].rcode() == dns.rcode.NOERROR
    assert [r.value for r in await store.get("chunk-0-abcdef012345.mesh.test", time.time())] == [
        "durable"
    ]


async def _open_gate_when_closing(server: DnsServer, gate: anyio.Event) -> None:
    await anyio.wait_all_tasks_blocked()
    assert server.closing
    gate.set()


async def test_garbage_does_not_stop_the_server() -> None:
    """Junk datagrams and frames get dropped or FORMERR; the next query is answered."""
    node = Node()
    await node.seed()
    async with serving(node) as server:
        async with await anyio.create_connected_udp_socket(HOST, server.port) as sock:
            for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + b"\xff" * 40):
                await sock.send(junk)
        stream = await anyio.connect_tcp(HOST, server.port)
        async with stream:
            junk12 = b"\xee\xee\x00\x00\xff\xff" + b"\x00" * 6  # QDCOUNT 65535, no questions
            await stream.send(b"\x00\x05hello" + b"\x00\x00" + frame(junk12))
            wire = dns.message.make_query("id-0123456789abcdef.mesh.test", "TXT").to_wire()
            await stream.send(frame(wire))
            buf = bytearray()
            with anyio.fail_after(5):
                replies = [dns.message.from_wire(await read_frame(stream, buf)) for _ in range(2)]
        assert replies[0].rcode() == dns.rcode.FORMERR
        assert txt_values(replies[1]) == ["hello"]
        q = dns.message.make_query("id-0123456789abcdef.mesh.test", "TXT")
        assert txt_values(await dns.asyncquery.udp(q, HOST, port=server.port, timeout=5)) == [
            "hello"
        ]


async def test_unspecified_ipv6_host_serves_ipv4_and_ipv6_over_udp_and_tcp() -> None:
    """``DMP_DNS_HOST=::`` answers IPv4 and IPv6 clients on both transports."""
    node = Node()
    await node.seed()
    server = DnsServer(node.handler, "::", 0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        query = dns.message.make_query("id-0123456789abcdef.mesh.test", "TXT")
        for where in ("127.0.0.1", "::1"):
            for send in (dns.asyncquery.udp, dns.asyncquery.tcp):
                reply = await send(query, where, port=port, timeout=2)
                assert reply.rcode() == dns.rcode.NOERROR, (where, send)
                assert [b"".join(rd.strings) for rd in reply.answer[0]] == [b"hello"]
        tg.cancel_scope.cancel()
