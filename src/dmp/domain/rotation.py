"""Key rotation and revocation records, and the client's chain walk (layer: domain; pure).

A *rotation* is a succession statement "key ``old_spk`` hands over to
``new_spk``", co-signed by both keys. A *revocation* is a statement
"``revoked_spk`` must no longer be trusted", self-signed by the revoked key.
Both live in the same RRset, at ``rotate.`` + the owner of the rotated
record (wire.md §2): ``rotate.dmp.<host>`` and
``rotate.id-<hash16(user)>.<host>`` for a user, ``rotate.cluster.<base>``
for a cluster operator, ``rotate._dmp.<user_domain>`` for a bootstrap signer.

Wire (wire.md §1.1, §5.7, §5.8)::

    v=dmp1;t=rotation;<base64(body ‖ sig_old ‖ sig_new)>
    body = "DMPROT1" ‖ u8 subject_type ‖ u8 subject_len ‖ utf8 subject
         ‖ old_spk (32) ‖ new_spk (32) ‖ u64 seq ‖ u64 ts ‖ u64 exp

    v=dmp1;t=revocation;<base64(body ‖ sig)>
    body = "DMPRV01" ‖ u8 subject_type ‖ u8 subject_len ‖ utf8 subject
         ‖ revoked_spk (32) ‖ u8 reason ‖ u64 ts

Rules of this module:

* ``subject_type`` is 1 (user ``user@host``, up to 255 bytes), 2 (cluster
  base name) or 3 (bootstrap user domain); types 2 and 3 are DNS names
  (wire.md §1.7) of at most 64 bytes. Subjects are compared casefolded,
  ignoring one trailing dot.
* A rotation needs ``old_spk != new_spk`` and both signatures (over the same
  body) to verify; it is rejected when ``exp < now`` or ``exp - now`` is over
  five years. Its ``ts`` is not checked (interop).
* A revocation is rejected when ``ts > now + 300``; it never expires unless
  the caller passes ``max_age_s``. Reason codes are 1..4.
* Strict base64 and the 1200-byte cap apply to both (wire.md §1.3).
* :func:`walk_rotation_chain` follows rotations from a pinned key, at most
  ``max_hops`` (4) steps, and raises :class:`RotationChainError` on every
  abort rule of wire.md §5.7.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import Final

import attrs

from dmp.domain import keys
from dmp.domain._signed import check_wire_len, sign_single, signed_blob
from dmp.domain.cluster import (
    MAX_DNS_NAME_LEN,
    check_key,
    check_u64,
    strip_trailing_dot,
    validate_dns_name,
)
from dmp.domain.codec import (
    FIVE_YEARS_S,
    b64encode,
    check_expiry_cap,
    check_future_skew,
    check_not_expired,
)
from dmp.domain.errors import (
    DmpError,
    MalformedRecord,
    RecordExpired,
    RecordMismatch,
    RotationChainError,
    UnsupportedVersion,
)

__all__ = [
    "DEFAULT_MAX_HOPS",
    "MAX_USER_SUBJECT_LEN",
    "REVOCATION_MAGIC",
    "REVOCATION_PREFIX",
    "REVOCATION_TS_SKEW_S",
    "ROTATION_MAGIC",
    "ROTATION_PREFIX",
    "Revocation",
    "RevocationReason",
    "Rotation",
    "SubjectType",
    "decode_revocation_body",
    "decode_rotation_body",
    "partition_rotation_rrset",
    "sign_revocation",
    "sign_rotation",
    "subjects_equal",
    "validate_subject",
    "verify_revocation",
    "verify_rotation",
    "walk_rotation_chain",
]

ROTATION_PREFIX: Final = "v=dmp1;t=rotation;"
REVOCATION_PREFIX: Final = "v=dmp1;t=revocation;"
ROTATION_MAGIC: Final = b"DMPROT1"
REVOCATION_MAGIC: Final = b"DMPRV01"
MAX_USER_SUBJECT_LEN: Final = 255
REVOCATION_TS_SKEW_S: Final = 300
"""A revocation's ts may be at most this far in the future (wire.md §1.6)."""
DEFAULT_MAX_HOPS: Final = 4

_SIG_LEN: Final = keys.ED25519_SIG_LEN
_KEY_LEN: Final = keys.ED25519_KEY_LEN
# old_spk, new_spk, seq, ts, exp
_ROT_TAIL: Final = struct.Struct(">32s32sQQQ")
# revoked_spk, reason, ts
_REV_TAIL: Final = struct.Struct(">32sBQ")


