"""Anti-entropy HTTP routes in process (wire.md §9): auth, digest paging, pull."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import httpx
import pytest

from dmp.adapters.http_api import HttpConfig, create_app
from dmp.adapters.http_sync import parse_digest_query, parse_pull_names, sync_token_matches
from dmp.adapters.memory_store import MemoryRecordStore
from dmp.adapters.sim.clock import SimClock
from dmp.domain.cluster import CLUSTER_PREFIX, ClusterManifest, ClusterNode, sign_cluster
from dmp.domain.keys import ed25519_public_from_seed
from dmp.domain.sync import SyncCursor
from dmp.ports.store import StoreUnavailable

pytestmark = pytest.mark.anyio

PEER = "peer-token"
T0 = 1_900_000_000.0
MS0 = int(T0 * 1000)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def auth(token: str = PEER) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Node:
    def __init__(self, store: Any = None, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "http_host": "127.0.0.1",
            "http_rate": 0,
            "sync_peer_token": PEER,
        }
        settings.update(overrides)
        self.clock = SimClock(start=T0)
        self.store = store if store is not None else MemoryRecordStore()
        self.app = create_app(
            HttpConfig(**settings), store=self.store, clock=self.clock, random_bytes=os.urandom
        )

    def client(self, ip: str = "192.0.2.7") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://node.test")

    async def digest(self, query: str = "", token: str = PEER) -> httpx.Response:
        async with self.client() as c:
            return await c.get(f"/v1/sync/digest{query}", headers=auth(token))

    async def pull(self, body: Any, token: str = PEER) -> httpx.Response:
        async with self.client() as c:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return await c.post("/v1/sync/pull", content=content, headers=auth(token))


async def seeded() -> Node:
    """Four live rows over three timestamps, plus one that expires at T0 + 1."""
    node = Node()
    await node.store.put("b.example.com", "x", 100, T0)
    await node.store.put("a.example.com", "y", 100, T0 + 0.001)
    await node.store.put("a.example.com", "z", 100, T0 + 0.001)
    await node.store.put("c.example.com", "w", 100, T0 + 0.002)
    await node.store.put("d.example.com", "gone", 1, T0 + 0.003)
    node.clock.advance(5)  # the d row has expired; the others have 95 s left
    return node


def rows_of(body: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(r["ts"], r["name"], r["hash"]) for r in body["records"]]


EXPECTED = sorted(
    [
        (MS0, "b.example.com", sha("x")),
        (MS0 + 1, "a.example.com", sha("y")),
        (MS0 + 1, "a.example.com", sha("z")),
        (MS0 + 2, "c.example.com", sha("w")),
    ]
)


# -- auth --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("wrong"),
        auth(PEER + "x"),
        {"Authorization": f"Basic {PEER}"},
        {"Authorization": ""},
    ],
)
async def test_without_the_peer_token_both_routes_are_403(headers: dict[str, str]) -> None:
    """A missing, wrong or non-bearer credential gets 403 {"error": "forbidden"}."""
    node = await seeded()
    async with node.client() as c:
        got = [
            await c.get("/v1/sync/digest", headers=headers),
            await c.post("/v1/sync/pull", json={"names": ["a.example.com"]}, headers=headers),
        ]
    for response in got:
        assert response.status_code == 403
        assert response.json() == {"error": "forbidden"}
        assert response.headers["content-type"] == "application/json"


async def test_no_configured_token_refuses_everyone() -> None:
    """Without DMP_SYNC_PEER_TOKEN the sync routes answer 403, even to the operator."""
    node = Node(sync_peer_token=None, operator_token="op")
    async with node.client() as c:
        for headers in ({}, auth(""), auth("op"), auth("None")):
            assert (await c.get("/v1/sync/digest", headers=headers)).status_code == 403
            response = await c.post("/v1/sync/pull", json={"names": []}, headers=headers)
            assert response.status_code == 403


def test_token_comparison() -> None:
    """Only the configured token matches; nothing matches when none is configured."""
    assert sync_token_matches("s3cret", "s3cret")
    assert not sync_token_matches("s3cret", "s3cre")
    assert not sync_token_matches("s3cret", None)
    assert not sync_token_matches(None, "s3cret")
    assert not sync_token_matches("", "")
    assert sync_token_matches("\u00e9t\u00e9", "\u00e9t\u00e9")


async def test_sync_routes_share_the_per_ip_bucket_checked_before_auth() -> None:
    """Refused requests spend the records bucket too; then 429 comes before 403."""
    node = Node(http_rate=0.001, http_burst=2)
    async with node.client() as c:
        assert (await c.get("/v1/sync/digest")).status_code == 403
        assert (await c.get("/v1/sync/digest", headers=auth())).status_code == 200
        limited = await c.get("/v1/sync/digest", headers=auth())
        assert limited.status_code == 429
        assert limited.json() == {"error": "rate limit exceeded"}
        assert (await c.get("/v1/records/a.example.com")).status_code == 429
        pulled = await c.post("/v1/sync/pull", json={"names": []}, headers=auth())
        assert pulled.status_code == 429
    async with node.client("192.0.2.8") as other:
        assert (await other.get("/v1/sync/digest", headers=auth())).status_code == 200


# -- digest ------------------------------------------------------------------


async def test_digest_lists_live_rows_in_cursor_order() -> None:
    """Rows come in (ts, name, hash) order with remaining TTLs; expired rows are left out."""
    node = await seeded()
    response = await node.digest()
    assert response.status_code == 200
    body = response.json()
    assert rows_of(body) == EXPECTED
    assert [r["ttl"] for r in body["records"]] == [95, 95, 95, 95]
    assert body["has_more"] is False
    last = EXPECTED[-1]
    assert body["next_cursor"] == f"{last[0]}:{last[1]}:{last[2]}"
    assert set(body) == {"records", "has_more", "next_cursor"}
    assert set(body["records"][0]) == {"name", "hash", "ts", "ttl"}


async def test_digest_pages_follow_next_cursor() -> None:
    """limit pages the index; has_more is false on a page that ends exactly at the last row."""
    node = await seeded()
    first = (await node.digest("?limit=2")).json()
    assert rows_of(first) == EXPECTED[:2]
    assert first["has_more"] is True
    second = (await node.digest(f"?limit=2&cursor={first['next_cursor']}")).json()
    assert rows_of(second) == EXPECTED[2:]
    assert second["has_more"] is False
    exact = (await node.digest("?limit=4")).json()
    assert len(exact["records"]) == 4
    assert exact["has_more"] is False


async def test_empty_page_echoes_the_cursor() -> None:
    """With nothing after it, next_cursor is the request's cursor in full three-part form."""
    node = await seeded()
    body = (await node.digest(f"?cursor={MS0 + 2}:c.example.com")).json()
    assert rows_of(body) == [EXPECTED[-1]]
    body = (await node.digest(f"?cursor={MS0 + 50}:zz")).json()
    assert body == {"records": [], "has_more": False, "next_cursor": f"{MS0 + 50}:zz:"}
    empty = Node()
    assert (await empty.digest()).json() == {
        "records": [],
        "has_more": False,
        "next_cursor": "0::",
    }


