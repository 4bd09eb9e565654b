"""rotation.json: rotations and revocations (wire.md §5.7, §5.8)."""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain import keys, names
from dmp.domain.cluster import MAX_WIRE_LEN
from dmp.domain.codec import b64encode
from dmp.domain.errors import (
    BadRecordSignature,
    ClockSkew,
    DmpError,
    LowOrderKey,
    MalformedRecord,
    RecordExpired,
    RecordMismatch,
    RecordTooLong,
    UnsupportedVersion,
)
from dmp.domain.rotation import (
    REVOCATION_PREFIX,
    ROTATION_PREFIX,
    Revocation,
    RevocationReason,
    Rotation,
    SubjectType,
    decode_revocation_body,
    decode_rotation_body,
    sign_revocation,
    sign_rotation,
    verify_revocation,
    verify_rotation,
)
from tests.signed_vectors import (
    check_five_year_window,
    check_reference_wire,
    frame,
    seed_of_keypair,
    verify_as_vector_says,
)
from tests.vectors import h, load, params

V = load("rotation.json")


def rotation_of(case: dict[str, Any]) -> Rotation:
    return Rotation(
        SubjectType(case["subject_type"]),
        case["subject"],
        h(case["old"]["ed25519_public"]),
        h(case["new"]["ed25519_public"]),
        case["seq"],
        case["ts"],
        case["exp"],
    )


def revocation_of(case: dict[str, Any]) -> Revocation:
    return Revocation(
        SubjectType(case["subject_type"]),
        case["subject"],
        h(case["revoked"]["ed25519_public"]),
        RevocationReason(case["reason_code"]),
        case["ts"],
    )


def expected_owners(subject_type: int, subject: str) -> dict[str, str]:
    def text(name: Any) -> str:
        out: str = name.to_text(omit_final_dot=True)
        return out

    if subject_type == SubjectType.USER:
        zone_anchored, hashed = names.user_rotation_owners(subject)
        return {"zone_anchored": text(zone_anchored), "hashed": text(hashed)}
    if subject_type == SubjectType.CLUSTER:
        return {"cluster": text(names.rotation_owner(names.cluster_owner(subject)))}
    return {"bootstrap": text(names.rotation_owner(names.bootstrap_owner(subject)))}


def _opt(ctx: dict[str, Any], key: str) -> bytes | None:
    value = ctx.get(key)
    return None if value is None else h(value)


# -- rotations -----------------------------------------------------------------------


@pytest.mark.parametrize("case", params(V["rotations"]))
def test_rotation_body_and_signatures_match_the_reference(case: dict[str, Any]) -> None:
    """Both keys sign the same body; the co-signed wire matches the reference byte for byte."""
    old_seed, new_seed = seed_of_keypair(case["old"]), seed_of_keypair(case["new"])
    rotation = rotation_of(case)
    assert rotation.body().hex() == case["body"]
    assert keys.sign(old_seed, h(case["body"])).hex() == case["signature_old"]
    assert keys.sign(new_seed, h(case["body"])).hex() == case["signature_new"]
    wire = sign_rotation(rotation, old_seed, new_seed)
    assert wire == case["wire"]
    assert len(wire.encode()) == case["wire_len"]


@pytest.mark.parametrize("case", params(V["rotations"]))
def test_rotation_verify(case: dict[str, Any]) -> None:
    v = case["verify"]
    expected_old, expected_subject = _opt(v, "expected_old_spk"), v.get("expected_subject")
    got = verify_as_vector_says(
        case, lambda wire: verify_rotation(wire, expected_old, expected_subject, now=v["now"])
    )
    if got is None:
        return
    assert got == rotation_of(case)
    assert got.subject_type == case["subject_type"]
    assert decode_rotation_body(h(case["body"])) == got
    # without the caller's expectations it verifies too
    assert verify_rotation(case["wire"], None, None, now=v["now"]) == got


@pytest.mark.parametrize("case", params(V["rotations"]))
def test_rotation_rejects_mismatch_and_time(case: dict[str, Any]) -> None:
    wire, now = case["wire"], case["verify"]["now"]
    with pytest.raises(RecordMismatch):
        verify_rotation(wire, h(case["new"]["ed25519_public"]), None, now=now)
    with pytest.raises(RecordMismatch):
        verify_rotation(wire, None, "x" + case["subject"], now=now)
    check_five_year_window(lambda at: verify_rotation(wire, None, None, now=at), case["exp"])
    if case["subject"].isascii():
        verify_rotation(wire, None, case["subject"].upper(), now=now)


