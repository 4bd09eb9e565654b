"""tsig_scope.json: TSIG key names, scope suffix lists, the suffix matcher and the UPDATE authorizer."""

from __future__ import annotations

from typing import Any

import dns.name
import dns.rcode
import pytest

from dmp.domain.errors import BadSubject, KeyNameTooLong
from dmp.domain.registration import canonicalize_subject
from dmp.domain.tsig import (
    Allowed,
    Refused,
    ScopeMode,
    UpdateOp,
    authorize,
    compute_scopes,
    key_name,
    mailbox_scope_hash12,
    stored_scopes,
    suffix_matches,
    untsigd_claim_hash12,
)
from tests.vectors import h, load, params

V = load("tsig_scope.json")

MODES = {"default": ScopeMode.DEFAULT, "tight": ScopeMode.TIGHT, "loose": ScopeMode.LOOSE}
OPS = {"add": UpdateOp.ADD, "delete": UpdateOp.DELETE}


@pytest.mark.parametrize("key", params(V["keys"]))
def test_key_name(key: dict[str, Any]) -> None:
    name = key_name(key["subject"], h(key["ed25519_public"]), key["zone"])
    assert isinstance(name, dns.name.Name)
    assert name.is_absolute()
    assert name.to_text() == key["key_name"]
    # The same name whether the zone comes with a trailing dot or as a Name.
    assert key_name(key["subject"], h(key["ed25519_public"]), key["zone"] + ".") == name
    assert (
        key_name(key["subject"], h(key["ed25519_public"]), dns.name.from_text(key["zone"])) == name
    )


@pytest.mark.parametrize("key", params(V["keys"]))
def test_key_hashes_use_the_local_part(key: dict[str, Any]) -> None:
    assert canonicalize_subject(key["subject"]).partition("@")[0] == key["local_part"]
    assert mailbox_scope_hash12(h(key["x25519_public"])) == key["mailbox_hash12"]
    default = compute_scopes(
        key["subject"], h(key["ed25519_public"]), key["zone"], ScopeMode.DEFAULT, None
    )
    assert default[0] == f"id-{key['local_part_sha256_16']}.{key['zone']}"
    assert key["key_name"].startswith(f"{key['local_part']}-{key['ed25519_public'][:8]}-")
    assert key["key_name"].endswith(f"-{key['subject_sha256_6']}.{key['zone']}.")


@pytest.mark.parametrize("case", params(V["key_name_rejected"]))
def test_key_name_rejected(case: dict[str, Any]) -> None:
    assert case["key_name"] is None
    with pytest.raises(KeyNameTooLong):
        key_name(case["subject"], h(case["ed25519_public"]), case["zone"])


def _scope_cases() -> list[Any]:
    out = []
    for key in V["keys"]:
        for variant, with_x in (("scopes_with_x25519_pop", True), ("scopes_without_x25519", False)):
            for mode_name, lists in key[variant].items():
                out.append(
                    pytest.param(
                        key,
                        with_x,
                        MODES[mode_name],
                        lists,
                        id=f"{key['id']}-{variant}-{mode_name}",
                    )
                )
    return out


@pytest.mark.parametrize(("key", "with_x", "mode", "lists"), _scope_cases())
def test_scopes(key: dict[str, Any], with_x: bool, mode: ScopeMode, lists: dict[str, Any]) -> None:
    x_pub = h(key["x25519_public"]) if with_x else None
    spk = h(key["ed25519_public"])
    computed = compute_scopes(key["subject"], spk, key["zone"], mode, x_pub)
    assert list(computed) == lists["computed"]
    assert list(stored_scopes(key["subject"], spk, key["zone"], mode, x_pub)) == lists["stored"]


def _decision_cases() -> list[Any]:
    out = []
    for key in V["keys"]:
        for mode_name, decisions in key.get("decisions", {}).items():
            for i, d in enumerate(decisions):
                out.append(
                    pytest.param(key, MODES[mode_name], d, id=f"{key['id']}-{mode_name}-{i}")
                )
    return out


@pytest.mark.parametrize(("key", "mode", "decision"), _decision_cases())
def test_authorizer_decisions(
    key: dict[str, Any], mode: ScopeMode, decision: dict[str, Any]
) -> None:
    # The reference decided with the key minted with a verified X25519 PoP.
    scopes = stored_scopes(
        key["subject"], h(key["ed25519_public"]), key["zone"], mode, h(key["x25519_public"])
    )
    outcome = authorize(scopes, OPS[decision["op"]], decision["owner"])
    if decision["allowed"]:
        assert isinstance(outcome, Allowed), (decision, outcome)
        assert suffix_matches(decision["owner"], outcome.suffix)
    else:
        assert isinstance(outcome, Refused), (decision, outcome)
        assert outcome.rcode == dns.rcode.REFUSED
        assert outcome.reason


def test_decision_vectors_present() -> None:
    """At least one key carries authorizer decisions, else the test above checks nothing."""
    assert _decision_cases()


@pytest.mark.parametrize("case", params(V["suffix_match"]))
def test_suffix_match(case: dict[str, Any]) -> None:
    assert suffix_matches(case["owner"], case["suffix"]) is case["match"]


@pytest.mark.parametrize("case", params(V["suffix_match"]))
def test_suffix_match_with_name_owner(case: dict[str, Any]) -> None:
    """A dns.name.Name owner is matched exactly like its text."""
    text = case["owner"]
    if not text.rstrip("."):
        pytest.skip("owner is empty; no Name form")
    owner = dns.name.from_text(text if text.endswith(".") else text + ".")
    assert suffix_matches(owner, case["suffix"]) is case["match"]


@pytest.mark.parametrize("case", params(V["untsigd_claim_owner_hash12"]))
def test_untsigd_claim_owner_gate(case: dict[str, Any]) -> None:
    assert untsigd_claim_hash12(case["owner"], case["zone"]) == case["hash12"]


@pytest.mark.parametrize("case", params(V["canonicalize_subject"]))
def test_canonicalize_subject(case: dict[str, Any]) -> None:
    if case["canonical"] is None:
        with pytest.raises(BadSubject) as info:
            canonicalize_subject(case["input"])
        if "error" in case:
            assert str(info.value) == case["error"]
    else:
        assert canonicalize_subject(case["input"]) == case["canonical"]
        # Canonicalization is idempotent.
        assert canonicalize_subject(case["canonical"]) == case["canonical"]


def test_delete_never_through_a_wildcard() -> None:
    """A wildcard scope authorizes ADD but not DELETE of the same owner."""
    scopes = ("slot-*.mb-*.example.org",)
    owner = "slot-1.mb-abcdef012345.example.org"
    assert authorize(scopes, UpdateOp.ADD, owner) == Allowed("slot-*.mb-*.example.org")
    assert isinstance(authorize(scopes, UpdateOp.DELETE, owner), Refused)
    assert isinstance(
        authorize((*scopes, "mb-abcdef012345.example.org"), UpdateOp.DELETE, owner), Allowed
    )