async def test_cursor_without_hash_sorts_before_that_owners_values() -> None:
    """A <ts>:<name> cursor includes every value of that name at that ts."""
    node = await seeded()
    body = (await node.digest(f"?cursor={MS0 + 1}:a.example.com")).json()
    assert rows_of(body) == EXPECTED[1:]
    at_y = (MS0 + 1, "a.example.com", sha("y"))
    body = (await node.digest(f"?cursor={at_y[0]}:{at_y[1]}:{at_y[2]}")).json()
    assert rows_of(body) == [r for r in EXPECTED if r > at_y]


async def test_since_means_after_every_row_at_that_ms() -> None:
    """The legacy since=<ts> skips all rows at ts; cursor wins when both are given."""
    node = await seeded()
    body = (await node.digest(f"?since={MS0 + 1}")).json()
    assert rows_of(body) == EXPECTED[3:]
    empty = (await node.digest(f"?since={MS0 + 9}")).json()
    assert empty["next_cursor"] == f"{MS0 + 9}:\u00ff:g"
    both = (await node.digest(f"?since={MS0 + 9}&cursor=0::")).json()
    assert rows_of(both) == EXPECTED


async def test_empty_parameters_count_as_absent() -> None:
    """cursor=, since= and limit= with no value take the defaults."""
    node = await seeded()
    body = (await node.digest("?cursor=&since=&limit=")).json()
    assert rows_of(body) == EXPECTED


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("?cursor=abc", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?cursor=5", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?cursor=-5:a:", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?cursor=5:a:ABC", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?cursor=5:a b:", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?cursor=5:a:b:c", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?cursor=" + "9" * 5000 + ":a:", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?since=abc", "since must be an integer"),
        ("?since=-1", "since must be >= 0"),
        ("?limit=0", "limit must be > 0"),
        ("?limit=-3", "limit must be > 0"),
        ("?limit=abc", "limit must be an integer"),
        ("?limit=1.5", "limit must be an integer"),
        ("?limit=" + "9" * 5000, "limit must be an integer"),
        ("?limit=0&cursor=abc", "cursor must be '<ts>:<name>:<value_hash>'"),
        ("?limit=0&since=x", "since must be an integer"),
    ],
)
async def test_bad_digest_parameters_are_400(query: str, error: str) -> None:
    """Malformed cursor, since or limit is a JSON 400, checked cursor, since, then limit."""
    node = await seeded()
    response = await node.digest(query)
    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_limit_default_and_cap() -> None:
    """limit defaults to 1000 and is capped at 10000."""
    assert parse_digest_query({}) == (SyncCursor(), 1000)
    assert parse_digest_query({"limit": "20000"})[1] == 10_000
    assert parse_digest_query({"limit": " 7 "})[1] == 7


