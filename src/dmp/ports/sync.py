"""The anti-entropy peer port (layer: ports): one cluster peer's ``/v1/sync/*`` routes.

Adapter: ``dmp.adapters.http_sync_client.HttpSyncPeer`` (httpx, bearer
``DMP_SYNC_PEER_TOKEN``). Tests use in-memory fakes of :class:`SyncPeer`.

The port only checks the *shape* of a peer's answers; the content (digest
rows, pulled values) is untrusted and is checked by ``dmp.domain.sync``.

Errors are the transport tree (``dmp.ports.transport``):
:class:`~dmp.ports.transport.PeerUnreachable` (connection refused, timeout:
:class:`~dmp.ports.transport.ExchangeTimeout`) and
:class:`~dmp.ports.transport.PeerRejected` (an HTTP error status, or an
answer that is not the expected JSON shape or is too large).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["DigestPage", "PulledValue", "SyncPeer"]


@attrs.frozen
class DigestPage:
    """One ``GET /v1/sync/digest`` answer.

    Attributes:
        records: the raw rows (JSON values, normally ``{"name", "hash", "ts", "ttl"}``
            objects), unvalidated.
        has_more: the peer says rows follow.
        next_cursor: the peer's ``next_cursor`` (any JSON value; never trusted
            for the watermark).
    """

    records: tuple[object, ...]
    has_more: bool
    next_cursor: object = None


@attrs.frozen
class PulledValue:
    """One value of a ``POST /v1/sync/pull`` answer (shape checked, content untrusted).

    Attributes:
        owner: the owner name as the peer sent it.
        value: the TXT value.
        ttl: the remaining TTL the peer advertised, in seconds.
    """

    owner: str
    value: str
    ttl: int


@runtime_checkable
class SyncPeer(Protocol):
    """One cluster peer's anti-entropy routes (wire.md §9)."""

    @property
    def endpoint(self) -> str:
        """The peer's base URL (identifies it in logs and for its watermark)."""
        ...

    async def digest(self, cursor: str, limit: int) -> DigestPage:
        """``GET /v1/sync/digest?cursor=<cursor>&limit=<limit>``.

        Raises:
            TransportError: unreachable, timed out, error status, malformed or
                oversized answer.
        """
        ...

    async def pull(self, names: Sequence[str]) -> list[PulledValue]:
        """``POST /v1/sync/pull`` with ``{"names": names}`` (at most 256 names).

        Rows of the answer that are not ``{"name": str, "value": str, "ttl": int}``
        are left out.

        Raises:
            TransportError: unreachable, timed out, error status, malformed or
                oversized answer.
        """
        ...

    async def cluster_manifest(self) -> dict[str, object] | None:
        """``GET /v1/sync/cluster-manifest``: the JSON object, or None on 204 (none).

        Raises:
            TransportError: unreachable, timed out, error status, malformed or
                oversized answer.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
