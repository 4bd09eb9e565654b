"""The client's local state on disk, and in memory for tests (layer: adapters).

Implements :mod:`dmp.ports.client_state`:

=====================  ==========================================  ======================
port                   on disk (config home)                        in memory
=====================  ==========================================  ======================
ReplayCache            ``replay_cache.json`` (:class:`JsonReplayCache`)   :class:`MemoryReplayCache`
PrekeyStore            ``prekeys.db`` (:class:`SqlitePrekeyStore`)        :class:`MemoryPrekeyStore`
IntroQueue             ``intros.db`` (:class:`SqliteIntroQueue`)          :class:`MemoryIntroQueue`
TokenFiles             ``<tokens-home>/<host>.json`` (:class:`FileTokenFiles`)  :class:`MemoryTokenFiles`
=====================  ==========================================  ======================

Every file is created with mode 0600 (its directory 0700). JSON files are
replaced atomically (temporary file, fsync, rename); sqlite files change
inside transactions. ``sqlite3`` and ``OSError`` failures become
:class:`~dmp.ports.client_state.ClientStateError`.

The replay cache file is the reference's format, ``[[spk_hex, msgid_hex,
exp], ...]``; token files are ``{"version": 1, "node", "subject", "token",
"expires_at", "registered_spk", "saved_at"}``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from dmp.ports.client_state import (
    ClientStateError,
    DeniedSender,
    PendingIntro,
    SavedToken,
    StoredPrekey,
    node_host,
)

__all__ = [
    "INTROS_FILE",
    "PREKEYS_FILE",
    "REPLAY_CACHE_FILE",
    "FileTokenFiles",
    "JsonReplayCache",
    "MemoryIntroQueue",
    "MemoryPrekeyStore",
    "MemoryReplayCache",
    "MemoryTokenFiles",
    "SqliteIntroQueue",
    "SqlitePrekeyStore",
]

REPLAY_CACHE_FILE: Final = "replay_cache.json"
PREKEYS_FILE: Final = "prekeys.db"
INTROS_FILE: Final = "intros.db"


# -- files ----------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (parent created 0700)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise ClientStateError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ClientStateError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    """The parsed JSON at ``path``, or None when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientStateError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClientStateError(f"{path} is not valid JSON") from exc


# -- replay cache -----------------------------------------------------------------


class MemoryReplayCache:
    """:class:`~dmp.ports.client_state.ReplayCache` in memory."""

    def __init__(self) -> None:
        self._entries: dict[tuple[bytes, bytes], int] = {}

    def seen(self, sender_spk: bytes, msg_id: bytes, now: int) -> bool:
        exp = self._entries.get((sender_spk, msg_id))
        return exp is not None and now <= exp

    def record(self, sender_spk: bytes, msg_id: bytes, exp: int, now: int) -> None:
        self._prune(now)
        key = (sender_spk, msg_id)
        self._entries[key] = max(exp, self._entries.get(key, exp))
        self._persist()

    def entries(self, now: int) -> list[tuple[bytes, bytes, int]]:
        return [(spk, mid, exp) for (spk, mid), exp in self._entries.items() if now <= exp]

    def _prune(self, now: int) -> None:
        for key in [k for k, exp in self._entries.items() if exp < now]:
            del self._entries[key]

    def _persist(self) -> None:
        """Hook for the file-backed subclass."""


