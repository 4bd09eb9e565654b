"""erasure.json: k/n, length prefix and padding, zfec parity shares, decoding from subsets."""

from __future__ import annotations

from typing import Any

import pytest

from dmp.domain.erasure import SHARE_SIZE, erasure_decode, erasure_encode, erasure_params
from dmp.domain.errors import NotEnoughShares
from tests.vectors import h, load, params

V = load("erasure.json")


@pytest.mark.parametrize("case", params(V["cases"]))
def test_encode_reproduces_shares(case: dict[str, Any]) -> None:
    plaintext = h(case["plaintext"])
    assert len(plaintext) == case["length"]
    assert erasure_params(len(plaintext)) == (case["k"], case["n"])
    coded = erasure_encode(plaintext)
    assert (coded.k, coded.n) == (case["k"], case["n"])
    assert [s.hex() for s in coded.shares] == case["shares"]
    assert all(len(s) == SHARE_SIZE for s in coded.shares)


@pytest.mark.parametrize("case", params(V["cases"]))
def test_decode_from_listed_subsets(case: dict[str, Any]) -> None:
    shares = [h(s) for s in case["shares"]]
    for subset in case["decode_subsets"]:
        got = erasure_decode({i: shares[i] for i in subset}, case["k"], case["n"])
        assert got.hex() == case["plaintext"], f"subset {subset}"


@pytest.mark.parametrize("case", params(V["cases"]))
def test_decode_with_one_share_too_few(case: dict[str, Any]) -> None:
    shares = [h(s) for s in case["shares"]]
    subset = case["decode_subsets"][-1][1:]
    with pytest.raises(NotEnoughShares):
        erasure_decode({i: shares[i] for i in subset}, case["k"], case["n"])


@pytest.mark.parametrize("case", params(V["cases"]))
def test_decode_ignores_malformed_and_extra_shares(case: dict[str, Any]) -> None:
    """A wrong-length share is skipped and the k lowest good ones are used."""
    shares = {i: h(s) for i, s in enumerate(case["shares"])}
    shares[0] = shares[0][:-1]
    shares[case["n"] + 5] = bytes(SHARE_SIZE)
    assert erasure_decode(shares, case["k"], case["n"]).hex() == case["plaintext"]
