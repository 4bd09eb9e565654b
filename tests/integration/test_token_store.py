"""Conformance suite for the TokenStore + AuditLog ports: memory and sqlite alike."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from dmp.adapters.token_store import MemoryTokenStore, SqliteTokenStore
from dmp.apps.node import admin_tokens
from dmp.domain.registration import bearer_token_from_draw, token_hash
from dmp.ports.tokens import (
    AuditEntry,
    AuditEvent,
    AuditLog,
    TokenExists,
    TokenRecord,
    TokenStore,
    TokenStoreError,
)
from tests.integration.filemodes import sqlite_file_modes, umask

pytestmark = pytest.mark.anyio

Store = MemoryTokenStore | SqliteTokenStore


def _hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _token(label: str, subject: str = "alice@example.com", **kw: object) -> TokenRecord:
    fields: dict[str, object] = {
        "token_hash": _hash(label),
        "subject": subject,
        "issued_at": 1_000,
        "expires_at": None,
    }
    fields.update(kw)
    return TokenRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryTokenStore(max_audit_rows=50)
    else:
        s = await SqliteTokenStore.open(tmp_path / "tokens.db", max_audit_rows=50)
    yield s
    await s.aclose()


async def test_implements_both_ports(store: Store) -> None:
    """Each adapter is a TokenStore and an AuditLog."""
    assert isinstance(store, TokenStore)
    assert isinstance(store, AuditLog)


async def test_add_get_round_trip_keeps_every_field(store: Store) -> None:
    """A stored token comes back field for field; unknown hashes give None."""
    rec = _token(
        "t1",
        expires_at=2_000,
        rate_per_sec=2.5,
        rate_burst=7,
        note="ops laptop",
        registered_spk="ab" * 32,
        prekey_x25519="cd" * 32,
    )
    await store.add(rec)
    assert rec == await store.get(rec.token_hash)
    assert await store.get(_hash("other")) is None


async def test_duplicate_hash_is_refused(store: Store) -> None:
    """Adding the same hash twice raises TokenExists and keeps the first."""
    first = _token("dup", note="first")
    await store.add(first)
    with pytest.raises(TokenExists):
        await store.add(_token("dup", note="second"))
    assert first == await store.get(first.token_hash)


async def test_find_filters_and_orders(store: Store) -> None:
    """find filters by subject, hash prefix and revocation, oldest first."""
    a1 = _token("a1", issued_at=30)
    a2 = _token("a2", issued_at=10)
    b1 = _token("b1", subject="bob@example.com", issued_at=20)
    for rec in (a1, a2, b1):
        await store.add(rec)
    assert [a2, b1, a1] == await store.find()
    assert [a2, a1] == await store.find(subject="alice@example.com")
    assert [b1] == await store.find(hash_prefix=b1.token_hash[:10])
    assert [b1] == await store.find(hash_prefix=b1.token_hash[:10].upper())
    assert await store.find(subject="alice@example.com", hash_prefix=b1.token_hash[:10]) == []

    assert await store.revoke(a2.token_hash, now=50)
    assert [a1] == await store.find(subject="alice@example.com")
    found = await store.find(subject="alice@example.com", include_revoked=True)
    assert [a2.token_hash, a1.token_hash] == [r.token_hash for r in found]
    assert found[0].revoked_at == 50


async def test_revoke_once(store: Store) -> None:
    """revoke is True once, then False; unknown hashes are False."""
    rec = _token("r")
    await store.add(rec)
    assert await store.revoke(rec.token_hash, now=5)
    assert not await store.revoke(rec.token_hash, now=6)
    assert not await store.revoke(_hash("nobody"), now=6)
    got = await store.get(rec.token_hash)
    assert got is not None
    assert got.revoked_at == 5
    assert not got.live(4)


def test_live_semantics() -> None:
    """A token is live before expires_at and while not revoked."""
    rec = _token("x", expires_at=100)
    assert rec.live(99)
    assert not rec.live(100)
    assert _token("y").live(10**12)
    assert not _token("z", revoked_at=1).live(0)
    assert _token("s", registered_spk="00" * 32).self_service
    assert not rec.self_service


async def test_audit_tail_newest_first_with_filter_and_limit(store: Store) -> None:
    """tail returns the newest rows first, filtered by event, at most limit."""
    events = [AuditEvent.ISSUED, AuditEvent.USED, AuditEvent.USED, AuditEvent.REJECTED]
    for i, ev in enumerate(events):
        await store.append(
            AuditEntry(
                ts=100.0 + i, event=ev, subject="alice@example.com", detail=f"row {i}", remote="::1"
            )
        )
    rows = await store.tail()
    assert [r.detail for r in rows] == ["row 3", "row 2", "row 1", "row 0"]
    assert [r.seq for r in rows] == sorted((r.seq for r in rows), reverse=True)
    assert len({r.seq for r in rows}) == 4
    assert rows[0].remote == "::1"
    assert rows[0].ts == 103.0
    used = await store.tail(event=AuditEvent.USED)
    assert [r.detail for r in used] == ["row 2", "row 1"]
    assert [r.detail for r in await store.tail(limit=1)] == ["row 3"]


async def test_audit_anonymous_rows_keep_nulls(store: Store) -> None:
    """Rows without subject or token hash (shared pool) keep them None."""
    await store.append(AuditEntry(ts=1.0, event=AuditEvent.USED, detail="POST slot-1.mb-x"))
    (row,) = await store.tail()
    assert row.subject is None
    assert row.token_hash is None


async def test_concurrent_audit_appends_all_land(store: Store) -> None:
    """Appends racing from many tasks are all committed (group commit keeps every row)."""
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(
                store.append, AuditEntry(ts=float(i), event=AuditEvent.USED, detail=str(i))
            )
    rows = await store.tail(limit=100)
    assert sorted(range(40)) == sorted(int(r.detail) for r in rows)


async def test_audit_is_bounded(store: Store) -> None:
    """The audit log keeps at most max_audit_rows (50 here), dropping the oldest."""
    for i in range(130):
        await store.append(AuditEntry(ts=float(i), event=AuditEvent.USED, detail=str(i)))
    rows = await store.tail(limit=1000)
    assert len(rows) <= 50 + 50  # sqlite prunes in steps of max_audit_rows
    assert rows[0].detail == "129"
    assert "0" not in {r.detail for r in rows}


async def test_closed_store_refuses(store: Store) -> None:
    """After aclose every call raises TokenStoreError."""
    await store.aclose()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get(_hash("a")),
        lambda: store.add(_token("a")),
        lambda: store.find(),
        lambda: store.tail(),
    ]
    for call in calls:
        with pytest.raises(TokenStoreError):
            await call()


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    """Tokens, revocations and audit rows are on disk when the store returns."""
    path = tmp_path / "t.db"
    s1 = await SqliteTokenStore.open(path)
    rec = _token("persist", expires_at=9_999, registered_spk="ef" * 32)
    await s1.add(rec)
    await s1.add(_token("gone"))
    await s1.revoke(_hash("gone"), now=77)
    await s1.append(AuditEntry(ts=5.5, event=AuditEvent.ISSUED, subject=rec.subject))
    await s1.aclose()

    s2 = await SqliteTokenStore.open(path)
    try:
        assert rec == await s2.get(rec.token_hash)
        gone = await s2.get(_hash("gone"))
        assert gone is not None
        assert gone.revoked_at == 77
        (row,) = await s2.tail()
        assert (AuditEvent.ISSUED, rec.subject, 5.5) == (row.event, row.subject, row.ts)
    finally:
        await s2.aclose()
    assert path.stat().st_mode & 0o077 == 0


async def test_sqlite_side_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Token hashes and the audit log: the -wal and -shm files are 0600 too, under umask 022."""
    path = tmp_path / "tokens.db"
    with umask(0o022):
        store = await SqliteTokenStore.open(path)
        try:
            await store.add(_token("side"))
            assert sqlite_file_modes(path) == {"0o600"}
        finally:
            await store.aclose()