class JsonReplayCache(MemoryReplayCache):
    """:class:`~dmp.ports.client_state.ReplayCache` persisted as ``replay_cache.json``.

    The file is read once at construction and rewritten on every
    :meth:`record`. Rows that are not ``[64-hex, 32-hex, int]`` are skipped.

    Raises:
        ClientStateError: (constructor) the file is unreadable or not a JSON list.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        data = _read_json(path)
        if data is None:
            return
        if not isinstance(data, list):
            raise ClientStateError(f"{path} is not a JSON list")
        for row in data:
            if not (isinstance(row, list) and len(row) == 3):
                continue
            spk_hex, mid_hex, exp = row
            if not (isinstance(spk_hex, str) and isinstance(mid_hex, str)):
                continue
            if not isinstance(exp, int | float) or isinstance(exp, bool):
                continue
            try:
                spk, mid = bytes.fromhex(spk_hex), bytes.fromhex(mid_hex)
            except ValueError:
                continue
            self._entries[(spk, mid)] = int(exp)

    def _persist(self) -> None:
        rows = [[spk.hex(), mid.hex(), exp] for (spk, mid), exp in self._entries.items()]
        _write_private(self.path, json.dumps(rows).encode("utf-8"))


# -- sqlite -----------------------------------------------------------------------


class _Sqlite:
    """One lazily opened sqlite file, created 0600, with a schema."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.executescript(self._schema)
        except (OSError, sqlite3.Error) as exc:
            raise ClientStateError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        return conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``)."""
        conn = self._open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ClientStateError(f"{self.path}: {exc}") from exc

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        conn = self._open()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise ClientStateError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- prekeys ------------------------------------------------------------------------


class MemoryPrekeyStore:
    """:class:`~dmp.ports.client_state.PrekeyStore` in memory."""

    def __init__(self) -> None:
        self._keys: dict[int, StoredPrekey] = {}

    def add(self, prekey: StoredPrekey) -> None:
        self._keys[prekey.prekey_id] = prekey

    def get(self, prekey_id: int) -> StoredPrekey | None:
        return self._keys.get(prekey_id)

    def consume(self, prekey_id: int) -> bool:
        return self._keys.pop(prekey_id, None) is not None

    def ids(self) -> set[int]:
        return set(self._keys)

    def prune(self, before: int) -> int:
        old = [k for k, p in self._keys.items() if p.exp < before]
        for k in old:
            del self._keys[k]
        return len(old)


_PREKEY_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS prekeys (
    prekey_id   INTEGER PRIMARY KEY,
    private_key BLOB NOT NULL,
    public_key  BLOB NOT NULL,
    exp         INTEGER NOT NULL
);
"""


class SqlitePrekeyStore:
    """:class:`~dmp.ports.client_state.PrekeyStore` in ``prekeys.db``."""

    def __init__(self, path: Path) -> None:
        self._db = _Sqlite(path, _PREKEY_SCHEMA)

    @property
    def path(self) -> Path:
        return self._db.path

    def add(self, prekey: StoredPrekey) -> None:
        with self._db.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO prekeys VALUES (?, ?, ?, ?)",
                (prekey.prekey_id, prekey.private_key, prekey.public_key, prekey.exp),
            )

    def get(self, prekey_id: int) -> StoredPrekey | None:
        rows = self._db.query(
            "SELECT prekey_id, private_key, public_key, exp FROM prekeys WHERE prekey_id = ?",
            (prekey_id,),
        )
        if not rows:
            return None
        pid, private_key, public_key, exp = rows[0]
        return StoredPrekey(int(pid), bytes(private_key), bytes(public_key), int(exp))

    def consume(self, prekey_id: int) -> bool:
        with self._db.tx() as conn:
            return (
                conn.execute("DELETE FROM prekeys WHERE prekey_id = ?", (prekey_id,)).rowcount > 0
            )

    def ids(self) -> set[int]:
        return {int(row[0]) for row in self._db.query("SELECT prekey_id FROM prekeys")}

    def prune(self, before: int) -> int:
        with self._db.tx() as conn:
            return conn.execute("DELETE FROM prekeys WHERE exp < ?", (before,)).rowcount

    def close(self) -> None:
        self._db.close()


# -- intro queue ------------------------------------------------------------------------


