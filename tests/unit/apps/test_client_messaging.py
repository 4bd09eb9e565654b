"""Send and receive use cases over FakeDns, SimClock and in-memory client state."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import dns.name
import pytest

from dmp.apps.client import messaging
from dmp.apps.client.deps import ClientDeps
from dmp.apps.client.identity import fetch_identity, publish_identity, refresh_prekeys
from dmp.apps.client.intros import accept_intro, block_intro, trust_intro
from dmp.apps.client.messaging import MAX_CLAIM_ZONES, receive_messages, send_message
from dmp.domain.errors import UnknownContact
from dmp.domain.heartbeat import CAP_CLAIM_PROVIDER, Heartbeat, sign_heartbeat
from dmp.domain.keys import ed25519_public_from_seed
from dmp.domain.manifest import SlotManifest, sign_manifest
from dmp.domain.names import claim_owner, heartbeat_owner, prekey_owner, slot_owner
from dmp.domain.prekey import verify_prekey
from dmp.ports.transport import PeerUnreachable
from tests.unit.apps.client_world import World, keys_for, pin

pytestmark = pytest.mark.anyio


async def alice_and_bob(world: World, *, v2: bool = True) -> tuple[ClientDeps, ClientDeps]:
    alice = world.user("alice", "alice.example")
    bob = world.user("bob", "bob.example")
    await publish_identity(alice, advertise_v2=v2)
    await publish_identity(bob, advertise_v2=v2)
    await fetch_identity(alice, "bob@bob.example", add=True, contact_name="bob")
    await fetch_identity(bob, "alice@alice.example", add=True, contact_name="alice")
    return alice, bob


async def test_send_and_receive_both_ways() -> None:
    """A message each way arrives once, with the verified DMPv2 sender label."""
    world = World()
    alice, bob = await alice_and_bob(world)

    sent = await send_message(alice, "bob", "hi bob")
    assert sent.envelope
    assert sent.prekey_id == 0
    got = await receive_messages(bob)
    assert [(d.text, d.sender_label, d.contact) for d in got.delivered] == [
        ("hi bob", "alice@alice.example", "alice")
    ]
    assert got.delivered[0].msg_id == sent.msg_id
    assert got.delivered[0].sender_spk == alice.keys.ed25519_public
    assert got.queued == ()

    await send_message(bob, "alice@alice.example", "hi alice")
    back = await receive_messages(alice)
    assert [(d.text, d.sender_label) for d in back.delivered] == [("hi alice", "bob@bob.example")]
    # nothing new for bob
    assert (await receive_messages(bob)).delivered == ()


async def test_v1_recipient_gets_no_envelope() -> None:
    """Without version 2 advertised, the body is sent bare and no label is shown."""
    world = World()
    alice, bob = await alice_and_bob(world, v2=False)
    sent = await send_message(alice, "bob", "plain")
    assert not sent.envelope
    got = await receive_messages(bob)
    assert [(d.text, d.sender_label) for d in got.delivered] == [("plain", "")]


async def test_prekey_consumed_and_its_record_deleted() -> None:
    """A prekey is used once: the private key and the published record go away."""
    world = World()
    alice, bob = await alice_and_bob(world)
    refreshed = await refresh_prekeys(bob, count=3)
    pool = prekey_owner("bob", "bob.example")
    assert len(world.dns.values(pool)) == 3

    sent = await send_message(alice, "bob", "forward secret")
    assert sent.prekey_id in refreshed.prekey_ids
    got = await receive_messages(bob)
    assert [d.text for d in got.delivered] == ["forward secret"]
    assert got.prekeys_consumed == (sent.prekey_id,)
    assert bob.prekeys.get(sent.prekey_id) is None
    left = {verify_prekey(w, bob.keys.ed25519_public, now=bob.now()).prekey_id
            for w in world.dns.values(pool)}  # fmt: skip
    assert left == set(refreshed.prekey_ids) - {sent.prekey_id}
    assert bob.prekeys.ids() == left


async def test_undecryptable_message_consumes_no_prekey() -> None:
    """A message to a prekey whose private key is gone is refused; nothing is consumed."""
    world = World()
    alice, bob = await alice_and_bob(world)
    refreshed = await refresh_prekeys(bob, count=2)
    sent = await send_message(alice, "bob", "lost")
    bob.prekeys.consume(sent.prekey_id)
    got = await receive_messages(bob)
    assert got.delivered == ()
    assert any("DecryptionFailed" in r.reason for r in got.rejected)
    other = (set(refreshed.prekey_ids) - {sent.prekey_id}).pop()
    assert bob.prekeys.get(other) is not None
    assert got.prekeys_consumed == ()


async def test_replayed_manifest_is_refused() -> None:
    """The same manifest, even republished, is delivered once."""
    world = World()
    alice, bob = await alice_and_bob(world)
    sent = await send_message(alice, "bob", "once")
    assert len((await receive_messages(bob)).delivered) == 1
    (wire,) = world.dns.values(sent.manifest_owner)
    await world.dns.publish(sent.manifest_owner, wire, 300)
    world.clock.advance(100)
    again = await receive_messages(bob)
    assert again.delivered == ()
    assert bob.replay.seen(alice.keys.ed25519_public, sent.msg_id, bob.now())


async def test_expired_message_is_refused() -> None:
    """Records still served after the manifest's exp are refused by the receiver."""
    world = World()
    alice, bob = await alice_and_bob(world)
    sent = await send_message(alice, "bob", "late", ttl=300)
    for owner in [sent.manifest_owner, *chunk_owners(world)]:
        for value in world.dns.values(owner):
            await world.dns.publish(owner, value, 3600)
    world.clock.advance(301)
    got = await receive_messages(bob)
    assert got.delivered == ()
    assert any("RecordExpired" in r.reason for r in got.rejected)


