"""cluster.json: cluster manifests (wire.md §5.5)."""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain import keys, names
from dmp.domain.cluster import (
    CLUSTER_PREFIX,
    MAX_WIRE_LEN,
    ClusterManifest,
    ClusterNode,
    decode_cluster_body,
    dns_names_equal,
    pick_highest_seq,
    sign_cluster,
    validate_dns_name,
    verify_cluster,
)
from dmp.domain.errors import (
    BadRecordSignature,
    DmpError,
    LowOrderKey,
    MalformedRecord,
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

V = load("cluster.json")
RECORDS = V["records"]


def manifest_of(case: dict[str, Any], *, name_key: str = "cluster_name_input") -> ClusterManifest:
    return ClusterManifest(
        case[name_key],
        case["seq"],
        case["exp"],
        h(case["operator"]["ed25519_public"]),
        [ClusterNode(n["node_id"], n["http_endpoint"], n["dns_endpoint"]) for n in case["nodes"]],
    )


def owner_text(name: Any) -> str:
    text: str = name.to_text(omit_final_dot=True)
    return text


def _verify(wire: str, spk: bytes, now: int, name: str | None = None) -> ClusterManifest:
    return verify_cluster(wire, spk, now=now, expected_cluster_name=name)


@pytest.mark.parametrize("case", params(RECORDS))
def test_body_and_signature_match_the_reference(case: dict[str, Any]) -> None:
    """Building the manifest from its inputs and signing it reproduces the reference bytes."""
    seed = seed_of_keypair(case["operator"])
    manifest = manifest_of(case)
    assert manifest.cluster_name == case["cluster_name"]
    assert manifest.body().hex() == case["body"]
    check_reference_wire(sign_cluster(manifest, seed), CLUSTER_PREFIX, case, MAX_WIRE_LEN)


@pytest.mark.parametrize("case", params(RECORDS))
def test_verify_returns_the_fields(case: dict[str, Any]) -> None:
    """verify_cluster under the pinned key returns every field of the vector."""
    v = case["verify"]
    got = verify_as_vector_says(
        case, lambda wire: _verify(wire, h(v["operator_spk"]), v["now"], v["expected_cluster_name"])
    )
    if got is None:
        return
    assert got == manifest_of(case, name_key="cluster_name")
    assert got.cluster_name == case["cluster_name"]
    assert got.operator_spk.hex() == v["operator_spk"]
    assert [(n.node_id, n.http_endpoint, n.dns_endpoint) for n in got.nodes] == [
        (n["node_id"], n["http_endpoint"], n["dns_endpoint"]) for n in case["nodes"]
    ]
    assert decode_cluster_body(h(case["body"])) == got


@pytest.mark.parametrize("case", params(RECORDS))
def test_owner_names(case: dict[str, Any]) -> None:
    """cluster.<name> and rotate.cluster.<name>, case kept, no trailing dot."""
    owner = names.cluster_owner(case["cluster_name"])
    assert owner_text(owner) == case["owner"]
    assert owner_text(names.rotation_owner(owner)) == case["rotation_owner"]


@pytest.mark.parametrize("case", params(RECORDS))
def test_verify_rejects_other_keys_names_and_times(case: dict[str, Any]) -> None:
    """The same wire fails under another key, another name, after exp and too far before it."""
    v = case["verify"]
    check_pinned_rejections(
        _verify,
        case["wire"],
        h(v["operator_spk"]),
        now=v["now"],
        exp=case["exp"],
        name=case["cluster_name"],
    )


# -- rules not covered by the vectors -------------------------------------------------

SEED = bytes(range(32))
SPK = keys.ed25519_public_from_seed(SEED)
NOW = 1_900_000_000


def _manifest(**changes: Any) -> ClusterManifest:
    fields: dict[str, Any] = {
        "cluster_name": "mesh.example",
        "seq": 3,
        "exp": NOW + 3600,
        "operator_spk": SPK,
        "nodes": (ClusterNode("n1", "https://n1.mesh.example", "192.0.2.1:53"),),
    }
    fields.update(changes)
    return ClusterManifest(**fields)


def _resign(body: bytes) -> str:
    return frame(CLUSTER_PREFIX, body, SEED)


def test_sign_refuses_zero_nodes_but_verify_accepts_them() -> None:
    """sign_cluster needs one node; a signed zero-node manifest still verifies."""
    empty = _manifest(nodes=())
    with pytest.raises(MalformedRecord, match="at least one node"):
        sign_cluster(empty, SEED)
    assert verify_cluster(_resign(empty.body()), SPK, now=NOW).nodes == ()


def test_sign_refuses_a_seed_of_another_key() -> None:
    with pytest.raises(MalformedRecord, match="operator_spk"):
        sign_cluster(_manifest(), bytes(32))


@pytest.mark.parametrize(
    "changes",
    [
        {"cluster_name": "bad_name.example"},
        {"cluster_name": "-a.example"},
        {"cluster_name": "a..example"},
        {"cluster_name": "a" * 65},
        {"cluster_name": "exämple.com"},
        {"nodes": [ClusterNode("n1", "https://a"), ClusterNode("n1", "https://b")]},
        {"nodes": [ClusterNode("", "https://a")]},
        {"nodes": [ClusterNode("x" * 17, "https://a")]},
        {"nodes": [ClusterNode("n1", "")]},
        {"nodes": [ClusterNode("n1", "https://" + "a" * 121)]},
        {"nodes": [ClusterNode("n1", "https://a", "d" * 65)]},
        {"nodes": [ClusterNode(f"n{i}", "https://a") for i in range(33)]},
        {"seq": -1},
        {"exp": 1 << 64},
        {"operator_spk": SPK[:31]},
    ],
)
def test_body_refuses_out_of_range_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(MalformedRecord):
        _manifest(**changes).body()


def test_sign_refuses_a_wire_over_1200_bytes() -> None:
    nodes = [ClusterNode(f"n{i:02d}", "https://" + "h" * 100, "d" * 64) for i in range(6)]
    with pytest.raises(RecordTooLong):
        sign_cluster(_manifest(nodes=nodes), SEED)


def test_limits_are_inclusive() -> None:
    """16-byte ids, 128-byte http and 64-byte dns endpoints, 64-byte names round-trip."""
    name = ".".join(["a" * 62, "b"])
    node = ClusterNode("x" * 16, "h" * 128, "d" * 64)
    manifest = _manifest(cluster_name=name, nodes=[node])
    assert verify_cluster(sign_cluster(manifest, SEED), SPK, now=NOW) == manifest


def test_trailing_dot_name_of_65_bytes_is_accepted_on_parse() -> None:
    """A 64-byte name serialized with its trailing dot (65 bytes) parses, normalized."""
    name = ".".join(["a" * 62, "b"])
    body = _manifest(cluster_name=name).body()
    dotted = body.replace(bytes((64,)) + name.encode(), bytes((65,)) + name.encode() + b".")
    assert verify_cluster(_resign(dotted), SPK, now=NOW).cluster_name == name


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b"DMPCL02" + b[7:], UnsupportedVersion),
        (lambda b: b[:-1], MalformedRecord),
        (lambda b: b + b"\x00", MalformedRecord),
        (lambda b: b[:40], MalformedRecord),
        (lambda b: b[:55] + b"\x00" + b[56:], MalformedRecord),
    ],
)
def test_resigned_structural_errors(mutate: Any, error: type[DmpError]) -> None:
    """Structure is checked after the signature: a validly signed bad body is still refused."""
    with pytest.raises(error):
        verify_cluster(_resign(mutate(_manifest().body())), SPK, now=NOW)