class SubjectType(enum.IntEnum):
    """Whose key a rotation or revocation is about (wire.md §5.7)."""

    USER = 1
    """A user identity; subject ``user@host`` (≤ 255 bytes)."""
    CLUSTER = 2
    """A cluster operator; subject the cluster base DNS name (≤ 64 bytes)."""
    BOOTSTRAP = 3
    """A bootstrap (zone) signer; subject the user domain (≤ 64 bytes)."""


class RevocationReason(enum.IntEnum):
    """Why a key was revoked (wire.md §5.8)."""

    COMPROMISE = 1
    ROUTINE = 2
    LOST_KEY = 3
    OTHER = 4


_SUBJECT_TYPES: Final = {int(t): t for t in SubjectType}
_REASONS: Final = {int(r): r for r in RevocationReason}


def validate_subject(subject_type: SubjectType, subject: str) -> bytes:
    """Check a subject against the rules of its type and return its UTF-8 bytes.

    Args:
        subject_type: the subject's type.
        subject: ``user@host`` for users; a DNS name for clusters and
            bootstrap signers.

    Returns:
        ``subject`` encoded as UTF-8 (1..255 bytes for users, 1..64 for DNS
        names).

    Raises:
        MalformedRecord: the subject breaks a rule of its type.
    """
    raw = subject.encode("utf-8")
    if subject_type == SubjectType.USER:
        if not 1 <= len(raw) <= MAX_USER_SUBJECT_LEN:
            raise MalformedRecord(f"user subject must be 1..255 bytes, got {len(raw)}")
        user, at, host = subject.rpartition("@")
        if not at or not user or not host:
            raise MalformedRecord(f"user subject {subject!r} is not user@host")
        return raw
    if not 1 <= len(raw) <= MAX_DNS_NAME_LEN:
        raise MalformedRecord(f"DNS-name subject must be 1..64 bytes, got {len(raw)}")
    validate_dns_name(subject)
    return raw


def subjects_equal(a: str, b: str) -> bool:
    """Compare two subjects casefolded, ignoring one trailing dot on each."""
    return a == b or strip_trailing_dot(a).casefold() == strip_trailing_dot(b).casefold()


def _subject_type(value: int) -> SubjectType:
    try:
        return _SUBJECT_TYPES[value]
    except KeyError:
        raise MalformedRecord(f"unknown subject_type {value}") from None


def _reason(value: int) -> RevocationReason:
    try:
        return _REASONS[value]
    except KeyError:
        raise MalformedRecord(f"unknown revocation reason {value}") from None


def _decode_subject(body: bytes, magic: bytes, tail_len: int) -> tuple[SubjectType, str, int]:
    """Check magic and exact length, read subject_type and subject; return the tail offset."""
    if body[:7] != magic:
        raise UnsupportedVersion(f"record magic {body[:7]!r} is not {magic.decode()}")
    if len(body) < 9:
        raise MalformedRecord("record is truncated")
    subject_type = _subject_type(body[7])
    subject_len = body[8]
    pos = 9 + subject_len
    if subject_len == 0 or len(body) != pos + tail_len:
        raise MalformedRecord(
            f"record of {len(body)} bytes does not fit a subject of {subject_len} bytes"
        )
    try:
        subject = body[9:pos].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("subject is not valid UTF-8") from exc
    validate_subject(subject_type, subject)
    return subject_type, subject, pos


# -- rotation ----------------------------------------------------------------


@attrs.frozen
class Rotation:
    """A co-signed key succession ``old_spk → new_spk`` (wire.md §5.7).

    Attributes:
        subject_type: whose key rotates.
        subject: ``user@host`` or a DNS name (see :class:`SubjectType`).
        old_spk: 32-byte Ed25519 key rotated from (signs ``sig_old``).
        new_spk: 32-byte Ed25519 key rotated to (signs ``sig_new``).
        seq: u64, strictly increasing along a chain (ms epoch by convention).
        ts: issue time, POSIX seconds (u64; not checked on verify).
        exp: expiry, POSIX seconds (u64).
    """

    subject_type: SubjectType = attrs.field(converter=SubjectType)
    subject: str
    old_spk: bytes
    new_spk: bytes
    seq: int
    ts: int
    exp: int

    def body(self) -> bytes:
        """The exact bytes both keys sign.

        Raises:
            MalformedRecord: a field is out of range (bad subject, a key not
                32 bytes, seq/ts/exp not u64).
        """
        subject = validate_subject(self.subject_type, self.subject)
        check_key(self.old_spk, "old_spk")
        check_key(self.new_spk, "new_spk")
        check_u64(self.seq, "seq")
        check_u64(self.ts, "ts")
        check_u64(self.exp, "exp")
        return (
            ROTATION_MAGIC
            + bytes((self.subject_type, len(subject)))
            + subject
            + _ROT_TAIL.pack(self.old_spk, self.new_spk, self.seq, self.ts, self.exp)
        )


