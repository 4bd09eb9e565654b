"""DnsHandler: wire in, wire out, over the in-memory stores (behaviour.md §e, wire.md §7)."""

from __future__ import annotations

import logging
import struct
import time
from collections import Counter
from typing import Any

import anyio
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rrset
import dns.tsig
import dns.update
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmp.adapters.memory_store import MemoryRecordStore, MemoryTsigKeyStore
from dmp.adapters.sim.clock import SimClock
from dmp.apps.node.dns_handler import DROP, DnsConfig, DnsHandler
from dmp.domain import keys
from dmp.domain.claim import Claim, sign_claim
from dmp.ports.store import StoredRecord, TsigKey

pytestmark = pytest.mark.anyio

ZONE = "mesh.test"
PEER = ("192.0.2.1", 40000)
SECRET = bytes(range(32))
KEYNAME = "alice-f6eff01c-29b772.mesh.test."
SCOPES = (
    "chunk-*-*.mesh.test",
    "claim-*.mb-*.mesh.test",
    "id-0123456789abcdef.mesh.test",
    "mb-aaaaaaaaaaaa.mesh.test",
    "slot-*.mb-*.mesh.test",
)
H12 = "abcdef012345"
SENDER_SEED = bytes(range(100, 132))


class Node:
    """A handler over fresh memory stores, with helpers to exchange wire messages."""

    def __init__(
        self, config: DnsConfig | None = None, *, fast: bool = True, **overrides: Any
    ) -> None:
        base = {
            "served_zone": ZONE,
            "apex_ns": ("ns1.mesh.test",),
            "apex_soa_rname": "hostmaster.mesh.test",
            "apex_a": ("192.0.2.53",),
            "apex_aaaa": ("2001:db8::53",),
            "dns_update_enabled": True,
            "dns_rate": 0.0,
        }
        base.update(overrides)
        self.config = config or DnsConfig(**base)
        self.clock = SimClock(start=1_900_000_000.0)
        self.store = MemoryRecordStore()
        self.keys = MemoryTsigKeyStore()
        self.handler = DnsHandler(
            self.config, self.store, clock=self.clock, tsig_keys=self.keys, fast_updates=fast
        )

    async def add_key(
        self, keyname: str = KEYNAME, scopes: tuple[str, ...] = SCOPES, **kw: Any
    ) -> dns.tsig.Key:
        fields: dict[str, Any] = {
            "keyname": keyname,
            "secret": SECRET,
            "algorithm": "hmac-sha256",
            "allowed_suffixes": scopes,
            "subject": "alice@mesh.test",
            "ed25519_public": "00" * 32,
            "created_at": int(self.clock.now()),
            "expires_at": int(self.clock.now()) + 86400,
        }
        fields.update(kw)
        key = TsigKey(**fields)
        await self.keys.put(key)
        return dns.tsig.Key(keyname, key.secret, key.algorithm)

    async def ask(
        self, wire: bytes, transport: Any = "udp", peer: Any = PEER
    ) -> dns.message.Message | None:
        reply = self.handler.answer_cached(wire, peer, transport)
        if reply is None:
            reply = await self.handler.handle(wire, peer, transport)
        if not reply:
            return None
        return dns.message.from_wire(reply, keyring=False)

    async def query(self, name: str, rdtype: str = "TXT", **kw: Any) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)
        reply = await self.ask(q.to_wire())
        assert reply is not None, f"no reply for {name} {rdtype}"
        return reply


def txt_values(msg: dns.message.Message) -> list[str]:
    return sorted(
        b"".join(rd.strings).decode() for rrset in msg.answer for rd in rrset if rrset.rdtype == 16
    )


def update(
    *ops: tuple[str, str, Any], key: dns.tsig.Key | None = None, zone: str = ZONE
) -> dns.update.UpdateMessage:
    u = dns.update.UpdateMessage(zone, keyring=key) if key else dns.update.UpdateMessage(zone)
    for verb, text, arg in ops:
        owner = dns.name.from_text(text.rstrip(".") + ".")
        if verb == "add":
            ttl, *strings = arg
            rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, tuple(strings))
            u.add(owner, ttl, rd)
        elif verb == "delete-one":
            rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, (arg,))
            u.delete(owner, rd)
        else:
            u.delete(owner, "TXT")
    return u


async def send_update(node: Node, u: dns.update.UpdateMessage) -> dns.message.Message:
    """Send a (possibly signed) UPDATE and parse the reply, checking its TSIG when signed."""
    wire = u.to_wire()
    raw = await node.handler.handle(wire, PEER, "udp")
    assert raw, "UPDATE got no reply"
    if u.keyring is not None:
        return dns.message.from_wire(raw, keyring=u.keyring, request_mac=u.mac)
    return dns.message.from_wire(raw, keyring=False)


def sign_at(wire: bytes, key: dns.tsig.Key, when: int, msg_id: int) -> bytes:
    """Append a TSIG RR to an unsigned message, signed as of ``when`` (RFC 8945 §4)."""
    rdata = dns.rdtypes.ANY.TSIG.TSIG(
        dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm, 0, 300, b"", msg_id, 0, b""
    )
    signed, _ = dns.tsig.sign(wire, key, rdata, time=when, request_mac=b"")
    rd_wire = signed.to_wire()
    out = bytearray(wire)
    out += key.name.to_wire()
    out += struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rd_wire))
    out += rd_wire
    struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] + 1)
    return bytes(out)


def make_claim(now: int, *, ttl: int = 300) -> str:
    spk = keys.ed25519_public_from_seed(SENDER_SEED)
    record = Claim(
        msg_id=bytes(16),
        sender_spk=spk,
        sender_mailbox_domain="bob.example",
        slot=3,
        ts=now,
        exp=now + ttl,
    )
    return sign_claim(record, SENDER_SEED)


# -- queries ---------------------------------------------------------------


