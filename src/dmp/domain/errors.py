"""The exception tree of dmp (layer: domain; pure, no I/O).

Every failure dmp reports is a :class:`DmpError`. Decoding or verifying bad
input raises a subclass that names what is wrong; nothing in the domain
returns ``None`` or ``False`` to signal a failure. Expected *policy* outcomes
(an UPDATE outside a key's scope, a record the puller will not store) are
returned as values, not raised.

Each class carries the hints its edge needs: ``rcode`` (DNS server),
``http_status`` (HTTP API) and ``exit_code`` (CLI). The class docstring is the
default message.

::

    DmpError
    ├── RecordError                  a TXT record is unusable
    │   ├── MalformedRecord          wrong prefix, base64, length or field
    │   │   ├── RecordTooLong        over a wire length cap (wire.md §1.3)
    │   │   └── UnsupportedVersion   unknown magic / type / version
    │   ├── BadRecordSignature       Ed25519 signature does not verify
    │   │   └── LowOrderKey          key on the blocklist (wire.md §1.5)
    │   ├── RecordExpired            past its exp (wire.md §1.6)
    │   ├── ExpiryTooFar             exp beyond the type's cap (30 d / 5 y)
    │   ├── ClockSkew                ts too far from now
    │   ├── RecordMismatch           valid, but not the record asked for
    │   │                            (other recipient, key, subject, zone)
    │   └── RotationChainError       a key rotation chain must not be
    │                                followed (revoked, fork, cycle, …)
    ├── ChunkError                   a chunk cannot be used
    │   ├── ChunkHashMismatch        sha256 differs from the manifest's
    │   └── ChunkUnrecoverable       RS decode or checksum failed
    ├── ErasureError                 erasure coding failed
    │   └── NotEnoughShares          fewer than k valid shares
    ├── CryptoError
    │   ├── KdfError                 bad KDF input (salt too short)
    │   └── DecryptionFailed         AEAD tag did not verify
    ├── MessageError                 the decrypted message is unusable
    │   ├── MessageExpired           now > ts + ttl
    │   └── BadAddress               not a canonical user@host (DMPv2 from)
    ├── ScopeError                   TSIG key names and scopes (wire.md §7)
    │   └── KeyNameTooLong           first label over 63 octets
    ├── RegistrationError            registration ceremony (wire.md §8)
    │   ├── BadSubject               subject does not canonicalize
    │   └── BadProof                 signature or X25519 PoP invalid
    ├── SyncError                    anti-entropy (wire.md §9)
    │   ├── BadCursor                cursor string does not parse
    │   └── BadDigestEntry           a peer's digest row is invalid
    └── ClientError                  a client use case cannot proceed (exit 1)
        ├── UnknownContact           no such contact / recipient
        ├── IdentityNotFound         no valid identity record at the owners
        ├── AmbiguousIdentity        more than one distinct valid identity
        ├── PinMismatch              fetched key differs from the pinned one
        └── IntroNotFound            no such entry in the intro queue
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AmbiguousIdentity",
    "BadAddress",
    "BadCursor",
    "BadDigestEntry",
    "BadProof",
    "BadRecordSignature",
    "BadSubject",
    "ChunkError",
    "ChunkHashMismatch",
    "ChunkUnrecoverable",
    "ClientError",
    "ClockSkew",
    "CryptoError",
    "DecryptionFailed",
    "DmpError",
    "ErasureError",
    "ExpiryTooFar",
    "IdentityNotFound",
    "IntroNotFound",
    "KdfError",
    "KeyNameTooLong",
    "LowOrderKey",
    "MalformedRecord",
    "MessageError",
    "MessageExpired",
    "NotEnoughShares",
    "PinMismatch",
    "RecordError",
    "RecordExpired",
    "RecordMismatch",
    "RecordTooLong",
    "RegistrationError",
    "RotationChainError",
    "ScopeError",
    "SyncError",
    "UnknownContact",
    "UnsupportedVersion",
]


class DmpError(Exception):
    """dmp failed."""

    rcode: ClassVar[int] = 2  # SERVFAIL
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (self.__doc__ or "").strip())


# -- records ---------------------------------------------------------------


class RecordError(DmpError):
    """The record is unusable."""

    rcode = 1  # FORMERR
    http_status = 400


class MalformedRecord(RecordError):
    """The record is malformed."""


class RecordTooLong(MalformedRecord):
    """The record is longer than its wire cap."""


class UnsupportedVersion(MalformedRecord):
    """The record has an unknown magic, type or version."""


class BadRecordSignature(RecordError):
    """The record's signature does not verify."""


class LowOrderKey(BadRecordSignature):
    """The Ed25519 public key is a low-order point."""


class RecordExpired(RecordError):
    """The record has expired."""


class ExpiryTooFar(RecordError):
    """The record's expiry is further ahead than allowed."""


class ClockSkew(RecordError):
    """The record's timestamp is too far from the current time."""


class RecordMismatch(RecordError):
    """The record is valid but is not the one asked for."""


class RotationChainError(RecordError):
    """The key rotation chain from the pinned key cannot be trusted (wire.md §5.7)."""


# -- chunks and erasure ----------------------------------------------------


class ChunkError(DmpError):
    """The chunk is unusable."""

    rcode = 1
    http_status = 400


class ChunkHashMismatch(ChunkError):
    """The chunk's sha256 is not the one the manifest commits to."""


class ChunkUnrecoverable(ChunkError):
    """The chunk's Reed-Solomon decode or checksum failed."""


class ErasureError(DmpError):
    """Erasure coding failed."""

    http_status = 400


class NotEnoughShares(ErasureError):
    """Fewer than k valid erasure shares are available."""


# -- crypto and messages ---------------------------------------------------


class CryptoError(DmpError):
    """A cryptographic operation failed."""


class KdfError(CryptoError):
    """The key derivation input is invalid."""


class DecryptionFailed(CryptoError):
    """The ciphertext did not authenticate."""


class MessageError(DmpError):
    """The message is unusable."""

    http_status = 400


class MessageExpired(MessageError):
    """The message has expired."""


class BadAddress(MessageError):
    """The address is not a canonical user@host."""


# -- TSIG, registration, sync ----------------------------------------------


class ScopeError(DmpError):
    """The TSIG key or scope is invalid."""

    rcode = 5  # REFUSED
    http_status = 400


class KeyNameTooLong(ScopeError):
    """The TSIG key name's first label would exceed 63 octets."""


class RegistrationError(DmpError):
    """The registration request is invalid."""

    http_status = 400


class BadSubject(RegistrationError):
    """The subject is not a canonical user@host address."""


class BadProof(RegistrationError):
    """The registration signature or proof of possession is invalid."""

    http_status = 401


class SyncError(DmpError):
    """The anti-entropy exchange is invalid."""

    http_status = 400


class BadCursor(SyncError):
    """The sync cursor does not parse."""


class BadDigestEntry(SyncError):
    """The peer's digest entry is invalid."""


# -- client use cases --------------------------------------------------------


class ClientError(DmpError):
    """The client use case cannot proceed."""


class UnknownContact(ClientError):
    """No such contact or recipient."""


class IdentityNotFound(ClientError):
    """No valid identity record was found."""


class AmbiguousIdentity(ClientError):
    """More than one distinct valid identity record was found.

    Attributes:
        fingerprints: the 16-hex fingerprints of the candidates, sorted.
    """

    def __init__(self, message: str | None = None, fingerprints: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fingerprints = fingerprints


class PinMismatch(ClientError):
    """The fetched identity's key differs from the pinned key."""


class IntroNotFound(ClientError):
    """No such entry in the intro queue."""
