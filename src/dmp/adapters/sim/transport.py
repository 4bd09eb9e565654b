"""An in-memory TXT world for client use-case tests (layer: adapters, simulation).

:class:`FakeDns` implements the three client transport ports at once
(:class:`~dmp.ports.transport.RecordReader`,
:class:`~dmp.ports.transport.RecordWriter`,
:class:`~dmp.ports.transport.ClaimSender`), so several simulated users can
share one world: what alice publishes, bob reads.

It behaves like a dmp node seen from a client (wire.md §7.3, §7.4,
behaviour.md §e):

* records are keyed by the lowercased absolute owner text; an owner holds a
  list of distinct values with append semantics, and republishing an
  identical value refreshes its TTL;
* each value expires ``ttl`` seconds after it was written, measured on the
  injected :class:`~dmp.ports.clock.Clock` (a :class:`SimClock` in tests);
* the node's caps are enforced on writes (value bytes, TTL, values per
  owner), refusing with ``PeerRejected(rcode=REFUSED)``; a claim whose owner
  is not under its zone is refused with NOTZONE;
* failures can be injected per operation and optionally per owner
  (:meth:`FakeDns.make_unreachable`, :meth:`FakeDns.make_rejecting`,
  :meth:`FakeDns.heal`);
* an optional per-query latency (virtual seconds) lets tests observe how many
  lookups are in flight at once (:attr:`FakeDns.peak_in_flight`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

import attrs
import dns.name
import dns.rcode

from dmp.ports.clock import Clock
from dmp.ports.transport import PeerRejected, PeerUnreachable, TransportError

__all__ = ["FakeDns", "Operation"]

Operation = Literal["query", "publish", "delete", "claim"]
ALL_OPERATIONS: Final[tuple[Operation, ...]] = ("query", "publish", "delete", "claim")


@attrs.frozen
class _Failure:
    operations: frozenset[Operation]
    owner: str | None  # lowercased absolute owner text, or None for every owner
    error: TransportError


@attrs.define
class _Value:
    value: str
    expires_at: float


def _key(owner: dns.name.Name) -> str:
    if not owner.is_absolute():
        raise ValueError(f"owner must be absolute: {owner}")
    return owner.to_text().lower()


class FakeDns:
    """An in-memory TXT world implementing RecordReader, RecordWriter and ClaimSender.

    Args:
        clock: the time source for TTL expiry (virtual in tests).
        query_latency_s: virtual seconds each ``query_txt`` waits on ``clock``
            before answering (0 answers at once, after one scheduler checkpoint).
        max_value_bytes: largest accepted value (UTF-8 bytes), like ``DMP_MAX_VALUE_BYTES``.
        max_ttl: largest accepted TTL in seconds, like ``DMP_MAX_TTL``.
        max_values_per_owner: most values one owner may hold, like ``DMP_MAX_VALUES_PER_NAME``.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        query_latency_s: float = 0.0,
        max_value_bytes: int = 2048,
        max_ttl: int = 86400,
        max_values_per_owner: int = 64,
    ) -> None:
        self._clock = clock
        self._records: dict[str, list[_Value]] = {}
        self._failures: list[_Failure] = []
        self.query_latency_s = query_latency_s
        self.max_value_bytes = max_value_bytes
        self.max_ttl = max_ttl
        self.max_values_per_owner = max_values_per_owner
        self.queries = 0
        """How many ``query_txt`` calls were made (failed ones included)."""
        self.in_flight = 0
        self.peak_in_flight = 0
        """The largest number of ``query_txt`` calls that were waiting at the same time."""

    # ---- failure injection -------------------------------------------------

    def make_unreachable(self, *operations: Operation, owner: dns.name.Name | None = None) -> None:
        """Make ``operations`` (all four when none are given) raise PeerUnreachable.

        Args:
            operations: any of ``"query"``, ``"publish"``, ``"delete"``, ``"claim"``.
            owner: limit the failure to this owner (every owner when None).
        """
        self._inject(operations, owner, PeerUnreachable("fake DNS: peer unreachable"))

    def make_rejecting(
        self,
        *operations: Operation,
        owner: dns.name.Name | None = None,
        rcode: dns.rcode.Rcode = dns.rcode.REFUSED,
    ) -> None:
        """Make ``operations`` (all four when none are given) raise PeerRejected(rcode=...).

        Args:
            operations: any of ``"query"``, ``"publish"``, ``"delete"``, ``"claim"``.
            owner: limit the failure to this owner (every owner when None).
            rcode: the rcode carried by the error.
        """
        error = PeerRejected(f"fake DNS: {dns.rcode.to_text(rcode)}", rcode=int(rcode))
        self._inject(operations, owner, error)

    def heal(self) -> None:
        """Remove every injected failure."""
        self._failures.clear()

    def _inject(
        self,
        operations: Iterable[Operation],
        owner: dns.name.Name | None,
        error: TransportError,
    ) -> None:
        ops = frozenset(operations) or frozenset(ALL_OPERATIONS)
        unknown = ops - set(ALL_OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations: {sorted(unknown)}")
        key = None if owner is None else _key(owner)
        self._failures.append(_Failure(ops, key, error))

    def _check(self, operation: Operation, key: str) -> None:
        for failure in self._failures:
            if operation in failure.operations and failure.owner in (None, key):
                raise failure.error

    # ---- inspection (synchronous, for assertions) --------------------------

    def values(self, owner: dns.name.Name) -> list[str]:
        """The unexpired values at ``owner``, in publication order."""
        return [v.value for v in self._live(_key(owner))]

    def owners(self) -> list[str]:
        """Every owner (lowercased absolute text) holding an unexpired value, sorted."""
        return sorted(k for k in self._records if self._live(k))

    def ttl_left(self, owner: dns.name.Name, value: str) -> float | None:
        """Seconds until ``value`` at ``owner`` expires, or None when it is absent."""
        for v in self._live(_key(owner)):
            if v.value == value:
                return v.expires_at - self._clock.now()
        return None

    def _live(self, key: str) -> list[_Value]:
        now = self._clock.now()
        values = self._records.get(key, [])
        live = [v for v in values if v.expires_at > now]
        if len(live) != len(values):
            if live:
                self._records[key] = live
            else:
                self._records.pop(key, None)
        return live

    # ---- RecordReader ------------------------------------------------------

    async def query_txt(self, owner: dns.name.Name) -> list[str]:
        """Every unexpired value at ``owner``; ``[]`` when there is none.

        Raises:
            PeerUnreachable, PeerRejected: when injected for ``"query"``.
        """
        key = _key(owner)
        self.queries += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await self._clock.sleep(self.query_latency_s)
        finally:
            self.in_flight -= 1
        self._check("query", key)
        return [v.value for v in self._live(key)]

    # ---- RecordWriter ------------------------------------------------------

    async def publish(self, owner: dns.name.Name, value: str, ttl: int) -> None:
        """Add ``value`` at ``owner`` (append; an identical value gets its TTL refreshed).

        Raises:
            PeerRejected: REFUSED when a cap is exceeded, or when injected.
            PeerUnreachable: when injected.
        """
        key = _key(owner)
        await self._clock.sleep(0)
        self._check("publish", key)
        self._add(key, value, ttl)

    async def delete(self, owner: dns.name.Name, value: str | None = None) -> None:
        """Delete ``value`` at ``owner`` (every value when None); absent values are a no-op.

        Raises:
            PeerUnreachable, PeerRejected: when injected for ``"delete"``.
        """
        key = _key(owner)
        await self._clock.sleep(0)
        self._check("delete", key)
        if value is None:
            self._records.pop(key, None)
            return
        kept = [v for v in self._records.get(key, []) if v.value != value]
        if kept:
            self._records[key] = kept
        else:
            self._records.pop(key, None)

    # ---- ClaimSender -------------------------------------------------------

    async def send_claim(
        self, zone: dns.name.Name, owner: dns.name.Name, value: str, ttl: int
    ) -> None:
        """Add a claim ``value`` at ``owner``, which must lie under ``zone``.

        Raises:
            PeerRejected: NOTZONE when ``owner`` is not under ``zone``; REFUSED
                when a cap is exceeded; or when injected.
            PeerUnreachable: when injected.
        """
        key = _key(owner)
        await self._clock.sleep(0)
        self._check("claim", key)
        if not owner.is_subdomain(zone):
            raise PeerRejected(
                f"fake DNS: {owner} is not under {zone}", rcode=int(dns.rcode.NOTZONE)
            )
        self._add(key, value, ttl)

    def _add(self, key: str, value: str, ttl: int) -> None:
        if len(value.encode("utf-8")) > self.max_value_bytes:
            raise PeerRejected("fake DNS: value too long", rcode=int(dns.rcode.REFUSED))
        if ttl < 0 or ttl > self.max_ttl:
            raise PeerRejected(f"fake DNS: bad ttl {ttl}", rcode=int(dns.rcode.REFUSED))
        live = self._live(key)
        expires_at = self._clock.now() + ttl
        for v in live:
            if v.value == value:
                v.expires_at = expires_at
                return
        if len(live) >= self.max_values_per_owner:
            raise PeerRejected("fake DNS: RRset full", rcode=int(dns.rcode.REFUSED))
        self._records[key] = [*live, _Value(value, expires_at)]