async def test_txt_answer_splits_values_into_255_byte_strings() -> None:
    """A stored 600-byte value comes back as 255+255+90-byte character-strings, AA set, RA clear."""

    node = Node(dns_ttl=42)
    value = "v=dmp1;" + "x" * 593
    await node.store.put("slot-1.mb-abc.mesh.test", value, 300, node.clock.now())
    reply = await node.query("slot-1.mb-abc.mesh.test", use_edns=0, payload=4096)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.RA
    assert reply.flags & dns.flags.RD  # echoed from make_query
    (rrset,) = reply.answer
    assert rrset.ttl == 42
    (rd,) = rrset
    assert [len(s) for s in rd.strings] == [255, 255, 90]
    assert txt_values(reply) == [value]


async def test_every_stored_value_is_one_rr() -> None:
    """Three values at one owner give three TXT RRs."""

    node = Node()
    for v in ("a", "b", "c"):
        await node.store.put("x.mesh.test", v, 300, node.clock.now())
    assert txt_values(await node.query("x.mesh.test")) == ["a", "b", "c"]


async def test_qname_is_case_insensitive_and_question_case_is_echoed() -> None:
    """A mixed-case query finds the lowercase owner; the reply echoes the query's case, cached or not."""

    node = Node()
    await node.store.put("id-abc.mesh.test", "hello", 300, node.clock.now())
    for name in ("ID-Abc.Mesh.TEST", "id-aBC.mesh.test"):
        q = dns.message.make_query(name, "TXT")
        raw = node.handler.answer_cached(q.to_wire(), PEER) or await node.handler.handle(
            q.to_wire(), PEER
        )
        assert raw
        assert raw[:2] == q.to_wire()[:2]
        reply = dns.message.from_wire(raw)
        assert reply.question[0].name.to_text() == name + "."
        assert txt_values(reply) == ["hello"]
    assert node.handler.cache_hits == 1


