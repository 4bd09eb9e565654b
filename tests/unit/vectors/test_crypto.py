"""crypto.json: Argon2id identity derivation and the X25519/HKDF/ChaCha20-Poly1305 primitive."""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain.crypto import (
    EncryptedMessage,
    IdentityKeys,
    KdfParams,
    decrypt_message,
    derive_identity,
    derive_message_key,
    encrypt_message,
    x25519,
)
from dmp.domain.errors import DecryptionFailed, KdfError
from tests.vectors import h, load, params

V = load("crypto.json")


def assert_identity(keys: IdentityKeys, block: dict[str, Any]) -> None:
    assert keys.x25519_private.hex() == block["x25519_private"]
    assert keys.x25519_public.hex() == block["x25519_public"]
    assert keys.ed25519_seed.hex() == block["ed25519_seed"]
    assert keys.ed25519_public.hex() == block["ed25519_public"]
    assert keys.user_id.hex() == block["user_id"]
    assert keys.mailbox_hash12 == block["mailbox_hash12"]


@pytest.mark.parametrize("case", params(V["argon2id_identity"]))
def test_argon2id_identity(case: dict[str, Any]) -> None:
    a = case["argon2"]
    assert a["type"] == "argon2id"
    assert a["version"] == 19
    kdf = KdfParams(a["time_cost"], a["memory_cost_kib"], a["parallelism"], a["hash_len"])
    salt = None if case["salt"] is None else h(case["salt"])
    passphrase = (
        h(case["passphrase_utf8"]).decode("utf-8")
        if "passphrase_utf8" in case
        else case["passphrase"]
    )
    assert_identity(derive_identity(passphrase, salt, kdf), case["identity"])


@pytest.mark.parametrize("case", params(V["argon2id_rejects"]))
def test_argon2id_rejects(case: dict[str, Any]) -> None:
    with pytest.raises(KdfError, match="salt must be at least 8 bytes"):
        derive_identity(case["passphrase"], h(case["salt"]), KdfParams(1, 8, 1, 32))


@pytest.mark.parametrize("case", params(V["from_x25519_seed"]))
def test_from_x25519_seed(case: dict[str, Any]) -> None:
    block = case["identity"]
    assert_identity(IdentityKeys.from_x25519_private(h(block["x25519_private"])), block)


@pytest.mark.parametrize("case", params(V["x25519_hkdf_chacha20poly1305"]))
def test_message_encryption_primitive(case: dict[str, Any]) -> None:
    shared = x25519(h(case["ephemeral_x25519_private"]), h(case["recipient_x25519_public"]))
    assert shared.hex() == case["shared_secret"]
    assert derive_message_key(shared).hex() == case["key"]
    aad = h(case["aad"])
    message = encrypt_message(
        h(case["recipient_x25519_public"]),
        h(case["plaintext"]),
        aad,
        ephemeral_private=h(case["ephemeral_x25519_private"]),
        nonce=h(case["nonce"]),
    )
    assert message.ephemeral_public.hex() == case["ephemeral_x25519_public"]
    assert message.ciphertext_and_tag.hex() == case["ciphertext_and_tag"]
    assert message.encode().hex() == case["encrypted_message"]
    decoded = EncryptedMessage.decode(h(case["encrypted_message"]))
    assert (
        decrypt_message(h(case["recipient_x25519_private"]), decoded, aad).hex()
        == case["plaintext"]
    )
    tampered = EncryptedMessage.decode(h(case["encrypted_message"])[:-1] + b"\x00")
    if tampered != decoded:
        with pytest.raises(DecryptionFailed):
            decrypt_message(h(case["recipient_x25519_private"]), tampered, aad)
