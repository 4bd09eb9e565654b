"""The client's local state (layer: ports): replay cache, prekeys, intro queue, tokens.

Everything here lives beside ``config.yaml`` in the config home
(behaviour.md §a): ``replay_cache.json``, ``prekeys.db``, ``intros.db`` and,
in the tokens home, one ``<host>.json`` per node. Files are mode 0600 and
written atomically.

These ports are synchronous: every operation touches one small local file
and finishes in well under a millisecond, so the use cases call them
directly from the event loop (no thread hop).

Adapters: ``dmp.adapters.client_state`` (files and sqlite) and
``dmp.adapters.sim.client_state`` (in memory, for tests).

Error tree::

    ClientStateError        a local state file is unreadable or unwritable (exit 1)
"""

from __future__ import annotations

import builtins
from typing import Protocol, runtime_checkable

import attrs

__all__ = [
    "TOKEN_EXPIRY_GRACE_S",
    "ClientStateError",
    "DeniedSender",
    "IntroQueue",
    "PendingIntro",
    "PrekeyStore",
    "ReplayCache",
    "SavedToken",
    "StoredPrekey",
    "TokenFiles",
    "node_host",
]

TOKEN_EXPIRY_GRACE_S = 300
"""A saved token counts as expired this many seconds before its ``expires_at``."""


class ClientStateError(Exception):
    """A local client state file cannot be read or written."""

    exit_code = 1


# -- replay cache -------------------------------------------------------------


@runtime_checkable
class ReplayCache(Protocol):
    """Which messages were already handled (wire.md §5.2).

    Keyed ``(sender_spk, msg_id)``; an entry lives until the manifest's
    ``exp`` (after that the manifest itself is refused as expired). The file
    form is the reference's JSON list ``[[spk_hex, msgid_hex, exp], ...]``.
    """

    def seen(self, sender_spk: bytes, msg_id: bytes, now: int) -> bool:
        """Whether ``(sender_spk, msg_id)`` is recorded and ``now <= exp``."""
        ...

    def record(self, sender_spk: bytes, msg_id: bytes, exp: int, now: int) -> None:
        """Record a handled message until ``exp``; drops entries with ``exp < now``.

        Raises:
            ClientStateError: the cache cannot be persisted.
        """
        ...

    def entries(self, now: int) -> list[tuple[bytes, bytes, int]]:
        """The live ``(sender_spk, msg_id, exp)`` entries, oldest first."""
        ...


# -- prekeys ------------------------------------------------------------------


@attrs.frozen
class StoredPrekey:
    """A one-time prekey's private half (wire.md §3.7, §5.4).

    Attributes:
        prekey_id: u32 id, 1..2³²−1.
        private_key: 32-byte X25519 private key.
        public_key: 32-byte X25519 public key (published).
        exp: expiry of the published record, POSIX seconds.
    """

    prekey_id: int
    private_key: bytes = attrs.field(repr=False)
    public_key: bytes
    exp: int


@runtime_checkable
class PrekeyStore(Protocol):
    """The private keys of this user's published one-time prekeys."""

    def add(self, prekey: StoredPrekey) -> None:
        """Store a prekey (replacing one with the same id).

        Raises:
            ClientStateError: the store cannot be written.
        """
        ...

    def get(self, prekey_id: int) -> StoredPrekey | None:
        """The prekey with this id, or None when it is unknown or consumed."""
        ...

    def consume(self, prekey_id: int) -> bool:
        """Delete a prekey after a successful decrypt; True when it existed.

        Raises:
            ClientStateError: the store cannot be written.
        """
        ...

    def ids(self) -> set[int]:
        """Every stored prekey id."""
        ...

    def prune(self, before: int) -> int:
        """Delete prekeys with ``exp < before``; returns how many."""
        ...


# -- intro queue and denylist --------------------------------------------------


@attrs.frozen
class PendingIntro:
    """A decrypted first-contact message from a sender nobody pinned.

    Attributes:
        intro_id: local id (1, 2, ...), what ``intro accept <id>`` takes.
        sender_spk: the manifest's 32-byte Ed25519 key.
        msg_id: 16 bytes.
        sender_zone: the zone the manifest was found in.
        body: the message body.
        sender_label: the verified DMPv2 ``from`` address, or ``""``.
        ts: the message's send time (header ts).
        received_at: when it was queued, POSIX seconds.
    """

    intro_id: int
    sender_spk: bytes
    msg_id: bytes
    sender_zone: str
    body: bytes
    sender_label: str
    ts: int
    received_at: int


