"""Signed TXT values: framing, single-key signing, pinned-key verification (layer: domain; pure).

Cluster manifests (wire.md §5.5), bootstrap records (§5.6), rotations and
revocations (§5.7, §5.8) share one frame::

    <prefix><base64(body ‖ signature(s))>

Rules of this module:

* The whole TXT value may not exceed :data:`MAX_WIRE_LEN` UTF-8 bytes, on
  sign and on verify (wire.md §1.1, §1.3); the payload is decoded with
  *strict* base64.
* :func:`verify_pinned` is the verification order of the records a client
  checks against a key it pinned out of band (cluster manifests and
  bootstrap records, wire.md §5.5 and §5.6): the signature against the
  pinned key *before* the body is parsed, then the embedded key must equal
  the pinned one, then expiry (``exp < now``; ``exp - now`` at most five
  years). Any name binding is the caller's last step.

The public names are re-exported by :mod:`dmp.domain.cluster`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar

from dmp.domain import keys
from dmp.domain.codec import (
    FIVE_YEARS_S,
    b64decode_strict,
    b64encode,
    check_expiry_cap,
    check_not_expired,
)
from dmp.domain.errors import MalformedRecord, RecordMismatch, RecordTooLong

__all__ = [
    "MAX_WIRE_LEN",
    "check_wire_len",
    "sign_single",
    "signed_blob",
    "verify_pinned",
]

MAX_WIRE_LEN: Final = 1200
"""Largest TXT value (prefix included, UTF-8 bytes) of cluster, bootstrap, rotation, revocation."""

_SIG_LEN: Final = keys.ED25519_SIG_LEN


def check_wire_len(wire: str) -> None:
    """Reject a TXT value over :data:`MAX_WIRE_LEN` UTF-8 bytes (wire.md §1.3).

    Raises:
        RecordTooLong
    """
    n = len(wire) if wire.isascii() else len(wire.encode("utf-8", "surrogatepass"))
    if n > MAX_WIRE_LEN:
        raise RecordTooLong(f"TXT value of {n} bytes exceeds the {MAX_WIRE_LEN}-byte cap")


def signed_blob(wire: str, prefix: str, sig_len: int) -> bytes:
    """Length-check ``wire``, strip ``prefix`` and strictly base64-decode the rest.

    Returns:
        The decoded ``body ‖ signature(s)`` blob, at least ``sig_len + 1`` bytes.

    Raises:
        RecordTooLong: over 1200 bytes.
        MalformedRecord: wrong prefix, bad base64, or no room for a body.
    """
    check_wire_len(wire)
    if not wire.startswith(prefix):
        raise MalformedRecord(f"record does not start with {prefix!r}")
    blob = b64decode_strict(wire[len(prefix) :])
    if len(blob) <= sig_len:
        raise MalformedRecord(f"record of {len(blob)} bytes has no room for a body")
    return blob


def sign_single(prefix: str, body: bytes, signing_seed: bytes, spk: bytes, field: str) -> str:
    """Sign ``body`` with one key and frame it as ``prefix`` + base64(body ‖ signature).

    Args:
        prefix: the record's TXT prefix, e.g. ``v=dmp1;t=cluster;``.
        body: the exact signed bytes.
        signing_seed: 32-byte Ed25519 seed of ``spk``.
        spk: the key the record names as its signer.
        field: the name of ``spk`` in error messages.

    Returns:
        The TXT value.

    Raises:
        MalformedRecord: the seed does not belong to ``spk``.
        RecordTooLong: the TXT value would exceed 1200 bytes.
    """
    keys.check_signing_seed(signing_seed, spk, field)
    wire = prefix + b64encode(body + keys.sign(signing_seed, body))
    check_wire_len(wire)
    return wire


class _Expiring(Protocol):
    @property
    def exp(self) -> int: ...


R = TypeVar("R", bound=_Expiring)


def verify_pinned(
    wire: str,
    prefix: str,
    pinned_spk: bytes,
    *,
    now: int,
    decode: Callable[[bytes], R],
    embedded_spk: Callable[[R], bytes],
    mismatch: str,
) -> R:
    """Verify a single-signature TXT value against a pinned key (wire.md §5.5, §5.6).

    Order: length cap, prefix, strict base64, signature against
    ``pinned_spk``, parse, embedded key equals ``pinned_spk``, ``exp < now``,
    five-year cap.

    Args:
        wire: the TXT value, character-strings joined, prefix included.
        prefix: the record's TXT prefix.
        pinned_spk: the pinned 32-byte Ed25519 key.
        now: current time, POSIX seconds.
        decode: parses the body (no signature check).
        embedded_spk: the signer key the parsed record names.
        mismatch: the message of the :class:`RecordMismatch` raised when the
            embedded key is not ``pinned_spk``.

    Returns:
        The verified record.

    Raises:
        RecordTooLong: over 1200 bytes.
        MalformedRecord: wrong prefix, bad base64, bad structure.
        UnsupportedVersion: wrong magic.
        LowOrderKey: ``pinned_spk`` is blocklisted or not 32 bytes.
        BadRecordSignature: the signature does not verify.
        RecordMismatch: the embedded key is not ``pinned_spk``.
        RecordExpired: ``exp < now``.
        ExpiryTooFar: ``exp - now`` over five years.
    """
    blob = signed_blob(wire, prefix, _SIG_LEN)
    body = blob[:-_SIG_LEN]
    keys.verify(pinned_spk, body, blob[-_SIG_LEN:])
    record = decode(body)
    if embedded_spk(record) != pinned_spk:
        raise RecordMismatch(mismatch)
    check_not_expired(record.exp, now)
    check_expiry_cap(record.exp, now, FIVE_YEARS_S)
    return record
