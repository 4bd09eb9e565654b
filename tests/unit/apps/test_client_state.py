"""The client's local state: one conformance suite over the file and memory adapters."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from dmp.adapters.client_state import (
    FileTokenFiles,
    JsonReplayCache,
    MemoryIntroQueue,
    MemoryPrekeyStore,
    MemoryReplayCache,
    MemoryTokenFiles,
    SqliteIntroQueue,
    SqlitePrekeyStore,
)
from dmp.ports.client_state import (
    ClientStateError,
    IntroQueue,
    PrekeyStore,
    ReplayCache,
    SavedToken,
    StoredPrekey,
    TokenFiles,
    node_host,
)

SPK_A, SPK_B = b"\xaa" * 32, b"\xbb" * 32
MID_1, MID_2 = b"\x01" * 16, b"\x02" * 16


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- replay cache ---------------------------------------------------------------


@pytest.fixture(params=["memory", "file"])
def replay(request: pytest.FixtureRequest, tmp_path: Path) -> ReplayCache:
    if request.param == "memory":
        return MemoryReplayCache()
    return JsonReplayCache(tmp_path / "replay_cache.json")


def test_replay_cache_keeps_entries_until_exp(replay: ReplayCache) -> None:
    assert not replay.seen(SPK_A, MID_1, 100)
    replay.record(SPK_A, MID_1, exp=400, now=100)
    assert replay.seen(SPK_A, MID_1, 400)
    assert not replay.seen(SPK_A, MID_1, 401)
    assert not replay.seen(SPK_B, MID_1, 100)
    assert not replay.seen(SPK_A, MID_2, 100)
    replay.record(SPK_B, MID_2, exp=900, now=500)  # prunes the expired entry
    assert replay.entries(500) == [(SPK_B, MID_2, 900)]


def test_replay_cache_file_format_and_reload(tmp_path: Path) -> None:
    """The file is the reference's ``[[spk_hex, msgid_hex, exp], ...]``, mode 0600."""
    path = tmp_path / "home" / "replay_cache.json"
    cache = JsonReplayCache(path)
    cache.record(SPK_A, MID_1, exp=1000, now=10)
    cache.record(SPK_B, MID_2, exp=2000, now=10)
    assert json.loads(path.read_text()) == [
        [SPK_A.hex(), MID_1.hex(), 1000],
        [SPK_B.hex(), MID_2.hex(), 2000],
    ]
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    again = JsonReplayCache(path)
    assert again.seen(SPK_A, MID_1, 999)
    assert again.entries(1500) == [(SPK_B, MID_2, 2000)]


def test_replay_cache_reads_reference_file_and_skips_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "replay_cache.json"
    path.write_text(
        json.dumps([[SPK_A.hex(), MID_1.hex(), 1234.0], ["zz", MID_1.hex(), 5], [1, 2], "x"])
    )
    cache = JsonReplayCache(path)
    assert cache.entries(0) == [(SPK_A, MID_1, 1234)]


@pytest.mark.parametrize("text", ["{not json", '{"a": 1}'])
def test_replay_cache_refuses_a_corrupt_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "replay_cache.json"
    path.write_text(text)
    with pytest.raises(ClientStateError):
        JsonReplayCache(path)


# -- prekeys ----------------------------------------------------------------------


def prekey(pid: int, exp: int = 1000) -> StoredPrekey:
    return StoredPrekey(pid, bytes([pid % 256]) * 32, bytes([(pid + 1) % 256]) * 32, exp)


@pytest.fixture(params=["memory", "sqlite"])
def prekeys(request: pytest.FixtureRequest, tmp_path: Path) -> PrekeyStore:
    if request.param == "memory":
        return MemoryPrekeyStore()
    return SqlitePrekeyStore(tmp_path / "prekeys.db")


def test_prekey_store(prekeys: PrekeyStore) -> None:
    assert prekeys.get(7) is None
    prekeys.add(prekey(7, exp=100))
    prekeys.add(prekey(2**32 - 1, exp=500))
    assert prekeys.get(7) == prekey(7, exp=100)
    assert prekeys.ids() == {7, 2**32 - 1}
    assert prekeys.consume(7)
    assert not prekeys.consume(7)
    assert prekeys.get(7) is None
    prekeys.add(prekey(8, exp=50))
    assert prekeys.prune(before=100) == 1
    assert prekeys.ids() == {2**32 - 1}


def test_sqlite_prekeys_persist_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "prekeys.db"
    store = SqlitePrekeyStore(path)
    store.add(prekey(42))
    store.close()
    assert mode(path) == 0o600
    assert SqlitePrekeyStore(path).get(42) == prekey(42)


# -- intro queue ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def intros(request: pytest.FixtureRequest, tmp_path: Path) -> IntroQueue:
    if request.param == "memory":
        return MemoryIntroQueue()
    return SqliteIntroQueue(tmp_path / "intros.db")