@attrs.frozen
class DeniedSender:
    """A blocked sender key.

    Attributes:
        sender_spk: 32-byte Ed25519 key.
        note: free text given at ``intro block --note``.
        blocked_at: POSIX seconds.
    """

    sender_spk: bytes
    note: str
    blocked_at: int


@runtime_checkable
class IntroQueue(Protocol):
    """Quarantined first-contact messages and the sender denylist."""

    def add(
        self,
        *,
        sender_spk: bytes,
        msg_id: bytes,
        sender_zone: str,
        body: bytes,
        sender_label: str,
        ts: int,
        received_at: int,
    ) -> PendingIntro:
        """Queue a message; a ``(sender_spk, msg_id)`` already queued is returned as is.

        Raises:
            ClientStateError: the queue cannot be written.
        """
        ...

    def list(self) -> builtins.list[PendingIntro]:
        """Every queued message, by id."""
        ...

    def get(self, intro_id: int) -> PendingIntro | None:
        """One queued message, or None."""
        ...

    def contains(self, sender_spk: bytes, msg_id: bytes) -> bool:
        """Whether ``(sender_spk, msg_id)`` is queued."""
        ...

    def remove(self, intro_id: int) -> bool:
        """Drop a queued message; True when it existed."""
        ...

    def block(self, sender_spk: bytes, *, note: str, now: int) -> None:
        """Add a sender to the denylist and drop everything it queued."""
        ...

    def is_blocked(self, sender_spk: bytes) -> bool:
        """Whether a sender key is on the denylist."""
        ...

    def denylist(self) -> builtins.list[DeniedSender]:
        """Every blocked sender, oldest first."""
        ...


# -- per-node bearer tokens ------------------------------------------------------


def node_host(node: str) -> str:
    """The host part of ``--node``: scheme, path and trailing dot stripped, lowercased.

    ``https://Node.Example.com:8053/x`` → ``node.example.com:8053``.

    Raises:
        ClientStateError: nothing is left (an empty host).
    """
    text = node.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].lower()
    host = text
    if not text.startswith("[") and text.count(":") == 1:
        host, _, port = text.partition(":")
        host = host.rstrip(".")
        text = f"{host}:{port}"
    elif not text.startswith("["):
        host = text = text.rstrip(".")
    if not host.strip(".:"):
        raise ClientStateError(f"node {node!r} has no host")
    return text


@attrs.frozen
class SavedToken:
    """A bearer token saved by ``dnsmesh register`` (``<tokens-home>/<host>.json``).

    Attributes:
        node: the node host (see :func:`node_host`).
        subject: the canonical ``user@host`` it was issued to.
        token: the ``dmp_v1_…`` bearer token.
        expires_at: POSIX seconds, or None for no expiry.
        registered_spk: hex Ed25519 key that registered.
        saved_at: POSIX seconds.
        version: file format version, 1.
    """

    node: str
    subject: str
    token: str = attrs.field(repr=False)
    expires_at: int | None
    registered_spk: str
    saved_at: int
    version: int = 1

    def is_usable(self, now: int) -> bool:
        """False once within :data:`TOKEN_EXPIRY_GRACE_S` of ``expires_at``."""
        return self.expires_at is None or now < self.expires_at - TOKEN_EXPIRY_GRACE_S


@runtime_checkable
class TokenFiles(Protocol):
    """Per-node bearer tokens."""

    def save(self, token: SavedToken) -> None:
        """Write (or replace) the token of ``token.node``.

        Raises:
            ClientStateError: the file cannot be written.
        """
        ...

    def load(self, node: str) -> SavedToken | None:
        """The saved token of ``node`` (any form :func:`node_host` accepts), or None.

        Raises:
            ClientStateError: the file exists but is not a token file.
        """
        ...

    def list(self) -> builtins.list[SavedToken]:
        """Every readable saved token, by host."""
        ...

    def forget(self, node: str) -> bool:
        """Delete the token of ``node``; True when one existed."""
        ...
