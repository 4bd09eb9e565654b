"""Properties of the sync cursor order, the watermark and the pull plan (wire.md §9)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dmp.domain.sync import (
    TTL_REFRESH_SLACK_S,
    DigestEntry,
    SyncCursor,
    Watermark,
    plan_pulls,
)

SETTINGS = settings(max_examples=200, deadline=None)

# Small alphabets so that equal timestamps and names (ties) are common.
timestamps = st.integers(0, 4)
owners = st.sampled_from(["", "a.example", "b.example", "a.example.", "id-1.z"])
hashes = st.sampled_from(["", "0" * 64, "1" * 64, "f" * 64])
cursors = st.builds(SyncCursor, timestamps, owners, hashes)
named_owners = st.sampled_from(["a.example", "b.example", "id-1.z", "slot-1.mb-ab.z"])
real_hashes = st.sampled_from(["0" * 64, "1" * 64, "a" * 64, "f" * 64])
entries = st.builds(
    DigestEntry,
    owner=named_owners,
    value_hash=real_hashes,
    stored_ts_ms=timestamps,
    ttl=st.integers(0, 100),
)


def _key(c: SyncCursor) -> tuple[int, str, str]:
    return (c.stored_ts_ms, c.owner, c.value_hash)


@SETTINGS
@given(a=cursors, b=cursors, c=cursors)
def test_cursor_order_is_total_and_matches_tuple_order(
    a: SyncCursor, b: SyncCursor, c: SyncCursor
) -> None:
    # Exactly one of <, ==, > (trichotomy), and the same answer as the tuple.
    assert [a < b, a == b, a > b].count(True) == 1
    assert (a < b) == (_key(a) < _key(b))
    assert (a == b) == (_key(a) == _key(b))
    assert (a <= b) == (_key(a) <= _key(b))
    # Antisymmetric and transitive.
    if a <= b and b <= a:
        assert a == b
    if a <= b and b <= c:
        assert a <= c
    if a < b and b < c:
        assert a < c


@SETTINGS
@given(
    ts=st.integers(0, 2**53),
    owner=st.from_regex(r"[A-Za-z0-9._-]{0,30}", fullmatch=True),
    hash_text=st.one_of(st.just(""), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
)
def test_cursor_text_round_trip(ts: int, owner: str, hash_text: str) -> None:
    cursor = SyncCursor(ts, owner, hash_text)
    assert SyncCursor.parse_server(cursor.to_text()) == cursor
    assert SyncCursor.parse_worker(cursor.to_text(), now_ms=ts) == cursor
    assert SyncCursor.parse_worker(cursor.to_text(), now_ms=ts - 60_001) is None


@st.composite
def page_and_handled(draw: st.DrawFn) -> tuple[SyncCursor, list[DigestEntry], set[DigestEntry]]:
    page = draw(st.lists(entries, max_size=12, unique_by=lambda e: e.cursor))
    handled = {e for e in page if draw(st.booleans())}
    start = draw(cursors)
    return start, draw(st.permutations(page)), handled


@SETTINGS
@given(case=page_and_handled())
def test_watermark_covers_exactly_the_handled_prefix(
    case: tuple[SyncCursor, list[DigestEntry], set[DigestEntry]],
) -> None:
    start, page, handled = case
    moved = Watermark(start).advance(page, handled.__contains__)
    # Never backwards.
    assert moved.cursor >= start
    ahead = [e for e in page if e.cursor > start]
    # Never at or past an unhandled entry that was ahead of it.
    for e in ahead:
        if e not in handled:
            assert moved.cursor < e.cursor
    # Everything it passed is handled, and it lands on an entry (or stays put).
    for e in ahead:
        if e.cursor <= moved.cursor:
            assert e in handled
    assert moved.cursor == start or moved.cursor in {e.cursor for e in ahead}
    # Maximal: the first entry after it, if any, is unhandled.
    after = sorted((e for e in ahead if e.cursor > moved.cursor), key=lambda e: e.cursor)
    if after:
        assert after[0] not in handled


@SETTINGS
@given(pages=st.lists(page_and_handled(), min_size=1, max_size=5))
def test_watermark_never_goes_backward_over_many_pages(
    pages: list[tuple[SyncCursor, list[DigestEntry], set[DigestEntry]]],
) -> None:
    watermark = Watermark()
    for _start, page, handled in pages:
        nxt = watermark.advance(page, handled.__contains__)
        assert nxt.cursor >= watermark.cursor
        watermark = nxt


@SETTINGS
@given(
    page=st.lists(entries, max_size=12),
    local=st.dictionaries(st.tuples(named_owners, real_hashes), st.integers(0, 100), max_size=10),
)
def test_plan_pulls(page: list[DigestEntry], local: dict[tuple[str, str], int]) -> None:
    planned = plan_pulls(page, local)
    keys = [e.key for e in planned]
    assert len(keys) == len(set(keys))
    for e in planned:
        assert e in page
        assert e.key not in local or e.ttl > local[e.key] + TTL_REFRESH_SLACK_S
    for e in page:
        if e.key not in local or e.ttl > local[e.key] + TTL_REFRESH_SLACK_S:
            assert e.key in keys
