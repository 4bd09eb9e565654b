"""Properties of the TSIG scope matcher and authorizer (wire.md §7.2, §7.4)."""

from __future__ import annotations

import dns.name
from hypothesis import given, settings
from hypothesis import strategies as st

from dmp.domain.tsig import (
    Allowed,
    Refused,
    UpdateOp,
    authorize,
    is_wildcard,
    suffix_matches,
    untsigd_claim_hash12,
)

SETTINGS = settings(max_examples=200, deadline=None)

label = st.text(alphabet="abcdefgxyz0129-_", min_size=1, max_size=8)
labels = st.lists(label, min_size=1, max_size=4)
glob_label = st.text(alphabet="abxz09-*", min_size=1, max_size=6)


def _variant(text: str, upper: list[bool], dot: bool) -> str:
    """``text`` with some characters upper-cased and maybe one trailing dot."""
    chars = [c.upper() if i < len(upper) and upper[i] else c for i, c in enumerate(text)]
    return "".join(chars) + ("." if dot else "")


@st.composite
def owner_and_literal_suffix(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    suffix = draw(labels)
    kind = draw(st.sampled_from(["under", "equal", "other", "sibling"]))
    if kind == "under":
        owner = draw(labels) + suffix
    elif kind == "equal":
        owner = list(suffix)
    elif kind == "sibling":
        # Same text tail, but not on a label boundary (e.g. "evilzone" vs "zone").
        owner = [draw(label) + suffix[0], *suffix[1:]]
    else:
        owner = draw(labels)
    return owner, suffix


@SETTINGS
@given(
    pair=owner_and_literal_suffix(),
    owner_upper=st.lists(st.booleans(), max_size=40),
    suffix_upper=st.lists(st.booleans(), max_size=40),
    owner_dot=st.booleans(),
    suffix_dot=st.booleans(),
    as_name=st.booleans(),
)
def test_literal_suffix_agrees_with_is_subdomain(
    pair: tuple[list[str], list[str]],
    owner_upper: list[bool],
    suffix_upper: list[bool],
    owner_dot: bool,
    suffix_dot: bool,
    as_name: bool,
) -> None:
    owner_labels, suffix_labels = pair
    owner_text = _variant(".".join(owner_labels), owner_upper, owner_dot)
    suffix_text = _variant(".".join(suffix_labels), suffix_upper, suffix_dot)
    owner_name = dns.name.from_text(".".join(owner_labels) + ".")
    expected = owner_name.is_subdomain(dns.name.from_text(".".join(suffix_labels) + "."))
    owner: str | dns.name.Name = owner_name if as_name else owner_text
    assert suffix_matches(owner, suffix_text) is expected


@st.composite
def scopes_and_owner(draw: st.DrawFn) -> tuple[list[str], str]:
    zone = draw(labels)
    literal = [".".join(draw(labels) + zone) for _ in range(draw(st.integers(0, 3)))]
    wild = [
        ".".join(draw(st.lists(glob_label, min_size=1, max_size=3)) + zone)
        for _ in range(draw(st.integers(0, 3)))
    ]
    scopes = draw(st.permutations(literal + wild))
    owner = ".".join(
        draw(st.lists(st.sampled_from(["a", "b", "x0", "a-b", "*", "z9"]), max_size=3)) + zone
    )
    if scopes and draw(st.booleans()):
        # Often pick an owner built from a scope, so matches are common.
        base = draw(st.sampled_from(scopes)).replace("*", draw(st.sampled_from(["", "a", "09"])))
        owner = ".".join([*draw(st.lists(label, max_size=2)), base])
    return scopes, owner


@SETTINGS
@given(case=scopes_and_owner())
def test_delete_is_never_allowed_through_a_wildcard(case: tuple[list[str], str]) -> None:
    scopes, owner = case
    outcome = authorize(scopes, UpdateOp.DELETE, owner)
    if isinstance(outcome, Allowed):
        assert not is_wildcard(outcome.suffix)
        assert suffix_matches(owner, outcome.suffix)
    literal_only = [s for s in scopes if not is_wildcard(s)]
    assert isinstance(outcome, Allowed) == any(suffix_matches(owner, s) for s in literal_only)
    only_wild = [s for s in scopes if is_wildcard(s)]
    assert isinstance(authorize(only_wild, UpdateOp.DELETE, owner), Refused)


@SETTINGS
@given(case=scopes_and_owner())
def test_add_is_allowed_exactly_when_some_suffix_matches(case: tuple[list[str], str]) -> None:
    scopes, owner = case
    outcome = authorize(scopes, UpdateOp.ADD, owner)
    assert isinstance(outcome, Allowed) == any(suffix_matches(owner, s) for s in scopes)
    if isinstance(authorize(scopes, UpdateOp.DELETE, owner), Allowed):
        assert isinstance(outcome, Allowed)


@SETTINGS
@given(
    suffix=st.lists(glob_label, min_size=1, max_size=3),
    fills=st.lists(st.text(alphabet="abc09-", max_size=4), min_size=12, max_size=12),
    extra=st.lists(label, max_size=3),
)
def test_wildcard_matches_its_own_instances(
    suffix: list[str], fills: list[str], extra: list[str]
) -> None:
    """Replacing each ``*`` by any dot-free run gives a matching owner, with any extra leading labels."""
    pattern = ".".join(suffix)
    filled = []
    it = iter(fills)
    for part in suffix:
        pieces = part.split("*")
        filled.append(pieces[0] + "".join(next(it, "") + p for p in pieces[1:]))
    if any(not lbl for lbl in filled):
        return  # an all-'*' label filled with "" would be an empty DNS label
    owner = ".".join([*extra, *filled])
    assert suffix_matches(owner, pattern)
    assert suffix_matches(owner.upper() + ".", pattern)


@SETTINGS
@given(suffix=st.lists(glob_label, min_size=2, max_size=3), owner=labels)
def test_wildcard_needs_every_label(suffix: list[str], owner: list[str]) -> None:
    """An owner with fewer labels than the glob never matches; ``*`` never spans a dot."""
    if len(owner) < len(suffix):
        assert not suffix_matches(".".join(owner), ".".join(suffix))
    # Joining two owner labels with a dot never satisfies a single-label glob.
    assert not suffix_matches("a.b", "a*b")


@SETTINGS
@given(
    slot=st.integers(0, 10**6),
    hash12=st.text(alphabet="0123456789abcdef", min_size=12, max_size=12),
    zone=labels,
    upper=st.booleans(),
    dot=st.booleans(),
)
def test_untsigd_claim_owner_round_trip(
    slot: int, hash12: str, zone: list[str], upper: bool, dot: bool
) -> None:
    zone_text = ".".join(zone)
    owner = f"claim-{slot}.mb-{hash12}.{zone_text}"
    owner = (owner.upper() if upper else owner) + ("." if dot else "")
    assert untsigd_claim_hash12(owner, zone_text) == hash12
    assert untsigd_claim_hash12(owner, zone_text + ".x") is None
    assert untsigd_claim_hash12("x." + owner, zone_text) is None