async def test_sqlite_open_fails_cleanly(tmp_path: Path) -> None:
    """A path in a missing directory raises TokenStoreError, not sqlite3.Error."""
    with pytest.raises(TokenStoreError):
        await SqliteTokenStore.open(tmp_path / "missing" / "t.db")


# -- admin commands over both stores ------------------------------------------


def _draws(*labels: str) -> Callable[[int], bytes]:
    queue = [hashlib.sha256(label.encode()).digest() for label in labels]

    def draw(n: int) -> bytes:
        assert n == 32
        return queue.pop(0)

    return draw


async def test_admin_issue_stores_only_the_hash(store: Store) -> None:
    """issue prints dmp_v1_ + base32 once, stores its sha256 and logs 'issued'."""
    issued = await admin_tokens.issue_token(
        store,
        store,
        " Alice@Mesh.Example ",
        random_bytes=_draws("t1"),
        now=1_000,
        expires_in_s=admin_tokens.parse_duration("12h"),
        rate_per_sec=2.0,
        rate_burst=5,
        note="laptop",
        prekey_x25519="AB" * 32,
    )
    token = issued.token
    assert token == bearer_token_from_draw(hashlib.sha256(b"t1").digest())
    rec = await store.get(token_hash(token))
    assert rec == issued.record
    assert rec is not None
    assert (rec.subject, rec.expires_at, rec.rate_per_sec, rec.rate_burst) == (
        "alice@mesh.example",
        1_000 + 12 * 3600,
        2.0,
        5,
    )
    assert rec.prekey_x25519 == "ab" * 32
    assert not rec.self_service
    assert token not in repr(issued)
    (row,) = await store.tail()
    assert (row.event, row.subject, row.token_hash) == (
        AuditEvent.ISSUED,
        "alice@mesh.example",
        rec.token_hash,
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"subject": "two words"},
        {"subject": "bad@@host"},
        {"subject": ""},
        {"rate_burst": 0},
        {"rate_per_sec": -1.0},
        {"expires_in_s": 0},
        {"prekey_x25519": "abcd"},
    ],
)
async def test_admin_issue_refuses_bad_arguments(store: Store, kw: dict[str, Any]) -> None:
    """Bad subjects, limits, lifetimes and prekey keys raise AdminError and store nothing."""
    args: dict[str, Any] = {"subject": "alice@mesh.example", **kw}
    subject = args.pop("subject")
    with pytest.raises(admin_tokens.AdminError):
        await admin_tokens.issue_token(store, store, subject, random_bytes=_draws("x"), **args)
    assert await store.find(include_revoked=True) == []


