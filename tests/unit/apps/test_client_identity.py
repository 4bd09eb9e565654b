"""Identity use cases: publish, fetch and pin, rotation, prekeys (FakeDns + SimClock)."""

from __future__ import annotations

import pytest

from dmp.apps.client.deps import ClientDeps
from dmp.apps.client.identity import (
    fetch_identity,
    publish_identity,
    refresh_prekeys,
    rotate_identity,
    show_identity,
    verify_sender_label,
)
from dmp.apps.client.messaging import receive_messages, send_message
from dmp.domain.errors import (
    AmbiguousIdentity,
    IdentityNotFound,
    PinMismatch,
    RotationChainError,
)
from dmp.domain.identity import IdentityRecord, sign_identity, verify_identity
from dmp.domain.names import identity_owner, prekey_owner, zone_identity_owner
from dmp.domain.prekey import verify_prekey
from dmp.domain.rotation import RevocationReason
from dmp.ports.transport import PeerRejected, PeerUnreachable
from tests.unit.apps.client_world import World, keys_for

pytestmark = pytest.mark.anyio


async def test_publish_hashed_identity() -> None:
    """Without identity_domain the record lives at id-<hash16>.<domain>, versions (1,)."""
    world = World()
    bob = world.user("bob", "bob.example")
    published = await publish_identity(bob, ttl=3600)
    owner = identity_owner("bob", "bob.example")
    assert published.owner == owner
    (wire,) = world.dns.values(owner)
    record = verify_identity(wire)
    assert record == published.record
    assert (record.username, record.versions) == ("bob", (1,))
    assert (record.x25519_public, record.ed25519_public) == (
        bob.keys.x25519_public,
        bob.keys.ed25519_public,
    )
    assert record.ts == bob.now()
    assert world.dns.ttl_left(owner, wire) == 3600
    assert published.fingerprint == record.fingerprint == show_identity(bob).fingerprint


async def test_publish_zone_anchored_identity_with_v2() -> None:
    """With identity_domain the record lives at dmp.<identity_domain>."""
    world = World()
    bob = world.user("bob", "mesh.example", identity_domain="bob.example")
    published = await publish_identity(bob, advertise_v2=True)
    assert published.owner == zone_identity_owner("bob.example")
    (wire,) = world.dns.values(zone_identity_owner("bob.example"))
    assert verify_identity(wire).versions == (1, 2)
    assert world.dns.values(identity_owner("bob", "mesh.example")) == []


async def test_republish_replaces_older_values() -> None:
    """Publishing again leaves only the newest value of this identity."""
    world = World()
    bob = world.user("bob", "bob.example")
    await publish_identity(bob)
    world.clock.advance(60)
    second = await publish_identity(bob, advertise_v2=True)
    assert second.stale_removed == 1
    assert world.dns.values(second.owner) == [second.wire]


async def test_fetch_and_pin() -> None:
    """Fetch verifies the record and pins it bound to its zone."""
    world = World()
    alice, bob = world.user("alice", "alice.example"), world.user("bob", "bob.example")
    await publish_identity(bob)
    fetched = await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    assert fetched.record.ed25519_public == bob.keys.ed25519_public
    assert fetched.contact_name == "bob"
    assert fetched.candidates == (fetched.chosen,)
    contact = alice.config.contacts["bob"]
    assert (contact.pub, contact.spk, contact.domain, contact.username) == (
        bob.keys.x25519_public.hex(),
        bob.keys.ed25519_public.hex(),
        "bob.example",
        "bob",
    )
    assert contact.domain_explicit
    assert world.saved["alice@alice.example"] == 1
    # without --add nothing is pinned
    carol = world.user("carol", "carol.example")
    await fetch_identity(carol, "bob@bob.example")
    assert carol.config.contacts == {}


async def test_fetch_bare_user_uses_own_domain() -> None:
    """A bare username is looked up in our domain and is not an explicit zone."""
    world = World()
    alice, bob = world.user("alice", "mesh.example"), world.user("bob", "mesh.example")
    await publish_identity(bob)
    fetched = await fetch_identity(alice, "bob", add=True)
    assert (fetched.host, fetched.domain_explicit, fetched.contact_name) == (
        "mesh.example",
        False,
        "bob",
    )
    assert not alice.config.contacts["bob"].domain_explicit


