"""The node's HTTP API in process (httpx ASGITransport): auth modes, records, limits, registration."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import anyio
import attrs
import httpx
import pytest

from dmp.adapters.http_api import HttpConfig, HttpConfigError, NodeMetrics, create_app
from dmp.adapters.memory_store import MemoryRecordStore, MemoryTsigKeyStore
from dmp.adapters.token_store import MemoryTokenStore
from dmp.apps.node import admin_tokens
from dmp.domain import registration as reg
from dmp.domain.crypto import x25519_public
from dmp.domain.keys import ed25519_public_from_seed
from dmp.ports.store import StoreUnavailable
from dmp.ports.tokens import (
    AuditEvent,
    ScopeClass,
    TokenRecord,
    classify_owner,
    owner_allowed,
)

pytestmark = pytest.mark.anyio

ZONE = "mesh.example"
NODE = "dmp.mesh.example"
OPERATOR = "operator-secret"
T0 = 1_900_000_000.0


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


H16 = _sha("alice")[:16]
H12 = _sha("alice")[:12]


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


@attrs.define
class Node:
    app: Any
    store: MemoryRecordStore
    tokens: MemoryTokenStore
    tsig_keys: MemoryTsigKeyStore
    clock: Clock
    metrics: NodeMetrics

    def client(self, ip: str = "192.0.2.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://node.test")

    async def issue(self, subject: str = "alice@mesh.example", **kw: Any) -> str:
        issued = await admin_tokens.issue_token(
            self.tokens, self.tokens, subject, random_bytes=os.urandom, now=int(self.clock.t), **kw
        )
        return issued.token


def make_node(store: Any = None, **overrides: Any) -> Node:
    cfg: dict[str, Any] = {"http_host": "127.0.0.1", "http_rate": 0}
    cfg.update(overrides)
    config = HttpConfig(**cfg)
    clock = Clock()
    tokens = MemoryTokenStore()
    tsig_keys = MemoryTsigKeyStore()
    metrics = NodeMetrics()
    record_store = store if store is not None else MemoryRecordStore()
    app = create_app(
        config,
        store=record_store,
        clock=clock,
        random_bytes=os.urandom,
        tokens=tokens,
        audit=tokens,
        tsig_keys=tsig_keys,
        metrics=metrics,
    )
    return Node(app, record_store, tokens, tsig_keys, clock, metrics)


def multi_tenant(**overrides: Any) -> Node:
    cfg: dict[str, Any] = {
        "auth_mode": "multi-tenant",
        "operator_token": OPERATOR,
        "node_hostname": NODE,
        "served_zone": ZONE,
        "registration_enabled": True,
        "dns_update_enabled": True,
        "registration_endpoint_rate": 0,  # tests make more than 5 calls; one test sets it
    }
    cfg.update(overrides)
    return make_node(**cfg)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def open_node() -> Node:
    return make_node()


# -- service endpoints -------------------------------------------------------


async def test_health_ok_and_degraded() -> None:
    """/health says ok, and 503 degraded when the store fails."""
    node = make_node()
    async with node.client() as c:
        r = await c.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})

    class Broken(MemoryRecordStore):
        async def get(self, owner: str, now: float) -> list[Any]:
            raise StoreUnavailable("disk on fire")

    node = make_node(store=Broken())
    async with node.client() as c:
        r = await c.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "degraded", "store": "disk on fire"}


async def test_stats_counts_records(open_node: Node) -> None:
    """/stats reports the number of stored values."""
    async with open_node.client() as c:
        await c.post("/v1/records/a.mesh.example", json={"value": "x"})
        await c.post("/v1/records/a.mesh.example", json={"value": "y"})
        r = await c.get("/stats")
    assert r.json() == {"records": 2}


async def test_metrics_need_operator_and_are_per_app() -> None:
    """/metrics needs the operator token when one is set, and each app has its own registry."""
    node = make_node(operator_token=OPERATOR)
    other = make_node(operator_token=OPERATOR)
    async with node.client() as c:
        assert (await c.get("/metrics")).status_code == 401
        await c.get("/stats")
        r = await c.get("/metrics", headers=bearer(OPERATOR))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'dmp_http_requests_total{method="GET",status="401"} 1.0' in text
    assert 'dmp_http_requests_total{method="GET",status="200"} 1.0' in text
    assert "dmp_records 0.0" in text
    assert "dmp_dns_queries_total" not in text or "outcome" in text
    node.metrics.dns_queries.labels("noerror").inc(3)
    async with node.client() as c:
        text = (await c.get("/metrics", headers=bearer(OPERATOR))).text
    assert 'dmp_dns_queries_total{outcome="noerror"} 3.0' in text
    async with other.client() as c:
        text = (await c.get("/metrics", headers=bearer(OPERATOR))).text
    assert "noerror" not in text


async def test_request_counter_labels_are_bounded() -> None:
    """Every response is counted once; unusual methods share the label OTHER."""
    node = make_node()
    async with node.client() as c:
        for method in ("FOO", "BAR", "BAZ"):
            assert (await c.request(method, "/stats")).status_code == 405
        await c.get("/stats")
        await c.get("/stats")
        text = (await c.get("/metrics")).text
    assert 'dmp_http_requests_total{method="OTHER",status="405"} 3.0' in text
    assert 'dmp_http_requests_total{method="GET",status="200"} 2.0' in text
    assert "FOO" not in text


async def test_unknown_route_and_method_are_json(open_node: Node) -> None:
    """404 and 405 come back as JSON errors."""
    async with open_node.client() as c:
        r404 = await c.get("/v1/heartbeat")
        r405 = await c.put("/v1/records/a.mesh.example", json={})
    assert (r404.status_code, r404.json()) == (404, {"error": "not found"})
    assert (r405.status_code, r405.json()) == (405, {"error": "method not allowed"})


# -- records, open mode ---------------------------------------------------------


async def test_publish_read_delete_cycle(open_node: Node) -> None:
    """POST appends (201), GET lists, DELETE of one value then of the RRset (204, then 404)."""
    async with open_node.client() as c:
        assert (await c.get("/v1/records/x.mesh.example")).json() == {
            "name": "x.mesh.example",
            "values": [],
        }
        r = await c.post("/v1/records/X.Mesh.Example.", json={"value": "v=dmp1;a", "ttl": 60})
        assert (r.status_code, r.json()) == (201, {"ok": True})
        await c.post("/v1/records/x.mesh.example", json={"value": "v=dmp1;b"})
        await c.post("/v1/records/x.mesh.example", json={"value": "v=dmp1;a"})  # refresh
        r = await c.get("/v1/records/x.mesh.example")
        assert r.status_code == 200
        assert sorted(r.json()["values"]) == ["v=dmp1;a", "v=dmp1;b"]

        r = await c.request("DELETE", "/v1/records/x.mesh.example", json={"value": "v=dmp1;a"})
        assert r.status_code == 204
        r = await c.request("DELETE", "/v1/records/x.mesh.example", json={"value": "v=dmp1;a"})
        assert (r.status_code, r.json()) == (404, {"error": "no matching record"})
        assert (await c.delete("/v1/records/x.mesh.example")).status_code == 204
        r = await c.get("/v1/records/x.mesh.example")
    assert r.status_code == 404
    assert await open_node.store.count() == 0


async def test_publish_stores_ttl(open_node: Node) -> None:
    """The stored row carries the TTL and default 300 s when none is given."""
    async with open_node.client() as c:
        await c.post("/v1/records/a.mesh.example", json={"value": "one", "ttl": 77})
        await c.post("/v1/records/b.mesh.example", json={"value": "two"})
    (a,) = await open_node.store.get("a.mesh.example", T0)
    (b,) = await open_node.store.get("b.mesh.example", T0)
    assert (a.ttl, b.ttl) == (77, 300)
    assert a.expires_at == T0 + 77


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/records/bad..name", {"value": "x"}, 400),
        ("/v1/records/-bad.mesh.example", {"value": "x"}, 400),
        ("/v1/records/" + "a" * 64 + ".example", {"value": "x"}, 400),
        ("/v1/records/_dnsmesh-seen.mesh.example", {"value": "x"}, 201),
        ("/v1/records/ok.mesh.example", {"value": "x", "ttl": 86401}, 400),
        ("/v1/records/ok.mesh.example", {"value": "x", "ttl": 0}, 400),
        ("/v1/records/ok.mesh.example", {"value": "x", "ttl": True}, 400),
        ("/v1/records/ok.mesh.example", {"value": "x", "ttl": "60"}, 400),
        ("/v1/records/ok.mesh.example", {"value": 'say "hi"'}, 400),
        ("/v1/records/ok.mesh.example", {"value": "line\nbreak"}, 400),
        ("/v1/records/ok.mesh.example", {"value": "x" * 2049}, 400),
        ("/v1/records/ok.mesh.example", {"value": "x" * 2048}, 201),
        ("/v1/records/ok.mesh.example", {"value": 5}, 400),
        ("/v1/records/ok.mesh.example", {}, 400),
        ("/v1/records/ok.mesh.example", ["value"], 400),
    ],
)
async def test_publish_validation(open_node: Node, path: str, body: Any, status: int) -> None:
    """Names, values and TTLs are checked before anything is stored (wire.md §10)."""
    async with open_node.client() as c:
        r = await c.post(path, json=body)
    assert r.status_code == status, r.text
    if status != 201:
        assert "error" in r.json()
        assert await open_node.store.count() == 0


async def test_lone_surrogate_values_are_400_not_500(open_node: Node) -> None:
    """JSON can carry a lone surrogate; it is refused, never stored or crashed on."""
    raw = b'{"value": "a\\ud800b", "ttl": 60}'
    async with open_node.client() as c:
        posted = await c.post("/v1/records/ok.mesh.example", content=raw)
        deleted = await c.request(
            "DELETE", "/v1/records/ok.mesh.example", content=b'{"value": "\\udfff"}'
        )
    assert (posted.status_code, deleted.status_code) == (400, 400)
    assert "error" in posted.json()
    assert await open_node.store.count() == 0


async def test_non_json_body_is_400(open_node: Node) -> None:
    """A body that is not JSON is a 400 with a JSON error."""
    async with open_node.client() as c:
        r = await c.post("/v1/records/a.mesh.example", content=b"{nope")
    assert r.status_code == 400
    assert r.json()["error"]


async def test_rrset_cap_is_413() -> None:
    """The values-per-name cap answers 413; refreshing an existing value still works."""
    node = make_node(max_values_per_name=2)
    async with node.client() as c:
        for v in ("a", "b"):
            assert (
                await c.post("/v1/records/n.mesh.example", json={"value": v})
            ).status_code == 201
        r = await c.post("/v1/records/n.mesh.example", json={"value": "c"})
        assert (r.status_code, "error" in r.json()) == (413, True)
        assert (await c.post("/v1/records/n.mesh.example", json={"value": "a"})).status_code == 201


async def test_body_size_limit_is_413() -> None:
    """A body over the cap is refused with 413 and a JSON error."""
    node = make_node(http_max_body_bytes=100)
    async with node.client() as c:
        r = await c.post("/v1/records/a.mesh.example", json={"value": "x" * 200})
    assert (r.status_code, r.json()) == (413, {"error": "request body too large"})
    assert await node.store.count() == 0


async def test_ack_waits_for_the_store() -> None:
    """The 201 is sent only after store.put has returned (durable acknowledgement)."""
    gate = anyio.Event()

    class SlowStore(MemoryRecordStore):
        async def put(self, *args: Any, **kw: Any) -> None:
            await gate.wait()
            await super().put(*args, **kw)

    node = make_node(store=SlowStore())
    result: list[int] = []

    async def publish() -> None:
        async with node.client() as c:
            r = await c.post("/v1/records/a.mesh.example", json={"value": "x"})
            result.append(r.status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish)
        await anyio.wait_all_tasks_blocked()
        assert result == []
        gate.set()
    assert result == [201]
    assert await node.store.count() == 1


async def test_concurrency_cap_answers_503() -> None:
    """With http_max_concurrency requests in flight, the next one gets 503 at once."""
    gate = anyio.Event()

    class SlowStore(MemoryRecordStore):
        async def put(self, *args: Any, **kw: Any) -> None:
            await gate.wait()
            await super().put(*args, **kw)

    node = make_node(store=SlowStore(), http_max_concurrency=1)
    statuses: list[int] = []

    async def publish() -> None:
        async with node.client() as c:
            statuses.append(
                (await c.post("/v1/records/a.mesh.example", json={"value": "x"})).status_code
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish)
        await anyio.wait_all_tasks_blocked()
        async with node.client() as c:
            busy = await c.get("/stats")
        gate.set()
    assert (busy.status_code, busy.json()) == (503, {"error": "server busy"})
    assert statuses == [201]
    text = node.metrics.render().decode()
    assert 'dmp_http_requests_total{method="GET",status="503"} 1.0' in text
    assert 'dmp_http_requests_total{method="POST",status="201"} 1.0' in text


def _post_scope(path: str, length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % length)],
        "client": ("192.0.2.1", 4000),
        "server": ("127.0.0.1", 80),
    }


async def _post_over_asgi(
    app: Any, path: str, length: int, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """POST ``path`` through the ASGI ``app``: ``messages`` arrive, then nothing; what it sent."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(_post_scope(path, length), receive, send)
    return sent


