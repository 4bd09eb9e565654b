"""HTTP client of a cluster peer's anti-entropy routes (layer: adapters).

:class:`HttpSyncPeer` implements :class:`dmp.ports.sync.SyncPeer` over httpx
(wire.md §9): ``GET /v1/sync/digest`` and ``POST /v1/sync/pull`` with
``Authorization: Bearer <DMP_SYNC_PEER_TOKEN>``, a 5 s timeout per request
(as the reference worker) and a cap on the size of each answer, read as a
stream so that an oversized body is cut off rather than buffered.

Every failure is a :class:`~dmp.ports.transport.TransportError`: httpx
timeouts → :class:`ExchangeTimeout`, other transport failures →
:class:`PeerUnreachable`, an error status, a body over the cap, or an answer
that is not the expected JSON shape → :class:`PeerRejected`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from dmp.ports.sync import DigestPage, PulledValue
from dmp.ports.transport import ExchangeTimeout, PeerRejected, PeerUnreachable

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_DIGEST_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_PULL_BYTES",
    "SYNC_TIMEOUT_S",
    "HttpSyncPeer",
]

SYNC_TIMEOUT_S: Final = 5.0
MAX_DIGEST_BYTES: Final = 4 * 1024 * 1024
"""A digest page of 1000 rows is at most ~400 KB; anything over this is refused."""
MAX_PULL_BYTES: Final = 32 * 1024 * 1024
"""256 names x 64 values x 2 KB (the default caps) fits; anything over this is refused."""
MAX_MANIFEST_BYTES: Final = 64 * 1024
"""A manifest wire is at most 1200 bytes."""
_MAX_ERROR_TEXT: Final = 200


def _error_text(body: bytes) -> str:
    """The peer's ``{"error": ...}`` text, else the start of the body."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])[:_MAX_ERROR_TEXT]
    return body[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip() or "(empty body)"


class HttpSyncPeer:
    """One peer's ``/v1/sync/*`` routes.

    Args:
        endpoint: the peer's HTTP base URL (``http://10.0.0.2:8053``).
        token: ``DMP_SYNC_PEER_TOKEN``.
        transport: an httpx transport to use instead of the network (tests).
        timeout: seconds per request (connect, read, write, pool).
    """

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = SYNC_TIMEOUT_S,
        max_digest_bytes: int = MAX_DIGEST_BYTES,
        max_pull_bytes: int = MAX_PULL_BYTES,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._token = token
        self._transport = transport
        self._timeout = timeout
        self._max_digest = max_digest_bytes
        self._max_pull = max_pull_bytes
        self._client: httpx.AsyncClient | None = None

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                base_url=self._endpoint,
                transport=self._transport,
                timeout=httpx.Timeout(self._timeout),
                headers={"Authorization": f"Bearer {self._token}", "User-Agent": "dmp-node"},
                limits=httpx.Limits(max_connections=2),
                follow_redirects=False,
            )
        return self._client

    async def _request(
        self, method: str, path: str, limit: int, *, allow_204: bool = False, **kwargs: Any
    ) -> dict[str, Any] | None:
        import httpx

        what = f"{method} {self._endpoint}{path}"
        try:
            async with self._http().stream(method, path, **kwargs) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise PeerRejected(
                            f"{what}: answer larger than {limit} bytes", status=response.status_code
                        )
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise ExchangeTimeout(f"{what}: timed out") from exc
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"{what}: {exc or type(exc).__name__}") from exc
        if status == 204 and allow_204:
            return None
        if status != 200:
            raise PeerRejected(f"{what}: HTTP {status}: {_error_text(bytes(body))}", status=status)
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PeerRejected(f"{what}: answer is not JSON", status=status) from exc
        if not isinstance(parsed, dict):
            raise PeerRejected(f"{what}: answer is not a JSON object", status=status)
        return parsed

    async def _object(self, method: str, path: str, limit: int, **kwargs: Any) -> dict[str, Any]:
        body = await self._request(method, path, limit, **kwargs)
        assert body is not None
        return body

    async def cluster_manifest(self) -> dict[str, object] | None:
        return await self._request(
            "GET", "/v1/sync/cluster-manifest", MAX_MANIFEST_BYTES, allow_204=True
        )

    async def digest(self, cursor: str, limit: int) -> DigestPage:
        body = await self._object(
            "GET",
            "/v1/sync/digest",
            self._max_digest,
            params={"cursor": cursor, "limit": str(limit)},
        )
        records = body.get("records")
        has_more = body.get("has_more", False)
        if not isinstance(records, list) or not isinstance(has_more, bool):
            raise PeerRejected(
                f"GET {self._endpoint}/v1/sync/digest: answer lacks records[] / has_more",
                status=200,
            )
        return DigestPage(tuple(records), has_more, body.get("next_cursor"))

    async def pull(self, names: Sequence[str]) -> list[PulledValue]:
        body = await self._object(
            "POST", "/v1/sync/pull", self._max_pull, json={"names": list(names)}
        )
        records = body.get("records")
        if not isinstance(records, list):
            raise PeerRejected(
                f"POST {self._endpoint}/v1/sync/pull: answer lacks records[]", status=200
            )
        out = []
        for row in records:
            if not isinstance(row, dict):
                continue
            name, value, ttl = row.get("name"), row.get("value"), row.get("ttl")
            if (
                isinstance(name, str)
                and isinstance(value, str)
                and isinstance(ttl, int)
                and not isinstance(ttl, bool)
            ):
                out.append(PulledValue(name, value, ttl))
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