async def test_nxdomain_for_absent_name_carries_the_apex_soa() -> None:
    """An absent in-zone TXT name is NXDOMAIN with the configured SOA in AUTHORITY."""

    node = Node(dns_ttl=30)
    reply = await node.query("nope.mesh.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert not reply.answer
    (soa,) = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name == dns.name.from_text(ZONE)
    rd = soa[0]
    assert rd.mname == dns.name.from_text("ns1.mesh.test")
    assert (rd.refresh, rd.retry, rd.expire, rd.minimum) == (3600, 600, 604800, 30)


async def test_nodata_for_other_types_and_for_the_apex() -> None:
    """Non-TXT types are NODATA (never NXDOMAIN), and so is TXT at an empty apex."""

    node = Node()
    for name, rdtype in (("nope.mesh.test", "A"), ("x.y.mesh.test", "AAAA"), (ZONE, "TXT")):
        reply = await node.query(name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR, (name, rdtype)
        assert not reply.answer
        assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]


async def test_no_soa_in_negative_answers_without_ns_and_rname() -> None:
    """Without apex NS + SOA RNAME, negative answers have an empty AUTHORITY section."""

    node = Node(apex_ns=(), apex_soa_rname=None)
    reply = await node.query("nope.mesh.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.authority
    soa = await node.query(ZONE, "SOA")
    assert soa.rcode() == dns.rcode.NOERROR
    assert not soa.answer


async def test_apex_records_are_served() -> None:
    """A, AAAA, NS and SOA at the apex come from the configuration."""

    node = Node()
    expect = {
        "A": "192.0.2.53",
        "AAAA": "2001:db8::53",
        "NS": "ns1.mesh.test.",
        "SOA": "ns1.mesh.test. hostmaster.mesh.test.",
    }
    for rdtype, text in expect.items():
        reply = await node.query(ZONE, rdtype)
        (rrset,) = reply.answer
        assert rrset[0].to_text().startswith(text), rdtype


async def test_out_of_zone_absent_is_refused_but_stored_names_are_answered() -> None:
    """An absent name outside the zone is REFUSED without AA; a stored one is answered."""

    node = Node()
    refused = await node.query("example.org")
    assert refused.rcode() == dns.rcode.REFUSED
    assert not refused.flags & dns.flags.AA
    await node.store.put("cluster.other.example", "m", 300, node.clock.now())
    assert txt_values(await node.query("cluster.other.example")) == ["m"]


async def test_without_a_zone_every_absent_name_is_nxdomain() -> None:
    """With no served zone the reference behaviour holds: absent names are NXDOMAIN."""

    node = Node(DnsConfig(served_zone=None, dns_rate=0))
    assert (await node.query("anything.example")).rcode() == dns.rcode.NXDOMAIN


async def test_udp_truncation_follows_the_edns_payload_size() -> None:
    """Over 512 bytes without OPT, or over the advertised payload, UDP gets TC=1 and no answers."""

    node = Node()
    await node.store.put("big.mesh.test", "b" * 1500, 300, node.clock.now())
    plain = await node.query("big.mesh.test")
    assert plain.flags & dns.flags.TC
    assert not plain.answer
    assert plain.edns < 0
    small = await node.query("big.mesh.test", use_edns=0, payload=1200)
    assert small.flags & dns.flags.TC
    assert not small.answer
    assert small.edns == 0
    large = await node.query("big.mesh.test", use_edns=0, payload=4096)
    assert not large.flags & dns.flags.TC
    assert large.edns == 0
    assert txt_values(large) == ["b" * 1500]
    # the same question over TCP is never truncated, from the cache or not
    q = dns.message.make_query("big.mesh.test", "TXT")
    for _ in range(2):
        tcp = await node.ask(q.to_wire(), "tcp")
        assert tcp is not None
        assert not tcp.flags & dns.flags.TC
        assert txt_values(tcp) == ["b" * 1500]


async def test_tcp_answer_over_65535_bytes_is_servfail() -> None:
    """An RRset too large for any DNS message gets SERVFAIL rather than a broken reply."""

    node = Node()
    for i in range(40):
        await node.store.put("huge.mesh.test", f"{i:04d}" + "z" * 2040, 300, node.clock.now())
    reply = await node.ask(dns.message.make_query("huge.mesh.test", "TXT").to_wire(), "tcp")
    assert reply is not None
    assert reply.rcode() == dns.rcode.SERVFAIL


async def test_cached_answer_patches_id_and_matches_a_fresh_render() -> None:
    """The cache serves the same bytes as the slow path, with the query's ID and RD."""

    node = Node()
    await node.store.put("c.mesh.test", "cached", 300, node.clock.now())
    q1 = dns.message.make_query("c.mesh.test", "TXT", use_edns=0)
    q1.id = 1111
    assert node.handler.answer_cached(q1.to_wire(), PEER) is None
    slow = await node.handler.handle(q1.to_wire(), PEER)
    q2 = dns.message.make_query("c.mesh.test", "TXT", use_edns=0)
    q2.id = 2222
    q2.flags &= ~dns.flags.RD
    fast = node.handler.answer_cached(q2.to_wire(), PEER)
    assert fast is not None
    assert slow is not None
    assert fast[:2] == struct.pack("!H", 2222)
    assert fast[2] == slow[2] & ~0x01  # RD cleared like the query
    assert fast[3:] == slow[3:]


async def test_store_write_invalidates_the_cache() -> None:
    """A put at an owner drops its cached answers (NXDOMAIN and positive alike)."""

    node = Node()
    assert (await node.query("w.mesh.test")).rcode() == dns.rcode.NXDOMAIN
    await node.store.put("w.mesh.test", "one", 300, node.clock.now())
    assert txt_values(await node.query("w.mesh.test")) == ["one"]
    await node.store.put("w.mesh.test", "two", 300, node.clock.now())
    assert txt_values(await node.query("w.mesh.test")) == ["one", "two"]
    await node.store.delete("w.mesh.test")
    assert (await node.query("w.mesh.test")).rcode() == dns.rcode.NXDOMAIN


async def test_cache_entry_ends_when_a_stored_row_expires() -> None:
    """A cached positive answer is not served past the expiry of a row it shows."""

    node = Node()
    await node.store.put("e.mesh.test", "short", 10, node.clock.now())
    await node.store.put("e.mesh.test", "long", 1000, node.clock.now())
    assert txt_values(await node.query("e.mesh.test")) == ["long", "short"]
    wire = dns.message.make_query("e.mesh.test", "TXT").to_wire()
    assert node.handler.answer_cached(wire, PEER)
    node.clock.advance(11)
    assert node.handler.answer_cached(wire, PEER) is None
    assert txt_values(await node.query("e.mesh.test")) == ["long"]


async def test_write_racing_a_read_is_not_cached_stale() -> None:
    """A read that started before a write does not cache what it read."""

    class SlowStore(MemoryRecordStore):
        gate: anyio.Event | None = None

        async def get(self, owner: str, now: float) -> list[StoredRecord]:
            rows = await super().get(owner, now)
            if self.gate is not None:
                await self.gate.wait()
            return rows

    clock = SimClock()
    store = SlowStore()
    handler = DnsHandler(DnsConfig(served_zone=ZONE, dns_rate=0), store, clock=clock)
    store.gate = anyio.Event()
    wire = dns.message.make_query("r.mesh.test", "TXT").to_wire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(handler.handle, wire, PEER)
        await anyio.wait_all_tasks_blocked()
        await store.put("r.mesh.test", "new", 300, clock.now())
        store.gate.set()
    store.gate = None
    assert handler.answer_cached(wire, PEER) is None
    raw = await handler.handle(wire, PEER)
    assert raw is not None
    assert txt_values(dns.message.from_wire(raw)) == ["new"]


async def test_cache_is_bounded() -> None:
    """Past answer_cache_size the oldest entries are evicted."""

    node = Node(answer_cache_size=8)
    for i in range(20):
        await node.query(f"n{i}.mesh.test")
    assert node.handler.cache_size == 8
    # eviction also forgets the owner index, so invalidation stays bounded too
    assert len(node.handler._by_qname) == 8
    node.handler.invalidate("n19.mesh.test")
    assert node.handler.cache_size == 7


async def _expiry_times(node: Node, names: list[str], step: float) -> list[float]:
    """Fill the cache for ``names`` at once; seconds until each entry stops being served."""
    wires = [dns.message.make_query(n, "TXT", use_edns=0).to_wire() for n in names]
    for name in names:
        await node.query(name, use_edns=0)
    start, gone = node.clock.now(), {}
    while len(gone) < len(wires):
        node.clock.advance(step)
        for i, wire in enumerate(wires):
            if i not in gone and node.handler.answer_cached(wire, PEER) is None:
                gone[i] = node.clock.now() - start
    return [gone[i] for i in range(len(wires))]


async def test_entries_filled_together_expire_spread_over_the_jitter_window() -> None:
    """Max age 60 s, jitter 0.25: entries end between 45 and 60 s, not all at once."""
    node = Node(answer_cache_max_age_s=60.0, answer_cache_jitter=0.25)
    names = [f"j{i}.mesh.test" for i in range(200)]
    ends = await _expiry_times(node, names, 0.5)
    assert all(45.0 <= end <= 60.0 for end in ends)
    assert max(ends) - min(ends) >= 12.0
    assert max(Counter(ends).values()) <= 20  # no instant holds more than 10 % of them


async def test_no_jitter_keeps_the_plain_max_age() -> None:
    node = Node(answer_cache_max_age_s=60.0, answer_cache_jitter=0.0)
    assert await _expiry_times(node, ["a.mesh.test", "b.mesh.test"], 0.5) == [60.0, 60.0]


def test_jitter_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="answer_cache_jitter"):
        DnsConfig(answer_cache_jitter=1.5)


@pytest.mark.parametrize("wire", [b"", b"\x00", b"\x12\x34" + b"\x00" * 9])
async def test_short_header_is_dropped(wire: bytes) -> None:
    """Fewer than 12 bytes: no reply from either path."""

    node = Node()
    assert node.handler.answer_cached(wire, PEER) == DROP
    assert await node.handler.handle(wire, PEER) is None


async def test_responses_are_dropped() -> None:
    """A message with QR set is never answered (no reflection loops)."""

    node = Node()
    q = dns.message.make_query("x.mesh.test", "TXT")
    resp = dns.message.make_response(q).to_wire()
    assert node.handler.answer_cached(resp, PEER) == DROP
    assert await node.handler.handle(resp, PEER) is None


async def test_unparseable_message_is_formerr() -> None:
    """A header promising records that are not there gets FORMERR with the query's ID."""

    node = Node()
    wire = b"\xab\xcd\x01\x00\x00\x01\x00\x05\x00\x00\x00\x00\x01x\x00\x00\x10\x00\x01"
    raw = await node.handler.handle(wire, PEER)
    assert raw is not None
    assert raw[:2] == b"\xab\xcd"
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.FORMERR


async def test_two_questions_is_formerr_and_other_opcodes_notimp() -> None:
    """QDCOUNT 2 is FORMERR; a NOTIFY is NOTIMP; EDNS version 1 is BADVERS."""

    node = Node()
    q = dns.message.make_query("a.mesh.test", "TXT")
    q.question.append(dns.rrset.RRset(dns.name.from_text("b.mesh.test"), 1, 16))
    reply = await node.ask(q.to_wire())
    assert reply is not None
    assert reply.rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query(ZONE, "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = await node.ask(notify.to_wire())
    assert reply is not None
    assert reply.rcode() == dns.rcode.NOTIMP
    v1 = dns.message.make_query("a.mesh.test", "TXT", use_edns=1)
    reply = await node.ask(v1.to_wire())
    assert reply is not None
    assert reply.rcode() == dns.rcode.BADVERS


async def test_internal_error_is_servfail_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A store that raises turns into SERVFAIL plus a log line; the handler keeps working."""

    class BrokenStore(MemoryRecordStore):
        async def get(self, owner: str, now: float) -> list[StoredRecord]:
            raise RuntimeError("disk on fire")

    handler = DnsHandler(DnsConfig(served_zone=ZONE, dns_rate=0), BrokenStore(), clock=SimClock())
    wire = dns.message.make_query("x.mesh.test", "TXT").to_wire()
    with caplog.at_level(logging.ERROR, logger="dmp.dns"):
        raw = await handler.handle(wire, PEER)
    assert raw is not None
    assert raw[:2] == wire[:2]
    assert dns.message.from_wire(raw).rcode() == dns.rcode.SERVFAIL
    assert any("disk on fire" in (r.exc_text or "") for r in caplog.records)
    raw = await handler.handle(dns.message.make_query(ZONE, "A").to_wire(), PEER)
    assert raw is not None
    assert dns.message.from_wire(raw).rcode() == dns.rcode.NOERROR


async def test_per_ip_rate_limit_drops_excess_on_both_paths() -> None:
    """With rate 1/s burst 2, a source's third query is dropped; other sources and later time pass."""

    node = Node(dns_rate=1.0, dns_burst=2.0)
    await node.store.put("q.mesh.test", "v", 300, node.clock.now())
    wire = dns.message.make_query("q.mesh.test", "TXT").to_wire()
    assert await node.ask(wire) is not None  # slow path, fills the cache
    assert await node.ask(wire) is not None  # cache hit
    assert node.handler.answer_cached(wire, PEER) == DROP
    assert await node.handler.handle(wire, PEER) is None
    assert await node.ask(wire, peer=("192.0.2.2", 1)) is not None
    assert await node.ask(wire, "tcp") is not None  # TCP has its own buckets
    node.clock.advance(1.0)
    assert await node.ask(wire) is not None


async def test_default_rate_does_not_throttle_a_resolver() -> None:
    """At the default limit one source sends 5000 queries in a second without a drop."""

    node = Node(DnsConfig(served_zone=ZONE))
    await node.store.put("q.mesh.test", "v", 300, node.clock.now())
    wire = dns.message.make_query("q.mesh.test", "TXT").to_wire()
    assert await node.ask(wire) is not None
    answered = sum(1 for _ in range(5000) if node.handler.answer_cached(wire, PEER))
    assert answered == 5000


# -- UPDATE with TSIG ------------------------------------------------------


async def test_tsig_update_in_scope_is_stored_and_the_reply_is_signed() -> None:
    """A signed ADD under a wildcard scope is stored (strings joined) and NOERROR comes back signed."""

    node = Node()
    key = await node.add_key()
    owner = f"slot-2.mb-{H12}.mesh.test"
    u = update(("add", owner, (300, b"a" * 255, b"b" * 100)), key=key)
    reply = await send_update(node, u)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.had_tsig
    rows = await node.store.get(owner, node.clock.now())
    assert [(r.value, r.ttl) for r in rows] == [("a" * 255 + "b" * 100, 300)]
    assert txt_values(await node.query(owner, use_edns=0)) == ["a" * 255 + "b" * 100]


async def test_tsig_update_out_of_scope_is_refused() -> None:
    """An ADD outside every scope suffix is REFUSED (signed) and nothing is written."""

    node = Node()
    key = await node.add_key()
    reply = await send_update(node, update(("add", "dmp.mesh.test", (300, b"x")), key=key))
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.had_tsig
    assert await node.store.count() == 0


async def test_wildcard_scope_authorizes_add_but_not_delete() -> None:
    """DELETE needs a literal suffix: refused under slot-*.mb-*, allowed under id-<h16>."""

    node = Node()
    key = await node.add_key()
    slot = f"slot-1.mb-{H12}.mesh.test"
    ident = "id-0123456789abcdef.mesh.test"
    now = node.clock.now()
    await node.store.put(slot, "s", 300, now)
    await node.store.put(ident, "i1", 300, now)
    await node.store.put(ident, "i2", 300, now)
    refused = await send_update(node, update(("delete-all", slot, None), key=key))
    assert refused.rcode() == dns.rcode.REFUSED
    assert len(await node.store.get(slot, now)) == 1
    one = await send_update(node, update(("delete-one", ident, b"i1"), key=key))
    assert one.rcode() == dns.rcode.NOERROR
    assert [r.value for r in await node.store.get(ident, now)] == ["i2"]
    everything = await send_update(node, update(("delete-all", ident, None), key=key))
    assert everything.rcode() == dns.rcode.NOERROR
    assert await node.store.get(ident, now) == []


async def test_zone_and_owner_checks() -> None:
    """Another zone is NOTAUTH; an owner outside the zone is NOTZONE."""

    node = Node()
    key = await node.add_key()
    other = update(("add", "x.other.test.", (300, b"x")), key=key, zone="other.test")
    assert (await send_update(node, other)).rcode() == dns.rcode.NOTAUTH
    outside = update(("add", "x.elsewhere.test.", (300, b"x")), key=key)
    assert (await send_update(node, outside)).rcode() == dns.rcode.NOTZONE
    assert await node.store.count() == 0


async def test_caps_are_refused() -> None:
    """Value bytes, TTL and values-per-name over their caps are REFUSED."""

    node = Node(max_value_bytes=100, max_ttl=600, max_values_per_name=2)
    key = await node.add_key()
    owner = f"chunk-1-{H12}.mesh.test"
    big = update(("add", owner, (300, b"x" * 101)), key=key)
    assert (await send_update(node, big)).rcode() == dns.rcode.REFUSED
    long_ttl = update(("add", owner, (601, b"x")), key=key)
    assert (await send_update(node, long_ttl)).rcode() == dns.rcode.REFUSED
    for v in (b"1", b"2"):
        ok = await send_update(node, update(("add", owner, (300, v)), key=key))
        assert ok.rcode() == dns.rcode.NOERROR
    third = update(("add", owner, (300, b"3")), key=key)
    assert (await send_update(node, third)).rcode() == dns.rcode.REFUSED
    refresh = update(("add", owner, (300, b"2")), key=key)
    assert (await send_update(node, refresh)).rcode() == dns.rcode.NOERROR
    two_more = update(("add", owner, (300, b"4")), ("add", owner, (300, b"5")), key=key)
    assert (await send_update(node, two_more)).rcode() == dns.rcode.REFUSED
    values = [r.value for r in await node.store.get(owner, node.clock.now())]
    assert sorted(values) == ["1", "2"]


async def test_non_utf8_value_is_formerr() -> None:
    """TXT bytes that are not UTF-8 make the UPDATE FORMERR."""

    node = Node()
    key = await node.add_key()
    bad = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"\xff\xfe")), key=key)
    assert (await send_update(node, bad)).rcode() == dns.rcode.FORMERR
    assert await node.store.count() == 0


