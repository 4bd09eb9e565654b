"""chunk.json: per-chunk wrap, RS repair, owner names, TXT parse."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import reedsolo

from dmp.domain.chunk import (
    chunk_txt,
    parse_chunk_txt,
    rs_parity,
    unwrap_block,
    unwrap_chunk_txt,
    wrap_block,
)
from dmp.domain.errors import ChunkHashMismatch, ChunkUnrecoverable, MalformedRecord
from dmp.domain.names import chunk_owner, msg_key
from tests.vectors import h, load, params

V = load("chunk.json")


def test_rs_parameters_are_reedsolo_rscodec_32() -> None:
    rs = V["rs"]
    assert (rs["field_poly"], rs["generator"], rs["fcr"], rs["nsym"]) == ("0x11d", 2, 0, 32)


@pytest.mark.parametrize("case", params(V["wraps"]))
def test_wrap(case: dict[str, Any]) -> None:
    block = h(case["block"])
    wrapped = wrap_block(block)
    assert wrapped[:8].hex() == case["checksum"]
    assert rs_parity(block).hex() == case["rs_parity"]
    assert bytes(reedsolo.RSCodec(32).encode(block))[-32:].hex() == case["rs_parity"]
    assert wrapped.hex() == case["wrapped"]
    assert hashlib.sha256(wrapped).hexdigest() == case["wrapped_sha256"]
    txt = chunk_txt(wrapped)
    assert txt == case["txt"]
    assert len(txt) == case["txt_len"]


@pytest.mark.parametrize("case", params(V["wraps"]))
def test_unwrap_txt(case: dict[str, Any]) -> None:
    assert unwrap_chunk_txt(case["txt"], h(case["wrapped_sha256"])).hex() == case["block"]
    assert parse_chunk_txt(case["txt"]).hex() == case["wrapped"]


@pytest.mark.parametrize("case", params(V["wraps"]))
def test_unwrap_txt_refuses_other_hash(case: dict[str, Any]) -> None:
    other = hashlib.sha256(h(case["wrapped_sha256"])).digest()
    with pytest.raises(ChunkHashMismatch):
        unwrap_chunk_txt(case["txt"], other)


@pytest.mark.parametrize("case", params(V["repairs"]))
def test_repair(case: dict[str, Any]) -> None:
    damaged = h(case["damaged"])
    wrapped = h(case["wrapped"])
    diff = [i for i, (a, b) in enumerate(zip(damaged, wrapped, strict=True)) if a != b]
    assert diff == case["error_positions"]
    assert unwrap_block(damaged).hex() == case["unwraps_to"]
    assert unwrap_block(wrapped).hex() == case["unwraps_to"]
    # The receive path checks the manifest hash of the received bytes first.
    with pytest.raises(ChunkHashMismatch):
        unwrap_chunk_txt(chunk_txt(damaged), hashlib.sha256(wrapped).digest())


@pytest.mark.parametrize("case", params(V["repairs"]))
def test_checksum_error_is_not_repaired(case: dict[str, Any]) -> None:
    wrapped = bytearray(h(case["wrapped"]))
    wrapped[0] ^= 0x01
    with pytest.raises(ChunkUnrecoverable):
        unwrap_block(bytes(wrapped))


@pytest.mark.parametrize("case", params(V["names"]))
def test_names(case: dict[str, Any]) -> None:
    key = msg_key(h(case["msg_id"]), h(case["recipient_id"]), h(case["sender_spk"]))
    assert key == case["msg_key"]
    for index, owner in case["owners"].items():
        assert chunk_owner(int(index), key, case["zone"]).to_text(omit_final_dot=True) == owner


@pytest.mark.parametrize("case", params(V["txt_parse"]))
def test_txt_parse_ignores_metadata(case: dict[str, Any]) -> None:
    assert parse_chunk_txt(case["txt"]).hex() == case["data"]


@pytest.mark.parametrize(
    "txt",
    [
        "v=dmp1;t=identity;d=AAAA",
        "x=dmp1;t=chunk;d=AAAA",
        "t=chunk;v=dmp1;d=AAAA",
        "v=dmp1;t=chunk",
        "v=dmp1;d=AAAA",
    ],
)
def test_txt_parse_rejects(txt: str) -> None:
    with pytest.raises(MalformedRecord):
        parse_chunk_txt(txt)


def test_unwrap_wrong_length() -> None:
    with pytest.raises(ChunkUnrecoverable):
        unwrap_block(bytes(167))
