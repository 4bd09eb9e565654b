"""Properties of the identity, prekey, claim and heartbeat codecs, and claim-provider selection.

For each type: ``verify(sign(x)) == x`` for generated valid values, and any
single bit flipped in the decoded blob (re-encoded as clean base64) is refused
with a :class:`DmpError`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from dmp.domain.claim import CLAIM_PREFIX, MAX_CLAIM_DOMAIN_LEN, Claim, sign_claim, verify_claim
from dmp.domain.codec import THIRTY_DAYS_S
from dmp.domain.errors import DmpError, MalformedRecord
from dmp.domain.heartbeat import (
    CAP_CLAIM_PROVIDER,
    HEARTBEAT_PREFIX,
    Heartbeat,
    select_providers,
    sign_heartbeat,
    validate_endpoint,
    verify_heartbeat,
)
from dmp.domain.identity import IDENTITY_PREFIX, IdentityRecord, sign_identity, verify_identity
from dmp.domain.keys import ed25519_public_from_seed
from dmp.domain.prekey import PREKEY_PREFIX, Prekey, sign_prekey, verify_prekey

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)
U64_MAX = (1 << 64) - 1

seeds = st.binary(min_size=32, max_size=32)
keys32 = st.binary(min_size=32, max_size=32)


def flip_bit(wire: str, prefix: str, bit: int) -> str:
    """The wire with one bit of its decoded blob flipped, re-encoded as clean base64."""
    blob = bytearray(base64.b64decode(wire[len(prefix) :]))
    blob[(bit // 8) % len(blob)] ^= 1 << (bit % 8)
    return prefix + base64.b64encode(bytes(blob)).decode("ascii")


def assert_every_flip_fails(wire: str, prefix: str, bit: int, verify: Callable[[str], Any]) -> None:
    flipped = flip_bit(wire, prefix, bit)
    assert flipped != wire
    with pytest.raises(DmpError):
        verify(flipped)


# -- identity -----------------------------------------------------------------

usernames = st.one_of(
    st.text(min_size=1, max_size=16),  # at most 64 UTF-8 bytes
    st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=1, max_size=64),
)
versions = st.sets(st.integers(0, 255), min_size=1, max_size=8).map(lambda s: tuple(sorted(s)))


@st.composite
def identities(draw: st.DrawFn) -> tuple[IdentityRecord, bytes]:
    seed = draw(seeds)
    record = IdentityRecord(
        username=draw(usernames),
        x25519_public=draw(keys32),
        ed25519_public=ed25519_public_from_seed(seed),
        ts=draw(st.integers(0, U64_MAX)),
        versions=draw(versions),
    )
    return record, seed


@PROPERTY_SETTINGS
@given(identities())
def test_identity_round_trip(drawn: tuple[IdentityRecord, bytes]) -> None:
    """An identity record verifies back to itself."""
    record, seed = drawn
    assert verify_identity(sign_identity(record, seed)) == record


@PROPERTY_SETTINGS
@given(identities(), st.integers(0, 1 << 16))
def test_identity_bit_flip_is_refused(drawn: tuple[IdentityRecord, bytes], bit: int) -> None:
    """Any single flipped bit in an identity blob is refused."""
    record, seed = drawn
    wire = sign_identity(record, seed)
    assert_every_flip_fails(wire, IDENTITY_PREFIX, bit, verify_identity)


# -- prekey -------------------------------------------------------------------


@st.composite
def prekeys(draw: st.DrawFn) -> tuple[Prekey, bytes, int]:
    seed = draw(seeds)
    exp = draw(st.integers(0, U64_MAX))
    record = Prekey(
        prekey_id=draw(st.integers(1, (1 << 32) - 1)),
        x25519_public=draw(keys32),
        exp=exp,
    )
    now = exp - draw(st.integers(0, THIRTY_DAYS_S))
    return record, seed, now


@PROPERTY_SETTINGS
@given(prekeys())
def test_prekey_round_trip(drawn: tuple[Prekey, bytes, int]) -> None:
    """A prekey verifies back to itself under its signer's key."""
    record, seed, now = drawn
    spk = ed25519_public_from_seed(seed)
    assert verify_prekey(sign_prekey(record, seed), spk, now=now) == record


@PROPERTY_SETTINGS
@given(prekeys(), st.integers(0, 1 << 16))
def test_prekey_bit_flip_is_refused(drawn: tuple[Prekey, bytes, int], bit: int) -> None:
    """Any single flipped bit in a prekey blob is refused."""
    record, seed, now = drawn
    spk = ed25519_public_from_seed(seed)
    wire = sign_prekey(record, seed)
    assert_every_flip_fails(wire, PREKEY_PREFIX, bit, lambda w: verify_prekey(w, spk, now=now))


