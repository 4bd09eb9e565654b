"""Claim records: "a message for you waits in this mailbox zone" (layer: domain; pure).

A sender publishes a claim at ``claim-<slot>.mb-<h12(recipient_id)>.<zone>``
(a claim provider's zone or the recipient's own zone) so that a recipient who
does not yet poll the sender's zone learns where the manifest is. The claim is
signed by the sender's Ed25519 key, which it embeds.

Wire (wire.md §1.1, §5.9)::

    v=dmp1;t=claim;<base64(body ‖ signature)>        (whole TXT ≤ 255 bytes)

    body = "DMPCL01" ‖ msg_id (16) ‖ sender_spk (32)
         ‖ u8 domain_len (1..43) ‖ sender_mailbox_domain
         ‖ u8 slot (0..9) ‖ u64 ts ‖ u64 exp (> ts)

The magic is the same as the cluster manifest's: dispatch is by prefix only.
The payload is decoded with *strict* base64. The domain may not contain
characters ≤ 0x20 or 0x7F. Time rules (wire.md §1.6): only *future* skew of
``ts`` is checked; ``exp ≤ now`` is expired; ``exp − now > 30 days`` is too far.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from dmp.domain import keys
from dmp.domain.codec import (
    THIRTY_DAYS_S,
    b64decode_strict,
    b64encode,
    check_expiry_cap,
    check_future_skew,
    check_not_expired,
)
from dmp.domain.errors import MalformedRecord, RecordTooLong, UnsupportedVersion
from dmp.domain.names import SLOT_COUNT

__all__ = [
    "CLAIM_MAGIC",
    "CLAIM_MAX_WIRE_LEN",
    "CLAIM_PREFIX",
    "DEFAULT_TS_SKEW_S",
    "MAX_CLAIM_DOMAIN_LEN",
    "Claim",
    "sign_claim",
    "verify_claim",
]

CLAIM_PREFIX: Final = "v=dmp1;t=claim;"
CLAIM_MAGIC: Final = b"DMPCL01"
CLAIM_MAX_WIRE_LEN: Final = 255
MAX_CLAIM_DOMAIN_LEN: Final = 43
"""Largest ``sender_mailbox_domain`` in bytes: the one that fills a 255-byte wire."""
DEFAULT_TS_SKEW_S: Final = 300

_PREFIX_LEN: Final = len(CLAIM_PREFIX)
_SIG_LEN: Final = keys.ED25519_SIG_LEN
_HEAD: Final = struct.Struct(">7s16s32sB")  # magic, msg_id, sender_spk, domain_len
_TAIL: Final = struct.Struct(">BQQ")  # slot, ts, exp
_FIXED_BLOB_LEN: Final = _HEAD.size + _TAIL.size + _SIG_LEN
_U64_LIMIT: Final = 1 << 64
_FORBIDDEN_DOMAIN_BYTES: Final = bytes(range(0x21)) + b"\x7f"


def _check_domain_bytes(domain: bytes) -> None:
    # In UTF-8, bytes 0x00..0x20 and 0x7F only ever encode those characters.
    if len(domain.translate(None, _FORBIDDEN_DOMAIN_BYTES)) != len(domain):
        raise MalformedRecord(
            f"claim sender_mailbox_domain {domain!r} contains a space or control character"
        )


@attrs.frozen
class Claim:
    """A signed pointer from a sender's mailbox zone to a waiting message (wire.md §5.9).

    Attributes:
        msg_id: 16-byte message id (the manifest's).
        sender_spk: the sender's 32-byte Ed25519 public key (signs this record).
        sender_mailbox_domain: zone holding the manifest, 1..43 UTF-8 bytes,
            no spaces or control characters.
        slot: mailbox slot 0..9 (informational; receivers scan all slots).
        ts: creation time, POSIX seconds (u64).
        exp: expiry, POSIX seconds (u64, > ts).
    """

    msg_id: bytes
    sender_spk: bytes
    sender_mailbox_domain: str
    slot: int
    ts: int
    exp: int

    def body(self) -> bytes:
        """The exact signed bytes.

        Raises:
            MalformedRecord: a field is out of range (msg_id not 16 bytes,
                key not 32, domain empty, over 43 bytes or with a space or
                control character, slot outside 0..9, ts/exp not u64, or
                ``exp ≤ ts``).
        """
        if len(self.msg_id) != 16:
            raise MalformedRecord("claim msg_id must be 16 bytes")
        if len(self.sender_spk) != 32:
            raise MalformedRecord("claim sender_spk must be 32 bytes")
        domain = self.sender_mailbox_domain.encode("utf-8")
        if not 1 <= len(domain) <= MAX_CLAIM_DOMAIN_LEN:
            raise MalformedRecord(
                f"claim sender_mailbox_domain must be 1..{MAX_CLAIM_DOMAIN_LEN} bytes, "
                f"got {len(domain)}"
            )
        _check_domain_bytes(domain)
        if not 0 <= self.slot < SLOT_COUNT:
            raise MalformedRecord(f"claim slot {self.slot} is outside 0..9")
        if not (0 <= self.ts < _U64_LIMIT and 0 <= self.exp < _U64_LIMIT):
            raise MalformedRecord("claim ts and exp must fit a u64")
        if self.exp <= self.ts:
            raise MalformedRecord(f"claim exp {self.exp} is not after ts {self.ts}")
        return (
            _HEAD.pack(CLAIM_MAGIC, self.msg_id, self.sender_spk, len(domain))
            + domain
            + _TAIL.pack(self.slot, self.ts, self.exp)
        )


def sign_claim(record: Claim, signing_seed: bytes) -> str:
    """Sign ``record`` and return its TXT value (prefix included).

    Args:
        record: the claim to publish.
        signing_seed: the sender's 32-byte Ed25519 seed, whose public key is
            ``record.sender_spk``.

    Returns:
        ``v=dmp1;t=claim;`` + base64(body ‖ signature) (wire.md §5.9).

    Raises:
        MalformedRecord: a field is out of range, or ``signing_seed`` does
            not belong to ``record.sender_spk``.
        RecordTooLong: the wire would exceed 255 bytes.
    """
    body = record.body()
    keys.check_signing_seed(signing_seed, record.sender_spk, "sender_spk")
    wire = CLAIM_PREFIX + b64encode(body + keys.sign(signing_seed, body))
    if len(wire) > CLAIM_MAX_WIRE_LEN:
        raise RecordTooLong(f"claim wire of {len(wire)} bytes exceeds {CLAIM_MAX_WIRE_LEN}")
    return wire


def verify_claim(wire: str, *, now: int, ts_skew_s: int = DEFAULT_TS_SKEW_S) -> Claim:
    """Parse a claim TXT value, check its signature and time rules.

    Args:
        wire: the joined TXT value, prefix included.
        now: current time, POSIX seconds.
        ts_skew_s: how far ``ts`` may lie in the future, seconds. A past
            ``ts`` is fine (wire.md §1.6).

    Returns:
        The verified claim.

    Raises:
        RecordTooLong: the wire is over 255 UTF-8 bytes (wire.md §1.3).
        MalformedRecord: wrong prefix, non-alphabet base64, truncated or
            trailing bytes, domain length outside 1..43 or with a space or
            control character, slot outside 0..9, ``exp ≤ ts``.
        UnsupportedVersion: the magic is not ``DMPCL01``.
        LowOrderKey: the embedded sender key is on the blocklist (wire.md §1.5).
        BadRecordSignature: the signature does not verify.
        ClockSkew: ``ts − now > ts_skew_s``.
        RecordExpired: ``exp ≤ now``.
        ExpiryTooFar: ``exp − now > 30 days``.
    """
    wire_len = len(wire) if wire.isascii() else len(wire.encode("utf-8"))
    if wire_len > CLAIM_MAX_WIRE_LEN:
        raise RecordTooLong(f"claim wire of {wire_len} bytes exceeds {CLAIM_MAX_WIRE_LEN}")
    if not wire.startswith(CLAIM_PREFIX):
        raise MalformedRecord(f"claim record does not start with {CLAIM_PREFIX!r}")
    blob = b64decode_strict(wire[_PREFIX_LEN:])
    if len(blob) < _FIXED_BLOB_LEN:
        raise MalformedRecord(f"claim record of {len(blob)} bytes is truncated")
    magic, msg_id, sender_spk, domain_len = _HEAD.unpack_from(blob)
    if magic != CLAIM_MAGIC:
        raise UnsupportedVersion(f"claim magic {magic!r} is not {CLAIM_MAGIC!r}")
    if not 1 <= domain_len <= MAX_CLAIM_DOMAIN_LEN:
        raise MalformedRecord(f"claim domain length {domain_len} is outside 1..43")
    if len(blob) != _FIXED_BLOB_LEN + domain_len:
        raise MalformedRecord(
            f"claim record is {len(blob)} bytes, expected {_FIXED_BLOB_LEN + domain_len}"
        )
    tail = _HEAD.size + domain_len
    raw_domain = blob[_HEAD.size : tail]
    _check_domain_bytes(raw_domain)
    try:
        domain = raw_domain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("claim sender_mailbox_domain is not valid UTF-8") from exc
    slot, ts, exp = _TAIL.unpack_from(blob, tail)
    if slot >= SLOT_COUNT:
        raise MalformedRecord(f"claim slot {slot} is outside 0..9")
    if exp <= ts:
        raise MalformedRecord(f"claim exp {exp} is not after ts {ts}")
    end = tail + _TAIL.size
    keys.verify(sender_spk, blob[:end], blob[end:])
    check_future_skew(ts, now, ts_skew_s)
    check_not_expired(exp, now, inclusive=True)
    check_expiry_cap(exp, now, THIRTY_DAYS_S)
    return Claim(msg_id, sender_spk, domain, slot, ts, exp)