class MemoryIntroQueue:
    """:class:`~dmp.ports.client_state.IntroQueue` in memory."""

    def __init__(self) -> None:
        self._intros: dict[int, PendingIntro] = {}
        self._denied: dict[bytes, DeniedSender] = {}
        self._next_id = 1

    def add(
        self,
        *,
        sender_spk: bytes,
        msg_id: bytes,
        sender_zone: str,
        body: bytes,
        sender_label: str,
        ts: int,
        received_at: int,
    ) -> PendingIntro:
        for intro in self._intros.values():
            if intro.sender_spk == sender_spk and intro.msg_id == msg_id:
                return intro
        intro = PendingIntro(
            self._next_id, sender_spk, msg_id, sender_zone, body, sender_label, ts, received_at
        )
        self._intros[intro.intro_id] = intro
        self._next_id += 1
        return intro

    def list(self) -> builtins.list[PendingIntro]:
        return [self._intros[k] for k in sorted(self._intros)]

    def get(self, intro_id: int) -> PendingIntro | None:
        return self._intros.get(intro_id)

    def contains(self, sender_spk: bytes, msg_id: bytes) -> bool:
        return any(i.sender_spk == sender_spk and i.msg_id == msg_id for i in self._intros.values())

    def remove(self, intro_id: int) -> bool:
        return self._intros.pop(intro_id, None) is not None

    def block(self, sender_spk: bytes, *, note: str, now: int) -> None:
        self._denied.setdefault(sender_spk, DeniedSender(sender_spk, note, now))
        for intro_id in [k for k, i in self._intros.items() if i.sender_spk == sender_spk]:
            del self._intros[intro_id]

    def is_blocked(self, sender_spk: bytes) -> bool:
        return sender_spk in self._denied

    def denylist(self) -> builtins.list[DeniedSender]:
        return sorted(self._denied.values(), key=lambda d: d.blocked_at)