def chunk_owners(world: World) -> list[dns.name.Name]:
    return [dns.name.from_text(o) for o in world.dns.owners() if o.startswith("chunk-")]


async def test_tampered_manifest_is_refused() -> None:
    """A manifest with one flipped character does not verify; nothing is delivered."""
    world = World()
    alice, bob = await alice_and_bob(world)
    sent = await send_message(alice, "bob", "tamper me")
    (wire,) = world.dns.values(sent.manifest_owner)
    await world.dns.delete(sent.manifest_owner)
    cut = len("v=dmp1;t=manifest;d=") + 30
    flipped = wire[:cut] + ("A" if wire[cut] != "A" else "B") + wire[cut + 1 :]
    await world.dns.publish(sent.manifest_owner, flipped, 300)
    got = await receive_messages(bob)
    assert got.delivered == ()
    assert any("Signature" in r.reason or "Mismatch" in r.reason for r in got.rejected)


async def test_tampered_chunks_are_refused() -> None:
    """Chunks that do not match the manifest's hashes cannot rebuild the message."""
    world = World()
    alice, bob = await alice_and_bob(world)
    await send_message(alice, "bob", "x" * 600)
    for owner in chunk_owners(world):
        (value,) = world.dns.values(owner)
        await world.dns.delete(owner)
        await world.dns.publish(owner, value[:-8] + "AAAAAAA=", 300)
    got = await receive_messages(bob)
    assert got.delivered == ()
    assert any("NotEnoughShares" in r.reason for r in got.rejected)
    # untouched by the failure: it can still be retried later (not in the replay cache)
    assert bob.replay.entries(bob.now()) == []


async def test_unpinned_sender_goes_to_intro_queue_then_accept() -> None:
    """A first contact reached through a claim waits in the intro queue."""
    world = World()
    _alice, bob = await alice_and_bob(world)
    carol = world.user("carol", "carol.example")
    await publish_identity(carol)
    # carol learns bob's identity (explicit zone → claim to bob's zone)
    result = await send_message(carol, "bob@bob.example", "hello from carol")
    assert result.claim_zones == ("bob.example",)
    assert result.claims_sent == 1

    got = await receive_messages(bob)
    assert got.delivered == ()
    assert [(i.body, i.sender_spk, i.sender_zone) for i in got.queued] == [
        (b"hello from carol", carol.keys.ed25519_public, "carol.example")
    ]
    intro_id = got.queued[0].intro_id
    assert [i.intro_id for i in bob.intros.list()] == [intro_id]
    # not queued twice
    assert (await receive_messages(bob)).queued == ()
    taken = accept_intro(bob.intros, intro_id)
    assert taken.body == b"hello from carol"
    assert bob.intros.list() == []
    assert "carol" not in str(bob.config.contacts)


