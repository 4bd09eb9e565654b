"""registration.json replayed against our HTTP app (wire.md §7.1, §7.2, §8).

The ceremonies and the bad requests were recorded against the reference
HTTP server. Here every random draw (challenge, server X25519 key, TSIG secret,
bearer token) and the clock are injected so that our app must give the same
statuses and the same JSON bodies (compared parsed, not as text).
"""

from __future__ import annotations

import base64
import collections
from typing import Any

import httpx
import pytest

from dmp.adapters.http_api import HttpConfig, create_app
from dmp.adapters.memory_store import MemoryRecordStore, MemoryTsigKeyStore
from dmp.adapters.token_store import MemoryTokenStore
from dmp.domain.registration import token_hash
from tests.vectors import h, load

pytestmark = pytest.mark.anyio

V = load("registration.json")


class _Clock:
    """A clock that tests set to absolute times (vectors may step backwards)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


class _Draws:
    """The randomness source: hands out exactly the queued draws, in order."""

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()

    def push(self, *draws: bytes) -> None:
        self.queue.extend(draws)

    def __call__(self, n: int) -> bytes:
        assert self.queue, f"unexpected draw of {n} bytes"
        draw = self.queue.popleft()
        assert len(draw) == n, f"draw of {n} bytes, queued {len(draw)}"
        return draw


def _token_draw(token: str) -> bytes:
    text = token.removeprefix("dmp_v1_")
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _confirm_draw(exchange: dict[str, Any], recorded_draw: str | None) -> list[bytes]:
    """The draw a successful confirm consumes (none for a refused one)."""
    if exchange["status"] != 200:
        return []
    if recorded_draw is not None:
        return [h(recorded_draw)]
    body = exchange["response_json"]
    if "tsig_secret_hex" in body:
        return [h(body["tsig_secret_hex"])]
    return [_token_draw(body["token"])]


class _Node:
    def __init__(self) -> None:
        self.clock = _Clock(float(V["now"]))
        self.draws = _Draws()
        self.tokens = MemoryTokenStore()
        self.tsig_keys = MemoryTsigKeyStore()
        config = HttpConfig(
            http_host="127.0.0.1",
            auth_mode="multi-tenant",
            node_hostname=V["node"],
            served_zone=V["served_zone"],
            dns_update_enabled=True,
            registration_enabled=True,
            registration_endpoint_rate=0,  # the recording made more than 5 calls
        )
        self.app = create_app(
            config,
            store=MemoryRecordStore(),
            clock=self.clock,
            random_bytes=self.draws,
            tokens=self.tokens,
            audit=self.tokens,
            tsig_keys=self.tsig_keys,
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://node.test"
        )

    async def challenge(self, exchange: dict[str, Any], server_private: str) -> None:
        """Replay one GET /v1/registration/challenge."""
        body = exchange["response_json"]
        self.clock.t = float(body["expires_at"] - 60)
        self.draws.push(h(body["challenge"]), h(server_private))
        resp = await self.client.request(exchange["method"], exchange["path"])
        assert (resp.status_code, resp.json()) == (exchange["status"], body)
        assert not self.draws.queue

    async def confirm(
        self, exchange: dict[str, Any], *, at: float | None = None, draw: str | None = None
    ) -> httpx.Response:
        """Replay one POST confirm; returns our response after checking it."""
        if at is not None:
            self.clock.t = float(at)
        self.draws.push(*_confirm_draw(exchange, draw))
        resp = await self.client.request(
            exchange["method"], exchange["path"], json=exchange["request_json"]
        )
        assert (resp.status_code, resp.json()) == (exchange["status"], exchange["response_json"])
        assert not self.draws.queue
        return resp


async def test_ceremonies_then_bad_requests() -> None:
    """Every recorded exchange gets the recorded status and body, in the recorded order."""
    node = _Node()
    for ceremony in V["ceremonies"]:
        for step in ("tsig", "token"):
            rec = ceremony[step]
            await node.challenge(rec["challenge_response"], rec["server_x25519_private"])
            draw = rec.get("secret_draw") if step == "tsig" else rec.get("token_draw")
            await node.confirm(rec["confirm"], draw=draw)

    for case in V["responses_to_bad_requests"]:
        if "challenge_response" in case:
            await node.challenge(case["challenge_response"], case["server_x25519_private"])
        await node.confirm(case["confirm"], at=case.get("confirm_at"))


@pytest.mark.parametrize("ceremony", V["ceremonies"], ids=lambda c: str(c.get("id")))
async def test_ceremony_stores_what_it_returned(ceremony: dict[str, Any]) -> None:
    """A minted TSIG key is in the keystore and a minted token in the token store, hash only."""
    node = _Node()
    tsig, token = ceremony["tsig"], ceremony["token"]
    await node.challenge(tsig["challenge_response"], tsig["server_x25519_private"])
    await node.confirm(tsig["confirm"], draw=tsig.get("secret_draw"))
    await node.challenge(token["challenge_response"], token["server_x25519_private"])
    await node.confirm(token["confirm"], draw=token.get("token_draw"))

    minted = tsig["confirm"]["response_json"]
    key = await node.tsig_keys.get(minted["tsig_key_name"])
    assert key is not None, minted["tsig_key_name"]
    assert key.secret.hex() == minted["tsig_secret_hex"]
    assert list(key.allowed_suffixes) == minted["allowed_suffixes"]
    assert key.subject == ceremony["subject_canonical"]
    assert key.ed25519_public == ceremony["user"]["ed25519_public"]
    assert key.expires_at == minted["expires_at"]

    issued = token["confirm"]["response_json"]
    rec = await node.tokens.get(token_hash(issued["token"]))
    assert rec is not None
    assert rec.subject == ceremony["subject_canonical"]
    assert rec.registered_spk == ceremony["user"]["ed25519_public"]
    assert rec.expires_at == issued["expires_at"]
    assert rec.live(node.clock.now())
