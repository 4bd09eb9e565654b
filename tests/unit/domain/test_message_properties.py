"""Properties of the message pipeline: manifest codec, erasure, RS parity, chunk wrap, send/open."""

from __future__ import annotations

import hashlib

import pytest
import reedsolo
from hypothesis import given, settings
from hypothesis import strategies as st

from dmp.domain.chunk import (
    chunk_txt,
    rs_parity,
    unwrap_block,
    unwrap_chunk_txt,
    wrap_block,
)
from dmp.domain.codec import b64decode_lenient, b64encode
from dmp.domain.crypto import IdentityKeys
from dmp.domain.erasure import SHARE_SIZE, erasure_decode, erasure_encode, erasure_params
from dmp.domain.errors import (
    BadRecordSignature,
    ChunkHashMismatch,
    DmpError,
    NotEnoughShares,
)
from dmp.domain.manifest import (
    MANIFEST_PREFIX,
    MAX_TOTAL_CHUNKS,
    SlotManifest,
    parse_manifest,
    sign_manifest,
)
from dmp.domain.message import (
    DMPV2_PREFIX,
    MessageHeader,
    build_message,
    decode_envelope,
    decode_header_json,
    decode_outer,
    encode_envelope,
    encode_header_json,
    encode_outer,
    open_message,
)

SEED = hashlib.sha256(b"properties/sender").digest()
SENDER = IdentityKeys.from_x25519_private(SEED)
RECIPIENT = IdentityKeys.from_x25519_private(hashlib.sha256(b"properties/recipient").digest())
RS = reedsolo.RSCodec(32)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def manifests(draw: st.DrawFn, *, max_n: int = 40) -> SlotManifest:
    n = draw(st.integers(1, max_n))
    hashes = draw(
        st.one_of(
            st.just(()),
            st.lists(st.binary(min_size=32, max_size=32), min_size=n, max_size=n).map(tuple),
        )
    )
    return SlotManifest(
        msg_id=draw(st.binary(min_size=16, max_size=16)),
        sender_spk=SENDER.ed25519_public,
        recipient_id=draw(st.binary(min_size=32, max_size=32)),
        total_chunks=n,
        data_chunks=draw(st.integers(1, n)),
        prekey_id=draw(u32),
        ts=draw(u64),
        exp=draw(u64),
        chunk_hashes=hashes,
    )


# -- manifest ----------------------------------------------------------------------


@settings(max_examples=60)
@given(manifests())
def test_manifest_round_trip(m: SlotManifest) -> None:
    wire = sign_manifest(m, SENDER.ed25519_seed)
    assert parse_manifest(wire) == m
    blob_len = 108 + 32 * len(m.chunk_hashes) + 64
    assert len(wire) == len(MANIFEST_PREFIX) + 4 * -(-blob_len // 3)


@settings(max_examples=60)
@given(manifests(max_n=8), st.data())
def test_manifest_bit_flip_rejected(m: SlotManifest, data: st.DataObject) -> None:
    blob = bytearray(
        b64decode_lenient(sign_manifest(m, SENDER.ed25519_seed)[len(MANIFEST_PREFIX) :])
    )
    bit = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DmpError):
        parse_manifest(MANIFEST_PREFIX + b64encode(bytes(blob)))


@settings(max_examples=20)
@given(manifests(max_n=4))
def test_manifest_signed_by_another_key_rejected(m: SlotManifest) -> None:
    wire = sign_manifest(m, RECIPIENT.ed25519_seed)
    with pytest.raises(BadRecordSignature):
        parse_manifest(wire)


def test_manifest_total_chunks_cap() -> None:
    m = SlotManifest(bytes(16), SENDER.ed25519_public, bytes(32), MAX_TOTAL_CHUNKS + 1, 1, 0, 0, 0)
    with pytest.raises(DmpError):
        sign_manifest(m, SENDER.ed25519_seed)


# -- erasure ------------------------------------------------------------------------


@settings(max_examples=40)
@given(st.binary(max_size=3000), st.data())
def test_erasure_decodes_from_any_k_subset(data: bytes, draw: st.DataObject) -> None:
    coded = erasure_encode(data)
    assert (coded.k, coded.n) == erasure_params(len(data))
    assert len(coded.shares) == coded.n
    assert all(len(s) == SHARE_SIZE for s in coded.shares)
    order = draw.draw(st.permutations(range(coded.n)))
    subset = order[: coded.k]
    assert erasure_decode({i: coded.shares[i] for i in subset}, coded.k, coded.n) == data
    more = order[: draw.draw(st.integers(coded.k, coded.n))]
    assert erasure_decode({i: coded.shares[i] for i in more}, coded.k, coded.n) == data
    with pytest.raises(NotEnoughShares):
        erasure_decode({i: coded.shares[i] for i in order[: coded.k - 1]}, coded.k, coded.n)


