"""Bearer-token stores with an audit log: in-memory and sqlite (layer: adapters).

Both classes implement :class:`dmp.ports.tokens.TokenStore` and
:class:`dmp.ports.tokens.AuditLog`. Only token hashes are stored.

``SqliteTokenStore`` keeps one sqlite file in WAL mode with four
connections:

* a writer, used only by the store's own writer thread, which runs the
  queued writes in order. Token changes (add, revoke) commit with
  ``synchronous=FULL``: they are on disk (fsync'd) when the coroutine
  returns.
* a reader for :meth:`~SqliteTokenStore.find` and
  :meth:`~SqliteTokenStore.tail`, also in a worker thread.
* a lookup connection for :meth:`~SqliteTokenStore.get`, which runs on the
  calling (event loop) thread: one primary-key row, served from sqlite's and
  the OS's caches in ~10-20 µs, about a third of what the hand-off to a worker
  thread and back costs. A WAL reader never waits for the writer; if sqlite
  still reports the file busy (a recovery in progress), the lookup is
  retried in a worker thread.

Audit rows are committed with ``synchronous=NORMAL``: no fsync of their own.
An append commits its row on the calling thread through a fourth connection
(one INSERT in autocommit, ~20 µs: it only writes to the WAL in the page
cache, and never checkpoints). When that connection finds the file busy (a
token change committing) the row goes to the writer thread instead, which
commits every row queued by then in one transaction; while rows wait there,
later rows queue behind them, so rows are stored in append order. Every 256
inline rows the writer thread checkpoints the WAL and prunes the audit
table to the newest ``max_audit_rows``. An append returns only after its
row is committed, so a crash or SIGKILL of the process never loses it; a
power loss may drop the newest rows, up to the next fsync'd commit (a token
change, or a WAL checkpoint).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import attrs

from dmp.adapters.sqlite_store import SchemaMismatch, apply_schema, create_private
from dmp.ports.tokens import (
    AuditEntry,
    AuditEvent,
    TokenExists,
    TokenRecord,
    TokenStoreError,
)

__all__ = ["MemoryTokenStore", "SqliteTokenStore"]

T = TypeVar("T")
_log = logging.getLogger("dmp.tokens")

DEFAULT_MAX_AUDIT_ROWS = 100_000
#: Audit rows committed on the loop thread between two upkeep jobs (WAL
#: checkpoint, pruning) in the writer thread.
_UPKEEP_EVERY = 256


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
_AUDIT_INSERT = (
    "INSERT INTO audit (ts, event, subject, token_hash, detail, remote) VALUES (?,?,?,?,?,?)"
)


class _Job:
    """One unit of work for the writer thread; ``future`` resolves on the caller's loop."""

    __slots__ = ("error", "fn", "future", "result", "rows")

    def __init__(
        self, fn: Callable[[sqlite3.Connection, _Job], Any], future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.future = future
        self.rows: list[AuditEntry] = []  # audit flushes: the rows taken with the job
        self.result: Any = None
        self.error: BaseException | None = None


class SqliteTokenStore:
    """Tokens and audit rows in one sqlite file (the reference's token DB role).

    Build it with :meth:`open`; close it with :meth:`aclose`. See the module
    docstring for which connection does what and how durable each write is.
    Writes run in one long-lived writer thread (jobs in under a condition
    variable, results back with one ``call_soon_threadsafe`` per batch): a
    thread hop through ``anyio.to_thread`` per audit row cost ~3× as much on
    the event loop thread.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        reader: sqlite3.Connection,
        max_audit_rows: int,
        lookup: sqlite3.Connection | None = None,
        auditor: sqlite3.Connection | None = None,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._reader: sqlite3.Connection | None = reader
        self._lookup: sqlite3.Connection | None = lookup
        self._auditor: sqlite3.Connection | None = auditor
        self._inline_rows = 0  # audit rows committed inline since the last upkeep job
        self._queued_rows = 0  # audit rows handed to the writer thread, not yet committed
        self._synchronous = "FULL"  # the writer's current PRAGMA synchronous
        self._read_limiter = anyio.CapacityLimiter(1)
        self._max_audit_rows = max_audit_rows
        self._appends_since_prune = 0
        # -- writer thread state, guarded by _wakeup's lock
        self._wakeup = threading.Condition(threading.Lock())
        self._jobs: list[_Job] = []
        self._rows: list[AuditEntry] = []  # audit rows not yet taken by a flush job
        self._flush: _Job | None = None  # the queued flush job new rows join
        self._stopping = False
        self._thread = threading.Thread(target=self._writer_main, name="sqlite-writer:tokens")
        self._thread.daemon = True  # an unclosed store must not keep the process alive
        self._thread.start()

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, max_audit_rows: int = DEFAULT_MAX_AUDIT_ROWS
    ) -> SqliteTokenStore:
        """Open (creating when absent, mode 0600) the token database at ``path``.

        Raises:
            TokenStoreError: the file cannot be opened or initialized.
        """

        def _open() -> tuple[
            sqlite3.Connection, sqlite3.Connection, sqlite3.Connection, sqlite3.Connection
        ]:
            p = Path(path)
            try:
                create_private(p)  # 0600, and so are the -wal and -shm sqlite makes beside it
            except OSError as exc:
                raise TokenStoreError(f"cannot open token store {p}: {exc}") from exc
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
                apply_schema(conn, _SCHEMA)
                reader = connect(10.0)
                reader.execute("PRAGMA query_only=ON")
                lookup = connect(0.0)  # never waits on the loop thread: busy -> worker thread
                lookup.execute("PRAGMA query_only=ON")
                auditor = connect(0.0)  # inline audit commits: busy -> the writer thread
                auditor.execute("PRAGMA synchronous=NORMAL")
                auditor.execute("PRAGMA wal_autocheckpoint=0")  # the writer thread checkpoints
            except (sqlite3.Error, SchemaMismatch) as exc:
                for c in opened:
                    c.close()
                raise TokenStoreError(f"cannot open token store {p}: {exc}") from exc
            return conn, reader, lookup, auditor

        conn, reader, lookup, auditor = await anyio.to_thread.run_sync(_open)
        return cls(conn, reader, max_audit_rows, lookup, auditor)

    # -- the writer thread ---------------------------------------------------------

    def _set_synchronous(self, conn: sqlite3.Connection, mode: str) -> None:
        """Switch the writer's ``PRAGMA synchronous`` (writer thread only)."""
        if self._synchronous != mode:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def _writer_main(self) -> None:
        wakeup, jobs = self._wakeup, self._jobs
        while True:
            with wakeup:
                while not jobs and not self._stopping:
                    wakeup.wait()
                if not jobs:
                    return
                batch = jobs[:]
                jobs.clear()
                if self._flush is not None:  # it is in this batch: later rows need a new job
                    self._flush.rows, self._rows = self._rows, []
                    self._flush = None
            for job in batch:
                self._execute(job)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
            for job in batch:
                by_loop.setdefault(job.future.get_loop(), []).append(job)
            for loop, done in by_loop.items():
                with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                    loop.call_soon_threadsafe(_settle, done)

    def _execute(self, job: _Job) -> None:
        conn = self._conn
        try:
            if conn is None:
                raise TokenStoreError("token store is closed")
            job.result = job.fn(conn, job)
        except sqlite3.IntegrityError as exc:
            job.error = TokenExists(str(exc))
        except sqlite3.Error as exc:
            job.error = TokenStoreError(str(exc))
        except BaseException as exc:  # pragma: no cover - a bug: report it to the caller
            job.error = exc

    def _submit(self, fn: Callable[[sqlite3.Connection, _Job], Any]) -> _Job:
        """Queue ``fn`` for the writer thread.

        Raises:
            TokenStoreError: the store is closed.
        """
        with self._wakeup:
            if self._stopping:
                raise TokenStoreError("token store is closed")
            job = _Job(fn, asyncio.get_running_loop().create_future())
            self._jobs.append(job)
            if len(self._jobs) == 1:
                self._wakeup.notify()
        return job

    async def _write(self, fn: Callable[[sqlite3.Connection, _Job], T]) -> T:
        """Run ``fn`` in the writer thread; its result once done (shielded: it runs anyway)."""
        return cast(T, await _outcome(self._submit(fn)))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._reader
            if conn is None:
                raise TokenStoreError("token store is closed")
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise TokenStoreError(str(exc)) from exc

        return await anyio.to_thread.run_sync(call, limiter=self._read_limiter)

    # -- TokenStore ----------------------------------------------------------------

    async def add(self, record: TokenRecord) -> None:
        def _add(conn: sqlite3.Connection, _: _Job) -> None:
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

        await self._write(_add)

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

            row = await self._read(_get)
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

        return await self._read(_find)

    async def revoke(self, token_hash: str, now: int) -> bool:
        def _revoke(conn: sqlite3.Connection, _: _Job) -> bool:
            self._set_synchronous(conn, "FULL")
            with conn:
                cur = conn.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                    (now, token_hash),
                )
            return cur.rowcount > 0

        return await self._write(_revoke)

    # -- AuditLog ------------------------------------------------------------------

    async def append(self, entry: AuditEntry) -> None:
        auditor = self._auditor
        if auditor is not None and not self._queued_rows:
            # Inline, on this thread: one INSERT in autocommit, no fsync, no
            # checkpoint. Only when no row waits in the writer thread (order).
            row = (entry.ts, entry.event.value, entry.subject, entry.token_hash, entry.detail,
                   entry.remote)  # fmt: skip
            try:
                auditor.execute(_AUDIT_INSERT, row)
            except sqlite3.OperationalError:
                pass  # busy (a token change is committing): the writer thread waits for it
            except sqlite3.Error as exc:
                raise TokenStoreError(str(exc)) from exc
            else:
                self._inline_rows += 1
                if self._inline_rows >= min(_UPKEEP_EVERY, self._max_audit_rows):
                    rows, self._inline_rows = self._inline_rows, 0
                    self._submit(functools.partial(self._upkeep, rows))  # not awaited
                return
        with self._wakeup:
            if self._stopping:
                raise TokenStoreError("token store is closed")
            self._rows.append(entry)
            self._queued_rows += 1
            job = self._flush
            if job is None:  # no flush queued yet: queue one (it takes every row so far)
                job = self._flush = _Job(
                    self._flush_rows, asyncio.get_running_loop().create_future()
                )
                self._jobs.append(job)
                if len(self._jobs) == 1:
                    self._wakeup.notify()
        await _outcome(job)

    def _upkeep(self, rows: int, conn: sqlite3.Connection, _: _Job) -> None:
        """Checkpoint the WAL and prune the audit table after inline appends (writer thread)."""
        try:
            self._appends_since_prune += rows
            if self._appends_since_prune >= min(1000, self._max_audit_rows):
                self._appends_since_prune = 0
                self._set_synchronous(conn, "NORMAL")
                conn.execute(
                    "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?",
                    (self._max_audit_rows,),
                )
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:  # nobody awaits this job: log, the next upkeep retries
            _log.warning("token store upkeep failed", exc_info=True)

    def _flush_rows(self, conn: sqlite3.Connection, job: _Job) -> None:
        """Commit ``job.rows`` in one transaction, without an fsync (module docstring)."""
        rows = job.rows
        if not rows:
            return
        try:
            self._commit_rows(conn, rows)
        finally:
            with self._wakeup:
                self._queued_rows -= len(rows)

    def _commit_rows(self, conn: sqlite3.Connection, rows: list[AuditEntry]) -> None:
        self._set_synchronous(conn, "NORMAL")
        with conn:
            conn.executemany(
                _AUDIT_INSERT,
                [(e.ts, e.event.value, e.subject, e.token_hash, e.detail, e.remote) for e in rows],
            )
            self._appends_since_prune += len(rows)
            if self._appends_since_prune >= min(1000, self._max_audit_rows):
                self._appends_since_prune = 0
                conn.execute(
                    "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?",
                    (self._max_audit_rows,),
                )

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

        await self._write(_nothing)  # what the writer thread has queued (upkeep) is done
        return await self._read(_tail)

    async def aclose(self) -> None:
        """Finish the queued writes, stop the writer thread, close the connections."""
        with self._wakeup:
            if self._stopping:
                return
            self._stopping = True
            self._wakeup.notify()
        for inline in (self._lookup, self._auditor):
            if inline is not None:
                inline.close()
        self._lookup = self._auditor = None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join)
            await anyio.to_thread.run_sync(self._close_connections, limiter=self._read_limiter)

    def _close_connections(self) -> None:
        for conn in (self._reader, self._conn):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None


async def _outcome(job: _Job) -> Any:
    # The writer thread owns the job: it runs whatever happens here. Shielded,
    # so the caller learns the outcome before a cancellation takes effect.
    with anyio.CancelScope(shield=True):
        await job.future
    if job.error is not None:
        raise job.error
    return job.result


def _nothing(conn: sqlite3.Connection, job: _Job) -> None:
    """A writer-thread job that does nothing: awaiting it waits for the jobs before it."""


def _settle(jobs: list[_Job]) -> None:
    """Resolve finished jobs' futures (on their event loop's thread)."""
    for job in jobs:
        if not job.future.done():
            job.future.set_result(None)
