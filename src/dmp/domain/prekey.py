"""One-time prekey records (layer: domain; pure).

A prekey is a short-lived X25519 public key a recipient publishes so that a
sender can encrypt to it instead of the long-term key (forward secrecy). Each
prekey is signed by its owner's identity Ed25519 key, which is *not*
embedded: the verifier supplies it (from the owner's identity record). Many
prekeys share one RRset at ``prekeys.id-<hash12>.<domain>``.

Wire (wire.md §1.1, §5.4)::

    v=dmp1;t=prekey;d=<base64(body ‖ signature)>

    body (44 bytes) = u32 prekey_id (1..2³²−1) ‖ x25519_public (32) ‖ u64 exp

The decoded blob must be exactly 108 bytes. The payload is decoded with
*lenient* base64 (wire.md §1.1).
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from dmp.domain import keys
from dmp.domain.codec import (
    THIRTY_DAYS_S,
    b64decode_lenient,
    b64encode,
    check_expiry_cap,
    check_not_expired,
)
from dmp.domain.errors import MalformedRecord

__all__ = [
    "PREKEY_BODY_LEN",
    "PREKEY_PREFIX",
    "Prekey",
    "sign_prekey",
    "verify_prekey",
]

PREKEY_PREFIX: Final = "v=dmp1;t=prekey;d="
PREKEY_BODY_LEN: Final = 44
_BLOB_LEN: Final = PREKEY_BODY_LEN + keys.ED25519_SIG_LEN
_PREFIX_LEN: Final = len(PREKEY_PREFIX)
_BODY: Final = struct.Struct(">I32sQ")
_U32_MAX: Final = (1 << 32) - 1


@attrs.frozen
class Prekey:
    """A published one-time prekey (wire.md §5.4).

    Attributes:
        prekey_id: u32 identifier, 1..2³²−1 (0 means "no prekey" elsewhere).
        x25519_public: 32-byte X25519 public key.
        exp: expiry, POSIX seconds (u64).
    """

    prekey_id: int
    x25519_public: bytes
    exp: int

    def body(self) -> bytes:
        """The exact signed bytes (44).

        Raises:
            MalformedRecord: ``prekey_id`` outside 1..2³²−1, the key not 32
                bytes, or ``exp`` not a u64.
        """
        if not 1 <= self.prekey_id <= _U32_MAX:
            raise MalformedRecord(f"prekey_id {self.prekey_id} is outside 1..2^32-1")
        if len(self.x25519_public) != 32:
            raise MalformedRecord("prekey x25519_public must be 32 bytes")
        if not 0 <= self.exp < 1 << 64:
            raise MalformedRecord(f"prekey exp {self.exp} does not fit a u64")
        return _BODY.pack(self.prekey_id, self.x25519_public, self.exp)


def sign_prekey(record: Prekey, signing_seed: bytes) -> str:
    """Sign ``record`` with the owner's identity key and return its TXT value.

    Args:
        record: the prekey to publish.
        signing_seed: the owner's 32-byte identity Ed25519 seed.

    Returns:
        ``v=dmp1;t=prekey;d=`` + base64(body ‖ signature) (wire.md §5.4).

    Raises:
        MalformedRecord: a field is out of range or the seed is not 32 bytes.
    """
    body = record.body()
    if len(signing_seed) != 32:
        raise MalformedRecord("Ed25519 seed must be 32 bytes")
    return PREKEY_PREFIX + b64encode(body + keys.sign(signing_seed, body))


def verify_prekey(wire: str, signer_spk: bytes, *, now: int) -> Prekey:
    """Parse a prekey TXT value, check its signature and expiry.

    The reference rejects ``exp − now > 30 days`` when parsing and has the
    sender skip prekeys with ``now > exp``; both are refused here, so a
    returned prekey is usable at ``now`` (``now == exp`` is still usable).

    Args:
        wire: the joined TXT value, prefix included.
        signer_spk: the owner's 32-byte identity Ed25519 public key.
        now: current time, POSIX seconds.

    Returns:
        The verified prekey.

    Raises:
        MalformedRecord: wrong prefix, bad base64, a blob that is not 108
            bytes, or ``prekey_id`` 0.
        LowOrderKey: ``signer_spk`` is blocklisted or not 32 bytes (wire.md §1.5).
        BadRecordSignature: the signature does not verify under ``signer_spk``.
        ExpiryTooFar: ``exp − now > 30 days`` (wire.md §1.6).
        RecordExpired: ``now > exp``.
    """
    if not wire.startswith(PREKEY_PREFIX):
        raise MalformedRecord(f"prekey record does not start with {PREKEY_PREFIX!r}")
    blob = b64decode_lenient(wire[_PREFIX_LEN:])
    if len(blob) != _BLOB_LEN:
        raise MalformedRecord(f"prekey record must be {_BLOB_LEN} bytes, got {len(blob)}")
    prekey_id, x25519_public, exp = _BODY.unpack_from(blob)
    if prekey_id == 0:
        raise MalformedRecord("prekey_id 0 is reserved")
    keys.verify(signer_spk, blob[:PREKEY_BODY_LEN], blob[PREKEY_BODY_LEN:])
    check_expiry_cap(exp, now, THIRTY_DAYS_S)
    check_not_expired(exp, now)
    return Prekey(prekey_id, x25519_public, exp)
