"""RecordStore conformance (memory and sqlite) plus sqlite-only durability tests (wire.md §9)."""

from __future__ import annotations

import hashlib
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio.streams.text import TextReceiveStream
from hypothesis import given, settings
from hypothesis import strategies as st

from dmp.adapters import sqlite_store
from dmp.adapters.memory_store import MemoryRecordStore
from dmp.adapters.sqlite_store import SqliteRecordStore, SqliteTsigKeyStore
from dmp.ports.store import RecordStore, StoredRecord, StoreFull, StoreUnavailable, TsigKey

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000.0
OWNER = "slot-3.mb-0123456789ab.example.com"
OTHER = "chunk-0001-0123456789ab.example.com"

StoreFactory = Callable[[], Awaitable[RecordStore]]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture(params=["memory", "sqlite", "sqlite-pooled-reads", "sqlite-normal"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory for fresh stores of one kind (each sqlite store gets its own file).

    ``sqlite`` is the default (FULL, every commit in the writer thread),
    ``sqlite-normal`` commits uncontended writes inline.
    """
    counter = iter(range(1_000_000))

    async def make() -> RecordStore:
        if request.param == "memory":
            return MemoryRecordStore()
        return await SqliteRecordStore.open(
            tmp_path / f"records-{next(counter)}.db",
            inline_reads=request.param != "sqlite-pooled-reads",
            synchronous="NORMAL" if request.param == "sqlite-normal" else "FULL",
        )

    return make


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[RecordStore]:
    opened = await make_store()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteRecordStore]:
    opened = await SqliteRecordStore.open(tmp_path / "dmp.db")
    try:
        yield opened
    finally:
        await opened.aclose()


async def all_rows(store: RecordStore, now: float, page: int = 3) -> list[StoredRecord]:
    """Walk the whole digest with a small page size, following the cursor."""
    rows: list[StoredRecord] = []
    cursor = (0, "", "")
    for _ in range(10_000):
        batch = await store.digest(cursor, page, now)
        rows += batch
        if len(batch) < page:
            return rows
        last = batch[-1]
        cursor = (last.stored_ts_ms, last.owner, last.value_hash)
    raise AssertionError("digest never ended")


# --------------------------------------------------------------------------------------
# conformance: both adapters
# --------------------------------------------------------------------------------------


async def test_implements_the_port(store: RecordStore) -> None:
    """Both adapters satisfy the runtime-checkable RecordStore protocol."""
    assert isinstance(store, RecordStore)


async def test_put_then_get_returns_the_stored_row(store: RecordStore) -> None:
    """A put stores ttl, stored_ts_ms = int(now*1000), expires_at = now+ttl and the value hash."""
    now = NOW + 0.123456
    await store.put(OWNER, "v=dmp1;t=slot;é", 300, now)
    assert await store.get(OWNER, now) == [
        StoredRecord(
            owner=OWNER,
            value="v=dmp1;t=slot;é",
            ttl=300,
            stored_ts_ms=int(now * 1000),
            expires_at=now + 300,
            value_hash=sha("v=dmp1;t=slot;é"),
        )
    ]
    assert await store.get(OTHER, now) == []


async def test_values_append_and_get_orders_by_stored_ts(store: RecordStore) -> None:
    """Distinct values at one owner accumulate; get orders them oldest first."""
    await store.put(OWNER, "b", 60, NOW + 2)
    await store.put(OWNER, "a", 60, NOW + 1)
    await store.put(OWNER, "c", 60, NOW + 3)
    await store.put(OTHER, "a", 60, NOW + 1)
    assert [r.value for r in await store.get(OWNER, NOW + 3)] == ["a", "b", "c"]
    assert await store.count_values(OWNER, NOW + 3) == 3
    assert await store.count() == 4


async def test_same_millisecond_orders_by_value_hash(store: RecordStore) -> None:
    """Rows stored in the same millisecond come back in value_hash order."""
    values = [f"value-{i}" for i in range(6)]
    for value in values:
        await store.put(OWNER, value, 60, NOW)
    got = await store.get(OWNER, NOW)
    assert [r.value_hash for r in got] == sorted(sha(v) for v in values)


async def test_republish_refreshes_instead_of_duplicating(store: RecordStore) -> None:
    """Publishing the same value again replaces ttl, expires_at and stored_ts_ms."""
    await store.put(OWNER, "v", 300, NOW)
    await store.put(OWNER, "v", 30, NOW + 10.5)
    (row,) = await store.get(OWNER, NOW + 10.5)
    assert (row.ttl, row.stored_ts_ms, row.expires_at) == (30, int((NOW + 10.5) * 1000), NOW + 40.5)
    assert await store.count() == 1


async def test_get_hides_expired_rows(store: RecordStore) -> None:
    """A row is live while expires_at > now; count still sees it until swept."""
    await store.put(OWNER, "short", 10, NOW)
    await store.put(OWNER, "long", 100, NOW)
    assert {r.value for r in await store.get(OWNER, NOW + 9.999)} == {"short", "long"}
    assert [r.value for r in await store.get(OWNER, NOW + 10)] == ["long"]
    assert await store.count_values(OWNER, NOW + 10) == 1
    assert await store.count() == 2


async def test_republishing_an_expired_value_revives_it(store: RecordStore) -> None:
    """An expired but unswept value comes back with the new ttl."""
    await store.put(OWNER, "v", 10, NOW)
    await store.put(OWNER, "v", 10, NOW + 20)
    assert [(r.value, r.expires_at) for r in await store.get(OWNER, NOW + 20)] == [("v", NOW + 30)]
    assert await store.count() == 1


async def test_delete_one_value_or_the_rrset(store: RecordStore) -> None:
    """delete(owner, value) removes one row, delete(owner) all of them; both count rows."""
    for value in ("a", "b", "c"):
        await store.put(OWNER, value, 60, NOW)
    await store.put(OTHER, "a", 60, NOW)
    assert await store.delete(OWNER, "b") == 1
    assert await store.delete(OWNER, "b") == 0
    assert await store.delete(OWNER, "never") == 0
    assert [r.value for r in await store.get(OWNER, NOW)] == sorted(["a", "c"], key=sha)
    assert await store.delete(OWNER) == 2
    assert await store.delete(OWNER) == 0
    assert await store.get(OWNER, NOW) == []
    assert [r.value for r in await store.get(OTHER, NOW)] == ["a"]


async def test_delete_counts_expired_rows(store: RecordStore) -> None:
    """Expired rows that were not swept yet are still deleted and counted."""
    await store.put(OWNER, "old", 1, NOW)
    await store.put(OWNER, "new", 100, NOW)
    assert await store.delete(OWNER) == 2
    assert await store.count() == 0


async def test_sweep_removes_exactly_the_expired_rows(store: RecordStore) -> None:
    """sweep_expired(now) deletes rows with expires_at <= now and reports how many."""
    await store.put(OWNER, "a", 10, NOW)
    await store.put(OWNER, "b", 20, NOW)
    await store.put(OTHER, "c", 10, NOW)
    await store.put(OTHER, "d", 11, NOW)
    assert await store.sweep_expired(NOW + 9) == 0
    assert await store.sweep_expired(NOW + 10) == 2
    assert await store.count() == 2
    assert [r.value for r in await store.get(OWNER, NOW)] == ["b"]
    assert [r.value for r in await store.get(OTHER, NOW)] == ["d"]
    assert await store.sweep_expired(NOW + 10) == 0


async def test_sweep_larger_than_one_chunk(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep spanning several commit chunks removes everything expired."""
    monkeypatch.setattr(sqlite_store, "_SWEEP_CHUNK", 3)
    for i in range(10):
        await store.put(f"o{i % 4}.example.com", f"v{i}", 5, NOW)
    await store.put(OWNER, "keep", 50, NOW)
    assert await store.sweep_expired(NOW + 5) == 10
    assert await store.count() == 1


async def test_digest_pages_in_cursor_order(store: RecordStore) -> None:
    """digest returns live rows strictly after the cursor, ascending, at most limit."""
    await store.put("b.example.com", "x", 60, NOW + 1)
    await store.put("a.example.com", "y", 60, NOW + 1)
    await store.put("a.example.com", "z", 60, NOW + 1)
    await store.put("c.example.com", "w", 60, NOW + 0.5)
    await store.put("d.example.com", "gone", 1, NOW)
    now = NOW + 2
    keys = [
        (r.stored_ts_ms, r.owner, r.value_hash) for r in await store.digest((0, "", ""), 10, now)
    ]
    expected = sorted(
        [
            (int((NOW + 1) * 1000), "b.example.com", sha("x")),
            (int((NOW + 1) * 1000), "a.example.com", sha("y")),
            (int((NOW + 1) * 1000), "a.example.com", sha("z")),
            (int((NOW + 0.5) * 1000), "c.example.com", sha("w")),
        ]
    )
    assert keys == expected
    assert [
        (r.stored_ts_ms, r.owner, r.value_hash) for r in await store.digest(expected[1], 2, now)
    ] == expected[2:4]
    assert await store.digest(expected[-1], 10, now) == []
    assert await store.digest((0, "", ""), 0, now) == []
    page = await store.digest((0, "", ""), 1, now)
    assert [(r.owner, r.value, r.remaining_ttl(now)) for r in page] == [("c.example.com", "w", 58)]


async def test_digest_accepts_out_of_range_cursors(store: RecordStore) -> None:
    """Cursor timestamps beyond int64 either way (a peer's input) page like any other."""
    await store.put(OWNER, "a", 60, NOW)
    assert [r.value for r in await store.digest((-(2**70), "", ""), 2**70, NOW)] == ["a"]
    assert await store.digest((2**70, "", ""), 10, NOW) == []


async def test_digest_cursor_with_owner_only(store: RecordStore) -> None:
    """A cursor (ts, owner, "") sorts before every hash of that owner at that ts."""
    await store.put("a.example.com", "1", 60, NOW)
    await store.put("b.example.com", "2", 60, NOW)
    ms = int(NOW * 1000)
    rows = await store.digest((ms, "b.example.com", ""), 10, NOW)
    assert [r.owner for r in rows] == ["b.example.com"]


async def test_digest_moves_a_republished_row_to_its_new_time(store: RecordStore) -> None:
    """A refresh re-stamps stored_ts_ms, so a peer past the old position sees the row again."""
    await store.put("a.example.com", "v", 60, NOW)
    await store.put("b.example.com", "w", 60, NOW + 1)
    await store.put("a.example.com", "v", 600, NOW + 2)
    rows = await store.digest((0, "", ""), 10, NOW + 2)
    assert [(r.owner, r.stored_ts_ms, r.ttl) for r in rows] == [
        ("b.example.com", int((NOW + 1) * 1000), 60),
        ("a.example.com", int((NOW + 2) * 1000), 600),
    ]
    after_b = (rows[0].stored_ts_ms, rows[0].owner, rows[0].value_hash)
    assert [r.owner for r in await store.digest(after_b, 10, NOW + 2)] == ["a.example.com"]


async def test_digest_expiry_boundary_and_since_cursor(store: RecordStore) -> None:
    """A row is gone from the digest at expires_at; (ts, "\u00ff", "g") skips every row at ts."""
    await store.put("a.example.com", "1", 10, NOW)
    await store.put("z.example.com", "2", 60, NOW)
    await store.put("b.example.com", "3", 60, NOW + 1)
    assert [r.value for r in await store.digest((0, "", ""), 10, NOW + 10)] == ["2", "3"]
    since = (int(NOW * 1000), "\u00ff", "g")
    assert [r.value for r in await store.digest(since, 10, NOW + 10)] == ["3"]


async def test_count_values_ignores_other_owners(store: RecordStore) -> None:
    """count_values counts the live values of one owner only."""
    assert await store.count_values(OWNER, NOW) == 0
    await store.put(OWNER, "a", 60, NOW)
    await store.put(OTHER, "b", 60, NOW)
    await store.put(OTHER, "c", 60, NOW)
    assert await store.count_values(OWNER, NOW) == 1
    assert await store.count_values(OTHER, NOW) == 2


async def test_max_values_refuses_a_new_value_at_the_cap(store: RecordStore) -> None:
    """max_values stops the cap+1-th live value, writes nothing, and still allows refreshes."""
    await store.put(OWNER, "a", 60, NOW, max_values=2)
    await store.put(OWNER, "b", 60, NOW, max_values=2)
    with pytest.raises(StoreFull):
        await store.put(OWNER, "c", 60, NOW, max_values=2)
    assert await store.count_values(OWNER, NOW) == 2
    await store.put(OWNER, "a", 120, NOW + 1, max_values=2)
    assert {(r.value, r.ttl) for r in await store.get(OWNER, NOW + 1)} == {("a", 120), ("b", 60)}
    await store.put(OTHER, "c", 60, NOW, max_values=2)


async def test_max_values_ignores_expired_rows(store: RecordStore) -> None:
    """Expired values do not count toward the cap, and reviving one counts as new."""
    await store.put(OWNER, "a", 5, NOW)
    await store.put(OWNER, "b", 60, NOW)
    await store.put(OWNER, "c", 60, NOW + 6, max_values=2)
    with pytest.raises(StoreFull):
        await store.put(OWNER, "a", 60, NOW + 6, max_values=2)
    assert sorted(r.value for r in await store.get(OWNER, NOW + 6)) == ["b", "c"]


async def test_listeners_see_every_committed_change(store: RecordStore) -> None:
    """Listeners get the owner of each put, effective delete and sweep, before the call returns."""
    seen: list[str] = []
    store.add_listener(seen.append)
    await store.put(OWNER, "a", 5, NOW)
    assert seen == [OWNER]
    await store.put(OWNER, "a", 5, NOW)
    await store.put(OTHER, "b", 60, NOW)
    assert seen == [OWNER, OWNER, OTHER]
    assert await store.delete(OTHER, "nope") == 0
    assert seen == [OWNER, OWNER, OTHER]
    with pytest.raises(StoreFull):
        await store.put(OTHER, "c", 60, NOW, max_values=1)
    assert seen == [OWNER, OWNER, OTHER]
    await store.sweep_expired(NOW + 5)
    assert seen == [OWNER, OWNER, OTHER, OWNER]
    await store.delete(OTHER)
    assert seen == [OWNER, OWNER, OTHER, OWNER, OTHER]
    store.remove_listener(seen.append)
    store.remove_listener(seen.append)
    await store.put(OWNER, "z", 5, NOW)
    assert len(seen) == 5


async def test_a_failing_listener_does_not_fail_the_write(
    store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the write stands and later listeners still run."""
    seen: list[str] = []

    def broken(owner: str) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(seen.append)
    with caplog.at_level(logging.ERROR):
        await store.put(OWNER, "a", 60, NOW)
    assert seen == [OWNER]
    assert [r.value for r in await store.get(OWNER, NOW)] == ["a"]
    assert "listener bug" in caplog.text


async def test_a_cancelled_put_still_commits(store: RecordStore) -> None:
    """A put whose caller is already cancelled runs to completion."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.put(OWNER, "a", 60, NOW)
        await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert [r.value for r in await store.get(OWNER, NOW)] == ["a"]


async def test_closed_store_is_unavailable(make_store: StoreFactory) -> None:
    """After aclose every call raises StoreUnavailable; aclose is idempotent."""
    store = await make_store()
    await store.put(OWNER, "a", 60, NOW)
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreUnavailable):
        await store.put(OWNER, "b", 60, NOW)
    with pytest.raises(StoreUnavailable):
        await store.get(OWNER, NOW)
    with pytest.raises(StoreUnavailable):
        await store.digest((0, "", ""), 10, NOW)
    with pytest.raises(StoreUnavailable):
        await store.delete(OWNER)
    with pytest.raises(StoreUnavailable):
        await store.sweep_expired(NOW)
    with pytest.raises(StoreUnavailable):
        await store.count()
    with pytest.raises(StoreUnavailable):
        await store.count_values(OWNER, NOW)


async def test_concurrent_writers_all_land(store: RecordStore) -> None:
    """20 tasks writing at once lose nothing."""

    async def writer(w: int) -> None:
        for i in range(25):
            await store.put(f"w{w}.example.com", f"v{i}", 60, NOW)

    async with anyio.create_task_group() as tg:
        for w in range(20):
            tg.start_soon(writer, w)
    assert await store.count() == 500
    for w in range(20):
        assert await store.count_values(f"w{w}.example.com", NOW) == 25


# --------------------------------------------------------------------------------------
# differential: sqlite behaves exactly like the memory store
# --------------------------------------------------------------------------------------

_owners = st.sampled_from(["a.example.com", "b.example.com", "c.example.com"])
_values = st.sampled_from(["x", "y", "z", "é", "v=dmp1;long" + "q" * 300])
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            _owners,
            _values,
            st.sampled_from([1, 5, 10, 30]),
            st.one_of(st.none(), st.integers(1, 3)),
        ),
        st.tuples(st.just("delete"), _owners, st.one_of(st.none(), _values)),
        st.tuples(st.just("sweep")),
        st.tuples(
            st.just("tick"), st.one_of(st.sampled_from([1, 1000, 5000]), st.integers(0, 15_000))
        ),
    ),
    max_size=25,
)