@pytest.mark.parametrize("case", params(V["rotations"]))
def test_rotation_owner_names(case: dict[str, Any]) -> None:
    assert expected_owners(case["subject_type"], case["subject"]) == case["owners"]


# -- revocations ---------------------------------------------------------------------


@pytest.mark.parametrize("case", params(V["revocations"]))
def test_revocation_body_and_signature_match_the_reference(case: dict[str, Any]) -> None:
    seed = seed_of_keypair(case["revoked"])
    revocation = revocation_of(case)
    assert revocation.body().hex() == case["body"]
    check_reference_wire(sign_revocation(revocation, seed), REVOCATION_PREFIX, case, MAX_WIRE_LEN)


@pytest.mark.parametrize("case", params(V["revocations"]))
def test_revocation_verify(case: dict[str, Any]) -> None:
    v = case["verify"]
    expected_revoked, expected_subject = _opt(v, "expected_revoked_spk"), v.get("expected_subject")
    got = verify_as_vector_says(
        case, lambda wire: verify_revocation(wire, expected_revoked, expected_subject, now=v["now"])
    )
    if got is None:
        return
    assert got == revocation_of(case)
    assert got.reason == case["reason_code"]
    assert decode_revocation_body(h(case["body"])) == got


@pytest.mark.parametrize("case", params(V["revocations"]))
def test_revocation_time_rules(case: dict[str, Any]) -> None:
    """ts may be at most 300 s ahead; no expiry unless max_age_s is given."""
    wire, ts = case["wire"], case["ts"]
    verify_revocation(wire, None, None, now=ts - 300)
    with pytest.raises(ClockSkew):
        verify_revocation(wire, None, None, now=ts - 301)
    verify_revocation(wire, None, None, now=ts + 100 * 365 * 86400)
    verify_revocation(wire, None, None, now=ts + 60, max_age_s=60)
    with pytest.raises(RecordExpired):
        verify_revocation(wire, None, None, now=ts + 61, max_age_s=60)
    with pytest.raises(RecordMismatch):
        verify_revocation(wire, bytes(32), None, now=ts)
    with pytest.raises(RecordMismatch):
        verify_revocation(wire, None, "other.example", now=ts)


@pytest.mark.parametrize("case", params(V["revocations"]))
def test_revocation_owner_names(case: dict[str, Any]) -> None:
    assert expected_owners(case["subject_type"], case["subject"]) == case["owners"]


# -- rules not covered by the vectors -------------------------------------------------

OLD_SEED, NEW_SEED = bytes(range(32)), bytes(range(3, 35))
OLD, NEW = keys.ed25519_public_from_seed(OLD_SEED), keys.ed25519_public_from_seed(NEW_SEED)
NOW = 1_900_000_000


def _rotation(**changes: Any) -> Rotation:
    fields: dict[str, Any] = {
        "subject_type": SubjectType.USER,
        "subject": "alice@example.com",
        "old_spk": OLD,
        "new_spk": NEW,
        "seq": NOW * 1000,
        "ts": NOW,
        "exp": NOW + 365 * 86400,
    }
    fields.update(changes)
    return Rotation(**fields)


def _cosign(body: bytes, old_seed: bytes = OLD_SEED, new_seed: bytes = NEW_SEED) -> str:
    return frame(ROTATION_PREFIX, body, old_seed, new_seed)


@pytest.mark.parametrize(
    ("subject_type", "subject"),
    [
        (SubjectType.USER, "alice.example.com"),
        (SubjectType.USER, "@example.com"),
        (SubjectType.USER, "alice@"),
        (SubjectType.USER, ""),
        (SubjectType.USER, "u" * 251 + "@a.bc"),
        (SubjectType.CLUSTER, "a" * 65),
        (SubjectType.CLUSTER, "mesh_1.example"),
        (SubjectType.BOOTSTRAP, "alice@example.com"),
        (SubjectType.BOOTSTRAP, ""),
    ],
)
def test_subject_rules(subject_type: SubjectType, subject: str) -> None:
    with pytest.raises(MalformedRecord):
        _rotation(subject_type=subject_type, subject=subject).body()
    with pytest.raises(MalformedRecord):
        Revocation(subject_type, subject, OLD, RevocationReason.ROUTINE, NOW).body()


def test_subject_limits_are_inclusive() -> None:
    """A 255-byte user subject and a 64-byte DNS-name subject round-trip."""
    user = "u" * 249 + "@a.bcd"
    assert len(user) == 255
    rot = _rotation(subject=user)
    assert verify_rotation(sign_rotation(rot, OLD_SEED, NEW_SEED), OLD, user, now=NOW) == rot
    name = "c" * 60 + ".net"
    rot = _rotation(subject_type=SubjectType.CLUSTER, subject=name)
    assert verify_rotation(sign_rotation(rot, OLD_SEED, NEW_SEED), OLD, name, now=NOW) == rot


