"""registration.json: the pure parts of the registration ceremony.

Signing payloads, Ed25519 signatures, the X25519 proof of possession, bearer
token and TSIG secret formats, the key name and the ``allowed_suffixes`` a
node returns. The HTTP exchanges themselves are the node's business.
"""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain.crypto import IdentityKeys, x25519_public
from dmp.domain.errors import BadProof, BadSubject, RegistrationError
from dmp.domain.registration import (
    KEY_LIFETIME_S,
    bearer_token_from_draw,
    canonicalize_subject,
    check_x25519_pop,
    sign_registration,
    signing_payload,
    token_hash,
    verify_registration,
    x25519_pop,
)
from dmp.domain.tsig import TSIG_ALGORITHM, ScopeMode, key_name, stored_scopes, tsig_secret_hex
from tests.vectors import h, load, params

V = load("registration.json")


def _challenge(step: dict[str, Any]) -> bytes:
    return h(step["challenge_response"]["response_json"]["challenge"])


def _server_pub(step: dict[str, Any]) -> bytes:
    return h(step["challenge_response"]["response_json"]["server_x25519_pub"])


@pytest.mark.parametrize("ceremony", params(V["ceremonies"]))
def test_subject_canonicalization(ceremony: dict[str, Any]) -> None:
    assert canonicalize_subject(ceremony["subject_input"]) == ceremony["subject_canonical"]


@pytest.mark.parametrize("ceremony", params(V["ceremonies"]))
@pytest.mark.parametrize("flow", ["tsig", "token"])
def test_signing_payload_and_signature(ceremony: dict[str, Any], flow: str) -> None:
    step = ceremony[flow]
    user = IdentityKeys.from_x25519_private(h(ceremony["user"]["x25519_private"]))
    assert user.ed25519_public.hex() == ceremony["user"]["ed25519_public"]
    node = step["challenge_response"]["response_json"]["node"]
    assert node == ceremony["node"]

    payload = signing_payload(_challenge(step), ceremony["subject_canonical"], node)
    assert payload.hex() == step["signing_payload"]
    signature = sign_registration(user.ed25519_seed, payload)
    assert signature.hex() == step["signature"]
    verify_registration(user.ed25519_public, payload, signature)

    request = step["confirm"]["request_json"]
    assert request["signature"] == step["signature"]
    assert request["ed25519_spk"] == ceremony["user"]["ed25519_public"]
    assert request["challenge"] == _challenge(step).hex()


@pytest.mark.parametrize("ceremony", params(V["ceremonies"]))
def test_x25519_pop_both_sides(ceremony: dict[str, Any]) -> None:
    step = ceremony["tsig"]
    user = ceremony["user"]
    server_private = h(step["server_x25519_private"])
    assert x25519_public(server_private) == _server_pub(step)
    pop = x25519_pop(
        h(user["x25519_private"]),
        _server_pub(step),
        _challenge(step),
        ceremony["subject_canonical"],
        h(user["x25519_public"]),
    )
    assert pop.hex() == step["x25519_pop"]
    assert step["confirm"]["request_json"]["x25519_pop"] == step["x25519_pop"]
    check_x25519_pop(
        server_private,
        h(user["x25519_public"]),
        _challenge(step),
        ceremony["subject_canonical"],
        pop,
    )


@pytest.mark.parametrize("ceremony", params(V["ceremonies"]))
def test_tsig_confirm_response_pure_parts(ceremony: dict[str, Any]) -> None:
    step = ceremony["tsig"]
    response = step["confirm"]["response_json"]
    assert step["confirm"]["status"] == 200
    spk = h(ceremony["user"]["ed25519_public"])
    zone = ceremony["served_zone"]
    assert response["subject"] == ceremony["subject_canonical"]
    assert response["zone"] == zone
    assert response["tsig_algorithm"] == TSIG_ALGORITHM
    assert response["tsig_key_name"] == key_name(ceremony["subject_input"], spk, zone).to_text()
    assert response["tsig_secret_hex"] == tsig_secret_hex(h(step["secret_draw"]))
    # The PoP verified, so the key gets the mailbox suffix.
    scopes = stored_scopes(
        ceremony["subject_canonical"],
        spk,
        zone,
        ScopeMode.DEFAULT,
        h(ceremony["user"]["x25519_public"]),
    )
    assert list(scopes) == response["allowed_suffixes"]
    assert response["expires_at"] == ceremony["now"] + KEY_LIFETIME_S


@pytest.mark.parametrize("ceremony", params(V["ceremonies"]))
def test_token_confirm_response_pure_parts(ceremony: dict[str, Any]) -> None:
    step = ceremony["token"]
    response = step["confirm"]["response_json"]
    token = bearer_token_from_draw(h(step["token_draw"]))
    assert token == response["token"]
    assert token.startswith("dmp_v1_")
    assert len(token) == len("dmp_v1_") + 52
    assert response["subject"] == ceremony["subject_canonical"]
    assert response["expires_at"] == ceremony["now"] + KEY_LIFETIME_S
    assert token_hash(token) != token_hash(token + "x")
    assert len(token_hash(token)) == 64


def _by_id_suffix(suffix: str) -> list[dict[str, Any]]:
    return [r for r in V["responses_to_bad_requests"] if r["id"].endswith(suffix)]


def _node() -> str:
    node: str = V["node"]
    return node


def _canonical(request: dict[str, Any]) -> str:
    return canonicalize_subject(request["subject"])


def _cases(suffix: str) -> list[Any]:
    return params(_by_id_suffix(suffix))


