"""sqlite stores (layer: adapters): records and TSIG keys on disk, with group commit.

:class:`SqliteRecordStore` implements :class:`dmp.ports.store.RecordStore`
(table ``records``) and :class:`SqliteTsigKeyStore` implements
:class:`dmp.ports.store.TsigKeyStore` (table ``tsig_keys``). Both tables may
live in one file (``DMP_DB_PATH``) or in two (``DMP_TSIG_DB_PATH``), as the
node chooses; each store object opens its own connections.

Threads. sqlite calls block, and the node runs on one event loop (anyio on
asyncio/uvloop; these stores need the asyncio backend). Each store has one
writer connection owned by a long-lived *writer thread*, one inline read
connection used on the loop thread for point lookups (:meth:`get
<SqliteRecordStore.get>` and ``count_values``), and a small pool of read
connections for everything else (``digest``, ``count``, TSIG key reads),
which run in ``anyio.to_thread`` workers. WAL lets every reader run beside the
writer and see the last committed state.

Why inline point reads: an indexed lookup by owner in a WAL database costs a
few microseconds and takes no lock a writer holds, while a thread hop costs
~30 µs (anyio) and put every uncached DNS answer behind it. The inline
connection never waits for a lock (``timeout=0``); if sqlite ever reports it
busy (another process recovering the WAL after a crash) the read is retried in
the pool. The price: a read that misses the OS page cache does its disk read
on the loop thread; pass ``inline_reads=False`` for databases much larger than
RAM.

Group commit. A write is queued for the writer thread (a condition variable,
no thread hop per write) and its caller awaits a future. The writer thread
takes *everything* queued, runs it as ONE transaction (``BEGIN IMMEDIATE`` …
``COMMIT``), then hands the batch back to the loop with one
``call_soon_threadsafe``, where change listeners run and the callers wake; it
then takes whatever queued up during that commit. So under load there is one
commit, and one fsync, per batch instead of per write, and every caller's
``await`` returns only after the commit that contains its write. A write of a
single statement that changes nothing when it fails (every record and key
write here; ``put`` checks ``max_values`` inside its INSERT) needs no
``SAVEPOINT`` in a batch, and alone runs as one autocommit statement;
multi-statement writes get a savepoint each, so a refused write (e.g.
``StoreFull``) rolls back alone. Once queued, a write is committed whatever
happens to its caller: the caller's await is shielded from cancellation until
then (the cancellation is delivered afterwards).

Loop commits (``synchronous="NORMAL"`` only). A NORMAL commit never fsyncs:
it is a few ``write()`` calls into the WAL (~15 µs), cheaper than the two
thread wake-ups of a hand-off (~30 µs plus GIL ping-pong on this 2-CPU
machine). So small writes commit on the loop thread: a write that is alone
commits at once (the first of a loop iteration); writes made while others are
in progress, or later in the same iteration, collect in a loop batch committed
right after the current loop iteration (group commit without a thread). The loop never waits: the writer connection has ``busy_timeout=0``
and ``wal_autocheckpoint=0``; a busy database, a busy writer thread or writes
already queued for it send the batch to the thread (in order), and the thread
checkpoints (``PASSIVE``) every ~250 writes; should it fall ~500 writes behind
(starved of CPU), writes go through it until it has checkpointed, so the WAL
stays bounded (~12 MiB at most). FULL commits always run in the
writer thread, since their fsync would stall every DNS answer.

Durability. ``journal_mode=WAL`` is always on, with one of two levels.
``synchronous=FULL`` (this adapter's default): each commit appends to the WAL
*and fsyncs it* before ``COMMIT`` returns, so an acknowledged write survives
SIGKILL of the process, an OS crash and power loss; group commit amortises
the fsync over every write queued behind it. ``synchronous="NORMAL"`` (what
the reference node runs, and dmp-node's default, ``DMP_DB_SYNCHRONOUS``): a
commit is durable once its frames are in the WAL file in the OS page cache,
which survives SIGKILL (the kernel still owns the pages and sqlite replays
them on the next open); the WAL is fsynced by checkpoints, which the writer
thread runs every ~250 writes and at most ``sync_interval_s`` (1 s) after any
commit, so an OS crash or power loss can roll back at most that last second
of acknowledged writes (never corrupting the file). The reference syncs only
at sqlite's automatic checkpoints (every ~1000 WAL pages), with no bound in
time. The measured cost of each level is in ``bench/store.py`` and
``bench/node.py``. The crash test in
``tests/integration/test_store_conformance.py`` SIGKILLs a writer in both
modes and checks every acknowledged put.

Schema. ``records`` is unique on ``(owner, value_hash)`` (equivalent to the
spec's ``(owner, value)`` key under SHA-256 collision resistance, with a
64-byte index key instead of up to 2 KiB), with an index on
``(stored_ts_ms, owner, value_hash)`` that serves the anti-entropy digest
(wire.md §9) and one on ``expires_at`` for the sweep. Needs sqlite ≥ 3.35
(row values, ``RETURNING``, ``ON CONFLICT DO UPDATE``).

Errors. ``sqlite3.Error`` becomes :class:`dmp.ports.store.StoreUnavailable`
(chained); a failed ``COMMIT`` fails every write of that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, Literal, Self, TypeVar, cast

import anyio
import anyio.to_thread

from dmp.ports.store import (
    OwnerListener,
    StoredRecord,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TsigKey,
)

__all__ = ["SqliteRecordStore", "SqliteTsigKeyStore", "Synchronous"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

Synchronous = Literal["FULL", "NORMAL"]
"""Accepted ``PRAGMA synchronous`` levels (both with WAL; see the module docstring)."""

_MIN_SQLITE = (3, 35, 0)
_SWEEP_CHUNK = 2000
_CHECKPOINT_WRITES = 250  # inline-commit mode: checkpoint after ~1000 WAL pages (4 per write)
# Inline-commit mode: past this many uncheckpointed writes (the writer thread has
# not got round to its checkpoint yet, e.g. starved of CPU) the loop stops
# committing and hands writes to the thread, which checkpoints after committing
# them. This bounds the WAL at ~_CHECKPOINT_BACKLOG writes (~24 KiB each) however
# the two threads are scheduled.
_CHECKPOINT_BACKLOG = 2 * _CHECKPOINT_WRITES
_INT64_MAX = 2**63 - 1

_RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    owner        TEXT    NOT NULL,
    value        TEXT    NOT NULL,
    ttl          INTEGER NOT NULL,
    stored_ts_ms INTEGER NOT NULL,
    expires_at   REAL    NOT NULL,
    value_hash   TEXT    NOT NULL,
    UNIQUE (owner, value_hash)
);
CREATE INDEX IF NOT EXISTS records_digest ON records (stored_ts_ms, owner, value_hash);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires_at);
"""

