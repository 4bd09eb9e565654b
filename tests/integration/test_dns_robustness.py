"""The DNS server survives hostile input: ≥10,000 fuzzed datagrams plus fuzzed TCP frames.

Hypothesis draws junk and mutations of valid messages (queries, EDNS queries,
TSIG-signed UPDATEs, un-TSIG'd claim UPDATEs). Each example runs a real server
on 127.0.0.1 port 0 and feeds it a batch; afterwards the server must answer a
valid query exactly, no handler error may have been logged (no SERVFAIL from an
internal error), and the stored ``(owner, value)`` set must be unchanged. The
valid messages among the seeds cannot change that set: the signed UPDATEs
re-add values already stored or fall outside the key's scope, and claims are
refused (notifications only, no registered mailbox).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmp.adapters.clock import SystemClock
from dmp.adapters.dns_server import DnsServer
from dmp.adapters.memory_store import MemoryRecordStore, MemoryTsigKeyStore
from dmp.apps.node.dns_handler import DnsConfig, DnsHandler
from dmp.domain import keys
from dmp.domain.claim import Claim, sign_claim
from dmp.ports.store import TsigKey

HOST = "127.0.0.1"
ZONE = "mesh.test"
SECRET = bytes(range(32))
KEYNAME = "alice-f6eff01c-29b772.mesh.test."
TSIG_KEY = dns.tsig.Key(KEYNAME, SECRET, "hmac-sha256")
SCOPES = ("chunk-*-*.mesh.test", "id-0123456789abcdef.mesh.test", "slot-*.mb-*.mesh.test")
RECORDS = {
    "id-0123456789abcdef.mesh.test": ["identity-value"],
    "slot-1.mb-abcdef012345.mesh.test": ["m" * 700, "second"],
    "chunk-0-abcdef012345.mesh.test": ["chunk"],
}
SENTINEL = "id-0123456789abcdef.mesh.test"
UDP_BATCHES = 100
UDP_BATCH = 100
TCP_BATCHES = 30
TCP_BATCH = 100
SUB_BATCH = 50  # below the server's max_pending, so nothing is dropped for load

_FUZZ = settings(
    max_examples=UDP_BATCHES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _txt(*strings: bytes) -> dns.rdtypes.ANY.TXT.TXT:
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text + ".")


def seed_messages() -> list[bytes]:
    """Valid messages to mutate (signed ones are signed now, within the TSIG fudge)."""
    now = int(time.time())
    seeds = [
        dns.message.make_query(SENTINEL, "TXT").to_wire(),
        dns.message.make_query("slot-1.mb-abcdef012345.mesh.test", "TXT", use_edns=0).to_wire(),
        dns.message.make_query(
            "nope.mesh.test",
            "TXT",
            use_edns=0,
            payload=1232,
            options=[dns.edns.GenericOption(10, b"\x01" * 8)],
        ).to_wire(),
        dns.message.make_query(ZONE, "SOA").to_wire(),
        dns.message.make_query("x.mesh.test", "A").to_wire(),
    ]
    q = dns.message.make_query(SENTINEL, "TXT")
    q.use_tsig(TSIG_KEY)
    seeds.append(q.to_wire())
    readd = dns.update.UpdateMessage(ZONE, keyring=TSIG_KEY)
    readd.add(_name("chunk-0-abcdef012345.mesh.test"), 300, _txt(b"chunk"))
    seeds.append(readd.to_wire())
    readd_multi = dns.update.UpdateMessage(ZONE, keyring=TSIG_KEY)
    slot = _name("slot-1.mb-abcdef012345.mesh.test")
    readd_multi.add(slot, 300, _txt(b"m" * 255, b"m" * 255, b"m" * 190), _txt(b"second"))
    seeds.append(readd_multi.to_wire())
    outside = dns.update.UpdateMessage(ZONE, keyring=TSIG_KEY)
    outside.add(_name("dmp.mesh.test"), 300, _txt(b"takeover"))
    seeds.append(outside.to_wire())
    seed = bytes(range(1, 33))
    claim = sign_claim(
        Claim(bytes(16), keys.ed25519_public_from_seed(seed), "bob.example", 1, now, now + 300),
        seed,
    )
    unsigned = dns.update.UpdateMessage(ZONE)
    unsigned.add(_name("claim-1.mb-abcdef012345.mesh.test"), 300, _txt(claim.encode()))
    seeds.append(unsigned.to_wire())
    delete_unsigned = dns.update.UpdateMessage(ZONE)
    delete_unsigned.delete(_name("chunk-0-abcdef012345.mesh.test"))
    seeds.append(delete_unsigned.to_wire())
    return seeds


def _mutate(args: tuple[bytes, list[tuple[int, int]], int | None, bytes, bool]) -> bytes:
    seed, edits, cut, tail, flip_counts = args
    out = bytearray(seed)
    for pos, value in edits:
        out[pos % len(out)] = value
    if flip_counts:
        out[4:12] = bytes(reversed(out[4:12]))
    if cut is not None:
        del out[cut:]
    return bytes(out) + tail


def messages(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Junk, junk behind a plausible header, and mutated valid messages."""
    header = st.tuples(
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.lists(st.integers(0, 3), min_size=4, max_size=4),
    ).map(
        lambda t: (
            t[0].to_bytes(2, "big")
            + t[1].to_bytes(2, "big")
            + b"".join(c.to_bytes(2, "big") for c in t[2])
        )
    )
    mutated = st.tuples(
        st.sampled_from(seeds),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
        st.none() | st.integers(0, 400),
        st.binary(max_size=8),
        st.booleans(),
    ).map(_mutate)
    return st.one_of(
        st.binary(max_size=48),
        st.tuples(header, st.binary(max_size=48)).map(lambda t: t[0] + t[1]),
        mutated,
    )


