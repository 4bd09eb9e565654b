"""Node heartbeats and claim-provider selection (layer: domain; pure).

A node advertises itself with a heartbeat signed by its operator Ed25519 key
(a raw seed, not derived from an X25519 key; wire.md §3.1), published as the
single value at ``_dnsmesh-heartbeat.<served zone>``. Peers re-publish the
verbatim wires they harvested at ``_dnsmesh-seen.<served zone>`` (the
seen-graph, wire.md §5.11); a reader re-verifies each one with the usual
±300 s skew, so only recently re-harvested wires survive.

Wire (wire.md §1.1, §1.3, §5.10)::

    v=dmp1;t=heartbeat;<base64(body ‖ signature)>     (whole TXT ≤ 1200 bytes)

    body = "DMPHB03" ‖ u16 endpoint_len (1..255) ‖ endpoint (ASCII URL)
         ‖ operator_spk (32) ‖ u8 version_len (0..32) ‖ version (ASCII)
         ‖ u16 capabilities ‖ u8 zone_len (0..64) ‖ claim_provider_zone (ASCII)
         ‖ u64 ts ‖ u64 exp (> ts)

The legacy ``DMPHB02`` layout, identical but without ``zone_len``/zone, is
still accepted on parse (its zone reads as ``""``). The payload is decoded
with *strict* base64; the decoded blob is at least 124 bytes. Capability
bit 0 is :data:`CAP_CLAIM_PROVIDER`; other bits are kept but mean nothing.
Time rules (wire.md §1.6): ``|ts − now| > skew`` is skew, ``exp ≤ now`` is
expired, ``exp − now > 30 days`` is too far.
"""

from __future__ import annotations

import ipaddress
import struct
import urllib.parse
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

import attrs

from dmp.domain import keys
from dmp.domain.codec import (
    THIRTY_DAYS_S,
    b64decode_strict,
    b64encode,
    check_expiry_cap,
    check_not_expired,
)
from dmp.domain.errors import ClockSkew, MalformedRecord, RecordTooLong, UnsupportedVersion

__all__ = [
    "CAP_CLAIM_PROVIDER",
    "DEFAULT_TS_SKEW_S",
    "HEARTBEAT_MAGIC_V2",
    "HEARTBEAT_MAGIC_V3",
    "HEARTBEAT_MAX_WIRE_LEN",
    "HEARTBEAT_PREFIX",
    "MAX_ENDPOINT_LEN",
    "MAX_VERSION_LEN",
    "MAX_ZONE_LEN",
    "Heartbeat",
    "select_providers",
    "sign_heartbeat",
    "validate_endpoint",
    "verify_heartbeat",
]

HEARTBEAT_PREFIX: Final = "v=dmp1;t=heartbeat;"
HEARTBEAT_MAGIC_V3: Final = b"DMPHB03"
HEARTBEAT_MAGIC_V2: Final = b"DMPHB02"
HEARTBEAT_MAX_WIRE_LEN: Final = 1200
MIN_BLOB_LEN: Final = 124
CAP_CLAIM_PROVIDER: Final = 1
"""Capability bit 0: the node accepts un-TSIG'd claim UPDATEs for any recipient."""
MAX_ENDPOINT_LEN: Final = 255
MAX_VERSION_LEN: Final = 32
MAX_ZONE_LEN: Final = 64
DEFAULT_TS_SKEW_S: Final = 300

_PREFIX_LEN: Final = len(HEARTBEAT_PREFIX)
_SIG_LEN: Final = keys.ED25519_SIG_LEN
_MAGICS: Final = {HEARTBEAT_MAGIC_V3: 3, HEARTBEAT_MAGIC_V2: 2}
_MAGIC_BY_VERSION: Final = {3: HEARTBEAT_MAGIC_V3, 2: HEARTBEAT_MAGIC_V2}
_U16: Final = struct.Struct(">H")
_TIMES: Final = struct.Struct(">QQ")
_U64_LIMIT: Final = 1 << 64
_SPACE_AND_CONTROL: Final = bytes(range(0x21)) + b"\x7f"
_LOCALHOST_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _has_space_or_control(text: bytes) -> bool:
    return len(text.translate(None, _SPACE_AND_CONTROL)) != len(text)