_TSIG_SCHEMA = """
CREATE TABLE IF NOT EXISTS tsig_keys (
    keyname          TEXT    NOT NULL PRIMARY KEY,
    secret           BLOB    NOT NULL,
    algorithm        TEXT    NOT NULL,
    allowed_suffixes TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    ed25519_public   TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    revoked          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tsig_keys_subject ON tsig_keys (subject);
CREATE TABLE IF NOT EXISTS tsig_keys_version (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO tsig_keys_version (id, version) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS tsig_keys_insert AFTER INSERT ON tsig_keys
    BEGIN UPDATE tsig_keys_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS tsig_keys_update AFTER UPDATE ON tsig_keys
    BEGIN UPDATE tsig_keys_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS tsig_keys_delete AFTER DELETE ON tsig_keys
    BEGIN UPDATE tsig_keys_version SET version = version + 1; END;
"""


@contextmanager
def _translate(what: str) -> Iterator[None]:
    """Turn ``sqlite3.Error`` into :class:`StoreUnavailable`, chained."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"sqlite {what} failed: {exc}") from exc


def _value_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


_WriteOp = Callable[[sqlite3.Connection], tuple[T, Sequence[str]]]
"""A write: runs inside the batch transaction, returns (result, changed owners)."""


class _Job(Generic[T]):
    """One queued write, the future its caller awaits, and its outcome."""

    __slots__ = ("changed", "error", "future", "op", "result", "single")

    def __init__(self, op: _WriteOp[T], future: asyncio.Future[None], single: bool) -> None:
        self.op = op
        self.future = future
        self.single = single
        self.result: T | None = None
        self.changed: Sequence[str] = ()
        self.error: BaseException | None = None

    def run(self, conn: sqlite3.Connection, savepoint: bool) -> None:
        """Run the op, inside its own savepoint if asked (writer thread)."""
        if savepoint:
            conn.execute("SAVEPOINT job")
        try:
            self.result, self.changed = self.op(conn)
        except StoreError as exc:
            self.error = exc
        except sqlite3.Error as exc:
            self.error = StoreUnavailable(f"sqlite write failed: {exc}")
            self.error.__cause__ = exc
        except Exception as exc:  # a bug in an op: hand it to its caller unchanged
            self.error = exc
        if savepoint:
            if self.error is not None:
                conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.result)  # run() set it: no error was recorded


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


_TABLE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", re.S)
_CONSTRAINTS = frozenset({"UNIQUE", "PRIMARY", "CHECK", "FOREIGN", "CONSTRAINT"})


def schema_mismatch(conn: sqlite3.Connection, schema: str) -> str | None:
    """Why the file behind ``conn`` cannot take ``schema``, or ``None`` when it can.

    Every ``CREATE TABLE IF NOT EXISTS`` table of ``schema`` that already
    exists must have all the columns the schema gives it. Otherwise the file
    belongs to something else (typically the reference node's database at the
    same path, whose tables share names with ours): applying the schema would
    add our indexes and triggers to it and fail later, so nothing is touched.

    Raises:
        sqlite3.Error: the file cannot be read.
    """
    for table, body in _TABLE_RE.findall(schema):
        wanted = {
            line.split()[0]
            for line in body.splitlines()
            if line.strip() and line.split()[0].upper() not in _CONSTRAINTS
        }
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if have and not wanted <= have:
            missing = ", ".join(sorted(wanted - have))
            return (
                f"not a dmp-node database: its table {table!r} lacks {missing} "
                "(a dnsmesh reference database? dmp-node keeps its own files)"
            )
    return None


def apply_schema(conn: sqlite3.Connection, schema: str) -> None:
    """Check the file with :func:`schema_mismatch`, then apply ``schema`` in one transaction.

    Raises:
        SchemaMismatch: the file holds other tables of the same names.
        sqlite3.Error: sqlite failed (nothing of the schema is applied).
    """
    problem = schema_mismatch(conn, schema)
    if problem is not None:
        raise SchemaMismatch(problem)
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SchemaMismatch(Exception):
    """The database file has tables of our names with other columns (not ours)."""


def create_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist yet.

    sqlite creates a database's ``-wal`` and ``-shm`` files with the
    permissions of the database file itself, so a file created here keeps
    all three owner-only whatever the umask (for files holding secrets: TSIG
    keys, token hashes). An existing file is left as it is.

    Raises:
        OSError: the file cannot be created (missing directory, permissions).
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class _Engine:
    """One sqlite file: a writer thread with group commit, an inline reader, a reader pool.

    Args:
        path: database file (created if missing). ``:memory:`` is refused:
            the readers would each see a different empty database.
        schema: DDL run once on the writer connection.
        on_commit: called on the loop thread with each committed job's changed
            owners, in commit order.
        synchronous: ``PRAGMA synchronous`` for the writer.
        readers: pooled read connections (concurrent reads in worker threads).
        busy_timeout_s: how long to wait for another connection's lock.
        inline_reads: allow :meth:`read_inline` on the loop thread.
        inline_commits: with ``synchronous="NORMAL"`` only, commit an
            uncontended write right on the caller's thread (see
            :meth:`write`); checkpoints then run in the writer thread.
        sync_interval_s: with ``synchronous="NORMAL"`` only, the longest a
            committed write waits for the writer thread's checkpoint, which
            fsyncs the WAL: the bound on what an OS crash can lose.
        private: create a missing database file with mode 0600 (see
            :func:`create_private`).

    Raises:
        StoreUnavailable: the file cannot be opened, WAL cannot be enabled or
            sqlite is too old.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: str,
        on_commit: Callable[[Sequence[str]], None],
        *,
        synchronous: Synchronous,
        readers: int,
        busy_timeout_s: float,
        inline_reads: bool = True,
        inline_commits: bool = True,
        sync_interval_s: float = 1.0,
        private: bool = False,
    ) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreUnavailable(f"sqlite {sqlite3.sqlite_version} is older than 3.35")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        if readers < 1:
            raise ValueError("need at least one read connection")
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file::memory:"):
            raise ValueError("sqlite stores need a file path")
        self._timeout = busy_timeout_s
        self._busy_timeout_pragma = f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}"
        self._on_commit = on_commit
        self._pending: list[_Job[Any]] = []
        self._wakeup = threading.Condition(threading.Lock())
        self._stopping = False
        self._writer_lock = threading.Lock()  # whoever uses the writer connection holds it
        # NORMAL never fsyncs a commit, so a commit costs a few write() calls: cheaper
        # than the two thread wake-ups of a hand-off. FULL fsyncs: never on the loop.
        self._inline_commits = inline_commits and synchronous == "NORMAL"
        # NORMAL: the WAL is fsynced only by checkpoints; the writer thread runs one
        # at least every sync_interval_s while anything committed is not yet synced.
        self._normal = synchronous == "NORMAL"
        self._sync_interval = sync_interval_s
        self._synced_at = time.monotonic()
        self.checkpoints = 0
        self._checkpoint_wanted = False
        self._uncheckpointed = 0  # writes committed since the last checkpoint
        self._loop_batch: list[_Job[Any]] = []
        self._loop_writes = 0  # loop-commit writes whose callers have not resumed yet
        self._committed_now = False  # a write was committed at once this loop iteration
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closed = anyio.Event()
        self.transactions = 0
        self.writes = 0
        self._readers: list[sqlite3.Connection] = []
        self._inline: sqlite3.Connection | None = None
        self._inline_thread: int | None = None
        with _translate("open"):
            if private:
                try:
                    create_private(self._path)
                except OSError as exc:
                    raise StoreUnavailable(f"{self._path}: cannot create: {exc}") from exc
            self._writer = self._connect()
            try:
                (mode,) = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"{self._path}: WAL refused (journal_mode={mode})")
                self._writer.execute(f"PRAGMA synchronous={synchronous}")
                try:
                    apply_schema(self._writer, schema)
                except SchemaMismatch as exc:
                    raise StoreUnavailable(str(exc)) from None
                if self._inline_commits:
                    # no checkpoint inside an inline COMMIT (the writer thread runs them),
                    # and an inline write never waits for a lock (busy: the thread retries)
                    self._writer.execute("PRAGMA wal_autocheckpoint=0")
                    self._writer.execute("PRAGMA busy_timeout=0")
                for _ in range(readers):
                    reader = self._connect()
                    reader.execute("PRAGMA query_only=ON")
                    self._readers.append(reader)
                if inline_reads:
                    # never waits for a lock: a busy inline read retries in the pool
                    self._inline = self._connect(timeout=0.0)
                    self._inline.execute("PRAGMA query_only=ON")
            except BaseException:
                self._close_connections()
                raise
        self._free = list(self._readers)
        self._read_slots = anyio.Semaphore(readers)
        self._thread = threading.Thread(
            target=self._writer_main, name=f"sqlite-writer:{os.path.basename(self._path)}"
        )
        self._thread.daemon = True  # an unclosed store must not keep the process alive
        self._thread.start()

    def _connect(self, timeout: float | None = None) -> sqlite3.Connection:
        return sqlite3.connect(
            self._path,
            timeout=self._timeout if timeout is None else timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _close_connections(self) -> None:
        for conn in [*self._readers, self._inline, getattr(self, "_writer", None)]:
            if conn is not None:
                conn.close()

    # -- pragmas, for tests and operators --------------------------------------------

    def pragma(self, name: str) -> object:
        """Read ``PRAGMA name`` on the writer connection (synchronously; setup/tests only)."""
        with self._writer_lock, _translate("pragma"):
            row = self._writer.execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    # -- writes ------------------------------------------------------------------------

    async def write(
        self, op: _WriteOp[T], *, single_statement: bool = False, small: bool = True
    ) -> T:
        """Commit ``op`` and return its result once committed.

        Normally ``op`` is queued for the writer thread's next group commit.
        With loop commits (``synchronous="NORMAL"``), a ``small`` write is
        committed on the loop thread instead: at once when it is the only
        write in progress and the first of this loop iteration (no scheduling
        point then: the common single write costs one commit and nothing
        else), else in the *loop batch*, which holds every such write made
        during one event-loop iteration and is committed right after it
        (``call_soon``). A NORMAL commit is a few ``write()`` calls into the
        WAL, cheaper than the two thread wake-ups of a hand-off, and the batch
        keeps group commit under concurrency. The loop never waits for a lock
        (``busy_timeout=0``) and never checkpoints: when sqlite is busy, the
        writer thread is busy or writes are already queued for it, the batch
        goes to the thread, in order; the thread also checkpoints every ~250
        writes, and once ~500 are waiting for it (thread starved of CPU) writes
        go to the thread until it has checkpointed, which bounds the WAL.

        Args:
            op: the write; runs inside the batch transaction.
            single_statement: ``op`` changes the database with at most one
                statement and raises, if at all, only when that statement
                changed nothing. sqlite makes a statement atomic, so such an op
                needs no savepoint, and alone in its batch it runs as one
                autocommit statement (one sqlite call, no BEGIN/COMMIT).
            small: ``op`` touches a handful of rows (False for the sweep, which
                always runs in the writer thread).

        Raises:
            StoreUnavailable: closed, or the batch failed to commit.
            StoreError: whatever ``op`` raised (nothing of it was written).
        """
        if self._closing:
            raise StoreUnavailable(f"{self._path}: store is closed")
        loop = asyncio.get_running_loop()
        if (
            not (small and self._inline_commits)
            or self._batch_loop not in (None, loop)
            or self._uncheckpointed >= _CHECKPOINT_BACKLOG
        ):
            return await self._submit(op, single_statement)
        future: asyncio.Future[None] = loop.create_future()
        job: _Job[T] = _Job(op, future, single_statement)
        self._loop_batch.append(job)
        self._loop_writes += 1
        try:
            if self._loop_writes == 1 and not self._committed_now:
                # The only write in progress, and the first one this loop iteration:
                # commit it now. (Writes after it in the same iteration are batched,
                # so concurrent callers share a commit and a loop of writes yields.)
                self._batch_loop = loop
                self._flush_loop_batch()
                if future.done():
                    self._committed_now = True
                    loop.call_soon(self._next_iteration)
                    return job.outcome()
            elif self._batch_loop is None:
                # Others are in progress (concurrent callers): batch the writes made
                # during this loop iteration and commit them right after it.
                self._batch_loop = loop
                loop.call_soon(self._flush_loop_batch)
            # From here the write is committed whatever happens to the caller (shielded).
            with anyio.CancelScope(shield=True):
                await future
        finally:
            self._loop_writes -= 1
        return job.outcome()

    def _next_iteration(self) -> None:
        self._committed_now = False

    def _flush_loop_batch(self) -> None:
        """Commit the loop batch here, or hand it to the writer thread (loop thread)."""
        batch, self._loop_batch, self._batch_loop = self._loop_batch, [], None
        if not batch:
            return
        if self._pending or not self._writer_lock.acquire(blocking=False):
            self._enqueue(batch)  # after what is queued already: order is kept
            return
        try:
            self._commit_locked(batch)
            self._uncheckpointed += len(batch)  # under the lock: the thread resets it
        finally:
            self._writer_lock.release()
        if any(
            isinstance(job.error, StoreUnavailable)
            and isinstance(job.error.__cause__, sqlite3.Error)
            and _is_busy(job.error.__cause__)
            for job in batch
        ):  # another connection holds the write lock, so nothing was written
            for job in batch:
                job.error = None
            self._enqueue(batch)  # the thread waits for the lock
            return
        if self._uncheckpointed >= _CHECKPOINT_WRITES and not self._checkpoint_wanted:
            with self._wakeup:
                self._checkpoint_wanted = True
                self._wakeup.notify()
        self._finish(batch)

    def _enqueue(self, jobs: list[_Job[Any]]) -> None:
        with self._wakeup:
            self._pending.extend(jobs)
            self._wakeup.notify()

    def _notify_commit(self, changed: Sequence[str]) -> None:
        try:
            self._on_commit(changed)
        except Exception:  # pragma: no cover - on_commit callbacks do not raise
            _log.exception("sqlite on_commit callback failed on %s", self._path)

    async def _submit(self, op: _WriteOp[T], single: bool = False) -> T:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        job: _Job[T] = _Job(op, future, single)
        self._enqueue([job])
        # The writer thread owns the job now: it commits whatever happens here.
        # Shielded, so the caller learns the outcome before a cancellation.
        with anyio.CancelScope(shield=True):
            await future
        return job.outcome()

    def _writer_main(self) -> None:
        """The writer thread: take everything queued, commit it as one batch, repeat."""
        wakeup, pending = self._wakeup, self._pending
        # NORMAL: wake at least every sync interval to sync what the loop committed
        idle_wait = self._sync_interval if self._normal else None
        while True:
            with wakeup:
                while not pending and not self._stopping and not self._checkpoint_wanted:
                    if self._sync_due():
                        self._checkpoint_wanted = True
                        break
                    wakeup.wait(idle_wait)
                if not pending and not self._checkpoint_wanted:
                    return  # stopping, and nothing left to do
            # The lock first, then the batch: a loop batch never overtakes a queued write.
            with self._writer_lock:
                with wakeup:
                    batch = pending[:]
                    pending.clear()
                if batch:
                    try:
                        self._commit_locked(batch, wait=True)
                    except BaseException as exc:  # pragma: no cover - a bug, not sqlite
                        for job in batch:
                            if job.error is None:
                                job.error = StoreUnavailable(f"sqlite commit failed: {exc!r}")
                if self._normal:
                    self._uncheckpointed += len(batch)
                    if (
                        self._checkpoint_wanted
                        or (self._inline_commits and self._uncheckpointed >= _CHECKPOINT_WRITES)
                        or self._sync_due()
                    ):
                        self._checkpoint()
            if batch:
                self._post(batch)

    def _sync_due(self) -> bool:
        """NORMAL: something committed has waited a sync interval for its fsync."""
        return bool(self._uncheckpointed) and (
            time.monotonic() - self._synced_at >= self._sync_interval
        )

    def _checkpoint(self) -> None:
        """Sync the WAL and copy it into the database (writer thread, writer lock held).

        With ``synchronous=NORMAL`` sqlite fsyncs the WAL before a checkpoint
        copies it (https://sqlite.org/pragma.html#pragma_synchronous), so every
        commit before this call is then durable against an OS crash too.
        """
        with self._wakeup:
            self._checkpoint_wanted = False
        self._uncheckpointed = 0
        self._synced_at = time.monotonic()
        try:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error:
            _log.exception("sqlite checkpoint failed on %s", self._path)

    def _post(self, batch: list[_Job[Any]]) -> None:
        """Hand a finished batch back to the event loop(s) of its callers (writer thread)."""
        loops: dict[asyncio.AbstractEventLoop, list[_Job[Any]]] = {}
        for job in batch:
            loops.setdefault(job.future.get_loop(), []).append(job)
        for loop, jobs in loops.items():
            # RuntimeError: the loop is closed, so nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finish, jobs)

    def _finish(self, batch: list[_Job[Any]]) -> None:
        """Run change listeners, then wake the callers (loop thread)."""
        for job in batch:
            if job.error is None and job.changed:
                self._notify_commit(job.changed)
        for job in batch:
            if not job.future.done():
                job.future.set_result(None)

    def _commit_locked(self, batch: list[_Job[Any]], *, wait: bool = False) -> None:
        """Run ``batch`` as one transaction (writer lock held).

        ``wait``: in loop-commit mode the writer connection does not wait for
        other connections' locks; the writer thread passes True to wait as usual.
        """
        conn = self._writer
        wait = wait and self._inline_commits
        if wait:
            conn.execute(self._busy_timeout_pragma)
        try:
            self._run_batch(conn, batch)
        finally:
            if wait:
                conn.execute("PRAGMA busy_timeout=0")

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        if len(batch) == 1 and batch[0].single:
            # autocommit: the statement is its own transaction (durable when it returns)
            batch[0].run(conn, savepoint=False)
            self.writes += 1
            self.transactions += batch[0].error is None
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                job.run(conn, savepoint=not job.single)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    _log.exception("sqlite rollback failed on %s", self._path)
            for job in batch:
                if job.error is None:  # a write refused on its own keeps its reason
                    job.error = StoreUnavailable(f"sqlite commit failed: {exc}")
                    job.error.__cause__ = exc
            return
        self.transactions += 1
        self.writes += len(batch)

    # -- reads -------------------------------------------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a free pooled read connection in a worker thread.

        Raises:
            StoreUnavailable: closed, or sqlite failed.
        """
        if self._closing:
            raise StoreUnavailable(f"{self._path}: store is closed")
        async with self._read_slots:
            conn = self._free.pop()
            try:
                return await anyio.to_thread.run_sync(self._run_read, fn, conn)
            finally:
                self._free.append(conn)

    async def read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a point lookup ``fn`` right here on the loop thread, else like :meth:`read`.

        WAL readers take no lock that a writer holds, so an indexed lookup in a
        warm database costs microseconds, far less than a thread hop. The
        inline connection never waits for a lock (``timeout=0``): in the rare
        case sqlite reports it busy (another process recovering the WAL), the
        read is retried in the pool, which waits. Only the first thread that
        reads inline uses the connection; others use the pool.

        Raises:
            StoreUnavailable: closed, or sqlite failed.
        """
        conn = self._inline
        if conn is None or self._closing:
            return await self.read(fn)
        me = threading.get_ident()
        if self._inline_thread != me:
            if self._inline_thread is not None:
                return await self.read(fn)
            self._inline_thread = me
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise StoreUnavailable(f"sqlite read failed: {exc}") from exc
        return await self.read(fn)

    def inline_scalar(self, sql: str) -> object | None:
        """The first column of ``sql``'s first row, read on the inline connection.

        Synchronous; ``None`` when there is no row, the store is closing, the
        inline connection belongs to another thread, or sqlite failed.
        """
        conn = self._inline
        if conn is None or self._closing:
            return None
        me = threading.get_ident()
        if self._inline_thread != me:
            if self._inline_thread is not None:
                return None
            self._inline_thread = me
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else row[0]

    @staticmethod
    def _run_read(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        with _translate("read"):
            return fn(conn)

    # -- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Commit what is queued, wait for reads in flight, close every connection."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            self._flush_loop_batch()  # (a no-op when it is empty)
            # FIFO: once this empty job commits, every earlier write has too.
            await self._submit(_noop)
            with anyio.CancelScope(shield=True):
                with self._wakeup:
                    self._stopping = True
                    self._wakeup.notify()
                await anyio.to_thread.run_sync(self._thread.join)
                for _ in self._readers:
                    await self._read_slots.acquire()
                await anyio.to_thread.run_sync(self._close_connections)
        finally:
            self._closed.set()


def _noop(conn: sqlite3.Connection) -> tuple[None, Sequence[str]]:
    return None, ()


def _notify(listeners: list[OwnerListener], owners: Sequence[str]) -> None:
    for owner in owners:
        for callback in tuple(listeners):
            try:
                callback(owner)
            except Exception:
                _log.exception("store change listener %r failed for owner %s", callback, owner)


class _EngineStore:
    """The lifecycle both stores share around their :class:`_Engine`.

    Opening off the loop, ``async with``, :meth:`pragma` and :meth:`aclose`;
    each store keeps its own constructor and its typed ``open`` signature.
    """

    _engine: _Engine

    @classmethod
    async def _open_off_loop(cls, path: str | os.PathLike[str], **options: Any) -> Self:
        """Run the constructor (blocking file I/O) in a worker thread."""
        construct: Callable[..., Self] = cls
        return await anyio.to_thread.run_sync(functools.partial(construct, path, **options))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def pragma(self, name: str) -> object:
        """The writer connection's ``PRAGMA name`` (blocking; for tests and diagnostics)."""
        return self._engine.pragma(name)

    async def aclose(self) -> None:
        """Commit queued writes and close; later calls raise :class:`StoreUnavailable`."""
        await self._engine.aclose()


# ------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------

_RECORD_COLUMNS = "owner, value, ttl, stored_ts_ms, expires_at, value_hash"

_Row = tuple[str, str, int, int, float, str]


def _record(row: _Row) -> StoredRecord:
    owner, value, ttl, stored_ts_ms, expires_at, value_hash = row
    return StoredRecord(
        owner=owner,
        value=value,
        ttl=ttl,
        stored_ts_ms=stored_ts_ms,
        expires_at=expires_at,
        value_hash=value_hash,
    )


_UPSERT_TAIL = (
    " ON CONFLICT (owner, value_hash) DO UPDATE SET ttl = excluded.ttl, "
    "stored_ts_ms = excluded.stored_ts_ms, expires_at = excluded.expires_at"
)
_UPSERT = f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?){_UPSERT_TAIL}"
# ?1..?6 as in _UPSERT, ?7 = now, ?8 = max_values
_UPSERT_CAPPED = (
    f"INSERT INTO records ({_RECORD_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
    "WHERE (SELECT count(*) FROM records WHERE owner = ?1 AND expires_at > ?7) < ?8 "
    "OR EXISTS (SELECT 1 FROM records WHERE owner = ?1 AND value_hash = ?6 AND expires_at > ?7)"
    f"{_UPSERT_TAIL}"
)


class SqliteRecordStore(_EngineStore):
    """Signed TXT records in sqlite, implementing :class:`dmp.ports.store.RecordStore`.

    Opening runs blocking file I/O; from async code prefer ``await
    SqliteRecordStore.open(path)``. Close with :meth:`aclose` (or ``async with``).

    Args:
        path: database file (``DMP_DB_PATH``); created if missing.
        synchronous: ``"FULL"`` (default here: every commit survives power
            loss) or ``"NORMAL"`` (every commit survives a process crash; an OS
            crash or power loss can lose at most the last ``sync_interval_s``);
            see the module docstring.
        readers: pooled read connections, i.e. pooled reads that can run at once.
        busy_timeout_s: wait for locks held by other connections to the file.
        inline_reads: answer ``get`` and ``count_values`` on the loop thread
            (see the module docstring); ``False`` sends them to the pool.
        sync_interval_s: with ``"NORMAL"``, seconds at most between a commit
            and the checkpoint that fsyncs it (the OS-crash loss window).

    Raises:
        StoreUnavailable: the database cannot be opened in WAL mode.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        readers: int = 4,
        busy_timeout_s: float = 5.0,
        inline_reads: bool = True,
        sync_interval_s: float = 1.0,
    ) -> None:
        self._listeners: list[OwnerListener] = []
        self._engine = _Engine(
            path,
            _RECORDS_SCHEMA,
            functools.partial(_notify, self._listeners),
            synchronous=synchronous,
            readers=readers,
            busy_timeout_s=busy_timeout_s,
            inline_reads=inline_reads,
            sync_interval_s=sync_interval_s,
        )

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        readers: int = 4,
        busy_timeout_s: float = 5.0,
        inline_reads: bool = True,
        sync_interval_s: float = 1.0,
    ) -> Self:
        """Open in a worker thread (same arguments as the constructor)."""
        return await cls._open_off_loop(
            path,
            synchronous=synchronous,
            readers=readers,
            busy_timeout_s=busy_timeout_s,
            inline_reads=inline_reads,
            sync_interval_s=sync_interval_s,
        )

    @property
    def transactions(self) -> int:
        """Write transactions committed so far (group commit: at most the writes)."""
        return self._engine.transactions

    @property
    def writes(self) -> int:
        """Write calls committed so far (including refused ones, which commit nothing)."""
        return self._engine.writes

    @property
    def checkpoints(self) -> int:
        """Checkpoints run by the writer thread so far (``NORMAL``: each fsyncs the WAL)."""
        return self._engine.checkpoints

    # -- writes ------------------------------------------------------------------------

    async def put(
        self, owner: str, value: str, ttl: int, now: float, *, max_values: int | None = None
    ) -> None:
        """Add or refresh ``value`` at ``owner``; durable on return (see the port).

        Raises:
            StoreFull: ``max_values`` would be exceeded; nothing was written.
            StoreUnavailable: closed or sqlite failed.
        """
        digest = _value_hash(value)
        stored_ts_ms = int(now * 1000)
        expires_at = now + ttl

        params = (owner, value, ttl, stored_ts_ms, expires_at, digest)

        def op(conn: sqlite3.Connection) -> tuple[None, Sequence[str]]:
            if max_values is None:
                conn.execute(_UPSERT, params)
                return None, (owner,)
            # The cap check and the write in one statement: the row goes in only when the
            # owner holds fewer than max_values live values or this value is one of them
            # (a refresh is always allowed).
            cur = conn.execute(_UPSERT_CAPPED, (*params, now, max_values))
            if cur.rowcount == 0:
                (held,) = conn.execute(
                    "SELECT count(*) FROM records WHERE owner = ? AND expires_at > ?",
                    (owner, now),
                ).fetchone()
                raise StoreFull(f"{owner} already holds {held} values (cap {max_values})")
            return None, (owner,)

        await self._engine.write(op, single_statement=True)

    async def delete(self, owner: str, value: str | None = None) -> int:
        """Delete one value or the whole RRset; returns rows removed.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """

        def op(conn: sqlite3.Connection) -> tuple[int, Sequence[str]]:
            if value is None:
                cur = conn.execute("DELETE FROM records WHERE owner = ?", (owner,))
            else:
                cur = conn.execute(
                    "DELETE FROM records WHERE owner = ? AND value_hash = ? AND value = ?",
                    (owner, _value_hash(value), value),
                )
            return cur.rowcount, (owner,) if cur.rowcount else ()

        return await self._engine.write(op, single_statement=True)

    async def sweep_expired(self, now: float) -> int:
        """Delete rows with ``expires_at <= now`` in chunks of 2000 rows per commit.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """

        def op(conn: sqlite3.Connection) -> tuple[int, Sequence[str]]:
            owners = [
                owner
                for (owner,) in conn.execute(
                    "DELETE FROM records WHERE rowid IN (SELECT rowid FROM records "
                    "WHERE expires_at <= ? LIMIT ?) RETURNING owner",
                    (now, _SWEEP_CHUNK),
                )
            ]
            return len(owners), tuple(dict.fromkeys(owners))

        total = 0
        while True:
            removed = await self._engine.write(op, small=False)
            total += removed
            if removed < _SWEEP_CHUNK:
                return total

    # -- reads -------------------------------------------------------------------------

    async def get(self, owner: str, now: float) -> list[StoredRecord]:
        """Unexpired values at ``owner``, ordered by ``(stored_ts_ms, value_hash)``.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """

        def fn(conn: sqlite3.Connection) -> list[StoredRecord]:
            rows: list[_Row] = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE owner = ? AND expires_at > ? "
                "ORDER BY stored_ts_ms, value_hash",
                (owner, now),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._engine.read_inline(fn)

    async def count_values(self, owner: str, now: float) -> int:
        """How many unexpired values ``owner`` holds.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """

        def fn(conn: sqlite3.Connection) -> int:
            (held,) = conn.execute(
                "SELECT count(*) FROM records WHERE owner = ? AND expires_at > ?", (owner, now)
            ).fetchone()
            return int(held)

        return await self._engine.read_inline(fn)

    async def digest(
        self, after: tuple[int, str, str], limit: int, now: float
    ) -> list[StoredRecord]:
        """Unexpired rows strictly after ``after`` in ``(stored_ts_ms, owner, value_hash)``
        order, at most ``limit`` (wire.md §9); served by the ``records_digest`` index.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """
        after_ts, after_owner, after_hash = after
        if limit <= 0 or after_ts > _INT64_MAX:  # nothing sorts after a cursor past int64
            return []
        after_ts = max(after_ts, -_INT64_MAX - 1)  # peer cursors may hold any int
        limit = min(limit, _INT64_MAX)

        def fn(conn: sqlite3.Connection) -> list[StoredRecord]:
            rows: list[_Row] = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records "
                "WHERE (stored_ts_ms, owner, value_hash) > (?, ?, ?) AND expires_at > ? "
                "ORDER BY stored_ts_ms, owner, value_hash LIMIT ?",
                (after_ts, after_owner, after_hash, now, limit),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._engine.read(fn)

    async def count(self) -> int:
        """Total rows, expired rows not yet swept included.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """

        def fn(conn: sqlite3.Connection) -> int:
            (rows,) = conn.execute("SELECT count(*) FROM records").fetchone()
            return int(rows)

        return await self._engine.read(fn)

    # -- listeners and lifecycle -------------------------------------------------------

    def add_listener(self, callback: OwnerListener) -> None:
        """Call ``callback(owner)`` on the loop thread after every committed change."""
        self._listeners.append(callback)

    def remove_listener(self, callback: OwnerListener) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        if callback in self._listeners:
            self._listeners.remove(callback)


# ------------------------------------------------------------------------------------
# TSIG keys
# ------------------------------------------------------------------------------------

_TSIG_COLUMNS = (
    "keyname, secret, algorithm, allowed_suffixes, subject, ed25519_public, "
    "created_at, expires_at, revoked"
)

_TsigRow = tuple[str, bytes, str, str, str, str, int, int, int]


def _tsig_key(row: _TsigRow) -> TsigKey:
    keyname, secret, algorithm, suffixes, subject, public, created_at, expires_at, revoked = row
    return TsigKey(
        keyname=keyname,
        secret=bytes(secret),
        algorithm=algorithm,
        allowed_suffixes=tuple(str(s) for s in json.loads(suffixes)),
        subject=subject,
        ed25519_public=public,
        created_at=created_at,
        expires_at=expires_at,
        revoked=bool(revoked),
    )


class SqliteTsigKeyStore(_EngineStore):
    """TSIG keys in sqlite, implementing :class:`dmp.ports.store.TsigKeyStore`.

    Same file handling, threads and group commit as :class:`SqliteRecordStore`;
    ``path`` may be the record store's file. ``generation`` lives in this
    object (it starts at 0 on open). It bumps on the loop thread as each of
    this object's changes commits, and also when *another* connection or
    process changed the keys (``dmp-node admin tsig revoke``): reading
    ``generation`` checks, at most every ``change_check_s``, the inline
    connection's ``PRAGMA data_version`` (moves when anyone else commits to
    the file; no I/O) and, only when it moved, the ``tsig_keys_version`` row
    that triggers on ``tsig_keys`` bump. So record writes sharing the file do
    not count, and a revocation from another process is seen by the first
    keyring check ``change_check_s`` after it.

    Raises:
        StoreUnavailable: the database cannot be opened in WAL mode.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        readers: int = 2,
        busy_timeout_s: float = 5.0,
        change_check_s: float = 0.1,
    ) -> None:
        self._generation = 0
        self._check_every = change_check_s
        self._next_check = 0.0
        self._data_version: object = None
        self._keys_version: object = None
        self._engine = _Engine(
            path,
            _TSIG_SCHEMA,
            self._bump,
            synchronous=synchronous,
            private=True,  # shared secrets: a new file (and its -wal, -shm) is owner-only
            readers=readers,
            busy_timeout_s=busy_timeout_s,
        )

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        readers: int = 2,
        busy_timeout_s: float = 5.0,
        change_check_s: float = 0.1,
    ) -> Self:
        """Open in a worker thread (same arguments as the constructor)."""
        return await cls._open_off_loop(
            path,
            synchronous=synchronous,
            readers=readers,
            busy_timeout_s=busy_timeout_s,
            change_check_s=change_check_s,
        )

    def _versions(self) -> tuple[object, object] | None:
        """``(data_version, tsig_keys_version)`` read inline, or None when not possible here."""
        data_version = self._engine.inline_scalar("PRAGMA data_version")
        if data_version is None:
            return None
        if data_version == self._data_version:
            return data_version, self._keys_version
        keys_version = self._engine.inline_scalar("SELECT version FROM tsig_keys_version")
        if keys_version is None:
            return None
        return data_version, keys_version

    def _bump(self, changed: Sequence[str]) -> None:
        """A change of ours committed (loop thread): count it, and take it as seen."""
        self._generation += 1
        versions = self._versions()
        if versions is not None:
            self._data_version, self._keys_version = versions

    @property
    def generation(self) -> int:
        """Change counter; bumps as each put or successful revoke commits, and when
        another connection changed the keys (checked at most every ``change_check_s``)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_every
            versions = self._versions()
            if versions is not None:
                if self._keys_version is not None and versions[1] != self._keys_version:
                    self._generation += 1
                self._data_version, self._keys_version = versions
        return self._generation

    async def put(self, key: TsigKey) -> None:
        """Insert or replace the key named ``key.keyname``; durable on return.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """
        params = (
            key.keyname,
            key.secret,
            key.algorithm,
            json.dumps(list(key.allowed_suffixes)),
            key.subject,
            key.ed25519_public,
            key.created_at,
            key.expires_at,
            int(key.revoked),
        )

        def op(conn: sqlite3.Connection) -> tuple[None, Sequence[str]]:
            conn.execute(
                f"INSERT OR REPLACE INTO tsig_keys ({_TSIG_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
            return None, (key.keyname,)

        await self._engine.write(op, single_statement=True)

    async def revoke(self, keyname: str) -> bool:
        """Mark revoked; False when unknown.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """

        def op(conn: sqlite3.Connection) -> tuple[bool, Sequence[str]]:
            cur = conn.execute("UPDATE tsig_keys SET revoked = 1 WHERE keyname = ?", (keyname,))
            return cur.rowcount > 0, (keyname,) if cur.rowcount else ()

        return await self._engine.write(op, single_statement=True)

    async def _select(self, where: str, params: tuple[object, ...]) -> list[TsigKey]:
        def fn(conn: sqlite3.Connection) -> list[TsigKey]:
            rows: list[_TsigRow] = conn.execute(
                f"SELECT {_TSIG_COLUMNS} FROM tsig_keys {where} ORDER BY keyname", params
            ).fetchall()
            return [_tsig_key(row) for row in rows]

        return await self._engine.read(fn)

    async def get(self, keyname: str) -> TsigKey | None:
        """The key (revoked or expired included), or None when unknown.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """
        keys = await self._select("WHERE keyname = ?", (keyname,))
        return keys[0] if keys else None

    async def by_subject(self, subject: str) -> list[TsigKey]:
        """Every key minted for ``subject``, ordered by keyname.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """
        return await self._select("WHERE subject = ?", (subject,))

    async def all(self) -> list[TsigKey]:
        """Every key, ordered by keyname.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """
        return await self._select("", ())

    async def active(self, now: float) -> list[TsigKey]:
        """Keys neither revoked nor expired at ``now``, ordered by keyname.

        Raises:
            StoreUnavailable: closed or sqlite failed.
        """
        return await self._select("WHERE revoked = 0 AND expires_at > ?", (now,))
