"""message.json: full sends from alice to bob, delivery to bob, refused deliveries, DMPv2 envelope."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dmp.domain.crypto import EncryptedMessage, IdentityKeys, derive_message_key, x25519
from dmp.domain.errors import (
    BadAddress,
    DecryptionFailed,
    DmpError,
    MessageExpired,
    NotEnoughShares,
    RecordExpired,
    RecordMismatch,
)
from dmp.domain.identity import verify_identity
from dmp.domain.manifest import SlotManifest, parse_manifest, verify_manifest
from dmp.domain.message import (
    OutgoingMessage,
    ReceivedMessage,
    build_aad,
    build_message,
    canonicalize_address,
    check_sender_pinned,
    choose_prekey,
    chunk_owners,
    decode_envelope,
    decode_header_json,
    decode_outer,
    encode_envelope,
    open_message,
)
from dmp.domain.names import chunk_owner, identity_owner, msg_key, prekey_owner
from dmp.domain.prekey import verify_prekey
from tests.vectors import h, load, params

V = load("message.json")
MESSAGES = {m["id"]: m for m in V["messages"]}


def keys_of(party: dict[str, Any]) -> IdentityKeys:
    keys = IdentityKeys.from_x25519_private(h(party["identity"]["x25519_private"]))
    assert keys.ed25519_public.hex() == party["identity"]["ed25519_public"]
    assert keys.user_id.hex() == party["identity"]["user_id"]
    return keys


def owner_text(owner: Any) -> str:
    text: str = owner.to_text(omit_final_dot=True)
    return text


# -- send -----------------------------------------------------------------------


def send(m: dict[str, Any]) -> OutgoingMessage:
    """What alice's client does, from the published records and the random draws."""
    alice, bob, s = m["alice"], m["bob"], m["send"]
    alice_keys = keys_of(alice)
    dns = m["dns_before_send"]
    # Bob's identity record decides the envelope; alice has pinned bob's keys.
    bob_owner = owner_text(identity_owner(bob["username"], bob["zone"]))
    (bob_record,) = [verify_identity(w) for w in dns[bob_owner]]
    assert bob_record.ed25519_public.hex() == bob["identity"]["ed25519_public"]
    assert list(bob_record.versions) == bob["identity_record"]["versions"]
    envelope_from = f"{alice['username']}@{alice['zone']}" if 2 in bob_record.versions else None
    assert envelope_from == s["envelope_from"]
    # Prekeys that verify under bob's pinned key and are unexpired; the draw is given.
    pool = dns.get(owner_text(prekey_owner(bob["username"], bob["zone"])), [])
    prekeys = [verify_prekey(w, bob_record.ed25519_public, now=m["sent_at"]) for w in pool]
    live = [p for p in prekeys if p.exp >= m["sent_at"]]
    if s["prekey_id"] == 0:
        assert live == []
        prekey = None
    else:
        (chosen,) = [p for p in live if p.prekey_id == s["prekey_id"]]
        prekey = (chosen.prekey_id, chosen.x25519_public)
    return build_message(
        sender=alice_keys,
        sender_zone=alice["zone"],
        recipient_x25519_public=bob_record.x25519_public,
        body=m["body_utf8"].encode("utf-8"),
        now=m["sent_at"],
        ttl=s["ttl"],
        msg_id=h(s["random"]["msg_id"]),
        ephemeral_private=h(s["random"]["ephemeral_x25519_private"]),
        nonce=h(s["random"]["nonce"]),
        prekey=prekey,
        envelope_from=envelope_from,
    )