async def test_admin_list_revoke_rotate(store: Store) -> None:
    """revoke takes a subject or a unique hash prefix; rotate revokes all live and mints one."""
    a1 = await admin_tokens.issue_token(
        store, store, "alice@mesh.example", random_bytes=_draws("a1"), now=10
    )
    a2 = await admin_tokens.issue_token(
        store, store, "alice@mesh.example", random_bytes=_draws("a2"), now=11
    )
    b1 = await admin_tokens.issue_token(store, store, "ci-bot", random_bytes=_draws("b1"), now=12)
    listed = await admin_tokens.list_tokens(store, subject="ALICE@mesh.example")
    assert [r.token_hash for r in listed] == [a1.record.token_hash, a2.record.token_hash]

    revoked = await admin_tokens.revoke_tokens(store, store, b1.record.token_hash[:8], now=20)
    assert [r.token_hash for r in revoked] == [b1.record.token_hash]
    assert revoked[0].revoked_at == 20
    with pytest.raises(admin_tokens.AdminError):
        await admin_tokens.revoke_tokens(store, store, b1.record.token_hash[:8], now=21)
    with pytest.raises(admin_tokens.AdminError):
        await admin_tokens.revoke_tokens(store, store, "nobody@mesh.example", now=21)

    gone, fresh = await admin_tokens.rotate_tokens(
        store, store, "alice@mesh.example", random_bytes=_draws("a3"), now=30, expires_in_s=60
    )
    assert sorted(r.token_hash for r in gone) == sorted(
        [a1.record.token_hash, a2.record.token_hash]
    )
    live = await admin_tokens.list_tokens(store, subject="alice@mesh.example")
    assert [r.token_hash for r in live] == [fresh.record.token_hash]
    assert fresh.record.expires_at == 90
    all_rows = await admin_tokens.list_tokens(store, include_revoked=True)
    assert len(all_rows) == 4
    text = admin_tokens.format_tokens(all_rows, now=40)
    assert text.count("revoked") == 3
    assert fresh.token not in text
    assert [admin_tokens.token_to_json(r)["token_hash"] for r in all_rows] == [
        r.token_hash for r in all_rows
    ]


async def test_admin_revoke_ambiguous_prefix(store: Store) -> None:
    """A prefix shared by two live tokens is refused."""
    for suffix in ("1", "2"):
        await store.add(
            TokenRecord(token_hash="abcd" + suffix * 60, subject="x", issued_at=0, expires_at=None)
        )
    with pytest.raises(admin_tokens.AdminError, match="ambiguous"):
        await admin_tokens.revoke_tokens(store, store, "abcd", now=1)
    assert len(await admin_tokens.revoke_tokens(store, store, "abcd1", now=1)) == 1