async def test_unknown_key_is_notauth_badkey() -> None:
    """A key the node does not know gets NOTAUTH with TSIG error BADKEY, unsigned."""

    node = Node()
    await node.add_key()
    stranger = dns.tsig.Key("nobody.mesh.test.", SECRET, "hmac-sha256")
    u = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")), key=stranger)
    raw = await node.handler.handle(u.to_wire(), PEER)
    assert raw is not None
    reply = dns.message.from_wire(raw, keyring=False)
    assert reply.rcode() == dns.rcode.NOTAUTH
    assert reply.tsig is not None
    assert reply.tsig[0].error == dns.rcode.BADKEY
    assert reply.tsig[0].mac == b""
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.message.from_wire(raw, keyring=stranger, request_mac=u.mac)
    assert await node.store.count() == 0


async def test_bad_mac_is_notauth_badsig() -> None:
    """A MAC made with the wrong secret gets NOTAUTH / BADSIG and writes nothing."""

    node = Node()
    await node.add_key()
    forged = dns.tsig.Key(KEYNAME, b"\x01" * 32, "hmac-sha256")
    u = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")), key=forged)
    raw = await node.handler.handle(u.to_wire(), PEER)
    assert raw is not None
    reply = dns.message.from_wire(raw, keyring=False)
    assert reply.rcode() == dns.rcode.NOTAUTH
    assert reply.tsig[0].error == dns.rcode.BADSIG
    assert await node.store.count() == 0


