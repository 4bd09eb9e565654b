"""HTTP client adapters: the bearer-token record writer and registration calls (layer: adapters).

* :class:`BearerWriter` — :class:`~dmp.ports.transport.RecordWriter` over the
  node's records API (wire.md §10): ``POST /v1/records/{name}`` with
  ``{"value", "ttl"}`` → 201; ``DELETE /v1/records/{name}`` with an optional
  ``{"value"}`` → 204, or 404 when nothing matched (treated as success: the
  value is gone either way, as with an RFC 2136 delete).
* :class:`RegistrationClient` — the self-service registration calls
  (wire.md §8): ``GET /v1/registration/challenge``,
  ``POST /v1/registration/confirm``, ``POST /v1/registration/tsig-confirm``,
  and ``GET /health``. Binary fields are taken as bytes and sent as lowercase
  hex; replies are returned as parsed JSON objects.

Errors are mapped in one place (:func:`_mapped_errors`):
``httpx.TimeoutException`` → :class:`ExchangeTimeout`, any other
``httpx.TransportError`` → :class:`PeerUnreachable`, an unexpected status →
:class:`PeerRejected` with ``status`` set and the server's ``{"error": ...}``
text in the message.

Each object owns one ``httpx.AsyncClient`` (created on first use, so
connections are reused across calls, and httpx is imported only then: a
``recv`` that never writes does not pay for it), with at most
:data:`MAX_CONNECTIONS` connections open at once; close it with ``aclose()`` or use the
object as an async context manager. Tests inject an
``httpx.AsyncBaseTransport`` (``httpx.MockTransport``, or
``httpx.ASGITransport`` over the node's Quart app).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from dmp.ports.transport import ExchangeTimeout, PeerRejected, PeerUnreachable

if TYPE_CHECKING:
    import dns.name
    import httpx

__all__ = [
    "DEFAULT_HTTP_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "BearerWriter",
    "RegistrationClient",
    "normalize_base_url",
]

DEFAULT_HTTP_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 4
"""Connections one client opens to a node at once; more requests wait for one.

