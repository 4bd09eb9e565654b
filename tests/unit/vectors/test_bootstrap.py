"""bootstrap.json: bootstrap records (wire.md §5.6)."""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain import keys, names
from dmp.domain.bootstrap import (
    BOOTSTRAP_PREFIX,
    BootstrapEntry,
    BootstrapRecord,
    decode_bootstrap_body,
    pick_highest_seq,
    sign_bootstrap,
    verify_bootstrap,
)
from dmp.domain.cluster import MAX_WIRE_LEN
from dmp.domain.errors import (
    DmpError,
    MalformedRecord,
    RecordExpired,
    RecordMismatch,
    RecordTooLong,
    UnsupportedVersion,
)
from tests.signed_vectors import (
    check_pinned_rejections,
    check_reference_wire,
    frame,
    seed_of_keypair,
    verify_as_vector_says,
)
from tests.vectors import h, load, params

V = load("bootstrap.json")
RECORDS = V["records"]


def entry_of(e: dict[str, Any]) -> BootstrapEntry:
    return BootstrapEntry(e["priority"], e["cluster_base_domain"], h(e["operator_spk"]))


def record_of(case: dict[str, Any]) -> BootstrapRecord:
    return BootstrapRecord(
        case["user_domain_input"],
        case["seq"],
        case["exp"],
        h(case["signer"]["ed25519_public"]),
        [entry_of(e) for e in case["entries_input"]],
    )


def _verify(wire: str, spk: bytes, now: int, domain: str | None = None) -> BootstrapRecord:
    return verify_bootstrap(wire, spk, now=now, expected_user_domain=domain)


@pytest.mark.parametrize("case", params(RECORDS))
def test_body_and_signature_match_the_reference(case: dict[str, Any]) -> None:
    """Entries are stably sorted by priority before serializing; the bytes match the reference."""
    seed = seed_of_keypair(case["signer"])
    record = record_of(case)
    assert record.user_domain == case["user_domain"]
    assert record.entries == tuple(entry_of(e) for e in case["entries_serialized"])
    assert record.body().hex() == case["body"]
    check_reference_wire(sign_bootstrap(record, seed), BOOTSTRAP_PREFIX, case, MAX_WIRE_LEN)


@pytest.mark.parametrize("case", params(RECORDS))
def test_verify_returns_the_fields(case: dict[str, Any]) -> None:
    """verify_bootstrap under the pinned key returns the serialized fields, best entry first."""
    v = case["verify"]
    got = verify_as_vector_says(
        case, lambda wire: _verify(wire, h(v["signer_spk"]), v["now"], v["expected_user_domain"])
    )
    if got is None:
        return
    assert got.user_domain == case["user_domain"]
    assert (got.seq, got.exp) == (case["seq"], case["exp"])
    assert got.signer_spk.hex() == v["signer_spk"]
    assert [(e.priority, e.base_domain, e.operator_spk.hex()) for e in got.entries] == [
        (e["priority"], e["cluster_base_domain"], e["operator_spk"])
        for e in case["entries_serialized"]
    ]
    assert got.best_entry() == got.entries[0]
    assert got == record_of(case)
    assert decode_bootstrap_body(h(case["body"])) == got


@pytest.mark.parametrize("case", params(RECORDS))
def test_owner_names(case: dict[str, Any]) -> None:
    """_dmp.<user_domain> and rotate._dmp.<user_domain>."""
    owner = names.bootstrap_owner(case["user_domain"])
    assert owner.to_text(omit_final_dot=True) == case["owner"]
    assert names.rotation_owner(owner).to_text(omit_final_dot=True) == case["rotation_owner"]


@pytest.mark.parametrize("case", params(RECORDS))
def test_verify_rejects_other_keys_domains_and_times(case: dict[str, Any]) -> None:
    """The same wire fails under another key, another domain, after exp and too far before it."""
    v = case["verify"]
    check_pinned_rejections(
        _verify,
        case["wire"],
        h(v["signer_spk"]),
        now=v["now"],
        exp=case["exp"],
        name=case["user_domain"],
    )


# -- rules not covered by the vectors -------------------------------------------------

SEED = bytes(range(1, 33))
SPK = keys.ed25519_public_from_seed(SEED)
OP = keys.ed25519_public_from_seed(bytes(range(2, 34)))
NOW = 1_900_000_000