async def test_stale_time_is_notauth_badtime_signed() -> None:
    """A correct MAC signed an hour ago gets NOTAUTH / BADTIME, signed with the key."""

    node = Node()
    key = await node.add_key()
    u = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")))
    u.id = 4242
    wire = sign_at(u.to_wire(), key, int(time.time()) - 3600, u.id)
    raw = await node.handler.handle(wire, PEER)
    assert raw is not None
    reply = dns.message.from_wire(raw, keyring=False)
    assert reply.rcode() == dns.rcode.NOTAUTH
    assert reply.tsig[0].error == dns.rcode.BADTIME
    assert len(reply.tsig[0].other) == 6
    assert reply.tsig[0].mac != b""
    assert await node.store.count() == 0
    # the same message signed now is accepted: only the time was wrong
    fresh = sign_at(u.to_wire(), key, int(time.time()), u.id)
    raw = await node.handler.handle(fresh, PEER)
    assert raw is not None
    assert dns.message.from_wire(raw, keyring=False).rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(
    "algorithm",
    [
        "hmac-sha1",
        "hmac-sha224",
        "hmac-sha256",
        "hmac-sha256-128",
        "hmac-sha384",
        "hmac-sha384-192",
        "hmac-sha512",
        "hmac-sha512-256",
    ],
)
async def test_rfc8945_hmac_algorithms(algorithm: str) -> None:
    """Keys of every RFC 8945 HMAC dnspython implements verify and sign."""

    node = Node()
    key = await node.add_key(algorithm=algorithm)
    u = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")), key=key)
    reply = await send_update(node, u)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.had_tsig