async def test_digest_fetches_one_row_past_the_page() -> None:
    """The store is asked for limit + 1 rows (the cap applied first)."""
    asked: list[int] = []

    class Spy(MemoryRecordStore):
        async def digest(self, after: Any, limit: int, now: float) -> Any:
            asked.append(limit)
            return await super().digest(after, limit, now)

    node = Node(store=Spy())
    await node.digest("?limit=99999")
    await node.digest()
    assert asked == [10_001, 1001]


async def test_digest_ttl_is_at_least_one() -> None:
    """A row with under a second left reports ttl 1."""
    node = Node()
    await node.store.put("a.example.com", "v", 10, T0)
    node.clock.advance(9.5)
    assert [r["ttl"] for r in (await node.digest()).json()["records"]] == [1]


async def test_store_failure_is_503() -> None:
    """A failing store gives 503 on both routes, not 500."""

    class Broken(MemoryRecordStore):
        async def digest(self, *args: Any) -> Any:
            raise StoreUnavailable("down")

        async def get(self, *args: Any) -> Any:
            raise StoreUnavailable("down")

    node = Node(store=Broken())
    assert (await node.digest()).status_code == 503
    response = await node.pull({"names": ["a.example.com"]})
    assert response.status_code == 503
    assert response.json() == {"error": "store unavailable"}


# -- pull --------------------------------------------------------------------


async def test_pull_returns_every_live_value_in_digest_order() -> None:
    """Values of the asked names, ordered like the digest, deduplicated; unknown names omitted."""
    node = await seeded()
    response = await node.pull(
        {
            "names": [
                "c.example.com",
                "a.example.com.",
                "nope.example.com",
                "d.example.com",
                "c.example.com..",
                "a.example.com",
            ]
        }
    )
    assert response.status_code == 200
    a_values = sorted(["y", "z"], key=sha)  # same ms: by value hash
    assert response.json() == {
        "records": [
            {"name": "a.example.com", "value": a_values[0], "ttl": 95},
            {"name": "a.example.com", "value": a_values[1], "ttl": 95},
            {"name": "c.example.com", "value": "w", "ttl": 95},
        ]
    }


async def test_pull_looks_names_up_as_given() -> None:
    """Names are not lowercased (stored owners are lowercase); odd names are just not found."""
    node = await seeded()
    body = {"names": ["A.EXAMPLE.COM", "", ".", "a b", "\u00e9.example.com", "\ud800"]}
    response = await node.pull(body)
    assert response.status_code == 200
    assert response.json() == {"records": []}


async def test_pull_accepts_256_names_and_an_empty_list() -> None:
    """256 names is the most one pull may ask for."""
    node = await seeded()
    names = [f"n{i}.example.com" for i in range(255)] + ["b.example.com"]
    response = await node.pull({"names": names})
    assert response.json() == {"records": [{"name": "b.example.com", "value": "x", "ttl": 95}]}
    assert (await node.pull({"names": []})).json() == {"records": []}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"names": ["a.example.com"] * 257}, "at most 256 names per request"),
        ({"names": [1] * 257}, "at most 256 names per request"),
        ({"names": ["a.example.com", None]}, "names must be strings"),
        ({"names": [1]}, "names must be strings"),
        ({"names": "a.example.com"}, "names must be a list"),
        ({}, "names must be a list"),
        ([], "names must be a list"),
        ("names", "names must be a list"),
        (None, "invalid body"),
        (b"{not json", "invalid body"),
        (b"", "names must be a list"),
    ],
)
async def test_bad_pull_bodies_are_400(body: Any, error: str) -> None:
    """Malformed pull requests get a JSON 400 with the reference's message."""
    node = await seeded()
    response = await node.pull(body)
    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_pull_names_strip_and_merge() -> None:
    """Trailing dots go, duplicates merge, first-seen order stays."""
    assert parse_pull_names(True, {"names": ["b.", "a", "b", "a.."]}) == ["b", "a"]
    with pytest.raises(ValueError, match="names must be a list"):
        parse_pull_names(False, None)  # no body counts as {}