def _record(**changes: Any) -> BootstrapRecord:
    fields: dict[str, Any] = {
        "user_domain": "example.com",
        "seq": 5,
        "exp": NOW + 3600,
        "signer_spk": SPK,
        "entries": (BootstrapEntry(10, "mesh.example.net", OP),),
    }
    fields.update(changes)
    return BootstrapRecord(**fields)


def _resign(body: bytes) -> str:
    return frame(BOOTSTRAP_PREFIX, body, SEED)


def test_entries_are_sorted_stably_on_construction_and_parse() -> None:
    entries = [
        BootstrapEntry(30, "c.example", OP),
        BootstrapEntry(10, "b.example", OP),
        BootstrapEntry(30, "a.example", OP),
        BootstrapEntry(10, "z.example", OP),
    ]
    record = _record(entries=entries)
    order = [e.base_domain for e in record.entries]
    assert order == ["b.example", "z.example", "c.example", "a.example"]
    assert record.best_entry().base_domain == "b.example"
    got = verify_bootstrap(sign_bootstrap(record, SEED), SPK, now=NOW)
    assert [e.base_domain for e in got.entries] == order


def test_parse_sorts_an_out_of_order_body() -> None:
    """A body whose entries are not in priority order is sorted after parsing."""
    hi = BootstrapEntry(20, "hi.example", OP)
    lo = BootstrapEntry(10, "lo.example", OP)
    body = _record(entries=[lo, hi]).body()
    lo_bytes = b"\x00\x0a\x0alo.example" + OP
    hi_bytes = b"\x00\x14\x0ahi.example" + OP
    swapped = body.replace(lo_bytes + hi_bytes, hi_bytes + lo_bytes)
    assert swapped != body
    got = verify_bootstrap(_resign(swapped), SPK, now=NOW)
    assert got.entries == (lo, hi)


@pytest.mark.parametrize(
    "entries",
    [
        [BootstrapEntry(10, "a.example", OP), BootstrapEntry(10, "A.Example.", OP)],
        [],
        [BootstrapEntry(i, "a.example", OP) for i in range(17)],
        [BootstrapEntry(-1, "a.example", OP)],
        [BootstrapEntry(1 << 16, "a.example", OP)],
        [BootstrapEntry(1, "a_b.example", OP)],
        [BootstrapEntry(1, "a.example", OP[:16])],
    ],
)
def test_body_refuses_bad_entries(entries: list[BootstrapEntry]) -> None:
    with pytest.raises(MalformedRecord):
        _record(entries=entries).body()


def test_same_base_with_another_priority_is_fine() -> None:
    record = _record(
        entries=[BootstrapEntry(10, "a.example", OP), BootstrapEntry(20, "a.example", OP)]
    )
    assert len(verify_bootstrap(sign_bootstrap(record, SEED), SPK, now=NOW).entries) == 2


def test_sign_side_rules() -> None:
    with pytest.raises(MalformedRecord, match="signer_spk"):
        sign_bootstrap(_record(), bytes(32))
    with pytest.raises(MalformedRecord):
        _record(user_domain="bad domain").body()
    big = [BootstrapEntry(i, f"{i:02d}" + "b" * 53 + ".example", OP) for i in range(16)]
    with pytest.raises(RecordTooLong):
        sign_bootstrap(_record(entries=big), SEED)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b"DMPBS02" + b[7:], UnsupportedVersion),
        (lambda b: b[:-1], MalformedRecord),
        (lambda b: b + b"\x00", MalformedRecord),
        (lambda b: b[:50], MalformedRecord),
    ],
)
def test_resigned_structural_errors(mutate: Any, error: type[DmpError]) -> None:
    with pytest.raises(error):
        verify_bootstrap(_resign(mutate(_record().body())), SPK, now=NOW)


def test_embedded_signer_must_be_the_pinned_key() -> None:
    """Signed by the pinned key, but the body names another signer_spk."""
    body = _record(signer_spk=OP).body()
    with pytest.raises(RecordMismatch):
        verify_bootstrap(_resign(body), SPK, now=NOW)


def test_pick_highest_seq_for_bootstrap() -> None:
    a = sign_bootstrap(_record(seq=1), SEED)
    b = sign_bootstrap(_record(seq=2), SEED)
    expired = sign_bootstrap(_record(seq=3, exp=NOW - 1), SEED)

    def verify(wire: str) -> BootstrapRecord:
        return verify_bootstrap(wire, SPK, now=NOW, expected_user_domain="example.com")

    assert pick_highest_seq([a, expired, b], verify).seq == 2
    with pytest.raises(RecordExpired):
        pick_highest_seq([expired], verify)