# -- claim --------------------------------------------------------------------

claim_domains = st.text(
    alphabet=st.characters(
        min_codepoint=0x21, exclude_characters="\x7f", exclude_categories=["Cs"]
    ),
    min_size=1,
    max_size=MAX_CLAIM_DOMAIN_LEN,
).filter(lambda d: len(d.encode("utf-8")) <= MAX_CLAIM_DOMAIN_LEN)


@st.composite
def claims(draw: st.DrawFn) -> tuple[Claim, bytes, int]:
    seed = draw(seeds)
    ts = draw(st.integers(0, U64_MAX - 1))
    exp = draw(st.integers(ts + 1, min(U64_MAX, ts + 2 * THIRTY_DAYS_S)))
    # now < exp, exp - now ≤ 30 days, ts - now ≤ 300
    now = exp - draw(st.integers(1, min(THIRTY_DAYS_S, exp - ts + 300)))
    record = Claim(
        msg_id=draw(st.binary(min_size=16, max_size=16)),
        sender_spk=ed25519_public_from_seed(seed),
        sender_mailbox_domain=draw(claim_domains),
        slot=draw(st.integers(0, 9)),
        ts=ts,
        exp=exp,
    )
    return record, seed, now


@PROPERTY_SETTINGS
@given(claims())
def test_claim_round_trip(drawn: tuple[Claim, bytes, int]) -> None:
    """A claim verifies back to itself."""
    record, seed, now = drawn
    assert verify_claim(sign_claim(record, seed), now=now) == record


@PROPERTY_SETTINGS
@given(claims(), st.integers(0, 1 << 16))
def test_claim_bit_flip_is_refused(drawn: tuple[Claim, bytes, int], bit: int) -> None:
    """Any single flipped bit in a claim blob is refused."""
    record, seed, now = drawn
    wire = sign_claim(record, seed)
    assert_every_flip_fails(wire, CLAIM_PREFIX, bit, lambda w: verify_claim(w, now=now))


# -- heartbeat ----------------------------------------------------------------

_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
host_names = (
    st.lists(st.text(alphabet=_LABEL_CHARS, min_size=1, max_size=20), min_size=1, max_size=4)
    .map(".".join)
    .filter(
        lambda host: host.lower() not in {"localhost", "localhost.localdomain", "ip6-localhost"}
    )
)
public_ips = st.sampled_from(["8.8.8.8", "1.1.1.1", "[2606:4700:4700::1111]", "[2001:4860::8888]"])


@st.composite
def endpoints(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.one_of(host_names, public_ips))
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    url = f"{scheme}://{host}{port}"
    try:
        validate_endpoint(url)
    except MalformedRecord:  # e.g. an all-digit host that parses as a private IPv4
        reject()
    return url


printable_ascii = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@st.composite
def heartbeats(draw: st.DrawFn) -> tuple[Heartbeat, bytes, int]:
    seed = draw(seeds)
    magic_version = draw(st.sampled_from([3, 2]))
    zone = draw(st.text(alphabet=printable_ascii, max_size=64)) if magic_version == 3 else ""
    ts = draw(st.integers(300, 1 << 62))
    now = ts + draw(st.integers(-300, 300))
    low = max(ts, now) + 1
    exp = draw(st.integers(low, now + THIRTY_DAYS_S))
    record = Heartbeat(
        endpoint=draw(endpoints()),
        operator_spk=ed25519_public_from_seed(seed),
        version=draw(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=32)),
        capabilities=draw(st.integers(0, 0xFFFF)),
        claim_provider_zone=zone,
        ts=ts,
        exp=exp,
        magic_version=magic_version,
    )
    return record, seed, now


@PROPERTY_SETTINGS
@given(heartbeats())
def test_heartbeat_round_trip(drawn: tuple[Heartbeat, bytes, int]) -> None:
    """A heartbeat (DMPHB03 or legacy DMPHB02) verifies back to itself."""
    record, seed, now = drawn
    assert verify_heartbeat(sign_heartbeat(record, seed), now=now) == record


@PROPERTY_SETTINGS
@given(heartbeats(), st.integers(0, 1 << 16))
def test_heartbeat_bit_flip_is_refused(drawn: tuple[Heartbeat, bytes, int], bit: int) -> None:
    """Any single flipped bit in a heartbeat blob is refused."""
    record, seed, now = drawn
    wire = sign_heartbeat(record, seed)
    assert_every_flip_fails(wire, HEARTBEAT_PREFIX, bit, lambda w: verify_heartbeat(w, now=now))