async def test_trust_intro_pins_sender_and_later_messages_arrive() -> None:
    """After ``intro trust`` the sender's next message is delivered via the claim."""
    world = World()
    _alice, bob = await alice_and_bob(world)
    carol = world.user("carol", "carol.example")
    await publish_identity(carol, advertise_v2=True)
    await send_message(carol, "bob@bob.example", "first")
    (intro,) = (await receive_messages(bob)).queued
    assert intro.sender_label == "carol@carol.example"  # bob advertises v2: envelope, verified
    _, contact_name = trust_intro(bob.intros, bob.config, intro.intro_id, label="carol")
    assert contact_name == "carol"
    pinned = bob.config.contacts["carol"]
    assert (pinned.spk, pinned.domain, pinned.pub) == (
        carol.keys.ed25519_public.hex(),
        "carol.example",
        "",
    )
    await send_message(carol, "bob@bob.example", "second")
    got = await receive_messages(bob)
    assert [(d.text, d.contact) for d in got.delivered] == [("second", "carol")]


async def test_block_intro_denylists_sender() -> None:
    """``intro block`` drops the message and ignores the sender from then on."""
    world = World()
    _alice, bob = await alice_and_bob(world)
    mallory = world.user("mallory", "mallory.example")
    await send_message(mallory, "bob@bob.example", "spam 1")
    (intro,) = (await receive_messages(bob)).queued
    block_intro(bob.intros, intro.intro_id, now=bob.now(), note="spam")
    assert bob.intros.is_blocked(mallory.keys.ed25519_public)
    assert [d.note for d in bob.intros.denylist()] == ["spam"]
    await send_message(mallory, "bob@bob.example", "spam 2")
    got = await receive_messages(bob)
    assert got.queued == ()
    assert got.delivered == ()
    assert bob.intros.list() == []


async def test_zone_bound_pins() -> None:
    """A pinned key is accepted in its own zone and ours, not in another contact's zone."""
    world = World()
    alice, bob = await alice_and_bob(world)
    dave = world.user("dave", "dave.example")
    pin(bob, "dave", dave)
    # alice's key, publishing into dave's zone (a zone bob walks)
    alice_in_dave = world.user("alice", "dave.example", keys=alice.keys, label="alice-in-dave")
    pin(alice_in_dave, "bob", bob, explicit=False)
    await send_message(alice_in_dave, "bob", "from the wrong zone")
    # alice's key, publishing into bob's own zone
    alice_in_bob = world.user("alice", "bob.example", keys=alice.keys, label="alice-in-bob")
    pin(alice_in_bob, "bob", bob, explicit=False)
    await send_message(alice_in_bob, "bob", "from your own zone")
    got = await receive_messages(bob)
    assert [(d.text, d.zone) for d in got.delivered] == [("from your own zone", "bob.example")]
    assert any("not pinned for dave.example" in r.reason for r in got.rejected)


async def test_no_pins_and_no_tofu_drops_everything() -> None:
    """With nobody pinned and TOFU off, the slot walk delivers nothing; with TOFU it does."""
    world = World()
    alice = world.user("alice", "shared.example")
    bob = world.user("bob", "shared.example")
    pin(alice, "bob", bob, explicit=False)
    await send_message(alice, "bob", "same zone")
    assert (await receive_messages(bob)).delivered == ()
    tofu = world.user("bob", "shared.example", keys=bob.keys, allow_tofu=True, label="bob-tofu")
    assert [d.text for d in (await receive_messages(tofu)).delivered] == ["same zone"]


async def test_claim_phases_and_providers() -> None:
    """Provider claims reach a receiver that polls no contact zone; --primary-only skips them."""
    world = World()
    bob = world.user("bob", "bob.example")  # bob pins nobody: phase 1 is skipped
    carol = world.user("carol", "carol.example")
    seed = bytes(range(32))
    now = int(world.clock.now())
    heartbeat = Heartbeat(
        endpoint="https://provider.example",
        operator_spk=ed25519_public_from_seed(seed),
        version="0.7.5",
        capabilities=CAP_CLAIM_PROVIDER,
        claim_provider_zone="provider.example",
        ts=now,
        exp=now + 86400,
    )
    await world.dns.publish(heartbeat_owner("seed.example"), sign_heartbeat(heartbeat, seed), 86400)
    for user in (bob, carol):
        user.provider_seeds = ("seed.example",)
    pin(carol, "bob", bob, explicit=False)
    sent = await send_message(carol, "bob", "via provider")
    assert sent.claim_zones == ("provider.example",)
    assert sent.claims_sent == 1
    assert world.dns.values(claim_owner(bob.keys.user_id, sent.slot, "provider.example"))

    assert (await receive_messages(bob, primary_only=True)).queued == ()
    got = await receive_messages(bob, skip_primary=True)
    assert [i.body for i in got.queued] == [b"via provider"]
    with pytest.raises(ValueError, match="mutually exclusive"):
        await receive_messages(bob, primary_only=True, skip_primary=True)