async def test_revoked_or_expired_key_is_badkey() -> None:
    """Revoking a key takes effect at once; an expired key no longer verifies."""

    node = Node()
    key = await node.add_key()
    owner = f"chunk-1-{H12}.mesh.test"
    assert (await send_update(node, update(("add", owner, (300, b"1")), key=key))).rcode() == 0
    await node.keys.revoke(KEYNAME)
    raw = await node.handler.handle(update(("add", owner, (300, b"2")), key=key).to_wire(), PEER)
    assert raw is not None
    assert dns.message.from_wire(raw, keyring=False).tsig[0].error == dns.rcode.BADKEY
    other = await node.add_key(keyname="bob-1.mesh.test.", expires_at=int(node.clock.now()) + 5)
    node.clock.advance(10)
    raw = await node.handler.handle(update(("add", owner, (300, b"3")), key=other).to_wire(), PEER)
    assert raw is not None
    assert dns.message.from_wire(raw, keyring=False).tsig[0].error == dns.rcode.BADKEY
    assert [r.value for r in await node.store.get(owner, node.clock.now())] == ["1"]


async def test_keyring_is_rebuilt_only_when_the_generation_moves() -> None:
    """Ten UPDATEs load the keys once; a new key triggers one more load."""

    class CountingKeys(MemoryTsigKeyStore):
        loads = 0

        async def active(self, now: float) -> list[TsigKey]:
            self.loads += 1
            return await super().active(now)

    node = Node()
    node.keys = CountingKeys()
    node.handler = DnsHandler(node.config, node.store, clock=node.clock, tsig_keys=node.keys)
    key = await node.add_key()
    for i in range(10):
        u = update(("add", f"chunk-{i}-{H12}.mesh.test", (300, b"x")), key=key)
        assert (await send_update(node, u)).rcode() == dns.rcode.NOERROR
        await node.query(f"chunk-{i}-{H12}.mesh.test")
    assert node.keys.loads == 1
    await node.add_key(keyname="bob-1.mesh.test.")
    await send_update(node, update(("add", f"chunk-0-{H12}.mesh.test", (300, b"y")), key=key))
    assert node.keys.loads == 2


async def test_update_disabled_is_refused() -> None:
    """Without dns_update_enabled every UPDATE is REFUSED."""

    node = Node(dns_update_enabled=False)
    u = update(("add", f"claim-1.mb-{H12}.mesh.test", (300, b"x")))
    assert (await send_update(node, u)).rcode() == dns.rcode.REFUSED


async def test_acknowledgement_waits_for_the_store() -> None:
    """The handler does not reply before store.put has returned."""

    class GatedStore(MemoryRecordStore):
        gate: anyio.Event

        async def put(self, *args: Any, **kw: Any) -> None:
            await self.gate.wait()
            await super().put(*args, **kw)

    clock = SimClock()
    store = GatedStore()
    store.gate = anyio.Event()
    keystore = MemoryTsigKeyStore()
    node = Node()
    handler = DnsHandler(node.config, store, clock=clock, tsig_keys=keystore)
    owner = f"claim-1.mb-{H12}.mesh.test"
    wire = update(("add", owner, (300, make_claim(int(clock.now())).encode()))).to_wire()
    replies: list[bytes | None] = []

    async def call() -> None:
        replies.append(await handler.handle(wire, PEER))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert replies == []
        store.gate.set()
    assert replies[0] is not None
    assert dns.message.from_wire(replies[0]).rcode() == dns.rcode.NOERROR
    assert await store.count() == 1


# -- un-TSIG'd claims --------------------------------------------------------


async def test_untsigd_claim_is_accepted_and_ttl_clamped() -> None:
    """A verifying claim at claim-N.mb-<h12>.<zone> is stored with its TTL clamped."""

    node = Node(claim_max_ttl=600)
    owner = f"claim-7.mb-{H12}.mesh.test"
    value = make_claim(int(node.clock.now()))
    reply = await send_update(node, update(("add", owner, (86400, value.encode()))))
    assert reply.rcode() == dns.rcode.NOERROR
    (row,) = await node.store.get(owner, node.clock.now())
    assert (row.value, row.ttl) == (value, 600)


async def test_untsigd_non_claims_are_refused() -> None:
    """Wrong owner shape, a bad claim, a DELETE, a far expiry and an empty UPDATE are REFUSED."""

    node = Node(claim_max_ttl=600)
    now = int(node.clock.now())
    owner = f"claim-7.mb-{H12}.mesh.test"
    good = make_claim(now).encode()
    cases = [
        update(("add", f"slot-1.mb-{H12}.mesh.test", (300, good))),
        update(("add", f"claim-x.mb-{H12}.mesh.test", (300, good))),
        update(("add", owner, (300, b"v=dmp1;t=claim;AAAA"))),
        update(("add", owner, (300, good[:-4] + b"AAAA"))),
        update(("delete-all", owner, None)),
        update(("add", owner, (300, make_claim(now, ttl=601).encode()))),
        update(),
    ]
    for u in cases:
        assert (await send_update(node, u)).rcode() == dns.rcode.REFUSED
    assert await node.store.count() == 0


async def test_untsigd_path_off_when_both_roles_are_off() -> None:
    """Claim provider and receiver notifications both off: even good claims are REFUSED."""

    node = Node(claim_provider=False, receiver_claim_notifications=False)
    owner = f"claim-7.mb-{H12}.mesh.test"
    u = update(("add", owner, (300, make_claim(int(node.clock.now())).encode())))
    assert (await send_update(node, u)).rcode() == dns.rcode.REFUSED