async def test_disconnect_before_the_body_is_complete_cancels_the_request() -> None:
    """A client gone before its body is in: the handler is cancelled, nothing is written."""
    node = make_node()
    messages = [
        {"type": "http.request", "body": b'{"value": "x"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent = await _post_over_asgi(node.app, "/v1/records/a.mesh.example", 40, messages)
    assert sent == []
    assert await node.store.count() == 0


async def test_disconnect_after_a_complete_request_lets_the_write_finish() -> None:
    """Once the whole request is in, a disconnect does not cancel it: the write lands, 201 is sent."""

    class YieldingStore(MemoryRecordStore):
        async def put(self, *args: Any, **kw: Any) -> None:
            for _ in range(5):  # "committing": the disconnect is delivered meanwhile
                await anyio.lowlevel.checkpoint()
            await super().put(*args, **kw)

    node = make_node(store=YieldingStore())
    body = b'{"value": "x"}'
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body, "more_body": False},
        {"type": "http.disconnect"},
    ]
    sent = await _post_over_asgi(node.app, "/v1/records/a.mesh.example", len(body), messages)
    assert sent[0]["status"] == 201
    assert await node.store.count() == 1


async def test_slow_body_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that does not arrive within the body deadline gets 408 JSON."""
    from dmp.adapters import http_api

    monkeypatch.setattr(http_api, "_BODY_TIMEOUT_S", 0.05)
    node = make_node()
    # 20 bytes announced, 9 sent: the rest of the body never comes
    parts = [{"type": "http.request", "body": b'{"value":', "more_body": True}]
    sent = await _post_over_asgi(node.app, "/v1/records/a.mesh.example", 20, parts)
    assert sent[0]["status"] == 408
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b'{"error": "request timeout"}'
    assert await node.store.count() == 0


# -- legacy mode ---------------------------------------------------------------


async def test_legacy_mode_needs_the_operator_token() -> None:
    """Legacy: writes and reads need the operator bearer; anything else is 401."""
    node = make_node(operator_token=OPERATOR)
    async with node.client() as c:
        assert (await c.post("/v1/records/a.mesh.example", json={"value": "x"})).status_code == 401
        r = await c.post("/v1/records/a.mesh.example", json={"value": "x"}, headers=bearer("nope"))
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
        assert r.headers["www-authenticate"] == "Bearer"
        ok = await c.post(
            "/v1/records/a.mesh.example", json={"value": "x"}, headers=bearer(OPERATOR)
        )
        assert ok.status_code == 201
        assert (await c.get("/v1/records/a.mesh.example")).status_code == 401
        r = await c.get("/v1/records/a.mesh.example", headers=bearer(OPERATOR))
        assert r.json() == {"name": "a.mesh.example", "values": ["x"]}
        assert (await c.delete("/v1/records/a.mesh.example")).status_code == 401
    assert await node.store.count() == 1


# -- multi-tenant mode -----------------------------------------------------------


async def test_token_scope_classes() -> None:
    """Owner-exclusive names need the owning subject; the shared pool takes any token, POST only."""
    node = multi_tenant()
    alice = await node.issue("alice@mesh.example")
    bob = await node.issue("bob@mesh.example")
    own = f"id-{H16}.mesh.example"
    slot = f"slot-3.mb-{'ab' * 6}.mesh.example"
    async with node.client() as c:

        async def post(name: str, token: str) -> int:
            r = await c.post(f"/v1/records/{name}", json={"value": "v"}, headers=bearer(token))
            return r.status_code

        assert await post(own, alice) == 201
        assert await post(own, bob) == 401
        assert await post(f"prekeys.id-{H12}.mesh.example", alice) == 201
        assert await post(f"dmp.alice.{ZONE}", alice) == 201
        assert await post(f"rotate.dmp.alice.{ZONE}", alice) == 201
        assert await post(f"dmp.bob.{ZONE}", alice) == 401
        assert await post(slot, bob) == 201
        assert await post(f"chunk-0001-{'cd' * 6}.mesh.example", alice) == 201
        assert await post("cluster.mesh.example", alice) == 401
        assert await post("cluster.mesh.example", OPERATOR) == 201
        assert (await c.delete(f"/v1/records/{slot}", headers=bearer(bob))).status_code == 401
        assert (await c.delete(f"/v1/records/{own}", headers=bearer(bob))).status_code == 401
        assert (await c.delete(f"/v1/records/{own}", headers=bearer(alice))).status_code == 204
        assert (await c.delete(f"/v1/records/{slot}", headers=bearer(OPERATOR))).status_code == 204
        # user tokens cannot read
        assert (await c.get(f"/v1/records/{own}", headers=bearer(alice))).status_code == 401


async def test_revoked_and_expired_tokens_are_refused_and_audited() -> None:
    """Revoked, expired and unknown tokens get 401 and a 'rejected' audit row."""
    node = multi_tenant()
    alive = await node.issue(expires_in_s=100)
    gone = await node.issue()
    await admin_tokens.revoke_tokens(node.tokens, node.tokens, reg.token_hash(gone)[:16])
    own = f"id-{H16}.mesh.example"
    async with node.client() as c:
        assert (
            await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer(alive))
        ).status_code == 201
        assert (
            await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer(gone))
        ).status_code == 401
        r = await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer("dmp_v1_NOPE"))
        assert r.status_code == 401
        node.clock.t += 100
        assert (
            await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer(alive))
        ).status_code == 401
    rejected = await node.tokens.tail(event=AuditEvent.REJECTED)
    details = [e.detail for e in rejected]
    assert any("token expired" in d for d in details)
    assert any("token revoked" in d for d in details)
    assert any("unknown token" in d for d in details)
    used = await node.tokens.tail(event=AuditEvent.USED)
    assert [(e.subject, e.token_hash) for e in used] == [
        ("alice@mesh.example", reg.token_hash(alive))
    ]


async def test_shared_pool_audit_rows_are_anonymous() -> None:
    """Publishing into the shared pool logs 'used' without subject or token hash."""
    node = multi_tenant()
    tok = await node.issue()
    async with node.client() as c:
        await c.post(
            f"/v1/records/slot-1.mb-{'ab' * 6}.mesh.example",
            json={"value": "m"},
            headers=bearer(tok),
        )
    (row,) = await node.tokens.tail(event=AuditEvent.USED)
    assert (row.subject, row.token_hash) == (None, None)
    assert row.remote == "192.0.2.10"


async def test_per_token_rate_limit() -> None:
    """A token over its own burst gets 429 and a 'throttled' row; time refills it."""
    node = multi_tenant()
    tok = await node.issue(rate_per_sec=1.0, rate_burst=2)
    other = await node.issue("bob@mesh.example")
    name = f"slot-1.mb-{'ab' * 6}.mesh.example"
    async with node.client() as c:

        async def post(token: str) -> int:
            r = await c.post(f"/v1/records/{name}", json={"value": "m"}, headers=bearer(token))
            return r.status_code

        assert [await post(tok) for _ in range(3)] == [201, 201, 429]
        assert await post(other) == 201  # buckets are per token
        node.clock.t += 1
        assert await post(tok) == 201
    assert len(await node.tokens.tail(event=AuditEvent.THROTTLED)) == 1


async def test_per_ip_rate_limit_and_trusted_proxies() -> None:
    """The per-IP bucket keys on the peer, or on X-Forwarded-For behind a trusted proxy."""
    node = make_node(http_rate=1.0, http_burst=2, http_trusted_proxies=("10.0.0.0/8",))

    async def burst(ip: str, xff: str | None = None) -> list[int]:
        headers = {"X-Forwarded-For": xff} if xff else {}
        async with node.client(ip) as c:
            return [
                (await c.get("/v1/records/a.mesh.example", headers=headers)).status_code
                for _ in range(3)
            ]

    assert await burst("192.0.2.1") == [404, 404, 429]
    # untrusted peer: its X-Forwarded-For is ignored, so it is still 192.0.2.1
    assert await burst("192.0.2.1", "198.51.100.7") == [429, 429, 429]
    # trusted proxy: each forwarded client has its own bucket
    assert await burst("10.1.2.3", "198.51.100.7") == [404, 404, 429]
    assert await burst("10.1.2.3", "203.0.113.5, 10.9.9.9") == [404, 404, 429]
    # a spoofed left-most entry does not help: the right-most untrusted hop counts
    assert await burst("10.1.2.3", "1.1.1.1, 203.0.113.5") == [429, 429, 429]
    node.clock.t += 10
    ok = await burst("192.0.2.1")
    assert ok[0] == 404


# -- registration (beyond the recorded vectors) -----------------------------------


@attrs.frozen
class User:
    seed: bytes
    x_priv: bytes

    @property
    def spk(self) -> bytes:
        return ed25519_public_from_seed(self.seed)

    @property
    def x_pub(self) -> bytes:
        return x25519_public(self.x_priv)


def user(label: str) -> User:
    return User(
        hashlib.sha256(label.encode()).digest(), hashlib.sha256(b"x" + label.encode()).digest()
    )


async def register(
    c: httpx.AsyncClient,
    u: User,
    subject: str,
    *,
    tsig: bool = False,
    pop: bool = True,
    sign_subject: str | None = None,
) -> httpx.Response:
    ch = await c.get("/v1/registration/challenge")
    assert ch.status_code == 200, ch.text
    body = ch.json()
    challenge = bytes.fromhex(body["challenge"])
    canonical = reg.canonicalize_subject(subject)
    payload = reg.signing_payload(challenge, sign_subject or canonical, body["node"])
    req: dict[str, Any] = {
        "subject": subject,
        "ed25519_spk": u.spk.hex(),
        "challenge": body["challenge"],
        "signature": reg.sign_registration(u.seed, payload).hex(),
    }
    if tsig:
        req["x25519_pub"] = u.x_pub.hex()
        if pop:
            server_pub = bytes.fromhex(body["server_x25519_pub"])
            req["x25519_pop"] = reg.x25519_pop(
                u.x_priv, server_pub, challenge, canonical, u.x_pub
            ).hex()
    path = "/v1/registration/tsig-confirm" if tsig else "/v1/registration/confirm"
    return await c.post(path, json=req)


async def test_registration_disabled_is_404() -> None:
    """Without registration (or outside multi-tenant) the routes are 404; TSIG needs DNS UPDATE."""
    node = make_node(operator_token=OPERATOR)
    async with node.client() as c:
        r = await c.get("/v1/registration/challenge")
    assert (r.status_code, r.json()) == (404, {"error": "registration disabled"})
    node = multi_tenant(dns_update_enabled=False)
    async with node.client() as c:
        assert (await c.get("/v1/registration/challenge")).status_code == 200
        r = await c.post("/v1/registration/tsig-confirm", json={})
    assert (r.status_code, r.json()) == (404, {"error": "tsig registration disabled"})


async def test_registration_bucket_is_shared_by_the_three_routes() -> None:
    """5 calls per IP per hour across challenge + confirm + tsig-confirm, then 429."""
    node = multi_tenant(registration_endpoint_rate=5 / 3600, registration_endpoint_burst=5)
    async with node.client() as c:
        statuses = [(await c.get("/v1/registration/challenge")).status_code for _ in range(3)]
        statuses.append((await c.post("/v1/registration/confirm", json={})).status_code)
        statuses.append((await c.post("/v1/registration/tsig-confirm", json={})).status_code)
        statuses.append((await c.get("/v1/registration/challenge")).status_code)
        r = await c.post("/v1/registration/confirm", json={})
    assert statuses == [200, 200, 200, 400, 400, 429]
    assert r.status_code == 429
    async with node.client("192.0.2.99") as c:
        assert (await c.get("/v1/registration/challenge")).status_code == 200


async def test_registered_token_publishes_and_re_registration_rotates() -> None:
    """A self-service token writes its subject's names; registering again revokes the old one."""
    node = multi_tenant()
    alice = user("alice")
    async with node.client() as c:
        first = await register(c, alice, "alice@mesh.example")
        assert first.status_code == 200, first.text
        tok1 = first.json()["token"]
        own = f"id-{H16}.mesh.example"
        r = await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer(tok1))
        assert r.status_code == 201
        second = await register(c, alice, "alice@mesh.example")
        assert second.status_code == 200
        tok2 = second.json()["token"]
        assert tok2 != tok1
        r = await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer(tok1))
        assert r.status_code == 401
        r = await c.post(f"/v1/records/{own}", json={"value": "v"}, headers=bearer(tok2))
        assert r.status_code == 201
    live = await node.tokens.find(subject="alice@mesh.example")
    assert [t.token_hash for t in live] == [reg.token_hash(tok2)]


