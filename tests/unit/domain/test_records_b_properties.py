"""Properties of the cluster, bootstrap, rotation and revocation codecs (Hypothesis).

For each type: decoding what was encoded gives the value back, and flipping
any single bit of the signed blob (body or signature) makes verification fail
with a :class:`DmpError`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dmp.domain import keys
from dmp.domain.bootstrap import (
    BOOTSTRAP_PREFIX,
    BootstrapEntry,
    BootstrapRecord,
    decode_bootstrap_body,
    sign_bootstrap,
    verify_bootstrap,
)
from dmp.domain.cluster import (
    CLUSTER_PREFIX,
    ClusterManifest,
    ClusterNode,
    decode_cluster_body,
    sign_cluster,
    verify_cluster,
)
from dmp.domain.codec import FIVE_YEARS_S
from dmp.domain.errors import DmpError
from dmp.domain.rotation import (
    REVOCATION_PREFIX,
    ROTATION_PREFIX,
    Revocation,
    RevocationReason,
    Rotation,
    SubjectType,
    decode_revocation_body,
    decode_rotation_body,
    sign_revocation,
    sign_rotation,
    verify_revocation,
    verify_rotation,
)

SETTINGS = settings(max_examples=50, deadline=None)

seeds = st.binary(min_size=32, max_size=32)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
times = st.integers(min_value=0, max_value=1 << 40)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,14}[A-Za-z0-9])?", fullmatch=True)
dns_names = st.lists(labels, min_size=1, max_size=3).map(".".join)
maybe_dotted = st.tuples(dns_names, st.booleans()).map(lambda t: t[0] + ("." if t[1] else ""))


def flip_bit(wire: str, prefix: str, bit: int) -> str:
    blob = bytearray(base64.b64decode(wire[len(prefix) :]))
    blob[(bit // 8) % len(blob)] ^= 1 << (bit % 8)
    return prefix + base64.b64encode(bytes(blob)).decode("ascii")


def assert_rejected(verify: Callable[[], Any]) -> None:
    try:
        verify()
    except DmpError:
        return
    raise AssertionError("a bit-flipped record verified")


# -- cluster ---------------------------------------------------------------------

nodes = st.builds(
    ClusterNode,
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16),
    st.text(min_size=1, max_size=20),
    st.none() | st.text(min_size=1, max_size=16),
)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[ClusterManifest, bytes, int]:
    seed = draw(seeds)
    exp = draw(times)
    manifest = ClusterManifest(
        draw(maybe_dotted),
        draw(u64),
        exp,
        keys.ed25519_public_from_seed(seed),
        draw(st.lists(nodes, min_size=1, max_size=3, unique_by=lambda n: n.node_id)),
    )
    now = exp - draw(st.integers(min_value=0, max_value=FIVE_YEARS_S))
    return manifest, seed, now


@SETTINGS
@given(clusters())
def test_cluster_round_trip(case: tuple[ClusterManifest, bytes, int]) -> None:
    manifest, seed, now = case
    assert decode_cluster_body(manifest.body()) == manifest
    wire = sign_cluster(manifest, seed)
    got = verify_cluster(
        wire, manifest.operator_spk, now=now, expected_cluster_name=manifest.cluster_name.upper()
    )
    assert got == manifest


@SETTINGS
@given(clusters(), st.integers(min_value=0))
def test_cluster_bit_flip_is_rejected(case: tuple[ClusterManifest, bytes, int], bit: int) -> None:
    manifest, seed, now = case
    bad = flip_bit(sign_cluster(manifest, seed), CLUSTER_PREFIX, bit)
    assert_rejected(lambda: verify_cluster(bad, manifest.operator_spk, now=now))


# -- bootstrap -------------------------------------------------------------------

entries = st.builds(
    BootstrapEntry,
    st.integers(min_value=0, max_value=0xFFFF),
    maybe_dotted,
    st.binary(min_size=32, max_size=32),
)


@st.composite
def bootstraps(draw: st.DrawFn) -> tuple[BootstrapRecord, bytes, int]:
    seed = draw(seeds)
    exp = draw(times)
    record = BootstrapRecord(
        draw(maybe_dotted),
        draw(u64),
        exp,
        keys.ed25519_public_from_seed(seed),
        draw(
            st.lists(
                entries,
                min_size=1,
                max_size=4,
                unique_by=lambda e: (e.priority, e.base_domain.casefold()),
            )
        ),
    )
    now = exp - draw(st.integers(min_value=0, max_value=FIVE_YEARS_S))
    return record, seed, now


@SETTINGS
@given(bootstraps())
def test_bootstrap_round_trip(case: tuple[BootstrapRecord, bytes, int]) -> None:
    record, seed, now = case
    assert [e.priority for e in record.entries] == sorted(e.priority for e in record.entries)
    assert decode_bootstrap_body(record.body()) == record
    got = verify_bootstrap(
        sign_bootstrap(record, seed),
        record.signer_spk,
        now=now,
        expected_user_domain=record.user_domain + ".",
    )
    assert got == record


@SETTINGS
@given(bootstraps(), st.integers(min_value=0))
def test_bootstrap_bit_flip_is_rejected(case: tuple[BootstrapRecord, bytes, int], bit: int) -> None:
    record, seed, now = case
    bad = flip_bit(sign_bootstrap(record, seed), BOOTSTRAP_PREFIX, bit)
    assert_rejected(lambda: verify_bootstrap(bad, record.signer_spk, now=now))


# -- rotation and revocation --------------------------------------------------------

user_subjects = st.tuples(st.text(min_size=1, max_size=40), dns_names).map("@".join)


@st.composite
def subjects(draw: st.DrawFn) -> tuple[SubjectType, str]:
    subject_type = draw(st.sampled_from(SubjectType))
    if subject_type == SubjectType.USER:
        return subject_type, draw(user_subjects)
    return subject_type, draw(dns_names)


@st.composite
def rotations(draw: st.DrawFn) -> tuple[Rotation, bytes, bytes, int]:
    old_seed, new_seed = draw(seeds), draw(seeds)
    old_spk = keys.ed25519_public_from_seed(old_seed)
    new_spk = keys.ed25519_public_from_seed(new_seed)
    assume(old_spk != new_spk)
    subject_type, subject = draw(subjects())
    exp = draw(times)
    rotation = Rotation(subject_type, subject, old_spk, new_spk, draw(u64), draw(u64), exp)
    now = exp - draw(st.integers(min_value=0, max_value=FIVE_YEARS_S))
    return rotation, old_seed, new_seed, now


@SETTINGS
@given(rotations())
def test_rotation_round_trip(case: tuple[Rotation, bytes, bytes, int]) -> None:
    rotation, old_seed, new_seed, now = case
    assert decode_rotation_body(rotation.body()) == rotation
    wire = sign_rotation(rotation, old_seed, new_seed)
    assert verify_rotation(wire, rotation.old_spk, rotation.subject, now=now) == rotation


@SETTINGS
@given(rotations(), st.integers(min_value=0))
def test_rotation_bit_flip_is_rejected(case: tuple[Rotation, bytes, bytes, int], bit: int) -> None:
    rotation, old_seed, new_seed, now = case
    bad = flip_bit(sign_rotation(rotation, old_seed, new_seed), ROTATION_PREFIX, bit)
    assert_rejected(lambda: verify_rotation(bad, None, None, now=now))


@st.composite
def revocations(draw: st.DrawFn) -> tuple[Revocation, bytes]:
    seed = draw(seeds)
    subject_type, subject = draw(subjects())
    revocation = Revocation(
        subject_type,
        subject,
        keys.ed25519_public_from_seed(seed),
        draw(st.sampled_from(RevocationReason)),
        draw(u64),
    )
    return revocation, seed


@SETTINGS
@given(revocations(), st.integers(min_value=-300, max_value=1 << 40))
def test_revocation_round_trip(case: tuple[Revocation, bytes], age: int) -> None:
    revocation, seed = case
    assert decode_revocation_body(revocation.body()) == revocation
    wire = sign_revocation(revocation, seed)
    now = revocation.ts + age
    got = verify_revocation(wire, revocation.revoked_spk, revocation.subject, now=now)
    assert got == revocation


@SETTINGS
@given(revocations(), st.integers(min_value=0))
def test_revocation_bit_flip_is_rejected(case: tuple[Revocation, bytes], bit: int) -> None:
    revocation, seed = case
    bad = flip_bit(sign_revocation(revocation, seed), REVOCATION_PREFIX, bit)
    assert_rejected(lambda: verify_revocation(bad, None, None, now=revocation.ts))