async def test_receiver_notifications_only_accept_registered_mailboxes() -> None:
    """In M10-only mode a claim is accepted only for a hash12 in some key's mb- scope."""

    node = Node(claim_provider=False, receiver_claim_notifications=True)
    await node.add_key()  # registers mb-aaaaaaaaaaaa
    claim = make_claim(int(node.clock.now())).encode()
    stranger = update(("add", f"claim-1.mb-{H12}.mesh.test", (300, claim)))
    assert (await send_update(node, stranger)).rcode() == dns.rcode.REFUSED
    member = update(("add", "claim-1.mb-aaaaaaaaaaaa.mesh.test", (300, claim)))
    assert (await send_update(node, member)).rcode() == dns.rcode.NOERROR


async def test_claim_rate_limit_per_recipient_is_servfail() -> None:
    """With burst 2, a recipient's third claim is SERVFAIL; another recipient still passes."""

    node = Node(claim_rate=0.5, claim_burst=2)
    claim = make_claim(int(node.clock.now())).encode()
    for expected in (dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.SERVFAIL):
        u = update(("add", f"claim-1.mb-{H12}.mesh.test", (300, claim)))
        assert (await send_update(node, u)).rcode() == expected
    other = update(("add", "claim-1.mb-bbbbbbbbbbbb.mesh.test", (300, claim)))
    assert (await send_update(node, other)).rcode() == dns.rcode.NOERROR
    node.clock.advance(2)
    again = update(("add", f"claim-1.mb-{H12}.mesh.test", (300, claim)))
    assert (await send_update(node, again)).rcode() == dns.rcode.NOERROR


# -- the hand-rolled UPDATE path agrees with dnspython's ----------------------


async def test_common_signed_update_takes_the_fast_path() -> None:
    """A one-RR signed UPDATE is handled without dnspython and its reply verifies."""
    node = Node()
    key = await node.add_key()
    reply = await send_update(
        node, update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")), key=key)
    )
    assert reply.rcode() == dns.rcode.NOERROR
    assert node.handler.fast_updates == 1


@pytest.mark.parametrize("variant", ["plain", "do-bit", "cookie", "padding"])
async def test_signed_update_with_an_opt_takes_the_fast_path_and_echoes_edns(variant: str) -> None:
    """An OPT before the TSIG (dnsperf -e, dig) keeps the fast path; the reply echoes EDNS."""
    node = Node()
    key = await node.add_key()
    u = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")), key=key)
    u.use_edns(**_EDNS_VARIANTS[variant])
    reply = await send_update(node, u)  # verifies the reply's TSIG
    assert reply.rcode() == dns.rcode.NOERROR
    assert (reply.edns, reply.payload, reply.ednsflags, reply.options) == (0, 1232, 0, ())
    assert node.handler.fast_updates == 1
    assert txt_values(await node.query(f"chunk-1-{H12}.mesh.test")) == ["x"]


@pytest.mark.parametrize("variant", ["nsid", "bad-cookie", "version-1"])
async def test_signed_update_with_an_unusual_opt_goes_through_dnspython(variant: str) -> None:
    node = Node()
    key = await node.add_key()
    u = update(("add", f"chunk-1-{H12}.mesh.test", (300, b"x")), key=key)
    u.use_edns(**_EDNS_VARIANTS[variant])
    await node.handler.handle(u.to_wire(), PEER, "udp")
    assert node.handler.fast_updates == 0


_OWNERS = [
    f"chunk-1-{H12}.mesh.test",
    f"SLOT-2.MB-{H12.upper()}.Mesh.Test",
    "id-0123456789abcdef.mesh.test",
    "dmp.mesh.test",
    "x.other.test",
    "we_ird*.mesh.test",
    f"chunk-2-{H12}.mesh.test",
]


_EDNS_VARIANTS: dict[str, dict[str, Any]] = {
    # what dnsperf -e and most stub clients send
    "plain": {"edns": 0, "payload": 4096},
    "small-payload": {"edns": 0, "payload": 512},
    "do-bit": {"edns": 0, "payload": 1232, "ednsflags": dns.flags.DO},
    "cookie": {"edns": 0, "options": [dns.edns.GenericOption(10, bytes(range(8)))]},
    "cookie-server": {"edns": 0, "options": [dns.edns.GenericOption(10, bytes(range(24)))]},
    "bad-cookie": {"edns": 0, "options": [dns.edns.GenericOption(10, bytes(range(5)))]},
    "padding": {"edns": 0, "options": [dns.edns.GenericOption(12, bytes(7))]},
    "nsid": {"edns": 0, "options": [dns.edns.GenericOption(3, b"")]},
    "unknown-option": {"edns": 0, "options": [dns.edns.GenericOption(65001, b"x")]},
    "version-1": {"edns": 1, "payload": 1232},
}


@st.composite
def update_cases(draw: st.DrawFn) -> dict[str, Any]:
    verb = draw(st.sampled_from(["add"] * 4 + ["delete-one", "delete-all"]))
    strings = draw(
        st.lists(
            st.sampled_from([b"", b"a", b"b" * 255, "é".encode()])
            | st.text(max_size=30).map(lambda t: t.encode()[:255])
            | st.binary(max_size=4),
            min_size=1,
            max_size=3,
        )
    )
    return {
        "verb": verb,
        "owner": draw(st.sampled_from(_OWNERS)),
        "strings": strings,
        "ttl": draw(st.sampled_from([0, 1, 300, 300, 300, 86400, 86401])),
        "key": draw(st.sampled_from(["good"] * 6 + ["forged", "unknown", "wrong-alg"])),
        "age": draw(st.sampled_from([0] * 8 + [3600, -3600])),
        "existing": draw(st.lists(st.sampled_from(["a", "b" * 255, "old"]), max_size=3)),
        "edns": draw(st.sampled_from([None] * 3 + list(_EDNS_VARIANTS))),
    }


