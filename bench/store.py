"""Store throughput: serial puts/s and puts/s with 20 concurrent writers (not a test).

Runs the memory store and the sqlite store (synchronous FULL and NORMAL, WAL)
on a fresh file in a temporary directory (``--dir`` to choose where; the
figures are only meaningful on the disk the node will use). Each phase stops
after ``--count`` puts or ``--seconds`` seconds, whichever comes first.

    .venv/bin/python bench/store.py [--count 5000] [--seconds 3] [--dir /var/lib/dmp]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from dmp.adapters.memory_store import MemoryRecordStore
from dmp.adapters.sqlite_store import SqliteRecordStore
from dmp.ports.store import RecordStore

WRITERS = 20
NOW = 1_900_000_000.0


async def _serial(store: RecordStore, count: int, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while done < count and time.perf_counter() < deadline:
        await store.put(
            f"slot-{done % 10}.mb-serial.example.com", f"v=dmp1;serial {done}", 300, NOW
        )
        done += 1
    return done, time.perf_counter() - start


async def _concurrent(store: RecordStore, count: int, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    deadline = start + seconds
    per_writer = max(1, count // WRITERS)
    totals = [0] * WRITERS

    async def writer(w: int) -> None:
        for i in range(per_writer):
            if time.perf_counter() >= deadline:
                return
            await store.put(f"slot-{i % 10}.mb-w{w:02d}.example.com", f"v=dmp1;c {i}", 300, NOW)
            totals[w] += 1

    async with anyio.create_task_group() as tg:
        for w in range(WRITERS):
            tg.start_soon(writer, w)
    return sum(totals), time.perf_counter() - start


def _line(label: str, phase: str, done: int, elapsed: float, extra: str = "") -> None:
    print(
        f"{label:<16} {phase:<14} {done:>7} puts {elapsed:7.3f} s {done / elapsed:>10.0f} puts/s {extra}"
    )


async def _run(
    label: str,
    make: Callable[[str], Awaitable[RecordStore]],
    count: int,
    seconds: float,
    workdir: Path,
) -> None:
    for phase, fn in (("serial", _serial), (f"{WRITERS} writers", _concurrent)):
        path = str(workdir / f"{label}-{phase.replace(' ', '_')}.db")
        store = await make(path)
        try:
            done, elapsed = await fn(store, count, seconds)
            extra = ""
            if isinstance(store, SqliteRecordStore):
                extra = f"({store.transactions} commits, {done / max(1, store.transactions):.1f} puts/commit)"
            _line(label, phase, done, elapsed, extra)
        finally:
            await store.aclose()


async def main(count: int, seconds: float, directory: str | None) -> None:
    async def memory(path: str) -> RecordStore:
        return MemoryRecordStore()

    async def sqlite_full(path: str) -> RecordStore:
        return await SqliteRecordStore.open(path, synchronous="FULL")

    async def sqlite_normal(path: str) -> RecordStore:
        return await SqliteRecordStore.open(path, synchronous="NORMAL")

    with tempfile.TemporaryDirectory(prefix="dmp-bench-", dir=directory) as tmp:
        print(f"dir {tmp}; at most {count} puts or {seconds} s per phase")
        for label, make in (
            ("memory", memory),
            ("sqlite FULL", sqlite_full),
            ("sqlite NORMAL", sqlite_normal),
        ):
            await _run(label, make, count, seconds, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    anyio.run(main, args.count, args.seconds, args.dir, backend_options={"use_uvloop": True})