@pytest.mark.parametrize("case", _cases("/signature-by-another-key"))
def test_signature_by_another_key_is_refused(case: dict[str, Any]) -> None:
    request = case["confirm"]["request_json"]
    payload = signing_payload(h(request["challenge"]), _canonical(request), _node())
    with pytest.raises(BadProof) as info:
        verify_registration(h(request["ed25519_spk"]), payload, h(request["signature"]))
    assert info.value.http_status == case["confirm"]["status"] == 401
    assert str(info.value) == case["confirm"]["response_json"]["error"]


@pytest.mark.parametrize("case", _cases("/signed-non-canonical-subject"))
def test_signature_over_non_canonical_subject_is_refused(case: dict[str, Any]) -> None:
    request = case["confirm"]["request_json"]
    canonical = _canonical(request)
    assert canonical != request["subject"]
    payload = signing_payload(h(request["challenge"]), canonical, _node())
    with pytest.raises(BadProof):
        verify_registration(h(request["ed25519_spk"]), payload, h(request["signature"]))
    # signing_payload refuses to build a payload over the raw form at all.
    with pytest.raises(BadSubject):
        signing_payload(h(request["challenge"]), request["subject"], _node())
    assert case["confirm"]["status"] == 401


@pytest.mark.parametrize("case", _cases("/bad-x25519-pop"))
def test_bad_pop_is_refused(case: dict[str, Any]) -> None:
    request = case["confirm"]["request_json"]
    challenge = h(request["challenge"])
    canonical = _canonical(request)
    # The signature itself is fine: the PoP is what fails.
    verify_registration(
        h(request["ed25519_spk"]),
        signing_payload(challenge, canonical, _node()),
        h(request["signature"]),
    )
    with pytest.raises(BadProof) as info:
        check_x25519_pop(
            h(case["server_x25519_private"]),
            h(request["x25519_pub"]),
            challenge,
            canonical,
            h(request["x25519_pop"]),
        )
    assert info.value.http_status == case["confirm"]["status"] == 401
    assert str(info.value) == case["confirm"]["response_json"]["error"]


@pytest.mark.parametrize(
    "case", [*_cases("/subject-owned-by-another-key"), *_cases("/challenge-expired")]
)
def test_proofs_valid_where_the_refusal_is_policy(case: dict[str, Any]) -> None:
    """409 (takeover) and 400 (expired challenge) are node policy: the proofs themselves verify."""
    request = case["confirm"]["request_json"]
    challenge = h(request["challenge"])
    canonical = _canonical(request)
    verify_registration(
        h(request["ed25519_spk"]),
        signing_payload(challenge, canonical, _node()),
        h(request["signature"]),
    )
    check_x25519_pop(
        h(case["server_x25519_private"]),
        h(request["x25519_pub"]),
        challenge,
        canonical,
        h(request["x25519_pop"]),
    )
    assert case["confirm"]["status"] in (400, 409)


@pytest.mark.parametrize("case", _cases("/no-pop-drops-mailbox-scope"))
def test_no_pop_means_no_mailbox_scope(case: dict[str, Any]) -> None:
    request = case["confirm"]["request_json"]
    response = case["confirm"]["response_json"]
    assert "x25519_pop" not in request
    spk = h(request["ed25519_spk"])
    scopes = stored_scopes(request["subject"], spk, V["served_zone"], ScopeMode.DEFAULT, None)
    assert list(scopes) == response["allowed_suffixes"]
    assert not any(s.startswith("mb-") for s in scopes)
    assert (
        response["tsig_key_name"] == key_name(request["subject"], spk, V["served_zone"]).to_text()
    )


def test_bad_request_vectors_present() -> None:
    """Every refusal kind above is present, so none of those tests passes vacuously."""
    for suffix in (
        "/signature-by-another-key",
        "/signed-non-canonical-subject",
        "/bad-x25519-pop",
        "/no-pop-drops-mailbox-scope",
    ):
        assert _by_id_suffix(suffix), suffix


def test_flipped_signature_bit_is_refused() -> None:
    """Any single-bit change to the payload or signature makes verification fail."""
    ceremony = V["ceremonies"][0]
    step = ceremony["tsig"]
    payload = h(step["signing_payload"])
    signature = h(step["signature"])
    spk = h(ceremony["user"]["ed25519_public"])
    verify_registration(spk, payload, signature)
    for i in (0, 31, len(payload) - 1):
        bad_payload = bytearray(payload)
        bad_payload[i] ^= 0x01
        with pytest.raises(BadProof):
            verify_registration(spk, bytes(bad_payload), signature)
    for i in (0, 31, 63):
        bad_signature = bytearray(signature)
        bad_signature[i] ^= 0x01
        with pytest.raises(BadProof):
            verify_registration(spk, payload, bytes(bad_signature))


def test_low_order_registration_key_is_refused() -> None:
    with pytest.raises(BadProof):
        verify_registration(bytes([1]) + bytes(31), b"payload", bytes(64))
    with pytest.raises(BadProof):
        verify_registration(bytes(31), b"payload", bytes(64))


def test_low_order_x25519_key_is_refused() -> None:
    ceremony = V["ceremonies"][0]
    step = ceremony["tsig"]
    with pytest.raises(BadProof):
        check_x25519_pop(
            h(step["server_x25519_private"]),
            bytes(32),
            _challenge(step),
            ceremony["subject_canonical"],
            bytes(32),
        )


def test_challenge_must_be_32_bytes() -> None:
    with pytest.raises(RegistrationError):
        signing_payload(bytes(31), "alice@example.com", "dmp.example.com")


def test_token_draw_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        bearer_token_from_draw(bytes(31))
