"""Ed25519 signing and verification with the low-order key blocklist (layer: domain).

Signatures are plain RFC 8032 Ed25519 (no prehash, no context), so signing
is deterministic. Before any verification a public key is checked against
the 14 encodings the reference refuses (wire.md §1.5) and for its length.

Verification goes through PyNaCl (libsodium). ``nacl.signing`` objects are
cached per key, since building one costs about as much as a verify.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, NewType

import nacl.exceptions
import nacl.signing

from dmp.domain.errors import BadRecordSignature, LowOrderKey, MalformedRecord

__all__ = [
    "ED25519_KEY_LEN",
    "ED25519_SIG_LEN",
    "LOW_ORDER_ED25519_KEYS",
    "VerifyKeyBytes",
    "check_signing_seed",
    "check_verify_key",
    "ed25519_public_from_seed",
    "sign",
    "split_signed",
    "verify",
]

ED25519_KEY_LEN: Final = 32
ED25519_SIG_LEN: Final = 64

VerifyKeyBytes = NewType("VerifyKeyBytes", bytes)
"""A 32-byte Ed25519 public key (``verify_key`` in PyNaCl terms)."""

LOW_ORDER_ED25519_KEYS: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)
"""The Ed25519 encodings refused before verifying (wire.md §1.5)."""


def check_verify_key(verify_key: bytes) -> VerifyKeyBytes:
    """Return ``verify_key`` typed, after the length and blocklist checks.

    Raises:
        LowOrderKey: wrong length, or one of :data:`LOW_ORDER_ED25519_KEYS`.
    """
    if len(verify_key) != ED25519_KEY_LEN:
        raise LowOrderKey(f"Ed25519 public key must be 32 bytes, got {len(verify_key)}")
    if verify_key in LOW_ORDER_ED25519_KEYS:
        raise LowOrderKey(f"Ed25519 public key {verify_key.hex()} is a low-order point")
    return VerifyKeyBytes(verify_key)


@lru_cache(maxsize=4096)
def _verify_key(verify_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(verify_key)


@lru_cache(maxsize=256)
def _signing_key(seed: bytes) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(seed)


def verify(verify_key: bytes, body: bytes, signature: bytes) -> None:
    """Verify an Ed25519 ``signature`` over ``body``.

    Args:
        verify_key: 32-byte Ed25519 public key.
        body: the exact signed bytes.
        signature: 64-byte RFC 8032 signature.

    Raises:
        LowOrderKey: the key is blocklisted or not 32 bytes.
        BadRecordSignature: the signature does not verify.
    """
    check_verify_key(verify_key)
    if len(signature) != ED25519_SIG_LEN:
        raise BadRecordSignature(f"signature must be 64 bytes, got {len(signature)}")
    try:
        _verify_key(verify_key).verify(body, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError) as exc:
        raise BadRecordSignature(
            f"Ed25519 signature does not verify under {verify_key.hex()[:16]}…"
        ) from exc


def sign(seed: bytes, body: bytes) -> bytes:
    """Sign ``body`` with the Ed25519 key whose 32-byte seed is ``seed``.

    Returns:
        The 64-byte signature.

    Raises:
        ValueError: ``seed`` is not 32 bytes.
    """
    if len(seed) != 32:
        raise ValueError("Ed25519 seed must be 32 bytes")
    return bytes(_signing_key(seed).sign(body).signature)


def check_signing_seed(signing_seed: bytes, public_key: bytes, field: str) -> None:
    """Check that ``signing_seed`` is the 32-byte Ed25519 seed of ``public_key``.

    Sign-side guard: a record must never carry a key other than the one that
    signs it.

    Args:
        signing_seed: the 32-byte Ed25519 seed about to sign.
        public_key: the 32-byte public key the record names.
        field: the record field holding ``public_key``, for the message.

    Raises:
        MalformedRecord: the seed is not 32 bytes or belongs to another key.
    """
    if len(signing_seed) != 32:
        raise MalformedRecord("Ed25519 seed must be 32 bytes")
    if ed25519_public_from_seed(signing_seed) != public_key:
        raise MalformedRecord(f"signing seed does not match the record's {field}")


def ed25519_public_from_seed(seed: bytes) -> bytes:
    """The 32-byte Ed25519 public key for a 32-byte seed."""
    return bytes(_signing_key(seed).verify_key)


def split_signed(blob: bytes, sig_len: int = ED25519_SIG_LEN) -> tuple[bytes, bytes]:
    """Split ``blob`` into ``(body, signature)``; the signature is the last ``sig_len`` bytes.

    Raises:
        MalformedRecord: the blob has no room for a body.
    """
    if len(blob) <= sig_len:
        raise MalformedRecord(f"record of {len(blob)} bytes has no room for a body")
    return blob[:-sig_len], blob[-sig_len:]