async def test_phase_one_reads_own_zone_claims_only_with_pins() -> None:
    """Own-zone claims are read once some contact is pinned."""
    world = World()
    bob = world.user("bob", "bob.example")
    carol = world.user("carol", "carol.example")
    await publish_identity(bob)
    await send_message(carol, "bob@bob.example", "knock knock")
    assert (await receive_messages(bob)).queued == ()  # nobody pinned: phase 1 skipped
    pin(bob, "alice", world.user("alice", "alice.example"))
    assert [i.body for i in (await receive_messages(bob)).queued] == [b"knock knock"]


async def test_claim_failures_do_not_fail_the_send() -> None:
    """An unreachable claim target is counted; chunks and manifest are still published."""
    world = World()
    alice, bob = await alice_and_bob(world)
    world.dns.make_unreachable("claim")
    sent = await send_message(alice, "bob", "claims down")
    assert sent.claims_sent == 0
    assert len(sent.claim_errors) == 1
    assert world.dns.values(sent.manifest_owner)
    world.dns.heal()
    assert [d.text for d in (await receive_messages(bob)).delivered] == ["claims down"]


async def test_send_fails_when_publishing_fails() -> None:
    """A chunk that cannot be published fails the send and no manifest appears."""
    world = World()
    alice, _bob = await alice_and_bob(world)
    world.dns.make_unreachable("publish")
    with pytest.raises(PeerUnreachable):
        await send_message(alice, "bob", "nope")
    assert not [o for o in world.dns.owners() if o.startswith("slot-")]


async def test_receive_raises_when_every_lookup_fails() -> None:
    """A receiver that reaches no resolver at all gets the transport error."""
    world = World()
    _alice, bob = await alice_and_bob(world)
    world.dns.make_unreachable("query")
    with pytest.raises(PeerUnreachable):
        await receive_messages(bob)


async def test_unknown_recipient() -> None:
    world = World()
    alice = world.user("alice", "alice.example")
    with pytest.raises(UnknownContact):
        await send_message(alice, "nobody", "hi")


async def drive(world: World, done: anyio.Event, max_steps: int = 10_000) -> None:
    """Advance virtual time one latency step whenever every task waits on the clock.

    (``SimClock.run_until_idle`` can stop early: a task-group child that just
    finished wakes its parent through a loop callback, a moment at which every
    task looks blocked and no timer is pending.)
    """
    for _ in range(max_steps):
        await anyio.wait_all_tasks_blocked()
        if done.is_set():
            return
        if world.clock.pending_timers:
            world.clock.advance(world.dns.query_latency_s)
        else:
            await anyio.lowlevel.checkpoint()
    raise AssertionError("the scenario did not finish")


async def test_receive_lookups_run_concurrently_and_bounded() -> None:
    """One recv keeps several lookups in flight, never more than the limiter allows."""
    world = World(query_latency_s=1.0)
    alice = world.user("alice", "alice.example")
    bob = world.user("bob", "bob.example")
    pin(alice, "bob", bob)
    pin(bob, "alice", alice)
    for i in range(3):
        pin(bob, f"friend{i}", world.user(f"f{i}", f"f{i}.example"))
    results = []
    done = anyio.Event()

    async def run() -> None:
        await send_message(alice, "bob", "in parallel")
        results.append(await receive_messages(bob))
        done.set()

    start = world.clock.now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await drive(world, done)
    (got,) = results
    assert [d.text for d in got.delivered] == ["in parallel"]
    assert world.dns.peak_in_flight == 16  # the limiter, fully used
    assert got.lookups >= 60
    # 60+ one-second lookups took far less than 60 virtual seconds
    assert world.clock.now() - start < got.lookups / 2


async def test_manifest_owner_is_in_sender_zone() -> None:
    world = World()
    alice, bob = await alice_and_bob(world)
    sent = await send_message(alice, "bob", "where")
    assert sent.manifest_owner == slot_owner(bob.keys.user_id, sent.slot, "alice.example")
    assert keys_for("alice@alice.example") == alice.keys


