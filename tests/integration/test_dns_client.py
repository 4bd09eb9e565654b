"""DNS client adapters over real sockets on 127.0.0.1 (wire.md §1.4, §7.3, §7.4; behaviour.md §g).

The peer is a small dnspython server written here (UDP + TCP on one port,
TXT answers from a dict, RFC 2136 UPDATE with a TSIG keyring, optional forced
TC=1 and forced rcodes), so every wire detail the client must get right can
be observed from the server side.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import anyio
import anyio.abc
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from dmp.adapters.dns_client import (
    DirectReader,
    ResolverPool,
    TsigUpdateWriter,
    UdpClaimSender,
    txt_rdata,
)
from dmp.adapters.sim import SimClock
from dmp.ports.transport import (
    ClaimSender,
    ExchangeTimeout,
    PeerRejected,
    PeerUnreachable,
    RecordReader,
    RecordWriter,
)

pytestmark = pytest.mark.anyio

LOOPBACK = "127.0.0.1"
ZONE = dns.name.from_text("alice.test.")
KEYNAME = dns.name.from_text("alice-1a2b3c4d-5e6f70.alice.test.")
SECRET = bytes(range(32))
SLOT = dns.name.from_text("slot-3.mb-0123456789ab.alice.test.")
CHUNK = dns.name.from_text("chunk-0001-0123456789ab.alice.test.")

Transport = Literal["udp", "tcp"]


class TxtServer:
    """A tiny authoritative TXT server with RFC 2136 UPDATE, for client tests.

    Attributes:
        records: lowercased owner text → values (joined strings), append order.
        seen: every parsed request with the transport it came over.
        update_strings: the character-strings of every ADD, as received.
        force_tc: answer every UDP request with TC=1 (header + question only).
        header_only_tc: with ``force_tc``, send the bare 12-byte header instead.
        query_rcode: answer queries with this rcode instead of looking up.
        sign_replies: sign replies to signed requests (False sends them unsigned).
        tcp_payload_cap: cap TCP answers at the query's EDNS payload size and
            answer SERVFAIL above it, as the reference node does.
    """

    def __init__(self, keys: dict[dns.name.Name, dns.tsig.Key] | None = None) -> None:
        self.keys = keys or {}
        self.records: dict[str, list[str]] = {}
        self.seen: list[tuple[Transport, dns.message.Message]] = []
        self.update_strings: list[tuple[bytes, ...]] = []
        self.force_tc = False
        self.header_only_tc = False
        self.query_rcode: dns.rcode.Rcode | None = None
        self.sign_replies = True
        self.tcp_payload_cap = False
        self.port = 0

    def put(self, owner: dns.name.Name, *values: str) -> None:
        self.records.setdefault(owner.to_text().lower(), []).extend(values)

    def values(self, owner: dns.name.Name) -> list[str]:
        return list(self.records.get(owner.to_text().lower(), []))

    def count(self, transport: Transport | None = None) -> int:
        return sum(1 for t, _ in self.seen if transport in (None, t))

    # -- message handling ----------------------------------------------------

    def handle(self, wire: bytes, transport: Transport) -> bytes | None:
        try:
            request = dns.message.from_wire(wire, keyring=self.keys)
        except dns.exception.DNSException:
            if len(wire) < 12:
                return None
            # the 12-byte NOTAUTH stub a dmp node sends on TSIG failure
            flags = int.from_bytes(wire[2:4], "big")
            flags = (flags | dns.flags.QR) & ~0x000F | dns.rcode.NOTAUTH
            return wire[:2] + flags.to_bytes(2, "big") + bytes(8)
        self.seen.append((transport, request))
        if transport == "udp" and self.force_tc:
            if self.header_only_tc:
                flags = int.from_bytes(wire[2:4], "big") | dns.flags.QR | dns.flags.TC
                return wire[:2] + flags.to_bytes(2, "big") + bytes(8)
            reply = dns.message.make_response(request)
            reply.flags |= dns.flags.TC
            return reply.to_wire()
        if request.opcode() == dns.opcode.UPDATE:
            assert isinstance(request, dns.update.UpdateMessage)
            reply = self._update(request)
        else:
            reply = self._query(request)
        if not self.sign_replies:
            reply.keyring = None
            reply.tsig = None
        max_size = 65535 if transport == "tcp" else max(512, request.payload)
        if transport == "tcp" and self.tcp_payload_cap and request.edns >= 0:
            max_size = max(512, request.payload)
        try:
            return reply.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            short = dns.message.make_response(request)
            if transport == "tcp":
                short.set_rcode(dns.rcode.SERVFAIL)
                return short.to_wire()
            short.flags |= dns.flags.TC
            return short.to_wire()

    def _query(self, request: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(request)
        reply.flags |= dns.flags.AA
        if self.query_rcode is not None:
            reply.set_rcode(self.query_rcode)
            return reply
        question = request.question[0]
        values = self.records.get(question.name.to_text().lower())
        if values is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            for value in values:
                rrset.add(txt_rdata(value), 60)
            reply.answer.append(rrset)
        return reply

    def _update(self, request: dns.update.UpdateMessage) -> dns.message.Message:
        reply = dns.message.make_response(request)
        if request.zone[0].name != ZONE:
            reply.set_rcode(dns.rcode.NOTAUTH)
            return reply
        for rrset in request.update:
            if not rrset.name.is_subdomain(ZONE):
                reply.set_rcode(dns.rcode.NOTZONE)
                return reply
        for rrset in request.update:
            key = rrset.name.to_text().lower()
            if rrset.deleting == dns.rdataclass.ANY:
                self.records.pop(key, None)
            elif rrset.deleting == dns.rdataclass.NONE:
                gone = {b"".join(rd.strings).decode() for rd in rrset}
                kept = [v for v in self.records.get(key, []) if v not in gone]
                self.records[key] = kept
            else:
                for rd in rrset:
                    self.update_strings.append(tuple(rd.strings))
                    value = b"".join(rd.strings).decode()
                    if value not in self.records.setdefault(key, []):
                        self.records[key].append(value)
        return reply

    # -- sockets -------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        for _ in range(20):
            udp = await anyio.create_udp_socket(local_host=LOOPBACK, local_port=0)
            port = udp.extra(anyio.abc.SocketAttribute.local_port)
            try:
                tcp = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=port)
            except OSError:
                await udp.aclose()
                continue
            break
        else:
            raise RuntimeError("no free port for UDP and TCP")
        self.port = port
        async with udp, tcp, anyio.create_task_group() as tg:
            tg.start_soon(tcp.serve, self._tcp_client)
            task_status.started(port)
            async for wire, addr in udp:
                out = self.handle(wire, "udp")
                if out:
                    await udp.sendto(out, *addr)

    async def _tcp_client(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                size = int.from_bytes(await reader.receive_exactly(2), "big")
                wire = await reader.receive_exactly(size)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            out = self.handle(wire, "tcp")
            if out:
                await stream.send(len(out).to_bytes(2, "big") + out)


@pytest.fixture
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


async def start(tg: anyio.abc.TaskGroup, server: TxtServer) -> TxtServer:
    await tg.start(server.serve)
    return server


@pytest.fixture
async def node(task_group: anyio.abc.TaskGroup) -> TxtServer:
    key = dns.tsig.Key(KEYNAME, SECRET, "hmac-sha256")
    return await start(task_group, TxtServer({KEYNAME: key}))


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


class BlackHole:
    """A bound UDP socket that never answers; counts what it was sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.received = 0

    def drain(self) -> int:
        while True:
            try:
                self.sock.recv(65535)
            except BlockingIOError:
                return self.received
            self.received += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def writer(node: TxtServer, secret: bytes = SECRET) -> TsigUpdateWriter:
    return TsigUpdateWriter((LOOPBACK, node.port), ZONE, KEYNAME, secret)


