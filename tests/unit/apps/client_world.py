"""A simulated DNS world with client users, for the client use-case tests.

Every user shares one :class:`FakeDns` (what alice publishes, bob reads) and
one :class:`SimClock`; each has its own configuration, keys, in-memory state
stores and seeded ``random.Random``. Keys come straight from a label (no
Argon2), so tests stay fast.
"""

from __future__ import annotations

import hashlib
import random

import dns.name

from dmp.adapters.client_state import (
    MemoryIntroQueue,
    MemoryPrekeyStore,
    MemoryReplayCache,
    MemoryTokenFiles,
)
from dmp.adapters.sim.clock import SimClock
from dmp.adapters.sim.transport import FakeDns
from dmp.apps.client.config import ClientConfig, Contact
from dmp.apps.client.deps import ClientDeps
from dmp.domain.crypto import IdentityKeys

START = 1_900_000_000


def keys_for(label: str) -> IdentityKeys:
    """Deterministic identity keys for a test user."""
    return IdentityKeys.from_x25519_private(hashlib.sha256(f"test/{label}".encode()).digest())


def _seed(tag: str) -> int:
    return int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big")


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text.rstrip(".") + ".")


class World:
    """One FakeDns + SimClock shared by several users."""

    def __init__(self, start: float = START, *, query_latency_s: float = 0.0) -> None:
        self.clock = SimClock(start)
        self.dns = FakeDns(self.clock, query_latency_s=query_latency_s)
        self.saved: dict[str, int] = {}

    def user(
        self,
        username: str,
        zone: str,
        *,
        identity_domain: str = "",
        allow_tofu: bool = False,
        keys: IdentityKeys | None = None,
        seed: int | None = None,
        label: str | None = None,
    ) -> ClientDeps:
        config = ClientConfig(
            username=username,
            domain=zone,
            identity_domain=identity_domain,
            allow_tofu=allow_tofu,
        )
        tag = label or f"{username}@{zone}"

        def persist(cfg: ClientConfig) -> None:
            self.saved[tag] = self.saved.get(tag, 0) + 1

        return ClientDeps(
            config=config,
            keys=keys or keys_for(tag),
            clock=self.clock,
            reader=self.dns,
            writer=self.dns,
            claim_sender=self.dns,
            replay=MemoryReplayCache(),
            prekeys=MemoryPrekeyStore(),
            intros=MemoryIntroQueue(),
            tokens=MemoryTokenFiles(),
            rng=random.Random(seed if seed is not None else _seed(tag)),
            persist_config=persist,
            provider_seeds=(),
        )


def pin(deps: ClientDeps, contact_name: str, other: ClientDeps, *, explicit: bool = True) -> None:
    """Pin ``other`` in ``deps``'s contacts (as ``identity fetch --add`` would)."""
    deps.config.contacts[contact_name] = Contact(
        pub=other.keys.x25519_public.hex(),
        spk=other.keys.ed25519_public.hex(),
        domain=other.own_zone,
        username=other.config.username,
        domain_explicit=explicit,
    )