async def test_admin_tokens_do_not_lock_a_subject() -> None:
    """An admin-issued token for a subject does not block self-service registration (no 409)."""
    node = multi_tenant()
    await node.issue("alice@mesh.example")
    async with node.client() as c:
        r = await register(c, user("alice"), "alice@mesh.example")
    assert r.status_code == 200


async def test_takeover_refused_for_tokens_too() -> None:
    """A live self-service token bound to another key blocks the token path with 409."""
    node = multi_tenant()
    async with node.client() as c:
        assert (await register(c, user("alice"), "alice@mesh.example")).status_code == 200
        r = await register(c, user("mallory"), "alice@mesh.example")
        assert r.status_code == 409
        assert (await register(c, user("mallory"), "mallory@mesh.example")).status_code == 200
    node.clock.t += 7_776_000  # alice's token expired: the subject is free again
    async with node.client() as c:
        assert (await register(c, user("mallory"), "alice@mesh.example")).status_code == 200


async def test_check_order_shape_before_challenge_before_signature() -> None:
    """A shape error leaves the challenge usable; a bad signature consumes it."""
    node = multi_tenant()
    alice = user("alice")
    async with node.client() as c:
        body = (await c.get("/v1/registration/challenge")).json()
        challenge = bytes.fromhex(body["challenge"])
        sig = reg.sign_registration(
            alice.seed, reg.signing_payload(challenge, "alice@mesh.example", NODE)
        ).hex()
        good = {
            "subject": "alice@mesh.example",
            "ed25519_spk": alice.spk.hex(),
            "challenge": body["challenge"],
            "signature": sig,
        }
        for broken in (
            {**good, "subject": "not a subject"},
            {**good, "signature": sig[:-2]},
            {**good, "ed25519_spk": "zz" * 32},
            {k: v for k, v in good.items() if k != "challenge"},
            "just a string",
        ):
            r = await c.post("/v1/registration/confirm", json=broken)
            assert r.status_code == 400, broken
            assert "error" in r.json()
        bad_sig = {**good, "signature": "00" * 64}
        r = await c.post("/v1/registration/confirm", json=bad_sig)
        assert (r.status_code, r.json()) == (401, {"error": "signature verification failed"})
        r = await c.post("/v1/registration/confirm", json=good)
        assert (r.status_code, r.json()) == (400, {"error": "challenge expired or unknown"})


