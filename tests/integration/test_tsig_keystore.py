"""TsigKeyStore conformance (memory and sqlite) plus sqlite persistence (wire.md §7.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs
import pytest

from dmp.adapters.memory_store import MemoryTsigKeyStore
from dmp.adapters.sqlite_store import SqliteTsigKeyStore
from dmp.ports.store import StoreUnavailable, TsigKey, TsigKeyStore
from tests.integration.filemodes import sqlite_file_modes, umask

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000
DAY = 86_400


def make_key(local: str) -> TsigKey:
    return TsigKey(
        keyname=f"{local}-01234567-abcdef.example.com.",
        secret=bytes(range(32)),
        algorithm="hmac-sha256",
        allowed_suffixes=(
            "_dnsmesh-claim-*.example.com",
            "chunk-*-*.example.com",
            f"id-{local}.example.com",
        ),
        subject=f"{local}@example.com",
        ed25519_public="cd" * 32,
        created_at=NOW,
        expires_at=NOW + 90 * DAY,
    )


@pytest.fixture(params=["memory", "sqlite"])
async def keys(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TsigKeyStore]:
    store: TsigKeyStore
    if request.param == "memory":
        store = MemoryTsigKeyStore()
    else:
        store = await SqliteTsigKeyStore.open(tmp_path / "dmp_tsig.db")
    try:
        yield store
    finally:
        await store.aclose()


async def test_implements_the_port(keys: TsigKeyStore) -> None:
    """Both adapters satisfy the runtime-checkable TsigKeyStore protocol."""
    assert isinstance(keys, TsigKeyStore)


async def test_put_then_get_round_trips_every_field(keys: TsigKeyStore) -> None:
    """A stored key comes back equal, secret bytes and suffix tuple included."""
    key = attrs.evolve(make_key("alice"), secret=b"\x00\xff" * 16, algorithm="hmac-sha512")
    await keys.put(key)
    assert await keys.get(key.keyname) == key
    assert await keys.get("nobody-00000000-000000.example.com.") is None


async def test_put_replaces_a_key_with_the_same_name(keys: TsigKeyStore) -> None:
    """Re-minting under the same name replaces secret and expiry (and clears revocation)."""
    old = make_key("alice")
    await keys.put(old)
    await keys.revoke(old.keyname)
    new = attrs.evolve(old, secret=b"\x07" * 32, expires_at=NOW + 180 * DAY, revoked=False)
    await keys.put(new)
    assert await keys.get(old.keyname) == new
    assert await keys.all() == [new]


async def test_by_subject_and_all_are_ordered_by_keyname(keys: TsigKeyStore) -> None:
    """by_subject filters on the exact subject; both lists are sorted by keyname."""
    carol = make_key("carol")
    bob_1 = attrs.evolve(make_key("bob"), keyname="bob-11111111-abcdef.example.com.")
    bob_0 = attrs.evolve(make_key("bob"), keyname="bob-00000000-abcdef.example.com.")
    for key in (carol, bob_1, bob_0):
        await keys.put(key)
    assert await keys.by_subject("bob@example.com") == [bob_0, bob_1]
    assert await keys.by_subject("BOB@example.com") == []
    assert await keys.all() == [bob_0, bob_1, carol]


async def test_revoke_marks_the_key_and_active_drops_it(keys: TsigKeyStore) -> None:
    """revoke returns True for known keys, keeps them readable and removes them from active."""
    alice, bob = make_key("alice"), make_key("bob")
    await keys.put(alice)
    await keys.put(bob)
    assert await keys.revoke(alice.keyname) is True
    assert await keys.revoke("nobody-00000000-000000.example.com.") is False
    assert await keys.get(alice.keyname) == attrs.evolve(alice, revoked=True)
    assert await keys.active(NOW) == [bob]


async def test_active_drops_expired_keys(keys: TsigKeyStore) -> None:
    """A key is active while expires_at > now."""
    key = attrs.evolve(make_key("alice"), expires_at=NOW + 10)
    await keys.put(key)
    assert await keys.active(NOW + 9.5) == [key]
    assert await keys.active(NOW + 10) == []
    assert await keys.get(key.keyname) == key


async def test_generation_counts_changes_only(keys: TsigKeyStore) -> None:
    """generation starts at 0 and bumps on each put and each successful revoke, not on reads."""
    assert keys.generation == 0
    await keys.put(make_key("alice"))
    assert keys.generation == 1
    await keys.put(make_key("alice"))
    await keys.put(make_key("bob"))
    assert keys.generation == 3
    await keys.get("alice-01234567-abcdef.example.com.")
    await keys.all()
    await keys.active(NOW)
    await keys.by_subject("alice@example.com")
    assert await keys.revoke("nobody.") is False
    assert keys.generation == 3
    assert await keys.revoke("alice-01234567-abcdef.example.com.") is True
    assert keys.generation == 4


async def test_generation_counts_concurrent_puts(keys: TsigKeyStore) -> None:
    """Concurrent puts each bump generation once, also when committed together."""
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(keys.put, make_key(f"user{i}"))
    assert keys.generation == 10
    assert len(await keys.all()) == 10


async def test_closed_keystore_is_unavailable(keys: TsigKeyStore) -> None:
    """After aclose every call raises StoreUnavailable; aclose is idempotent."""
    await keys.aclose()
    await keys.aclose()
    with pytest.raises(StoreUnavailable):
        await keys.put(make_key("alice"))
    with pytest.raises(StoreUnavailable):
        await keys.get("alice-01234567-abcdef.example.com.")
    with pytest.raises(StoreUnavailable):
        await keys.by_subject("alice@example.com")
    with pytest.raises(StoreUnavailable):
        await keys.all()
    with pytest.raises(StoreUnavailable):
        await keys.revoke("alice-01234567-abcdef.example.com.")
    with pytest.raises(StoreUnavailable):
        await keys.active(NOW)


async def test_sqlite_keys_survive_reopen(tmp_path: Path) -> None:
    """Keys and revocations persist; the reopened store's generation starts again at 0."""
    path = tmp_path / "dmp_tsig.db"
    alice, bob = make_key("alice"), make_key("bob")
    async with await SqliteTsigKeyStore.open(path) as first:
        await first.put(alice)
        await first.put(bob)
        await first.revoke(bob.keyname)
    async with await SqliteTsigKeyStore.open(path) as second:
        assert second.generation == 0
        assert await second.all() == [alice, attrs.evolve(bob, revoked=True)]
        assert await second.active(NOW) == [alice]
        assert second.pragma("journal_mode") == "wal"