async def test_admin_audit_tail(store: Store) -> None:
    """audit tail filters by event name and refuses unknown names."""
    issued = await admin_tokens.issue_token(store, store, "ci-bot", random_bytes=_draws("c"), now=5)
    await admin_tokens.revoke_tokens(store, store, "ci-bot", now=6)
    rows = await admin_tokens.audit_tail(store, limit=10)
    assert [r.event for r in rows] == [AuditEvent.REVOKED, AuditEvent.ISSUED]
    only = await admin_tokens.audit_tail(store, event="issued")
    assert [r.token_hash for r in only] == [issued.record.token_hash]
    assert admin_tokens.audit_to_json(only[0])["event"] == "issued"
    assert "issued" in admin_tokens.format_audit(only)
    with pytest.raises(admin_tokens.AdminError):
        await admin_tokens.audit_tail(store, event="bogus")
    with pytest.raises(admin_tokens.AdminError):
        await admin_tokens.audit_tail(store, limit=0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90d", 90 * 86400),
        ("12h", 43200),
        ("300s", 300),
        ("4w", 4 * 604800),
        ("45", 45),
        ("5m", 300),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    """Durations use s/m/h/d/w suffixes; a bare number is seconds."""
    assert admin_tokens.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-3h", "3y", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(admin_tokens.AdminError):
        admin_tokens.parse_duration(text)


async def test_sqlite_lookup_sees_changes_from_another_process(tmp_path: Path) -> None:
    """get() reads the file as it is now: a token revoked or added elsewhere shows at once.

    ``dmp-node admin token revoke`` writes the file from another process while
    the node runs; the node's lookups must not keep an older snapshot.
    """
    path = tmp_path / "t.db"
    node = await SqliteTokenStore.open(path)
    admin = await SqliteTokenStore.open(path)
    try:
        await node.add(_token("live"))
        rec = await node.get(_hash("live"))
        assert rec is not None
        assert rec.revoked_at is None
        for i in range(5):  # the node keeps writing audit rows between lookups
            await node.append(AuditEntry(ts=float(i), event=AuditEvent.USED))
            assert await admin.revoke(_hash("live"), now=100 + i) is (i == 0)
            rec = await node.get(_hash("live"))
            assert rec is not None
            assert rec.revoked_at == 100
        assert await node.get(_hash("later")) is None
        await admin.add(_token("later"))
        assert await node.get(_hash("later")) == _token("later")
    finally:
        await node.aclose()
        await admin.aclose()


async def test_sqlite_audit_rows_survive_reopen_without_close(tmp_path: Path) -> None:
    """An audit append is committed when it returns (a killed process keeps it)."""
    path = tmp_path / "t.db"
    s1 = await SqliteTokenStore.open(path)
    await s1.append(AuditEntry(ts=1.0, event=AuditEvent.USED, detail="kept"))
    s2 = await SqliteTokenStore.open(path)  # s1 not closed: its commit must already be visible
    try:
        (row,) = await s2.tail()
        assert row.detail == "kept"
    finally:
        await s2.aclose()
        await s1.aclose()


async def test_sqlite_audit_append_waits_out_a_busy_file_in_order(tmp_path: Path) -> None:
    """Appends while another connection holds the write lock neither fail nor reorder.

    The inline commit finds the file busy and hands the row to the writer
    thread (which waits for the lock); a later append queues behind it.
    """
    import sqlite3

    path = tmp_path / "t.db"
    store = await SqliteTokenStore.open(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await store.append(AuditEntry(ts=1.0, event=AuditEvent.USED, detail="before"))
        other.execute("BEGIN IMMEDIATE")  # another process is writing
        done: list[str] = []

        async def append(detail: str) -> None:
            await store.append(AuditEntry(ts=2.0, event=AuditEvent.USED, detail=detail))
            done.append(detail)

        async with anyio.create_task_group() as tg:
            tg.start_soon(append, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(append, "second")
            await anyio.wait_all_tasks_blocked()
            assert done == []  # both wait for the lock, neither failed
            other.execute("COMMIT")
        assert sorted(done) == ["first", "second"]
        rows = await store.tail(limit=10)
        assert [r.detail for r in rows] == ["second", "first", "before"]
        await store.append(AuditEntry(ts=3.0, event=AuditEvent.USED, detail="after"))
        assert (await store.tail(limit=1))[0].detail == "after"
    finally:
        other.close()
        await store.aclose()