async def test_allowlist_is_403_after_the_signature() -> None:
    """Subjects outside DMP_REGISTRATION_ALLOWLIST get 403 (only with a valid signature)."""
    node = multi_tenant(registration_allowlist=("mesh.example",))
    async with node.client() as c:
        assert (await register(c, user("a"), "a@other.example")).status_code == 403
        r = await register(c, user("a"), "a@other.example", sign_subject="a@mesh.example")
        assert r.status_code == 401
        assert (await register(c, user("a"), "a@MESH.example")).status_code == 200


async def test_tsig_registration_mints_a_key() -> None:
    """tsig-confirm stores a key with the mailbox scope only when the PoP verified."""
    node = multi_tenant()
    alice = user("alice")
    async with node.client() as c:
        r = await register(c, alice, "alice@mesh.example", tsig=True)
        assert r.status_code == 200, r.text
        with_pop = r.json()
        r = await register(c, alice, "alice@mesh.example", tsig=True, pop=False)
        without_pop = r.json()
    assert with_pop["tsig_key_name"] == without_pop["tsig_key_name"]
    assert with_pop["tsig_key_name"].startswith(f"alice-{alice.spk.hex()[:8]}-")
    assert with_pop["tsig_key_name"].endswith(f".{ZONE}.")
    mb = [s for s in with_pop["allowed_suffixes"] if s.startswith("mb-")]
    assert len(mb) == 1
    assert not [s for s in without_pop["allowed_suffixes"] if s.startswith("mb-")]
    key = await node.tsig_keys.get(with_pop["tsig_key_name"])
    assert key is not None
    assert key.secret.hex() == without_pop["tsig_secret_hex"]  # re-mint replaced the secret
    assert key.expires_at == int(T0) + 7_776_000