async def _apply(store: RecordStore, op: tuple[object, ...], now: float) -> object:
    """Run one generated op; returns what the store returned (or "full")."""
    try:
        match op:
            case ("put", str() as owner, str() as value, int() as ttl, None | int() as cap):
                await store.put(owner, value, ttl, now, max_values=cap)
                return "ok"
            case ("delete", str() as owner, None | str() as value):
                return await store.delete(owner, value)
            case ("sweep",):
                return await store.sweep_expired(now)
    except StoreFull:
        return "full"
    raise AssertionError(f"unexpected op {op!r}")


@settings(max_examples=40)
@given(ops=_ops)
async def test_sqlite_matches_memory(
    ops: list[tuple[object, ...]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any sequence of puts, deletes, sweeps and clock ticks gives identical observations."""
    memory = MemoryRecordStore()
    sqlite = await SqliteRecordStore.open(
        tmp_path_factory.mktemp("diff") / "dmp.db", synchronous="NORMAL"
    )
    now = NOW
    try:
        for op in ops:
            match op:
                case ("tick", int() as elapsed_ms):
                    now += elapsed_ms / 1000
                case _:
                    assert await _apply(memory, op, now) == await _apply(sqlite, op, now), op
            for owner in ("a.example.com", "b.example.com", "c.example.com"):
                assert await memory.get(owner, now) == await sqlite.get(owner, now)
                assert await memory.count_values(owner, now) == await sqlite.count_values(
                    owner, now
                )
            assert await all_rows(memory, now) == await all_rows(sqlite, now)
            assert await memory.count() == await sqlite.count()
    finally:
        await sqlite.aclose()
        await memory.aclose()


# --------------------------------------------------------------------------------------
# sqlite only
# --------------------------------------------------------------------------------------


async def test_sqlite_uses_wal(sqlite: SqliteRecordStore, tmp_path: Path) -> None:
    """The file is in WAL mode with synchronous FULL by default (2), NORMAL (1) on request."""
    assert sqlite.pragma("journal_mode") == "wal"
    assert sqlite.pragma("synchronous") == 2
    async with await SqliteRecordStore.open(tmp_path / "n.db", synchronous="NORMAL") as normal:
        assert normal.pragma("journal_mode") == "wal"
        assert normal.pragma("synchronous") == 1


async def test_sqlite_refuses_memory_paths(tmp_path: Path) -> None:
    """An in-memory database would give every connection its own data, so it is refused."""
    with pytest.raises(ValueError, match="file path"):
        SqliteRecordStore(":memory:")


async def test_sqlite_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    """A path that cannot be opened raises StoreUnavailable, chained to the sqlite error."""
    with pytest.raises(StoreUnavailable) as info:
        await SqliteRecordStore.open(tmp_path / "missing-dir" / "dmp.db")
    assert info.value.__cause__ is not None


async def test_sqlite_restart_keeps_data(tmp_path: Path) -> None:
    """Rows written before aclose are all there after reopening the file."""
    path = tmp_path / "dmp.db"
    async with await SqliteRecordStore.open(path) as first:
        await first.put(OWNER, "a", 60, NOW)
        await first.put(OWNER, "b", 60, NOW + 1)
        await first.put(OTHER, "c", 60, NOW)
        before = await all_rows(first, NOW + 1)
    async with await SqliteRecordStore.open(path) as second:
        assert await all_rows(second, NOW + 1) == before
        assert len(before) == 3


async def test_sqlite_group_commit_batches_concurrent_writers(
    sqlite: SqliteRecordStore,
) -> None:
    """Writes queued while a commit is in flight share the next transaction."""

    async def writer(w: int) -> None:
        for i in range(25):
            await sqlite.put(f"w{w}.example.com", f"v{i}", 60, NOW)

    start_tx, start_writes = sqlite.transactions, sqlite.writes
    async with anyio.create_task_group() as tg:
        for w in range(20):
            tg.start_soon(writer, w)
    assert sqlite.writes - start_writes == 500
    assert sqlite.transactions - start_tx <= 250
    assert await sqlite.count() == 500


async def test_sqlite_normal_batches_concurrent_writers_on_the_loop(tmp_path: Path) -> None:
    """NORMAL: writes made in one loop iteration share one transaction, committed there."""
    async with await SqliteRecordStore.open(tmp_path / "n.db", synchronous="NORMAL") as store:

        async def writer(w: int) -> None:
            for i in range(25):
                await store.put(f"w{w}.example.com", f"v{i}", 60, NOW)

        async with anyio.create_task_group() as tg:
            for w in range(20):
                tg.start_soon(writer, w)
        assert store.writes == 500
        assert store.transactions <= 100
        assert await store.count() == 500


async def test_sqlite_refused_write_does_not_spoil_its_batch(sqlite: SqliteRecordStore) -> None:
    """A StoreFull inside a batch rolls back alone; the writes around it commit."""
    await sqlite.put(OWNER, "a", 60, NOW)
    results: dict[str, BaseException | None] = {}

    async def put(owner: str, value: str, cap: int | None) -> None:
        try:
            await sqlite.put(owner, value, 60, NOW, max_values=cap)
            results[value] = None
        except StoreFull as exc:
            results[value] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(put, OTHER, "o1", None)
        tg.start_soon(put, OWNER, "b", 2)
        tg.start_soon(put, OWNER, "c", 2)
        tg.start_soon(put, OTHER, "o2", None)
    assert results["o1"] is None
    assert results["o2"] is None
    assert [v for v in ("b", "c") if isinstance(results[v], StoreFull)] == ["c"]
    assert sorted(r.value for r in await sqlite.get(OWNER, NOW)) == ["a", "b"]
    assert sorted(r.value for r in await sqlite.get(OTHER, NOW)) == ["o1", "o2"]


async def test_sqlite_reads_run_beside_writes(sqlite: SqliteRecordStore) -> None:
    """Readers see only committed rows while writers keep committing."""
    counts: list[int] = []

    async def writer() -> None:
        for i in range(100):
            await sqlite.put(OWNER, f"v{i}", 60, NOW)

    async def reader() -> None:
        for _ in range(50):
            counts.append(await sqlite.count_values(OWNER, NOW))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(reader)
        tg.start_soon(reader)
    assert all(0 <= c <= 100 for c in counts)
    assert await sqlite.count_values(OWNER, NOW) == 100


async def test_sqlite_records_and_tsig_keys_share_one_file(tmp_path: Path) -> None:
    """Both stores may open the same file and keep their tables apart."""
    path = tmp_path / "dmp.db"
    key = TsigKey(
        keyname="alice-01234567-abcdef.example.com.",
        secret=b"\x01" * 32,
        algorithm="hmac-sha256",
        allowed_suffixes=("id-0123456789abcdef.example.com",),
        subject="alice@example.com",
        ed25519_public="ab" * 32,
        created_at=int(NOW),
        expires_at=int(NOW) + 90 * 86400,
    )
    async with (
        await SqliteRecordStore.open(path) as records,
        await SqliteTsigKeyStore.open(path) as keys,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(records.put, OWNER, "a", 60, NOW)
            tg.start_soon(keys.put, key)
        assert [r.value for r in await records.get(OWNER, NOW)] == ["a"]
        assert await keys.get(key.keyname) == key
    async with (
        await SqliteRecordStore.open(path) as records,
        await SqliteTsigKeyStore.open(path) as keys,
    ):
        assert await records.count() == 1
        assert await keys.all() == [key]


_CRASH_CHILD = """
import sys
import anyio
from dmp.adapters.sqlite_store import SqliteRecordStore

async def main(path, synchronous):
    store = await SqliteRecordStore.open(path, synchronous=synchronous)

    async def writer(w):
        for i in range(20000):
            await store.put(f"w{w}.example.com", f"value-{i}", 3600, 1900000000.0)
            sys.stdout.write(f"ack w{w}.example.com value-{i}\\n")
            sys.stdout.flush()

    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    async with anyio.create_task_group() as tg:
        for w in range(8):
            tg.start_soon(writer, w)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_sqlite_acknowledged_puts_survive_sigkill(tmp_path: Path, synchronous: str) -> None:
    """Every put a writer acknowledged before being SIGKILLed is there after reopening."""
    path = tmp_path / "crash.db"
    acked: list[tuple[str, str]] = []
    buffer = ""
    with anyio.fail_after(120):
        process = await anyio.open_process(
            [sys.executable, "-c", _CRASH_CHILD, str(path), synchronous],
            stderr=None,
        )
        try:
            assert process.stdout is not None
            lines = TextReceiveStream(process.stdout)
            async for chunk in lines:
                buffer += chunk
                if buffer.count("\n") >= 400:
                    process.kill()  # SIGKILL to the child this test started, by its handle
                    break
            await process.wait()
            async for chunk in lines:  # acks written before the kill are still in the pipe
                buffer += chunk
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
    assert process.returncode == -signal.SIGKILL, "the writer finished before it was killed"
    complete = buffer.split("\n")[:-1]  # a torn last line is not an acknowledgement
    for line in complete:
        if line.startswith("ack "):
            _, owner, value = line.split(" ")
            acked.append((owner, value))
    assert len(acked) >= 300
    async with await SqliteRecordStore.open(path) as reopened:
        stored = {(r.owner, r.value) for r in await all_rows(reopened, NOW, page=1000)}
    missing = [pair for pair in acked if pair not in stored]
    assert missing == [], f"{len(missing)} acknowledged puts lost ({synchronous})"


class _BusyConnection:
    """Stands in for the inline read connection: sqlite says the database is locked."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, *args: object) -> None:
        self.calls += 1
        raise sqlite3.OperationalError("database is locked")

    def close(self) -> None:
        pass


async def test_sqlite_busy_inline_read_is_retried_in_the_pool(sqlite: SqliteRecordStore) -> None:
    """The loop-thread read never waits for a lock: a busy answer goes to the reader pool."""
    await sqlite.put(OWNER, "a", 60, NOW)
    busy = _BusyConnection()
    sqlite._engine._inline = busy  # type: ignore[assignment]
    assert [r.value for r in await sqlite.get(OWNER, NOW)] == ["a"]
    assert await sqlite.count_values(OWNER, NOW) == 1
    assert busy.calls == 2


async def test_sqlite_inline_reads_stay_on_one_thread(sqlite: SqliteRecordStore) -> None:
    """Reads from another thread than the loop's use the pool, not the inline connection."""
    await sqlite.put(OWNER, "a", 60, NOW)
    assert await sqlite.count_values(OWNER, NOW) == 1  # the loop thread claims it

    def elsewhere() -> int:
        return anyio.run(sqlite.count_values, OWNER, NOW)

    assert await anyio.to_thread.run_sync(elsewhere) == 1
    assert sqlite._engine._inline_thread == threading.get_ident()


async def test_sqlite_normal_commits_inline_and_checkpoints_in_the_thread(tmp_path: Path) -> None:
    """NORMAL: uncontended writes commit on the loop thread; the WAL stays bounded."""
    path = tmp_path / "normal.db"
    async with await SqliteRecordStore.open(path, synchronous="NORMAL") as store:
        seen: list[str] = []
        store.add_listener(seen.append)
        assert store.pragma("wal_autocheckpoint") == 0
        for i in range(2000):
            await store.put(f"n{i}.example.com", "v" * 200, 60, NOW)
        assert store.transactions == 2000
        assert len(seen) == 2000
        # ~5-6 WAL frames (~24 KiB) per write: without the thread's checkpoints this would
        # be ~48 MiB; with one every ~250 writes it restarts at ~6 MiB, and however late
        # the thread runs (CI under load: it ran late enough to reach 24 MiB), the loop
        # stops committing 500 writes past the last checkpoint (~12 MiB at most)
        assert (tmp_path / "normal.db-wal").stat().st_size < 14 * 2**20
        assert await store.count() == 2000


async def test_sqlite_normal_syncs_a_lone_write_within_the_interval(tmp_path: Path) -> None:
    """NORMAL: a commit reaches the fsynced main file within sync_interval_s, unprompted."""
    path = tmp_path / "sync.db"
    async with await SqliteRecordStore.open(
        path, synchronous="NORMAL", sync_interval_s=0.05
    ) as store:
        await anyio.sleep(0.2)  # let the thread's first wake-up pass with nothing to sync
        before = store.checkpoints
        await store.put(OWNER, "lone", 60, NOW)
        for _ in range(500):  # the writer thread's checkpoint: poll, at most 5 s
            if store.checkpoints > before:
                break
            await anyio.sleep(0.01)
        assert store.checkpoints > before
        # the checkpoint copied the WAL into the main file: a copy of that file
        # alone (no -wal beside it) holds the row
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        conn = sqlite3.connect(copy)
        try:
            assert conn.execute("SELECT value FROM records").fetchall() == [("lone",)]
        finally:
            conn.close()
        await anyio.sleep(0.2)
        idle = store.checkpoints
        await anyio.sleep(0.2)
        assert store.checkpoints == idle  # nothing new committed: no more checkpoints


async def test_sqlite_normal_inline_write_never_waits_for_a_lock(tmp_path: Path) -> None:
    """Another connection holding the write lock: the put waits in the thread, not the loop."""
    path = tmp_path / "locked.db"
    async with await SqliteRecordStore.open(path, synchronous="NORMAL") as store:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
            done = anyio.Event()

            async def put() -> None:
                await store.put(OWNER, "after-unlock", 60, NOW)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(put)
                await anyio.wait_all_tasks_blocked()
                # the loop runs on while the put waits for the lock
                assert not done.is_set()
                assert await store.count_values(OWNER, NOW) == 0
                other.execute("COMMIT")
                with anyio.fail_after(10):
                    await done.wait()
            assert [r.value for r in await store.get(OWNER, NOW)] == ["after-unlock"]
        finally:
            other.close()


@pytest.mark.parametrize("kind", ["records", "tsig"])
async def test_sqlite_refuses_a_foreign_database_without_touching_it(
    tmp_path: Path, kind: str
) -> None:
    """A file whose tables share our names but not our columns is refused as it is.

    The reference node's databases are like this (``records``/``tsig_keys``
    with other columns): opening one must neither fail half-way nor add our
    indexes, tables or triggers to it.
    """
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    table = "records" if kind == "records" else "tsig_keys"
    conn.execute(f"CREATE TABLE {table} (name TEXT, value TEXT, ttl INTEGER, stored_ts INTEGER)")
    conn.commit()
    before = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    opener = SqliteRecordStore.open if kind == "records" else SqliteTsigKeyStore.open
    with pytest.raises(StoreUnavailable, match=f"not a dmp-node database.*'{table}'"):
        await opener(path)
    assert conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == before
    conn.close()
