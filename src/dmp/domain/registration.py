"""Self-service registration proofs (layer: domain; pure).

The registration ceremony (wire.md §8) proves two things to a node:

* possession of the Ed25519 identity key: the client signs
  ``challenge(32) ‖ utf8(canonical subject) ‖ utf8(node) ‖ 0x01``
  (the trailing version byte is what the design doc leaves out);
* optionally, possession of the X25519 mailbox key (TSIG minting only):
  ``pop = HMAC-SHA256(key = X25519(x25519_private, server_x25519_public),
  msg = challenge ‖ utf8(canonical subject) ‖ x25519_public)``. The node
  computes the same shared secret from its per-challenge ephemeral private
  key and the client's X25519 public key.

Rules of this module:

* Subjects are canonicalized exactly like the reference: NFKC, strip,
  lowercase, ASCII only, then the ``<local>@<fqdn>`` shape. Every proof is
  over the canonical form; the functions here refuse a non-canonical subject
  instead of silently canonicalizing it, so a client cannot sign one string
  and send another.
* Failures raise :class:`BadSubject` / :class:`BadProof` (HTTP 400 / 401).
* Bearer tokens are ``dmp_v1_`` + unpadded base32 of 32 random bytes. The
  random bytes come in as a parameter; nodes store only ``sha256(token)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from typing import Final

from dmp.domain.crypto import x25519
from dmp.domain.errors import (
    BadProof,
    BadRecordSignature,
    BadSubject,
    DecryptionFailed,
    RegistrationError,
)
from dmp.domain.keys import sign, verify

__all__ = [
    "CHALLENGE_LEN",
    "CHALLENGE_LIFETIME_S",
    "KEY_LIFETIME_S",
    "POP_LEN",
    "SIGNING_PAYLOAD_VERSION",
    "TOKEN_DRAW_LEN",
    "TOKEN_PREFIX",
    "bearer_token_from_draw",
    "canonicalize_subject",
    "check_x25519_pop",
    "local_part",
    "sign_registration",
    "signing_payload",
    "token_hash",
    "verify_registration",
    "x25519_pop",
]

CHALLENGE_LEN: Final = 32
"""Bytes of a registration challenge (sent as 64 hex characters)."""
CHALLENGE_LIFETIME_S: Final = 60
"""A challenge's ``expires_at`` is its issue time plus this (wire.md §8 step 1)."""
KEY_LIFETIME_S: Final = 7_776_000
"""Default lifetime of self-service tokens and minted TSIG keys: 90 days
(``DMP_REGISTRATION_TOKEN_TTL_SECONDS``)."""
SIGNING_PAYLOAD_VERSION: Final = b"\x01"
POP_LEN: Final = 32
TOKEN_PREFIX: Final = "dmp_v1_"
TOKEN_DRAW_LEN: Final = 32
X25519_KEY_LEN: Final = 32

_SUBJECT_RE: Final = re.compile(
    r"[a-z0-9][a-z0-9._+-]*@[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+"
)


def canonicalize_subject(text: str) -> str:
    """Canonicalize a registration subject ``user@host`` (wire.md §8 step 2).

    NFKC-normalize, strip surrounding whitespace, lowercase, require ASCII,
    then require ``<local>@<fqdn>``: the local part starts with ``[a-z0-9]``
    and continues with ``[a-z0-9._+-]``; the host has at least two labels of
    ``[a-z0-9-]`` that neither start nor end with ``-``.

    Args:
        text: the subject as the user typed it.

    Returns:
        The canonical subject, e.g. ``"Alice@Example.COM "`` → ``"alice@example.com"``.

    Raises:
        BadSubject: not a string, non-ASCII after normalization, or not
            ``<local>@<fqdn>``.
    """
    if not isinstance(text, str):
        raise BadSubject(f"subject must be a string, got {type(text).__name__}")
    subject = unicodedata.normalize("NFKC", text).strip().lower()
    for position, char in enumerate(subject):
        if ord(char) > 0x7F:
            raise BadSubject(
                f"subject must be ASCII; got non-ASCII character at position {position}"
            )
    if _SUBJECT_RE.fullmatch(subject) is None:
        raise BadSubject(f"subject does not match <local>@<fqdn> shape: {subject!r}")
    return subject


def _require_canonical(subject: str) -> str:
    canonical = canonicalize_subject(subject)
    if canonical != subject:
        raise BadSubject(
            f"subject {subject!r} is not canonical (expected {canonical!r}); "
            "registration proofs are over the canonical form"
        )
    return subject


def local_part(subject: str) -> str:
    """The local part of a canonical subject (before the ``@``).

    Raises:
        BadSubject: ``subject`` is not canonical.
    """
    return _require_canonical(subject).partition("@")[0]


def _require_challenge(challenge: bytes) -> bytes:
    if len(challenge) != CHALLENGE_LEN:
        raise RegistrationError(f"challenge must be {CHALLENGE_LEN} bytes, got {len(challenge)}")
    return challenge


def signing_payload(challenge: bytes, subject: str, node: str) -> bytes:
    """The bytes a registrant signs with its Ed25519 identity key (wire.md §8 step 2).

    Args:
        challenge: the 32 challenge bytes (hex-decoded from the challenge response).
        subject: the canonical subject (see :func:`canonicalize_subject`).
        node: the node's ``DMP_NODE_HOSTNAME`` as returned in the challenge.

    Returns:
        ``challenge ‖ utf8(subject) ‖ utf8(node) ‖ 0x01``.

    Raises:
        RegistrationError: the challenge is not 32 bytes.
        BadSubject: ``subject`` is not canonical.
    """
    _require_challenge(challenge)
    _require_canonical(subject)
    return challenge + subject.encode("utf-8") + node.encode("utf-8") + SIGNING_PAYLOAD_VERSION