def decode_rotation_body(body: bytes) -> Rotation:
    """Parse a rotation body (no signature check).

    Args:
        body: the signed bytes (the blob without its last 128 bytes).

    Raises:
        UnsupportedVersion: the magic is not ``DMPROT1``.
        MalformedRecord: wrong length, unknown subject type, a subject that
            breaks the rules of its type.
    """
    subject_type, subject, pos = _decode_subject(body, ROTATION_MAGIC, _ROT_TAIL.size)
    old_spk, new_spk, seq, ts, exp = _ROT_TAIL.unpack_from(body, pos)
    return Rotation(subject_type, subject, old_spk, new_spk, seq, ts, exp)


def sign_rotation(rotation: Rotation, old_seed: bytes, new_seed: bytes) -> str:
    """Co-sign ``rotation`` with both keys and return its TXT value.

    Args:
        rotation: the succession to publish.
        old_seed: 32-byte Ed25519 seed of ``rotation.old_spk``.
        new_seed: 32-byte Ed25519 seed of ``rotation.new_spk``.

    Returns:
        ``v=dmp1;t=rotation;`` + base64(body ‖ sig_old ‖ sig_new) (wire.md §5.7).

    Raises:
        MalformedRecord: a field is out of range, ``old_spk == new_spk``, or
            a seed does not belong to its key.
        RecordTooLong: the TXT value would exceed 1200 bytes.
    """
    body = rotation.body()
    if rotation.old_spk == rotation.new_spk:
        raise MalformedRecord("a rotation needs old_spk != new_spk")
    keys.check_signing_seed(old_seed, rotation.old_spk, "old_spk")
    keys.check_signing_seed(new_seed, rotation.new_spk, "new_spk")
    blob = body + keys.sign(old_seed, body) + keys.sign(new_seed, body)
    wire = ROTATION_PREFIX + b64encode(blob)
    check_wire_len(wire)
    return wire


def verify_rotation(
    wire: str,
    expected_old_spk: bytes | None,
    expected_subject: str | None,
    *,
    now: int,
) -> Rotation:
    """Verify a rotation TXT value: structure, both signatures, expiry.

    Args:
        wire: the TXT value, character-strings joined, prefix included.
        expected_old_spk: when given, the rotation must start from this key.
        expected_subject: when given, the subject must equal it (casefolded,
            one trailing dot ignored).
        now: current time, POSIX seconds.

    Returns:
        The verified rotation.

    Raises:
        RecordTooLong: over 1200 bytes.
        MalformedRecord: wrong prefix, bad base64, bad structure or subject,
            ``old_spk == new_spk``.
        UnsupportedVersion: wrong magic.
        RecordMismatch: another old key or subject than expected.
        LowOrderKey: an embedded key is blocklisted.
        BadRecordSignature: ``sig_old`` or ``sig_new`` does not verify.
        RecordExpired: ``exp < now``.
        ExpiryTooFar: ``exp - now`` over five years.
    """
    blob = signed_blob(wire, ROTATION_PREFIX, 2 * _SIG_LEN)
    body = blob[: -2 * _SIG_LEN]
    rotation = decode_rotation_body(body)
    if rotation.old_spk == rotation.new_spk:
        raise MalformedRecord("rotation has old_spk == new_spk")
    if expected_old_spk is not None and rotation.old_spk != expected_old_spk:
        raise RecordMismatch("rotation starts from another key than expected")
    if expected_subject is not None and not subjects_equal(rotation.subject, expected_subject):
        raise RecordMismatch(f"rotation is for {rotation.subject!r}, not {expected_subject!r}")
    keys.verify(rotation.old_spk, body, blob[-2 * _SIG_LEN : -_SIG_LEN])
    keys.verify(rotation.new_spk, body, blob[-_SIG_LEN:])
    check_not_expired(rotation.exp, now)
    check_expiry_cap(rotation.exp, now, FIVE_YEARS_S)
    return rotation


# -- revocation --------------------------------------------------------------


