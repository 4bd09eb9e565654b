"""Checks shared by the vector tests of signed TXT records (cluster, bootstrap, rotation, claim, heartbeat)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from dmp.domain import keys
from dmp.domain.codec import FIVE_YEARS_S, b64encode
from dmp.domain.errors import (
    BadRecordSignature,
    ExpiryTooFar,
    RecordError,
    RecordExpired,
    RecordMismatch,
)
from tests.vectors import h

T = TypeVar("T")

PinnedVerify = Callable[[str, bytes, int, str | None], object]
"""``(wire, pinned_spk, now, expected_name)`` → record; wraps verify_cluster or verify_bootstrap."""


def seed_of_keypair(keypair: dict[str, Any]) -> bytes:
    """The keypair's Ed25519 seed, after checking that it derives the keypair's public key."""
    seed = h(keypair["ed25519_seed"])
    assert keys.ed25519_public_from_seed(seed).hex() == keypair["ed25519_public"]
    return seed


def frame(prefix: str, body: bytes, *seeds: bytes) -> str:
    """``prefix`` + base64(body ‖ one signature per seed): a wire for any body, bad ones included."""
    return prefix + b64encode(body + b"".join(keys.sign(seed, body) for seed in seeds))


def joined_wire(case: dict[str, Any]) -> str:
    """The vector's TXT value, joined from its character-strings when it has them."""
    wire = "".join(case["txt_strings"]) if "txt_strings" in case else case["wire"]
    assert wire == case["wire"]
    return str(wire)


def verify_as_vector_says(case: dict[str, Any], verify: Callable[[str], T]) -> T | None:
    """Verify the vector's joined wire as its ``verify.accepts`` says.

    Returns:
        The record when the vector accepts; ``None`` once a rejecting vector
        has raised a :class:`RecordError`.
    """
    wire = joined_wire(case)
    if not case["verify"]["accepts"]:
        with pytest.raises(RecordError):
            verify(wire)
        return None
    return verify(wire)


def check_reference_wire(wire: str, prefix: str, case: dict[str, Any], max_len: int) -> None:
    """``wire`` is the vector's, of its length (at most ``max_len``), ending in its signature."""
    assert wire == case["wire"]
    assert len(wire.encode("utf-8")) == case["wire_len"] <= max_len
    blob = base64.b64decode(wire[len(prefix) :], validate=True)
    assert blob[-keys.ED25519_SIG_LEN :].hex() == case["signature"]


def check_five_year_window(verify_at: Callable[[int], object], exp: int) -> None:
    """Valid from ``exp - 5 y`` up to ``exp`` inclusive; expired after, too far before."""
    with pytest.raises(RecordExpired):
        verify_at(exp + 1)
    verify_at(exp)
    verify_at(exp - FIVE_YEARS_S)
    with pytest.raises(ExpiryTooFar):
        verify_at(exp - FIVE_YEARS_S - 1)


def check_pinned_rejections(
    verify: PinnedVerify, wire: str, spk: bytes, *, now: int, exp: int, name: str
) -> None:
    """The wire fails under another key, for another name, and outside its five-year window.

    The name binding ignores case and one trailing dot (wire.md §5.5, §5.6).
    """
    with pytest.raises(BadRecordSignature):
        verify(wire, keys.ed25519_public_from_seed(bytes(32)), now, None)
    with pytest.raises(RecordMismatch):
        verify(wire, spk, now, "other-" + name)
    check_five_year_window(lambda at: verify(wire, spk, at, None), exp)
    verify(wire, spk, now, name.upper() + ".")
