"""Identity derivation and the message encryption primitive (layer: domain).

* Identity (wire.md §3.1): ``x25519_private = Argon2id(passphrase, salt)``,
  used as-is (X25519 clamps internally); ``ed25519_seed =
  sha256(x25519_private ‖ b"DMP-v1-Ed25519-signing-key")``; ``user_id =
  sha256(x25519_public)`` (the ``recipient_id``); ``mailbox_hash12 =
  sha256(user_id).hex[:12]``.
* Message encryption (wire.md §3.2): ``shared = X25519(ephemeral_private,
  recipient_public)``; ``key = HKDF-SHA256(shared, salt=b"DMP-v1",
  info=b"DMP-Message-Encryption", L=32)``; ChaCha20-Poly1305 IETF;
  ``encrypted_message = ephemeral_public ‖ nonce(12) ‖ ciphertext ‖ tag``.

Randomness (ephemeral keys, nonces) always comes in as bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import argon2.low_level
import attrs
import nacl.bindings
import nacl.exceptions

from dmp.domain.errors import DecryptionFailed, KdfError, MalformedRecord
from dmp.domain.keys import ed25519_public_from_seed, sign

__all__ = [
    "DEFAULT_KDF_PARAMS",
    "DEFAULT_SALT",
    "ED25519_DERIVATION_LABEL",
    "EncryptedMessage",
    "IdentityKeys",
    "KdfParams",
    "aead_decrypt",
    "aead_encrypt",
    "decrypt_message",
    "derive_identity",
    "derive_message_key",
    "derive_x25519_private",
    "encrypt_message",
    "hkdf_sha256",
    "x25519",
    "x25519_public",
]

DEFAULT_SALT: Final = b"DMP-default-v2-argon2id"
ED25519_DERIVATION_LABEL: Final = b"DMP-v1-Ed25519-signing-key"
HKDF_SALT: Final = b"DMP-v1"
HKDF_INFO: Final = b"DMP-Message-Encryption"
NONCE_LEN: Final = 12
MIN_SALT_LEN: Final = 8


@attrs.frozen
class KdfParams:
    """Argon2id parameters (argon2 v1.3). Memory is in KiB."""

    time_cost: int = 2
    memory_cost_kib: int = 32768
    parallelism: int = 2
    hash_len: int = 32


DEFAULT_KDF_PARAMS: Final = KdfParams()


def derive_x25519_private(
    passphrase: str, salt: bytes | None, params: KdfParams = DEFAULT_KDF_PARAMS
) -> bytes:
    """Argon2id of the UTF-8 passphrase (used verbatim) into a 32-byte X25519 private key.

    Args:
        passphrase: used exactly as given (no stripping here).
        salt: raw salt bytes (≥ 8); ``None`` selects :data:`DEFAULT_SALT`.
        params: Argon2id parameters.

    Raises:
        KdfError: the salt is shorter than 8 bytes.
    """
    used = DEFAULT_SALT if salt is None else salt
    if len(used) < MIN_SALT_LEN:
        raise KdfError("salt must be at least 8 bytes")
    return argon2.low_level.hash_secret_raw(
        secret=passphrase.encode("utf-8"),
        salt=used,
        time_cost=params.time_cost,
        memory_cost=params.memory_cost_kib,
        parallelism=params.parallelism,
        hash_len=params.hash_len,
        type=argon2.low_level.Type.ID,
        version=19,
    )


def x25519(private_key: bytes, public_key: bytes) -> bytes:
    """The X25519 shared secret (RFC 7748).

    Raises:
        CryptoError subclass DecryptionFailed: the result is all zero
            (a low-order public key).
    """
    try:
        return bytes(nacl.bindings.crypto_scalarmult(private_key, public_key))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError) as exc:
        raise DecryptionFailed("X25519 produced the all-zero shared secret") from exc


def x25519_public(private_key: bytes) -> bytes:
    """The X25519 public key for a 32-byte private key."""
    return bytes(nacl.bindings.crypto_scalarmult_base(private_key))


@attrs.frozen
class IdentityKeys:
    """A user's key material, all derived from one X25519 private key.

    Attributes:
        x25519_private: 32 bytes (Argon2id output, or any seed).
        x25519_public: 32 bytes.
        ed25519_seed: 32 bytes, ``sha256(x25519_private ‖ label)``.
        ed25519_public: 32 bytes (the ``signing public key``, ``spk``).
        user_id: ``sha256(x25519_public)``, also the ``recipient_id``.
    """

    x25519_private: bytes = attrs.field(repr=False)
    x25519_public: bytes
    ed25519_seed: bytes = attrs.field(repr=False)
    ed25519_public: bytes
    user_id: bytes

    @classmethod
    def from_x25519_private(cls, x25519_private: bytes) -> IdentityKeys:
        """Derive every key from a 32-byte X25519 private key (wire.md §3.1)."""
        if len(x25519_private) != 32:
            raise KdfError("X25519 private key must be 32 bytes")
        pub = x25519_public(x25519_private)
        seed = hashlib.sha256(x25519_private + ED25519_DERIVATION_LABEL).digest()
        return cls(
            x25519_private=x25519_private,
            x25519_public=pub,
            ed25519_seed=seed,
            ed25519_public=ed25519_public_from_seed(seed),
            user_id=hashlib.sha256(pub).digest(),
        )

    @property
    def mailbox_hash12(self) -> str:
        """``sha256(user_id).hex[:12]``, the ``mb-`` label of this user's mailbox."""
        return hashlib.sha256(self.user_id).hexdigest()[:12]

    def sign(self, body: bytes) -> bytes:
        """Ed25519-sign ``body`` with this identity's signing key."""
        return sign(self.ed25519_seed, body)