@pytest.mark.parametrize("m", params(V["messages"]))
def test_send_intermediates(m: dict[str, Any]) -> None:
    s = m["send"]
    out = send(m)
    assert out.prekey_id == s["prekey_id"]
    assert out.ecdh_public.hex() == s["ecdh_public"]
    assert out.recipient_id.hex() == s["recipient_id"]
    assert out.header_json.decode() == s["header_json"]
    assert build_aad(out.header, 0)[:-4].decode() == s["aad_json"]
    assert out.aad.hex() == s["aad"]
    assert out.plaintext.hex() == s["plaintext"]
    assert out.plaintext.startswith(b"DMPV2:") == s["plaintext_is_v2_envelope"]
    assert out.encrypted.ephemeral_public.hex() == s["ephemeral_x25519_public"]
    shared = x25519(h(s["random"]["ephemeral_x25519_private"]), out.ecdh_public)
    assert shared.hex() == s["shared_secret"]
    assert derive_message_key(shared).hex() == s["aead_key"]
    assert out.encrypted.ciphertext_and_tag.hex() == s["ciphertext_and_tag"]
    assert out.encrypted.encode().hex() == s["encrypted_message"]
    assert out.outer.hex() == s["outer_message"]
    assert len(out.outer) == s["outer_len"]
    assert (out.k, out.n) == (s["erasure"]["k"], s["erasure"]["n"])
    assert out.msg_key == s["msg_key"]
    assert out.ttl == s["ttl"]


@pytest.mark.parametrize("m", params(V["messages"]))
def test_send_chunks_and_manifest(m: dict[str, Any]) -> None:
    s = m["send"]
    out = send(m)
    assert len(out.chunks) == len(s["chunks"])
    for got, want in zip(out.chunks, s["chunks"], strict=True):
        assert got.index == want["index"]
        assert owner_text(got.owner) == want["owner"]
        assert got.share.hex() == want["share"]
        assert got.wrapped.hex() == want["wrapped"]
        assert got.sha256.hex() == want["sha256"]
        assert got.txt == want["txt"]
    man = s["manifest"]
    assert owner_text(out.manifest_owner) == man["owner"]
    assert out.slot == man["slot"]
    assert out.manifest.body().hex() == man["body"]
    assert out.manifest_wire == man["wire"]
    assert "".join(man["txt_strings"]) == man["wire"]
    assert out.manifest == SlotManifest(
        msg_id=h(man["msg_id"]),
        sender_spk=h(man["sender_spk"]),
        recipient_id=h(man["recipient_id"]),
        total_chunks=man["total_chunks"],
        data_chunks=man["data_chunks"],
        prekey_id=man["prekey_id"],
        ts=man["ts"],
        exp=man["exp"],
        chunk_hashes=tuple(h(x) for x in man["chunk_hashes"]),
    )
    published: dict[str, list[str]] = {owner_text(c.owner): [c.txt] for c in out.chunks}
    published[owner_text(out.manifest_owner)] = [out.manifest_wire]
    assert published == m["published_by_send"]


@pytest.mark.parametrize("m", params(V["messages"]))
def test_outer_and_header_parse(m: dict[str, Any]) -> None:
    s = m["send"]
    outer = decode_outer(h(s["outer_message"]))
    assert outer.header_json.decode() == s["header_json"]
    assert outer.payload.hex() == s["encrypted_message"]
    assert decode_header_json(outer.header_json) == send(m).header
    assert build_aad(outer.header, s["prekey_id"]).hex() == s["aad"]
    assert EncryptedMessage.decode(outer.payload).nonce.hex() == s["random"]["nonce"]


# -- receive --------------------------------------------------------------------


def chunk_values(
    manifest: SlotManifest, zone: str, served: dict[str, list[str]]
) -> dict[int, list[str]]:
    """The TXT values at each chunk owner the manifest points to."""
    owners = chunk_owners(manifest, zone)
    assert owners[0] == chunk_owner(
        0, msg_key(manifest.msg_id, manifest.recipient_id, manifest.sender_spk), zone
    )
    return {i: served.get(owner_text(owner), []) for i, owner in enumerate(owners)}


def prekey_private_for(bob: dict[str, Any], prekey_id: int) -> bytes | None:
    found = [h(p["prekey_private"]) for p in bob["prekeys"] if p["prekey_id"] == prekey_id]
    return found[0] if found else None


def sender_label(m: dict[str, Any], got: ReceivedMessage) -> str:
    """The client's check: the claimed sender's identity must carry ``sender_spk``."""
    if got.claimed_from is None:
        return ""
    user, _, host = got.claimed_from.partition("@")
    values = m["dns_before_send"].get(owner_text(identity_owner(user, host)), [])
    for wire in values:
        record = verify_identity(wire)
        if record.ed25519_public == got.sender_spk and record.username.lower() == user:
            return got.claimed_from
    return ""


