"""The client side of the registration HTTP flow (layer: ports; wire.md §8).

``GET /v1/registration/challenge``, ``POST /v1/registration/confirm`` (bearer
token) and ``POST /v1/registration/tsig-confirm`` (TSIG key). The proofs
themselves are pure (:mod:`dmp.domain.registration`); this port only carries
them, bound to one node. Adapter: ``dmp.adapters.http_client.RegistrationClient``
(httpx). The replies are the node's JSON objects as parsed; the use cases in
``dmp.apps.client.registration`` check their shape.

Failures raise the transport errors of :mod:`dmp.ports.transport`:
``PeerUnreachable`` when the node cannot be reached and ``PeerRejected``
(with ``status`` and the node's error text) for any non-2xx answer or a body
that is not a JSON object.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["RegistrationApi"]


@runtime_checkable
class RegistrationApi(Protocol):
    """The three registration calls of one node."""

    async def challenge(self) -> dict[str, Any]:
        """``GET /v1/registration/challenge`` →
        ``{"challenge": 64 hex, "node", "expires_at", "server_x25519_pub": 64 hex, "version"}``.

        Raises:
            PeerUnreachable, PeerRejected
        """
        ...

    async def confirm(
        self, *, subject: str, ed25519_spk: bytes, challenge: bytes, signature: bytes
    ) -> dict[str, Any]:
        """``POST /v1/registration/confirm`` →
        ``{"token", "subject", "expires_at", "rate_per_sec", "rate_burst"}``.

        Raises:
            PeerUnreachable, PeerRejected
        """
        ...

    async def tsig_confirm(
        self,
        *,
        subject: str,
        ed25519_spk: bytes,
        challenge: bytes,
        signature: bytes,
        x25519_pub: bytes | None = None,
        x25519_pop: bytes | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/registration/tsig-confirm`` →
        ``{"tsig_key_name", "tsig_secret_hex", "tsig_algorithm", "allowed_suffixes",
        "subject", "zone", "expires_at"}``.

        Raises:
            PeerUnreachable, PeerRejected
        """
        ...