# -- cluster manifest ----------------------------------------------------------

BASE = "mesh.example"
OP_SEED = hashlib.sha256(b"test/cluster/operator").digest()
OTHER_SEED = hashlib.sha256(b"test/cluster/other").digest()
NOW = int(T0)


def manifest(seq: int, *, name: str = BASE, exp: int = NOW + 3600, seed: bytes = OP_SEED) -> str:
    return sign_cluster(
        ClusterManifest(
            cluster_name=name,
            seq=seq,
            exp=exp,
            operator_spk=ed25519_public_from_seed(seed),
            nodes=(ClusterNode(node_id="n1", http_endpoint="https://n1.mesh.example"),),
        ),
        seed,
    )


def unsigned(seq: int) -> str:
    """A manifest whose body decodes but whose signature is junk."""
    wire = manifest(seq)
    blob = base64.b64decode(wire[len(CLUSTER_PREFIX) :])
    return CLUSTER_PREFIX + base64.b64encode(blob[:-64] + b"\x01" * 64).decode()


async def manifest_node(values: list[str], **overrides: Any) -> Node:
    node = Node(cluster_base_domain=BASE, **overrides)
    for value in values:
        await node.store.put(f"cluster.{BASE}", value, 3000, T0)
    return node


async def get_manifest(node: Node, token: str = PEER) -> httpx.Response:
    async with node.client() as c:
        return await c.get("/v1/sync/cluster-manifest", headers=auth(token))


MIXED = [
    manifest(1),
    manifest(5),
    manifest(9, name="other.example"),
    manifest(7, seed=OTHER_SEED),
    manifest(8, exp=NOW - 10),
    unsigned(20),
    "not a manifest",
    CLUSTER_PREFIX + "AAAA",
]


async def test_pinned_manifest_must_verify_for_the_base_domain() -> None:
    """With DMP_SYNC_OPERATOR_SPK only signed, unexpired manifests for cluster.<base> count."""
    node = await manifest_node(MIXED, sync_operator_spk=ed25519_public_from_seed(OP_SEED))
    response = await get_manifest(node)
    assert response.status_code == 200
    assert response.json() == {
        "wire": manifest(5),
        "seq": 5,
        "exp": NOW + 3600,
        "cluster_name": BASE,
    }


async def test_unpinned_manifest_is_the_highest_seq_that_decodes() -> None:
    """Without a pinned key any decodable manifest counts, as in the reference."""
    node = await manifest_node(MIXED)
    body = (await get_manifest(node)).json()
    assert (body["seq"], body["wire"]) == (20, unsigned(20))
    node = await manifest_node([manifest(1), manifest(9, name="other.example"), manifest(5)])
    assert (await get_manifest(node)).json()["cluster_name"] == "other.example"


@pytest.mark.parametrize(
    ("values", "overrides"),
    [
        ([], {}),
        (["junk", CLUSTER_PREFIX + "AAAA"], {}),
        ([manifest(3, seed=OTHER_SEED)], {"sync_operator_spk": ed25519_public_from_seed(OP_SEED)}),
    ],
)
async def test_no_usable_manifest_is_204(values: list[str], overrides: dict[str, Any]) -> None:
    """Nothing stored, nothing decodable, or nothing verifying under the pin: 204, empty."""
    response = await get_manifest(await manifest_node(values, **overrides))
    assert response.status_code == 204
    assert response.content == b""


async def test_no_base_domain_is_204() -> None:
    """Without DMP_CLUSTER_BASE_DOMAIN there is nowhere to look."""
    node = Node()
    await node.store.put(f"cluster.{BASE}", manifest(1), 3000, T0)
    assert (await get_manifest(node)).status_code == 204


async def test_cluster_manifest_needs_the_peer_token() -> None:
    """The manifest route is behind the same peer token."""
    node = await manifest_node([manifest(1)])
    response = await get_manifest(node, "wrong")
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden"}