The reference node's HTTP server (stdlib, HTTP/1.0: a new connection per
request) listens with a backlog of 5 and resets connections beyond it: 16
writes at once (a ``send``, ``refresh-prekeys``) lost a few to ``ReadError``.
"""
_USER_AGENT = "dmp"
_MAX_ERROR_TEXT = 200


def normalize_base_url(url: str) -> str:
    """``url`` with a scheme (``https://`` when none) and no trailing slash.

    Raises:
        ValueError: empty URL.
    """
    text = url.strip()
    if not text:
        raise ValueError("empty endpoint URL")
    if "://" not in text:
        text = "https://" + text
    return text.rstrip("/")


@contextlib.contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    """Turn httpx failures into port errors."""
    import httpx

    try:
        yield
    except httpx.TimeoutException as exc:
        raise ExchangeTimeout(f"{what}: timed out") from exc
    except httpx.TransportError as exc:
        raise PeerUnreachable(f"{what}: {exc or type(exc).__name__}") from exc


def _error_text(response: httpx.Response) -> str:
    """The server's ``{"error": ...}`` text, else the start of the body."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()
    return text[:_MAX_ERROR_TEXT] if text else response.reason_phrase


def _rejected(what: str, response: httpx.Response) -> PeerRejected:
    return PeerRejected(
        f"{what}: HTTP {response.status_code}: {_error_text(response)}",
        status=response.status_code,
    )


def _json_object(what: str, response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerRejected(f"{what}: reply is not JSON", status=response.status_code) from exc
    if not isinstance(body, dict):
        raise PeerRejected(f"{what}: reply is not a JSON object", status=response.status_code)
    return body


class _Session:
    """One lazily created ``httpx.AsyncClient`` for a base URL."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None,
        timeout: float,
        headers: dict[str, str],
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self._transport = transport
        self._timeout = timeout
        self._headers = {"User-Agent": _USER_AGENT, **headers}
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                transport=self._transport,
                timeout=httpx.Timeout(self._timeout),
                headers=self._headers,
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
            )
        return self._client

    async def request(
        self, method: str, path: str, *, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        what = f"{method} {self.base_url}{path}"
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        with _mapped_errors(what):
            return await self.client().request(method, path, content=content, headers=headers)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _records_path(owner: dns.name.Name) -> str:
    if not owner.is_absolute():
        raise ValueError(f"owner must be absolute: {owner}")
    text = owner.to_text(omit_final_dot=True)
    return "/v1/records/" + urllib.parse.quote(text, safe=".")


class BearerWriter:
    """A :class:`~dmp.ports.transport.RecordWriter` over the node's records API (wire.md §10).

    Args:
        endpoint: the node's HTTP base URL (a bare host gets ``https://``).
        token: the bearer token (``Authorization: Bearer …``); None sends none
            (a node in open mode accepts that).
        transport: an httpx transport to use instead of the network (tests).
        timeout: seconds per request (connect, read, write, pool).
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT_S,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = _Session(endpoint, transport=transport, timeout=timeout, headers=headers)

    @property
    def endpoint(self) -> str:
        """The normalized base URL."""
        return self._session.base_url

    async def publish(self, owner: dns.name.Name, value: str, ttl: int) -> None:
        """``POST /v1/records/{owner}`` with ``{"value", "ttl"}``; success is any 2xx (201).

        Raises:
            PeerUnreachable: no connection (ExchangeTimeout on timeout).
            PeerRejected: any other status (``.status`` set): 400 bad input,
                401 bad token, 413 RRset full, 429 rate-limited, 502 store failure.
        """
        path = _records_path(owner)
        response = await self._session.request("POST", path, body={"value": value, "ttl": ttl})
        if not response.is_success:
            raise _rejected(f"publish {owner}", response)

    async def delete(self, owner: dns.name.Name, value: str | None = None) -> None:
        """``DELETE /v1/records/{owner}`` (with ``{"value"}`` for one value).

        204 and 404 (nothing matched) are both success.

        Raises:
            PeerUnreachable: no connection (ExchangeTimeout on timeout).
            PeerRejected: any other status (``.status`` set).
        """
        path = _records_path(owner)
        body = None if value is None else {"value": value}
        response = await self._session.request("DELETE", path, body=body)
        if not (response.is_success or response.status_code == 404):
            raise _rejected(f"delete {owner}", response)

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._session.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class RegistrationClient:
    """The node's registration and health calls (wire.md §8, behaviour.md §d).

    Args:
        base_url: the node's HTTP base URL (a bare host gets ``https://``).
        transport: an httpx transport to use instead of the network (tests).
        timeout: seconds per request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT_S,
    ) -> None:
        self._session = _Session(base_url, transport=transport, timeout=timeout, headers={})

    @property
    def base_url(self) -> str:
        """The normalized base URL."""
        return self._session.base_url

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = await self._session.request(method, path, body=body)
        what = f"{method} {path}"
        if not response.is_success:
            raise _rejected(what, response)
        return _json_object(what, response)

    async def challenge(self) -> dict[str, Any]:
        """``GET /v1/registration/challenge``.

        Returns:
            ``{"challenge": 64 hex, "node", "expires_at", "server_x25519_pub": 64 hex, "version"}``.

        Raises:
            PeerUnreachable: no connection (ExchangeTimeout on timeout).
            PeerRejected: 404 registration disabled, 429 rate-limited, ... (``.status`` set).
        """
        return await self._call("GET", "/v1/registration/challenge")

    async def confirm(
        self, *, subject: str, ed25519_spk: bytes, challenge: bytes, signature: bytes
    ) -> dict[str, Any]:
        """``POST /v1/registration/confirm``: mint a bearer token.

        Args:
            subject: the canonical ``user@host`` that was signed.
            ed25519_spk: the identity's Ed25519 public key (32 bytes).
            challenge: the challenge bytes (32).
            signature: Ed25519 signature over the registration payload (64 bytes).

        Returns:
            ``{"token", "subject", "expires_at", "rate_per_sec", "rate_burst"}``.

        Raises:
            PeerUnreachable: no connection (ExchangeTimeout on timeout).
            PeerRejected: 400/401/403/404/409/429/500 with the server's error text.
        """
        body = {
            "subject": subject,
            "ed25519_spk": ed25519_spk.hex(),
            "challenge": challenge.hex(),
            "signature": signature.hex(),
        }
        return await self._call("POST", "/v1/registration/confirm", body)

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
        """``POST /v1/registration/tsig-confirm``: mint a TSIG key.

        Args:
            subject, ed25519_spk, challenge, signature: as for :meth:`confirm`.
            x25519_pub: the mailbox X25519 public key (32 bytes), sent with ``x25519_pop``.
            x25519_pop: the X25519 proof of possession (32 bytes); without it
                the node grants no ``mb-`` scope.

        Returns:
            ``{"tsig_key_name", "tsig_secret_hex", "tsig_algorithm",
            "allowed_suffixes", "subject", "zone", "expires_at"}``.

        Raises:
            PeerUnreachable: no connection (ExchangeTimeout on timeout).
            PeerRejected: 400/401/403/404/409/429/500 with the server's error text.
        """
        body: dict[str, Any] = {
            "subject": subject,
            "ed25519_spk": ed25519_spk.hex(),
            "challenge": challenge.hex(),
            "signature": signature.hex(),
        }
        if x25519_pub is not None:
            body["x25519_pub"] = x25519_pub.hex()
        if x25519_pop is not None:
            body["x25519_pop"] = x25519_pop.hex()
        return await self._call("POST", "/v1/registration/tsig-confirm", body)

    async def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"status": "ok"}``, or the 503 ``{"status": "degraded", ...}`` body.

        Raises:
            PeerUnreachable: no connection (ExchangeTimeout on timeout).
            PeerRejected: any status other than 2xx and 503, or a non-JSON reply.
        """
        response = await self._session.request("GET", "/health")
        if not (response.is_success or response.status_code == 503):
            raise _rejected("GET /health", response)
        return _json_object("GET /health", response)

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._session.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
