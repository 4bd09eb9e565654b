"""identity.json: identity records and their owner names."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import attrs
import pytest

from dmp.domain.codec import join_txt, split_txt
from dmp.domain.crypto import IdentityKeys
from dmp.domain.errors import BadRecordSignature, MalformedRecord
from dmp.domain.identity import (
    IdentityRecord,
    identity_fingerprint,
    sign_identity,
    verify_identity,
)
from dmp.domain.keys import ED25519_SIG_LEN, ed25519_public_from_seed
from dmp.domain.names import identity_owner, prekey_owner, rotation_owner, zone_identity_owner
from tests.vectors import h, load, params

V = load("identity.json")
KIND = "identity"


def record_of(case: dict[str, Any]) -> IdentityRecord:
    key = case["key"]
    return IdentityRecord(
        username=h(case["username_utf8"]).decode("utf-8"),
        x25519_public=h(key["x25519_public"]),
        ed25519_public=h(key["ed25519_public"]),
        ts=case["ts"],
        versions=tuple(case["versions"]),
    )


@pytest.mark.parametrize("case", params(V["records"]))
def test_identity_record_signs_and_verifies(case: dict[str, Any]) -> None:
    """The record's body, signature and wire are reproduced byte for byte and verify back."""
    record = record_of(case)
    assert record.username == case["username"]
    assert record.body().hex() == case["body"]
    wire = sign_identity(record, h(case["key"]["ed25519_seed"]))
    assert wire == case["wire"]
    assert len(wire.encode("utf-8")) == case["wire_len"]
    assert verify_identity(case["wire"]) == record
    if "txt_strings" in case:
        strings = tuple(s.encode("utf-8") for s in case["txt_strings"])
        assert join_txt(strings) == case["wire"]
        assert split_txt(case["wire"]) == strings


@pytest.mark.parametrize("case", params(V["records"]))
def test_identity_key_block(case: dict[str, Any]) -> None:
    """The identity block is consistent: keys derive from the X25519 private key."""
    key = case["key"]
    keys = IdentityKeys.from_x25519_private(h(key["x25519_private"]))
    assert keys.ed25519_seed.hex() == key["ed25519_seed"]
    assert ed25519_public_from_seed(h(key["ed25519_seed"])).hex() == key["ed25519_public"]
    assert keys.x25519_public.hex() == key["x25519_public"]


@pytest.mark.parametrize("case", params(V["records"]))
def test_identity_signature_matches_vector(case: dict[str, Any]) -> None:
    """The wire's trailing 64 bytes are the vector's signature over the vector's body."""
    blob = base64.b64decode(case["wire"].split(";d=", 1)[1])
    assert blob[:-ED25519_SIG_LEN].hex() == case["body"]
    assert blob[-ED25519_SIG_LEN:].hex() == case["signature"]


@pytest.mark.parametrize("case", params(V["records"]))
def test_identity_owner_names(case: dict[str, Any]) -> None:
    """Hashed, zone-anchored, prekey and rotation owners follow wire.md §2."""
    username, domain = case["username"], case["domain"]
    hashed = identity_owner(username, domain)
    anchored = zone_identity_owner(domain)
    assert hashed.to_text(omit_final_dot=True) == case["owner_hashed"]
    assert anchored.to_text(omit_final_dot=True) == case["owner_zone_anchored"]
    assert prekey_owner(username, domain).to_text(omit_final_dot=True) == case["prekey_owner"]
    assert rotation_owner(hashed).to_text(omit_final_dot=True) == case["rotation_owner_hashed"]
    assert (
        rotation_owner(anchored).to_text(omit_final_dot=True)
        == case["rotation_owner_zone_anchored"]
    )


@pytest.mark.parametrize("case", params(V["records"]))
def test_identity_fingerprint(case: dict[str, Any]) -> None:
    """The fingerprint is the first 16 hex of sha256(x25519 ‖ ed25519)."""
    record = record_of(case)
    x, ed = record.x25519_public, record.ed25519_public
    expected = hashlib.sha256(h(case["key"]["x25519_public"] + case["key"]["ed25519_public"]))
    assert identity_fingerprint(x, ed) == expected.hexdigest()[:16]
    assert record.fingerprint == identity_fingerprint(x, ed)
    assert len(record.fingerprint) == 16
    assert identity_fingerprint(ed, x) != record.fingerprint


@pytest.mark.parametrize("case", params(V["records"]))
def test_identity_tampering_is_rejected(case: dict[str, Any]) -> None:
    """A re-signed record under a different key fails against the embedded key."""
    record = record_of(case)
    other_seed = hashlib.sha256(b"another signer").digest()
    with pytest.raises(MalformedRecord, match="does not match"):
        sign_identity(record, other_seed)
    forged_record = attrs.evolve(record, ed25519_public=ed25519_public_from_seed(other_seed))
    forged = sign_identity(forged_record, other_seed)
    assert verify_identity(forged) == forged_record
    # Splice the original key back in: the signature no longer matches it.
    blob = bytearray(base64.b64decode(forged.split(";d=", 1)[1]))
    start = 1 + blob[0] + 32
    blob[start : start + 32] = record.ed25519_public
    spliced = "v=dmp1;t=identity;d=" + base64.b64encode(bytes(blob)).decode()
    with pytest.raises(BadRecordSignature):
        verify_identity(spliced)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"username": ""}, "username"),
        ({"username": "x" * 65}, "username"),
        ({"username": "é" * 33}, "username"),
        ({"versions": ()}, "empty"),
        ({"versions": (2, 1)}, "ascending"),
        ({"versions": (1, 1)}, "ascending"),
        ({"versions": (1, 256)}, "u8"),
        ({"ts": -1}, "u64"),
        ({"ts": 1 << 64}, "u64"),
        ({"x25519_public": b"\x00" * 31}, "32 bytes"),
    ],
)
def test_identity_sign_side_rules(change: dict[str, Any], message: str) -> None:
    """Out-of-range fields are refused before signing."""
    case = V["records"][0]
    record = attrs.evolve(record_of(case), **change)
    with pytest.raises(MalformedRecord, match=message):
        sign_identity(record, h(case["key"]["ed25519_seed"]))


def test_identity_64_byte_username_is_signable() -> None:
    """A username of exactly 64 UTF-8 bytes is the largest allowed."""
    case = V["records"][0]
    record = attrs.evolve(record_of(case), username="é" * 32)
    assert verify_identity(sign_identity(record, h(case["key"]["ed25519_seed"]))) == record
