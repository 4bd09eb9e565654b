"""Anti-entropy between our dmp-node and the reference node, in both directions.

``test_reference_node_*``: the reference node's AntiEntropyWorker pulls records from our dmp-node.

The reference is configured as a cluster peer of our node
(``DMP_SYNC_PEERS=<our URL>``, the same ``DMP_SYNC_PEER_TOKEN``,
``DMP_SYNC_INTERVAL=1``), so everything it ends up holding came through our
``GET /v1/sync/digest`` and ``POST /v1/sync/pull`` (wire.md §9): digest
paging, the value hashes it checks pulled values against, the TTLs it stores
with, and the per-type re-verification it runs (a signed identity goes
through, a tampered one is refused). A record published after the first
rounds arrives too (the worker's cursor continues over our digest).

Both nodes pin the same operator key and cluster base domain, so the
reference also gossips the manifest it reads from our
``GET /v1/sync/cluster-manifest``: it republishes it with TTL ``exp - now``,
which a plain pull (our remaining TTL) would not give. The reference
installs a manifest by gossip only when its seq beats every manifest it
already stores, pulled ones included, so the test makes sure the gossip
sees it first.

``test_our_node_*``: the other way round. Our node's worker
(``DMP_SYNC_PEERS=<reference URL>``, ``DMP_SYNC_INTERVAL=1``) pulls through
the reference's ``/v1/sync/digest`` and ``/v1/sync/pull``: it reads the
reference's digest shape and cursors, keeps what re-verifies (a signed
identity, plain text at an ordinary owner, a cluster manifest signed by the
pinned operator key), refuses a forged identity and a manifest signed by
another key, follows later writes and TTL refreshes; it gossips the
reference's ``GET /v1/sync/cluster-manifest`` (installed with TTL
``exp - now``, peer set taken from it); and with the two nodes peered with
each other, a write on either one reaches the other.

Uses its own ports (DNS 15353/15354, HTTP 18080/18081), so it does not clash
with the ``node`` fixture's 5353/80.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodelib import NodeProc, http_json

from dmp.domain.cluster import ClusterManifest, ClusterNode, sign_cluster
from dmp.domain.keys import ed25519_public_from_seed
from tests.interop.conftest import OPERATOR_TOKEN

PEER_TOKEN = "interop-sync-peer-token"
OPERATOR_SEED = hashlib.sha256(b"interop/sync/cluster-operator").digest()
CLUSTER_ENV = {
    "DMP_CLUSTER_BASE_DOMAIN": "mesh.test",
    "DMP_SYNC_OPERATOR_SPK": ed25519_public_from_seed(OPERATOR_SEED).hex(),
}
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _identity() -> tuple[str, str]:
    """A signed identity record from the golden vectors: (owner, TXT value)."""
    data = json.loads((GOLDEN / "identity.json").read_text())
    record = data["records"][0]
    return record["owner_hashed"].lower(), record["wire"]


def _tampered(wire: str) -> str:
    """The same record with one base64 character of its signature changed."""
    i = len(wire) - 10
    return wire[:i] + ("A" if wire[i] != "A" else "B") + wire[i + 1 :]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    """Our node (the sync source) and a reference node syncing from it."""
    ours = NodeProc(
        "dmp",
        "sync-dmp",
        tmp_path,
        dns_port=15353,
        http_port=18080,
        env={
            "DMP_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "DMP_SYNC_PEER_TOKEN": PEER_TOKEN,
            "DMP_HTTP_RATE": "0",
            **CLUSTER_ENV,
        },
    )
    ref = NodeProc(
        "ref",
        "sync-ref",
        tmp_path,
        dns_port=15354,
        http_port=18081,
        env={
            "DMP_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "DMP_SYNC_PEER_TOKEN": PEER_TOKEN,
            "DMP_SYNC_PEERS": "http://127.0.0.1:18080",
            "DMP_SYNC_INTERVAL": "1",
            "DMP_HTTP_RATE": "0",
            "DMP_LOG_LEVEL": "INFO",
            **CLUSTER_ENV,
        },
    )
    ours.start(timeout=30)
    try:
        yield ours, ref
    finally:
        ref.stop()
        rc = ours.stop()
        assert rc == 0, f"dmp-node exit code {rc}: {ours.log_tail()}"


@pytest.fixture
def mutual(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    """Our node and a reference node, each a sync peer of the other (not yet started)."""
    common = {
        "DMP_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "DMP_SYNC_PEER_TOKEN": PEER_TOKEN,
        "DMP_SYNC_INTERVAL": "1",
        "DMP_HTTP_RATE": "0",
        "DMP_LOG_LEVEL": "INFO",
        **CLUSTER_ENV,
    }
    ours = NodeProc(
        "dmp",
        "mutual-dmp",
        tmp_path,
        dns_port=15353,
        http_port=18080,
        env={**common, "DMP_SYNC_PEERS": "http://127.0.0.1:18081", "DMP_NODE_ID": "dmp"},
    )
    ref = NodeProc(
        "ref",
        "mutual-ref",
        tmp_path,
        dns_port=15354,
        http_port=18081,
        env={**common, "DMP_SYNC_PEERS": "http://127.0.0.1:18080", "DMP_NODE_ID": "ref"},
    )
    try:
        yield ours, ref
    finally:
        ref.stop()
        rc = ours.stop()
        assert rc in (0, None), f"dmp-node exit code {rc}: {ours.log_tail()}"


def _manifest(seed: bytes, seq: int) -> str:
    """The mutual pair's cluster: both nodes, by DMP_NODE_ID."""
    return sign_cluster(
        ClusterManifest(
            cluster_name="mesh.test",
            seq=seq,
            exp=int(time.time()) + 7200,
            operator_spk=ed25519_public_from_seed(seed),
            nodes=(
                ClusterNode(node_id="ref", http_endpoint="http://127.0.0.1:18081"),
                ClusterNode(node_id="dmp", http_endpoint="http://127.0.0.1:18080"),
            ),
        ),
        seed,
    )


