"""Identity records (layer: domain; pure).

An identity record binds a username to a user's X25519 public key (what
senders encrypt to) and Ed25519 public key (what signs the user's records).
It is self-signed by the embedded Ed25519 key and carries no expiry.

Wire (wire.md §1.1, §5.3)::

    v=dmp1;t=identity;d=<base64(body ‖ signature)>

    body = u8 username_len (1..64) ‖ utf8 username
         ‖ x25519_public (32) ‖ ed25519_public (32) ‖ u64 ts
         [‖ u8 versions_len (≥ 1) ‖ versions (u8 each, strictly ascending)]

The versions suffix is omitted when the versions are exactly ``(1,)``; a
record without it means ``(1,)``. A reader also accepts an explicit ``(1,)``
suffix. The payload is decoded with *lenient* base64 (non-alphabet characters
are discarded, wire.md §1.1). There is no wire length cap; records with long
usernames exceed 255 bytes and travel as several TXT character-strings.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

import attrs

from dmp.domain import keys
from dmp.domain.codec import b64decode_lenient, b64encode
from dmp.domain.errors import MalformedRecord

__all__ = [
    "IDENTITY_PREFIX",
    "MAX_USERNAME_LEN",
    "IdentityRecord",
    "identity_fingerprint",
    "sign_identity",
    "verify_identity",
]

IDENTITY_PREFIX: Final = "v=dmp1;t=identity;d="
MAX_USERNAME_LEN: Final = 64
"""Largest username, in UTF-8 bytes."""

_KEY_LEN: Final = 32
_SIG_LEN: Final = keys.ED25519_SIG_LEN
_PREFIX_LEN: Final = len(IDENTITY_PREFIX)
_U64: Final = struct.Struct(">Q")
_V1_ONLY: Final = (1,)


def identity_fingerprint(x25519_public: bytes, ed25519_public: bytes) -> str:
    """The 16-hex-character fingerprint users compare out of band.

    Args:
        x25519_public: 32-byte X25519 public key.
        ed25519_public: 32-byte Ed25519 public key.

    Returns:
        ``sha256(x25519_public ‖ ed25519_public).hex()[:16]`` (wire.md §5.3).
    """
    return hashlib.sha256(x25519_public + ed25519_public).hexdigest()[:16]


def _check_versions(versions: tuple[int, ...]) -> None:
    if not versions:
        raise MalformedRecord("identity versions must not be empty")
    previous = -1
    for version in versions:
        if not 0 <= version <= 255:
            raise MalformedRecord(f"identity version {version} does not fit a u8")
        if version <= previous:
            raise MalformedRecord(
                f"identity versions {versions} are not strictly ascending and unique"
            )
        previous = version


@attrs.frozen
class IdentityRecord:
    """A user's published identity (wire.md §5.3).

    Attributes:
        username: the name as typed (case-sensitive), 1..64 UTF-8 bytes.
        x25519_public: 32-byte X25519 public key (encryption).
        ed25519_public: 32-byte Ed25519 public key (signing; signs this record).
        ts: publication time, POSIX seconds (u64).
        versions: protocol versions the user accepts, strictly ascending
            u8 values; ``(1, 2)`` means the DMPv2 envelope is understood.
    """

    username: str
    x25519_public: bytes
    ed25519_public: bytes
    ts: int
    versions: tuple[int, ...] = _V1_ONLY

    @property
    def fingerprint(self) -> str:
        """:func:`identity_fingerprint` of this record's two keys."""
        return identity_fingerprint(self.x25519_public, self.ed25519_public)

    def body(self) -> bytes:
        """The exact signed bytes.

        Raises:
            MalformedRecord: a field is out of range (username empty or over
                64 UTF-8 bytes, a key not 32 bytes, ts not a u64, versions
                empty, unsorted, duplicated or not u8).
        """
        name = self.username.encode("utf-8")
        if not 1 <= len(name) <= MAX_USERNAME_LEN:
            raise MalformedRecord(
                f"identity username must be 1..{MAX_USERNAME_LEN} UTF-8 bytes, got {len(name)}"
            )
        if len(self.x25519_public) != _KEY_LEN or len(self.ed25519_public) != _KEY_LEN:
            raise MalformedRecord("identity keys must be 32 bytes each")
        if not 0 <= self.ts < 1 << 64:
            raise MalformedRecord(f"identity ts {self.ts} does not fit a u64")
        _check_versions(self.versions)
        out = bytes((len(name),)) + name + self.x25519_public + self.ed25519_public
        out += _U64.pack(self.ts)
        if self.versions != _V1_ONLY:
            out += bytes((len(self.versions), *self.versions))
        return out


def sign_identity(record: IdentityRecord, signing_seed: bytes) -> str:
    """Sign ``record`` and return its TXT value (prefix included).

    Args:
        record: the identity to publish.
        signing_seed: 32-byte Ed25519 seed whose public key is
            ``record.ed25519_public``.

    Returns:
        ``v=dmp1;t=identity;d=`` + base64(body ‖ signature) (wire.md §5.3).

    Raises:
        MalformedRecord: a field is out of range, or ``signing_seed`` does
            not belong to ``record.ed25519_public``.
    """
    body = record.body()
    keys.check_signing_seed(signing_seed, record.ed25519_public, "ed25519_public")
    return IDENTITY_PREFIX + b64encode(body + keys.sign(signing_seed, body))


def verify_identity(wire: str) -> IdentityRecord:
    """Parse an identity TXT value and check its self-signature.

    Identity records have no time rules, so no clock is needed.

    Args:
        wire: the joined TXT value, prefix included.

    Returns:
        The verified record.

    Raises:
        MalformedRecord: wrong prefix, bad base64, truncated or trailing
            bytes, username length outside 1..64 or not UTF-8, a versions
            suffix that is empty, unsorted or duplicated.
        LowOrderKey: the embedded Ed25519 key is on the blocklist (wire.md §1.5).
        BadRecordSignature: the signature does not verify.
    """
    if not wire.startswith(IDENTITY_PREFIX):
        raise MalformedRecord(f"identity record does not start with {IDENTITY_PREFIX!r}")
    blob = b64decode_lenient(wire[_PREFIX_LEN:])
    end = len(blob) - _SIG_LEN
    if end <= 0:
        raise MalformedRecord(f"identity record of {len(blob)} bytes has no room for a body")
    name_len = blob[0]
    if not 1 <= name_len <= MAX_USERNAME_LEN:
        raise MalformedRecord(f"identity username length {name_len} is outside 1..64")
    pos = 1 + name_len
    fixed_end = pos + 2 * _KEY_LEN + 8
    if fixed_end > end:
        raise MalformedRecord("identity record is truncated")
    try:
        username = blob[1:pos].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("identity username is not valid UTF-8") from exc
    x25519_public = blob[pos : pos + _KEY_LEN]
    ed25519_public = blob[pos + _KEY_LEN : pos + 2 * _KEY_LEN]
    (ts,) = _U64.unpack_from(blob, fixed_end - 8)
    if fixed_end == end:
        versions: tuple[int, ...] = _V1_ONLY
    else:
        count = blob[fixed_end]
        if count == 0 or fixed_end + 1 + count != end:
            raise MalformedRecord(
                f"identity versions suffix of length {count} does not match "
                f"the {end - fixed_end - 1} bytes that follow"
            )
        versions = tuple(blob[fixed_end + 1 : end])
        _check_versions(versions)
    body = blob[:end]
    keys.verify(ed25519_public, body, blob[end:])
    return IdentityRecord(username, x25519_public, ed25519_public, ts, versions)
