"""heartbeat.json: heartbeats and the seen-graph."""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import attrs
import pytest

from dmp.domain.codec import THIRTY_DAYS_S, join_txt, split_txt
from dmp.domain.errors import (
    BadRecordSignature,
    ClockSkew,
    ExpiryTooFar,
    MalformedRecord,
    RecordExpired,
    RecordTooLong,
    UnsupportedVersion,
)
from dmp.domain.heartbeat import (
    CAP_CLAIM_PROVIDER,
    HEARTBEAT_MAX_WIRE_LEN,
    HEARTBEAT_PREFIX,
    Heartbeat,
    sign_heartbeat,
    verify_heartbeat,
)
from dmp.domain.keys import ED25519_SIG_LEN, ed25519_public_from_seed
from dmp.domain.names import heartbeat_owner, seen_owner
from tests.signed_vectors import check_reference_wire, frame
from tests.vectors import h, load, params

V = load("heartbeat.json")
KIND = "heartbeat"


def magic_version_of(case: dict[str, Any]) -> int:
    magic = h(case["body"])[:7]
    assert magic in (b"DMPHB03", b"DMPHB02"), magic
    return int(magic[-1:].decode("ascii"))


def record_of(case: dict[str, Any]) -> Heartbeat:
    return Heartbeat(
        endpoint=case["endpoint"],
        operator_spk=h(case["operator"]["ed25519_public"]),
        version=case["version"],
        capabilities=case["capabilities"],
        claim_provider_zone=case["claim_provider_zone"],
        ts=case["ts"],
        exp=case["exp"],
        magic_version=magic_version_of(case),
    )


def seed_of(case: dict[str, Any]) -> bytes:
    return h(case["operator"]["ed25519_seed"])


def verify_at(case: dict[str, Any], wire: str | None = None) -> Heartbeat:
    check = case["verify"]
    return verify_heartbeat(
        case["wire"] if wire is None else wire,
        now=check["now"],
        ts_skew_s=check["ts_skew_seconds"],
    )


def rewire(blob: bytes) -> str:
    return frame(HEARTBEAT_PREFIX, blob)


@pytest.mark.parametrize("case", params(V["records"]))
def test_heartbeat_signs_and_verifies(case: dict[str, Any]) -> None:
    """Body, signature and wire are reproduced byte for byte and verify at verify.now."""
    record = record_of(case)
    assert record.body().hex() == case["body"]
    wire = sign_heartbeat(record, seed_of(case))
    check_reference_wire(wire, HEARTBEAT_PREFIX, case, HEARTBEAT_MAX_WIRE_LEN)
    assert verify_at(case) == record
    assert ed25519_public_from_seed(seed_of(case)) == record.operator_spk
    if "txt_strings" in case:
        strings = tuple(s.encode("utf-8") for s in case["txt_strings"])
        assert join_txt(strings) == case["wire"]
        assert split_txt(case["wire"]) == strings


@pytest.mark.parametrize("case", params(V["records"]))
def test_heartbeat_owners_and_roles(case: dict[str, Any]) -> None:
    """Owners follow wire.md §2; the claim-provider role is bit 0 only."""
    zone = case["served_zone"]
    assert heartbeat_owner(zone).to_text(omit_final_dot=True) == case["owner_heartbeat"]
    assert seen_owner(zone).to_text(omit_final_dot=True) == case["owner_seen"]
    record = verify_at(case)
    assert record.is_claim_provider == bool(case["capabilities"] & CAP_CLAIM_PROVIDER)
    if case["claim_provider_zone"]:
        assert record.provider_zone == case["claim_provider_zone"]
    else:
        assert record.provider_zone == urllib.parse.urlsplit(case["endpoint"]).hostname


@pytest.mark.parametrize("case", params(V["records"]))
def test_heartbeat_time_rules(case: dict[str, Any]) -> None:
    """|ts − now| over the skew, exp ≤ now and exp beyond 30 days are refused."""
    wire, ts, exp = case["wire"], case["ts"], case["exp"]
    if exp > ts + 300:
        assert verify_heartbeat(wire, now=ts + 300).ts == ts
    else:
        with pytest.raises(RecordExpired):
            verify_heartbeat(wire, now=ts + 300)
    assert verify_heartbeat(wire, now=ts - 300).ts == ts
    with pytest.raises(ClockSkew):
        verify_heartbeat(wire, now=ts - 301)
    with pytest.raises(ClockSkew):
        verify_heartbeat(wire, now=ts + 301)
    with pytest.raises(ClockSkew):
        verify_heartbeat(wire, now=ts + 11, ts_skew_s=10)
    short = attrs.evolve(record_of(case), exp=ts + 1)
    with pytest.raises(RecordExpired):
        verify_heartbeat(sign_heartbeat(short, seed_of(case)), now=ts + 1)
    far = attrs.evolve(record_of(case), exp=ts + THIRTY_DAYS_S + 1)
    with pytest.raises(ExpiryTooFar):
        verify_heartbeat(sign_heartbeat(far, seed_of(case)), now=ts)
    assert verify_heartbeat(sign_heartbeat(far, seed_of(case)), now=ts + 1).exp == far.exp


