"""The client's rotation chain walk (wire.md §5.7): happy paths and every abort rule."""

from __future__ import annotations

import pytest

from dmp.domain import keys
from dmp.domain.errors import RecordError, RotationChainError
from dmp.domain.rotation import (
    Revocation,
    RevocationReason,
    Rotation,
    SubjectType,
    partition_rotation_rrset,
    sign_revocation,
    sign_rotation,
    walk_rotation_chain,
)

SUBJECT = "alice@example.com"
NOW = 1_900_000_000
SEEDS = [bytes([i]) * 32 for i in range(1, 10)]
K = [keys.ed25519_public_from_seed(s) for s in SEEDS]


def rot(i: int, j: int, seq: int, *, subject: str = SUBJECT) -> Rotation:
    """Rotation K[i] → K[j]."""
    return Rotation(SubjectType.USER, subject, K[i], K[j], seq, NOW, NOW + 86400)


def rev(i: int, *, subject: str = SUBJECT) -> Revocation:
    return Revocation(SubjectType.USER, subject, K[i], RevocationReason.COMPROMISE, NOW)


def chain(n: int) -> list[Rotation]:
    """K0 → K1 → … → Kn with seq 10, 20, …"""
    return [rot(i, i + 1, 10 * (i + 1)) for i in range(n)]


def test_no_rotation_keeps_the_pinned_key() -> None:
    assert walk_rotation_chain(K[0], [], []) == K[0]
    # rotations of unrelated keys do not move the pinned key
    assert walk_rotation_chain(K[0], [rot(5, 6, 1)], []) == K[0]


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_chains_of_one_to_four_hops(hops: int) -> None:
    assert walk_rotation_chain(K[0], chain(hops), []) == K[hops]


def test_walk_can_start_mid_chain() -> None:
    """A client pinned to K2 follows only the rest of the chain."""
    assert walk_rotation_chain(K[2], chain(4), []) == K[4]


def test_order_of_records_does_not_matter() -> None:
    assert walk_rotation_chain(K[0], list(reversed(chain(3))), []) == K[3]


def test_five_hops_exceed_the_default_bound() -> None:
    with pytest.raises(RotationChainError, match="longer than 4 hops"):
        walk_rotation_chain(K[0], chain(5), [])


def test_max_hops_is_configurable() -> None:
    assert walk_rotation_chain(K[0], chain(5), [], max_hops=5) == K[5]
    with pytest.raises(RotationChainError):
        walk_rotation_chain(K[0], chain(2), [], max_hops=1)
    assert walk_rotation_chain(K[0], chain(1), [], max_hops=1) == K[1]


def test_pinned_key_revoked() -> None:
    with pytest.raises(RotationChainError, match="pinned key is revoked"):
        walk_rotation_chain(K[0], chain(2), [rev(0)])
    # even with no rotation at all
    with pytest.raises(RotationChainError, match="pinned key is revoked"):
        walk_rotation_chain(K[0], [], [rev(0)])


@pytest.mark.parametrize("revoked", [1, 2, 3])
def test_key_on_the_chain_revoked(revoked: int) -> None:
    with pytest.raises(RotationChainError, match="revoked"):
        walk_rotation_chain(K[0], chain(3), [rev(revoked)])


def test_revocation_of_an_unrelated_key_is_ignored() -> None:
    assert walk_rotation_chain(K[0], chain(2), [rev(7)]) == K[2]


def test_fork_aborts_regardless_of_seq() -> None:
    with pytest.raises(RotationChainError, match="fork"):
        walk_rotation_chain(K[0], [rot(0, 1, 10), rot(0, 2, 99)], [])
    with pytest.raises(RotationChainError, match="fork"):
        walk_rotation_chain(K[0], [*chain(1), rot(1, 2, 20), rot(1, 3, 21)], [])


def test_duplicates_with_the_same_new_key_are_fine() -> None:
    """Re-published rotations to the same key: the lowest seq is the hop."""
    records = [rot(0, 1, 10), rot(0, 1, 10), rot(0, 1, 15), rot(1, 2, 12)]
    assert walk_rotation_chain(K[0], records, []) == K[2]
    # the hop from K0 has seq 10 (the lowest), so a next hop at seq 10 is a repeat
    with pytest.raises(RotationChainError, match="does not increase"):
        walk_rotation_chain(K[0], [rot(0, 1, 15), rot(0, 1, 10), rot(1, 2, 10)], [])


@pytest.mark.parametrize("next_seq", [5, 10])
def test_seq_must_strictly_increase(next_seq: int) -> None:
    with pytest.raises(RotationChainError, match="does not increase"):
        walk_rotation_chain(K[0], [rot(0, 1, 10), rot(1, 2, next_seq)], [])


def test_cycle_aborts() -> None:
    with pytest.raises(RotationChainError, match="cycles"):
        walk_rotation_chain(K[0], [rot(0, 1, 10), rot(1, 0, 20)], [])
    with pytest.raises(RotationChainError, match="cycles"):
        walk_rotation_chain(K[0], [rot(0, 1, 10), rot(1, 2, 20), rot(2, 1, 30)], [])


def test_chain_error_is_a_record_error() -> None:
    assert issubclass(RotationChainError, RecordError)


def test_subject_filter_drops_other_subjects() -> None:
    other = [rot(0, 2, 10, subject="bob@example.com")]
    assert walk_rotation_chain(K[0], [*other, *chain(1)], [], subject=SUBJECT) == K[1]
    # without the filter the foreign record makes a fork
    with pytest.raises(RotationChainError, match="fork"):
        walk_rotation_chain(K[0], [*other, *chain(1)], [])
    # a revocation about another subject is ignored with the filter
    foreign_rev = [rev(0, subject="bob@example.com")]
    assert walk_rotation_chain(K[0], chain(1), foreign_rev, subject="ALICE@example.com") == K[1]
    # and a subject type filter
    assert walk_rotation_chain(K[0], chain(1), [], subject_type=SubjectType.CLUSTER) == K[0]


def test_partition_and_walk_an_rrset() -> None:
    """From raw TXT values: verify, drop junk and foreign subjects, then walk."""
    wires = [
        sign_rotation(rot(0, 1, 10), SEEDS[0], SEEDS[1]),
        sign_rotation(rot(1, 2, 20), SEEDS[1], SEEDS[2]),
        sign_rotation(rot(0, 3, 5, subject="bob@example.com"), SEEDS[0], SEEDS[3]),
        sign_revocation(rev(4), SEEDS[4]),
        "v=dmp1;t=rotation;not-base64!",
        "v=dmp1;t=identity;d=AAAA",
        "unrelated text",
    ]
    rotations, revocations = partition_rotation_rrset(wires, subject=SUBJECT, now=NOW)
    assert [(r.old_spk, r.new_spk) for r in rotations] == [(K[0], K[1]), (K[1], K[2])]
    assert [r.revoked_spk for r in revocations] == [K[4]]
    assert walk_rotation_chain(K[0], rotations, revocations) == K[2]
    # after exp the rotations are dropped, so the pinned key stays current
    later = NOW + 86400 + 1
    rotations, revocations = partition_rotation_rrset(wires, subject=SUBJECT, now=later)
    assert rotations == ()
    assert walk_rotation_chain(K[0], rotations, revocations) == K[0]
    # a compromise revocation of the pinned key aborts trust
    wires.append(sign_revocation(rev(0), SEEDS[0]))
    rotations, revocations = partition_rotation_rrset(wires, subject=SUBJECT, now=NOW)
    with pytest.raises(RotationChainError):
        walk_rotation_chain(K[0], rotations, revocations)