@attrs.frozen
class Revocation:
    """A self-signed statement that ``revoked_spk`` is no longer trusted (wire.md §5.8).

    Attributes:
        subject_type: whose key is revoked.
        subject: ``user@host`` or a DNS name (see :class:`SubjectType`).
        revoked_spk: the 32-byte Ed25519 key revoked (signs the record).
        reason: why.
        ts: issue time, POSIX seconds (u64).
    """

    subject_type: SubjectType = attrs.field(converter=SubjectType)
    subject: str
    revoked_spk: bytes
    reason: RevocationReason = attrs.field(converter=RevocationReason)
    ts: int

    def body(self) -> bytes:
        """The exact signed bytes.

        Raises:
            MalformedRecord: a field is out of range (bad subject, key not
                32 bytes, ts not u64).
        """
        subject = validate_subject(self.subject_type, self.subject)
        check_key(self.revoked_spk, "revoked_spk")
        check_u64(self.ts, "ts")
        return (
            REVOCATION_MAGIC
            + bytes((self.subject_type, len(subject)))
            + subject
            + _REV_TAIL.pack(self.revoked_spk, self.reason, self.ts)
        )


def decode_revocation_body(body: bytes) -> Revocation:
    """Parse a revocation body (no signature check).

    Args:
        body: the signed bytes (the blob without its last 64 bytes).

    Raises:
        UnsupportedVersion: the magic is not ``DMPRV01``.
        MalformedRecord: wrong length, unknown subject type or reason, a
            subject that breaks the rules of its type.
    """
    subject_type, subject, pos = _decode_subject(body, REVOCATION_MAGIC, _REV_TAIL.size)
    revoked_spk, reason, ts = _REV_TAIL.unpack_from(body, pos)
    return Revocation(subject_type, subject, revoked_spk, _reason(reason), ts)


def sign_revocation(revocation: Revocation, signing_seed: bytes) -> str:
    """Self-sign ``revocation`` and return its TXT value.

    Args:
        revocation: the revocation to publish.
        signing_seed: 32-byte Ed25519 seed of ``revocation.revoked_spk``.

    Returns:
        ``v=dmp1;t=revocation;`` + base64(body ‖ signature) (wire.md §5.8).

    Raises:
        MalformedRecord: a field is out of range or the seed does not belong
            to ``revoked_spk``.
        RecordTooLong: the TXT value would exceed 1200 bytes.
    """
    return sign_single(
        REVOCATION_PREFIX, revocation.body(), signing_seed, revocation.revoked_spk, "revoked_spk"
    )


def verify_revocation(
    wire: str,
    expected_revoked_spk: bytes | None,
    expected_subject: str | None,
    *,
    now: int,
    max_age_s: int | None = None,
) -> Revocation:
    """Verify a revocation TXT value: structure, signature, timestamp.

    Args:
        wire: the TXT value, character-strings joined, prefix included.
        expected_revoked_spk: when given, the revoked key must be this one.
        expected_subject: when given, the subject must equal it (casefolded,
            one trailing dot ignored).
        now: current time, POSIX seconds.
        max_age_s: when given, reject a revocation with ``now - ts`` over
            this many seconds; by default revocations never expire.

    Returns:
        The verified revocation.

    Raises:
        RecordTooLong: over 1200 bytes.
        MalformedRecord: wrong prefix, bad base64, bad structure, subject or
            reason.
        UnsupportedVersion: wrong magic.
        RecordMismatch: another key or subject than expected.
        LowOrderKey: ``revoked_spk`` is blocklisted.
        BadRecordSignature: the signature does not verify.
        ClockSkew: ``ts > now + 300``.
        RecordExpired: older than ``max_age_s``.
    """
    blob = signed_blob(wire, REVOCATION_PREFIX, _SIG_LEN)
    body = blob[:-_SIG_LEN]
    revocation = decode_revocation_body(body)
    if expected_revoked_spk is not None and revocation.revoked_spk != expected_revoked_spk:
        raise RecordMismatch("revocation is for another key than expected")
    if expected_subject is not None and not subjects_equal(revocation.subject, expected_subject):
        raise RecordMismatch(f"revocation is for {revocation.subject!r}, not {expected_subject!r}")
    keys.verify(revocation.revoked_spk, body, blob[-_SIG_LEN:])
    check_future_skew(revocation.ts, now, REVOCATION_TS_SKEW_S)
    if max_age_s is not None and now - revocation.ts > max_age_s:
        raise RecordExpired(
            f"revocation issued at {revocation.ts} is older than {max_age_s} s at {now}"
        )
    return revocation