async def test_tsig_scope_modes() -> None:
    """Loose scope is the zone alone; tight scope has no wildcard."""
    loose = multi_tenant(tsig_loose_scope=True)
    tight = multi_tenant(tsig_tight_scope=True)
    async with loose.client() as c:
        r = await register(c, user("alice"), "alice@mesh.example", tsig=True)
    assert r.json()["allowed_suffixes"] == [ZONE]
    async with tight.client() as c:
        r = await register(c, user("alice"), "alice@mesh.example", tsig=True)
    assert r.status_code == 200
    assert not any("*" in s for s in r.json()["allowed_suffixes"])


async def test_too_long_local_part_is_400() -> None:
    """A subject whose key name label would exceed 63 octets is a 400 (wire.md §7.1)."""
    node = multi_tenant()
    async with node.client() as c:
        r = await register(c, user("long"), "x" * 48 + "@mesh.example", tsig=True)
    assert r.status_code == 400


async def test_challenges_are_bounded() -> None:
    """At most max_pending challenges are kept; the oldest go first."""
    node = multi_tenant(registration_endpoint_rate=0)
    registrar = node.app.extensions["dmp"].registrar
    registrar.settings = attrs.evolve(registrar.settings, max_pending=3)
    async with node.client() as c:
        first = (await c.get("/v1/registration/challenge")).json()["challenge"]
        for _ in range(3):
            await c.get("/v1/registration/challenge")
        assert registrar.pending == 3
        r = await c.post(
            "/v1/registration/confirm",
            json={
                "subject": "a@mesh.example",
                "ed25519_spk": user("a").spk.hex(),
                "challenge": first,
                "signature": "00" * 64,
            },
        )
    assert (r.status_code, r.json()) == (400, {"error": "challenge expired or unknown"})