# -- endpoint validation (examples) -------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://dmp.example.com",
        "http://n3.example:8053",
        "https://[2606:4700:4700::1111]:8443",
        "https://8.8.8.8",
        "HTTPS://Dmp.Example.COM",
    ],
)
def test_validate_endpoint_accepts(url: str) -> None:
    """Public http(s) URLs without a path are valid endpoints."""
    assert validate_endpoint(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "dmp.example.com",
        "ftp://dmp.example.com",
        "https://dmp.example.com/",
        "https://dmp.example.com/v1",
        "https://dmp.example.com?x=1",
        "https://dmp.example.com?",
        "https://dmp.example.com#top",
        "https://user@dmp.example.com",
        "https://user:pw@dmp.example.com",
        "https://",
        "https://:443",
        "https://localhost",
        "https://LOCALHOST:8443",
        "https://localhost.localdomain",
        "https://ip6-localhost",
        "https://127.0.0.1",
        "https://10.1.2.3",
        "https://192.168.0.1",
        "https://169.254.1.1",
        "https://224.0.0.1",
        "https://0.0.0.0",
        "https://240.0.0.1",
        "https://[::1]",
        "https://[fe80::1]",
        "https://[fc00::1]",
        "https://[::ffff:10.0.0.1]",
        "https://dmp.example.com:99999",
        "https://dmp.example.com:port",
        "https://dmp example.com",
        "https://dmp.example.com\n",
        "https://dmp.exämple.com",
    ],
)
def test_validate_endpoint_refuses(url: str) -> None:
    """Non-http(s), paths, userinfo, localhost and non-public IPs are refused."""
    with pytest.raises(MalformedRecord):
        validate_endpoint(url)


# -- claim-provider selection (wire.md §5.10) ----------------------------------

_OPERATORS = [bytes([i]) * 32 for i in range(1, 6)]


@st.composite
def provider_pools(draw: st.DrawFn) -> list[Heartbeat]:
    pool = []
    for _ in range(draw(st.integers(0, 12))):
        zone = draw(st.sampled_from(["", "claims.example", "other.example"]))
        pool.append(
            Heartbeat(
                endpoint=draw(st.sampled_from(["https://a.example", "https://b.example:8443"])),
                operator_spk=draw(st.sampled_from(_OPERATORS)),
                version="0.7.5",
                capabilities=draw(st.integers(0, 3)),
                claim_provider_zone=zone,
                ts=draw(st.integers(0, 20)),
                exp=100,
            )
        )
    return pool


@PROPERTY_SETTINGS
@given(provider_pools(), st.integers(0, 6))
def test_select_providers_laws(pool: list[Heartbeat], limit: int) -> None:
    """Selection keeps CAP holders, one newest per operator, newest first, at most ``limit``."""
    chosen = select_providers(pool, limit=limit)
    holders = [hb for hb in pool if hb.capabilities & CAP_CLAIM_PROVIDER]
    operators = {hb.operator_spk for hb in holders}
    assert len(chosen) == min(limit, len(operators))
    assert len({hb.operator_spk for hb in chosen}) == len(chosen)
    for hb in chosen:
        assert hb in holders
        assert hb.ts == max(o.ts for o in holders if o.operator_spk == hb.operator_spk)
        assert hb.provider_zone == (
            hb.claim_provider_zone or hb.endpoint.split("//")[1].split(":")[0]
        )
    assert [hb.ts for hb in chosen] == sorted((hb.ts for hb in chosen), reverse=True)
    unchosen_best = [
        max(o.ts for o in holders if o.operator_spk == op)
        for op in operators - {hb.operator_spk for hb in chosen}
    ]
    if chosen and unchosen_best:
        assert min(hb.ts for hb in chosen) >= max(unchosen_best)


def test_select_providers_example() -> None:
    """The newest heartbeat per operator wins; non-providers are skipped; default limit 3."""

    def hb(op: int, ts: int, caps: int = CAP_CLAIM_PROVIDER, zone: str = "z.example") -> Heartbeat:
        return Heartbeat(f"https://n{op}.example", bytes([op]) * 32, "1", caps, zone, ts, 1000)

    old_a, new_a = hb(1, 10, zone="old.example"), hb(1, 20, zone="new.example")
    pool = [old_a, hb(2, 15), new_a, hb(3, 30, caps=0), hb(4, 5, zone=""), hb(5, 1)]
    chosen = select_providers(pool)
    assert chosen == [new_a, hb(2, 15), hb(4, 5, zone="")]
    assert [c.provider_zone for c in chosen] == ["new.example", "z.example", "n4.example"]
    assert select_providers(pool, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        select_providers(pool, limit=-1)
