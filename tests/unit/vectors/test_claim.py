"""claim.json: claim records and their owners."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import attrs
import pytest

from dmp.domain.claim import (
    CLAIM_MAX_WIRE_LEN,
    CLAIM_PREFIX,
    Claim,
    sign_claim,
    verify_claim,
)
from dmp.domain.codec import THIRTY_DAYS_S
from dmp.domain.errors import (
    BadRecordSignature,
    ClockSkew,
    ExpiryTooFar,
    MalformedRecord,
    RecordExpired,
    RecordTooLong,
    UnsupportedVersion,
)
from dmp.domain.keys import ed25519_public_from_seed
from dmp.domain.names import claim_owner
from tests.signed_vectors import check_reference_wire, frame
from tests.vectors import h, load, params

V = load("claim.json")
KIND = "claim"


def record_of(case: dict[str, Any]) -> Claim:
    return Claim(
        msg_id=h(case["msg_id"]),
        sender_spk=h(case["sender"]["ed25519_public"]),
        sender_mailbox_domain=case["sender_mailbox_domain"],
        slot=case["slot"],
        ts=case["ts"],
        exp=case["exp"],
    )


def seed_of(case: dict[str, Any]) -> bytes:
    return h(case["sender"]["ed25519_seed"])


def rewire(blob: bytes) -> str:
    return frame(CLAIM_PREFIX, blob)


@pytest.mark.parametrize("case", params(V["records"]))
def test_claim_signs_and_verifies(case: dict[str, Any]) -> None:
    """Body, signature and wire are reproduced byte for byte and verify at verify.now."""
    record = record_of(case)
    assert record.body().hex() == case["body"]
    check_reference_wire(sign_claim(record, seed_of(case)), CLAIM_PREFIX, case, CLAIM_MAX_WIRE_LEN)
    assert verify_claim(case["wire"], now=case["verify"]["now"]) == record


@pytest.mark.parametrize("case", params(V["records"]))
def test_claim_owner(case: dict[str, Any]) -> None:
    """The owner is claim-<slot>.mb-<h12(recipient_id)>.<provider zone>."""
    recipient_id = hashlib.sha256(h(case["recipient_x25519_public"])).digest()
    assert recipient_id.hex() == case["recipient_id"]
    owner = claim_owner(recipient_id, case["slot"], case["provider_zone"])
    assert owner.to_text(omit_final_dot=True) == case["owner"]
    assert ed25519_public_from_seed(seed_of(case)).hex() == case["sender"]["ed25519_public"]


@pytest.mark.parametrize("case", params(V["records"]))
def test_claim_time_rules(case: dict[str, Any]) -> None:
    """Future skew over 300 s, exp ≤ now and exp more than 30 days ahead are refused."""
    wire, ts, exp = case["wire"], case["ts"], case["exp"]
    assert verify_claim(wire, now=ts - 300).ts == ts
    with pytest.raises(ClockSkew):
        verify_claim(wire, now=ts - 301)
    assert verify_claim(wire, now=ts - 10, ts_skew_s=10).ts == ts
    with pytest.raises(ClockSkew):
        verify_claim(wire, now=ts - 11, ts_skew_s=10)
    assert verify_claim(wire, now=exp - 1).exp == exp
    with pytest.raises(RecordExpired):
        verify_claim(wire, now=exp)
    far = attrs.evolve(record_of(case), exp=ts + THIRTY_DAYS_S + 1)
    with pytest.raises(ExpiryTooFar):
        verify_claim(sign_claim(far, seed_of(case)), now=ts)
    assert verify_claim(sign_claim(far, seed_of(case)), now=ts + 1).exp == far.exp


@pytest.mark.parametrize("case", params(V["records"]))
def test_claim_tampering_is_rejected(case: dict[str, Any]) -> None:
    """Changing a signed byte, the magic or the length is refused."""
    blob = base64.b64decode(case["wire"][len(CLAIM_PREFIX) :])
    now = case["verify"]["now"]
    flipped = bytearray(blob)
    flipped[7] ^= 0x01  # first byte of msg_id
    with pytest.raises(BadRecordSignature):
        verify_claim(rewire(bytes(flipped)), now=now)
    with pytest.raises(UnsupportedVersion):
        verify_claim(rewire(b"DMPCL02" + blob[7:]), now=now)
    with pytest.raises(MalformedRecord):
        verify_claim(rewire(blob[:-1]), now=now)
    with pytest.raises(MalformedRecord):
        verify_claim(case["wire"].replace(CLAIM_PREFIX, "v=dmp1;t=claims;"), now=now)


def test_claim_wire_cap_is_checked_first() -> None:
    """A wire over 255 bytes is RecordTooLong whatever it contains."""
    with pytest.raises(RecordTooLong):
        verify_claim(CLAIM_PREFIX + "A" * (CLAIM_MAX_WIRE_LEN - len(CLAIM_PREFIX) + 1), now=0)
    with pytest.raises(RecordTooLong):
        verify_claim(CLAIM_PREFIX + "é" * 121, now=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"msg_id": b"\x00" * 15}, "msg_id"),
        ({"sender_mailbox_domain": ""}, "1..43"),
        ({"sender_mailbox_domain": "a" * 44}, "1..43"),
        ({"sender_mailbox_domain": "a b"}, "space or control"),
        ({"sender_mailbox_domain": "a\x7fb"}, "space or control"),
        ({"slot": 10}, "slot"),
        ({"slot": -1}, "slot"),
        ({"exp": 5, "ts": 5}, "not after"),
        ({"ts": 1 << 64, "exp": (1 << 64) + 1}, "u64"),
    ],
)
def test_claim_sign_side_rules(change: dict[str, Any], message: str) -> None:
    """Out-of-range fields are refused before signing."""
    case = V["records"][0]
    record = attrs.evolve(record_of(case), **change)
    with pytest.raises(MalformedRecord, match=message):
        sign_claim(record, seed_of(case))


def test_claim_sign_refuses_foreign_seed() -> None:
    """The signing seed must belong to sender_spk."""
    case = V["records"][0]
    with pytest.raises(MalformedRecord, match="does not match"):
        sign_claim(record_of(case), b"\x07" * 32)