# -- the client's view of a rotate.* RRset -------------------------------------


def partition_rotation_rrset(
    wires: Iterable[str],
    *,
    subject: str,
    now: int,
    revocation_max_age_s: int | None = None,
) -> tuple[tuple[Rotation, ...], tuple[Revocation, ...]]:
    """Split a ``rotate.*`` RRset into the rotations and revocations that verify.

    Values of other types, values that fail verification and values about
    another subject are left out (a client must drop them, wire.md §5.7).

    Args:
        wires: the TXT values of the RRset (each already joined).
        subject: the subject being resolved.
        now: current time, POSIX seconds.
        revocation_max_age_s: passed to :func:`verify_revocation` as ``max_age_s``.

    Returns:
        ``(rotations, revocations)``, in RRset order.
    """
    rotations: list[Rotation] = []
    revocations: list[Revocation] = []
    for wire in wires:
        try:
            if wire.startswith(ROTATION_PREFIX):
                rotations.append(verify_rotation(wire, None, subject, now=now))
            elif wire.startswith(REVOCATION_PREFIX):
                revocations.append(
                    verify_revocation(wire, None, subject, now=now, max_age_s=revocation_max_age_s)
                )
        except DmpError:
            continue
    return tuple(rotations), tuple(revocations)


def walk_rotation_chain(
    pinned_spk: bytes,
    rotations: Iterable[Rotation],
    revocations: Iterable[Revocation],
    *,
    max_hops: int = DEFAULT_MAX_HOPS,
    subject: str | None = None,
    subject_type: SubjectType | None = None,
) -> bytes:
    """Follow verified rotations from the pinned key to the current key.

    The walk (wire.md §5.7): from the pinned key, repeatedly take the
    rotations whose ``old_spk`` is the current head. No rotation from the
    pinned key means it is still current. Duplicates (same new key) are
    fine; the lowest ``seq`` among them is the hop. The walk aborts when:

    * the pinned key is revoked;
    * one key rotates to more than one distinct new key (a fork);
    * ``seq`` does not strictly increase from one hop to the next;
    * a next key is revoked;
    * a next key was already visited (a cycle);
    * ``max_hops`` hops were taken and a further hop is still pending.

    Args:
        pinned_spk: the 32-byte Ed25519 key the client trusts.
        rotations: rotations already verified (e.g. by
            :func:`partition_rotation_rrset`).
        revocations: revocations already verified.
        max_hops: largest number of hops to follow (default 4).
        subject: when given, records about another subject are ignored.
        subject_type: when given, records of another subject type are ignored.

    Returns:
        The current key: ``pinned_spk`` itself when nothing rotates it.

    Raises:
        RotationChainError: an abort rule fired; the client must not follow
            the chain (and must not keep trusting a revoked pinned key).
    """

    def relevant(rec: Rotation | Revocation) -> bool:
        if subject_type is not None and rec.subject_type != subject_type:
            return False
        return subject is None or subjects_equal(rec.subject, subject)

    revoked = {rev.revoked_spk for rev in revocations if relevant(rev)}
    if pinned_spk in revoked:
        raise RotationChainError("the pinned key is revoked")
    by_old: dict[bytes, list[Rotation]] = {}
    for rot in rotations:
        if relevant(rot):
            by_old.setdefault(rot.old_spk, []).append(rot)

    head = pinned_spk
    visited = {head}
    last_seq: int | None = None
    for _ in range(max_hops):
        candidates = by_old.get(head)
        if not candidates:
            return head
        if len({c.new_spk for c in candidates}) > 1:
            raise RotationChainError(
                f"key {head.hex()[:16]}… rotates to more than one new key (fork)"
            )
        hop = min(candidates, key=_seq)
        if last_seq is not None and hop.seq <= last_seq:
            raise RotationChainError(f"rotation seq {hop.seq} does not increase past {last_seq}")
        last_seq = hop.seq
        if hop.new_spk in revoked:
            raise RotationChainError(f"key {hop.new_spk.hex()[:16]}… on the chain is revoked")
        if hop.new_spk in visited:
            raise RotationChainError(f"the chain cycles back to {hop.new_spk.hex()[:16]}…")
        visited.add(hop.new_spk)
        head = hop.new_spk
    if by_old.get(head):
        raise RotationChainError(f"the chain is longer than {max_hops} hops")
    return head


def _seq(rotation: Rotation) -> int:
    return rotation.seq
