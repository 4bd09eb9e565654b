"""The node's authoritative DNS logic: queries and RFC 2136 UPDATE (layer: apps).

Wire in, wire out. The transport (:mod:`dmp.adapters.dns_server`) calls
:meth:`DnsHandler.answer_cached` for every datagram or TCP frame first; it is
synchronous and answers a plain query from the answer cache in a few
microseconds. When it returns ``None`` the transport awaits
:meth:`DnsHandler.handle`, which reads the store, renders, caches and applies
UPDATEs. Plain queries (one question, no TSIG, EDNS version 0 or none, a
name without escaped characters) are rendered by hand; everything else goes
through dnspython, and Hypothesis tests check that both renderings agree. Reference behaviour: behaviour.md §e;
TSIG and scopes: wire.md §7; multi-string TXT: wire.md §1.4.

Queries (RFC 1034/1035, RFC 6891):

* only the first question is answered; QDCOUNT ≠ 1 is FORMERR (RFC 9619);
  AA is set, RA is clear, RD is echoed; qnames match case-insensitively and
  the question is echoed with the query's own case (0x20-safe);
* TXT answers come from the store: one RR per stored value, split into
  ≤255-byte character-strings, TTL = ``dns_ttl`` whatever the stored TTL;
* an absent name is NXDOMAIN, except the zone apex (NODATA); other types are
  NODATA (never NXDOMAIN, so QNAME minimisation works), except the apex
  A/AAAA/NS/SOA when configured; negative answers carry the apex SOA in the
  authority section when ``apex_ns`` and ``apex_soa_rname`` are both set (SOA
  serial = render time, refresh 3600, retry 600, expire 604800, minimum =
  ``dns_ttl``);
* *dmp*: with a served zone configured, an absent name outside it is REFUSED
  without AA (stored names are answered wherever they are, as the reference
  does); a class other than IN, AXFR and IXFR are REFUSED; an EDNS version
  other than 0 gets BADVERS; opcodes other than QUERY and UPDATE get NOTIMP;
* UDP answers larger than the query's EDNS payload size (512 without OPT) are
  sent as header + question (+ OPT) with TC=1; TCP answers are not truncated
  (over 65535 bytes → SERVFAIL);
* a message shorter than 12 bytes, or with QR set, is dropped; a message
  dnspython cannot parse gets FORMERR; an internal error gets SERVFAIL and a
  log line. Nothing raised here reaches the transport.

Answer cache: rendered replies keyed by (lowercased qname wire, qtype,
qclass, EDNS present), holding the full rendering and, when it is over 512
bytes, the truncated one (~500 bytes of overhead per entry); per query only the message ID, the RD bit and the question's case are patched
in. An entry is dropped when the store reports a change at its owner
(``RecordStore.add_listener``), when a stored row it shows expires, after
its max age (which also refreshes the SOA serial), or by FIFO eviction past
``answer_cache_size``. A read racing a write never caches what it read. The
max age is ``answer_cache_max_age_s`` shortened by up to
``answer_cache_jitter`` of it, by a fraction derived from the key's CRC-32:
entries filled together (a cold start, a query sweep) then expire spread over
that window instead of all re-rendering in the same instant. The cache holds
no per-entry container that the cyclic GC must scan (tuples of bytes and
numbers only), so it adds nothing to a full collection.

Rate limit: one token bucket per source IP and transport
(``dns_rate``/``dns_burst``, 0 disables); over-limit messages are dropped
silently, as the reference does. The default, 2000 q/s with a burst of
10000, does not throttle a busy recursive resolver: one resolver address
carries all of its users' lookups (a single ``dnsmesh recv`` is ~38
queries), and the reference's 50 q/s / burst 200 starves it within seconds;
2000 q/s per source is still ~1-2 % of what this server answers, so one
source cannot monopolise it. Spoofed-source floods are the transport's
concern (bounded pending work) rather than this bucket's.

UPDATE (RFC 2136, RFC 8945), only when ``dns_update_enabled`` and a served
zone is set (else REFUSED):

* one zone RR of type SOA (else FORMERR), equal to the served zone (else
  NOTAUTH); every update owner at or under it (else NOTZONE); the
  prerequisite section is ignored; non-TXT RRs are skipped (except a
  class-ANY type-ANY delete, which deletes the TXT RRset);
* ADD = class IN, delete-one = class NONE + rdata, delete-all = class ANY;
  other classes are FORMERR; character-strings are joined and decoded as
  strict UTF-8 (FORMERR);
* TSIG (any HMAC dnspython supports; keyring cached per
  ``TsigKeyStore.generation``): an unknown, revoked or expired key or an
  unsupported algorithm → NOTAUTH with TSIG error BADKEY, a bad MAC → BADSIG
  (both unsigned), a time outside the fudge → BADTIME (signed), as RFC 8945
  §5.3.2 prescribes; each RR must pass :func:`dmp.domain.tsig.authorize`
  (a wildcard suffix authorizes only ADD) else REFUSED; replies to signed
  requests are signed;
* without TSIG: only when ``claim_provider`` or
  ``receiver_claim_notifications`` is on, only ADDs at
  ``claim-<digits>.mb-<12hex>.<zone>`` whose value verifies as a claim with
  ``exp − now ≤ claim_max_ttl`` (and, with notifications only, whose hash12
  belongs to a registered key's ``mb-`` scope), else REFUSED; the
  per-recipient bucket (``claim_rate``/``claim_burst``) exhausted → SERVFAIL;
  the TTL is clamped to ``claim_max_ttl``; an empty un-TSIG'd UPDATE is REFUSED;
* caps on every ADD: value bytes ≤ ``max_value_bytes``, 1 ≤ TTL ≤
  ``max_ttl``, live values per owner ≤ ``max_values_per_name`` → REFUSED;
* NOERROR is sent only after ``await store.put/delete`` returned (durable);
  a store failure → SERVFAIL.

UPDATE fast path: the shape every DMP writer sends (one TXT RR, an optional
EDNS0 OPT RR as ``dnsperf -e`` and many clients add, one TSIG RR with an
untruncated HMAC-SHA*) is parsed, verified and signed by hand
(:meth:`DnsHandler._parse_fast_update`, RFC 8945 §4.3 digest layout), which
costs ~50 µs instead of ~300 µs through dnspython. Any deviation or failure
falls back to dnspython's path, which produces every error reply; a
Hypothesis test checks both paths give the same rcode, TSIG error and store
contents.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import attrs
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TSIG
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.tsig
import dns.update

from dmp.domain.claim import verify_claim
from dmp.domain.codec import split_txt
from dmp.domain.errors import DmpError
from dmp.domain.names import owner_text
from dmp.domain.ratelimit import KeyedBuckets
from dmp.domain.tsig import Refused, UpdateOp, authorize, untsigd_claim_hash12
from dmp.ports.clock import Clock
from dmp.ports.store import (
    RecordStore,
    StoredRecord,
    StoreError,
    StoreFull,
    TsigKey,
    TsigKeyStore,
)

__all__ = [
    "DEFAULT_DNS_BURST",
    "DEFAULT_DNS_RATE",
    "DROP",
    "DnsConfig",
    "DnsHandler",
    "Transport",
]

_log = logging.getLogger("dmp.dns")

Transport = Literal["udp", "tcp"]

DROP: Final = b""
"""Returned by :meth:`DnsHandler.answer_cached` for "send nothing" (rate limited, a response)."""

DEFAULT_DNS_RATE: Final = 2000.0
DEFAULT_DNS_BURST: Final = 10000.0

_MAX_WIRE: Final = 65535
_MIN_UDP: Final = 512
_SOA_REFRESH: Final = 3600
_SOA_RETRY: Final = 600
_SOA_EXPIRE: Final = 604800
_TSIG_FUDGE: Final = 300
_BYTE: Final = tuple(bytes((i,)) for i in range(256))
_STD_QUERY_COUNTS: Final = b"\x00\x01\x00\x00\x00\x00"  # QD=1 AN=0 NS=0
_MB_SCOPE_RE: Final = re.compile(r"mb-([0-9a-f]{12})\..+")
_RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_TSIG_TIME: Final = struct.Struct("!HIHH")  # time high, time low, fudge, MAC size
_TSIG_TAIL: Final = struct.Struct("!HHH")  # original id, error, other length
_TSIG_CLASS_TTL: Final = b"\x00\xff\x00\x00\x00\x00"  # class ANY, TTL 0 (RFC 8945 §4.3.3)
_FAST_DIGESTS: Final = {
    "hmac-sha1": hashlib.sha1,
    "hmac-sha224": hashlib.sha224,
    "hmac-sha256": hashlib.sha256,
    "hmac-sha384": hashlib.sha384,
    "hmac-sha512": hashlib.sha512,
}
_OPT_COOKIE: Final = 10
_OPT_PADDING: Final = 12
_PLAIN_LABEL_BYTES: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"


def _zone_converter(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().rstrip(".").lower()
    return text or None


@attrs.frozen
class DnsConfig:
    """What the DNS handler needs, named after the node's DMP_* variables (behaviour.md §c).

    Attributes:
        served_zone: ``DMP_SERVED_ZONE`` (after the reference's fallback chain),
            lowercase without trailing dot; ``None`` answers every name from the
            store and refuses UPDATE.
        dns_ttl: ``DMP_DNS_TTL``, the TTL of every answer RR, seconds.
        dns_rate: ``DMP_DNS_RATE``, tokens per second per source IP (0 = off).
        dns_burst: ``DMP_DNS_BURST``, bucket capacity.
        dns_max_concurrency: ``DMP_DNS_MAX_CONCURRENCY``, how many slow-path
            messages the transport keeps in flight (more are dropped).
        apex_a: ``DMP_DNS_APEX_A`` addresses served at the zone apex.
        apex_aaaa: ``DMP_DNS_APEX_AAAA`` addresses.
        apex_ns: ``DMP_DNS_APEX_NS`` host names (the first is the SOA MNAME).
        apex_soa_rname: ``DMP_DNS_APEX_SOA_RNAME``; the SOA exists only when
            this and ``apex_ns`` are both set.
        max_ttl: ``DMP_MAX_TTL``, largest TTL an UPDATE ADD may carry.
        max_value_bytes: ``DMP_MAX_VALUE_BYTES``, largest joined TXT value.
        max_values_per_name: ``DMP_MAX_VALUES_PER_NAME``, RRset cardinality cap.
        dns_update_enabled: ``DMP_DNS_UPDATE_ENABLED``.
        claim_provider: ``DMP_CLAIM_PROVIDER`` (un-TSIG'd claims for anyone).
        receiver_claim_notifications: ``DMP_RECEIVER_CLAIM_NOTIFICATIONS``
            (un-TSIG'd claims for registered users of this zone).
        claim_max_ttl: ``DMP_CLAIM_MAX_TTL``, seconds (claim ``exp − now`` and TTL).
        claim_rate: ``DMP_CLAIM_RATE_PER_USER_PER_SEC``, per recipient hash12.
        claim_burst: ``DMP_CLAIM_RATE_BURST``.
        answer_cache_size: *dmp*, rendered answers kept (FIFO eviction); an
            entry costs ~500 bytes plus its answer, so the default bounds a
            random-name flood to ~35 MB of negative answers.
        answer_cache_max_age_s: *dmp*, longest an entry is served, seconds.
        answer_cache_jitter: *dmp*, fraction of ``answer_cache_max_age_s``
            (0 to 1) by which an entry's max age is shortened, per key.
        edns_payload: *dmp*, the UDP payload size we advertise in our OPT.
    """

    served_zone: str | None = attrs.field(default=None, converter=_zone_converter)
    dns_ttl: int = 60
    dns_rate: float = DEFAULT_DNS_RATE
    dns_burst: float = DEFAULT_DNS_BURST
    dns_max_concurrency: int = 128
    apex_a: tuple[str, ...] = ()
    apex_aaaa: tuple[str, ...] = ()
    apex_ns: tuple[str, ...] = ()
    apex_soa_rname: str | None = None
    max_ttl: int = 86400
    max_value_bytes: int = 2048
    max_values_per_name: int = 64
    dns_update_enabled: bool = False
    claim_provider: bool = True
    receiver_claim_notifications: bool = False
    claim_max_ttl: int = 86400
    claim_rate: float = 0.5
    claim_burst: float = 30.0
    answer_cache_size: int = 65_536
    answer_cache_max_age_s: float = 60.0
    answer_cache_jitter: float = attrs.field(
        default=0.25,
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(1.0)),
    )
    edns_payload: int = 1232


def _parse_plain_query(wire: bytes) -> tuple[bytes, int, int, int] | None:
    """Split a plain QUERY into its cache key parts without dnspython.

    Accepts exactly: QR=0, opcode QUERY, QDCOUNT=1, AN=NS=0, an uncompressed
    qname, and either no additional RR or one OPT of EDNS version 0 (options
    ignored), with nothing after it.

    Returns:
        ``(key, qname_end, question_end, udp_limit)`` or ``None``.
    """
    n = len(wire)
    if n < 17 or wire[2] & 0xF8 or wire[4:10] != _STD_QUERY_COUNTS:
        return None
    i = 12
    length = wire[i]
    while length:
        if length > 63:
            return None
        i += length + 1
        if i >= n:
            return None
        length = wire[i]
    qname_end = i + 1
    qend = qname_end + 4
    if qend > n:
        return None
    arcount = wire[10] << 8 | wire[11]
    if arcount == 0:
        if qend != n:
            return None
        return wire[12:qname_end].lower() + wire[qname_end:qend], qname_end, qend, _MIN_UDP
    if arcount != 1 or n < qend + 11:
        return None
    # OPT: root owner, type 41, class = payload, ttl = ext-rcode|version|flags, rdlen
    if wire[qend] or wire[qend + 1] or wire[qend + 2] != 41 or wire[qend + 6]:
        return None
    if qend + 11 + (wire[qend + 9] << 8 | wire[qend + 10]) != n:
        return None
    payload = wire[qend + 3] << 8 | wire[qend + 4]
    key = wire[12:qname_end].lower() + wire[qname_end:qend] + b"E"
    return key, qname_end, qend, payload if payload > _MIN_UDP else _MIN_UDP


def _header_reply(wire: bytes, rcode: int) -> bytes:
    """A 12-byte reply echoing ID, opcode and RD, with ``rcode`` and zero counts."""
    flags = 0x8000 | (wire[2] & 0x79) << 8 | (rcode & 0xF)
    return wire[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def _name_wire(name: dns.name.Name) -> bytes:
    """The uncompressed wire form of an absolute name."""
    wire = name.to_wire()
    assert wire is not None
    return wire


def _owner_wire(owner: str) -> bytes | None:
    """The lowercase wire form of an owner's text (``None`` when it is not a valid name)."""
    text = owner.rstrip(".").lower()
    raw = text.encode("utf-8", "surrogateescape")
    labels = raw.split(b".") if raw else []
    if (
        raw.isascii()
        and not raw.translate(None, _PLAIN_LABEL_BYTES + b".")
        and all(0 < len(label) <= 63 for label in labels)
        and len(raw) < 254
    ):
        return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    try:
        return _name_wire(dns.name.from_text(text + ".")).lower()
    except (dns.exception.DNSException, ValueError):
        return None


def _rdata_wire(rdata: dns.rdata.Rdata) -> bytes:
    """Uncompressed wire form of one rdata."""
    wire = rdata.to_wire()
    assert wire is not None
    return wire


def _read_name(wire: bytes, pos: int) -> tuple[list[bytes], int] | None:
    """Labels of the (possibly compressed) name at ``pos`` and the offset after it.

    Only backward pointers are followed; anything malformed gives ``None``.
    """
    labels: list[bytes] = []
    end = -1
    total = 1
    n = len(wire)
    while True:
        if pos >= n:
            return None
        length = wire[pos]
        if length == 0:
            return labels, (pos + 1 if end < 0 else end)
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                return None
            target = (length & 0x3F) << 8 | wire[pos + 1]
            if target >= pos:
                return None
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length > 63 or pos + 1 + length > n:
            return None
        total += length + 1
        if total > 255:
            return None
        labels.append(wire[pos + 1 : pos + 1 + length])
        pos += 1 + length


def _canonical_wire(labels: list[bytes]) -> bytes:
    """The lowercase, uncompressed wire form of a name (RFC 8945 digest form)."""
    return b"".join(bytes((len(label),)) + label.lower() for label in labels) + b"\0"


def _fast_opt_end(wire: bytes, pos: int) -> int:
    """Where the OPT RR at ``pos`` ends, when the UPDATE fast path may take it; else -1.

    Taken: root owner, type OPT, extended RCODE 0 and version 0 (any payload
    size and flags), and options that are well framed and only COOKIE (8
    client bytes, optionally 8-32 server bytes, RFC 7873) or PADDING
    (RFC 7830). Everything else (another version, options that dnspython
    parses and checks itself) goes to dnspython's path, so both paths answer
    alike.
    """
    end = pos + 11
    if end > len(wire) or wire[pos] or wire[pos + 1 : pos + 3] != b"\x00\x29":
        return -1
    if wire[pos + 5] or wire[pos + 6]:  # extended RCODE, version
        return -1
    end += wire[pos + 9] << 8 | wire[pos + 10]
    if end > len(wire):
        return -1
    i = pos + 11
    while i < end:
        if i + 4 > end:
            return -1
        code, length = struct.unpack_from("!HH", wire, i)
        i += 4 + length
        if i > end:
            return -1
        if code == _OPT_COOKIE:
            if length != 8 and not 16 <= length <= 40:
                return -1
        elif code != _OPT_PADDING:
            return -1
    return end


@attrs.frozen
class _FastKey:
    """A TSIG key ready for the hand-rolled UPDATE path."""

    name: bytes  # canonical wire
    algorithm: bytes  # canonical wire
    digest: Any
    digest_size: int
    secret: bytes
    meta: TsigKey


def _peer_host(peer: Any) -> Any:
    return peer[0] if isinstance(peer, tuple) else peer


_CacheEntry = tuple[float, bytes, "bytes | None", int]
"""``(valid_until, full reply, truncated reply or None when full ≤ 512 bytes, qname length)``."""


@attrs.frozen
class _Op:
    kind: UpdateOp
    owner: str
    value: str | None  # None: delete every value
    ttl: int = 0
    name: dns.name.Name | None = None  # the owner as a name, when already parsed


class _UpdateRefusal(Exception):
    def __init__(self, rcode: dns.rcode.Rcode, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


class DnsHandler:
    """Authoritative answers and RFC 2136 UPDATE over a :class:`RecordStore`.

    Args:
        config: the :class:`DnsConfig`.
        store: the record store; its change listener is registered here.
        clock: time for store reads, expiry, rate limits and claim checks.
            TSIG signing and checking use wall time inside dnspython.
        tsig_keys: the TSIG keystore; ``None`` means no key verifies.
        wall: wall-clock seconds for TSIG time checks and signatures
            (dnspython's own path reads ``time.time()``).
        fast_updates: take the hand-rolled path for the common TSIG UPDATE
            shape (one TXT RR, one TSIG RR); off only to compare paths in tests.
        fast_render: render answers to plain queries by hand on a cache miss
            rather than through dnspython; off only to compare paths in tests.

    Attributes:
        counters: outcome → count for the slow path and UPDATEs (``noerror``,
            ``nxdomain``, ``refused``, ``formerr``, ``servfail``, ``notauth``,
            ``rate_limited``, ``dropped``, ``update_ok``, ``update_refused``, ...),
            exported by the node's ``/metrics``.
        cache_hits: queries answered from the cache.
        fast_updates: UPDATEs answered by the hand-rolled path.
    """

    def __init__(
        self,
        config: DnsConfig,
        store: RecordStore,
        *,
        clock: Clock,
        tsig_keys: TsigKeyStore | None = None,
        wall: Callable[[], float] = time.time,
        fast_updates: bool = True,
        fast_render: bool = True,
    ) -> None:
        self.config = config
        self._wall_now = wall
        self._store = store
        self._clock = clock
        self._tsig_keys = tsig_keys
        self._zone = dns.name.from_text(config.served_zone + ".") if config.served_zone else None
        self._zone_wire = _name_wire(self._zone).lower() if self._zone is not None else b""
        self._buckets: dict[str, KeyedBuckets[Any]] = {
            "udp": KeyedBuckets(config.dns_rate, config.dns_burst),
            "tcp": KeyedBuckets(config.dns_rate, config.dns_burst),
        }
        self._claim_buckets: KeyedBuckets[str] = KeyedBuckets(config.claim_rate, config.claim_burst)
        self._apex = self._build_apex()
        self._apex_rdata: dict[int, list[bytes]] = {
            rdtype: [_rdata_wire(rd) for rd in rrset] for rdtype, rrset in self._apex.items()
        }
        self._soa_names = (
            _name_wire(dns.name.from_text(config.apex_ns[0].rstrip(".") + "."))
            + _name_wire(dns.name.from_text(config.apex_soa_rname.rstrip(".") + "."))
            if self._zone is not None and config.apex_ns and config.apex_soa_rname
            else None
        )
        self._fast_render = fast_render
        # our OPT RR: root owner, type 41, class = payload, TTL 0 (version 0, no flags), no options
        self._opt_rr = b"\x00\x00\x29" + config.edns_payload.to_bytes(2, "big") + b"\x00" * 6
        # answer cache
        self._cache: dict[bytes, _CacheEntry] = {}
        self._by_qname: dict[bytes, tuple[bytes, ...]] = {}
        self._reading: dict[bytes, int] = {}
        self._dirty: set[bytes] = set()
        self._epoch = 0
        # TSIG keyring, rebuilt when the keystore's generation moves
        self._keyring_gen: int | None = None
        self._keyring: dict[dns.name.Name, tuple[dns.tsig.Key, TsigKey]] = {}
        self._fast_keys: dict[bytes, _FastKey] = {}
        self._fast_updates = fast_updates
        self._zone_labels = (
            tuple(label.lower() for label in self._zone.labels[:-1]) if self._zone else ()
        )
        self._registered_h12: frozenset[str] = frozenset()
        self.counters: Counter[str] = Counter()
        self.cache_hits = 0
        self.fast_updates = 0
        add_listener = getattr(store, "add_listener", None)
        self._store_notifies = callable(add_listener)
        if callable(add_listener):
            add_listener(self.invalidate)

    # -- apex ------------------------------------------------------------

    def _build_apex(self) -> dict[int, dns.rrset.RRset]:
        zone, cfg = self._zone, self.config
        if zone is None:
            return {}
        ttl, IN = cfg.dns_ttl, dns.rdataclass.IN
        apex: dict[int, dns.rrset.RRset] = {}
        if cfg.apex_a:
            apex[dns.rdatatype.A] = dns.rrset.from_text(zone, ttl, IN, "A", *cfg.apex_a)
        if cfg.apex_aaaa:
            apex[dns.rdatatype.AAAA] = dns.rrset.from_text(zone, ttl, IN, "AAAA", *cfg.apex_aaaa)
        if cfg.apex_ns:
            hosts = [h.rstrip(".") + "." for h in cfg.apex_ns]
            apex[dns.rdatatype.NS] = dns.rrset.from_text(zone, ttl, IN, "NS", *hosts)
        return apex

    def _soa(self, now: float) -> dns.rrset.RRset | None:
        cfg, zone = self.config, self._zone
        if zone is None or not cfg.apex_ns or not cfg.apex_soa_rname:
            return None
        rdata = dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            dns.name.from_text(cfg.apex_ns[0].rstrip(".") + "."),
            dns.name.from_text(cfg.apex_soa_rname.rstrip(".") + "."),
            int(now) & 0xFFFFFFFF,
            _SOA_REFRESH,
            _SOA_RETRY,
            _SOA_EXPIRE,
            cfg.dns_ttl,
        )
        return dns.rrset.from_rdata(zone, cfg.dns_ttl, rdata)

    # -- cache -----------------------------------------------------------

    def invalidate(self, owner: str | None = None) -> None:
        """Drop cached answers at ``owner`` (canonical text), or all of them for ``None``.

        This is the store's change listener; it never raises.
        """
        if owner is None:
            self._flush()
            return
        qname = _owner_wire(owner)
        if qname is None:  # not a DNS name, so nothing can be cached under it
            return
        keys = self._by_qname.pop(qname, None)
        if keys:
            for key in keys:
                self._cache.pop(key, None)
        if qname in self._reading:
            self._dirty.add(qname)

    def _flush(self) -> None:
        self._cache.clear()
        self._by_qname.clear()
        self._epoch += 1

    def _cache_put(self, key: bytes, entry: _CacheEntry) -> None:
        cache = self._cache
        if key not in cache and len(cache) >= self.config.answer_cache_size:
            old_key = next(iter(cache))
            old_qname = old_key[: cache.pop(old_key)[3]]
            siblings = self._by_qname.get(old_qname)
            if siblings is not None:
                rest = tuple(k for k in siblings if k != old_key)
                if rest:
                    self._by_qname[old_qname] = rest
                else:
                    del self._by_qname[old_qname]
        elif key in cache:
            cache[key] = entry
            return
        cache[key] = entry
        qname = key[: entry[3]]
        self._by_qname[qname] = (*self._by_qname.get(qname, ()), key)

    def _max_age(self, key: bytes) -> float:
        """Seconds the entry at ``key`` may be served: the max age less its jitter."""
        cfg = self.config
        return cfg.answer_cache_max_age_s * (
            1.0 - cfg.answer_cache_jitter * zlib.crc32(key) / 2**32
        )

    @property
    def cache_size(self) -> int:
        """How many rendered answers are cached."""
        return len(self._cache)

    # -- fast path -------------------------------------------------------

    def answer_cached(self, wire: bytes, peer: Any, transport: Transport = "udp") -> bytes | None:
        """Answer from the cache, synchronously, when possible.

        Args:
            wire: the received message.
            peer: the source address (``(host, port, ...)``).
            transport: ``"udp"`` (truncates to the client's payload size) or ``"tcp"``.

        Returns:
            The reply; :data:`DROP` (empty) to send nothing; ``None`` when
            :meth:`handle` must take over (cache miss, anything but a plain
            query). Never raises on any input.
        """
        if len(wire) < 12 or wire[2] & 0x80:
            return DROP
        parsed = _parse_plain_query(wire)
        if parsed is None:
            return None
        entry = self._cache.get(parsed[0])
        if entry is None:
            return None
        now = self._clock.now()
        if now >= entry[0]:
            return None
        buckets = self._buckets[transport]
        if buckets.rate > 0 and not buckets.allow(_peer_host(peer), now):
            self.counters["rate_limited"] += 1
            return DROP
        body = entry[1]
        if transport == "udp" and len(body) > parsed[3]:
            body = entry[2] or body  # entry[2] exists whenever len(body) > 512
        qend = parsed[2]
        self.cache_hits += 1
        return b"".join(
            (
                wire[:2],
                _BYTE[(body[2] & 0xFE) | (wire[2] & 1)],
                body[3:12],
                wire[12:qend],
                body[qend:],
            )
        )

    # -- slow path -------------------------------------------------------

    async def handle(self, wire: bytes, peer: Any, transport: Transport = "udp") -> bytes | None:
        """Answer any message: queries (filling the cache) and UPDATEs.

        Args:
            wire: the received message.
            peer: the source address.
            transport: ``"udp"`` or ``"tcp"``.

        Returns:
            The reply, or ``None`` to send nothing (short header, a response,
            rate limited). Never raises: internal errors become SERVFAIL.
        """
        if len(wire) < 12 or wire[2] & 0x80:
            self.counters["dropped"] += 1
            return None
        try:
            now = self._clock.now()
            buckets = self._buckets[transport]
            if buckets.rate > 0 and not buckets.allow(_peer_host(peer), now):
                self.counters["rate_limited"] += 1
                return None
            opcode = (wire[2] >> 3) & 0xF
            if opcode == dns.opcode.UPDATE:
                return await self._handle_update(wire, now)
            if opcode != dns.opcode.QUERY:
                self.counters["notimp"] += 1
                return _header_reply(wire, dns.rcode.NOTIMP)
            return await self._handle_query(wire, now, transport)
        except Exception:
            _log.exception("DNS handler failed on a %d-byte message from %r", len(wire), peer)
            self.counters["servfail"] += 1
            return _header_reply(wire, dns.rcode.SERVFAIL)

    def _parse(self, wire: bytes) -> dns.message.Message | bytes | None:
        """Parse with TSIG checks; on failure the reply bytes to send (or None to drop)."""
        keyring = self._lookup_key if self._tsig_keys is not None else None
        try:
            return dns.message.from_wire(wire, keyring=keyring)
        except dns.message.ShortHeader:
            return None
        except (dns.message.UnknownTSIGKey, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
            return self._tsig_error_reply(wire, dns.rcode.BADKEY)
        except NotImplementedError:  # dnspython: TSIG algorithm not supported
            return self._tsig_error_reply(wire, dns.rcode.BADKEY)
        except dns.tsig.BadSignature:
            return self._tsig_error_reply(wire, dns.rcode.BADSIG)
        except dns.tsig.BadTime:
            return self._tsig_error_reply(wire, dns.rcode.BADTIME)
        except Exception:
            self.counters["formerr"] += 1
            return self._formerr(wire)

    def _formerr(self, wire: bytes) -> bytes:
        try:
            query = dns.message.from_wire(wire, question_only=True)
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.FORMERR)
            return resp.to_wire(max_size=_MAX_WIRE)
        except Exception:
            return _header_reply(wire, dns.rcode.FORMERR)

    def _begin_read(self, qname_wire: bytes) -> int:
        self._reading[qname_wire] = self._reading.get(qname_wire, 0) + 1
        return self._epoch

    def _end_read(self, qname_wire: bytes, epoch: int) -> bool:
        """Close a store read; True when a write raced it (its result must not be cached)."""
        stale = epoch != self._epoch or qname_wire in self._dirty
        left = self._reading[qname_wire] - 1
        if left:
            self._reading[qname_wire] = left
        else:
            del self._reading[qname_wire]
            self._dirty.discard(qname_wire)
        return stale

    async def _plain_query(
        self, wire: bytes, parsed: tuple[bytes, int, int, int], now: float, transport: Transport
    ) -> bytes | None:
        """Answer a plain query without dnspython (same decisions as :meth:`_answer`).

        Returns ``None`` for names it does not render (escaped characters), which
        then take dnspython's path.
        """
        cfg = self.config
        key, qname_end, qend, limit = parsed
        offsets = []
        i = 12
        while wire[i]:
            offsets.append(i)
            i += wire[i] + 1
        labels = [wire[o + 1 : o + 1 + wire[o]] for o in offsets]
        if any(label.translate(None, _PLAIN_LABEL_BYTES) for label in labels):
            return None
        qname_wire = key[: qname_end - 12]
        qtype, qclass = struct.unpack_from("!HH", wire, qname_end)
        zone_at = -1
        if self._zone is None:
            in_zone = True
        else:
            for o in offsets:
                if wire[o:qname_end].lower() == self._zone_wire:
                    zone_at = o
                    break
            in_zone = zone_at >= 0
        is_apex = zone_at == 12
        rcode: int = dns.rcode.NOERROR
        aa = True
        answers: list[bytes] = []
        authority: list[bytes] = []
        valid_until = now + self._max_age(key)
        stale = False
        ttl = struct.pack("!I", cfg.dns_ttl & 0xFFFFFFFF)
        if qclass != dns.rdataclass.IN or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            rcode, aa = dns.rcode.REFUSED, False
        else:
            rows: list[StoredRecord] = []
            if qtype == dns.rdatatype.TXT or not in_zone:
                epoch = self._begin_read(qname_wire)
                try:
                    rows = await self._store.get(b".".join(labels).decode("ascii").lower(), now)
                finally:
                    stale = self._end_read(qname_wire, epoch)
            soa = self._soa_rdata(now)
            if qtype == dns.rdatatype.TXT and rows:
                for row in rows:
                    rdata = b"".join(bytes((len(p),)) + p for p in split_txt(row.value))
                    answers.append(
                        b"\xc0\x0c\x00\x10\x00\x01" + ttl + len(rdata).to_bytes(2, "big") + rdata
                    )
                    valid_until = min(valid_until, row.expires_at)
            elif is_apex and qtype == dns.rdatatype.SOA and soa is not None:
                answers.append(b"\xc0\x0c\x00\x06\x00\x01" + ttl + soa)
            elif is_apex and qtype in self._apex_rdata and qtype != dns.rdatatype.SOA:
                head = b"\xc0\x0c" + struct.pack("!HH", qtype, 1) + ttl
                answers.extend(
                    head + len(rd).to_bytes(2, "big") + rd for rd in self._apex_rdata[qtype]
                )
            elif not in_zone and not rows:
                rcode, aa = dns.rcode.REFUSED, False
            else:
                if qtype == dns.rdatatype.TXT and not is_apex:
                    rcode = dns.rcode.NXDOMAIN
                if zone_at >= 0 and soa is not None:
                    authority.append(
                        struct.pack("!HHH", 0xC000 | zone_at, dns.rdatatype.SOA, 1) + ttl + soa
                    )
        self.counters[dns.rcode.to_text(dns.rcode.Rcode(rcode)).lower()] += 1
        flags = 0x8000 | (0x0400 if aa else 0) | (wire[2] & 0x01) << 8 | rcode
        edns = len(wire) > qend
        opt = self._opt_rr if edns else b""
        question = wire[12:qend]
        full = b"".join(
            (
                wire[:2],
                struct.pack("!HHHHH", flags, 1, len(answers), len(authority), 1 if edns else 0),
                question,
                *answers,
                *authority,
                opt,
            )
        )
        if len(full) > _MAX_WIRE:
            _log.warning("answer for %r is %d bytes, over 65535", key, len(full))
            self.counters["servfail"] += 1
            return _header_reply(wire, dns.rcode.SERVFAIL)
        tc: bytes | None = None
        if len(full) > _MIN_UDP:
            counts = struct.pack("!HHHHH", flags | 0x0200, 1, 0, 0, 1 if edns else 0)
            tc = wire[:2] + counts + question + opt
        if not stale:
            self._cache_put(key, (valid_until, full, tc, qname_end - 12))
        if transport == "udp" and len(full) > limit:
            assert tc is not None
            return tc
        return full

    def _soa_rdata(self, now: float) -> bytes | None:
        if self._soa_names is None:
            return None
        tail = struct.pack(
            "!IIIII",
            int(now) & 0xFFFFFFFF,
            _SOA_REFRESH,
            _SOA_RETRY,
            _SOA_EXPIRE,
            self.config.dns_ttl & 0xFFFFFFFF,
        )
        rdata = self._soa_names + tail
        return len(rdata).to_bytes(2, "big") + rdata

    async def _handle_query(self, wire: bytes, now: float, transport: Transport) -> bytes | None:
        parsed = _parse_plain_query(wire)
        if parsed is not None and self._fast_render:
            reply = await self._plain_query(wire, parsed, now, transport)
            if reply is not None:
                return reply
        if self._tsig_keys is not None and parsed is None:
            await self._refresh_keyring(now)
        query = self._parse(wire)
        if not isinstance(query, dns.message.Message):
            return query
        if query.edns > 0:
            resp = dns.message.make_response(query, our_payload=self.config.edns_payload, pad=0)
            resp.set_rcode(dns.rcode.BADVERS)
            return resp.to_wire(max_size=_MAX_WIRE)
        if len(query.question) != 1:
            self.counters["formerr"] += 1
            resp = dns.message.make_response(query, our_payload=self.config.edns_payload, pad=0)
            resp.question = []
            resp.set_rcode(dns.rcode.FORMERR)
            return resp.to_wire(max_size=_MAX_WIRE)
        qname = query.question[0].name
        qname_wire = _name_wire(qname).lower()
        cacheable = parsed is not None and not query.had_tsig
        epoch = self._begin_read(qname_wire)
        try:
            resp, valid_until = await self._answer(query, now)
        finally:
            stale = self._end_read(qname_wire, epoch)
        self.counters[dns.rcode.to_text(resp.rcode()).lower()] += 1
        full = resp.to_wire(max_size=_MAX_WIRE)  # raises TooBig → SERVFAIL
        limit = max(_MIN_UDP, query.payload) if query.edns >= 0 else _MIN_UDP
        tc: bytes | None = None
        if len(full) > _MIN_UDP:
            tc = self._render_truncated(query, resp)
        if parsed is not None and cacheable and not stale and valid_until is not None:
            key, qname_end, _, _ = parsed
            valid_until = min(valid_until, now + self._max_age(key))
            self._cache_put(key, (valid_until, full, tc, qname_end - 12))
        if transport == "udp" and len(full) > limit:
            assert tc is not None
            return tc
        return full

    def _render_truncated(self, query: dns.message.Message, resp: dns.message.Message) -> bytes:
        tc = dns.message.make_response(query, our_payload=self.config.edns_payload, pad=0)
        tc.flags = resp.flags | dns.flags.TC
        tc.set_rcode(resp.rcode())
        return tc.to_wire(max_size=_MAX_WIRE)

    async def _answer(
        self, query: dns.message.Message, now: float
    ) -> tuple[dns.message.Message, float | None]:
        """The response and until when it may be cached (None: not cacheable)."""
        cfg = self.config
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        resp = dns.message.make_response(query, our_payload=cfg.edns_payload, pad=0)
        valid_until: float | None = now + cfg.answer_cache_max_age_s
        if question.rdclass != dns.rdataclass.IN or qtype in (
            dns.rdatatype.AXFR,
            dns.rdatatype.IXFR,
        ):
            resp.set_rcode(dns.rcode.REFUSED)
            return resp, valid_until
        zone = self._zone
        is_apex = zone is not None and qname == zone
        in_zone = zone is None or qname.is_subdomain(zone)
        owner = owner_text(qname)
        if qtype == dns.rdatatype.TXT or not in_zone:
            rows = await self._store.get(owner, now)
        else:
            rows = []
        resp.flags |= dns.flags.AA
        if qtype == dns.rdatatype.TXT and rows:
            rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.TXT)
            for row in rows:
                rrset.add(
                    dns.rdtypes.ANY.TXT.TXT(
                        dns.rdataclass.IN, dns.rdatatype.TXT, split_txt(row.value)
                    ),
                    cfg.dns_ttl,
                )
            resp.answer.append(rrset)
            valid_until = min(now + cfg.answer_cache_max_age_s, *(row.expires_at for row in rows))
            return resp, valid_until
        if is_apex:
            if qtype == dns.rdatatype.SOA:
                soa = self._soa(now)
                if soa is not None:
                    resp.answer.append(soa)
                    return resp, valid_until
            elif qtype in self._apex:
                resp.answer.append(self._apex[qtype])
                return resp, valid_until
        if not in_zone and not rows:
            resp.flags &= ~dns.flags.AA
            resp.set_rcode(dns.rcode.REFUSED)
            return resp, valid_until
        if qtype == dns.rdatatype.TXT and not is_apex:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        if in_zone:
            soa = self._soa(now)
            if soa is not None:
                resp.authority.append(soa)
        return resp, valid_until

    # -- TSIG ------------------------------------------------------------

    async def _refresh_keyring(self, now: float) -> None:
        keystore = self._tsig_keys
        if keystore is None:
            return
        generation = keystore.generation
        if generation == self._keyring_gen:
            return
        keys = await keystore.active(now)
        keyring: dict[dns.name.Name, tuple[dns.tsig.Key, TsigKey]] = {}
        fast: dict[bytes, _FastKey] = {}
        registered: set[str] = set()
        for key in keys:
            try:
                name = dns.name.from_text(key.keyname)
                tsig_key = dns.tsig.Key(name, key.secret, key.algorithm)
                keyring[name] = (tsig_key, key)
            except (dns.exception.DNSException, ValueError):
                _log.warning("TSIG key %r has an unusable name or algorithm", key.keyname)
                continue
            algorithm = tsig_key.algorithm.to_text(omit_final_dot=True).lower()
            digest = _FAST_DIGESTS.get(algorithm)
            if digest is not None:
                fast[_canonical_wire(list(name.labels[:-1]))] = _FastKey(
                    _canonical_wire(list(name.labels[:-1])),
                    _canonical_wire(list(tsig_key.algorithm.labels[:-1])),
                    digest,
                    digest().digest_size,
                    key.secret,
                    key,
                )
            for suffix in key.allowed_suffixes:
                match = _MB_SCOPE_RE.fullmatch(suffix)
                if match is not None:
                    registered.add(match.group(1))
        self._keyring = keyring
        self._fast_keys = fast
        self._registered_h12 = frozenset(registered)
        self._keyring_gen = generation

    def _lookup_key(self, message: dns.message.Message, keyname: dns.name.Name) -> Any:
        found = self._keyring.get(keyname)
        if found is None:
            return None
        tsig_key, meta = found
        if meta.revoked or meta.expires_at <= self._clock.now():
            return None
        return tsig_key

    def _tsig_error_reply(self, wire: bytes, error: int) -> bytes:
        """NOTAUTH with a TSIG RR carrying ``error`` (RFC 8945 §5.3.2)."""
        self.counters["notauth"] += 1
        try:
            query = dns.message.from_wire(wire, keyring=False)
        except Exception:
            return _header_reply(wire, dns.rcode.NOTAUTH)
        if query.tsig is None:
            return _header_reply(wire, dns.rcode.NOTAUTH)
        resp = dns.message.make_response(query, our_payload=self.config.edns_payload, pad=0)
        resp.set_rcode(dns.rcode.NOTAUTH)
        trd = query.tsig[0]
        keyname = query.tsig.name
        if error == dns.rcode.BADTIME:
            found = self._keyring.get(keyname)
            if found is not None:
                # The MAC verified (dnspython checks time last), so sign with the key.
                now = int(self._wall_now())
                resp.use_tsig(
                    found[0],
                    keyname,
                    fudge=trd.fudge,
                    original_id=query.id,
                    tsig_error=error,
                    other_data=struct.pack("!Q", now)[2:],
                    algorithm=trd.algorithm,
                )
                resp.request_mac = trd.mac
                return resp.to_wire(max_size=_MAX_WIRE)
        body = bytearray(resp.to_wire(max_size=_MAX_WIRE))
        rdata = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
            dns.rdataclass.ANY,
            dns.rdatatype.TSIG,
            trd.algorithm,
            trd.time_signed,
            trd.fudge,
            b"",
            query.id,
            error,
            b"",
        )
        rdata_wire = rdata.to_wire()
        assert rdata_wire is not None
        body += _name_wire(keyname)
        body += struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata_wire))
        body += rdata_wire
        arcount = struct.unpack_from("!H", body, 10)[0] + 1
        struct.pack_into("!H", body, 10, arcount)
        return bytes(body)

    # -- UPDATE ----------------------------------------------------------

    async def _handle_update(self, wire: bytes, now: float) -> bytes | None:
        cfg = self.config
        if not cfg.dns_update_enabled or self._zone is None:
            try:
                query = dns.message.from_wire(wire, keyring=False)
            except dns.message.ShortHeader:
                return None
            except Exception:
                self.counters["formerr"] += 1
                return self._formerr(wire)
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.REFUSED)
            self.counters["update_refused"] += 1
            return resp.to_wire(max_size=_MAX_WIRE)
        await self._refresh_keyring(now)
        if self._fast_updates:
            fast = self._parse_fast_update(wire)
            if fast is not None:
                return await self._fast_update(wire, now, *fast)
        parsed = self._parse(wire)
        if not isinstance(parsed, dns.message.Message):
            return parsed
        query = parsed
        resp = dns.message.make_response(query, our_payload=cfg.edns_payload, pad=0)
        try:
            await self._apply_update(query, now)
        except _UpdateRefusal as refusal:
            _log.info("UPDATE %s: %s", dns.rcode.to_text(refusal.rcode), refusal.reason)
            self.counters["update_" + dns.rcode.to_text(refusal.rcode).lower()] += 1
            resp.set_rcode(refusal.rcode)
        except StoreError:
            _log.exception("UPDATE: store write failed")
            self.counters["update_servfail"] += 1
            resp.set_rcode(dns.rcode.SERVFAIL)
        else:
            self.counters["update_ok"] += 1
        return resp.to_wire(max_size=_MAX_WIRE)

    def _parse_fast_update(self, wire: bytes) -> tuple[_Op, _FastKey, int, bytes, bool] | None:
        """Parse and verify the common signed UPDATE without dnspython.

        Handles exactly: opcode UPDATE, one zone RR (the served zone, SOA, IN),
        no prerequisites, one TXT update RR (ADD, delete-one or delete-all) at
        a plain owner under the zone, optionally one EDNS version 0 OPT RR
        (RFC 6891; see :func:`_fast_opt_end`), and last one TSIG RR with error
        0 whose HMAC (SHA-1/224/256/384/512, untruncated) verifies with an
        active key within its fudge (RFC 8945 §4.3, §5.2; the OPT, like every
        RR before the TSIG, is covered by the MAC). Anything else, including
        every failure, returns ``None`` so dnspython's path decides and answers.

        Returns:
            ``(op, key, end of the zone section, request MAC, EDNS present)``
            or ``None``.
        """
        n = len(wire)
        zone_wire = self._zone_wire
        zone_end = 12 + len(zone_wire)
        if (
            n < zone_end + 4
            or (wire[2] & 0xF8) != 0x28
            or wire[4:11] != b"\x00\x01\x00\x00\x00\x01\x00"
            or wire[11] not in (1, 2)
            or wire[12:zone_end].lower() != zone_wire
            or wire[zone_end : zone_end + 4] != b"\x00\x06\x00\x01"
        ):
            return None
        edns = wire[11] == 2
        read = _read_name(wire, zone_end + 4)
        if read is None:
            return None
        labels, pos = read
        if pos + 10 > n:
            return None
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(wire, pos)
        pos += 10
        tsig_start = pos + rdlen
        if rtype != dns.rdatatype.TXT or tsig_start > n:
            return None
        zl = self._zone_labels
        if len(labels) < len(zl) or tuple(x.lower() for x in labels[len(labels) - len(zl) :]) != zl:
            return None
        if any(label.translate(None, _PLAIN_LABEL_BYTES) for label in labels):
            return None
        owner = b".".join(labels).decode("ascii").lower()
        name = dns.name.Name([*labels, b""])  # plain labels: the same name as ``owner``
        if rclass == dns.rdataclass.ANY and rdlen == 0:
            op = _Op(UpdateOp.DELETE, owner, None, name=name)
        elif rclass in (dns.rdataclass.IN, dns.rdataclass.NONE) and rdlen:
            strings = []
            i = pos
            while i < tsig_start:
                length = wire[i]
                if i + 1 + length > tsig_start:
                    return None
                strings.append(wire[i + 1 : i + 1 + length])
                i += 1 + length
            try:
                value = b"".join(strings).decode("utf-8")
            except UnicodeDecodeError:
                return None
            if rclass == dns.rdataclass.IN:
                op = _Op(UpdateOp.ADD, owner, value, ttl, name)
            else:
                op = _Op(UpdateOp.DELETE, owner, value, name=name)
        else:
            return None
        if edns:
            tsig_start = _fast_opt_end(wire, tsig_start)
            if tsig_start < 0:
                return None
        # the TSIG RR
        read = _read_name(wire, tsig_start)
        if read is None:
            return None
        key_labels, pos = read
        if pos + 10 > n:
            return None
        ttype, tclass, _, trdlen = _RR_FIXED.unpack_from(wire, pos)
        pos += 10
        if ttype != dns.rdatatype.TSIG or tclass != dns.rdataclass.ANY or pos + trdlen != n:
            return None
        read = _read_name(wire, pos)
        if read is None:
            return None
        alg_labels, pos = read
        if pos + 10 > n:
            return None
        time_hi, time_lo, fudge, mac_len = _TSIG_TIME.unpack_from(wire, pos)
        time_vars = wire[pos : pos + 8]
        pos += 10
        mac = wire[pos : pos + mac_len]
        pos += mac_len
        if pos + 6 > n:
            return None
        original_id, error, other_len = _TSIG_TAIL.unpack_from(wire, pos)
        pos += 6
        other = wire[pos : pos + other_len]
        if pos + other_len != n or error:
            return None
        key = self._fast_keys.get(_canonical_wire(key_labels))
        if (
            key is None
            or key.algorithm != _canonical_wire(alg_labels)
            or len(mac) != key.digest_size
            or key.meta.revoked
            or key.meta.expires_at <= self._clock.now()
            or abs(int(self._wall_now()) - (time_hi << 32 | time_lo)) > fudge
        ):
            return None
        digest = hmac.new(key.secret, digestmod=key.digest)
        # RFC 8945 §4.3.1: the header with the original ID and ARCOUNT less the TSIG
        digest.update(
            original_id.to_bytes(2, "big") + wire[2:10] + (b"\x00\x01" if edns else b"\x00\x00")
        )
        digest.update(wire[12:tsig_start])
        digest.update(key.name + _TSIG_CLASS_TTL + key.algorithm + time_vars)
        digest.update(_TSIG_TAIL.pack(0, 0, other_len)[2:] + other)
        if not hmac.compare_digest(digest.digest(), mac):
            return None
        return op, key, zone_end + 4, mac, edns

    async def _fast_update(
        self,
        wire: bytes,
        now: float,
        op: _Op,
        key: _FastKey,
        question_end: int,
        request_mac: bytes,
        edns: bool,
    ) -> bytes:
        """Apply a verified fast-path UPDATE and answer with a signed reply.

        The reply carries the zone section, then our OPT when the request had
        one (RFC 6891 §7: payload ``edns_payload``, version 0, no flags or
        options, as dnspython's ``make_response`` renders it), then the TSIG.
        """
        rcode: int = dns.rcode.NOERROR
        try:
            await self._apply_ops([op], key.meta, now)
        except _UpdateRefusal as refusal:
            _log.info("UPDATE %s: %s", dns.rcode.to_text(refusal.rcode), refusal.reason)
            self.counters["update_" + dns.rcode.to_text(refusal.rcode).lower()] += 1
            rcode = refusal.rcode
        except StoreError:
            _log.exception("UPDATE: store write failed")
            self.counters["update_servfail"] += 1
            rcode = dns.rcode.SERVFAIL
        else:
            self.counters["update_ok"] += 1
        self.fast_updates += 1
        # RFC 8945 §5.3: MAC over the request MAC, the reply, then the TSIG variables.
        flags = 0xA800 | (wire[2] & 0x01) << 8 | (rcode & 0xF)
        body = b"".join(
            (
                wire[:2],
                struct.pack("!HHHHH", flags, 1, 0, 0, 1 if edns else 0),
                wire[12:question_end],
                self._opt_rr if edns else b"",
            )
        )
        signed_at = int(self._wall_now())
        time_vars = struct.pack("!HIH", signed_at >> 32 & 0xFFFF, signed_at & 0xFFFFFFFF, 300)
        digest = hmac.new(key.secret, digestmod=key.digest)
        digest.update(len(request_mac).to_bytes(2, "big") + request_mac + body)
        digest.update(key.name + _TSIG_CLASS_TTL + key.algorithm + time_vars + b"\x00" * 4)
        mac = digest.digest()
        rdata = (
            key.algorithm
            + time_vars
            + len(mac).to_bytes(2, "big")
            + mac
            + wire[:2]
            + b"\x00" * 4  # error 0, other length 0
        )
        return b"".join(
            (
                body[:10],
                b"\x00\x02" if edns else b"\x00\x01",
                body[12:],
                key.name,
                _RR_FIXED.pack(dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)),
                rdata,
            )
        )

    def _collect_ops(self, query: dns.message.Message) -> list[_Op]:
        zone = self._zone
        assert zone is not None
        if not isinstance(query, dns.update.UpdateMessage):
            raise _UpdateRefusal(dns.rcode.FORMERR, "not an UPDATE message")
        if len(query.zone) != 1 or query.zone[0].rdtype != dns.rdatatype.SOA:
            raise _UpdateRefusal(dns.rcode.FORMERR, "zone section must hold one SOA RR")
        zrr = query.zone[0]
        if zrr.name != zone or zrr.rdclass != dns.rdataclass.IN:
            raise _UpdateRefusal(dns.rcode.NOTAUTH, f"zone {zrr.name} is not served here")
        ops: list[_Op] = []
        for rrset in query.update:
            if not rrset.name.is_subdomain(zone):
                raise _UpdateRefusal(dns.rcode.NOTZONE, f"{rrset.name} is outside {zone}")
            deleting = rrset.deleting
            if deleting not in (None, dns.rdataclass.NONE, dns.rdataclass.ANY):
                raise _UpdateRefusal(dns.rcode.FORMERR, f"update RR class {deleting} is invalid")
            owner = owner_text(rrset.name)
            if deleting == dns.rdataclass.ANY and rrset.rdtype in (
                dns.rdatatype.TXT,
                dns.rdatatype.ANY,
            ):
                ops.append(_Op(UpdateOp.DELETE, owner, None, name=rrset.name))
                continue
            if rrset.rdtype != dns.rdatatype.TXT:
                continue  # non-TXT RRs are skipped, as the reference does
            for rdata in rrset:
                try:
                    value = b"".join(rdata.strings).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _UpdateRefusal(
                        dns.rcode.FORMERR, f"TXT value at {owner} is not UTF-8"
                    ) from exc
                if deleting is None:
                    ops.append(_Op(UpdateOp.ADD, owner, value, rrset.ttl, rrset.name))
                else:
                    ops.append(_Op(UpdateOp.DELETE, owner, value, name=rrset.name))
        return ops

    def _check_caps(self, ops: Iterable[_Op]) -> None:
        cfg = self.config
        for op in ops:
            if op.kind is not UpdateOp.ADD or op.value is None:
                continue
            size = len(op.value.encode("utf-8"))
            if size > cfg.max_value_bytes:
                raise _UpdateRefusal(
                    dns.rcode.REFUSED,
                    f"value at {op.owner} is {size} bytes (max {cfg.max_value_bytes})",
                )
            if not 1 <= op.ttl <= cfg.max_ttl:
                raise _UpdateRefusal(
                    dns.rcode.REFUSED, f"TTL {op.ttl} at {op.owner} is outside 1..{cfg.max_ttl}"
                )

    async def _check_cardinality(self, ops: list[_Op], now: float) -> None:
        """Refuse when the update would grow an owner past ``max_values_per_name``."""
        cap = self.config.max_values_per_name
        owners = {op.owner for op in ops if op.kind is UpdateOp.ADD}
        for owner in owners:
            values = {row.value for row in await self._store.get(owner, now)}
            before = len(values)
            for op in ops:
                if op.owner != owner:
                    continue
                if op.kind is UpdateOp.ADD:
                    values.add(op.value or "")
                elif op.value is None:
                    values.clear()
                else:
                    values.discard(op.value)
            if len(values) > cap and len(values) > before:
                raise _UpdateRefusal(
                    dns.rcode.REFUSED, f"{owner} would hold {len(values)} values (max {cap})"
                )

    async def _apply_update(self, query: dns.message.Message, now: float) -> None:
        ops = self._collect_ops(query)
        meta: TsigKey | None = None
        if query.had_tsig:
            found = self._keyring.get(query.keyname) if query.keyname is not None else None
            if found is None:  # the key vanished between parse and here
                raise _UpdateRefusal(dns.rcode.NOTAUTH, "TSIG key is no longer active")
            meta = found[1]
        await self._apply_ops(ops, meta, now)

    async def _apply_ops(self, ops: list[_Op], meta: TsigKey | None, now: float) -> None:
        """Authorize (scope or claim rules), check caps, then write: raises :class:`_UpdateRefusal`."""
        cfg = self.config
        zone = self._zone
        assert zone is not None
        claim_keys: list[str] = []
        if meta is not None:
            scopes = meta.allowed_suffixes
            for op in ops:
                decision = authorize(scopes, op.kind, op.owner if op.name is None else op.name)
                if isinstance(decision, Refused):
                    raise _UpdateRefusal(decision.rcode, decision.reason)
        else:
            if not (cfg.claim_provider or cfg.receiver_claim_notifications):
                raise _UpdateRefusal(dns.rcode.REFUSED, "un-TSIG'd UPDATE is disabled")
            if not ops:
                raise _UpdateRefusal(dns.rcode.REFUSED, "empty un-TSIG'd UPDATE")
            clamped: list[_Op] = []
            for op in ops:
                hash12 = untsigd_claim_hash12(op.owner, zone)
                if op.kind is not UpdateOp.ADD or hash12 is None or op.value is None:
                    raise _UpdateRefusal(
                        dns.rcode.REFUSED, f"un-TSIG'd {op.kind.value} at {op.owner} is not a claim"
                    )
                try:
                    claim = verify_claim(op.value, now=int(now))
                except DmpError as exc:
                    raise _UpdateRefusal(
                        dns.rcode.REFUSED, f"claim at {op.owner}: {type(exc).__name__}: {exc}"
                    ) from exc
                if claim.exp - now > cfg.claim_max_ttl:
                    raise _UpdateRefusal(
                        dns.rcode.REFUSED, f"claim at {op.owner} expires beyond claim_max_ttl"
                    )
                if not cfg.claim_provider and hash12 not in self._registered_h12:
                    raise _UpdateRefusal(
                        dns.rcode.REFUSED, f"mailbox {hash12} is not registered here"
                    )
                claim_keys.append(hash12)
                ttl = min(op.ttl, cfg.claim_max_ttl, cfg.max_ttl)
                clamped.append(attrs.evolve(op, ttl=ttl))
            ops = clamped
        self._check_caps(ops)
        if len(ops) > 1:
            await self._check_cardinality(ops, now)
        for hash12 in claim_keys:
            if not self._claim_buckets.allow(hash12, now):
                raise _UpdateRefusal(dns.rcode.SERVFAIL, f"claim rate limit for mailbox {hash12}")
        for op in ops:
            try:
                if op.kind is UpdateOp.ADD:
                    assert op.value is not None
                    await self._store.put(
                        op.owner, op.value, op.ttl, now, max_values=cfg.max_values_per_name
                    )
                else:
                    await self._store.delete(op.owner, op.value)
            except StoreFull as exc:
                raise _UpdateRefusal(dns.rcode.REFUSED, f"{op.owner}: {exc}") from exc
            finally:
                if not self._store_notifies:
                    self.invalidate(op.owner)
