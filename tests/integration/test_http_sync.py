"""Anti-entropy routes of a whole node over real sockets and a real sqlite file (wire.md §9)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dmp.apps.node.service import Node
from dmp.domain.cluster import ClusterManifest, ClusterNode, sign_cluster
from dmp.domain.keys import ed25519_public_from_seed
from tests.integration.sync_nodes import OPERATOR, PEER, running_node

pytestmark = pytest.mark.anyio

OPERATOR_SEED = hashlib.sha256(b"integration/cluster/operator").digest()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """dmp-node with DMP_SYNC_PEER_TOKEN on 127.0.0.1 (ports 0) over tmp_path/dmp.db."""
    async with running_node(
        tmp_path / "dmp.db",
        DMP_CLUSTER_BASE_DOMAIN="Mesh.Example",
        DMP_SYNC_OPERATOR_SPK=ed25519_public_from_seed(OPERATOR_SEED).hex(),
    ) as running:
        yield running


def client(node: Node, token: str | None = PEER) -> httpx.AsyncClient:
    host, port = node.bound["http"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=headers, timeout=10)


async def test_a_peer_pages_the_digest_and_pulls_every_value(node: Node) -> None:
    """Published values come back through digest + pull with matching hashes; expired ones do not."""
    published = {
        f"slot-{i}.mb-{'ab' * 6}.mesh.example": [f"v=dmp1;t=test;n={i}", f"other {i}"]
        for i in range(4)
    }
    async with client(node, OPERATOR) as op:
        for owner, values in published.items():
            for value in values:
                response = await op.post(f"/v1/records/{owner}", json={"value": value, "ttl": 600})
                assert response.status_code == 201, (owner, response.text)
    await node.store.put("old.mesh.example", "expired", 5, time.time() - 10)

    async with client(node) as peer:
        entries: list[dict[str, Any]] = []
        cursor = "0::"
        for _ in range(20):
            response = await peer.get("/v1/sync/digest", params={"cursor": cursor, "limit": 3})
            assert response.status_code == 200, response.text
            page = response.json()
            entries += page["records"]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        keys = [(e["ts"], e["name"], e["hash"]) for e in entries]
        assert keys == sorted(keys)
        assert len(keys) == 8
        assert all(0 < e["ttl"] <= 600 for e in entries)
        assert cursor == "{}:{}:{}".format(*keys[-1])

        names = sorted({e["name"] for e in entries})
        assert names == sorted(published)
        response = await peer.post("/v1/sync/pull", json={"names": [*names, "old.mesh.example"]})
        assert response.status_code == 200
        pulled = response.json()["records"]

    assert {(r["name"], r["value"]) for r in pulled} == {
        (owner, value) for owner, values in published.items() for value in values
    }
    advertised = {(e["name"], e["hash"]) for e in entries}
    assert {(r["name"], sha(r["value"])) for r in pulled} == advertised


async def test_the_routes_refuse_without_the_peer_token(node: Node) -> None:
    """The operator token is not a peer token; a missing one is 403 too."""
    for token in (None, OPERATOR, "nope"):
        async with client(node, token) as c:
            assert (await c.get("/v1/sync/digest")).status_code == 403
            response = await c.post("/v1/sync/pull", json={"names": []})
            assert response.status_code == 403
            assert response.json() == {"error": "forbidden"}


async def test_the_cluster_manifest_is_served_from_the_base_domain(node: Node) -> None:
    """DMP_CLUSTER_BASE_DOMAIN and DMP_SYNC_OPERATOR_SPK reach the route: highest verifying seq."""
    now = int(time.time())

    def signed(seq: int, seed: bytes = OPERATOR_SEED) -> str:
        return sign_cluster(
            ClusterManifest(
                cluster_name="mesh.example",
                seq=seq,
                exp=now + 3600,
                operator_spk=ed25519_public_from_seed(seed),
                nodes=(ClusterNode(node_id="a", http_endpoint="https://a.mesh.example"),),
            ),
            seed,
        )

    async with client(node) as peer:
        assert (await peer.get("/v1/sync/cluster-manifest")).status_code == 204
        forged = signed(9, hashlib.sha256(b"someone else").digest())
        async with client(node, OPERATOR) as op:
            for value in (signed(2), signed(3), forged):
                response = await op.post(
                    "/v1/records/cluster.mesh.example", json={"value": value, "ttl": 600}
                )
                assert response.status_code == 201
        response = await peer.get("/v1/sync/cluster-manifest")
    assert response.status_code == 200
    assert response.json() == {
        "wire": signed(3),
        "seq": 3,
        "exp": now + 3600,
        "cluster_name": "mesh.example",
    }
