"""Cluster manifests (layer: domain; pure).

A cluster manifest lists the nodes of one cluster: an id, an HTTP endpoint
(writes) and an optional DNS endpoint (reads) per node. The cluster operator
signs it; clients pin the operator's Ed25519 key out of band, fetch
``cluster.<cluster_name>`` and keep the highest-``seq`` value that verifies.

Wire (wire.md §1.1, §5.5)::

    v=dmp1;t=cluster;<base64(body ‖ signature)>        (no ``d=``)

    body = "DMPCL01" ‖ u64 seq ‖ u64 exp ‖ operator_spk (32)
         ‖ u8 name_len ‖ cluster_name ‖ u8 node_count (0..32) ‖ node*
    node = u8 id_len (1..16) ‖ ascii node_id
         ‖ u16 http_len (1..128) ‖ utf8 http_endpoint
         ‖ u16 dns_len (0..64) ‖ utf8 dns_endpoint       (0 = no DNS endpoint)

Rules of this module:

* The payload is decoded with *strict* base64 and the whole TXT value may
  not exceed 1200 UTF-8 bytes, on sign and on verify (wire.md §1.1, §1.3).
* Verification order is fixed (wire.md §5.5): the signature is checked
  against the caller's **pinned** key before the body is parsed, then the
  embedded ``operator_spk`` must equal the pinned key, then expiry
  (``exp < now``; ``exp - now`` at most five years), then the optional
  cluster-name binding (compared casefolded, one trailing dot ignored).
  Bootstrap records share this order through
  :func:`dmp.domain._signed.verify_pinned`.
* The cluster name is a DNS name (wire.md §1.7) of at most 64 bytes; one
  trailing dot is accepted and stripped (so a serialized name may be 65
  bytes when its last byte is ``.``). Node ids are unique. A manifest with
  zero nodes parses (interop) but :func:`sign_cluster` refuses it.

The DNS-name validator, the name binding, :func:`pick_highest_seq` and the
framing helpers re-exported from :mod:`dmp.domain._signed` (the wire length
check, :func:`signed_blob`) are shared with :mod:`dmp.domain.bootstrap` and
:mod:`dmp.domain.rotation`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from typing import Final, Protocol, TypeVar

import attrs

from dmp.domain import keys
from dmp.domain._signed import (
    MAX_WIRE_LEN,
    check_wire_len,
    sign_single,
    signed_blob,
    verify_pinned,
)
from dmp.domain.errors import (
    DmpError,
    MalformedRecord,
    RecordMismatch,
    UnsupportedVersion,
)

__all__ = [
    "CLUSTER_MAGIC",
    "CLUSTER_PREFIX",
    "MAX_DNS_ENDPOINT_LEN",
    "MAX_DNS_NAME_LEN",
    "MAX_HTTP_ENDPOINT_LEN",
    "MAX_NODES",
    "MAX_NODE_ID_LEN",
    "MAX_WIRE_LEN",
    "ClusterManifest",
    "ClusterNode",
    "check_key",
    "check_name_binding",
    "check_u64",
    "check_wire_len",
    "decode_cluster_body",
    "dns_names_equal",
    "pick_highest_seq",
    "sign_cluster",
    "signed_blob",
    "strip_trailing_dot",
    "validate_dns_name",
    "verify_cluster",
]

CLUSTER_PREFIX: Final = "v=dmp1;t=cluster;"
CLUSTER_MAGIC: Final = b"DMPCL01"
MAX_DNS_NAME_LEN: Final = 64
"""Largest DNS-name field, in bytes, without its optional trailing dot."""
MAX_NODES: Final = 32
MAX_NODE_ID_LEN: Final = 16
MAX_HTTP_ENDPOINT_LEN: Final = 128
MAX_DNS_ENDPOINT_LEN: Final = 64

_KEY_LEN: Final = keys.ED25519_KEY_LEN
_U64_MAX: Final = (1 << 64) - 1
_PREFIX_LEN: Final = len(CLUSTER_PREFIX)
# magic, seq, exp, operator_spk, name_len
_HEAD: Final = struct.Struct(">7sQQ32sB")
_U16: Final = struct.Struct(">H")

_DNS_NAME_RE: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


# -- shared helpers ----------------------------------------------------------


def strip_trailing_dot(name: str) -> str:
    """``name`` without one trailing dot (a name ending in ``..`` is kept, so it stays invalid)."""
    return name[:-1] if name.endswith(".") and not name.endswith("..") else name


def validate_dns_name(name: str, *, max_len: int = MAX_DNS_NAME_LEN) -> str:
    """Check a DNS-name field and return it without its trailing dot.

    Rules (wire.md §1.7): ASCII only; labels of 1..63 characters from
    ``[A-Za-z0-9-]`` that neither start nor end with ``-``; no empty labels;
    one trailing dot allowed (and stripped). The name without the dot may
    have at most ``max_len`` bytes. Case is kept.

    Args:
        name: the name as given or as decoded from the wire.
        max_len: byte cap of the field (64 for every DMP name field).

    Returns:
        ``name`` with one trailing dot removed.

    Raises:
        MalformedRecord: the name breaks one of the rules.
    """
    if _DNS_NAME_RE.fullmatch(name) is None:
        raise MalformedRecord(f"{name!r} is not a valid DNS name")
    stripped = name[:-1] if name.endswith(".") else name
    if len(stripped) > max_len:
        raise MalformedRecord(f"DNS name {name!r} is longer than {max_len} bytes")
    return stripped


def dns_names_equal(a: str, b: str) -> bool:
    """Compare two DNS names casefolded, ignoring one trailing dot on each (wire.md §1.7)."""
    return a == b or strip_trailing_dot(a).casefold() == strip_trailing_dot(b).casefold()


def check_name_binding(name: str, expected: str | None, what: str) -> None:
    """Check a record's name against the one the caller expects (when it expects one).

    Args:
        name: the name the verified record carries.
        expected: the name the caller asked for, or ``None`` for no binding.
        what: the start of the error message, e.g. ``"manifest is for cluster"``.

    Raises:
        RecordMismatch: ``name`` is not ``expected`` (compared with
            :func:`dns_names_equal`).
    """
    if expected is not None and not dns_names_equal(name, expected):
        raise RecordMismatch(f"{what} {name!r}, not {expected!r}")


def check_u64(value: int, field: str) -> None:
    """Check that ``value`` fits a u64 (``field`` names it in the message).

    Raises:
        MalformedRecord: ``value`` is negative or ≥ 2**64.
    """
    if not 0 <= value <= _U64_MAX:
        raise MalformedRecord(f"{field} {value} does not fit a u64")


def check_key(value: bytes, field: str) -> None:
    """Check that ``value`` is a 32-byte key (``field`` names it in the message).

    Raises:
        MalformedRecord: ``value`` is not 32 bytes.
    """
    if len(value) != _KEY_LEN:
        raise MalformedRecord(f"{field} must be {_KEY_LEN} bytes, got {len(value)}")


class _HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


R = TypeVar("R", bound=_HasSeq)


def pick_highest_seq(wires: Iterable[str], verify: Callable[[str], R]) -> R:
    """Verify every value of an RRset and keep the one with the highest ``seq``.

    Clients use this for cluster manifests and bootstrap records
    (wire.md §5.5, §5.6): values that fail to verify are skipped; on equal
    ``seq`` the first value wins.

    Args:
        wires: the TXT values of one RRset (each already joined).
        verify: the verifier to apply, e.g.
            ``lambda w: verify_cluster(w, pinned, now=now, expected_cluster_name=name)``.

    Returns:
        The verified record with the highest ``seq``.

    Raises:
        DmpError: no value verifies; this is the error of the first value
            that failed (``RecordMismatch`` when the RRset is empty).
    """
    best: R | None = None
    first_error: DmpError | None = None
    for wire in wires:
        try:
            record = verify(wire)
        except DmpError as exc:
            if first_error is None:
                first_error = exc
            continue
        if best is None or record.seq > best.seq:
            best = record
    if best is not None:
        return best
    if first_error is not None:
        raise first_error
    raise RecordMismatch("the RRset holds no record to choose from")


# -- values ------------------------------------------------------------------


def _empty_to_none(value: str | None) -> str | None:
    return value or None


@attrs.frozen
class ClusterNode:
    """One node of a cluster (wire.md §5.5).

    Attributes:
        node_id: 1..16 ASCII characters, unique within the manifest.
        http_endpoint: 1..128 UTF-8 bytes; where clients write.
        dns_endpoint: 1..64 UTF-8 bytes, or ``None`` (serialized as length
            0; an empty string is normalized to ``None``).
    """

    node_id: str
    http_endpoint: str
    dns_endpoint: str | None = attrs.field(default=None, converter=_empty_to_none)


def _to_nodes(nodes: Iterable[ClusterNode]) -> tuple[ClusterNode, ...]:
    return tuple(nodes)


@attrs.frozen
class ClusterManifest:
    """A signed list of a cluster's nodes (wire.md §5.5).

    Attributes:
        cluster_name: DNS name of the cluster (≤ 64 bytes); one trailing dot
            is stripped on construction, case is kept.
        seq: u64; the higher one wins among values that verify.
        exp: expiry, POSIX seconds (u64).
        operator_spk: 32-byte Ed25519 key of the operator (signs the manifest).
        nodes: the nodes, in wire order (0..32; signing needs at least one).
    """

    cluster_name: str = attrs.field(converter=strip_trailing_dot)
    seq: int
    exp: int
    operator_spk: bytes
    nodes: tuple[ClusterNode, ...] = attrs.field(converter=_to_nodes)

    def body(self) -> bytes:
        """The exact signed bytes.

        Raises:
            MalformedRecord: a field is out of range (bad cluster name, a key
                not 32 bytes, seq/exp not u64, over 32 nodes, a node id not
                1..16 ASCII or repeated, an endpoint too long or empty).
        """
        name = validate_dns_name(self.cluster_name).encode("ascii")
        check_u64(self.seq, "seq")
        check_u64(self.exp, "exp")
        check_key(self.operator_spk, "operator_spk")
        if len(self.nodes) > MAX_NODES:
            raise MalformedRecord(f"a cluster has at most {MAX_NODES} nodes, got {len(self.nodes)}")
        parts = [
            _HEAD.pack(CLUSTER_MAGIC, self.seq, self.exp, self.operator_spk, len(name)),
            name,
            bytes((len(self.nodes),)),
        ]
        seen: set[str] = set()
        for node in self.nodes:
            if not node.node_id.isascii():
                raise MalformedRecord(f"node id {node.node_id!r} is not ASCII")
            node_id = node.node_id.encode("ascii")
            if not 1 <= len(node_id) <= MAX_NODE_ID_LEN:
                raise MalformedRecord(f"node id {node.node_id!r} must be 1..16 bytes")
            if node.node_id in seen:
                raise MalformedRecord(f"duplicate node id {node.node_id!r}")
            seen.add(node.node_id)
            http = node.http_endpoint.encode("utf-8")
            if not 1 <= len(http) <= MAX_HTTP_ENDPOINT_LEN:
                raise MalformedRecord(
                    f"http endpoint of node {node.node_id!r} must be 1..128 bytes"
                )
            dns = b"" if node.dns_endpoint is None else node.dns_endpoint.encode("utf-8")
            if len(dns) > MAX_DNS_ENDPOINT_LEN:
                raise MalformedRecord(f"dns endpoint of node {node.node_id!r} is over 64 bytes")
            parts += (
                bytes((len(node_id),)),
                node_id,
                _U16.pack(len(http)),
                http,
                _U16.pack(len(dns)),
                dns,
            )
        return b"".join(parts)


# -- codec -------------------------------------------------------------------


def decode_cluster_body(body: bytes) -> ClusterManifest:
    """Parse a cluster manifest body (no signature check).

    Args:
        body: the signed bytes (the blob without its last 64 bytes).

    Returns:
        The manifest; ``cluster_name`` without a trailing dot.

    Raises:
        UnsupportedVersion: the magic is not ``DMPCL01``.
        MalformedRecord: truncated, trailing bytes, a field out of range,
            an invalid cluster name, over 32 nodes or a repeated node id.
    """
    end = len(body)
    if body[:7] != CLUSTER_MAGIC:
        raise UnsupportedVersion(f"cluster manifest magic {body[:7]!r} is not DMPCL01")
    if end < _HEAD.size:
        raise MalformedRecord("cluster manifest is truncated")
    _, seq, exp, operator_spk, name_len = _HEAD.unpack_from(body)
    pos = _HEAD.size
    if name_len == 0 or pos + name_len + 1 > end:
        raise MalformedRecord("cluster name length is out of range")
    try:
        name = body[pos : pos + name_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("cluster name is not ASCII") from exc
    name = validate_dns_name(name)
    pos += name_len
    count = body[pos]
    pos += 1
    if count > MAX_NODES:
        raise MalformedRecord(f"a cluster has at most {MAX_NODES} nodes, got {count}")
    nodes: list[ClusterNode] = []
    seen: set[str] = set()
    try:
        for _ in range(count):
            id_len = body[pos]
            pos += 1
            if not 1 <= id_len <= MAX_NODE_ID_LEN or pos + id_len > end:
                raise MalformedRecord("node id length is out of range")
            node_id = body[pos : pos + id_len].decode("ascii")
            pos += id_len
            if node_id in seen:
                raise MalformedRecord(f"duplicate node id {node_id!r}")
            seen.add(node_id)
            (http_len,) = _U16.unpack_from(body, pos)
            pos += 2
            if not 1 <= http_len <= MAX_HTTP_ENDPOINT_LEN or pos + http_len > end:
                raise MalformedRecord("http endpoint length is out of range")
            http = body[pos : pos + http_len].decode("utf-8")
            pos += http_len
            (dns_len,) = _U16.unpack_from(body, pos)
            pos += 2
            if dns_len > MAX_DNS_ENDPOINT_LEN or pos + dns_len > end:
                raise MalformedRecord("dns endpoint length is out of range")
            dns = body[pos : pos + dns_len].decode("utf-8") if dns_len else None
            pos += dns_len
            nodes.append(ClusterNode(node_id, http, dns))
    except (IndexError, struct.error) as exc:
        raise MalformedRecord("cluster manifest is truncated") from exc
    except UnicodeDecodeError as exc:
        raise MalformedRecord("cluster node field is not valid text") from exc
    if pos != end:
        raise MalformedRecord(f"{end - pos} trailing bytes after the last node")
    return ClusterManifest(name, seq, exp, operator_spk, tuple(nodes))


def sign_cluster(manifest: ClusterManifest, signing_seed: bytes) -> str:
    """Sign ``manifest`` and return its TXT value (prefix included).

    Args:
        manifest: the manifest to publish (at least one node).
        signing_seed: 32-byte Ed25519 seed of ``manifest.operator_spk``.

    Returns:
        ``v=dmp1;t=cluster;`` + base64(body ‖ signature) (wire.md §5.5).

    Raises:
        MalformedRecord: a field is out of range, there are no nodes, or the
            seed does not belong to ``operator_spk``.
        RecordTooLong: the TXT value would exceed 1200 bytes.
    """
    body = manifest.body()
    if not manifest.nodes:
        raise MalformedRecord("a cluster manifest needs at least one node")
    return sign_single(CLUSTER_PREFIX, body, signing_seed, manifest.operator_spk, "operator_spk")


def verify_cluster(
    wire: str,
    operator_spk: bytes,
    *,
    now: int,
    expected_cluster_name: str | None = None,
) -> ClusterManifest:
    """Verify a cluster manifest TXT value against the pinned operator key.

    Order (wire.md §5.5): length cap, prefix, strict base64, signature
    against ``operator_spk``, parse, embedded key equals ``operator_spk``,
    ``exp < now``, five-year cap, then the name binding.

    Args:
        wire: the TXT value, character-strings joined, prefix included.
        operator_spk: the pinned 32-byte Ed25519 operator key.
        now: current time, POSIX seconds.
        expected_cluster_name: when given, the manifest's name must equal
            it casefolded (one trailing dot ignored on either side).

    Returns:
        The verified manifest.

    Raises:
        RecordTooLong: over 1200 bytes.
        MalformedRecord: wrong prefix, bad base64, bad structure.
        UnsupportedVersion: wrong magic.
        LowOrderKey: ``operator_spk`` is blocklisted or not 32 bytes.
        BadRecordSignature: the signature does not verify.
        RecordMismatch: the embedded operator key or the cluster name is not
            the expected one.
        RecordExpired: ``exp < now``.
        ExpiryTooFar: ``exp - now`` over five years.
    """
    manifest = verify_pinned(
        wire,
        CLUSTER_PREFIX,
        operator_spk,
        now=now,
        decode=decode_cluster_body,
        embedded_spk=_operator_spk,
        mismatch="the manifest names another operator key than the pinned one",
    )
    check_name_binding(manifest.cluster_name, expected_cluster_name, "manifest is for cluster")
    return manifest


def _operator_spk(manifest: ClusterManifest) -> bytes:
    return manifest.operator_spk