class Node:
    def __init__(self) -> None:
        self.clock = SystemClock()
        self.store = MemoryRecordStore()
        self.keys = MemoryTsigKeyStore()
        config = DnsConfig(
            served_zone=ZONE,
            apex_ns=("ns1.mesh.test",),
            apex_soa_rname="hostmaster.mesh.test",
            dns_update_enabled=True,
            dns_rate=0,
            claim_provider=False,
            receiver_claim_notifications=True,
        )
        self.handler = DnsHandler(config, self.store, clock=self.clock, tsig_keys=self.keys)

    async def seed(self) -> None:
        now = self.clock.now()
        for owner, values in RECORDS.items():
            for value in values:
                await self.store.put(owner, value, 300, now)
        await self.keys.put(
            TsigKey(KEYNAME, SECRET, "hmac-sha256", SCOPES, "alice@mesh.test", "00" * 32, 0, 2**40)
        )

    async def snapshot(self) -> dict[str, list[str]]:
        now = self.clock.now()
        return {o: sorted(r.value for r in await self.store.get(o, now)) for o in RECORDS}


def _sentinel(msg_id: int, name: str = SENTINEL) -> bytes:
    return dns.message.make_query(name, "TXT", id=msg_id, use_edns=0, payload=4096).to_wire()


def _question(wire: bytes) -> bytes:
    """The question section of a one-question message."""
    end = 12
    while wire[end]:
        end += wire[end] + 1
    return wire[12 : end + 5]


def _check_sentinel(raw: bytes, name: str = SENTINEL) -> None:
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.NOERROR, (
        f"sentinel {name}: {dns.rcode.to_text(reply.rcode())}"
    )
    values = sorted(b"".join(rd.strings).decode() for rrset in reply.answer for rd in rrset)
    assert values == sorted(RECORDS[name])


async def _udp_exchange(sock: Any, wire: bytes) -> bytes:
    """Send ``wire`` and return the reply carrying its ID (junk replies are skipped)."""
    await sock.send(wire)
    with anyio.fail_after(5):
        while True:
            raw = await sock.receive()
            if raw[:2] == wire[:2] and raw[12:].startswith(_question(wire)):
                return raw


def _check_health(node: Node, server: DnsServer) -> None:
    assert node.handler.counters["servfail"] == 0, node.handler.counters
    assert server.udp_dropped == 0