async def _run_case(
    case: dict[str, Any], fast: bool
) -> tuple[int, int | None, tuple[int, int, int], dict[str, list[str]]]:
    node = Node(fast=fast, max_values_per_name=2)
    good = await node.add_key()
    owner = case["owner"]
    for value in case["existing"]:
        await node.store.put(owner.lower(), value, 300, node.clock.now())
    u = dns.update.UpdateMessage(ZONE)
    u.id = 4321
    name = dns.name.from_text(owner + ".")
    if case["verb"] == "add":
        u.add(name, case["ttl"], dns.rdtypes.ANY.TXT.TXT(1, 16, tuple(case["strings"])))
    elif case["verb"] == "delete-one":
        u.delete(name, dns.rdtypes.ANY.TXT.TXT(1, 16, tuple(case["strings"])))
    else:
        u.delete(name, "TXT")
    if case["edns"] is not None:
        u.use_edns(**_EDNS_VARIANTS[case["edns"]])
    key = {
        "good": good,
        "forged": dns.tsig.Key(KEYNAME, b"\x09" * 32, "hmac-sha256"),
        "unknown": dns.tsig.Key("nobody.mesh.test.", SECRET, "hmac-sha256"),
        "wrong-alg": dns.tsig.Key(KEYNAME, SECRET, "hmac-sha512"),
    }[case["key"]]
    wire = sign_at(u.to_wire(max_size=65535), key, int(time.time()) - case["age"], u.id)
    raw = await node.handler.handle(wire, PEER)
    assert raw is not None
    reply = dns.message.from_wire(raw, keyring=False)
    tsig_error = reply.tsig[0].error if reply.tsig is not None else None
    if case["key"] == "good" and case["age"] == 0 and reply.tsig is not None:
        request_mac = dns.message.from_wire(wire, keyring=False).tsig[0].mac
        dns.message.from_wire(raw, keyring=good, request_mac=request_mac)  # verifies
    snapshot = {
        o.lower(): sorted(r.value for r in await node.store.get(o.lower(), 0)) for o in _OWNERS
    }
    edns = (reply.edns, reply.payload if reply.edns >= 0 else 0, reply.ednsflags)
    return reply.rcode(), tsig_error, edns, snapshot


@settings(max_examples=300, deadline=None)
@given(case=update_cases())
def test_fast_update_path_agrees_with_dnspython(case: dict[str, Any]) -> None:
    """Same rcode, TSIG error, EDNS and store contents with or without the fast path."""
    fast = anyio.run(_run_case, case, True)
    slow = anyio.run(_run_case, case, False)
    assert fast == slow, case


# -- the hand-rendered query path agrees with dnspython's ---------------------

_QNAMES = [
    ZONE,
    "MESH.test",
    "id-0123456789abcdef.mesh.test",
    "Id-0123456789ABCDEF.Mesh.Test",
    "big.mesh.test",
    "nope.mesh.test",
    "a.b.nope.mesh.test",
    "cluster.other.example",
    "absent.other.example",
    "we_ird-*.mesh.test",
    "esc\\(aped.mesh.test",
    "mesh.test.evil",
]


@st.composite
def query_cases(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "qname": draw(st.sampled_from(_QNAMES)),
        "qtype": draw(
            st.sampled_from(["TXT"] * 4 + ["A", "AAAA", "NS", "SOA", "MX", "ANY", "AXFR"])
        ),
        "qclass": draw(st.sampled_from(["IN"] * 6 + ["CH"])),
        "edns": draw(st.sampled_from([None, 512, 1232, 4096])),
        "rd": draw(st.booleans()),
        "transport": draw(st.sampled_from(["udp", "tcp"])),
        "apex": draw(st.booleans()),
        "zone": draw(st.sampled_from([ZONE] * 4 + [None])),
    }


def _summary(raw: bytes) -> tuple[Any, ...]:
    msg = dns.message.from_wire(raw)

    def section(rrsets: list[dns.rrset.RRset]) -> list[tuple[str, int, int, list[str]]]:
        return sorted(
            (r.name.to_text().lower(), r.rdtype, r.ttl, sorted(rd.to_text().lower() for rd in r))
            for r in rrsets
        )

    return (
        msg.id,
        int(msg.flags),
        msg.rcode(),
        [q.name.to_text() for q in msg.question],
        section(msg.answer),
        section(msg.authority),
        msg.edns,
        msg.payload if msg.edns >= 0 else None,
    )


async def _run_query(case: dict[str, Any], fast: bool) -> list[tuple[Any, ...]]:
    apex = (
        {
            "apex_ns": ("ns1.mesh.test",),
            "apex_soa_rname": "hostmaster.mesh.test",
            "apex_a": ("192.0.2.53",),
            "apex_aaaa": ("2001:db8::53",),
        }
        if case["apex"]
        else {"apex_ns": (), "apex_soa_rname": None}
    )
    config = DnsConfig(served_zone=case["zone"], dns_rate=0, **apex)
    clock = SimClock()
    store = MemoryRecordStore()
    handler = DnsHandler(config, store, clock=clock, fast_render=fast)
    for owner, values in {
        "id-0123456789abcdef.mesh.test": ["hello", "second"],
        "big.mesh.test": ["b" * 1500],
        "cluster.other.example": ["m"],
        "we_ird-*.mesh.test": ["w"],
    }.items():
        for value in values:
            await store.put(owner, value, 300, clock.now())
    q = dns.message.make_query(case["qname"], case["qtype"], case["qclass"], id=777)
    if case["edns"] is not None:
        q.use_edns(0, payload=case["edns"])
    if not case["rd"]:
        q.flags &= ~dns.flags.RD
    replies = []
    for _ in range(2):  # the miss, then the cached copy
        raw = handler.answer_cached(q.to_wire(), PEER, case["transport"])
        if raw is None:
            raw = await handler.handle(q.to_wire(), PEER, case["transport"])
        assert raw
        replies.append(_summary(raw))
    return replies


@settings(max_examples=400, deadline=None)
@given(case=query_cases())
def test_hand_rendered_answers_agree_with_dnspython(case: dict[str, Any]) -> None:
    """Same header, question, answer, authority and OPT with or without the hand renderer."""
    fast = anyio.run(_run_query, case, True)
    slow = anyio.run(_run_query, case, False)
    assert fast == slow, case
