"""message.json replayed through the client use cases over FakeDns and SimClock.

Sends: alice's ``send_message`` with the vector's random draws publishes
exactly ``published_by_send`` and the receiver-zone claim. Deliveries: bob's
``receive_messages`` over ``dns_before_send`` + ``published_by_send``
returns ``receive.delivered``, consumes ``prekey_consumed`` and deletes its
published record. Rejections: nothing is delivered, nothing consumed.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from dmp.apps.client.config import Contact
from dmp.apps.client.deps import ClientDeps
from dmp.apps.client.messaging import receive_messages, send_message
from dmp.domain.crypto import IdentityKeys
from dmp.domain.names import claim_owner, prekey_owner
from dmp.ports.client_state import StoredPrekey
from tests.unit.apps.client_world import World, name
from tests.vectors import h, load, params

pytestmark = pytest.mark.anyio

V = load("message.json")
MESSAGES = {m["id"]: m for m in V["messages"]}


class ScriptedRandom(random.Random):
    """Replays the vector's random draws (bytes in order, one prekey index)."""

    def __init__(self, draws: list[bytes], prekey_index: int | None) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.prekey_index = prekey_index

    def randbytes(self, n: int) -> bytes:
        draw = self.draws.pop(0)
        assert len(draw) == n
        return draw

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        assert stop is None
        assert self.prekey_index is not None
        assert 0 <= self.prekey_index < start
        return self.prekey_index


def keys_of(party: dict[str, Any]) -> IdentityKeys:
    return IdentityKeys.from_x25519_private(h(party["identity"]["x25519_private"]))


def contact_of(party: dict[str, Any]) -> Contact:
    return Contact(
        pub=party["identity"]["x25519_public"],
        spk=party["identity"]["ed25519_public"],
        domain=party["zone"],
        username=party["username"],
        domain_explicit=True,
    )


def party_deps(world: World, party: dict[str, Any], other: dict[str, Any] | None) -> ClientDeps:
    deps = world.user(party["username"], party["zone"], keys=keys_of(party), label=party["zone"])
    if other is not None:
        deps.config.contacts[other["username"]] = contact_of(other)
    return deps


async def publish_all(world: World, records: dict[str, list[str]], ttl: int) -> None:
    for owner, values in records.items():
        for value in values:
            await world.dns.publish(name(owner), value, ttl)


async def serve(
    m: dict[str, Any], *, served_ttl: int | None = None, manifest_wire: str | None = None
) -> World:
    """The DNS world at ``sent_at``: identities and prekeys, then alice's records."""
    world = World(start=m["setup_at"])
    await publish_all(world, m["dns_before_send"], 86400)
    world.clock.advance(m["sent_at"] - m["setup_at"])
    published = dict(m["published_by_send"])
    if manifest_wire is not None:
        published[m["send"]["manifest"]["owner"]] = [manifest_wire]
    await publish_all(world, published, served_ttl or m["send"]["ttl"])
    return world


def bob_with_prekeys(world: World, m: dict[str, Any], *, pins_alice: bool) -> ClientDeps:
    bob = party_deps(world, m["bob"], m["alice"] if pins_alice else None)
    for p in m["bob"]["prekeys"]:
        bob.prekeys.add(
            StoredPrekey(p["prekey_id"], h(p["prekey_private"]), h(p["public_key"]), p["exp"])
        )
    return bob


