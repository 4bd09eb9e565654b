"""prekey.json: one-time prekey records."""

from __future__ import annotations

import base64
from typing import Any

import attrs
import pytest

from dmp.domain.codec import THIRTY_DAYS_S
from dmp.domain.crypto import x25519_public
from dmp.domain.errors import (
    BadRecordSignature,
    ExpiryTooFar,
    LowOrderKey,
    MalformedRecord,
    RecordExpired,
)
from dmp.domain.keys import ED25519_SIG_LEN, ed25519_public_from_seed
from dmp.domain.names import prekey_owner
from dmp.domain.prekey import PREKEY_BODY_LEN, Prekey, sign_prekey, verify_prekey
from tests.vectors import h, load, params

V = load("prekey.json")
KIND = "prekey"


def record_of(case: dict[str, Any]) -> Prekey:
    return Prekey(prekey_id=case["prekey_id"], x25519_public=h(case["public_key"]), exp=case["exp"])


def signer_spk(case: dict[str, Any]) -> bytes:
    return h(case["signer"]["ed25519_public"])


@pytest.mark.parametrize("case", params(V["records"]))
def test_prekey_signs_and_verifies(case: dict[str, Any]) -> None:
    """Body, signature and wire are reproduced byte for byte and verify at verify.now."""
    record = record_of(case)
    assert record.prekey_id == int(case["prekey_id_hex"], 16)
    body = record.body()
    assert len(body) == PREKEY_BODY_LEN
    assert body.hex() == case["body"]
    wire = sign_prekey(record, h(case["signer"]["ed25519_seed"]))
    assert wire == case["wire"]
    blob = base64.b64decode(wire.split(";d=", 1)[1])
    assert blob[-ED25519_SIG_LEN:].hex() == case["signature"]
    assert verify_prekey(case["wire"], signer_spk(case), now=case["verify"]["now"]) == record


@pytest.mark.parametrize("case", params(V["records"]))
def test_prekey_keys_and_owner(case: dict[str, Any]) -> None:
    """The public key matches the private key; the owner follows wire.md §2."""
    assert x25519_public(h(case["prekey_private"])).hex() == case["public_key"]
    assert ed25519_public_from_seed(h(case["signer"]["ed25519_seed"])) == signer_spk(case)
    owner = prekey_owner(case["username"], case["domain"])
    assert owner.to_text(omit_final_dot=True) == case["owner"]


@pytest.mark.parametrize("case", params(V["records"]))
def test_prekey_time_rules(case: dict[str, Any]) -> None:
    """Usable up to and including exp, refused after it and more than 30 days before it."""
    wire, spk, exp = case["wire"], signer_spk(case), case["exp"]
    assert verify_prekey(wire, spk, now=exp).exp == exp
    assert verify_prekey(wire, spk, now=exp - THIRTY_DAYS_S).exp == exp
    with pytest.raises(RecordExpired):
        verify_prekey(wire, spk, now=exp + 1)
    with pytest.raises(ExpiryTooFar):
        verify_prekey(wire, spk, now=exp - THIRTY_DAYS_S - 1)


@pytest.mark.parametrize("case", params(V["records"]))
def test_prekey_wrong_signer(case: dict[str, Any]) -> None:
    """The signature is checked against the caller's key, which is not embedded."""
    now = case["verify"]["now"]
    other = ed25519_public_from_seed(b"\x01" * 32)
    with pytest.raises(BadRecordSignature):
        verify_prekey(case["wire"], other, now=now)
    with pytest.raises(LowOrderKey):
        verify_prekey(case["wire"], b"\x00" * 32, now=now)
    with pytest.raises(LowOrderKey):
        verify_prekey(case["wire"], signer_spk(case)[:31], now=now)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prekey_id": 0}, "prekey_id"),
        ({"prekey_id": 1 << 32}, "prekey_id"),
        ({"x25519_public": b"\x01" * 33}, "32 bytes"),
        ({"exp": -1}, "u64"),
    ],
)
def test_prekey_sign_side_rules(change: dict[str, Any], message: str) -> None:
    """Out-of-range fields are refused before signing."""
    case = V["records"][0]
    record = attrs.evolve(record_of(case), **change)
    with pytest.raises(MalformedRecord, match=message):
        sign_prekey(record, h(case["signer"]["ed25519_seed"]))