def add(queue: IntroQueue, spk: bytes, mid: bytes, body: bytes = b"hi") -> int:
    return queue.add(
        sender_spk=spk,
        msg_id=mid,
        sender_zone="z.example",
        body=body,
        sender_label="",
        ts=5,
        received_at=6,
    ).intro_id


def test_intro_queue(intros: IntroQueue) -> None:
    first = add(intros, SPK_A, MID_1)
    second = add(intros, SPK_A, MID_2, b"more")
    third = add(intros, SPK_B, MID_1)
    assert first < second < third
    assert add(intros, SPK_A, MID_1, b"dup") == first
    assert [i.intro_id for i in intros.list()] == [first, second, third]
    got = intros.get(second)
    assert got is not None
    assert (got.sender_spk, got.msg_id, got.body, got.sender_zone, got.ts, got.received_at) == (
        SPK_A,
        MID_2,
        b"more",
        "z.example",
        5,
        6,
    )
    assert intros.contains(SPK_B, MID_1)
    assert intros.remove(third)
    assert not intros.remove(third)
    assert not intros.contains(SPK_B, MID_1)
    assert intros.get(third) is None


def test_intro_block_drops_sender_and_denylists(intros: IntroQueue) -> None:
    add(intros, SPK_A, MID_1)
    add(intros, SPK_A, MID_2)
    keep = add(intros, SPK_B, MID_1)
    intros.block(SPK_A, note="spam", now=77)
    intros.block(SPK_A, note="again", now=99)
    assert [i.intro_id for i in intros.list()] == [keep]
    assert intros.is_blocked(SPK_A)
    assert not intros.is_blocked(SPK_B)
    assert [(d.sender_spk, d.note, d.blocked_at) for d in intros.denylist()] == [
        (SPK_A, "spam", 77)
    ]


def test_sqlite_intros_persist_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "intros.db"
    queue = SqliteIntroQueue(path)
    intro_id = add(queue, SPK_A, MID_1)
    queue.block(SPK_B, note="", now=1)
    queue.close()
    assert mode(path) == 0o600
    again = SqliteIntroQueue(path)
    assert [i.intro_id for i in again.list()] == [intro_id]
    assert again.is_blocked(SPK_B)


# -- tokens ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file"])
def tokens(request: pytest.FixtureRequest, tmp_path: Path) -> TokenFiles:
    if request.param == "memory":
        return MemoryTokenFiles()
    return FileTokenFiles(tmp_path / "tokens")


def token(node: str = "node.example", expires_at: int | None = 1000) -> SavedToken:
    return SavedToken(
        node=node,
        subject="alice@example.com",
        token="dmp_v1_" + "A" * 52,
        expires_at=expires_at,
        registered_spk="ab" * 32,
        saved_at=10,
    )


def test_token_files(tokens: TokenFiles) -> None:
    assert tokens.load("node.example") is None
    tokens.save(token())
    tokens.save(token("other.example:8053", None))
    assert tokens.load("https://Node.Example/") == token()
    assert [t.node for t in tokens.list()] == ["node.example", "other.example:8053"]
    assert tokens.forget("http://node.example")
    assert not tokens.forget("node.example")
    assert [t.node for t in tokens.list()] == ["other.example:8053"]


def test_token_file_format(tmp_path: Path) -> None:
    """``<tokens-home>/<host>.json`` with the reference's fields, mode 0600."""
    files = FileTokenFiles(tmp_path / "tokens")
    files.save(token("node.example"))
    path = tmp_path / "tokens" / "node.example.json"
    assert json.loads(path.read_text()) == {
        "version": 1,
        "node": "node.example",
        "subject": "alice@example.com",
        "token": "dmp_v1_" + "A" * 52,
        "expires_at": 1000,
        "registered_spk": "ab" * 32,
        "saved_at": 10,
    }
    assert mode(path) == 0o600
    (tmp_path / "tokens" / "junk.json").write_text("[1, 2]")
    assert [t.node for t in files.list()] == ["node.example"]
    with pytest.raises(ClientStateError):
        files.load("junk")


def test_token_expiry_grace() -> None:
    assert token(expires_at=1000).is_usable(699)
    assert not token(expires_at=1000).is_usable(700)
    assert token(expires_at=None).is_usable(10**12)


@pytest.mark.parametrize(
    ("given", "host"),
    [
        ("node.example", "node.example"),
        ("https://Node.Example.:8053/v1/x", "node.example:8053"),
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:8053", "[::1]:8053"),
        ("::1", "::1"),
        ("  dmp.example.com. ", "dmp.example.com"),
    ],
)
def test_node_host(given: str, host: str) -> None:
    assert node_host(given) == host


@pytest.mark.parametrize("given", ["", "https://", "..", ":80"])
def test_node_host_refuses_empty(given: str) -> None:
    with pytest.raises(ClientStateError):
        node_host(given)


def test_state_errors_have_the_user_exit_code() -> None:
    assert ClientStateError.exit_code == 1
    factory: Callable[[], object] = MemoryReplayCache
    assert isinstance(factory(), ReplayCache)