# -- configuration -------------------------------------------------------------


def test_config_checks() -> None:
    """Open mode on a public bind, legacy without a token and bad proxies are refused."""
    with pytest.raises(HttpConfigError):
        HttpConfig(http_host="0.0.0.0").check()
    with pytest.raises(HttpConfigError):
        HttpConfig(http_host="::").check()
    HttpConfig(http_host="127.0.0.2").check()
    HttpConfig(http_host="::1").check()
    HttpConfig(http_host="localhost").check()
    HttpConfig(http_host="0.0.0.0", allow_open_public_bind=True).check()
    HttpConfig(http_host="0.0.0.0", operator_token="t").check()
    assert HttpConfig(operator_token="t").effective_auth_mode == "legacy"
    assert HttpConfig().effective_auth_mode == "open"
    with pytest.raises(HttpConfigError):
        HttpConfig(http_host="127.0.0.1", auth_mode="legacy").check()
    with pytest.raises(HttpConfigError):
        HttpConfig(http_host="127.0.0.1", http_trusted_proxies=("not-an-ip",)).check()
    with pytest.raises(HttpConfigError):
        create_app(
            HttpConfig(http_host="127.0.0.1", auth_mode="multi-tenant"),
            store=MemoryRecordStore(),
            clock=Clock(),
            random_bytes=os.urandom,
        )