# ---- ports --------------------------------------------------------------------


def test_adapters_implement_the_ports() -> None:
    assert isinstance(ResolverPool([(LOOPBACK, 53)]), RecordReader)
    assert isinstance(DirectReader(LOOPBACK, 53), RecordReader)
    assert isinstance(TsigUpdateWriter((LOOPBACK, 53), ZONE, KEYNAME, SECRET), RecordWriter)
    assert isinstance(UdpClaimSender(), ClaimSender)


def test_pool_needs_an_upstream() -> None:
    with pytest.raises(ValueError, match="upstream"):
        ResolverPool([])


# ---- TSIG UPDATE writer ---------------------------------------------------------


async def test_long_value_is_split_and_arrives_joined(node: TxtServer) -> None:
    """A 700-byte value goes out as ≤255-byte strings and reads back intact."""
    value = "v=dmp1;t=manifest;" + "é" * 341  # multi-byte UTF-8 across split points
    assert len(value.encode()) > 600

    await writer(node).publish(SLOT, value, 300)

    assert node.values(SLOT) == [value]
    (strings,) = node.update_strings
    assert len(strings) == 3
    assert all(len(s) <= 255 for s in strings)
    transport, request = node.seen[-1]
    assert transport == "udp"
    assert request.had_tsig
    assert request.keyname == KEYNAME
    (rrset,) = request.update  # type: ignore[attr-defined]
    assert (rrset.rdclass, rrset.rdtype, rrset.ttl) == (dns.rdataclass.IN, dns.rdatatype.TXT, 300)
    assert request.zone[0].name == ZONE  # type: ignore[attr-defined]
    assert await DirectReader(LOOPBACK, node.port).query_txt(SLOT) == [value]