async def test_fetch_prefers_the_zone_anchored_record() -> None:
    """For user@host, dmp.<host> wins over id-<hash16>.<host>."""
    world = World()
    alice = world.user("alice", "alice.example")
    anchored = world.user("bob", "mesh.example", identity_domain="bob.example")
    hashed = world.user("bob", "bob.example", label="other-bob")
    await publish_identity(anchored)
    await publish_identity(hashed)
    fetched = await fetch_identity(alice, "bob@bob.example")
    assert fetched.chosen.owner == zone_identity_owner("bob.example")
    assert fetched.record.ed25519_public == anchored.keys.ed25519_public


async def test_fetch_skips_invalid_and_foreign_records() -> None:
    """Tampered values and records for another username are ignored."""
    world = World()
    alice, bob = world.user("alice", "alice.example"), world.user("bob", "bob.example")
    owner = identity_owner("bob", "bob.example")
    good = sign_identity(
        IdentityRecord("bob", bob.keys.x25519_public, bob.keys.ed25519_public, 5),
        bob.keys.ed25519_seed,
    )
    cut = len(good) - 10
    tampered = good[:cut] + ("A" if good[cut] != "A" else "B") + good[cut + 1 :]
    await world.dns.publish(owner, tampered, 300)
    with pytest.raises(IdentityNotFound):
        await fetch_identity(alice, "bob@bob.example")
    mallory = keys_for("mallory")
    foreign = sign_identity(
        IdentityRecord("mallory", mallory.x25519_public, mallory.ed25519_public, 5),
        mallory.ed25519_seed,
    )
    await world.dns.publish(owner, foreign, 300)
    await world.dns.publish(owner, good, 300)
    fetched = await fetch_identity(alice, "bob@bob.example")
    assert fetched.record.ed25519_public == bob.keys.ed25519_public


async def test_fetch_refuses_ambiguous_identity() -> None:
    """Two distinct valid records: refused with both fingerprints, unless one is accepted."""
    world = World()
    alice = world.user("alice", "alice.example")
    real = world.user("bob", "bob.example")
    twin = world.user("bob", "bob.example", label="twin")
    await publish_identity(real)
    await publish_identity(twin)
    with pytest.raises(AmbiguousIdentity) as info:
        await fetch_identity(alice, "bob@bob.example", add=True)
    real_fp = show_identity(real).fingerprint
    twin_fp = show_identity(twin).fingerprint
    assert info.value.fingerprints == tuple(sorted([real_fp, twin_fp]))
    assert alice.config.contacts == {}
    with pytest.raises(PinMismatch):
        await fetch_identity(alice, "bob@bob.example", accept_fingerprint="0" * 16)
    fetched = await fetch_identity(
        alice, "bob@bob.example", add=True, accept_fingerprint=real_fp.upper()
    )
    assert fetched.fingerprint == real_fp
    assert alice.config.contacts["bob@bob.example"].spk == real.keys.ed25519_public.hex()


async def test_fetch_fails_on_network_error() -> None:
    world = World()
    alice = world.user("alice", "alice.example")
    world.dns.make_unreachable("query")
    with pytest.raises(PeerUnreachable):
        await fetch_identity(alice, "bob@bob.example")


async def rotated_bob(world: World, reason: RevocationReason) -> tuple[ClientDeps, ClientDeps]:
    """alice pins bob, then bob rotates to a new key; returns (alice, bob with new keys)."""
    alice, bob = world.user("alice", "alice.example"), world.user("bob", "bob.example")
    await publish_identity(bob, advertise_v2=True)
    await publish_identity(alice, advertise_v2=True)
    await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    await fetch_identity(bob, "alice@alice.example", add=True, contact_name="alice")
    world.clock.advance(3600)
    new_keys = keys_for("bob-rotated")
    rotated = await rotate_identity(bob, new_keys, reason=reason, advertise_v2=True)
    assert rotated.rotation.old_spk == bob.keys.ed25519_public
    assert (rotated.revocation is not None) == (reason != RevocationReason.ROUTINE)
    # the old record is still served next to the new one
    assert len(world.dns.values(identity_owner("bob", "bob.example"))) == 2
    new_bob = world.user("bob", "bob.example", keys=new_keys, label="bob-new")
    new_bob.config.contacts.update(bob.config.contacts)
    return alice, new_bob


