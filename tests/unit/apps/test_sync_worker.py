"""The anti-entropy worker (pull side) against in-memory fake peers, on a SimClock (wire.md §9)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from dmp.adapters.http_sync import cluster_manifest_body, digest_body, pull_body
from dmp.adapters.memory_store import MemoryRecordStore
from dmp.adapters.sim import SimClock
from dmp.apps.node.sync import SyncWorker
from dmp.domain.cluster import ClusterManifest, ClusterNode, sign_cluster
from dmp.domain.keys import ed25519_public_from_seed
from dmp.domain.sync import SyncCursor, value_hash
from dmp.ports.sync import DigestPage, PulledValue, SyncPeer
from dmp.ports.transport import PeerRejected, PeerUnreachable

pytestmark = pytest.mark.anyio

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


def identity() -> tuple[str, str]:
    """A signed identity record from the golden vectors: (owner, TXT value)."""
    record = json.loads((GOLDEN / "identity.json").read_text())["records"][0]
    return record["owner_hashed"].lower(), record["wire"]


def tampered(wire: str) -> str:
    i = len(wire) - 10
    return wire[:i] + ("A" if wire[i] != "A" else "B") + wire[i + 1 :]


class FakePeer:
    """A peer node: its own memory store, answered with the server's own body builders."""

    def __init__(
        self, endpoint: str, clock: SimClock, store: MemoryRecordStore | None = None
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.store = store if store is not None else MemoryRecordStore()
        self.digest_calls: list[str] = []
        self.pull_calls: list[list[str]] = []
        self.fail: Exception | None = None
        self.fail_pull_of: set[str] = set()
        self.substitute: dict[str, str] = {}
        self.closed = False
        self.manifest_base: str | None = None
        self.manifest_spk: bytes | None = None
        self.manifest_calls = 0

    async def put(self, owner: str, value: str, ttl: int) -> None:
        self.clock.advance(0.001)  # distinct stored_ts per row
        await self.store.put(owner, value, ttl, self.clock.now())

    async def digest(self, cursor: str, limit: int) -> DigestPage:
        self.digest_calls.append(cursor)
        if self.fail is not None:
            raise self.fail
        now = self.clock.now()
        parsed = SyncCursor.parse_server(cursor)
        after = (parsed.stored_ts_ms, parsed.owner, parsed.value_hash)
        rows = await self.store.digest(after, limit + 1, now)
        body = digest_body(rows, parsed, limit, now)
        return DigestPage(tuple(body["records"]), bool(body["has_more"]), body["next_cursor"])  # type: ignore[arg-type]

    async def pull(self, names: Sequence[str]) -> list[PulledValue]:
        self.pull_calls.append(list(names))
        if self.fail is not None:
            raise self.fail
        if self.fail_pull_of & set(names):
            raise PeerUnreachable("pull failed")
        now = self.clock.now()
        rows = [row for name in names for row in await self.store.get(name, now)]
        out = [
            PulledValue(r["name"], r["value"], r["ttl"]) for r in pull_body(rows, now)["records"]
        ]  # type: ignore[attr-defined]
        return [PulledValue(p.owner, self.substitute.get(p.value, p.value), p.ttl) for p in out]

    async def cluster_manifest(self) -> dict[str, object] | None:
        self.manifest_calls += 1
        if self.fail is not None:
            raise self.fail
        if self.manifest_base is None:
            return None
        now = self.clock.now()
        values = [r.value for r in await self.store.get(f"cluster.{self.manifest_base}", now)]
        return cluster_manifest_body(
            values, operator_spk=self.manifest_spk, base=self.manifest_base, now=int(now)
        )

    async def aclose(self) -> None:
        self.closed = True


def worker(
    store: MemoryRecordStore,
    clock: SimClock,
    *peers: FakePeer,
    page_limit: int = 1000,
    **kw: object,
) -> SyncWorker:
    ps: list[SyncPeer] = list(peers)
    return SyncWorker(store, clock, ps, interval=10, page_limit=page_limit, **kw)  # type: ignore[arg-type]


async def held(store: MemoryRecordStore, owner: str, clock: SimClock) -> set[str]:
    return {r.value for r in await store.get(owner, clock.now())}


async def test_pulls_missing_values_with_the_advertised_ttl() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    owner, wire = identity()
    await peer.put(owner, wire, 600)
    await peer.put("www.mesh.test", "hello", 300)
    await peer.put("www.mesh.test", "v=spf1 -all", 300)
    ours = MemoryRecordStore()
    clock.advance(100)
    report = await worker(ours, clock, peer).tick()
    assert (report.stored, report.refused, report.planned) == (3, 0, 3)
    assert await held(ours, owner, clock) == {wire}
    assert await held(ours, "www.mesh.test", clock) == {"hello", "v=spf1 -all"}
    [row] = await ours.get(owner, clock.now())
    assert 499 <= row.remaining_ttl(clock.now()) <= 500  # the peer's remaining TTL, not 600


async def test_pages_are_followed_and_the_watermark_resumes() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    for i in range(25):
        await peer.put(f"n{i:02d}.mesh.test", f"row {i}", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer, page_limit=10, max_pages=2)
    first = await w.tick()
    assert (first.pages, first.stored) == (2, 20)
    assert await held(ours, "n19.mesh.test", clock) == {"row 19"}
    assert await held(ours, "n20.mesh.test", clock) == set()
    mark = w.watermark("http://a").cursor
    assert mark.owner == "n19.mesh.test"
    second = await w.tick()
    assert peer.digest_calls[2] == mark.to_text()  # resumes from our watermark
    assert second.stored == 5
    third = await w.tick()
    assert (third.rows, third.planned) == (0, 0)
    # a later write on the peer arrives on a later tick, pulled alone
    await peer.put("late.mesh.test", "late", 600)
    peer.pull_calls.clear()
    assert (await w.tick()).stored == 1
    assert peer.pull_calls == [["late.mesh.test"]]


async def test_a_failed_entry_holds_the_watermark_but_later_entries_are_pulled() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    await peer.put("a.mesh.test", "first", 600)
    await peer.put("b.mesh.test", "second", 600)
    await peer.put("c.mesh.test", "third", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer, page_limit=2)
    peer.substitute = {"second": "something else"}  # b's value does not match its hash
    report = await w.tick()
    # page 1 (a, b): a stored, b not returned; the watermark moved to a, so page 2 (b, c)
    # is read: b again not returned, c stored; the watermark did not move: stop
    assert (report.pages, report.stored, report.missing) == (2, 2, 2)
    assert await held(ours, "b.mesh.test", clock) == set()  # hash mismatch: dropped
    assert await held(ours, "c.mesh.test", clock) == {"third"}
    assert w.watermark("http://a").cursor.owner == "a.mesh.test"
    # next tick: b is retried from the watermark
    peer.substitute = {}
    report = await w.tick()
    assert (report.stored, report.missing) == (1, 0)
    assert await held(ours, "b.mesh.test", clock) == {"second"}
    assert w.watermark("http://a").cursor.owner == "c.mesh.test"


async def test_later_entries_of_the_same_page_are_stored_past_a_failure() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    await peer.put("a.mesh.test", "first", 600)
    await peer.put("b.mesh.test", "second", 600)
    await peer.put("c.mesh.test", "third", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer)
    peer.substitute = {"second": "forged"}
    await w.tick()
    assert await held(ours, "c.mesh.test", clock) == {"third"}
    assert w.watermark("http://a").cursor.owner == "a.mesh.test"
    peer.substitute = {}
    peer.pull_calls.clear()
    await w.tick()
    assert peer.pull_calls == [["b.mesh.test"]]  # c is held already: not pulled again
    assert w.watermark("http://a").cursor.owner == "c.mesh.test"


async def test_forged_and_unknown_records_are_refused_for_good() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    _, wire = identity()
    await peer.put("id-00000000000000ff.mesh.test", tampered(wire), 600)
    await peer.put("slot-1.mb-0123456789ab.mesh.test", "not a dmp record", 600)
    await peer.put("x.mesh.test", "v=dmp1;t=heartbeat;whatever", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer)
    report = await w.tick()
    assert (report.stored, report.refused, report.missing) == (0, 3, 0)
    assert await ours.count() == 0
    # refused rows count as handled: the watermark moved over all three
    assert w.watermark("http://a").cursor.owner == "x.mesh.test"
    assert w.counters["refused"] == 3


async def test_ttl_refresh_is_pulled_only_beyond_five_seconds() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    await peer.put("www.mesh.test", "hello", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer)
    await w.tick()
    clock.advance(100)
    # our copy: 500 s left. A republish at 604 s is not worth a pull (< 5 s more)...
    await ours.put("www.mesh.test", "hello", 500, clock.now())
    await peer.put("www.mesh.test", "hello", 504)
    assert (await w.tick()).planned == 0
    # ... one at 3000 s is
    await peer.put("www.mesh.test", "hello", 3000)
    report = await w.tick()
    assert (report.planned, report.stored) == (1, 1)
    [row] = await ours.get("www.mesh.test", clock.now())
    assert row.remaining_ttl(clock.now()) >= 2999


async def test_bad_digest_rows_are_skipped() -> None:
    clock = SimClock()

    class Lying(FakePeer):
        async def digest(self, cursor: str, limit: int) -> DigestPage:
            page = await super().digest(cursor, limit)
            bad = [
                {"name": "bad name!", "hash": "0" * 64, "ts": 1, "ttl": 5},
                {"name": "x.test", "hash": "XYZ", "ts": 1, "ttl": 5},
                {"name": "x.test", "hash": "0" * 64, "ts": 10**15, "ttl": 5},
                "not an object",
            ]
            return DigestPage((*bad, *page.records), page.has_more, page.next_cursor)

    peer = Lying("http://a", clock)
    await peer.put("ok.mesh.test", "fine", 600)
    ours = MemoryRecordStore()
    report = await worker(ours, clock, peer).tick()
    assert (report.bad_rows, report.stored) == (4, 1)


async def test_one_peer_failing_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    clock = SimClock()
    a, b = FakePeer("http://a", clock), FakePeer("http://b", clock)
    a.fail = PeerUnreachable("connection refused")
    await b.put("b.mesh.test", "from b", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, a, b)
    with caplog.at_level(logging.WARNING, logger="dmp.node.sync"):
        first = await w.tick()
    assert first.peer == "http://a"
    assert first.error is not None
    assert "http://a" in caplog.text
    assert "connection refused" in caplog.text
    second = await w.tick()
    assert (second.peer, second.stored) == ("http://b", 1)
    assert (await w.tick()).peer == "http://a"  # round-robin
    assert w.counters["peer_error"] == 2


async def test_a_failed_pull_keeps_the_watermark_and_is_retried() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    await peer.put("a.mesh.test", "x", 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer)
    peer.fail_pull_of = {"a.mesh.test"}
    report = await w.tick()
    assert report.error is not None
    assert w.watermark("http://a").cursor == SyncCursor()
    peer.fail_pull_of = set()
    assert (await w.tick()).stored == 1


async def test_pull_requests_carry_at_most_256_names() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    for i in range(300):
        await peer.put(f"n{i}.mesh.test", "v", 600)
    ours = MemoryRecordStore()
    await worker(ours, clock, peer).tick()
    assert [len(c) for c in peer.pull_calls] == [256, 44]
    assert await ours.count() == 300


async def test_run_ticks_every_interval_first_after_one_interval() -> None:
    clock = SimClock()
    a, b = FakePeer("http://a", clock), FakePeer("http://b", clock)
    w = worker(MemoryRecordStore(), clock, a, b)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        await anyio.wait_all_tasks_blocked()
        clock.advance(9.9)
        await anyio.wait_all_tasks_blocked()
        assert (a.digest_calls, b.digest_calls) == ([], [])
        clock.advance(0.1)
        await anyio.wait_all_tasks_blocked()
        assert (len(a.digest_calls), len(b.digest_calls)) == (1, 0)
        clock.advance(10)
        await anyio.wait_all_tasks_blocked()
        assert (len(a.digest_calls), len(b.digest_calls)) == (1, 1)
        tg.cancel_scope.cancel()
    await w.aclose()
    assert a.closed
    assert b.closed


SEED = hashlib.sha256(b"unit/sync/operator").digest()
OTHER = hashlib.sha256(b"unit/sync/someone-else").digest()
SPK = ed25519_public_from_seed(SEED)


def manifest(
    clock: SimClock,
    signer: bytes,
    seq: int,
    nodes: tuple[tuple[str, str], ...] = (("a", "http://a"),),
    name: str = "mesh.test",
) -> str:
    return sign_cluster(
        ClusterManifest(
            cluster_name=name,
            seq=seq,
            exp=int(clock.now()) + 3600,
            operator_spk=ed25519_public_from_seed(signer),
            nodes=tuple(ClusterNode(node_id=n, http_endpoint=u) for n, u in nodes),
        ),
        signer,
    )


async def test_cluster_records_verify_against_the_pinned_operator_key() -> None:
    clock = SimClock()
    peer = FakePeer("http://a", clock)
    good, rogue = manifest(clock, SEED, 1), manifest(clock, OTHER, 2)
    await peer.put("cluster.mesh.test", good, 600)
    await peer.put("cluster.mesh.test", rogue, 600)
    ours = MemoryRecordStore()
    w = worker(ours, clock, peer, operator_spk=SPK)
    report = await w.tick()
    assert (report.stored, report.refused) == (1, 1)
    assert await held(ours, "cluster.mesh.test", clock) == {good}
    assert value_hash(good) != value_hash(rogue)


def gossip_world(
    clock: SimClock,
) -> tuple[MemoryRecordStore, FakePeer, dict[str, FakePeer], SyncWorker]:
    """Our store, peer ``http://a`` serving its manifest, and a worker that builds new fakes."""
    a = FakePeer("http://a", clock)
    a.manifest_base, a.manifest_spk = "mesh.test", SPK
    made: dict[str, FakePeer] = {}

    def factory(url: str) -> SyncPeer:
        made[url] = FakePeer(url, clock)
        return made[url]

    ours = MemoryRecordStore()
    w = SyncWorker(
        ours,
        clock,
        [a],
        interval=10,
        operator_spk=SPK,
        cluster_base="Mesh.Test",
        peer_factory=factory,
        self_endpoint="http://me:8053/",
        node_id="me",
    )
    return ours, a, made, w


async def test_gossip_installs_a_newer_manifest_with_its_lifetime_and_swaps_peers() -> None:
    clock = SimClock()
    ours, a, made, w = gossip_world(clock)
    wire = manifest(
        clock,
        SEED,
        5,
        (
            ("a", "http://a"),
            ("b", "http://b/"),
            ("me", "http://elsewhere"),
            ("m2", "http://ME:8053"),
        ),
    )
    await a.put("cluster.mesh.test", wire, 60)  # the peer keeps it 60 s
    report = await w.tick()
    assert report.manifest_seq == 5
    [row] = await ours.get("cluster.mesh.test", clock.now())
    assert row.value == wire
    assert row.remaining_ttl(clock.now()) > 3000  # exp - now, not the peer's 60 s
    assert w.peers == ["http://a", "http://b"]  # ourselves (node id, self URL) left out
    assert list(made) == ["http://b"]
    assert w.counters["manifest_installed"] == 1
    # the same seq again: nothing to install
    second = await w.tick()
    assert (second.peer, second.manifest_seq) == ("http://b", None)  # round-robin goes on
    assert (await w.tick()).peer == "http://a"
    assert made["http://b"].manifest_calls == 1


async def test_gossip_refuses_forged_misnamed_and_older_manifests() -> None:
    clock = SimClock()
    ours, a, _, w = gossip_world(clock)
    await ours.put("cluster.mesh.test", manifest(clock, SEED, 7), 600, clock.now())
    a.manifest_spk = None  # the peer serves whatever decodes
    for wire in (
        manifest(clock, OTHER, 9, (("x", "http://x"),)),  # another operator
        manifest(clock, SEED, 9, (("x", "http://x"),), name="other.test"),  # another cluster
        manifest(clock, SEED, 7, (("x", "http://x"),)),  # not newer than ours
    ):
        await a.store.delete("cluster.mesh.test")
        await a.put("cluster.mesh.test", wire, 600)
        report = await w.tick()
        assert report.manifest_seq is None
        assert w.peers == ["http://a"]


async def test_gossip_can_drop_the_peer_it_came_from() -> None:
    clock = SimClock()
    _, a, made, w = gossip_world(clock)
    await a.put("cluster.mesh.test", manifest(clock, SEED, 3, (("c", "http://c"),)), 600)
    await a.put("x.mesh.test", "still pulled this tick", 600)
    report = await w.tick()
    assert (report.manifest_seq, report.stored) == (3, 1)
    assert w.peers == ["http://c"]
    assert a.closed
    assert not made["http://c"].closed
    assert (await w.tick()).peer == "http://c"


async def test_no_gossip_without_a_pinned_key_or_base_domain() -> None:
    clock = SimClock()
    a = FakePeer("http://a", clock)
    await worker(MemoryRecordStore(), clock, a, operator_spk=SPK).tick()
    await worker(MemoryRecordStore(), clock, a).tick()
    assert a.manifest_calls == 0


async def test_three_nodes_converge_by_pulling_from_each_other() -> None:
    """Writes on any node reach every node, only through the workers, in a few rounds."""
    clock = SimClock()
    names = ["a", "b", "c"]
    stores = {n: MemoryRecordStore() for n in names}
    workers = {
        n: SyncWorker(
            stores[n],
            clock,
            [FakePeer(f"http://{m}", clock, stores[m]) for m in names if m != n],
            interval=10,
        )
        for n in names
    }
    owner, wire = identity()
    await stores["a"].put(owner, wire, 3600, clock.now())
    await stores["b"].put("www.mesh.test", "from b", 3600, clock.now())
    await stores["c"].put("www.mesh.test", "from c", 3600, clock.now())
    await stores["c"].put(
        "slot-1.mb-0123456789ab.mesh.test", "junk at a DMP name", 3600, clock.now()
    )

    async def contents(store: MemoryRecordStore) -> set[tuple[str, str]]:
        rows = await store.digest((0, "", ""), 1000, clock.now())
        return {(r.owner, r.value) for r in rows}

    async with anyio.create_task_group() as tg:
        for w in workers.values():
            tg.start_soon(w.run)
        for _ in range(4):  # each node has 2 peers: 2 rounds reach everyone, 2 to spare
            await anyio.wait_all_tasks_blocked()
            clock.advance(10)
            await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    expected = {(owner, wire), ("www.mesh.test", "from b"), ("www.mesh.test", "from c")}
    assert await contents(stores["a"]) == expected
    assert await contents(stores["b"]) == expected
    assert await contents(stores["c"]) == expected | {
        ("slot-1.mb-0123456789ab.mesh.test", "junk at a DMP name")
    }


async def test_a_peer_down_costs_one_line_per_tick_with_gossip_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SimClock()
    _, a, _, w = gossip_world(clock)
    a.fail = PeerUnreachable("connection refused")
    with caplog.at_level(logging.INFO, logger="dmp.node.sync"):
        report = await w.tick()
    assert report.error is not None
    assert [r.levelname for r in caplog.records if r.levelno >= logging.INFO] == ["WARNING"]
    assert w.counters["peer_error"] == 1


async def test_a_peer_without_the_manifest_route_is_still_synced() -> None:
    clock = SimClock()

    class Old(FakePeer):
        async def cluster_manifest(self) -> dict[str, object] | None:
            raise PeerRejected("HTTP 404: not found", status=404)

    old = Old("http://old", clock)
    await old.put("x.mesh.test", "x", 600)
    ours = MemoryRecordStore()
    w = SyncWorker(ours, clock, [old], interval=10, operator_spk=SPK, cluster_base="mesh.test")
    report = await w.tick()
    assert (report.error, report.stored) == (None, 1)