async def test_delete_one_and_delete_all(node: TxtServer) -> None:
    w = writer(node)
    for value in ("a", "b", "c"):
        await w.publish(SLOT, value, 60)
    await w.publish(CHUNK, "z", 60)

    await w.delete(SLOT, "b")

    assert node.values(SLOT) == ["a", "c"]
    (rrset,) = node.seen[-1][1].update  # type: ignore[attr-defined]
    assert rrset.deleting == dns.rdataclass.NONE
    assert [b"".join(rd.strings) for rd in rrset] == [b"b"]

    await w.delete(SLOT)

    assert node.values(SLOT) == []
    (rrset,) = node.seen[-1][1].update  # type: ignore[attr-defined]
    assert rrset.deleting == dns.rdataclass.ANY
    assert rrset.rdtype == dns.rdatatype.TXT
    assert node.values(CHUNK) == ["z"]


@pytest.mark.parametrize("header_only", [False, True])
async def test_truncated_update_reply_is_retried_over_tcp(
    node: TxtServer, header_only: bool
) -> None:
    node.force_tc = True
    node.header_only_tc = header_only

    await writer(node).publish(SLOT, "over tcp", 60)

    assert [t for t, _ in node.seen] == ["udp", "tcp"]
    assert node.values(SLOT) == ["over tcp"]


async def test_bad_secret_is_rejected_with_notauth(node: TxtServer) -> None:
    with pytest.raises(PeerRejected) as exc:
        await writer(node, secret=b"\xff" * 32).publish(SLOT, "forged", 60)

    assert exc.value.rcode == dns.rcode.NOTAUTH
    assert node.values(SLOT) == []


async def test_error_rcodes_become_peer_rejected(node: TxtServer) -> None:
    outside = dns.name.from_text("slot-1.mb-0123456789ab.bob.test.")
    with pytest.raises(PeerRejected) as notzone:
        await writer(node).publish(outside, "x", 60)
    wrong_zone = TsigUpdateWriter((LOOPBACK, node.port), "bob.test.", KEYNAME, SECRET, timeout=2.0)
    with pytest.raises(PeerRejected) as notauth:
        await wrong_zone.publish(outside, "x", 60)

    assert notzone.value.rcode == dns.rcode.NOTZONE
    assert notauth.value.rcode == dns.rcode.NOTAUTH
    assert "NOTZONE" in str(notzone.value)


async def test_unsigned_success_reply_is_not_trusted(node: TxtServer) -> None:
    """A NOERROR reply without a valid TSIG does not count as success."""
    node.sign_replies = False

    with pytest.raises(PeerRejected, match="TSIG"):
        await writer(node).publish(SLOT, "x", 60)


async def test_writer_against_closed_port_is_unreachable() -> None:
    w = TsigUpdateWriter((LOOPBACK, closed_udp_port()), ZONE, KEYNAME, SECRET)

    with pytest.raises(PeerUnreachable) as exc:
        await w.publish(SLOT, "x", 60)

    assert not isinstance(exc.value, ExchangeTimeout)  # ICMP refusal, not a 5 s wait


