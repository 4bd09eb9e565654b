"""The anti-entropy worker: pull what cluster peers hold and we lack (layer: apps).

wire.md §9, behaviour.md §f (AntiEntropyWorker). Every ``interval`` seconds
(first tick after one interval) the worker takes ONE peer, round-robin, and:

1. pages that peer's digest from its in-memory watermark (``0::`` at start),
   :data:`PAGE_LIMIT` rows a page, at most ``max_pages`` pages a tick;
2. validates every row (:func:`dmp.domain.sync.validate_digest_entry`; bad
   rows are skipped and counted);
3. plans the pulls (:func:`dmp.domain.sync.plan_pulls`: missing here, or the
   peer's remaining TTL beats ours by more than 5 s);
4. pulls the planned owners, at most 256 names a request;
5. keeps a pulled value only if :func:`dmp.domain.sync.accept_pulled_value`
   accepts it (its hash was advertised for that owner, and it re-verifies by
   record type; cluster manifests against ``DMP_SYNC_OPERATOR_SPK`` when
   pinned), and stores it with the TTL the peer sent (append semantics);
6. advances the peer's watermark over the contiguous prefix of handled rows
   (:class:`dmp.domain.sync.Watermark`): a row is handled when it needed no
   pull, its value was stored, or it was refused for good; a row whose pull
   failed or whose value the peer did not return keeps the watermark before
   it, so the next tick asks again from there (rows after it that were
   stored then need no pull).

A failing peer never stops the worker: one warning line, and the next tick
goes to the next peer. Each tick logs one summary line (INFO when something
was stored or refused, DEBUG otherwise) and adds to :attr:`SyncWorker.counters`,
which ``/metrics`` exposes as ``dmp_sync_values_total{outcome}``.

Manifest gossip, when both ``DMP_SYNC_OPERATOR_SPK`` and
``DMP_CLUSTER_BASE_DOMAIN`` are set: before the digest (so that a newer
manifest is installed with its own lifetime rather than pulled with the
peer's remaining TTL; the reference gossips after the digest), each tick reads the
peer's ``GET /v1/sync/cluster-manifest`` and installs it only if it verifies
under the pinned key, names ``<base>``, and its ``seq`` is strictly higher
than every verifying manifest stored at ``cluster.<base>`` (pulled ones
included). Installing stores it there with TTL ``exp - now`` and replaces
the peer set with the manifest's nodes' HTTP endpoints, minus this node
(``DMP_NODE_ID``, ``DMP_SYNC_SELF_ENDPOINT``). Peers that stay keep their
watermark.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from dmp.domain.cluster import ClusterManifest, verify_cluster
from dmp.domain.errors import BadDigestEntry, DmpError
from dmp.domain.sync import (
    MAX_PULL_NAMES,
    DigestEntry,
    PullAccepted,
    Watermark,
    accept_pulled_value,
    plan_pulls,
    pull_names,
    validate_digest_entry,
    value_hash,
)
from dmp.ports.clock import Clock
from dmp.ports.store import RecordStore, StoreError, StoreFull
from dmp.ports.sync import PulledValue, SyncPeer
from dmp.ports.transport import PeerRejected, TransportError

__all__ = ["MAX_PAGES_PER_TICK", "PAGE_LIMIT", "SyncWorker", "TickReport"]

log = logging.getLogger("dmp.node.sync")

PAGE_LIMIT: Final = 1000
"""Digest rows asked for per page (the reference's page size)."""
MAX_PAGES_PER_TICK: Final = 10
"""Digest pages read from one peer in one tick; the rest waits for its next turn."""
_MAX_STORE_TTL: Final = 2**31 - 1


def _canon(owner: str) -> str:
    return owner.lower().rstrip(".")


@attrs.define
class TickReport:
    """What one tick did (also the summary log line).

    Attributes:
        peer: the peer's base URL, or None when there are no peers.
        pages: digest pages read.
        rows: valid digest rows read.
        planned: rows that needed a pull.
        stored: values stored (new or TTL refresh).
        refused: pulled values refused (hash not advertised, failed re-verification, store full).
        bad_rows: digest rows that failed validation.
        missing: planned rows the peer did not return.
        error: the peer failure that ended the tick early, if any.
        manifest_seq: the seq of a cluster manifest installed by gossip this tick.
    """

    peer: str | None = None
    pages: int = 0
    rows: int = 0
    planned: int = 0
    stored: int = 0
    refused: int = 0
    bad_rows: int = 0
    missing: int = 0
    error: str | None = None
    manifest_seq: int | None = None


class SyncWorker:
    """Pulls from cluster peers, one per tick, round-robin.

    Args:
        store: our record store.
        clock: the node's clock (``sleep`` paces the ticks).
        peers: the peers, in round-robin order.
        interval: seconds between ticks (``DMP_SYNC_INTERVAL``).
        operator_spk: ``DMP_SYNC_OPERATOR_SPK`` (cluster manifests verify against it).
        max_values_per_name: ``DMP_MAX_VALUES_PER_NAME`` (a pulled new value over it is refused).
        page_limit: digest rows per page.
        max_pages: digest pages per tick.
        cluster_base: ``DMP_CLUSTER_BASE_DOMAIN`` (gossip needs it and ``operator_spk``).
        peer_factory: builds a peer for an endpoint named by a gossiped manifest
            (gossip never changes the peer set without one).
        self_endpoint: ``DMP_SYNC_SELF_ENDPOINT``, left out of a gossiped peer set.
        node_id: ``DMP_NODE_ID``, whose manifest entry is left out of it.
    """

    def __init__(
        self,
        store: RecordStore,
        clock: Clock,
        peers: Sequence[SyncPeer],
        *,
        interval: float,
        operator_spk: bytes | None = None,
        max_values_per_name: int | None = None,
        page_limit: int = PAGE_LIMIT,
        max_pages: int = MAX_PAGES_PER_TICK,
        cluster_base: str | None = None,
        peer_factory: Callable[[str], SyncPeer] | None = None,
        self_endpoint: str | None = None,
        node_id: str | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._peers = list(peers)
        self._interval = interval
        self._operator_spk = operator_spk
        self._max_values = max_values_per_name
        self._page_limit = page_limit
        self._max_pages = max_pages
        self._cluster_base = cluster_base.lower().rstrip(".") if cluster_base else None
        self._peer_factory = peer_factory
        self._self_endpoint = self_endpoint.rstrip("/").lower() if self_endpoint else None
        self._node_id = node_id
        self._next = 0
        self._watermarks: dict[str, Watermark] = {}
        self.counters: Counter[str] = Counter()
        """Totals by outcome: ``stored``, ``refused``, ``bad_row``, ``missing``,
        ``peer_error``, ``manifest_installed``."""

    @property
    def peers(self) -> list[str]:
        """The current peer set's endpoints, in round-robin order."""
        return [peer.endpoint for peer in self._peers]

    def watermark(self, endpoint: str) -> Watermark:
        """The in-memory watermark of one peer (the origin until a tick moves it)."""
        return self._watermarks.get(endpoint, Watermark())

    async def run(self) -> None:
        """Tick every ``interval`` forever (first tick after one interval)."""
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.tick()
            except Exception:  # a bug must not end replication for good
                log.exception("anti-entropy tick failed")

    async def aclose(self) -> None:
        """Close every peer client."""
        for peer in self._peers:
            try:
                await peer.aclose()
            except Exception:
                log.exception("error while closing sync peer %s", peer.endpoint)

    async def tick(self) -> TickReport:
        """Sync with the next peer in round-robin order; never raises for a peer failure."""
        if not self._peers:
            return TickReport()
        peer = self._peers[self._next % len(self._peers)]
        self._next = (self._next + 1) % len(self._peers)
        report = TickReport(peer=peer.endpoint)
        try:
            if self._operator_spk is not None and self._cluster_base is not None:
                try:
                    await self._gossip(peer, report)
                except PeerRejected as exc:
                    # a peer without the route, or a broken answer: the digest may still work
                    log.info("cluster manifest gossip with %s failed: %s", peer.endpoint, exc)
            await self._sync(peer, report)
        except (TransportError, StoreError) as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            self.counters["peer_error"] += 1
            log.warning("anti-entropy with %s failed: %s", peer.endpoint, report.error)
        if peer not in self._peers:  # dropped by the manifest gossiped this tick
            self._watermarks.pop(peer.endpoint, None)
            await self._close(peer)
        level = (
            logging.INFO if report.stored or report.refused or report.bad_rows else logging.DEBUG
        )
        log.log(
            level,
            "anti-entropy tick %s: %d pages, %d rows, %d pulled, %d stored, %d refused, "
            "%d bad rows, %d not returned",
            peer.endpoint,
            report.pages,
            report.rows,
            report.planned,
            report.stored,
            report.refused,
            report.bad_rows,
            report.missing,
            extra=attrs.asdict(report),
        )
        return report

    async def _installed_seq(self, owner: str, now: float) -> int:
        """The highest seq of the verifying manifests stored at ``owner`` (-1: none)."""
        assert self._operator_spk is not None
        best = -1
        for row in await self._store.get(owner, now):
            try:
                manifest = verify_cluster(
                    row.value,
                    self._operator_spk,
                    now=int(now),
                    expected_cluster_name=self._cluster_base,
                )
            except DmpError:
                continue
            best = max(best, manifest.seq)
        return best

    async def _gossip(self, peer: SyncPeer, report: TickReport) -> None:
        """Install the peer's cluster manifest if it is newer and verifies; swap the peer set."""
        assert self._operator_spk is not None
        assert self._cluster_base is not None
        body = await peer.cluster_manifest()
        if body is None:
            return
        wire = body.get("wire")
        if not isinstance(wire, str):
            log.info("anti-entropy: %s served a cluster manifest without a wire", peer.endpoint)
            return
        now = self._clock.now()
        try:
            manifest = verify_cluster(
                wire, self._operator_spk, now=int(now), expected_cluster_name=self._cluster_base
            )
        except DmpError as exc:
            log.info(
                "anti-entropy: refused the cluster manifest of %s: %s: %s",
                peer.endpoint,
                type(exc).__name__,
                exc,
            )
            return
        owner = f"cluster.{self._cluster_base}"
        if manifest.seq <= await self._installed_seq(owner, now):
            return
        ttl = max(1, min(manifest.exp - int(now), _MAX_STORE_TTL))
        await self._store.put(owner, wire, ttl, now)
        report.manifest_seq = manifest.seq
        self.counters["manifest_installed"] += 1
        log.info(
            "anti-entropy: installed cluster manifest seq %d from %s",
            manifest.seq,
            peer.endpoint,
            extra={"seq": manifest.seq, "peer": peer.endpoint},
        )
        await self._replace_peers(manifest, peer)

    async def _close(self, peer: SyncPeer) -> None:
        try:
            await peer.aclose()
        except Exception:
            log.exception("error while closing sync peer %s", peer.endpoint)

    async def _replace_peers(self, manifest: ClusterManifest, active: SyncPeer) -> None:
        """Swap the peer set; ``active`` (this tick's peer) is closed by the tick if dropped."""
        if self._peer_factory is None:
            return
        endpoints: list[str] = []
        for node in manifest.nodes:
            url = node.http_endpoint.strip().rstrip("/")
            if self._node_id is not None and node.node_id == self._node_id:
                continue
            if self._self_endpoint is not None and url.lower() == self._self_endpoint:
                continue
            try:
                scheme = urllib.parse.urlsplit(url).scheme.lower()
            except ValueError:
                continue
            if scheme in ("http", "https") and url not in endpoints:
                endpoints.append(url)
        current = {peer.endpoint: peer for peer in self._peers}
        new_peers = [current.get(url) or self._peer_factory(url) for url in endpoints]
        for url, old in current.items():
            if url not in endpoints and old is not active:
                self._watermarks.pop(url, None)
                await self._close(old)
        self._peers = new_peers
        # carry on after this tick's peer when it stays, else from the start
        self._next = (new_peers.index(active) + 1) % len(new_peers) if active in new_peers else 0
        log.info(
            "anti-entropy: peer set from cluster manifest seq %d: %s",
            manifest.seq,
            ", ".join(endpoints) or "(none)",
        )

    async def _sync(self, peer: SyncPeer, report: TickReport) -> None:
        for _ in range(self._max_pages):
            before = self.watermark(peer.endpoint)
            page = await peer.digest(before.cursor.to_text(), self._page_limit)
            report.pages += 1
            now_ms = int(self._clock.now() * 1000)
            entries: list[DigestEntry] = []
            for raw in page.records:
                try:
                    entries.append(validate_digest_entry(raw, now_ms=now_ms))  # type: ignore[arg-type]
                except BadDigestEntry as exc:
                    report.bad_rows += 1
                    self.counters["bad_row"] += 1
                    log.debug("bad digest row from %s: %s", peer.endpoint, exc)
            entries = [e for e in entries if e.cursor > before.cursor]
            report.rows += len(entries)
            handled, failure = await self._handle_page(peer, entries, report)
            after = before.advance(entries, lambda e, keys=handled: e.key in keys)
            self._watermarks[peer.endpoint] = after
            if failure is not None:
                raise failure
            if not page.has_more or after == before:
                return

    async def _handle_page(
        self, peer: SyncPeer, entries: list[DigestEntry], report: TickReport
    ) -> tuple[set[tuple[str, str]], TransportError | None]:
        """Pull and store what ``entries`` need; returns the handled keys and a pull failure."""
        now = self._clock.now()
        local: dict[tuple[str, str], int] = {}
        for owner in {_canon(e.owner) for e in entries}:
            for row in await self._store.get(owner, now):
                local[(owner, row.value_hash)] = row.remaining_ttl(now)
        by_key = {(e.owner, e.value_hash): (_canon(e.owner), e.value_hash) for e in entries}
        planned = plan_pulls(entries, {k: local[c] for k, c in by_key.items() if c in local})
        planned_keys = {by_key[e.key] for e in planned}
        handled = {e.key for e in entries if by_key[e.key] not in planned_keys}
        report.planned += len(planned)
        if not planned:
            return handled, None
        advertised: dict[str, set[str]] = {}
        for e in planned:
            advertised.setdefault(_canon(e.owner), set()).add(e.value_hash)
        done: set[tuple[str, str]] = set()
        names = pull_names(planned)
        failure: TransportError | None = None
        for start in range(0, len(names), MAX_PULL_NAMES):
            try:
                pulled = await peer.pull(names[start : start + MAX_PULL_NAMES])
            except TransportError as exc:
                failure = exc
                break
            for item in pulled:
                key = await self._consider(item, advertised, planned_keys, report)
                if key is not None:
                    done.add(key)
        for e in planned:
            if by_key[e.key] in done:
                handled.add(e.key)
            elif failure is None:
                report.missing += 1
                self.counters["missing"] += 1
        return handled, failure

    async def _consider(
        self,
        item: PulledValue,
        advertised: dict[str, set[str]],
        planned_keys: set[tuple[str, str]],
        report: TickReport,
    ) -> tuple[str, str] | None:
        """Store one pulled value if it is wanted and verifies; returns its key when handled."""
        owner = _canon(item.owner)
        key = (owner, value_hash(item.value))
        hashes = advertised.get(owner)
        if hashes is None or key not in planned_keys:
            # a name we did not ask for, another value of that name (one we hold, or
            # one in a later page), or a value whose hash the digest never advertised
            # (tampered): not stored; the planned row stays unreturned
            return None
        now = self._clock.now()
        verdict = accept_pulled_value(
            owner,
            item.value,
            advertised_hashes=hashes,
            now=int(now),
            cluster_operator_spk=self._operator_spk,
        )
        if not isinstance(verdict, PullAccepted) or item.ttl <= 0:
            reason = "non-positive ttl" if isinstance(verdict, PullAccepted) else verdict.reason
            report.refused += 1
            self.counters["refused"] += 1
            log.info("anti-entropy: refused a value at %s from %s: %s", owner, report.peer, reason)
            return key
        try:
            await self._store.put(
                owner, item.value, min(item.ttl, _MAX_STORE_TTL), now, max_values=self._max_values
            )
        except StoreFull:
            report.refused += 1
            self.counters["refused"] += 1
            log.info(
                "anti-entropy: %s holds too many values; dropped one from %s", owner, report.peer
            )
            return key
        report.stored += 1
        self.counters["stored"] += 1
        return key