def _check_public_ip(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a host name, not an IP literal
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    for ip in candidates:
        if (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
        ):
            raise MalformedRecord(f"heartbeat endpoint host {host} is not a public address")


@lru_cache(maxsize=4096)
def _endpoint_host(url: str) -> str:
    """The lowercase host of a valid endpoint (cached: peers repeat)."""
    if not url.isascii():
        raise MalformedRecord("heartbeat endpoint must be ASCII")
    if _has_space_or_control(url.encode("ascii")):
        raise MalformedRecord(f"heartbeat endpoint {url!r} contains whitespace or a control char")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise MalformedRecord(f"heartbeat endpoint {url!r} does not parse: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise MalformedRecord(f"heartbeat endpoint scheme {parts.scheme!r} is not http(s)")
    if "@" in parts.netloc:
        raise MalformedRecord("heartbeat endpoint must not carry userinfo")
    if parts.path or parts.query or parts.fragment or "?" in url or "#" in url:
        raise MalformedRecord(f"heartbeat endpoint {url!r} has a path, query or fragment")
    host = parts.hostname
    if not host:
        raise MalformedRecord(f"heartbeat endpoint {url!r} has no host")
    if host.rstrip(".") in _LOCALHOST_NAMES:
        raise MalformedRecord(f"heartbeat endpoint host {host!r} is a localhost alias")
    _check_public_ip(host)
    return host


def validate_endpoint(url: str) -> str:
    """Check a heartbeat endpoint URL and return it unchanged.

    Rules (wire.md §5.10): ASCII without whitespace or control characters;
    scheme ``http`` or ``https``; no userinfo; a non-empty host; no path
    (not even ``/``), query or fragment; host not ``localhost``,
    ``localhost.localdomain`` or ``ip6-localhost``; an IP-literal host must
    be public (not loopback, private, link-local, multicast, reserved or
    unspecified). A port is allowed.

    Args:
        url: the endpoint, e.g. ``https://dmp.example.com:8443``.

    Returns:
        ``url``.

    Raises:
        MalformedRecord: any rule is broken.
    """
    _endpoint_host(url)
    return url


def _check_zone(zone: bytes) -> None:
    if len(zone) > MAX_ZONE_LEN:
        raise MalformedRecord(f"heartbeat zone of {len(zone)} bytes exceeds {MAX_ZONE_LEN}")
    if not zone.isascii() or _has_space_or_control(zone):
        raise MalformedRecord(f"heartbeat zone {zone!r} is not printable ASCII")


@attrs.frozen
class Heartbeat:
    """A node's signed self-description (wire.md §5.10).

    Attributes:
        endpoint: the node's HTTP(S) base URL (see :func:`validate_endpoint`).
        operator_spk: the operator's 32-byte Ed25519 public key (signs this record).
        version: software version text, 0..32 ASCII characters.
        capabilities: u16 bitfield; see :data:`CAP_CLAIM_PROVIDER`.
        claim_provider_zone: zone accepting claims, 0..64 printable ASCII
            characters; ``""`` means "the endpoint's host".
        ts: creation time, POSIX seconds (u64).
        exp: expiry, POSIX seconds (u64, > ts).
        magic_version: 3 (``DMPHB03``) or 2 (legacy ``DMPHB02``, no zone field).
    """

    endpoint: str
    operator_spk: bytes
    version: str
    capabilities: int
    claim_provider_zone: str
    ts: int
    exp: int
    magic_version: int = 3

    @property
    def is_claim_provider(self) -> bool:
        """Whether capability bit 0 (:data:`CAP_CLAIM_PROVIDER`) is set."""
        return bool(self.capabilities & CAP_CLAIM_PROVIDER)

    @property
    def provider_zone(self) -> str:
        """The advertised claim zone, or the endpoint's host when none is advertised.

        Raises:
            MalformedRecord: no zone is advertised and the endpoint is invalid.
        """
        return self.claim_provider_zone or _endpoint_host(self.endpoint)

    def body(self) -> bytes:
        """The exact signed bytes.

        Raises:
            MalformedRecord: a field is out of range (see the attributes;
                also a legacy record with a zone, or ``exp ≤ ts``).
            UnsupportedVersion: ``magic_version`` is not 2 or 3.
        """
        magic = _MAGIC_BY_VERSION.get(self.magic_version)
        if magic is None:
            raise UnsupportedVersion(f"heartbeat magic version {self.magic_version} is not 2 or 3")
        endpoint = validate_endpoint(self.endpoint).encode("ascii")
        if len(endpoint) > MAX_ENDPOINT_LEN:
            raise MalformedRecord(f"heartbeat endpoint exceeds {MAX_ENDPOINT_LEN} bytes")
        if len(self.operator_spk) != 32:
            raise MalformedRecord("heartbeat operator_spk must be 32 bytes")
        if not self.version.isascii() or len(self.version) > MAX_VERSION_LEN:
            raise MalformedRecord(f"heartbeat version must be 0..{MAX_VERSION_LEN} ASCII chars")
        if not 0 <= self.capabilities <= 0xFFFF:
            raise MalformedRecord(f"heartbeat capabilities {self.capabilities} do not fit a u16")
        if not self.claim_provider_zone.isascii():
            raise MalformedRecord("heartbeat zone must be ASCII")
        zone = self.claim_provider_zone.encode("ascii")
        _check_zone(zone)
        if self.magic_version == 2 and zone:
            raise MalformedRecord("a DMPHB02 heartbeat cannot carry a claim_provider_zone")
        if not (0 <= self.ts < _U64_LIMIT and 0 <= self.exp < _U64_LIMIT):
            raise MalformedRecord("heartbeat ts and exp must fit a u64")
        if self.exp <= self.ts:
            raise MalformedRecord(f"heartbeat exp {self.exp} is not after ts {self.ts}")
        version = self.version.encode("ascii")
        out = magic + _U16.pack(len(endpoint)) + endpoint + self.operator_spk
        out += bytes((len(version),)) + version + _U16.pack(self.capabilities)
        if self.magic_version == 3:
            out += bytes((len(zone),)) + zone
        return out + _TIMES.pack(self.ts, self.exp)


def sign_heartbeat(record: Heartbeat, signing_seed: bytes) -> str:
    """Sign ``record`` with the operator key and return its TXT value.

    Args:
        record: the heartbeat to publish.
        signing_seed: the operator's 32-byte Ed25519 seed (used directly),
            whose public key is ``record.operator_spk``.

    Returns:
        ``v=dmp1;t=heartbeat;`` + base64(body ‖ signature) (wire.md §5.10).

    Raises:
        MalformedRecord: a field is out of range, or ``signing_seed`` does
            not belong to ``record.operator_spk``.
        UnsupportedVersion: ``magic_version`` is not 2 or 3.
        RecordTooLong: the wire would exceed 1200 bytes.
    """
    body = record.body()
    keys.check_signing_seed(signing_seed, record.operator_spk, "operator_spk")
    wire = HEARTBEAT_PREFIX + b64encode(body + keys.sign(signing_seed, body))
    if len(wire) > HEARTBEAT_MAX_WIRE_LEN:
        raise RecordTooLong(f"heartbeat wire of {len(wire)} bytes exceeds 1200")
    return wire


def _truncated() -> MalformedRecord:
    return MalformedRecord("heartbeat record is truncated")


def verify_heartbeat(wire: str, *, now: int, ts_skew_s: int = DEFAULT_TS_SKEW_S) -> Heartbeat:
    """Parse a heartbeat TXT value, check its signature and time rules.

    Also used for every value of a seen-graph RRset (wire.md §5.11).

    Args:
        wire: the joined TXT value, prefix included.
        now: current time, POSIX seconds.
        ts_skew_s: how far ``ts`` may be from ``now`` either way, seconds.

    Returns:
        The verified heartbeat (``magic_version`` 2 for a legacy record).

    Raises:
        RecordTooLong: the wire is over 1200 UTF-8 bytes (wire.md §1.3).
        MalformedRecord: wrong prefix, non-alphabet base64, a blob under
            124 bytes, truncated or trailing bytes, a field out of range, a
            non-ASCII or badly formed text field, an endpoint that breaks
            :func:`validate_endpoint`, ``exp ≤ ts``.
        UnsupportedVersion: the magic is not ``DMPHB03`` or ``DMPHB02``.
        LowOrderKey: the operator key is on the blocklist (wire.md §1.5).
        BadRecordSignature: the signature does not verify.
        ClockSkew: ``|ts − now| > ts_skew_s``.
        RecordExpired: ``exp ≤ now``.
        ExpiryTooFar: ``exp − now > 30 days``.
    """
    wire_len = len(wire) if wire.isascii() else len(wire.encode("utf-8"))
    if wire_len > HEARTBEAT_MAX_WIRE_LEN:
        raise RecordTooLong(f"heartbeat wire of {wire_len} bytes exceeds 1200")
    if not wire.startswith(HEARTBEAT_PREFIX):
        raise MalformedRecord(f"heartbeat record does not start with {HEARTBEAT_PREFIX!r}")
    blob = b64decode_strict(wire[_PREFIX_LEN:])
    if len(blob) < MIN_BLOB_LEN:
        raise MalformedRecord(f"heartbeat record of {len(blob)} bytes is under {MIN_BLOB_LEN}")
    magic_version = _MAGICS.get(blob[:7])
    if magic_version is None:
        raise UnsupportedVersion(f"heartbeat magic {blob[:7]!r} is not DMPHB03 or DMPHB02")
    end = len(blob) - _SIG_LEN
    (endpoint_len,) = _U16.unpack_from(blob, 7)
    if not 1 <= endpoint_len <= MAX_ENDPOINT_LEN:
        raise MalformedRecord(f"heartbeat endpoint length {endpoint_len} is outside 1..255")
    pos = 9 + endpoint_len
    if pos + 33 > end:
        raise _truncated()
    raw_endpoint = blob[9:pos]
    operator_spk = blob[pos : pos + 32]
    version_len = blob[pos + 32]
    if version_len > MAX_VERSION_LEN:
        raise MalformedRecord(f"heartbeat version length {version_len} exceeds 32")
    pos += 33
    version_end = pos + version_len
    if version_end + 2 > end:
        raise _truncated()
    raw_version = blob[pos:version_end]
    (capabilities,) = _U16.unpack_from(blob, version_end)
    pos = version_end + 2
    if magic_version == 3:
        if pos >= end:
            raise _truncated()
        zone_len = blob[pos]
        if zone_len > MAX_ZONE_LEN:
            raise MalformedRecord(f"heartbeat zone length {zone_len} exceeds 64")
        raw_zone = blob[pos + 1 : pos + 1 + zone_len]
        pos += 1 + zone_len
        _check_zone(raw_zone)
    else:
        raw_zone = b""
    if pos + 16 != end:
        raise MalformedRecord(
            f"heartbeat body is {end} bytes, fields end at {pos + 16}"
            if pos + 16 < end
            else "heartbeat record is truncated"
        )
    ts, exp = _TIMES.unpack_from(blob, pos)
    if exp <= ts:
        raise MalformedRecord(f"heartbeat exp {exp} is not after ts {ts}")
    try:
        endpoint = raw_endpoint.decode("ascii")
        version = raw_version.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("heartbeat endpoint and version must be ASCII") from exc
    _endpoint_host(endpoint)
    keys.verify(operator_spk, blob[:end], blob[end:])
    if abs(ts - now) > ts_skew_s:
        raise ClockSkew(f"heartbeat ts {ts} is more than {ts_skew_s} s from now {now}")
    check_not_expired(exp, now, inclusive=True)
    check_expiry_cap(exp, now, THIRTY_DAYS_S)
    return Heartbeat(
        endpoint,
        operator_spk,
        version,
        capabilities,
        raw_zone.decode("ascii"),
        ts,
        exp,
        magic_version,
    )


def select_providers(heartbeats: Iterable[Heartbeat], *, limit: int = 3) -> list[Heartbeat]:
    """Pick the claim providers to send claims to (wire.md §5.10).

    Keeps heartbeats with the :data:`CAP_CLAIM_PROVIDER` bit, keeps the one
    with the newest ``ts`` per operator key (the first seen on a tie), and
    returns the ``limit`` newest, newest first (ties keep the order in which
    each operator first appeared). Each provider's zone is
    :attr:`Heartbeat.provider_zone`. The heartbeats are assumed verified;
    ones whose zone cannot be worked out are skipped.

    Args:
        heartbeats: verified heartbeats, e.g. from harvested seen-graphs.
        limit: how many providers to return at most.

    Returns:
        Up to ``limit`` heartbeats with distinct operator keys.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    newest: dict[bytes, Heartbeat] = {}
    for heartbeat in heartbeats:
        if not heartbeat.is_claim_provider:
            continue
        try:
            if not heartbeat.provider_zone:
                continue
        except MalformedRecord:
            continue
        current = newest.get(heartbeat.operator_spk)
        if current is None or heartbeat.ts > current.ts:
            newest[heartbeat.operator_spk] = heartbeat
    ranked = sorted(newest.values(), key=lambda heartbeat: -heartbeat.ts)
    return ranked[:limit]