def derive_identity(
    passphrase: str, salt: bytes | None, params: KdfParams = DEFAULT_KDF_PARAMS
) -> IdentityKeys:
    """Passphrase and salt to :class:`IdentityKeys` (wire.md §3.1).

    Raises:
        KdfError: the salt is shorter than 8 bytes.
    """
    return IdentityKeys.from_x25519_private(derive_x25519_private(passphrase, salt, params))


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) extract-then-expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def derive_message_key(shared_secret: bytes) -> bytes:
    """The 32-byte AEAD key for one message (wire.md §3.2)."""
    return hkdf_sha256(shared_secret, HKDF_SALT, HKDF_INFO, 32)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 IETF; returns ``ciphertext ‖ tag(16)``."""
    return bytes(
        nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    )


def aead_decrypt(key: bytes, nonce: bytes, ciphertext_and_tag: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`.

    Raises:
        DecryptionFailed: the tag does not verify.
    """
    try:
        return bytes(
            nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext_and_tag, aad, nonce, key
            )
        )
    except nacl.exceptions.CryptoError as exc:
        raise DecryptionFailed("message does not authenticate") from exc


@attrs.frozen
class EncryptedMessage:
    """``ephemeral_public(32) ‖ nonce(12) ‖ ciphertext_and_tag`` (wire.md §3.2)."""

    ephemeral_public: bytes
    nonce: bytes
    ciphertext_and_tag: bytes

    def encode(self) -> bytes:
        return self.ephemeral_public + self.nonce + self.ciphertext_and_tag

    @classmethod
    def decode(cls, data: bytes) -> EncryptedMessage:
        """Raises: MalformedRecord: fewer than 44 bytes."""
        if len(data) < 32 + NONCE_LEN:
            raise MalformedRecord("encrypted message shorter than 44 bytes")
        return cls(data[:32], data[32 : 32 + NONCE_LEN], data[32 + NONCE_LEN :])


def encrypt_message(
    recipient_public: bytes,
    plaintext: bytes,
    aad: bytes,
    *,
    ephemeral_private: bytes,
    nonce: bytes,
) -> EncryptedMessage:
    """Encrypt to an X25519 public key with a caller-supplied ephemeral key and nonce."""
    shared = x25519(ephemeral_private, recipient_public)
    key = derive_message_key(shared)
    return EncryptedMessage(
        ephemeral_public=x25519_public(ephemeral_private),
        nonce=nonce,
        ciphertext_and_tag=aead_encrypt(key, nonce, plaintext, aad),
    )


def decrypt_message(recipient_private: bytes, message: EncryptedMessage, aad: bytes) -> bytes:
    """Decrypt with the recipient's X25519 private key (long-term or prekey).

    Raises:
        DecryptionFailed: wrong key, tampering, or a low-order ephemeral key.
    """
    shared = x25519(recipient_private, message.ephemeral_public)
    key = derive_message_key(shared)
    return aead_decrypt(key, message.nonce, message.ciphertext_and_tag, aad)