def test_sign_rotation_rules() -> None:
    with pytest.raises(MalformedRecord, match="old_spk != new_spk"):
        sign_rotation(_rotation(new_spk=OLD), OLD_SEED, OLD_SEED)
    with pytest.raises(MalformedRecord, match="old_spk"):
        sign_rotation(_rotation(), NEW_SEED, NEW_SEED)
    with pytest.raises(MalformedRecord, match="new_spk"):
        sign_rotation(_rotation(), OLD_SEED, OLD_SEED)
    with pytest.raises(MalformedRecord):
        _rotation(seq=-1).body()
    with pytest.raises(MalformedRecord):
        _rotation(new_spk=NEW[:31]).body()


def test_sign_revocation_rules() -> None:
    rev = Revocation(SubjectType.USER, "alice@example.com", OLD, RevocationReason.COMPROMISE, NOW)
    with pytest.raises(MalformedRecord, match="revoked_spk"):
        sign_revocation(rev, NEW_SEED)
    assert verify_revocation(sign_revocation(rev, OLD_SEED), OLD, None, now=NOW) == rev


def test_each_signature_is_needed() -> None:
    """sig_old by another key, or sig_new by another key, is refused."""
    body = _rotation().body()
    third = bytes(range(7, 39))
    with pytest.raises(BadRecordSignature):
        verify_rotation(_cosign(body, old_seed=third), None, None, now=NOW)
    with pytest.raises(BadRecordSignature):
        verify_rotation(_cosign(body, new_seed=third), None, None, now=NOW)
    assert verify_rotation(_cosign(body), OLD, None, now=NOW) == _rotation()


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b"DMPROT2" + b[7:], UnsupportedVersion),
        (lambda b: b[:-1], MalformedRecord),
        (lambda b: b + b"\x00", MalformedRecord),
        (lambda b: b[:7] + b"\x00" + b[8:], MalformedRecord),
        (lambda b: b[:8] + b"\x00" + b[9:], MalformedRecord),
        (lambda b: b[:8], MalformedRecord),
    ],
)
def test_resigned_structural_errors(mutate: Any, error: type[DmpError]) -> None:
    with pytest.raises(error):
        verify_rotation(_cosign(mutate(_rotation().body())), None, None, now=NOW)


def test_non_utf8_subject_is_refused() -> None:
    body = bytearray(_rotation().body())
    body[9] = 0xFF
    with pytest.raises(MalformedRecord):
        verify_rotation(_cosign(bytes(body)), None, None, now=NOW)


def test_low_order_new_key_is_refused() -> None:
    """A low-order new_spk is refused before any signature check."""
    body = _rotation(new_spk=bytes(32)).body()
    wire = ROTATION_PREFIX + b64encode(body + keys.sign(OLD_SEED, body) + bytes(64))
    with pytest.raises(LowOrderKey):
        verify_rotation(wire, None, None, now=NOW)


def test_over_long_and_malformed_wires() -> None:
    wire = sign_rotation(_rotation(), OLD_SEED, NEW_SEED)
    with pytest.raises(RecordTooLong):
        verify_rotation(wire + "A" * (1201 - len(wire)), None, None, now=NOW)
    with pytest.raises(MalformedRecord):
        verify_rotation(wire[:30] + "*" + wire[31:], None, None, now=NOW)
    with pytest.raises(MalformedRecord):
        verify_rotation(REVOCATION_PREFIX + wire[len(ROTATION_PREFIX) :], None, None, now=NOW)
    with pytest.raises(MalformedRecord):
        verify_rotation(ROTATION_PREFIX + b64encode(bytes(128)), None, None, now=NOW)


def test_revocation_structural_errors() -> None:
    rev = Revocation(SubjectType.CLUSTER, "c.example", OLD, RevocationReason.OTHER, NOW)
    body = rev.body()

    def signed(b: bytes) -> str:
        return REVOCATION_PREFIX + b64encode(b + keys.sign(OLD_SEED, b))

    assert verify_revocation(signed(body), OLD, "C.EXAMPLE.", now=NOW) == rev
    for bad, error in (
        (b"DMPRV02" + body[7:], UnsupportedVersion),
        (body[:-1], MalformedRecord),
        (body + b"\x00", MalformedRecord),
        (body[:-9] + b"\x05" + body[-8:], MalformedRecord),
        (body[:7] + b"\x04" + body[8:], MalformedRecord),
    ):
        with pytest.raises(error):
            verify_revocation(signed(bad), None, None, now=NOW)
