"""Two real dmp-nodes replicating over HTTP anti-entropy, each on its own sqlite file (wire.md §9).

Node A takes writes; node B has ``DMP_SYNC_PEERS=<A>``, the same
``DMP_SYNC_PEER_TOKEN`` and a short ``DMP_SYNC_INTERVAL``: what A holds shows
up in B's store and in B's DNS answers; a forged identity does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import dns.asyncquery
import dns.message
import dns.rdatatype
import httpx
import pytest

from dmp.apps.node.service import Node
from tests.integration.sync_nodes import OPERATOR, running_node

pytestmark = pytest.mark.anyio

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


async def wait_held(node: Node, owner: str) -> None:
    """Wait until ``owner`` holds a value in the node's store (woken by its change listener)."""
    events = [anyio.Event()]

    def changed(changed_owner: str) -> None:
        if changed_owner == owner:
            events[0].set()

    node.store.add_listener(changed)
    try:
        with anyio.fail_after(20):
            while not await node.store.get(owner, node.clock.now()):
                await events[0].wait()
                events[0] = anyio.Event()
    finally:
        node.store.remove_listener(changed)


def url(node: Node) -> str:
    host, port = node.bound["http"]
    return f"http://{host}:{port}"


async def txt_over_dns(node: Node, owner: str) -> set[str]:
    host, port = node.bound["dns"]
    reply = await dns.asyncquery.udp(
        dns.message.make_query(owner, dns.rdatatype.TXT), host, port=port, timeout=5
    )
    return {
        b"".join(rdata.strings).decode()
        for rrset in reply.answer
        for rdata in rrset
        if rrset.rdtype == dns.rdatatype.TXT
    }


async def test_a_record_written_to_a_appears_on_b(tmp_path: Path) -> None:
    record = json.loads((GOLDEN / "identity.json").read_text())["records"][0]
    identity_owner, identity = record["owner_hashed"].lower(), record["wire"]
    i = len(identity) - 10
    forged = identity[:i] + ("A" if identity[i] != "A" else "B") + identity[i + 1 :]
    writes = {
        identity_owner: identity,
        "id-00000000000000ff.mesh.test": forged,
        "www.mesh.test": "hello from a",
    }
    async with running_node(tmp_path / "a.db") as a:
        async with httpx.AsyncClient(
            base_url=url(a), headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10
        ) as op:
            for owner, value in writes.items():
                response = await op.post(f"/v1/records/{owner}", json={"value": value, "ttl": 600})
                assert response.status_code == 201, response.text
        async with running_node(
            tmp_path / "b.db", DMP_SYNC_PEERS=url(a), DMP_SYNC_INTERVAL="0.2"
        ) as b:
            assert b.sync_worker is not None
            await wait_held(b, identity_owner)
            await wait_held(b, "www.mesh.test")
            assert await txt_over_dns(b, identity_owner) == {identity}
            assert await txt_over_dns(b, "www.mesh.test") == {"hello from a"}
            [row] = await b.store.get("www.mesh.test", b.clock.now())
            assert 590 <= row.remaining_ttl(b.clock.now()) <= 600
            assert await b.store.get("id-00000000000000ff.mesh.test", b.clock.now()) == []
            assert b.sync_worker.counters["refused"] == 1

            # a later write on A follows
            async with httpx.AsyncClient(
                base_url=url(a), headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10
            ) as op:
                response = await op.post(
                    "/v1/records/late.mesh.test", json={"value": "later", "ttl": 300}
                )
                assert response.status_code == 201
            await wait_held(b, "late.mesh.test")

            # the worker's counters are on B's /metrics
            async with httpx.AsyncClient(
                base_url=url(b), headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10
            ) as op:
                metrics = (await op.get("/metrics")).text
            assert 'dmp_sync_values_total{outcome="stored"} 3.0' in metrics
            assert 'dmp_sync_values_total{outcome="refused"} 1.0' in metrics
    # B is closed now; its sqlite file kept what it pulled
    from dmp.adapters.sqlite_store import SqliteRecordStore

    store = await SqliteRecordStore.open(tmp_path / "b.db")
    try:
        assert await store.count() == 3
    finally:
        await store.aclose()


async def test_a_peer_that_is_down_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    async with (
        running_node(tmp_path / "a.db") as a,
        running_node(
            tmp_path / "b.db", DMP_SYNC_PEERS=f"{dead},{url(a)}", DMP_SYNC_INTERVAL="0.1"
        ) as b,
    ):
        async with httpx.AsyncClient(
            base_url=url(a), headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10
        ) as op:
            response = await op.post("/v1/records/x.mesh.test", json={"value": "x", "ttl": 60})
            assert response.status_code == 201
        await wait_held(b, "x.mesh.test")
        assert b.sync_worker.counters["peer_error"] >= 1
    assert f"anti-entropy with {dead} failed" in caplog.text