def sign_registration(ed25519_seed: bytes, payload: bytes) -> bytes:
    """Sign a :func:`signing_payload` with the identity's 32-byte Ed25519 seed.

    Returns:
        The 64-byte RFC 8032 signature (deterministic).

    Raises:
        ValueError: the seed is not 32 bytes.
    """
    return sign(ed25519_seed, payload)


def verify_registration(ed25519_public: bytes, payload: bytes, signature: bytes) -> None:
    """Check a registration signature (wire.md §8 step 5, the 401 check).

    Args:
        ed25519_public: the registrant's 32-byte Ed25519 public key (``ed25519_spk``).
        payload: the :func:`signing_payload` the node rebuilt from the
            canonical subject, the consumed challenge and its own hostname.
        signature: the 64-byte signature sent by the registrant.

    Raises:
        BadProof: the key is malformed or low-order, or the signature does
            not verify.
    """
    try:
        verify(ed25519_public, payload, signature)
    except BadRecordSignature as exc:  # includes LowOrderKey
        raise BadProof("signature verification failed") from exc


def _require_x25519_key(key: bytes, what: str) -> bytes:
    if len(key) != X25519_KEY_LEN:
        raise BadProof(f"{what} must be {X25519_KEY_LEN} bytes, got {len(key)}")
    return key


def _pop_message(challenge: bytes, subject: str, x25519_public: bytes) -> bytes:
    _require_challenge(challenge)
    _require_canonical(subject)
    _require_x25519_key(x25519_public, "x25519_pub")
    return challenge + subject.encode("utf-8") + x25519_public


def x25519_pop(
    x25519_private: bytes,
    server_x25519_public: bytes,
    challenge: bytes,
    subject: str,
    x25519_public: bytes,
) -> bytes:
    """The registrant's X25519 proof of possession (client side; wire.md §8 step 4).

    Args:
        x25519_private: the registrant's 32-byte X25519 private key.
        server_x25519_public: the per-challenge ``server_x25519_pub`` (32 bytes).
        challenge: the 32 challenge bytes.
        subject: the canonical subject.
        x25519_public: the registrant's 32-byte X25519 public key.

    Returns:
        ``HMAC-SHA256(X25519(x25519_private, server_x25519_public),
        challenge ‖ utf8(subject) ‖ x25519_public)``, 32 bytes.

    Raises:
        RegistrationError: the challenge is not 32 bytes.
        BadSubject: ``subject`` is not canonical.
        BadProof: a key is malformed or the server key is low-order.
    """
    message = _pop_message(challenge, subject, x25519_public)
    _require_x25519_key(x25519_private, "x25519 private key")
    _require_x25519_key(server_x25519_public, "server_x25519_pub")
    try:
        shared = x25519(x25519_private, server_x25519_public)
    except DecryptionFailed as exc:
        raise BadProof("server_x25519_pub is a low-order point") from exc
    return hmac.new(shared, message, hashlib.sha256).digest()


def check_x25519_pop(
    server_x25519_private: bytes,
    x25519_public: bytes,
    challenge: bytes,
    subject: str,
    pop: bytes,
) -> None:
    """Check a registrant's X25519 proof of possession (node side; wire.md §8 step 4).

    The node derives the same shared secret as the client,
    ``X25519(server_x25519_private, x25519_public)``, and compares the HMAC
    in constant time.

    Args:
        server_x25519_private: the node's per-challenge ephemeral private key.
        x25519_public: the X25519 public key the registrant claims (32 bytes).
        challenge: the 32 challenge bytes.
        subject: the canonical subject.
        pop: the 32-byte ``x25519_pop`` sent by the registrant.

    Raises:
        RegistrationError: the challenge is not 32 bytes.
        BadSubject: ``subject`` is not canonical.
        BadProof: the proof does not match, or ``x25519_public`` is
            malformed or low-order.
    """
    message = _pop_message(challenge, subject, x25519_public)
    _require_x25519_key(server_x25519_private, "server x25519 private key")
    try:
        shared = x25519(server_x25519_private, x25519_public)
    except DecryptionFailed as exc:
        raise BadProof("x25519_pub is a low-order point") from exc
    expected = hmac.new(shared, message, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, pop):
        raise BadProof(
            "x25519_pop verification failed: registrant did not prove possession "
            "of the claimed X25519 key"
        )


def bearer_token_from_draw(draw: bytes) -> str:
    """A bearer token from 32 random bytes (behaviour.md §b ``token issue``; wire.md §8 step 3).

    Args:
        draw: 32 random bytes from the caller's randomness source.

    Returns:
        ``"dmp_v1_"`` + unpadded RFC 4648 base32 of ``draw`` (52 characters).

    Raises:
        ValueError: ``draw`` is not 32 bytes.
    """
    if len(draw) != TOKEN_DRAW_LEN:
        raise ValueError(f"token draw must be {TOKEN_DRAW_LEN} bytes, got {len(draw)}")
    return TOKEN_PREFIX + base64.b32encode(draw).decode("ascii").rstrip("=")


def token_hash(token: str) -> str:
    """The stored form of a bearer token: ``sha256(utf8(token))`` as lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
