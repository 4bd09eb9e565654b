"""HttpSyncPeer: the peer's /v1/sync/* answers to port values and port errors (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from dmp.adapters.http_sync_client import HttpSyncPeer
from dmp.ports.sync import PulledValue
from dmp.ports.transport import ExchangeTimeout, PeerRejected, PeerUnreachable

pytestmark = pytest.mark.anyio


def peer(handler: Callable[[httpx.Request], httpx.Response], **kw: int) -> HttpSyncPeer:
    return HttpSyncPeer(
        "http://peer.test:8053/", "tok", transport=httpx.MockTransport(handler), **kw
    )


async def test_digest_sends_cursor_limit_and_bearer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"records": [{"x": 1}], "has_more": True, "next_cursor": "1::"}
        )

    p = peer(handler)
    page = await p.digest("5:a.test:" + "0" * 64, 1000)
    await p.aclose()
    assert p.endpoint == "http://peer.test:8053"
    assert (page.records, page.has_more, page.next_cursor) == (({"x": 1},), True, "1::")
    [req] = seen
    assert req.url.path == "/v1/sync/digest"
    assert req.url.params["cursor"] == "5:a.test:" + "0" * 64
    assert req.url.params["limit"] == "1000"
    assert req.headers["authorization"] == "Bearer tok"


async def test_pull_posts_names_and_keeps_well_formed_rows() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"names": ["a.test", "b.test"]}
        rows = [
            {"name": "a.test", "value": "v", "ttl": 5},
            {"name": "a.test", "value": 3, "ttl": 5},
            {"name": "a.test", "value": "v", "ttl": True},
            "junk",
        ]
        return httpx.Response(200, json={"records": rows})

    p = peer(handler)
    assert await p.pull(["a.test", "b.test"]) == [PulledValue("a.test", "v", 5)]


@pytest.mark.parametrize(
    ("response", "text"),
    [
        (httpx.Response(403, json={"error": "forbidden"}), "HTTP 403: forbidden"),
        (httpx.Response(200, content=b"<html>"), "not JSON"),
        (httpx.Response(200, json=[1, 2]), "not a JSON object"),
        (httpx.Response(200, json={"records": {}}), "records"),
        (httpx.Response(200, json={"records": [], "has_more": "yes"}), "has_more"),
        (httpx.Response(200, content=b"x" * 2000), "larger than 1000 bytes"),
    ],
)
async def test_bad_answers_are_peer_rejected(response: httpx.Response, text: str) -> None:
    p = peer(lambda _: response, max_digest_bytes=1000)
    with pytest.raises(PeerRejected) as info:
        await p.digest("0::", 10)
    assert text in str(info.value)


async def test_network_failures_are_transport_errors() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(PeerUnreachable, match="connection refused"):
        await peer(refused).pull(["a"])
    with pytest.raises(ExchangeTimeout):
        await peer(slow).digest("0::", 1)


async def test_cluster_manifest_is_none_on_204_and_the_object_on_200() -> None:
    body = {"wire": "v=dmp1;t=cluster;x", "seq": 3, "exp": 9, "cluster_name": "mesh.test"}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/sync/cluster-manifest"
        return (
            httpx.Response(204)
            if "none" in str(request.url.host)
            else httpx.Response(200, json=body)
        )

    none = HttpSyncPeer("http://none.test", "t", transport=httpx.MockTransport(handler))
    some = HttpSyncPeer("http://some.test", "t", transport=httpx.MockTransport(handler))
    assert await none.cluster_manifest() is None
    assert await some.cluster_manifest() == body