def receive(
    m: dict[str, Any],
    *,
    at: int,
    manifest_wire: str | None = None,
    bob_pins_alice: bool = True,
    served_ttl: int | None = None,
) -> ReceivedMessage:
    """Bob's receive path for the message in alice's zone, as pure steps."""
    alice, bob = m["alice"], m["bob"]
    bob_keys = keys_of(bob)
    if at > m["sent_at"] + (served_ttl or m["send"]["ttl"]):
        raise NotEnoughShares("records no longer served")
    served = m["published_by_send"]
    (wire,) = served[m["send"]["manifest"]["owner"]] if manifest_wire is None else [manifest_wire]
    manifest = verify_manifest(wire, now=at, recipient_id=bob_keys.user_id)
    pins = [(h(alice["identity"]["ed25519_public"]), alice["zone"])] if bob_pins_alice else []
    check_sender_pinned(manifest.sender_spk, alice["zone"], pinned=pins, own_zone=bob["zone"])
    return open_message(
        manifest,
        chunk_values(manifest, alice["zone"], served),
        recipient=bob_keys,
        prekey_private=prekey_private_for(bob, manifest.prekey_id),
        now=at,
    )


@pytest.mark.parametrize("m", params(V["messages"]))
def test_receive_delivered(m: dict[str, Any]) -> None:
    r = m["receive"]
    got = receive(m, at=r["at"])
    (want,) = r["delivered"]
    assert got.body.hex() == want["body"]
    assert got.body.decode("utf-8") == want["body_utf8"]
    assert got.msg_id.hex() == want["msg_id"]
    assert got.ts == want["timestamp"]
    assert got.sender_spk.hex() == want["sender_signing_pk"]
    assert sender_label(m, got) == want["sender_label"]
    assert (got.prekey_id or None) == r["prekey_consumed"]
    assert r["prekey_record_deleted"] == (got.prekey_id != 0)


@pytest.mark.parametrize("case", params(V["receive_rejections"]))
def test_receive_rejections(case: dict[str, Any]) -> None:
    assert case["expected_delivered"] == 0
    m = MESSAGES[case["base"]]
    with pytest.raises(DmpError):
        receive(
            m,
            at=case["receive_at"],
            manifest_wire=case["replace_manifest_wire"],
            bob_pins_alice=case["bob_pins_alice"],
            served_ttl=case["served_ttl"],
        )


@pytest.mark.parametrize("case", params(V["receive_rejections"]))
def test_receive_rejection_reason(case: dict[str, Any]) -> None:
    """Each refusal comes from the rule its case exercises."""
    m = MESSAGES[case["base"]]
    at = case["receive_at"]
    wire = case["replace_manifest_wire"] or m["send"]["manifest"]["wire"]
    manifest = parse_manifest(wire)
    if at > manifest.exp:
        with pytest.raises(RecordExpired):
            verify_manifest(wire, now=at)
    if not case["bob_pins_alice"]:
        with pytest.raises(RecordMismatch):
            check_sender_pinned(
                manifest.sender_spk, m["alice"]["zone"], pinned=[], own_zone=m["bob"]["zone"]
            )
    if case["replace_manifest_wire"] is not None:
        assert manifest.sender_spk.hex() == m["alice"]["identity"]["ed25519_public"]
        assert manifest.prekey_id != m["send"]["prekey_id"]
        with pytest.raises(DecryptionFailed):
            receive(m, at=at, manifest_wire=wire)


