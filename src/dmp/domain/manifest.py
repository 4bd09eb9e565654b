"""The slot manifest: the signed pointer to one message's chunks (layer: domain; pure).

Wire (wire.md §5.2): ``v=dmp1;t=manifest;d=`` + base64(body ‖ signature),
lenient base64 on parse. Body, big-endian:

======  ======  ==================================================
offset  size    field
======  ======  ==================================================
0       16      msg_id (UUIDv4 bytes)
16      32      sender_spk (Ed25519, signs the body)
48      32      recipient_id = sha256(recipient X25519 public key)
80      4       total_chunks n (1..1024)
84      4       data_chunks k (1..n)
88      4       prekey_id (0 = long-term key)
92      8       ts
100     8       exp (the sender uses ts + ttl)
108     32·n    chunk_hashes[i] = sha256(wrapped chunk i)
======  ======  ==================================================

then the 64-byte Ed25519 signature by ``sender_spk``. A legacy (pre-0.7)
body stops at 108 bytes; :func:`parse_manifest` accepts it with
``chunk_hashes == ()`` but the receive gate :func:`verify_manifest` refuses
it, as 0.7.5 receivers do.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from dmp.domain.codec import (
    THIRTY_DAYS_S,
    b64decode_lenient,
    b64encode,
    check_expiry_cap,
    check_not_expired,
    strip_prefix,
)
from dmp.domain.errors import MalformedRecord, RecordMismatch
from dmp.domain.keys import ED25519_SIG_LEN, sign, split_signed, verify

__all__ = [
    "HEADER_LEN",
    "MANIFEST_PREFIX",
    "MAX_TOTAL_CHUNKS",
    "SlotManifest",
    "decode_manifest_body",
    "parse_manifest",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_PREFIX: Final = "v=dmp1;t=manifest;d="
HEADER_LEN: Final = 108
MAX_TOTAL_CHUNKS: Final = 1024
HASH_LEN: Final = 32
_HEADER: Final = struct.Struct(">16s32s32sIIIQQ")
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


@attrs.frozen
class SlotManifest:
    """One slot manifest (wire.md §5.2).

    Attributes:
        msg_id: 16 bytes.
        sender_spk: 32-byte Ed25519 public key that signs the manifest.
        recipient_id: 32 bytes, ``sha256(recipient X25519 public key)``.
        total_chunks: ``n``, erasure shares published (1..1024).
        data_chunks: ``k``, shares needed to decode (1..n).
        prekey_id: the recipient prekey used, 0 for the long-term key (u32).
        ts: send time, POSIX seconds (u64).
        exp: expiry, POSIX seconds (u64).
        chunk_hashes: ``n`` × 32-byte ``sha256(wrapped chunk)``, or ``()``
            for a legacy hash-less manifest.
    """

    msg_id: bytes
    sender_spk: bytes
    recipient_id: bytes
    total_chunks: int
    data_chunks: int
    prekey_id: int
    ts: int
    exp: int
    chunk_hashes: tuple[bytes, ...] = ()

    def __attrs_post_init__(self) -> None:
        _check_len("msg_id", self.msg_id, 16)
        _check_len("sender_spk", self.sender_spk, 32)
        _check_len("recipient_id", self.recipient_id, 32)
        for name, value, top in (
            ("total_chunks", self.total_chunks, _U32_MAX),
            ("data_chunks", self.data_chunks, _U32_MAX),
            ("prekey_id", self.prekey_id, _U32_MAX),
            ("ts", self.ts, _U64_MAX),
            ("exp", self.exp, _U64_MAX),
        ):
            if not 0 <= value <= top:
                raise ValueError(f"{name} {value} out of range")
        for h in self.chunk_hashes:
            _check_len("chunk hash", h, HASH_LEN)

    @property
    def is_legacy(self) -> bool:
        """True for a pre-0.7 manifest without chunk hashes."""
        return not self.chunk_hashes

    def body(self) -> bytes:
        """The signed body: 108-byte header ‖ chunk hashes."""
        return _HEADER.pack(
            self.msg_id,
            self.sender_spk,
            self.recipient_id,
            self.total_chunks,
            self.data_chunks,
            self.prekey_id,
            self.ts,
            self.exp,
        ) + b"".join(self.chunk_hashes)


def _check_shape(m: SlotManifest) -> None:
    if not 1 <= m.total_chunks <= MAX_TOTAL_CHUNKS:
        raise MalformedRecord(f"total_chunks {m.total_chunks} outside 1..{MAX_TOTAL_CHUNKS}")
    if not 1 <= m.data_chunks <= m.total_chunks:
        raise MalformedRecord(f"data_chunks {m.data_chunks} outside 1..{m.total_chunks}")
    if m.chunk_hashes and len(m.chunk_hashes) != m.total_chunks:
        raise MalformedRecord(
            f"{len(m.chunk_hashes)} chunk hashes for total_chunks {m.total_chunks}"
        )


def sign_manifest(m: SlotManifest, signing_seed: bytes) -> str:
    """Sign ``m`` and return its TXT value.

    Args:
        m: the manifest; ``sender_spk`` must belong to ``signing_seed``.
            ``chunk_hashes`` should hold ``n`` hashes (an empty tuple makes
            a legacy manifest that 0.7 receivers refuse).
        signing_seed: the sender's 32-byte Ed25519 seed.

    Returns:
        ``v=dmp1;t=manifest;d=`` + base64(body ‖ signature).

    Raises:
        MalformedRecord: ``n``/``k`` out of range, or a hash count ≠ ``n``.
        ValueError: the seed is not 32 bytes.
    """
    _check_shape(m)
    body = m.body()
    return MANIFEST_PREFIX + b64encode(body + sign(signing_seed, body))


def decode_manifest_body(body: bytes) -> SlotManifest:
    """Decode a manifest body (no signature check).

    Args:
        body: 108 bytes (legacy) or ``108 + 32·n`` bytes.

    Returns:
        The manifest.

    Raises:
        MalformedRecord: wrong length, or ``n``/``k`` out of range.
    """
    if len(body) < HEADER_LEN:
        raise MalformedRecord(f"manifest body of {len(body)} bytes is too short")
    msg_id, sender_spk, recipient_id, n, k, prekey_id, ts, exp = _HEADER.unpack_from(body)
    if len(body) == HEADER_LEN:
        hashes: tuple[bytes, ...] = ()
    elif len(body) == HEADER_LEN + HASH_LEN * n:
        hashes = tuple(
            body[HEADER_LEN + HASH_LEN * i : HEADER_LEN + HASH_LEN * (i + 1)] for i in range(n)
        )
    else:
        raise MalformedRecord(f"manifest body of {len(body)} bytes does not fit total_chunks {n}")
    m = SlotManifest(msg_id, sender_spk, recipient_id, n, k, prekey_id, ts, exp, hashes)
    _check_shape(m)
    return m


def parse_manifest(wire: str) -> SlotManifest:
    """Parse a manifest TXT value and verify its signature (wire.md §5.2).

    Legacy hash-less manifests are accepted here (``chunk_hashes == ()``);
    use :func:`verify_manifest` on the receive path. No time checks.

    Args:
        wire: the TXT value (character-strings joined).

    Returns:
        The manifest.

    Raises:
        MalformedRecord: wrong prefix, base64, length or field range.
        LowOrderKey: ``sender_spk`` is on the blocklist.
        BadRecordSignature: the signature does not verify under ``sender_spk``.
    """
    blob = b64decode_lenient(strip_prefix(wire, MANIFEST_PREFIX))
    if len(blob) < HEADER_LEN + ED25519_SIG_LEN:
        raise MalformedRecord(f"manifest of {len(blob)} bytes is too short")
    body, signature = split_signed(blob)
    m = decode_manifest_body(body)
    verify(m.sender_spk, body, signature)
    return m


def verify_manifest(wire: str, *, now: int, recipient_id: bytes | None = None) -> SlotManifest:
    """The 0.7.5 receive gate for a manifest (wire.md §1.6, §5.2).

    Args:
        wire: the TXT value found at a slot owner.
        now: POSIX seconds.
        recipient_id: the receiver's ``user_id``; ``None`` skips the check.

    Returns:
        The manifest, with chunk hashes.

    Raises:
        MalformedRecord: as :func:`parse_manifest`, or a legacy hash-less
            manifest.
        LowOrderKey, BadRecordSignature: as :func:`parse_manifest`.
        ExpiryTooFar: ``exp - now`` over 30 days.
        RecordExpired: ``now > exp``.
        RecordMismatch: the manifest is for another recipient.
    """
    m = parse_manifest(wire)
    check_expiry_cap(m.exp, now, THIRTY_DAYS_S)
    if m.is_legacy:
        raise MalformedRecord("legacy manifest without chunk hashes is refused")
    check_not_expired(m.exp, now)
    if recipient_id is not None and m.recipient_id != recipient_id:
        raise RecordMismatch("manifest is addressed to another recipient")
    return m
