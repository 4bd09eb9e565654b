"""Storage ports (layer: ports): signed TXT records and TSIG keys.

Owners are passed as text in their canonical store form: lowercase, no
trailing dot (``slot-3.mb-0123456789ab.example.com``). Adapters:
``dmp.adapters.memory_store`` and ``dmp.adapters.sqlite_store``; one
conformance suite (``tests/integration/test_store_conformance.py``) runs
against both.

Store model (wire.md §9): rows ``(owner, value, ttl, stored_ts_ms,
expires_at, value_hash)`` keyed on ``(owner, value)``; republishing an
identical value refreshes its TTL, expiry and ``stored_ts_ms``.
``value_hash = sha256(utf8(value)).hex`` (lowercase). ``stored_ts_ms`` is the
local acceptance time in milliseconds.

Durability: when ``put``/``delete``/``sweep_expired`` returns, the change is
committed (an acknowledged write is durable). A write that has been submitted
runs to completion even if the caller is cancelled; the cancellation is
delivered once it has been committed (or has failed).

Expiry: a row is live while ``expires_at > now``; ``get``, ``digest`` and
``count_values`` never return expired rows, and ``sweep_expired(now)`` removes
exactly the rows with ``expires_at <= now``.

Change notification: ``add_listener(callback)`` registers a synchronous
``callback(owner)`` that the store calls on the event-loop thread, after the
change is committed and before the writing call returns: once per put, once
per delete that removed rows, and at least once for every owner a sweep
removed rows from. The DNS answer cache uses it to drop rendered answers. Callbacks must be cheap and
must not raise; an exception from one is logged and does not fail the write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

__all__ = [
    "OwnerListener",
    "RecordStore",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "StoredRecord",
    "TsigKey",
    "TsigKeyStore",
]


class StoreError(Exception):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or is closed."""


class StoreFull(StoreError):
    """A per-owner or global record cap would be exceeded."""


OwnerListener = Callable[[str], None]
"""A change callback: receives the owner whose values changed."""


@attrs.frozen
class StoredRecord:
    """One stored TXT value.

    Attributes:
        owner: canonical owner text (lowercase, no trailing dot).
        value: the full TXT value (character-strings joined), UTF-8 text.
        ttl: the TTL it was published with, in seconds.
        stored_ts_ms: local acceptance time, POSIX milliseconds.
        expires_at: POSIX seconds after which the row is gone.
        value_hash: ``sha256(utf8(value)).hexdigest()``.
    """

    owner: str
    value: str
    ttl: int
    stored_ts_ms: int
    expires_at: float
    value_hash: str

    def remaining_ttl(self, now: float) -> int:
        """Seconds left before expiry, at least 1 (wire.md §9 digest ``ttl``)."""
        return max(1, int(self.expires_at - now))


@runtime_checkable
class RecordStore(Protocol):
    """Signed TXT records with append semantics."""

    async def put(
        self, owner: str, value: str, ttl: int, now: float, *, max_values: int | None = None
    ) -> None:
        """Add ``value`` at ``owner`` or refresh it; durable on return.

        A new row gets ``stored_ts_ms = int(now * 1000)``,
        ``expires_at = now + ttl`` and ``value_hash = sha256(utf8(value)).hex``;
        republishing an existing ``(owner, value)`` overwrites ``ttl``,
        ``expires_at`` and ``stored_ts_ms`` the same way (wire.md §9).

        Args:
            owner: canonical owner text.
            value: the full TXT value.
            ttl: seconds; caps are the caller's job.
            now: POSIX seconds of acceptance.
            max_values: when given, refuse to add a *new* value if ``owner``
                already holds this many live values (checked atomically with
                the write; refreshing an existing live value is always allowed).

        Raises:
            StoreFull: ``max_values`` would be exceeded; nothing was written.
            StoreUnavailable: the store is closed or failing.
        """
        ...

    async def delete(self, owner: str, value: str | None = None) -> int:
        """Delete one value (or every value when ``value`` is None); returns rows removed.

        Expired rows not yet swept count as rows too.
        """
        ...

    async def get(self, owner: str, now: float) -> list[StoredRecord]:
        """Unexpired values at ``owner``, ordered by ``(stored_ts_ms, value_hash)``."""
        ...

    async def count_values(self, owner: str, now: float) -> int:
        """How many unexpired values ``owner`` holds (an indexed count, no rows fetched)."""
        ...

    async def digest(
        self, after: tuple[int, str, str], limit: int, now: float
    ) -> list[StoredRecord]:
        """Unexpired rows strictly after the cursor ``(stored_ts_ms, owner, value_hash)``,
        ascending in that order, at most ``limit`` rows (wire.md §9)."""
        ...

    async def sweep_expired(self, now: float) -> int:
        """Delete rows with ``expires_at <= now``; returns how many."""
        ...

    async def count(self) -> int:
        """Total rows (expired rows not yet swept included)."""
        ...

    def add_listener(self, callback: OwnerListener) -> None:
        """Call ``callback(owner)`` after every committed change (see the module docstring)."""
        ...

    def remove_listener(self, callback: OwnerListener) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        ...

    async def aclose(self) -> None:
        """Finish queued writes and close; later calls raise :class:`StoreUnavailable`."""
        ...


@attrs.frozen
class TsigKey:
    """A TSIG key minted for one subject (wire.md §7.1).

    Attributes:
        keyname: absolute key name text with trailing dot.
        secret: raw secret bytes.
        algorithm: RFC 8945 name, e.g. ``hmac-sha256``.
        allowed_suffixes: stored scope suffixes (lowercase, sorted).
        subject: canonical ``user@host``.
        ed25519_public: hex of the registering key (anti-takeover).
        expires_at: POSIX seconds.
        revoked: True once revoked.
    """

    keyname: str
    secret: bytes = attrs.field(repr=False)
    algorithm: str
    allowed_suffixes: tuple[str, ...]
    subject: str
    ed25519_public: str
    created_at: int
    expires_at: int
    revoked: bool = False


@runtime_checkable
class TsigKeyStore(Protocol):
    """Persistent TSIG keys, with a change counter for keyring caching.

    Key names are compared as exact text; callers store them lowercase with a
    trailing dot. Lists are ordered by ``keyname``.
    """

    @property
    def generation(self) -> int:
        """Change counter of this store object, starting at 0 when opened.

        Increments when a ``put`` or a ``revoke`` that returns True commits,
        before that call returns. A keyring cached with another generation is
        stale. Read the generation *before* loading the keys it labels, so a
        change racing the load can only cause one extra rebuild.
        """
        ...

    async def put(self, key: TsigKey) -> None:
        """Insert or replace the key with ``key.keyname``; durable on return."""
        ...

    async def get(self, keyname: str) -> TsigKey | None:
        """The key (revoked or expired included), or None when unknown."""
        ...

    async def by_subject(self, subject: str) -> list[TsigKey]:
        """Every key minted for ``subject``."""
        ...

    async def all(self) -> list[TsigKey]:
        """Every key."""
        ...

    async def revoke(self, keyname: str) -> bool:
        """Mark revoked; False when unknown."""
        ...

    async def active(self, now: float) -> list[TsigKey]:
        """Keys neither revoked nor expired (``expires_at > now``) at ``now``."""
        ...

    async def aclose(self) -> None:
        """Finish queued writes and close; later calls raise :class:`StoreUnavailable`."""
        ...