async def test_silent_peer_times_out(black_hole: BlackHole) -> None:
    w = TsigUpdateWriter((LOOPBACK, black_hole.port), ZONE, KEYNAME, SECRET, timeout=0.2)

    with pytest.raises(ExchangeTimeout):
        await w.delete(SLOT)

    assert black_hole.drain() == 1


async def test_unresolvable_host_is_unreachable() -> None:
    w = TsigUpdateWriter(("host.invalid", 53), ZONE, KEYNAME, SECRET, timeout=2.0)

    with pytest.raises(PeerUnreachable):
        await w.publish(SLOT, "x", 60)


async def test_concurrent_publishes_all_land(node: TxtServer) -> None:
    w = writer(node)
    values = [f"value-{i:02d}" for i in range(24)]
    async with anyio.create_task_group() as tg:
        for v in values:
            tg.start_soon(w.publish, SLOT, v, 60)

    assert sorted(node.values(SLOT)) == values


# ---- claim sender ---------------------------------------------------------------


async def test_claim_is_an_unsigned_add_to_the_zone(node: TxtServer) -> None:
    claim_owner = dns.name.from_text("claim-7.mb-0123456789ab.alice.test.")
    sender = UdpClaimSender(targets={ZONE: (LOOPBACK, node.port)})

    await sender.send_claim(ZONE, claim_owner, "v=dmp1;t=claim;" + "x" * 200, 300)

    assert node.values(claim_owner) == ["v=dmp1;t=claim;" + "x" * 200]
    _, request = node.seen[-1]
    assert not request.had_tsig
    assert request.zone[0].name == ZONE  # type: ignore[attr-defined]
    (rrset,) = request.update  # type: ignore[attr-defined]
    assert (rrset.rdclass, rrset.ttl, rrset.deleting) == (dns.rdataclass.IN, 300, None)


async def test_claim_rejection_carries_the_rcode(node: TxtServer) -> None:
    bob = dns.name.from_text("bob.test.")
    sender = UdpClaimSender(targets={bob: (LOOPBACK, node.port)})

    with pytest.raises(PeerRejected) as exc:
        await sender.send_claim(
            bob, dns.name.from_text("claim-1.mb-0123456789ab.bob.test."), "c", 60
        )

    assert exc.value.rcode == dns.rcode.NOTAUTH


def test_claim_target_defaults_to_the_zone_apex_host() -> None:
    sender = UdpClaimSender(port=5353)

    assert sender.target(dns.name.from_text("dmp.example.org.")) == ("dmp.example.org", 5353)


# ---- readers --------------------------------------------------------------------


async def test_direct_reader_reads_joined_values_and_nxdomain(node: TxtServer) -> None:
    node.put(SLOT, "short", "x" * 600)
    reader = DirectReader(LOOPBACK, node.port)

    assert sorted(await reader.query_txt(SLOT)) == ["short", "x" * 600]
    assert await reader.query_txt(CHUNK) == []


async def test_large_answer_falls_back_to_tcp(node: TxtServer) -> None:
    """An RRset bigger than the advertised EDNS payload comes back over TCP."""
    values = [f"{i:02d}" + "y" * 1000 for i in range(4)]
    node.put(SLOT, *values)

    assert sorted(await DirectReader(LOOPBACK, node.port).query_txt(SLOT)) == values
    assert [t for t, _ in node.seen] == ["udp", "tcp"]
    _, query = node.seen[0]
    assert query.edns == 0
    assert query.payload == 1232


async def test_tcp_retry_advertises_the_largest_payload(node: TxtServer) -> None:
    """A server that caps TCP answers at the EDNS payload (the reference node) still answers."""
    values = [f"{i:02d}" + "y" * 1000 for i in range(4)]
    node.put(SLOT, *values)
    node.tcp_payload_cap = True

    assert sorted(await DirectReader(LOOPBACK, node.port).query_txt(SLOT)) == values
    assert [(t, q.edns, q.payload) for t, q in node.seen] == [("udp", 0, 1232), ("tcp", 0, 65535)]


async def test_forced_tc_on_a_query_is_retried_over_tcp(node: TxtServer) -> None:
    node.put(SLOT, "v")
    node.force_tc = True
    node.header_only_tc = True

    assert await DirectReader(LOOPBACK, node.port).query_txt(SLOT) == ["v"]
    assert [t for t, _ in node.seen] == ["udp", "tcp"]


