"""negative.json: every rejected wire raises a named DmpError; every accepted edge case verifies.

One dispatcher per ``kind`` calls the same check the reference ran
(``negative.json`` ``checks``), with the case's ``context``; a null or absent
context field means the check is called without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dmp.domain.bootstrap import verify_bootstrap
from dmp.domain.chunk import unwrap_chunk_txt
from dmp.domain.claim import verify_claim
from dmp.domain.cluster import verify_cluster
from dmp.domain.errors import DmpError, LowOrderKey
from dmp.domain.heartbeat import verify_heartbeat
from dmp.domain.identity import verify_identity
from dmp.domain.keys import LOW_ORDER_ED25519_KEYS
from dmp.domain.manifest import verify_manifest
from dmp.domain.prekey import verify_prekey
from dmp.domain.rotation import verify_revocation, verify_rotation
from tests.vectors import h, load, params

V = load("negative.json")


def _opt(ctx: dict[str, Any], key: str) -> bytes | None:
    value = ctx.get(key)
    return None if value is None else h(value)


def _skew(ctx: dict[str, Any]) -> int:
    value = ctx.get("ts_skew_seconds")
    return 300 if value is None else int(value)


CHECKS: dict[str, Callable[[str, dict[str, Any]], object]] = {
    "identity": lambda wire, ctx: verify_identity(wire),
    "prekey": lambda wire, ctx: verify_prekey(wire, h(ctx["signer_spk"]), now=ctx["now"]),
    "manifest": lambda wire, ctx: verify_manifest(
        wire, now=ctx["now"], recipient_id=_opt(ctx, "recipient_id")
    ),
    "chunk": lambda wire, ctx: unwrap_chunk_txt(wire, h(ctx["expected_sha256"])),
    "claim": lambda wire, ctx: verify_claim(wire, now=ctx["now"], ts_skew_s=_skew(ctx)),
    "heartbeat": lambda wire, ctx: verify_heartbeat(wire, now=ctx["now"], ts_skew_s=_skew(ctx)),
    "cluster": lambda wire, ctx: verify_cluster(
        wire,
        h(ctx["operator_spk"]),
        now=ctx["now"],
        expected_cluster_name=ctx.get("expected_cluster_name"),
    ),
    "bootstrap": lambda wire, ctx: verify_bootstrap(
        wire,
        h(ctx["signer_spk"]),
        now=ctx["now"],
        expected_user_domain=ctx.get("expected_user_domain"),
    ),
    "rotation": lambda wire, ctx: verify_rotation(
        wire, _opt(ctx, "expected_old_spk"), ctx.get("expected_subject"), now=ctx["now"]
    ),
    "revocation": lambda wire, ctx: verify_revocation(
        wire,
        _opt(ctx, "expected_revoked_spk"),
        ctx.get("expected_subject"),
        now=ctx["now"],
        max_age_s=ctx.get("max_age_seconds"),
    ),
}


def test_every_kind_has_a_check() -> None:
    kinds = {case["kind"] for case in V["rejected"] + V["accepted_edge_cases"]}
    assert kinds <= set(CHECKS), f"no dispatcher for {sorted(kinds - set(CHECKS))}"
    assert set(V["checks"]) <= set(CHECKS)


def test_low_order_key_list_matches_ours() -> None:
    assert {h(k) for k in V["low_order_ed25519_keys"]} == set(LOW_ORDER_ED25519_KEYS)


@pytest.mark.parametrize("case", params(V["rejected"]))
def test_rejected(case: dict[str, Any]) -> None:
    """The reference refuses this wire, and so do we, with a named DmpError."""
    assert case["reference_accepts"] is False
    with pytest.raises(DmpError) as caught:
        CHECKS[case["kind"]](case["wire"], case["context"])
    assert type(caught.value) is not DmpError, "raise a specific subclass, not the root"
    assert str(caught.value), "the error must say what is wrong"
    if case.get("permissive_ed25519_verify_accepts"):
        assert isinstance(caught.value, LowOrderKey)


@pytest.mark.parametrize("case", params(V["accepted_edge_cases"]))
def test_accepted_edge_case(case: dict[str, Any]) -> None:
    """The reference accepts this quirk or boundary, and so do we."""
    assert case["reference_accepts"] is True
    assert CHECKS[case["kind"]](case["wire"], case["context"]) is not None
