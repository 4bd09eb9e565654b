"""Bearer-token stores with an audit log: in-memory and sqlite (layer: adapters).

Both classes implement :class:`dmp.ports.tokens.TokenStore` and
:class:`dmp.ports.tokens.AuditLog`. Only token hashes are stored.

``SqliteTokenStore`` keeps one sqlite file in WAL mode with three
connections:

* a writer, used in a worker thread, one statement at a time. Token changes
  (add, revoke) commit with ``synchronous=FULL``: they are on disk (fsync'd)
  when the coroutine returns.
* a reader for :meth:`~SqliteTokenStore.find` and
  :meth:`~SqliteTokenStore.tail`, also in a worker thread.
* a lookup connection for :meth:`~SqliteTokenStore.get`, which runs on the
  calling (event loop) thread: one primary-key row, served from sqlite's and
  the OS's caches in ~10-20 µs, about a third of what the hand-off to a worker
  thread and back costs. A WAL reader never waits for the writer; if sqlite
  still reports the file busy (a recovery in progress), the lookup is
  retried in a worker thread.

Audit rows are written by group commit: each append queues its row, and
whichever worker runs next commits every queued row in one transaction, with
``synchronous=NORMAL`` (no fsync of its own). An append still returns only
after its row is committed, so a crash or SIGKILL of the process never loses
it; a power loss may drop the newest rows, up to the next fsync'd commit (a
token change, or a WAL checkpoint). The audit table is pruned to the newest
``max_audit_rows``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from dmp.ports.tokens import (
    AuditEntry,
    AuditEvent,
    TokenExists,
    TokenRecord,
    TokenStoreError,
)

__all__ = ["MemoryTokenStore", "SqliteTokenStore"]

T = TypeVar("T")

DEFAULT_MAX_AUDIT_ROWS = 100_000


def _matches(
    rec: TokenRecord, subject: str | None, hash_prefix: str | None, include_revoked: bool
) -> bool:
    if subject is not None and rec.subject != subject:
        return False
    if hash_prefix is not None and not rec.token_hash.startswith(hash_prefix.lower()):
        return False
    return include_revoked or not rec.revoked


class MemoryTokenStore:
    """Tokens and audit rows in dicts; for tests and ``--dev`` runs."""

    def __init__(self, max_audit_rows: int = DEFAULT_MAX_AUDIT_ROWS) -> None:
        self._tokens: dict[str, TokenRecord] = {}
        self._audit: collections.deque[AuditEntry] = collections.deque(maxlen=max_audit_rows)
        self._seq = 0
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise TokenStoreError("token store is closed")

    async def add(self, record: TokenRecord) -> None:
        self._check()
        if record.token_hash in self._tokens:
            raise TokenExists(f"token {record.token_hash[:12]}… already stored")
        self._tokens[record.token_hash] = record

    async def get(self, token_hash: str) -> TokenRecord | None:
        self._check()
        return self._tokens.get(token_hash)

    async def find(
        self,
        *,
        subject: str | None = None,
        hash_prefix: str | None = None,
        include_revoked: bool = False,
    ) -> list[TokenRecord]:
        self._check()
        found = [
            r for r in self._tokens.values() if _matches(r, subject, hash_prefix, include_revoked)
        ]
        return sorted(found, key=lambda r: (r.issued_at, r.token_hash))

    async def revoke(self, token_hash: str, now: int) -> bool:
        self._check()
        rec = self._tokens.get(token_hash)
        if rec is None or rec.revoked:
            return False
        self._tokens[token_hash] = _evolve_revoked(rec, now)
        return True

    async def append(self, entry: AuditEntry) -> None:
        self._check()
        self._seq += 1
        self._audit.append(_with_seq(entry, self._seq))

    async def tail(self, limit: int = 50, event: AuditEvent | None = None) -> list[AuditEntry]:
        self._check()
        out: list[AuditEntry] = []
        for entry in reversed(self._audit):
            if len(out) >= limit:
                break
            if event is None or entry.event is event:
                out.append(entry)
        return out

    async def aclose(self) -> None:
        self._closed = True


def _evolve_revoked(rec: TokenRecord, now: int) -> TokenRecord:
    return attrs.evolve(rec, revoked_at=now)


def _with_seq(entry: AuditEntry, seq: int) -> AuditEntry:
    return attrs.evolve(entry, seq=seq)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash     TEXT PRIMARY KEY,
    subject        TEXT NOT NULL,
    issued_at      INTEGER NOT NULL,
    expires_at     INTEGER,
    rate_per_sec   REAL NOT NULL,
    rate_burst     INTEGER NOT NULL,
    note           TEXT NOT NULL DEFAULT '',
    registered_spk TEXT,
    prekey_x25519  TEXT,
    revoked_at     INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_subject ON tokens (subject);
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         REAL NOT NULL,
    event      TEXT NOT NULL,
    subject    TEXT,
    token_hash TEXT,
    detail     TEXT NOT NULL DEFAULT '',
    remote     TEXT
);
CREATE INDEX IF NOT EXISTS audit_event ON audit (event, seq);
"""