async def test_non_utf8_values_are_skipped(node: TxtServer) -> None:
    original = node._query

    def query(request: dns.message.Message) -> dns.message.Message:
        reply = original(request)
        rrset = dns.rrset.RRset(request.question[0].name, dns.rdataclass.IN, dns.rdatatype.TXT)
        rrset.add(txt_rdata("good"), 60)
        rrset.add(
            dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.TXT, b"\x02\xff\xfe", 0, 3),
            60,
        )
        reply.set_rcode(dns.rcode.NOERROR)
        reply.answer = [rrset]
        return reply

    node._query = query  # type: ignore[method-assign]

    assert await DirectReader(LOOPBACK, node.port).query_txt(SLOT) == ["good"]


async def test_concurrent_lookups_each_get_their_own_answer(node: TxtServer) -> None:
    """The reader is safe for concurrent use (recv runs its lookups in a task group)."""
    owners = [dns.name.from_text(f"slot-{i}.mb-0123456789ab.alice.test.") for i in range(10)]
    for i, owner in enumerate(owners):
        if i % 3:
            node.put(owner, f"value-{i}")
    pool = ResolverPool([(LOOPBACK, node.port)])
    results: dict[int, list[str]] = {}

    async def look(i: int) -> None:
        results[i] = await pool.query_txt(owners[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(owners)):
            tg.start_soon(look, i)

    assert results == {i: ([f"value-{i}"] if i % 3 else []) for i in range(len(owners))}


async def test_failover_past_a_closed_port(task_group: anyio.abc.TaskGroup) -> None:
    good = await start(task_group, TxtServer())
    good.put(SLOT, "found")
    clock = SimClock()
    dead = (LOOPBACK, closed_udp_port())
    pool = ResolverPool([dead, (LOOPBACK, good.port)], clock=clock)

    assert await pool.query_txt(SLOT) == ["found"]
    assert pool.in_cooldown(dead)
    assert not pool.in_cooldown((LOOPBACK, good.port))


async def test_cooldown_skips_a_failed_upstream_until_it_expires(
    task_group: anyio.abc.TaskGroup, black_hole: BlackHole
) -> None:
    good = await start(task_group, TxtServer())
    good.put(SLOT, "found")
    clock = SimClock()
    hole = (LOOPBACK, black_hole.port)
    pool = ResolverPool([hole, (LOOPBACK, good.port)], timeout=0.2, cooldown=60.0, clock=clock)

    assert await pool.query_txt(SLOT) == ["found"]
    assert black_hole.drain() == 1

    clock.advance(59)
    assert await pool.query_txt(SLOT) == ["found"]
    assert black_hole.drain() == 1  # skipped while cooling down

    clock.advance(1)
    assert await pool.query_txt(SLOT) == ["found"]
    assert black_hole.drain() == 2
    assert good.count() == 3


async def test_upstreams_in_cooldown_are_a_last_resort(
    task_group: anyio.abc.TaskGroup,
) -> None:
    only = await start(task_group, TxtServer())
    only.put(SLOT, "back")
    clock = SimClock()
    pool = ResolverPool([(LOOPBACK, only.port)], clock=clock)
    only.query_rcode = dns.rcode.SERVFAIL

    with pytest.raises(PeerRejected) as exc:
        await pool.query_txt(SLOT)
    assert exc.value.rcode == dns.rcode.SERVFAIL
    assert pool.in_cooldown((LOOPBACK, only.port))

    only.query_rcode = None
    assert await pool.query_txt(SLOT) == ["back"]  # tried although cooling: nobody else
    assert not pool.in_cooldown((LOOPBACK, only.port))


async def test_every_upstream_down_is_unreachable(black_hole: BlackHole) -> None:
    pool = ResolverPool([(LOOPBACK, closed_udp_port()), (LOOPBACK, black_hole.port)], timeout=0.2)

    with pytest.raises(PeerUnreachable):
        await pool.query_txt(SLOT)


async def test_lifetime_bounds_the_whole_lookup(black_hole: BlackHole) -> None:
    pool = ResolverPool(
        [(LOOPBACK, black_hole.port), (LOOPBACK, closed_udp_port())],
        timeout=5.0,
        lifetime=0.3,
    )

    with pytest.raises(ExchangeTimeout):
        await pool.query_txt(SLOT)

    assert black_hole.drain() == 1


async def test_oracle_rule(task_group: anyio.abc.TaskGroup) -> None:
    """NXDOMAIN demotes a resolver only when a later one returns records."""
    stale = await start(task_group, TxtServer())
    fresh = await start(task_group, TxtServer())
    fresh.put(SLOT, "exists")
    clock = SimClock()
    a, b = (LOOPBACK, stale.port), (LOOPBACK, fresh.port)
    pool = ResolverPool([a, b], clock=clock)

    # both deny: an empty answer, nobody demoted
    assert await pool.query_txt(CHUNK) == []
    assert (stale.count(), fresh.count()) == (1, 1)
    assert not pool.in_cooldown(a)
    assert not pool.in_cooldown(b)

    # the first denies a name the second has: the first is demoted
    assert await pool.query_txt(SLOT) == ["exists"]
    assert (stale.count(), fresh.count()) == (2, 2)
    assert pool.in_cooldown(a)

    # while demoted, the first is not asked at all
    assert await pool.query_txt(CHUNK) == []
    assert (stale.count(), fresh.count()) == (2, 3)

    # after the cooldown it is first in line again
    clock.advance(60)
    stale.put(SLOT, "exists")
    assert await pool.query_txt(SLOT) == ["exists"]
    assert (stale.count(), fresh.count()) == (3, 3)


async def test_first_upstream_with_records_wins(task_group: anyio.abc.TaskGroup) -> None:
    first = await start(task_group, TxtServer())
    second = await start(task_group, TxtServer())
    first.put(SLOT, "from-first")
    second.put(SLOT, "from-second")
    pool = ResolverPool([(LOOPBACK, first.port), (LOOPBACK, second.port)])

    assert await pool.query_txt(SLOT) == ["from-first"]
    assert second.count() == 0


async def test_require_dnssec_refuses_unvalidated_answers(node: TxtServer) -> None:
    node.put(SLOT, "v")
    pool = ResolverPool([(LOOPBACK, node.port)], require_dnssec=True)

    with pytest.raises(PeerRejected, match="DNSSEC"):
        await pool.query_txt(SLOT)

    _, query = node.seen[-1]
    assert query.flags & dns.flags.AD
    assert query.ednsflags & dns.flags.DO


# ---- against the node's own DNS server ------------------------------------------


async def test_claim_sender_and_reader_against_the_node(
    task_group: anyio.abc.TaskGroup,
) -> None:
    """A verifying claim is accepted un-TSIG'd by a claim-provider node; a forged one is REFUSED."""
    import hashlib
    import time

    from dmp.adapters.clock import SystemClock
    from dmp.adapters.dns_server import serve_dns
    from dmp.adapters.memory_store import MemoryRecordStore
    from dmp.apps.node.dns_handler import DnsConfig, DnsHandler
    from dmp.domain.claim import Claim, sign_claim
    from dmp.domain.keys import ed25519_public_from_seed
    from dmp.domain.names import claim_owner

    handler = DnsHandler(
        DnsConfig(served_zone="alice.test", dns_update_enabled=True, claim_provider=True),
        MemoryRecordStore(),
        clock=SystemClock(),
    )
    port = await task_group.start(serve_dns, handler, LOOPBACK, 0)
    seed = hashlib.sha256(b"sender").digest()
    now = int(time.time())
    claim = Claim(
        msg_id=bytes(range(16)),
        sender_spk=ed25519_public_from_seed(seed),
        sender_mailbox_domain="bob.test",
        slot=7,
        ts=now,
        exp=now + 300,
    )
    wire = sign_claim(claim, seed)
    owner = claim_owner(hashlib.sha256(b"recipient x25519").digest(), 7, "alice.test")
    sender = UdpClaimSender(targets={ZONE: (LOOPBACK, port)})

    await sender.send_claim(ZONE, owner, wire, 300)

    assert await DirectReader(LOOPBACK, port).query_txt(owner) == [wire]
    with pytest.raises(PeerRejected) as exc:
        await sender.send_claim(ZONE, owner, wire[:-8] + "AAAAAAA=", 300)
    assert exc.value.rcode == dns.rcode.REFUSED
    assert await DirectReader(LOOPBACK, port).query_txt(owner) == [wire]