@given(st.integers(0, 30000))
def test_erasure_params_formula(length: int) -> None:
    k, n = erasure_params(length)
    assert k == max(1, -(-(length + 4) // 128))
    assert n - k == max(1, -(-(3 * k) // 10))
    assert (k - 1) * 128 < length + 4 <= k * 128 or k == 1


# -- Reed–Solomon and chunk wrap -----------------------------------------------------


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=223))
def test_fast_rs_parity_equals_reedsolo(message: bytes) -> None:
    assert rs_parity(message) == bytes(RS.encode(message))[len(message) :]


@settings(max_examples=100)
@given(st.binary(min_size=128, max_size=128))
def test_chunk_round_trip(block: bytes) -> None:
    wrapped = wrap_block(block)
    assert len(wrapped) == 168
    assert unwrap_block(wrapped) == block
    txt = chunk_txt(wrapped)
    assert unwrap_chunk_txt(txt, hashlib.sha256(wrapped).digest()) == block


@settings(max_examples=50)
@given(
    st.binary(min_size=128, max_size=128),
    st.lists(st.integers(8, 167), min_size=1, max_size=16, unique=True),
    st.data(),
)
def test_chunk_repairs_up_to_16_errors_like_reedsolo(
    block: bytes, positions: list[int], data: st.DataObject
) -> None:
    wrapped = bytearray(wrap_block(block))
    for p in positions:
        wrapped[p] ^= data.draw(st.integers(1, 255))
    assert unwrap_block(bytes(wrapped)) == block
    with pytest.raises(ChunkHashMismatch):
        unwrap_chunk_txt(chunk_txt(bytes(wrapped)), hashlib.sha256(wrap_block(block)).digest())


@settings(max_examples=50)
@given(st.binary(min_size=128, max_size=128), st.integers(0, 167), st.integers(1, 255))
def test_unwrap_agrees_with_reference_decoder(block: bytes, pos: int, delta: int) -> None:
    """Fast path or not, unwrap accepts exactly what reedsolo plus the checksum accepts."""
    wrapped = bytearray(wrap_block(block))
    wrapped[pos] ^= delta
    try:
        decoded = bytes(RS.decode(bytes(wrapped[8:]))[0])
        ref: bytes | None = (
            decoded if hashlib.sha256(decoded).digest()[:8] == bytes(wrapped[:8]) else None
        )
    except reedsolo.ReedSolomonError:
        ref = None
    try:
        got: bytes | None = unwrap_block(bytes(wrapped))
    except DmpError:
        got = None
    assert got == ref


# -- framing and the pipeline --------------------------------------------------------


@st.composite
def headers(draw: st.DrawFn) -> MessageHeader:
    return MessageHeader(
        msg_id=draw(st.binary(min_size=16, max_size=16)),
        sender=draw(st.binary(min_size=32, max_size=32)),
        recipient=draw(st.binary(min_size=32, max_size=32)),
        ts=draw(u64),
        ttl=draw(u32),
        total=draw(st.integers(0, 5)),
        chunk=draw(st.integers(0, 5)),
    )


@given(headers(), st.binary(max_size=200))
def test_header_and_outer_round_trip(header: MessageHeader, payload: bytes) -> None:
    header_json = encode_header_json(header)
    assert decode_header_json(header_json) == header
    outer = decode_outer(encode_outer(header_json, payload))
    assert (outer.header, outer.payload, outer.header_json) == (header, payload, header_json)


@given(
    st.binary(max_size=300),
    st.from_regex(r"[a-z][a-z0-9]{0,10}@[a-z]{1,10}\.example", fullmatch=True),
)
def test_envelope_round_trip(body: bytes, address: str) -> None:
    plaintext = encode_envelope(body, address)
    assert plaintext.startswith(DMPV2_PREFIX)
    assert decode_envelope(plaintext) == (body, address)
    assert decode_envelope(encode_envelope(body, None))[0] == body


@settings(max_examples=25)
@given(
    body=st.binary(max_size=2500),
    msg_id=st.binary(min_size=16, max_size=16),
    eph=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    with_envelope=st.booleans(),
    data=st.data(),
)
def test_build_then_open(
    body: bytes,
    msg_id: bytes,
    eph: bytes,
    nonce: bytes,
    with_envelope: bool,
    data: st.DataObject,
) -> None:
    now = 1_900_000_000
    out = build_message(
        sender=SENDER,
        sender_zone="alice.example",
        recipient_x25519_public=RECIPIENT.x25519_public,
        body=body,
        now=now,
        ttl=300,
        msg_id=msg_id,
        ephemeral_private=eph,
        nonce=nonce,
        prekey=None,
        envelope_from="alice@alice.example" if with_envelope else None,
    )
    assert parse_manifest(out.manifest_wire) == out.manifest
    kept = data.draw(st.permutations(range(out.n)))[: out.k]
    got = open_message(
        out.manifest,
        {i: [out.chunks[i].txt] for i in kept},
        recipient=RECIPIENT,
        prekey_private=None,
        now=now + 300,
    )
    assert got.body == body
    assert got.claimed_from == ("alice@alice.example" if with_envelope else None)
    assert (got.msg_id, got.ts, got.sender_spk, got.prekey_id) == (
        msg_id,
        now,
        SENDER.ed25519_public,
        0,
    )
