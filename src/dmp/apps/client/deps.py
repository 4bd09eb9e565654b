"""What the client use cases run on, and the concurrent lookup helper (layer: apps).

:class:`ClientDeps` bundles the configuration, the user's keys and every
port a use case may need. The CLI (``dmp.apps.client.cli``) is the
composition root that picks the concrete adapters; tests build it from
fakes (``FakeDns``, ``SimClock``, the in-memory state stores).

Randomness: ``rng`` must be a cryptographically secure ``random.Random`` in
production (``random.SystemRandom()``); tests pass a seeded
``random.Random``. msg_ids, ephemeral keys, nonces, prekey private keys and
prekey ids all come from it.

Concurrency: :func:`lookup_many` runs many TXT lookups in one anyio task
group, each holding one token of ``deps.limiter`` (16 by default) while
it waits, so one ``recv`` asks its questions in parallel without flooding
the resolver.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import anyio
import attrs
import dns.name

from dmp.apps.client.config import ClientConfig, Contact
from dmp.domain.crypto import IdentityKeys
from dmp.ports.client_state import IntroQueue, PrekeyStore, ReplayCache, TokenFiles
from dmp.ports.clock import Clock
from dmp.ports.transport import ClaimSender, RecordReader, RecordWriter, TransportError

__all__ = [
    "BUILTIN_CLAIM_PROVIDER_SEEDS",
    "DEFAULT_CONCURRENCY",
    "ClientDeps",
    "Lookups",
    "lookup_many",
    "run_bounded",
    "zone_key",
]

DEFAULT_CONCURRENCY: Final = 16
"""Lookups one use case keeps in flight at most."""

BUILTIN_CLAIM_PROVIDER_SEEDS: Final = ("dmp.dnsmesh.io",)
"""Zones whose heartbeat and seen-graph name claim providers (behaviour.md §a)."""


def _no_persist(config: ClientConfig) -> None:
    """Default ``persist_config``: keep changes in memory only."""


@attrs.define(kw_only=True)
class ClientDeps:
    """Everything a client use case needs.

    Attributes:
        config: the loaded ``config.yaml`` (use cases may change contacts
            and TSIG fields, then call ``persist_config``).
        keys: the user's identity keys (derived from the passphrase).
        clock: time source; use cases read ``int(clock.now())``.
        reader: TXT lookups (resolver pool or the node directly).
        writer: publishes and deletes at the user's home node.
        claim_sender: un-TSIG'd claim UPDATEs to providers and recipient zones.
        replay: the replay cache.
        prekeys: one-time prekey private keys.
        intros: the intro queue and denylist.
        tokens: saved per-node bearer tokens (for ``register``).
        rng: randomness (``random.SystemRandom()`` in production).
        limiter: bounds concurrent lookups (:data:`DEFAULT_CONCURRENCY`).
        persist_config: saves ``config`` after a use case changed it.
        provider_seeds: zones whose heartbeats name claim providers; the
            user's own zone is always consulted too.
    """

    config: ClientConfig
    keys: IdentityKeys
    clock: Clock
    reader: RecordReader
    writer: RecordWriter
    claim_sender: ClaimSender
    replay: ReplayCache
    prekeys: PrekeyStore
    intros: IntroQueue
    tokens: TokenFiles | None = None
    rng: random.Random = attrs.field(factory=random.SystemRandom)
    limiter: anyio.CapacityLimiter = attrs.field(
        factory=lambda: anyio.CapacityLimiter(DEFAULT_CONCURRENCY)
    )
    persist_config: Callable[[ClientConfig], object] = _no_persist
    provider_seeds: tuple[str, ...] = BUILTIN_CLAIM_PROVIDER_SEEDS

    def now(self) -> int:
        """The clock's time as integer POSIX seconds."""
        return int(self.clock.now())

    def save_config(self) -> None:
        """Persist ``config`` (after a contact or TSIG change)."""
        self.persist_config(self.config)

    @property
    def own_zone(self) -> str:
        """The zone our records and mailbox live in (``effective_domain``)."""
        return self.config.effective_domain

    def contact_zone(self, contact: Contact) -> str:
        """A contact's zone; an empty domain means our own zone."""
        return (contact.domain or self.own_zone).rstrip(".")


def zone_key(zone: str) -> str:
    """A zone for comparisons: casefolded, without its trailing dot."""
    return zone.rstrip(".").casefold()


@attrs.define
class Lookups:
    """Results of a batch of lookups.

    Attributes:
        values: owner → TXT values, for every lookup that answered.
        errors: owner → the transport error, for every lookup that failed.
    """

    values: dict[dns.name.Name, list[str]] = attrs.field(factory=dict)
    errors: dict[dns.name.Name, TransportError] = attrs.field(factory=dict)

    def get(self, owner: dns.name.Name) -> list[str]:
        """The values at ``owner`` (``[]`` when it failed or was not asked)."""
        return self.values.get(owner, [])

    @property
    def count(self) -> int:
        """How many distinct owners were asked."""
        return len(self.values) + len(self.errors)

    def merge(self, other: Lookups) -> None:
        """Add another batch's results."""
        self.values.update(other.values)
        self.errors.update(other.errors)

    def raise_if_all_failed(self, owners: Iterable[dns.name.Name]) -> None:
        """Raise the first failure when every one of ``owners`` failed.

        Raises:
            TransportError: no owner in ``owners`` answered (and one was asked).
        """
        asked = list(owners)
        errors = [self.errors[o] for o in asked if o in self.errors]
        if errors and len(errors) == len(asked):
            raise errors[0]


async def lookup_many(deps: ClientDeps, owners: Iterable[dns.name.Name]) -> Lookups:
    """Query every owner concurrently (bounded by ``deps.limiter``).

    Duplicate owners are asked once. Transport failures are collected, not
    raised. Each lookup runs in its own task holding one limiter token; do
    not call this from a call run by :func:`run_bounded` (a task holding a
    token while waiting for more can deadlock once all are taken).

    Args:
        deps: the dependencies (``reader`` and ``limiter`` are used).
        owners: the owners to query.

    Returns:
        The answers and the failures.
    """
    result = Lookups()

    async def one(owner: dns.name.Name) -> None:
        async with deps.limiter:
            try:
                result.values[owner] = await deps.reader.query_txt(owner)
            except TransportError as exc:
                result.errors[owner] = exc

    unique = list(dict.fromkeys(owners))
    async with anyio.create_task_group() as tg:
        for owner in unique:
            tg.start_soon(one, owner)
    return result


async def run_bounded(
    deps: ClientDeps, calls: Sequence[Callable[[], Awaitable[None]]]
) -> list[TransportError | None]:
    """Run ``calls`` concurrently (bounded by ``deps.limiter``); collect transport failures.

    Args:
        deps: the dependencies (``limiter`` is used).
        calls: zero-argument coroutine functions, e.g. publishes.

    Returns:
        Per call, in order: ``None`` on success or the ``TransportError`` it raised.
    """
    outcomes: list[TransportError | None] = [None] * len(calls)

    async def one(index: int) -> None:
        async with deps.limiter:
            try:
                await calls[index]()
            except TransportError as exc:
                outcomes[index] = exc

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(one, index)
    return outcomes