@pytest.mark.parametrize("case", params(V["records"]))
def test_heartbeat_tampering_is_rejected(case: dict[str, Any]) -> None:
    """A flipped signed byte, an unknown magic, truncation and a bad prefix are refused."""
    blob = base64.b64decode(case["wire"][len(HEARTBEAT_PREFIX) :])
    flipped = bytearray(blob)
    flipped[-ED25519_SIG_LEN - 1] ^= 0x01  # last byte of exp
    with pytest.raises(BadRecordSignature):
        verify_at(case, rewire(bytes(flipped)))
    with pytest.raises(UnsupportedVersion):
        verify_at(case, rewire(b"DMPHB04" + blob[7:]))
    with pytest.raises(MalformedRecord):
        verify_at(case, rewire(blob[:-1]))
    with pytest.raises(MalformedRecord):
        verify_at(case, case["wire"].replace("t=heartbeat;", "t=heartbeat;d="))
    with pytest.raises(RecordTooLong):
        verify_at(case, case["wire"] + "=" * (HEARTBEAT_MAX_WIRE_LEN + 1 - len(case["wire"])))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": "https://example.com/"}, "path"),
        ({"endpoint": "https://127.0.0.1"}, "public"),
        ({"version": "v" * 33}, "version"),
        ({"version": "é"}, "version"),
        ({"capabilities": 0x10000}, "u16"),
        ({"claim_provider_zone": "z" * 65}, "exceeds 64"),
        ({"claim_provider_zone": "a b"}, "printable"),
        ({"exp": 10, "ts": 10}, "not after"),
    ],
)
def test_heartbeat_sign_side_rules(change: dict[str, Any], message: str) -> None:
    """Out-of-range fields are refused before signing."""
    case = V["records"][0]
    record = attrs.evolve(record_of(case), **change)
    with pytest.raises(MalformedRecord, match=message):
        sign_heartbeat(record, seed_of(case))


def test_heartbeat_sign_side_magic_and_seed() -> None:
    """Only magic versions 2 and 3 exist; v2 has no zone; the seed must match."""
    case = V["records"][0]
    record = record_of(case)
    with pytest.raises(UnsupportedVersion):
        sign_heartbeat(attrs.evolve(record, magic_version=1), seed_of(case))
    with pytest.raises(MalformedRecord, match="DMPHB02"):
        sign_heartbeat(attrs.evolve(record, magic_version=2), seed_of(case))
    with pytest.raises(MalformedRecord, match="does not match"):
        sign_heartbeat(record, b"\x09" * 32)


# -- seen-graph (wire.md §5.11) ---------------------------------------------

SEEN = V["seen_graph"]


def _seen_verify(wire: str) -> Heartbeat:
    check = SEEN["verify"]
    return verify_heartbeat(wire, now=check["now"], ts_skew_s=check["ts_skew_seconds"])


def _values(owner: str) -> list[str]:
    values: list[str] | None = SEEN["rrsets"].get(owner)
    return values or []


@pytest.mark.parametrize("node", sorted(SEEN["nodes"]))
def test_seen_graph_own_heartbeat(node: str) -> None:
    """Each node's heartbeat RRset holds its one signed heartbeat, describing that node."""
    spec = SEEN["nodes"][node]
    owner = heartbeat_owner(spec["zone"]).to_text(omit_final_dot=True)
    assert owner in SEEN["rrsets"]
    values = _values(owner)
    assert len(values) == 1
    record = _seen_verify(values[0])
    assert record.operator_spk.hex() == spec["operator"]["ed25519_public"]
    assert record.endpoint == spec["endpoint"]
    assert record.version == spec["version"]
    assert record.capabilities == spec["capabilities"]
    assert record.claim_provider_zone == spec["zone"]
    assert record.magic_version == 3


@pytest.mark.parametrize("node", sorted(SEEN["nodes"]))
def test_seen_graph_seen_wires(node: str) -> None:
    """Seen wires re-verify, exclude the publisher and are a peer's heartbeat verbatim."""
    spec = SEEN["nodes"][node]
    owner = seen_owner(spec["zone"]).to_text(omit_final_dot=True)
    assert owner in SEEN["rrsets"]
    own_spk = spec["operator"]["ed25519_public"]
    for wire in _values(owner):
        record = _seen_verify(wire)
        assert record.operator_spk.hex() != own_spk
        peers = [
            other
            for other in SEEN["nodes"].values()
            if other["operator"]["ed25519_public"] == record.operator_spk.hex()
        ]
        assert len(peers) == 1
        peer_owner = heartbeat_owner(peers[0]["zone"]).to_text(omit_final_dot=True)
        assert wire in _values(peer_owner)


def test_seen_graph_has_an_edge() -> None:
    """At least one node re-published a peer's heartbeat."""
    seen_values = [
        wire
        for spec in SEEN["nodes"].values()
        for wire in _values(seen_owner(spec["zone"]).to_text(omit_final_dot=True))
    ]
    assert seen_values
