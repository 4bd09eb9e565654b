"""In-memory stores (layer: adapters): the fakes behind the storage ports.

:class:`MemoryRecordStore` implements :class:`dmp.ports.store.RecordStore` and
:class:`MemoryTsigKeyStore` implements :class:`dmp.ports.store.TsigKeyStore`,
with the same observable behaviour as the sqlite adapters (one conformance
suite, ``tests/integration/test_store_conformance.py``, runs against both).

Nothing here touches the disk, threads or the clock: ``now`` comes in as a
parameter, so the stores work under :class:`dmp.adapters.sim.clock.SimClock`.
Every method completes without yielding to the scheduler, which keeps
simulations deterministic. "Durable on return" holds trivially for the life of
the object.

Store model (wire.md §9): rows keyed on ``(owner, value)``;
``stored_ts_ms = int(now * 1000)``, ``expires_at = now + ttl``,
``value_hash = sha256(utf8(value)).hex``. ``digest`` sorts the live rows on
each call (O(n log n)), which is fine for tests and simulations.
"""

from __future__ import annotations

import hashlib
import logging

import attrs

from dmp.ports.store import (
    OwnerListener,
    StoredRecord,
    StoreFull,
    StoreUnavailable,
    TsigKey,
)

__all__ = ["MemoryRecordStore", "MemoryTsigKeyStore"]

_log = logging.getLogger(__name__)


def _value_hash(value: str) -> str:
    """``sha256(utf8(value)).hexdigest()``, lowercase (wire.md §9)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _notify(listeners: list[OwnerListener], owner: str) -> None:
    """Call every listener with ``owner``; a failing listener is logged, not raised."""
    for callback in tuple(listeners):
        try:
            callback(owner)
        except Exception:
            _log.exception("store change listener %r failed for owner %s", callback, owner)


class MemoryRecordStore:
    """Signed TXT records in a dict, implementing :class:`dmp.ports.store.RecordStore`."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, StoredRecord]] = {}
        self._listeners: list[OwnerListener] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory record store is closed")

    async def put(
        self, owner: str, value: str, ttl: int, now: float, *, max_values: int | None = None
    ) -> None:
        """Add or refresh ``value`` at ``owner`` (see the port)."""
        self._check_open()
        values = self._rows.get(owner, {})
        existing = values.get(value)
        refreshing = existing is not None and existing.expires_at > now
        if max_values is not None and not refreshing:
            live = sum(1 for rec in values.values() if rec.expires_at > now)
            if live >= max_values:
                raise StoreFull(f"{owner} already holds {live} values (cap {max_values})")
        self._rows.setdefault(owner, values)[value] = StoredRecord(
            owner=owner,
            value=value,
            ttl=ttl,
            stored_ts_ms=int(now * 1000),
            expires_at=now + ttl,
            value_hash=existing.value_hash if existing is not None else _value_hash(value),
        )
        _notify(self._listeners, owner)

    async def delete(self, owner: str, value: str | None = None) -> int:
        """Delete one value or the whole RRset; returns rows removed."""
        self._check_open()
        values = self._rows.get(owner)
        if not values:
            return 0
        if value is None:
            removed = len(values)
            del self._rows[owner]
        elif values.pop(value, None) is not None:
            removed = 1
            if not values:
                del self._rows[owner]
        else:
            return 0
        _notify(self._listeners, owner)
        return removed

    async def get(self, owner: str, now: float) -> list[StoredRecord]:
        """Unexpired values at ``owner``, ordered by ``(stored_ts_ms, value_hash)``."""
        self._check_open()
        live = [rec for rec in self._rows.get(owner, {}).values() if rec.expires_at > now]
        live.sort(key=lambda rec: (rec.stored_ts_ms, rec.value_hash))
        return live

    async def count_values(self, owner: str, now: float) -> int:
        """How many unexpired values ``owner`` holds."""
        self._check_open()
        return sum(1 for rec in self._rows.get(owner, {}).values() if rec.expires_at > now)

    async def digest(
        self, after: tuple[int, str, str], limit: int, now: float
    ) -> list[StoredRecord]:
        """Unexpired rows strictly after ``after`` in ``(stored_ts_ms, owner, value_hash)`` order."""
        self._check_open()
        if limit <= 0:
            return []
        page = [
            rec
            for values in self._rows.values()
            for rec in values.values()
            if rec.expires_at > now and (rec.stored_ts_ms, rec.owner, rec.value_hash) > after
        ]
        page.sort(key=lambda rec: (rec.stored_ts_ms, rec.owner, rec.value_hash))
        return page[:limit]

    async def sweep_expired(self, now: float) -> int:
        """Delete rows with ``expires_at <= now``; returns how many."""
        self._check_open()
        removed = 0
        touched: list[str] = []
        for owner in list(self._rows):
            values = self._rows[owner]
            dead = [value for value, rec in values.items() if rec.expires_at <= now]
            if not dead:
                continue
            for value in dead:
                del values[value]
            if not values:
                del self._rows[owner]
            removed += len(dead)
            touched.append(owner)
        for owner in touched:
            _notify(self._listeners, owner)
        return removed

    async def count(self) -> int:
        """Total rows, expired rows not yet swept included."""
        self._check_open()
        return sum(len(values) for values in self._rows.values())

    def add_listener(self, callback: OwnerListener) -> None:
        """Call ``callback(owner)`` after every change."""
        self._listeners.append(callback)

    def remove_listener(self, callback: OwnerListener) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    async def aclose(self) -> None:
        """Close; later calls raise :class:`StoreUnavailable`. Idempotent."""
        self._closed = True


class MemoryTsigKeyStore:
    """TSIG keys in a dict, implementing :class:`dmp.ports.store.TsigKeyStore`."""

    def __init__(self) -> None:
        self._keys: dict[str, TsigKey] = {}
        self._generation = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory TSIG key store is closed")

    @property
    def generation(self) -> int:
        """Change counter; bumps after every put and every successful revoke."""
        return self._generation

    async def put(self, key: TsigKey) -> None:
        """Insert or replace the key named ``key.keyname``."""
        self._check_open()
        self._keys[key.keyname] = key
        self._generation += 1

    async def get(self, keyname: str) -> TsigKey | None:
        """The key (revoked or expired included), or None when unknown."""
        self._check_open()
        return self._keys.get(keyname)

    async def by_subject(self, subject: str) -> list[TsigKey]:
        """Every key minted for ``subject``, ordered by keyname."""
        self._check_open()
        return sorted(
            (key for key in self._keys.values() if key.subject == subject),
            key=lambda key: key.keyname,
        )

    async def all(self) -> list[TsigKey]:
        """Every key, ordered by keyname."""
        self._check_open()
        return sorted(self._keys.values(), key=lambda key: key.keyname)

    async def revoke(self, keyname: str) -> bool:
        """Mark the key revoked; False when unknown."""
        self._check_open()
        key = self._keys.get(keyname)
        if key is None:
            return False
        self._keys[keyname] = attrs.evolve(key, revoked=True)
        self._generation += 1
        return True

    async def active(self, now: float) -> list[TsigKey]:
        """Keys neither revoked nor expired at ``now``, ordered by keyname."""
        self._check_open()
        return sorted(
            (key for key in self._keys.values() if not key.revoked and key.expires_at > now),
            key=lambda key: key.keyname,
        )

    async def aclose(self) -> None:
        """Close; later calls raise :class:`StoreUnavailable`. Idempotent."""
        self._closed = True
