"""Client-side transport ports (layer: ports): reading TXT records, writing them, HTTP calls.

Adapters: ``dmp.adapters.dns_client`` (resolver pool, direct node reads,
RFC 2136 UPDATE + TSIG writer, un-TSIG'd claim sender) and
``dmp.adapters.http_client`` (bearer-token writer, registration calls).
Tests use fakes of these protocols (``dmp.adapters.sim``), never mocks of
dnspython or httpx.

Owners are absolute ``dns.name.Name`` values. TXT values are whole strings
(character-strings already joined; writers split values over 255 bytes).

Error tree (all :class:`TransportError`)::

    TransportError
    ├── PeerUnreachable     no answer (timeout, connection refused, every resolver down)
    ├── ExchangeTimeout     one exchange timed out (also a PeerUnreachable)
    └── PeerRejected        the peer answered with a failure (rcode or HTTP status)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import dns.name

__all__ = [
    "ClaimSender",
    "ExchangeTimeout",
    "PeerRejected",
    "PeerUnreachable",
    "RecordReader",
    "RecordWriter",
    "TransportError",
]


class TransportError(Exception):
    """A network exchange failed."""

    exit_code = 2


class PeerUnreachable(TransportError):
    """The peer could not be reached."""


class ExchangeTimeout(PeerUnreachable):
    """The exchange timed out."""


class PeerRejected(TransportError):
    """The peer refused the request.

    Attributes:
        rcode: the DNS rcode (int) when the peer is a DNS server, else None.
        status: the HTTP status when the peer is an HTTP server, else None.
    """

    def __init__(self, message: str, *, rcode: int | None = None, status: int | None = None):
        super().__init__(message)
        self.rcode = rcode
        self.status = status


@runtime_checkable
class RecordReader(Protocol):
    """Reads the TXT RRset at an owner."""

    async def query_txt(self, owner: dns.name.Name) -> list[str]:
        """Every TXT value at ``owner`` (strings of one RR joined, UTF-8 decoded).

        Returns ``[]`` for NXDOMAIN / NODATA.

        Raises:
            PeerUnreachable: no resolver answered.
            PeerRejected: SERVFAIL / REFUSED from every resolver.
        """
        ...


@runtime_checkable
class RecordWriter(Protocol):
    """Publishes and deletes TXT values at the user's home node."""

    async def publish(self, owner: dns.name.Name, value: str, ttl: int) -> None:
        """Add ``value`` at ``owner`` (append semantics); durable at the node on return.

        Raises:
            PeerUnreachable, PeerRejected
        """
        ...

    async def delete(self, owner: dns.name.Name, value: str | None = None) -> None:
        """Delete one value at ``owner`` (every value when ``value`` is None).

        Raises:
            PeerUnreachable, PeerRejected
        """
        ...


@runtime_checkable
class ClaimSender(Protocol):
    """Sends an un-TSIG'd claim UPDATE to a provider or recipient zone (wire.md §7.4)."""

    async def send_claim(
        self, zone: dns.name.Name, owner: dns.name.Name, value: str, ttl: int
    ) -> None:
        """Raises: PeerUnreachable, PeerRejected."""
        ...