def publish(node: NodeProc, owner: str, value: str, ttl: int) -> None:
    status, body = http_json(
        f"{node.url}/v1/records/{owner}", "POST", {"value": value, "ttl": ttl}, OPERATOR_TOKEN
    )
    assert status == 201, (owner, status, body)


def values_at(node: NodeProc, owner: str) -> set[str]:
    status, body = http_json(f"{node.url}/v1/records/{owner}", token=OPERATOR_TOKEN)
    return set(json.loads(body)["values"]) if status == 200 else set()


def digest_ttls(node: NodeProc) -> dict[tuple[str, str], int]:
    """``(name, hash) -> remaining ttl`` over the node's whole digest (bounded paging)."""
    out: dict[tuple[str, str], int] = {}
    cursor = "0::"
    for _ in range(100):
        status, body = http_json(
            f"{node.url}/v1/sync/digest?cursor={cursor}&limit=1000", token=PEER_TOKEN
        )
        assert status == 200, body
        page = json.loads(body)
        out.update({(r["name"], r["hash"]): r["ttl"] for r in page["records"]})
        if not page["has_more"]:
            return out
        cursor = page["next_cursor"]
    raise AssertionError("digest did not end in 100 pages")


def wait_for(node: NodeProc, expected: dict[str, set[str]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = {owner: values_at(node, owner) for owner in expected}
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{node.kind} node holds {got}, expected {expected}:\n{node.log_tail()}"
            )
        time.sleep(0.2)


def test_reference_node_pulls_our_records(pair: tuple[NodeProc, NodeProc]) -> None:
    """Everything valid we hold reaches the reference peer; a forged identity does not."""
    ours, ref = pair
    identity_owner, identity = _identity()
    forged_owner = "id-00000000000000ff.mesh.test"
    expected = {
        "www.mesh.test": {"hello from dmp", "v=spf1 -all"},
        identity_owner: {identity},
    }
    for owner, values in expected.items():
        for value in values:
            publish(ours, owner, value, 600)
    publish(ours, forged_owner, _tampered(identity), 600)
    # 40 more owners: the digest interleaves them by acceptance time
    many = {f"n{i:03d}.mesh.test": {f"row {i}"} for i in range(40)}
    for owner, values in many.items():
        publish(ours, owner, next(iter(values)), 300)

    ref.start(timeout=30)
    wait_for(ref, {**expected, **many})
    assert values_at(ref, forged_owner) == set()

    # a later write arrives on a later round
    publish(ours, "late.mesh.test", "published after the first rounds", 600)
    wait_for(ref, {"late.mesh.test": {"published after the first rounds"}})

    status, body = http_json(f"{ours.url}/v1/sync/digest", token=PEER_TOKEN)
    assert status == 200
    digest = json.loads(body)
    assert digest["has_more"] is False
    assert len(digest["records"]) == 2 + 1 + 1 + 40 + 1

    # the reference stored what it pulled with the TTL we advertised
    status, body = http_json(f"{ref.url}/v1/sync/digest", token=PEER_TOKEN)
    assert status == 200
    ttls = {(r["name"], r["hash"]): r["ttl"] for r in json.loads(body)["records"]}
    ours_ttls = {(r["name"], r["hash"]): r["ttl"] for r in digest["records"]}
    assert set(ttls) == set(ours_ttls) - {
        (e["name"], e["hash"]) for e in digest["records"] if e["name"] == forged_owner
    }
    for key, ttl in ttls.items():
        assert abs(ttl - ours_ttls[key]) <= 60, (key, ttl, ours_ttls[key])

    # a republish with a longer TTL moves the row up our digest; the peer refreshes its copy
    publish(ours, "www.mesh.test", "hello from dmp", 3000)
    deadline = time.monotonic() + 30
    while True:
        status, body = http_json(f"{ref.url}/v1/sync/digest", token=PEER_TOKEN)
        refreshed = [r["ttl"] for r in json.loads(body)["records"] if r["name"] == "www.mesh.test"]
        if max(refreshed) > 2000:
            break
        assert time.monotonic() < deadline, f"TTL not refreshed: {refreshed}"
        time.sleep(0.2)


def test_reference_node_gossips_our_cluster_manifest(pair: tuple[NodeProc, NodeProc]) -> None:
    """The manifest we serve verifies at the reference, which installs it (TTL exp - now)."""
    ours, ref = pair
    exp = int(time.time()) + 7200

    def signed(seq: int) -> str:
        return sign_cluster(
            ClusterManifest(
                cluster_name="mesh.test",
                seq=seq,
                exp=exp,
                operator_spk=ed25519_public_from_seed(OPERATOR_SEED),
                nodes=(ClusterNode(node_id="dmp", http_endpoint=ours.url),),
            ),
            OPERATOR_SEED,
        )

    # Rows the reference pages through (1000 a tick) before it reaches the
    # manifest in our digest, so that its gossip, which runs after the digest
    # in each tick, sees the manifest before a pull could store it.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: publish(ours, f"f{i}.mesh.test", "filler", 600), range(3000)))
    wire = signed(44)
    publish(ours, "cluster.mesh.test", wire, 100)  # a pulled copy would keep ~100 s
    ref.start(timeout=30)
    status, body = http_json(f"{ours.url}/v1/sync/cluster-manifest", token=PEER_TOKEN)
    assert status == 200
    assert json.loads(body) == {"wire": wire, "seq": 44, "exp": exp, "cluster_name": "mesh.test"}
    wire_hash = hashlib.sha256(wire.encode()).hexdigest()
    deadline = time.monotonic() + 30
    while True:
        status, body = http_json(f"{ref.url}/v1/sync/digest", token=PEER_TOKEN)
        ttls = [r["ttl"] for r in json.loads(body)["records"] if r["hash"] == wire_hash]
        if ttls and max(ttls) > 1000:
            break
        assert time.monotonic() < deadline, f"manifest not installed: {ttls}\n{ref.log_tail()}"
        time.sleep(0.2)


def test_our_node_pulls_the_reference_nodes_records(mutual: tuple[NodeProc, NodeProc]) -> None:
    """Everything valid the reference holds reaches our node; forged records do not."""
    ours, ref = mutual
    ref.start(timeout=30)
    identity_owner, identity = _identity()
    forged_owner = "id-00000000000000ff.mesh.test"
    good_manifest = _manifest(OPERATOR_SEED, 7)
    rogue_seed = hashlib.sha256(b"interop/sync/rogue-operator").digest()
    rogue_manifest = _manifest(rogue_seed, 8)
    expected = {
        "www.mesh.test": {"hello from the reference", "v=spf1 -all"},
        identity_owner: {identity},
    }
    for owner, values in expected.items():
        for value in values:
            publish(ref, owner, value, 600)
    publish(ref, forged_owner, _tampered(identity), 600)
    publish(ref, "cluster.mesh.test", good_manifest, 3600)
    publish(ref, "cluster.mesh.test", rogue_manifest, 3600)
    many = {f"r{i:03d}.mesh.test": {f"ref row {i}"} for i in range(40)}
    for owner, values in many.items():
        publish(ref, owner, next(iter(values)), 300)

    ours.start(timeout=30)
    wait_for(ours, {**expected, **many, "cluster.mesh.test": {good_manifest}})
    assert values_at(ours, forged_owner) == set()

    # a later write on the reference arrives on a later round
    publish(ref, "late.mesh.test", "written on the reference later", 600)
    wait_for(ours, {"late.mesh.test": {"written on the reference later"}})

    # stored with the TTL the reference advertised; the manifest, installed by
    # gossip from the reference's /v1/sync/cluster-manifest, with exp - now
    ref_ttls, our_ttls = digest_ttls(ref), digest_ttls(ours)
    rogue_hash = hashlib.sha256(rogue_manifest.encode()).hexdigest()
    good_key = ("cluster.mesh.test", hashlib.sha256(good_manifest.encode()).hexdigest())
    forged_keys = {k for k in ref_ttls if k[0] == forged_owner or k[1] == rogue_hash}
    assert forged_keys
    assert set(our_ttls) == set(ref_ttls) - forged_keys
    for key, ttl in our_ttls.items():
        if key != good_key:
            assert abs(ttl - ref_ttls[key]) <= 60, (key, ttl, ref_ttls[key])
    assert our_ttls[good_key] > 7000, (our_ttls[good_key], ref_ttls[good_key])
    # and the peer set now comes from it (ourselves, DMP_NODE_ID=dmp, left out)
    assert "peer set from cluster manifest seq 7: http://127.0.0.1:18081" in ours.log_tail(10**6)

    # a republish with a longer TTL on the reference refreshes our copy
    publish(ref, "www.mesh.test", "hello from the reference", 3000)
    www = ("www.mesh.test", hashlib.sha256(b"hello from the reference").hexdigest())
    deadline = time.monotonic() + 30
    while digest_ttls(ours).get(www, 0) <= 2000:
        assert time.monotonic() < deadline, f"TTL not refreshed:\n{ours.log_tail()}"
        time.sleep(0.2)


def test_writes_on_either_node_reach_the_other(mutual: tuple[NodeProc, NodeProc]) -> None:
    """Peered with each other, the two implementations form one cluster."""
    ours, ref = mutual
    ours.start(timeout=30)
    ref.start(timeout=30)
    identity_owner, identity = _identity()
    publish(ours, "from-dmp.mesh.test", "written on dmp", 600)
    publish(ref, "from-ref.mesh.test", "written on the reference", 600)
    publish(ref, identity_owner, identity, 600)
    both = {
        "from-dmp.mesh.test": {"written on dmp"},
        "from-ref.mesh.test": {"written on the reference"},
        identity_owner: {identity},
    }
    wait_for(ours, both)
    wait_for(ref, both)
    publish(ours, "from-dmp.mesh.test", "a second value on dmp", 600)
    wait_for(ref, {"from-dmp.mesh.test": {"written on dmp", "a second value on dmp"}})
