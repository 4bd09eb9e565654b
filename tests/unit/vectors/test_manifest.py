"""manifest.json: content-bound slot manifests and the receive gate."""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain.codec import join_txt
from dmp.domain.errors import (
    ExpiryTooFar,
    MalformedRecord,
    RecordExpired,
    RecordMismatch,
)
from dmp.domain.manifest import SlotManifest, parse_manifest, sign_manifest, verify_manifest
from dmp.domain.names import slot_for, slot_owner
from tests.vectors import h, load, params

V = load("manifest.json")


def manifest_of(rec: dict[str, Any]) -> SlotManifest:
    return SlotManifest(
        msg_id=h(rec["msg_id"]),
        sender_spk=h(rec["sender"]["ed25519_public"]),
        recipient_id=h(rec["recipient_id"]),
        total_chunks=rec["total_chunks"],
        data_chunks=rec["data_chunks"],
        prekey_id=rec["prekey_id"],
        ts=rec["ts"],
        exp=rec["exp"],
        chunk_hashes=tuple(h(x) for x in rec["chunk_hashes"]),
    )


@pytest.mark.parametrize("rec", params(V["records"] + V["legacy"]))
def test_sign_reproduces_wire(rec: dict[str, Any]) -> None:
    m = manifest_of(rec)
    assert m.body().hex() == rec["body"]
    wire = sign_manifest(m, h(rec["sender"]["ed25519_seed"]))
    assert wire == rec["wire"]
    assert len(wire) == rec["wire_len"]
    if "txt_strings" in rec:
        assert join_txt([s.encode() for s in rec["txt_strings"]]) == wire


@pytest.mark.parametrize("rec", params(V["records"] + V["legacy"]))
def test_parse(rec: dict[str, Any]) -> None:
    m = parse_manifest(rec["wire"])
    assert m == manifest_of(rec)
    assert m.is_legacy == (not rec["chunk_hashes"])
    assert slot_for(m.msg_id) == rec["slot"]
    assert slot_owner(m.recipient_id, rec["slot"], rec["zone"]).to_text(True) == rec["owner"]


@pytest.mark.parametrize("rec", params(V["records"]))
def test_receive_gate_accepts(rec: dict[str, Any]) -> None:
    now = rec["verify"]["now"]
    assert rec["verify"]["accepts"] is True
    m = verify_manifest(rec["wire"], now=now, recipient_id=h(rec["recipient_id"]))
    assert m == manifest_of(rec)
    assert verify_manifest(rec["wire"], now=rec["exp"]) == m


@pytest.mark.parametrize("rec", params(V["records"]))
def test_receive_gate_time_and_recipient(rec: dict[str, Any]) -> None:
    with pytest.raises(RecordExpired):
        verify_manifest(rec["wire"], now=rec["exp"] + 1)
    with pytest.raises(ExpiryTooFar):
        verify_manifest(rec["wire"], now=rec["exp"] - 30 * 86400 - 1)
    with pytest.raises(RecordMismatch):
        verify_manifest(rec["wire"], now=rec["ts"], recipient_id=h(rec["sender"]["user_id"]))


@pytest.mark.parametrize("rec", params(V["legacy"]))
def test_receive_gate_refuses_legacy(rec: dict[str, Any]) -> None:
    assert rec["verify"]["receive_path_accepts"] is False
    with pytest.raises(MalformedRecord):
        verify_manifest(rec["wire"], now=rec["verify"]["now"], recipient_id=h(rec["recipient_id"]))
