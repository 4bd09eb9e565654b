"""Bootstrap records (layer: domain; pure).

A bootstrap record is the MX analogue of DMP: published at
``_dmp.<user_domain>`` and signed by the zone operator of the user's domain,
it lists the clusters that serve that domain, each with a priority (lower is
preferred) and the operator key to pin for it.

Wire (wire.md §1.1, §5.6)::

    v=dmp1;t=bootstrap;<base64(body ‖ signature)>

    body  = "DMPBS01" ‖ u64 seq ‖ u64 exp ‖ signer_spk (32)
          ‖ u8 domain_len ‖ user_domain ‖ u8 entry_count (1..16) ‖ entry*
    entry = u16 priority ‖ u8 base_len (1..64) ‖ cluster_base_domain
          ‖ operator_spk (32)

Rules of this module:

* Entries are sorted by priority, **stably**, before serializing (required
  to reproduce the reference's bytes) and again after parsing, so
  ``entries[0]`` is always the best entry. :class:`BootstrapRecord` sorts on
  construction.
* A repeated ``(priority, casefold(base_domain))`` pair is rejected, on sign
  and on parse.
* ``user_domain`` and every ``cluster_base_domain`` are DNS names
  (wire.md §1.7) of at most 64 bytes; one trailing dot is stripped.
* Strict base64, the 1200-byte cap, the verification order (pinned key
  first, then parse, then the embedded key, expiry, five-year cap, domain
  binding) and :func:`pick_highest_seq` are as for cluster manifests
  (:mod:`dmp.domain.cluster`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

import attrs

from dmp.domain import keys
from dmp.domain._signed import sign_single, verify_pinned
from dmp.domain.cluster import (
    check_key,
    check_name_binding,
    check_u64,
    pick_highest_seq,
    strip_trailing_dot,
    validate_dns_name,
)
from dmp.domain.errors import MalformedRecord, UnsupportedVersion

__all__ = [
    "BOOTSTRAP_MAGIC",
    "BOOTSTRAP_PREFIX",
    "MAX_ENTRIES",
    "BootstrapEntry",
    "BootstrapRecord",
    "decode_bootstrap_body",
    "pick_highest_seq",
    "sign_bootstrap",
    "verify_bootstrap",
]

BOOTSTRAP_PREFIX: Final = "v=dmp1;t=bootstrap;"
BOOTSTRAP_MAGIC: Final = b"DMPBS01"
MAX_ENTRIES: Final = 16

_KEY_LEN: Final = keys.ED25519_KEY_LEN
# magic, seq, exp, signer_spk, domain_len
_HEAD: Final = struct.Struct(">7sQQ32sB")
# priority, base_len
_ENTRY_HEAD: Final = struct.Struct(">HB")


@attrs.frozen
class BootstrapEntry:
    """One cluster a user domain points at (wire.md §5.6).

    Attributes:
        priority: u16; lower is preferred (SMTP MX semantics).
        base_domain: the cluster's base DNS name (≤ 64 bytes); its manifest
            lives at ``cluster.<base_domain>``. One trailing dot is stripped.
        operator_spk: 32-byte Ed25519 key to pin for that cluster.
    """

    priority: int
    base_domain: str = attrs.field(converter=strip_trailing_dot)
    operator_spk: bytes


def _sorted_entries(entries: Iterable[BootstrapEntry]) -> tuple[BootstrapEntry, ...]:
    return tuple(sorted(entries, key=_priority))


def _priority(entry: BootstrapEntry) -> int:
    return entry.priority


@attrs.frozen
class BootstrapRecord:
    """A signed list of the clusters serving a user domain (wire.md §5.6).

    Attributes:
        user_domain: the user's address domain (≤ 64 bytes, one trailing
            dot stripped); the record lives at ``_dmp.<user_domain>``.
        seq: u64; the higher one wins among values that verify.
        exp: expiry, POSIX seconds (u64).
        signer_spk: 32-byte Ed25519 key of the zone operator (signs the record).
        entries: 1..16 entries, stably sorted by priority on construction.
    """

    user_domain: str = attrs.field(converter=strip_trailing_dot)
    seq: int
    exp: int
    signer_spk: bytes
    entries: tuple[BootstrapEntry, ...] = attrs.field(converter=_sorted_entries)

    def best_entry(self) -> BootstrapEntry:
        """The lowest-priority entry (the first one on a tie).

        Raises:
            MalformedRecord: the record has no entries.
        """
        if not self.entries:
            raise MalformedRecord("bootstrap record has no entries")
        return self.entries[0]

    def body(self) -> bytes:
        """The exact signed bytes (entries in priority order).

        Raises:
            MalformedRecord: a field is out of range (bad domain name, a key
                not 32 bytes, seq/exp not u64, not 1..16 entries, priority
                not u16, a repeated (priority, base domain) pair).
        """
        domain = validate_dns_name(self.user_domain).encode("ascii")
        check_u64(self.seq, "seq")
        check_u64(self.exp, "exp")
        check_key(self.signer_spk, "signer_spk")
        if not 1 <= len(self.entries) <= MAX_ENTRIES:
            raise MalformedRecord(
                f"a bootstrap record has 1..{MAX_ENTRIES} entries, got {len(self.entries)}"
            )
        parts = [
            _HEAD.pack(BOOTSTRAP_MAGIC, self.seq, self.exp, self.signer_spk, len(domain)),
            domain,
            bytes((len(self.entries),)),
        ]
        seen: set[tuple[int, str]] = set()
        for entry in self.entries:
            if not 0 <= entry.priority <= 0xFFFF:
                raise MalformedRecord(f"priority {entry.priority} does not fit a u16")
            base = validate_dns_name(entry.base_domain).encode("ascii")
            check_key(entry.operator_spk, "operator_spk")
            pair = (entry.priority, entry.base_domain.casefold())
            if pair in seen:
                raise MalformedRecord(f"duplicate bootstrap entry {pair!r}")
            seen.add(pair)
            parts += (_ENTRY_HEAD.pack(entry.priority, len(base)), base, entry.operator_spk)
        return b"".join(parts)


def decode_bootstrap_body(body: bytes) -> BootstrapRecord:
    """Parse a bootstrap record body (no signature check).

    Args:
        body: the signed bytes (the blob without its last 64 bytes).

    Returns:
        The record, entries stably sorted by priority, names without a
        trailing dot.

    Raises:
        UnsupportedVersion: the magic is not ``DMPBS01``.
        MalformedRecord: truncated, trailing bytes, not 1..16 entries, an
            invalid domain name or a repeated (priority, base domain) pair.
    """
    end = len(body)
    if body[:7] != BOOTSTRAP_MAGIC:
        raise UnsupportedVersion(f"bootstrap record magic {body[:7]!r} is not DMPBS01")
    if end < _HEAD.size:
        raise MalformedRecord("bootstrap record is truncated")
    _, seq, exp, signer_spk, domain_len = _HEAD.unpack_from(body)
    pos = _HEAD.size
    if domain_len == 0 or pos + domain_len + 1 > end:
        raise MalformedRecord("user domain length is out of range")
    domain = validate_dns_name(_ascii(body[pos : pos + domain_len]))
    pos += domain_len
    count = body[pos]
    pos += 1
    if not 1 <= count <= MAX_ENTRIES:
        raise MalformedRecord(f"a bootstrap record has 1..{MAX_ENTRIES} entries, got {count}")
    entries: list[BootstrapEntry] = []
    seen: set[tuple[int, str]] = set()
    for _ in range(count):
        if pos + _ENTRY_HEAD.size > end:
            raise MalformedRecord("bootstrap record is truncated")
        priority, base_len = _ENTRY_HEAD.unpack_from(body, pos)
        pos += _ENTRY_HEAD.size
        if base_len == 0 or pos + base_len + _KEY_LEN > end:
            raise MalformedRecord("cluster base domain length is out of range")
        base = validate_dns_name(_ascii(body[pos : pos + base_len]))
        pos += base_len
        pair = (priority, base.casefold())
        if pair in seen:
            raise MalformedRecord(f"duplicate bootstrap entry {pair!r}")
        seen.add(pair)
        entries.append(BootstrapEntry(priority, base, body[pos : pos + _KEY_LEN]))
        pos += _KEY_LEN
    if pos != end:
        raise MalformedRecord(f"{end - pos} trailing bytes after the last entry")
    return BootstrapRecord(domain, seq, exp, signer_spk, entries)


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("domain name is not ASCII") from exc


def sign_bootstrap(record: BootstrapRecord, signing_seed: bytes) -> str:
    """Sign ``record`` and return its TXT value (prefix included).

    Args:
        record: the record to publish.
        signing_seed: 32-byte Ed25519 seed of ``record.signer_spk``.

    Returns:
        ``v=dmp1;t=bootstrap;`` + base64(body ‖ signature) (wire.md §5.6).

    Raises:
        MalformedRecord: a field is out of range, or the seed does not belong
            to ``signer_spk``.
        RecordTooLong: the TXT value would exceed 1200 bytes.
    """
    return sign_single(
        BOOTSTRAP_PREFIX, record.body(), signing_seed, record.signer_spk, "signer_spk"
    )


def verify_bootstrap(
    wire: str,
    signer_spk: bytes,
    *,
    now: int,
    expected_user_domain: str | None = None,
) -> BootstrapRecord:
    """Verify a bootstrap TXT value against the pinned zone-operator key.

    Order (wire.md §5.5, §5.6): length cap, prefix, strict base64, signature
    against ``signer_spk``, parse, embedded key equals ``signer_spk``,
    ``exp < now``, five-year cap, then the domain binding.

    Args:
        wire: the TXT value, character-strings joined, prefix included.
        signer_spk: the pinned 32-byte Ed25519 key of the zone operator.
        now: current time, POSIX seconds.
        expected_user_domain: when given, the record's domain must equal it
            casefolded (one trailing dot ignored on either side).

    Returns:
        The verified record, entries sorted by priority.

    Raises:
        RecordTooLong: over 1200 bytes.
        MalformedRecord: wrong prefix, bad base64, bad structure.
        UnsupportedVersion: wrong magic.
        LowOrderKey: ``signer_spk`` is blocklisted or not 32 bytes.
        BadRecordSignature: the signature does not verify.
        RecordMismatch: the embedded signer key or the user domain is not the
            expected one.
        RecordExpired: ``exp < now``.
        ExpiryTooFar: ``exp - now`` over five years.
    """
    record = verify_pinned(
        wire,
        BOOTSTRAP_PREFIX,
        signer_spk,
        now=now,
        decode=decode_bootstrap_body,
        embedded_spk=_signer_spk,
        mismatch="the record names another signer key than the pinned one",
    )
    check_name_binding(record.user_domain, expected_user_domain, "record is for domain")
    return record


def _signer_spk(record: BootstrapRecord) -> bytes:
    return record.signer_spk