async def test_routine_rotation_is_followed() -> None:
    """The pin moves along a verified rotation; messages flow with the new key."""
    world = World()
    alice, bob = await rotated_bob(world, RevocationReason.ROUTINE)
    old_spk = bytes.fromhex(alice.config.contacts["bob"].spk)
    fetched = await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    assert fetched.record.ed25519_public == bob.keys.ed25519_public
    assert fetched.rotated_from == old_spk
    assert len(fetched.dropped) == 1
    assert alice.config.contacts["bob"].spk == bob.keys.ed25519_public.hex()
    await send_message(alice, "bob", "to your new key")
    assert [d.text for d in (await receive_messages(bob)).delivered] == ["to your new key"]


async def test_compromise_rotation_is_not_followed_automatically() -> None:
    """A revoked pinned key aborts the chain walk; the old record is dropped on fetch."""
    world = World()
    alice, bob = await rotated_bob(world, RevocationReason.COMPROMISE)
    pinned = alice.config.contacts["bob"].spk
    fetched = await fetch_identity(alice, "bob@bob.example")
    assert fetched.record.ed25519_public == bob.keys.ed25519_public
    with pytest.raises(RotationChainError):
        await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    assert alice.config.contacts["bob"].spk == pinned


async def test_changed_key_without_rotation_is_refused() -> None:
    """A different key at the owner with no rotation does not replace the pin."""
    world = World()
    alice, bob = world.user("alice", "alice.example"), world.user("bob", "bob.example")
    await publish_identity(bob)
    await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    await world.dns.delete(identity_owner("bob", "bob.example"))
    impostor = world.user("bob", "bob.example", label="impostor")
    await publish_identity(impostor)
    with pytest.raises(PinMismatch):
        await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    assert alice.config.contacts["bob"].spk == bob.keys.ed25519_public.hex()


async def test_sender_label_needs_matching_key() -> None:
    world = World()
    alice, bob = world.user("alice", "alice.example"), world.user("bob", "bob.example")
    await publish_identity(alice)
    assert await verify_sender_label(bob, "alice@alice.example", alice.keys.ed25519_public) == (
        "alice@alice.example"
    )
    assert await verify_sender_label(bob, "alice@alice.example", bob.keys.ed25519_public) == ""
    assert await verify_sender_label(bob, "nobody@alice.example", alice.keys.ed25519_public) == ""
    assert await verify_sender_label(bob, "not-an-address", alice.keys.ed25519_public) == ""


async def test_refresh_prekeys() -> None:
    """count prekeys: random nonzero unique ids, stored privately, published signed."""
    world = World()
    bob = world.user("bob", "bob.example")
    refreshed = await refresh_prekeys(bob, count=5, ttl=7200)
    ids = refreshed.prekey_ids
    assert len(set(ids)) == 5
    assert all(0 < i < 2**32 for i in ids)
    assert bob.prekeys.ids() == set(ids)
    owner = prekey_owner("bob", "bob.example")
    assert refreshed.owner == owner
    published = [
        verify_prekey(w, bob.keys.ed25519_public, now=bob.now()) for w in world.dns.values(owner)
    ]
    assert {p.prekey_id for p in published} == set(ids)
    for p in published:
        stored = bob.prekeys.get(p.prekey_id)
        assert stored is not None
        assert stored.public_key == p.x25519_public
        assert p.exp == bob.now() + 7200
    assert all(world.dns.ttl_left(owner, w) == 7200 for w in world.dns.values(owner))
    # a second batch adds to the first
    more = await refresh_prekeys(bob, count=2)
    assert len(bob.prekeys.ids()) == 7
    assert not set(more.prekey_ids) & set(ids)


async def test_refresh_prekeys_publish_failure_keeps_nothing() -> None:
    world = World()
    bob = world.user("bob", "bob.example")
    world.dns.make_rejecting("publish")
    with pytest.raises(PeerRejected):
        await refresh_prekeys(bob, count=3)
    assert bob.prekeys.ids() == set()
    with pytest.raises(ValueError, match="at least 1"):
        await refresh_prekeys(bob, count=0)


async def test_refresh_prekeys_prunes_long_expired_keys() -> None:
    world = World()
    bob = world.user("bob", "bob.example")
    first = await refresh_prekeys(bob, count=2, ttl=600)
    world.clock.advance(600 + 86400 + 1)
    second = await refresh_prekeys(bob, count=1)
    assert second.pruned == 2
    assert bob.prekeys.ids() == set(second.prekey_ids)
    assert not set(first.prekey_ids) & bob.prekeys.ids()