# -- scope classes (pure) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "scope"),
    [
        (f"id-{H16}.mesh.example", ScopeClass.OWNER_EXCLUSIVE),
        (f"rotate.id-{H16}.mesh.example", ScopeClass.OWNER_EXCLUSIVE),
        (f"prekeys.id-{H12}.mesh.example", ScopeClass.OWNER_EXCLUSIVE),
        (f"pk-17.{H12}.mesh.example", ScopeClass.OWNER_EXCLUSIVE),
        ("dmp.alice.mesh.example", ScopeClass.OWNER_EXCLUSIVE),
        ("rotate.dmp.alice.mesh.example.", ScopeClass.OWNER_EXCLUSIVE),
        (f"slot-9.mb-{H12}.mesh.example", ScopeClass.SHARED_POOL),
        (f"CHUNK-0003-{H12}.mesh.example", ScopeClass.SHARED_POOL),
        ("cluster.mesh.example", ScopeClass.OPERATOR_ONLY),
        ("_dnsmesh-heartbeat.mesh.example", ScopeClass.OPERATOR_ONLY),
        (f"claim-1.mb-{H12}.mesh.example", ScopeClass.OPERATOR_ONLY),
        ("id-short.mesh.example", ScopeClass.OPERATOR_ONLY),
    ],
)
def test_classify_owner(owner: str, scope: ScopeClass) -> None:
    """Owner names fall into the reference's three scope classes."""
    assert classify_owner(owner) is scope