_INTRO_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS intros (
    intro_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_spk   BLOB NOT NULL,
    msg_id       BLOB NOT NULL,
    sender_zone  TEXT NOT NULL,
    body         BLOB NOT NULL,
    sender_label TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    UNIQUE (sender_spk, msg_id)
);
CREATE TABLE IF NOT EXISTS denylist (
    sender_spk BLOB PRIMARY KEY,
    note       TEXT NOT NULL,
    blocked_at INTEGER NOT NULL
);
"""

_INTRO_COLUMNS: Final = (
    "intro_id, sender_spk, msg_id, sender_zone, body, sender_label, ts, received_at"
)


def _intro(row: tuple[Any, ...]) -> PendingIntro:
    intro_id, spk, msg_id, zone, body, label, ts, received_at = row
    return PendingIntro(
        int(intro_id), bytes(spk), bytes(msg_id), str(zone), bytes(body), str(label), int(ts),
        int(received_at),
    )  # fmt: skip


class SqliteIntroQueue:
    """:class:`~dmp.ports.client_state.IntroQueue` in ``intros.db``."""

    def __init__(self, path: Path) -> None:
        self._db = _Sqlite(path, _INTRO_SCHEMA)

    @property
    def path(self) -> Path:
        return self._db.path

    def add(
        self,
        *,
        sender_spk: bytes,
        msg_id: bytes,
        sender_zone: str,
        body: bytes,
        sender_label: str,
        ts: int,
        received_at: int,
    ) -> PendingIntro:
        with self._db.tx() as conn:
            conn.execute(
                f"INSERT OR IGNORE INTO intros ({_INTRO_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                (sender_spk, msg_id, sender_zone, body, sender_label, ts, received_at),
            )
            row = conn.execute(
                f"SELECT {_INTRO_COLUMNS} FROM intros WHERE sender_spk = ? AND msg_id = ?",
                (sender_spk, msg_id),
            ).fetchone()
        return _intro(row)

    def list(self) -> builtins.list[PendingIntro]:
        return [
            _intro(r) for r in self._db.query(f"SELECT {_INTRO_COLUMNS} FROM intros ORDER BY 1")
        ]

    def get(self, intro_id: int) -> PendingIntro | None:
        rows = self._db.query(
            f"SELECT {_INTRO_COLUMNS} FROM intros WHERE intro_id = ?", (intro_id,)
        )
        return _intro(rows[0]) if rows else None

    def contains(self, sender_spk: bytes, msg_id: bytes) -> bool:
        rows = self._db.query(
            "SELECT 1 FROM intros WHERE sender_spk = ? AND msg_id = ?", (sender_spk, msg_id)
        )
        return bool(rows)

    def remove(self, intro_id: int) -> bool:
        with self._db.tx() as conn:
            return conn.execute("DELETE FROM intros WHERE intro_id = ?", (intro_id,)).rowcount > 0

    def block(self, sender_spk: bytes, *, note: str, now: int) -> None:
        with self._db.tx() as conn:
            conn.execute("INSERT OR IGNORE INTO denylist VALUES (?, ?, ?)", (sender_spk, note, now))
            conn.execute("DELETE FROM intros WHERE sender_spk = ?", (sender_spk,))

    def is_blocked(self, sender_spk: bytes) -> bool:
        return bool(self._db.query("SELECT 1 FROM denylist WHERE sender_spk = ?", (sender_spk,)))

    def denylist(self) -> builtins.list[DeniedSender]:
        rows = self._db.query(
            "SELECT sender_spk, note, blocked_at FROM denylist ORDER BY blocked_at, sender_spk"
        )
        return [DeniedSender(bytes(spk), str(note), int(at)) for spk, note, at in rows]

    def close(self) -> None:
        self._db.close()


# -- tokens ---------------------------------------------------------------------------------


def _token_json(token: SavedToken) -> dict[str, Any]:
    return {
        "version": token.version,
        "node": token.node,
        "subject": token.subject,
        "token": token.token,
        "expires_at": token.expires_at,
        "registered_spk": token.registered_spk,
        "saved_at": token.saved_at,
    }


def _token_from_json(data: Any, where: str) -> SavedToken:
    if not isinstance(data, dict):
        raise ClientStateError(f"{where} is not a token file")
    try:
        expires_at = data.get("expires_at")
        return SavedToken(
            node=str(data["node"]),
            subject=str(data.get("subject") or ""),
            token=str(data["token"]),
            expires_at=None if expires_at is None else int(expires_at),
            registered_spk=str(data.get("registered_spk") or ""),
            saved_at=int(data.get("saved_at") or 0),
            version=int(data.get("version") or 1),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientStateError(f"{where} is not a token file: {exc}") from exc


class MemoryTokenFiles:
    """:class:`~dmp.ports.client_state.TokenFiles` in memory."""

    def __init__(self) -> None:
        self._tokens: dict[str, SavedToken] = {}

    def save(self, token: SavedToken) -> None:
        self._tokens[node_host(token.node)] = token

    def load(self, node: str) -> SavedToken | None:
        return self._tokens.get(node_host(node))

    def list(self) -> builtins.list[SavedToken]:
        return [self._tokens[k] for k in sorted(self._tokens)]

    def forget(self, node: str) -> bool:
        return self._tokens.pop(node_host(node), None) is not None


class FileTokenFiles:
    """:class:`~dmp.ports.client_state.TokenFiles` as ``<tokens-home>/<host>.json`` (0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, node: str) -> Path:
        """``<tokens-home>/<host>.json`` for any form of ``node``."""
        return self.directory / f"{node_host(node)}.json"

    def save(self, token: SavedToken) -> None:
        data = json.dumps(_token_json(token), indent=2, sort_keys=True) + "\n"
        _write_private(self.path_for(token.node), data.encode("utf-8"))

    def load(self, node: str) -> SavedToken | None:
        path = self.path_for(node)
        data = _read_json(path)
        return None if data is None else _token_from_json(data, str(path))

    def list(self) -> builtins.list[SavedToken]:
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:
            return []
        out = []
        for path in paths:
            try:
                data = _read_json(path)
                if data is not None:
                    out.append(_token_from_json(data, str(path)))
            except ClientStateError:
                continue
        return out

    def forget(self, node: str) -> bool:
        try:
            self.path_for(node).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ClientStateError(f"cannot delete {self.path_for(node)}: {exc.strerror}") from exc
        return True
