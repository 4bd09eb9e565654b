"""FakeDns: the in-memory TXT world behaves like a node seen from a client."""

from __future__ import annotations

import anyio
import dns.name
import dns.rcode
import pytest

from dmp.adapters.sim import FakeDns, SimClock
from dmp.ports.transport import (
    ClaimSender,
    PeerRejected,
    PeerUnreachable,
    RecordReader,
    RecordWriter,
)

pytestmark = pytest.mark.anyio

ZONE = dns.name.from_text("alice.test.")
OWNER = dns.name.from_text("slot-3.mb-0123456789ab.alice.test.")
OTHER = dns.name.from_text("chunk-0001-0123456789ab.alice.test.")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(start=1_000.0)


@pytest.fixture
def fake(clock: SimClock) -> FakeDns:
    return FakeDns(clock)


def test_implements_the_three_ports(fake: FakeDns) -> None:
    assert isinstance(fake, RecordReader)
    assert isinstance(fake, RecordWriter)
    assert isinstance(fake, ClaimSender)


async def test_publish_appends_and_query_returns_in_order(fake: FakeDns) -> None:
    """Values accumulate at an owner and come back in publication order."""
    await fake.publish(OWNER, "v=dmp1;a", 300)
    await fake.publish(OWNER, "v=dmp1;b", 300)

    assert await fake.query_txt(OWNER) == ["v=dmp1;a", "v=dmp1;b"]
    assert await fake.query_txt(OTHER) == []


async def test_owner_lookup_ignores_case(fake: FakeDns) -> None:
    await fake.publish(dns.name.from_text("Slot-3.MB-0123456789AB.Alice.Test."), "x", 60)

    assert await fake.query_txt(OWNER) == ["x"]
    assert [OWNER.to_text()] == fake.owners()


async def test_relative_owner_is_a_programming_error(fake: FakeDns) -> None:
    with pytest.raises(ValueError, match="absolute"):
        await fake.publish(dns.name.from_text("slot-1", origin=None), "x", 60)


async def test_values_expire_after_their_ttl(fake: FakeDns, clock: SimClock) -> None:
    """A value is visible until ``ttl`` seconds have passed, then gone."""
    await fake.publish(OWNER, "short", 10)
    await fake.publish(OWNER, "long", 100)
    clock.advance(9.5)

    assert await fake.query_txt(OWNER) == ["short", "long"]

    clock.advance(0.5)

    assert await fake.query_txt(OWNER) == ["long"]

    clock.advance(90)

    assert await fake.query_txt(OWNER) == []
    assert fake.owners() == []


async def test_republishing_refreshes_the_ttl_without_duplicating(
    fake: FakeDns, clock: SimClock
) -> None:
    await fake.publish(OWNER, "same", 10)
    clock.advance(8)
    await fake.publish(OWNER, "same", 10)
    clock.advance(8)

    assert await fake.query_txt(OWNER) == ["same"]
    assert fake.ttl_left(OWNER, "same") == 2.0


async def test_delete_one_and_delete_all(fake: FakeDns) -> None:
    for v in ("a", "b", "c"):
        await fake.publish(OWNER, v, 60)
    await fake.publish(OTHER, "z", 60)

    await fake.delete(OWNER, "b")

    assert await fake.query_txt(OWNER) == ["a", "c"]

    await fake.delete(OWNER, "absent")  # a no-op, like an RFC 2136 delete of a missing RR
    await fake.delete(OWNER)

    assert await fake.query_txt(OWNER) == []
    assert await fake.query_txt(OTHER) == ["z"]


async def test_caps_refuse_like_the_node(clock: SimClock) -> None:
    """Oversized values, TTLs over the cap and full RRsets are REFUSED."""
    fake = FakeDns(clock, max_value_bytes=10, max_ttl=100, max_values_per_owner=2)
    await fake.publish(OWNER, "0123456789", 100)

    with pytest.raises(PeerRejected) as too_long:
        await fake.publish(OWNER, "0123456789a", 100)
    with pytest.raises(PeerRejected) as ttl:
        await fake.publish(OWNER, "x", 101)
    await fake.publish(OWNER, "y", 1)
    with pytest.raises(PeerRejected) as full:
        await fake.publish(OWNER, "z", 1)

    assert {dns.rcode.REFUSED} == {too_long.value.rcode, ttl.value.rcode, full.value.rcode}
    # a full RRset still accepts a refresh of a value it holds, and frees up on expiry
    await fake.publish(OWNER, "y", 5)
    clock.advance(100)
    await fake.publish(OWNER, "z", 1)
    assert fake.values(OWNER) == ["z"]


async def test_claims_must_lie_under_their_zone(fake: FakeDns) -> None:
    claim_owner = dns.name.from_text("claim-7.mb-0123456789ab.alice.test.")
    await fake.send_claim(ZONE, claim_owner, "v=dmp1;t=claim;x", 300)

    assert await fake.query_txt(claim_owner) == ["v=dmp1;t=claim;x"]

    with pytest.raises(PeerRejected) as exc:
        await fake.send_claim(dns.name.from_text("bob.test."), claim_owner, "y", 300)
    assert exc.value.rcode == dns.rcode.NOTZONE
    assert fake.values(claim_owner) == ["v=dmp1;t=claim;x"]


async def test_injected_unreachable_hits_only_the_chosen_operations(fake: FakeDns) -> None:
    await fake.publish(OWNER, "kept", 60)
    fake.make_unreachable("publish", "delete")

    with pytest.raises(PeerUnreachable):
        await fake.publish(OWNER, "new", 60)
    with pytest.raises(PeerUnreachable):
        await fake.delete(OWNER)
    assert await fake.query_txt(OWNER) == ["kept"]

    fake.heal()
    await fake.publish(OWNER, "new", 60)
    assert fake.values(OWNER) == ["kept", "new"]


async def test_injected_rejection_can_target_one_owner(fake: FakeDns) -> None:
    fake.make_rejecting(owner=OTHER, rcode=dns.rcode.SERVFAIL)

    await fake.publish(OWNER, "fine", 60)
    with pytest.raises(PeerRejected) as exc:
        await fake.publish(OTHER, "nope", 60)
    with pytest.raises(PeerRejected):
        await fake.query_txt(OTHER)

    assert exc.value.rcode == dns.rcode.SERVFAIL
    assert fake.values(OTHER) == []
    assert await fake.query_txt(OWNER) == ["fine"]


async def test_unknown_operation_is_refused(fake: FakeDns) -> None:
    with pytest.raises(ValueError, match="unknown"):
        fake.make_unreachable("resolve")  # type: ignore[arg-type]


async def test_latency_exposes_concurrent_lookups(clock: SimClock) -> None:
    """With a per-query latency, concurrent lookups overlap and sequential ones do not."""
    fake = FakeDns(clock, query_latency_s=1.0)
    await fake.publish(OWNER, "x", 600)
    results: list[list[str]] = []

    async def look() -> None:
        results.append(await fake.query_txt(OWNER))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(look)
        await clock.run_until_idle()

    assert fake.peak_in_flight == 5
    assert results == [["x"]] * 5
    assert clock.now() == 1_001.0

    sequential = FakeDns(clock, query_latency_s=1.0)

    async def in_turn() -> None:
        for _ in range(3):
            await sequential.query_txt(OWNER)

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_turn)
        await clock.run_until_idle()

    assert sequential.peak_in_flight == 1
    assert sequential.queries == 3