@pytest.mark.parametrize("m", params(V["messages"]))
async def test_send_publishes_the_vector_records(m: dict[str, Any]) -> None:
    """alice's send, given the vector's draws, publishes its records byte for byte."""
    s = m["send"]
    world = World(start=m["setup_at"])
    await publish_all(world, m["dns_before_send"], 86400)
    world.clock.advance(m["sent_at"] - m["setup_at"])
    alice = party_deps(world, m["alice"], m["bob"])
    pool_owner = prekey_owner(m["bob"]["username"], m["bob"]["zone"])
    pool = m["dns_before_send"].get(pool_owner.to_text(omit_final_dot=True), [])
    ids = [p["prekey_id"] for p in m["bob"]["prekeys"]]
    order = [next(p["prekey_id"] for p in m["bob"]["prekeys"] if p["wire"] == w) for w in pool]
    assert sorted(order) == sorted(ids)
    alice.rng = ScriptedRandom(
        [h(s["random"][k]) for k in ("msg_id", "ephemeral_x25519_private", "nonce")],
        order.index(s["prekey_id"]) if s["prekey_id"] else None,
    )

    sent = await send_message(alice, m["bob"]["username"], m["body_utf8"], ttl=s["ttl"])

    assert sent.msg_id.hex() == s["random"]["msg_id"]
    assert sent.prekey_id == s["prekey_id"]
    assert sent.envelope == s["plaintext_is_v2_envelope"]
    for owner, values in m["published_by_send"].items():
        assert world.dns.values(name(owner)) == values, owner
        for value in values:
            assert world.dns.ttl_left(name(owner), value) == s["ttl"]
    claim = s["recipient_zone_claim"]
    assert sent.claim_zones == (claim["update_zone"],)
    assert sent.claims_sent == 1
    owner = claim_owner(h(s["recipient_id"]), claim["slot"], claim["update_zone"])
    assert owner == name(claim["owner"])
    assert world.dns.values(owner) == [claim["wire"]]
    assert world.dns.ttl_left(owner, claim["wire"]) == claim["ttl"]


@pytest.mark.parametrize("m", params(V["messages"]))
async def test_receive_delivers_the_vector_message(m: dict[str, Any]) -> None:
    """bob's recv returns ``receive.delivered`` and consumes and deletes the prekey."""
    r = m["receive"]
    world = await serve(m)
    bob = bob_with_prekeys(world, m, pins_alice=True)
    pool = prekey_owner(m["bob"]["username"], m["bob"]["zone"])
    world.clock.advance(r["at"] - m["sent_at"])

    got = await receive_messages(bob)

    assert [
        {
            "body_utf8": d.text,
            "body": d.body.hex(),
            "sender_label": d.sender_label,
            "timestamp": d.timestamp,
            "msg_id": d.msg_id.hex(),
            "sender_signing_pk": d.sender_spk.hex(),
        }
        for d in got.delivered
    ] == r["delivered"]
    assert got.queued == ()
    consumed = r["prekey_consumed"]
    assert got.prekeys_consumed == (() if consumed is None else (consumed,))
    remaining = {p["prekey_id"] for p in m["bob"]["prekeys"]} - {consumed}
    assert bob.prekeys.ids() == remaining
    live = world.dns.values(pool)
    for p in m["bob"]["prekeys"]:
        deleted = p["prekey_id"] == consumed and r["prekey_record_deleted"]
        assert (p["wire"] in live) != deleted, p["prekey_id"]
    # a second poll delivers nothing (replay cache)
    assert (await receive_messages(bob)).delivered == ()


@pytest.mark.parametrize("case", params(V["receive_rejections"]))
async def test_receive_rejections(case: dict[str, Any]) -> None:
    """The refused deliveries deliver, queue and consume nothing."""
    m = MESSAGES[case["base"]]
    world = await serve(
        m, served_ttl=case["served_ttl"], manifest_wire=case["replace_manifest_wire"]
    )
    bob = bob_with_prekeys(world, m, pins_alice=case["bob_pins_alice"])
    before = bob.prekeys.ids()
    pool_owner = prekey_owner(m["bob"]["username"], m["bob"]["zone"])
    pool = world.dns.values(pool_owner)
    world.clock.advance(case["receive_at"] - m["sent_at"])

    got = await receive_messages(bob)

    assert len(got.delivered) == case["expected_delivered"] == 0
    assert got.queued == ()
    assert got.prekeys_consumed == ()
    assert bob.prekeys.ids() == before
    assert world.dns.values(pool_owner) == pool