def test_owner_allowed_uses_the_local_part_hash() -> None:
    """Ownership recomputes sha256 of the subject's local part; prekey scope adds a mailbox."""
    alice = TokenRecord(
        token_hash="0" * 64, subject="alice@mesh.example", issued_at=0, expires_at=None
    )
    assert owner_allowed(f"id-{H16}.other.zone", alice)
    assert owner_allowed(f"pk-1.{H12}.mesh.example", alice)
    assert not owner_allowed(f"id-{_sha('bob')[:16]}.mesh.example", alice)
    assert not owner_allowed(f"slot-1.mb-{H12}.mesh.example", alice)
    x_pub = bytes(range(32))
    mailbox = hashlib.sha256(hashlib.sha256(x_pub).digest()).hexdigest()[:12]
    assert not owner_allowed(f"pk-1.{mailbox}.mesh.example", alice)
    with_prekeys = attrs.evolve(alice, prekey_x25519=x_pub.hex())
    assert owner_allowed(f"pk-1.{mailbox}.mesh.example", with_prekeys)


def test_config_from_attributes() -> None:
    """from_attributes copies same-named fields and leaves the rest at their defaults."""

    @attrs.frozen
    class NodeLike:
        http_host: str = "127.0.0.1"
        http_rate: float = 3.0
        operator_token: str = "t"
        registration_allowlist: tuple[str, ...] = ("a.example",)
        dns_port: int = 53

    cfg = HttpConfig.from_attributes(NodeLike())
    assert (cfg.http_host, cfg.http_rate, cfg.operator_token) == ("127.0.0.1", 3.0, "t")
    assert cfg.registration_allowlist == ("a.example",)
    assert cfg.max_ttl == 86400