@pytest.mark.parametrize("m", params(V["messages"]))
def test_open_message_checks(m: dict[str, Any]) -> None:
    bob_keys = keys_of(m["bob"])
    out = send(m)
    values = {c.index: [c.txt] for c in out.chunks}
    prekey_private = prekey_private_for(m["bob"], out.prekey_id)
    expires = m["sent_at"] + m["send"]["ttl"]

    def open_at(
        now: int,
        *,
        recipient: IdentityKeys = bob_keys,
        prekey: bytes | None = prekey_private,
        chunks: dict[int, list[str]] = values,
    ) -> ReceivedMessage:
        return open_message(
            out.manifest, chunks, recipient=recipient, prekey_private=prekey, now=now
        )

    assert open_at(expires).body == m["body_utf8"].encode()
    with pytest.raises(MessageExpired):
        open_at(expires + 1)
    with pytest.raises(RecordMismatch):
        open_at(m["sent_at"], recipient=keys_of(m["alice"]))
    # Any n - k chunks may be lost, but not one more.
    lost = out.n - out.k
    intact = open_at(m["sent_at"])
    assert open_at(m["sent_at"], chunks={i: v for i, v in values.items() if i >= lost}) == intact
    with pytest.raises(NotEnoughShares):
        open_at(m["sent_at"], chunks={i: v for i, v in values.items() if i > lost})
    # A junk value before the real one at the same owner is skipped.
    noisy = {i: ["v=dmp1;t=chunk;d=AAAA", *v] for i, v in values.items()}
    assert open_at(m["sent_at"], chunks=noisy) == intact
    if out.prekey_id:
        with pytest.raises(DecryptionFailed):
            open_at(m["sent_at"], prekey=None)
        with pytest.raises(DecryptionFailed):
            open_at(m["sent_at"], prekey=bob_keys.x25519_private)


# -- pure helpers ----------------------------------------------------------------


def test_check_sender_pinned_rule() -> None:
    spk, other = b"\x01" * 32, b"\x02" * 32
    pins = [(spk, "Alice.Example.")]
    check_sender_pinned(spk, "alice.example", pinned=pins, own_zone="bob.example")
    check_sender_pinned(spk, "bob.example", pinned=pins, own_zone="Bob.Example")
    with pytest.raises(RecordMismatch):
        check_sender_pinned(spk, "carol.example", pinned=pins, own_zone="bob.example")
    with pytest.raises(RecordMismatch):
        check_sender_pinned(other, "alice.example", pinned=pins, own_zone="bob.example")
    with pytest.raises(RecordMismatch):
        check_sender_pinned(spk, "alice.example", pinned=[], own_zone="bob.example")
    check_sender_pinned(spk, "alice.example", pinned=[], own_zone="bob.example", allow_tofu=True)


def test_choose_prekey_is_uniform_over_candidates() -> None:
    rng = random.Random(1234)
    assert choose_prekey([], rng) is None
    picks = [choose_prekey(["a", "b", "c"], rng) for _ in range(300)]
    assert set(picks) == {"a", "b", "c"}
    assert min(picks.count(x) for x in "abc") > 60
    assert choose_prekey(["x"], random.Random(7)) == "x"
    assert [choose_prekey(list(range(10)), random.Random(s)) for s in range(5)] == [
        choose_prekey(list(range(10)), random.Random(s)) for s in range(5)
    ]


# -- DMPv2 envelope ----------------------------------------------------------------


@pytest.mark.parametrize("case", params(V["envelope"]["canonicalize_address"]))
def test_canonicalize_address(case: dict[str, Any]) -> None:
    if case["canonical"] is None:
        with pytest.raises(BadAddress):
            canonicalize_address(case["input"])
    else:
        assert canonicalize_address(case["input"]) == case["canonical"]


@pytest.mark.parametrize("case", params(V["envelope"]["encode"]))
def test_envelope_encode(case: dict[str, Any]) -> None:
    assert encode_envelope(h(case["body"]), case["sender_addr"]).hex() == case["plaintext"]


@pytest.mark.parametrize("case", params(V["envelope"]["decode"]))
def test_envelope_decode(case: dict[str, Any]) -> None:
    body, claimed_from = decode_envelope(h(case["plaintext"]))
    assert body.hex() == case["body"]
    assert claimed_from == case["claimed_from"]


@pytest.mark.parametrize("case", params(V["envelope"]["encode"]))
def test_envelope_round_trip(case: dict[str, Any]) -> None:
    body, claimed_from = decode_envelope(h(case["plaintext"]))
    if h(case["plaintext"]) != h(case["body"]):
        assert body.hex() == case["body"]
        assert claimed_from == canonicalize_address(case["sender_addr"])