async def test_first_contacts_are_capped_per_receive() -> None:
    """Claims from many strangers are followed a bounded batch at a time."""
    world = World()
    _alice, bob = await alice_and_bob(world)
    for i in range(MAX_CLAIM_ZONES + 4):
        stranger = world.user(f"s{i}", f"s{i}.example")
        await send_message(stranger, "bob@bob.example", f"hello {i}")
    first = await receive_messages(bob)
    assert len(first.queued) == MAX_CLAIM_ZONES
    assert any("left for later" in r.reason for r in first.rejected)
    second = await receive_messages(bob)
    assert len(second.queued) == 4
    assert len({i.body for i in bob.intros.list()}) == MAX_CLAIM_ZONES + 4


async def test_two_unread_messages_in_one_slot_both_arrive() -> None:
    """11 unread messages fill 10 slots: one slot holds two manifests, all 11 arrive.

    (bob has no prekeys: this is about slots only; the sender appends to a
    slot's RRset, never replaces it.)
    """
    world = World()
    alice, bob = await alice_and_bob(world)
    sent = [await send_message(alice, "bob", f"message {i}") for i in range(11)]
    assert {s.prekey_id for s in sent} == {0}
    by_slot = {s.manifest_owner: len(world.dns.values(s.manifest_owner)) for s in sent}
    assert max(by_slot.values()) >= 2
    got = await receive_messages(bob)
    assert sorted(d.text for d in got.delivered) == sorted(f"message {i}" for i in range(11))


async def test_sender_never_reuses_a_prekey_of_its_pending_messages() -> None:
    """Our own unread manifests to bob name prekeys we skip; none left → the long-term key.

    A receiver consumes a prekey with the first message over it (the
    reference's deletes its secret there and then), so a second unread
    message over the same prekey would be lost at a reference receiver.
    """
    world = World()
    alice, bob = await alice_and_bob(world)
    refreshed = await refresh_prekeys(bob, count=3)
    sent = [await send_message(alice, "bob", f"message {i}") for i in range(5)]
    used = [s.prekey_id for s in sent]
    assert sorted(used[:3]) == sorted(refreshed.prekey_ids)
    assert used[3:] == [0, 0]
    got = await receive_messages(bob)
    assert sorted(d.text for d in got.delivered) == sorted(f"message {i}" for i in range(5))
    assert sorted(got.prekeys_consumed) == sorted(refreshed.prekey_ids)
    assert world.dns.values(prekey_owner("bob", "bob.example")) == []


async def test_a_manifest_not_signed_by_us_does_not_steer_the_prekey_choice() -> None:
    """A value anyone wrote at our slot for bob, naming bob's only prekey, is ignored."""
    world = World()
    alice, bob = await alice_and_bob(world)
    (only,) = (await refresh_prekeys(bob, count=1)).prekey_ids
    carol = keys_for("carol")
    now = alice.now()
    forged = SlotManifest(
        msg_id=bytes(16),
        sender_spk=carol.ed25519_public,
        recipient_id=bob.keys.user_id,
        total_chunks=1,
        data_chunks=1,
        prekey_id=only,
        ts=now,
        exp=now + 300,
        chunk_hashes=(bytes(32),),
    )
    owner = slot_owner(bob.keys.user_id, 0, "alice.example")
    await world.dns.publish(owner, sign_manifest(forged, carol.ed25519_seed), 300)
    sent = await send_message(alice, "bob", "over the one prekey")
    assert sent.prekey_id == only


async def test_messages_sharing_a_prekey_open_in_one_receive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender that picks one prekey twice (the reference may) loses nothing at our receiver.

    The prekey is consumed once and its record deleted once.
    """
    world = World()
    alice, bob = await alice_and_bob(world)
    (only,) = (await refresh_prekeys(bob, count=1)).prekey_ids
    # the reference's choice: uniformly from the published pool, our pending ones included
    monkeypatch.setattr(messaging, "_pending_prekey_ids", lambda *a: set())
    sent = [await send_message(alice, "bob", f"message {i}") for i in range(3)]
    assert [s.prekey_id for s in sent] == [only] * 3
    got = await receive_messages(bob)
    assert sorted(d.text for d in got.delivered) == ["message 0", "message 1", "message 2"]
    assert got.prekeys_consumed == (only,)
    assert got.prekey_deletes_failed == 0
    assert bob.prekeys.get(only) is None
    assert world.dns.values(prekey_owner("bob", "bob.example")) == []
    assert (await receive_messages(bob)).delivered == ()