def test_low_order_pinned_key_is_refused() -> None:
    with pytest.raises(LowOrderKey):
        verify_cluster(sign_cluster(_manifest(), SEED), bytes(32), now=NOW)


def test_wrong_prefix_and_non_ascii() -> None:
    wire = sign_cluster(_manifest(), SEED)
    with pytest.raises(MalformedRecord):
        verify_cluster(wire.replace("t=cluster", "t=clusters"), SPK, now=NOW)
    with pytest.raises(MalformedRecord):
        verify_cluster(wire[:-2] + "é=", SPK, now=NOW)


def test_dns_name_rules() -> None:
    assert validate_dns_name("Mesh.Example.") == "Mesh.Example"
    assert validate_dns_name("a-b.c1") == "a-b.c1"
    for bad in ("", ".", "a..", "a.-b", "a-.b", "a b", "a_b", "a." + "b" * 64):
        with pytest.raises(MalformedRecord):
            validate_dns_name(bad)
    assert dns_names_equal("A.Example.", "a.example")
    assert not dns_names_equal("a.example", "b.example")


def test_pick_highest_seq() -> None:
    """The highest-seq verifying value wins; failures are skipped; ties keep the first."""
    low = sign_cluster(_manifest(seq=1), SEED)
    high = sign_cluster(_manifest(seq=9), SEED)
    tie = sign_cluster(_manifest(seq=9, nodes=[ClusterNode("n2", "https://n2")]), SEED)
    forged = high[:-6] + ("AAAA" if high[-6:-2] != "AAAA" else "BBBB") + high[-2:]

    def verify(wire: str) -> ClusterManifest:
        return verify_cluster(wire, SPK, now=NOW)

    assert pick_highest_seq([low, forged, high, tie, "junk"], verify).seq == 9
    assert pick_highest_seq([low, forged, high, tie], verify).nodes[0].node_id == "n1"
    assert pick_highest_seq([low], verify).seq == 1
    with pytest.raises(BadRecordSignature):
        pick_highest_seq([forged], verify)
    with pytest.raises(RecordMismatch):
        pick_highest_seq([], verify)