_REVOKE_CHILD = """
import sys
import anyio
from dmp.adapters.sqlite_store import SqliteTsigKeyStore

async def main(path, keyname):
    async with await SqliteTsigKeyStore.open(path) as keys:
        assert await keys.revoke(keyname)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_sqlite_generation_sees_changes_by_another_process(tmp_path: Path) -> None:
    """A revoke committed by another process moves generation; reads alone never do."""
    import sys

    path = tmp_path / "dmp_tsig.db"
    alice = make_key("alice")
    async with await SqliteTsigKeyStore.open(path, change_check_s=0) as keys:
        await keys.put(alice)
        before = keys.generation
        await keys.all()
        assert keys.generation == before
        done = await anyio.run_process(
            [sys.executable, "-c", _REVOKE_CHILD, str(path), alice.keyname]
        )
        assert done.returncode == 0
        assert keys.generation == before + 1
        assert keys.generation == before + 1  # counted once
        assert await keys.active(NOW) == []


async def test_sqlite_generation_ignores_record_writes_in_a_shared_file(tmp_path: Path) -> None:
    """Another connection's key change counts; record writes to the same file do not."""
    from dmp.adapters.sqlite_store import SqliteRecordStore

    path = tmp_path / "dmp.db"
    async with (
        await SqliteTsigKeyStore.open(path, change_check_s=0) as keys,
        await SqliteTsigKeyStore.open(path) as other,
        await SqliteRecordStore.open(path) as records,
    ):
        start = keys.generation
        for i in range(5):
            await records.put(f"chunk-{i}.example.com", "v", 60, NOW)
        assert keys.generation == start
        await other.put(make_key("bob"))
        assert keys.generation == start + 1
        await keys.put(make_key("carol"))  # our own change: counted once, at commit
        assert keys.generation == start + 2
        assert keys.generation == start + 2


async def test_sqlite_generation_checks_other_writers_at_most_every_interval(
    tmp_path: Path,
) -> None:
    """Between checks generation is a plain attribute read (no sqlite call)."""
    path = tmp_path / "dmp_tsig.db"
    async with (
        await SqliteTsigKeyStore.open(path, change_check_s=3600) as keys,
        await SqliteTsigKeyStore.open(path) as other,
    ):
        start = keys.generation  # the first read takes the baseline
        await other.put(make_key("bob"))
        assert keys.generation == start  # not checked again within the hour


async def test_sqlite_key_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """TSIG secrets: a new database and its -wal and -shm are created 0600 under umask 022."""
    path = tmp_path / "tsig.db"
    with umask(0o022):
        store = await SqliteTsigKeyStore.open(path)
        try:
            await store.put(make_key("alice"))
            assert sqlite_file_modes(path) == {"0o600"}
        finally:
            await store.aclose()