_TOKEN_COLUMNS = (
    "token_hash, subject, issued_at, expires_at, rate_per_sec, rate_burst, note, "
    "registered_spk, prekey_x25519, revoked_at"
)


def _row_to_token(row: tuple[Any, ...]) -> TokenRecord:
    return TokenRecord(
        token_hash=row[0],
        subject=row[1],
        issued_at=int(row[2]),
        expires_at=None if row[3] is None else int(row[3]),
        rate_per_sec=float(row[4]),
        rate_burst=int(row[5]),
        note=row[6] or "",
        registered_spk=row[7],
        prekey_x25519=row[8],
        revoked_at=None if row[9] is None else int(row[9]),
    )


def _row_to_audit(row: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(
        seq=int(row[0]),
        ts=float(row[1]),
        event=AuditEvent(row[2]),
        subject=row[3],
        token_hash=row[4],
        detail=row[5] or "",
        remote=row[6],
    )


_GET_SQL = f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?"


class SqliteTokenStore:
    """Tokens and audit rows in one sqlite file (the reference's token DB role).

    Build it with :meth:`open`; close it with :meth:`aclose`. See the module
    docstring for which connection does what and how durable each write is.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        reader: sqlite3.Connection,
        max_audit_rows: int,
        lookup: sqlite3.Connection | None = None,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._reader: sqlite3.Connection | None = reader
        self._lookup: sqlite3.Connection | None = lookup
        self._synchronous = "FULL"  # the writer's current PRAGMA synchronous
        self._limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(1)
        self._lock = threading.Lock()  # guards _pending
        self._pending: list[AuditEntry] = []
        self._max_audit_rows = max_audit_rows
        self._appends_since_prune = 0

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, max_audit_rows: int = DEFAULT_MAX_AUDIT_ROWS
    ) -> SqliteTokenStore:
        """Open (creating when absent, mode 0600) the token database at ``path``.

        Raises:
            TokenStoreError: the file cannot be opened or initialized.
        """

        def _open() -> tuple[sqlite3.Connection, sqlite3.Connection, sqlite3.Connection]:
            p = Path(path)
            created = not p.exists()
            opened: list[sqlite3.Connection] = []

            def connect(timeout: float) -> sqlite3.Connection:
                c = sqlite3.connect(
                    str(p), check_same_thread=False, isolation_level=None, timeout=timeout
                )
                opened.append(c)
                return c

            try:
                conn = connect(10.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                reader = connect(10.0)
                reader.execute("PRAGMA query_only=ON")
                lookup = connect(0.0)  # never waits on the loop thread: busy -> worker thread
                lookup.execute("PRAGMA query_only=ON")
            except sqlite3.Error as exc:
                for c in opened:
                    c.close()
                raise TokenStoreError(f"cannot open token store {p}: {exc}") from exc
            if created:
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o600)
            return conn, reader, lookup

        conn, reader, lookup = await anyio.to_thread.run_sync(_open)
        return cls(conn, reader, max_audit_rows, lookup)

    def _set_synchronous(self, conn: sqlite3.Connection, mode: str) -> None:
        """Switch the writer's ``PRAGMA synchronous`` (worker thread, under the limiter)."""
        if self._synchronous != mode:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, read: bool = False) -> T:
        def call() -> T:
            conn = self._reader if read else self._conn
            if conn is None:
                raise TokenStoreError("token store is closed")
            try:
                return fn(conn)
            except sqlite3.IntegrityError as exc:
                raise TokenExists(str(exc)) from exc
            except sqlite3.Error as exc:
                raise TokenStoreError(str(exc)) from exc

        limiter = self._read_limiter if read else self._limiter
        return await anyio.to_thread.run_sync(call, limiter=limiter)

    async def add(self, record: TokenRecord) -> None:
        def _add(conn: sqlite3.Connection) -> None:
            self._set_synchronous(conn, "FULL")
            with conn:
                conn.execute(
                    f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.token_hash,
                        record.subject,
                        record.issued_at,
                        record.expires_at,
                        record.rate_per_sec,
                        record.rate_burst,
                        record.note,
                        record.registered_spk,
                        record.prekey_x25519,
                        record.revoked_at,
                    ),
                )

        await self._run(_add)

    async def get(self, token_hash: str) -> TokenRecord | None:
        lookup = self._lookup
        if lookup is None:
            raise TokenStoreError("token store is closed")
        try:
            # On this thread: one indexed row from the caches (module docstring).
            row = lookup.execute(_GET_SQL, (token_hash,)).fetchone()
        except sqlite3.OperationalError:
            # busy or locked (e.g. a WAL recovery): wait for it in a worker thread
            def _get(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
                found: tuple[Any, ...] | None = conn.execute(_GET_SQL, (token_hash,)).fetchone()
                return found

            row = await self._run(_get, read=True)
        except sqlite3.Error as exc:
            raise TokenStoreError(str(exc)) from exc
        return None if row is None else _row_to_token(row)

    async def find(
        self,
        *,
        subject: str | None = None,
        hash_prefix: str | None = None,
        include_revoked: bool = False,
    ) -> list[TokenRecord]:
        clauses: list[str] = []
        args: list[Any] = []
        if subject is not None:
            clauses.append("subject = ?")
            args.append(subject)
        if hash_prefix is not None:
            clauses.append("substr(token_hash, 1, ?) = ?")
            args += [len(hash_prefix), hash_prefix.lower()]
        if not include_revoked:
            clauses.append("revoked_at IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY issued_at, token_hash"

        def _find(conn: sqlite3.Connection) -> list[TokenRecord]:
            return [_row_to_token(r) for r in conn.execute(sql, args).fetchall()]

        return await self._run(_find, read=True)

    async def revoke(self, token_hash: str, now: int) -> bool:
        def _revoke(conn: sqlite3.Connection) -> bool:
            self._set_synchronous(conn, "FULL")
            with conn:
                cur = conn.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                    (now, token_hash),
                )
            return cur.rowcount > 0

        return await self._run(_revoke)

    async def append(self, entry: AuditEntry) -> None:
        with self._lock:
            self._pending.append(entry)

        def _flush(conn: sqlite3.Connection) -> None:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return  # an earlier flush committed ours
            self._set_synchronous(conn, "NORMAL")  # no fsync per audit commit (module docstring)
            with conn:
                conn.executemany(
                    "INSERT INTO audit (ts, event, subject, token_hash, detail, remote)"
                    " VALUES (?,?,?,?,?,?)",
                    [
                        (e.ts, e.event.value, e.subject, e.token_hash, e.detail, e.remote)
                        for e in rows
                    ],
                )
                self._appends_since_prune += len(rows)
                if self._appends_since_prune >= min(1000, self._max_audit_rows):
                    self._appends_since_prune = 0
                    conn.execute(
                        "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?",
                        (self._max_audit_rows,),
                    )

        await self._run(_flush)

    async def tail(self, limit: int = 50, event: AuditEvent | None = None) -> list[AuditEntry]:
        cols = "seq, ts, event, subject, token_hash, detail, remote"
        args: tuple[Any, ...]
        if event is None:
            sql, args = f"SELECT {cols} FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        else:
            sql = f"SELECT {cols} FROM audit WHERE event = ? ORDER BY seq DESC LIMIT ?"
            args = (event.value, limit)

        def _tail(conn: sqlite3.Connection) -> list[AuditEntry]:
            return [_row_to_audit(r) for r in conn.execute(sql, args).fetchall()]

        return await self._run(_tail, read=True)

    async def aclose(self) -> None:
        def _close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is None:
            return
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            lookup.close()
        await self._run(_close, read=True)
        await self._run(_close)
        self._conn = self._reader = None