async def _udp_round(batch: list[bytes]) -> None:
    node = Node()
    await node.seed()
    before = await node.snapshot()
    server = DnsServer(node.handler, HOST, 0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        async with await anyio.create_connected_udp_socket(HOST, port) as sock:
            for start in range(0, len(batch), SUB_BATCH):
                for wire in batch[start : start + SUB_BATCH]:
                    await sock.send(wire)
                # An uncached name takes the slow path behind the batch.
                probe = f"probe-{start}.mesh.test"
                raw = await _udp_exchange(sock, _sentinel(0xBEEF, probe))
                assert dns.message.from_wire(raw).rcode() == dns.rcode.NXDOMAIN
            _check_sentinel(await _udp_exchange(sock, _sentinel(0xCAFE)))
            for owner in RECORDS:
                _check_sentinel(await _udp_exchange(sock, _sentinel(0xCAFE, owner)), owner)
        tg.cancel_scope.cancel()
    _check_health(node, server)
    assert await node.snapshot() == before


def _frame(wire: bytes) -> bytes:
    return (len(wire) & 0xFFFF).to_bytes(2, "big") + wire[:0xFFFF]


async def _read_until(stream: Any, want_id: bytes, want_q: bytes) -> bytes:
    buf = bytearray()
    with anyio.fail_after(5):
        while True:
            while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                buf += await stream.receive()
            n = int.from_bytes(buf[:2], "big")
            raw = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            if raw[:2] == want_id and raw[12:].startswith(want_q):
                return raw


async def _tcp_round(batch: list[bytes], trailer: bytes) -> None:
    node = Node()
    await node.seed()
    before = await node.snapshot()
    server = DnsServer(node.handler, HOST, 0, tcp_idle_timeout_s=0.5)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        stream = await anyio.connect_tcp(HOST, port)
        async with stream:
            await stream.send(b"".join(_frame(w) for w in batch))
            sentinel = _sentinel(0xD00D)
            await stream.send(_frame(sentinel))
            _check_sentinel(await _read_until(stream, sentinel[:2], _question(sentinel)))
            # A lying or truncated frame last: the server must just wait and hang up.
            await stream.send(trailer)
        fresh = await anyio.connect_tcp(HOST, port)
        async with fresh:
            sentinel = _sentinel(0xF00D)
            await fresh.send(_frame(sentinel))
            _check_sentinel(await _read_until(fresh, sentinel[:2], _question(sentinel)))
        tg.cancel_scope.cancel()
    _check_health(node, server)
    assert await node.snapshot() == before


def test_fuzzed_datagrams(caplog: pytest.LogCaptureFixture) -> None:
    """10,000 fuzzed datagrams: no internal error, correct answers after, store unchanged."""
    seeds = seed_messages()
    fed: list[int] = []

    @_FUZZ
    @given(batch=st.lists(messages(seeds), min_size=UDP_BATCH, max_size=UDP_BATCH))
    def feed(batch: list[bytes]) -> None:
        anyio.run(_udp_round, batch)
        fed.append(len(batch))

    with caplog.at_level(logging.ERROR, logger="dmp.dns"):
        feed()
    assert sum(fed) >= 10_000
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_fuzzed_tcp_frames(caplog: pytest.LogCaptureFixture) -> None:
    """3,000 fuzzed TCP frames, then a lying length: no internal error, store unchanged."""
    seeds = seed_messages()
    fed: list[int] = []
    trailers = st.one_of(
        st.binary(min_size=1, max_size=1),
        st.tuples(st.integers(13, 0xFFFF), st.binary(max_size=12)).map(
            lambda t: t[0].to_bytes(2, "big") + t[1]
        ),
    )

    @settings(_FUZZ, max_examples=TCP_BATCHES)
    @given(
        batch=st.lists(messages(seeds), min_size=TCP_BATCH, max_size=TCP_BATCH),
        trailer=trailers,
    )
    def feed(batch: list[bytes], trailer: bytes) -> None:
        anyio.run(_tcp_round, batch, trailer)
        fed.append(len(batch))

    with caplog.at_level(logging.ERROR, logger="dmp.dns"):
        feed()
    assert sum(fed) >= TCP_BATCHES * TCP_BATCH
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
