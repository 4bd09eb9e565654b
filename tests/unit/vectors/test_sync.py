"""sync.json: value hashes, cursors, digest-entry checks, reserved owners and the digest order.

The HTTP endpoints themselves are the node's business; here the recorded
digest pages are used only to check the pure rules they follow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from dmp.domain.errors import BadCursor, BadDigestEntry
from dmp.domain.sync import (
    ORIGIN,
    PullAccepted,
    PullRefused,
    SyncCursor,
    Watermark,
    accept_pulled_value,
    is_reserved_owner,
    validate_digest_entry,
    value_hash,
)
from tests.vectors import h, load, params

V = load("sync.json")
HTTP = V["http"]


@pytest.mark.parametrize("case", params(V["value_hash"]))
def test_value_hash(case: dict[str, Any]) -> None:
    assert h(case["value_utf8"]).decode("utf-8") == case["value"]
    assert value_hash(case["value"]) == case["hash"]


def test_cursor_format() -> None:
    assert V["cursor_format"] == "<stored_ts_ms>:<name>:<value_hash>"
    assert SyncCursor(12, "a.example", "ab" * 32).to_text() == f"12:a.example:{'ab' * 32}"
    assert ORIGIN.to_text() == "0::"
    assert SyncCursor.parse_server("0::") == ORIGIN


@pytest.mark.parametrize("case", params(V["cursor_parse"]["cases"], key="raw"))
def test_cursor_parse(case: dict[str, Any]) -> None:
    now_ms = V["cursor_parse"]["now"] * 1000
    if case["server_parse"] is None:
        with pytest.raises(BadCursor):
            SyncCursor.parse_server(case["raw"])
    else:
        cursor = SyncCursor.parse_server(case["raw"])
        assert [cursor.stored_ts_ms, cursor.owner, cursor.value_hash] == case["server_parse"]
    worker = SyncCursor.parse_worker(case["raw"], now_ms=now_ms)
    if case["worker_parse"] is None:
        assert worker is None
    else:
        assert worker is not None
        assert [worker.stored_ts_ms, worker.owner, worker.value_hash] == case["worker_parse"]


@pytest.mark.parametrize("case", params(V["valid_digest_entry"]["cases"]))
def test_valid_digest_entry(case: dict[str, Any]) -> None:
    now_ms = V["valid_digest_entry"]["now"] * 1000
    entry = case["entry"]
    if case["valid"]:
        parsed = validate_digest_entry(entry, now_ms=now_ms)
        assert parsed.owner == entry["name"]
        assert parsed.value_hash == entry["hash"]
        assert parsed.stored_ts_ms == entry["ts"]
        assert parsed.ttl == entry["ttl"]
    else:
        with pytest.raises(BadDigestEntry):
            validate_digest_entry(entry, now_ms=now_ms)


@pytest.mark.parametrize("case", params(V["reserved_owner_names"], key="name"))
def test_reserved_owner_names(case: dict[str, Any]) -> None:
    assert is_reserved_owner(case["name"]) is case["reserved"]


# -- the recorded digest pages follow the cursor rules -----------------------


def _digest_pages() -> list[dict[str, Any]]:
    return [
        r
        for r in HTTP["requests"]
        if r["path"].startswith("/v1/sync/digest")
        and r["status"] == 200
        and "since=" not in r["path"]
    ]


def _query_cursor(path: str) -> SyncCursor:
    query = parse_qs(urlsplit(path).query)
    return SyncCursor.parse_server(query["cursor"][0]) if "cursor" in query else ORIGIN


@pytest.mark.parametrize("response", params(_digest_pages()))
def test_digest_page_follows_the_cursor_order(response: dict[str, Any]) -> None:
    now_ms = HTTP["query_at"] * 1000
    body = response["response_json"]
    start = _query_cursor(response["path"])
    entries = [validate_digest_entry(row, now_ms=now_ms) for row in body["records"]]
    cursors = [e.cursor for e in entries]
    # Strictly after the request cursor, strictly ascending.
    assert all(c > start for c in cursors)
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == len(cursors)
    # next_cursor: the last row, or the request cursor echoed.
    next_cursor = SyncCursor.parse_server(body["next_cursor"])
    assert next_cursor == (cursors[-1] if cursors else start)
    assert SyncCursor.parse_worker(body["next_cursor"], now_ms=now_ms) == next_cursor
    assert next_cursor.to_text() == body["next_cursor"]
    # A worker that handled every row lands exactly on the last one.
    moved = Watermark(start).advance(entries, lambda _e: True)
    assert moved.cursor == next_cursor


def test_digest_pages_present() -> None:
    assert _digest_pages()


def test_store_contents_hash_to_the_digest() -> None:
    """Every digest row's hash is value_hash of a stored value, and ts is the publish time in ms."""
    stored = {
        (row["name"], value_hash(row["value"])): int(row["published_at"] * 1000)
        for row in HTTP["store_contents"]
    }
    rows = [row for page in _digest_pages() for row in page["response_json"]["records"]]
    assert rows
    for row in rows:
        assert stored[(row["name"], row["hash"])] == row["ts"]


def test_paging_with_the_watermark_covers_the_full_digest() -> None:
    """Walking the limit=3 pages with a watermark visits exactly the full digest."""
    now_ms = HTTP["query_at"] * 1000
    full = [r for r in _digest_pages() if "cursor" not in r["path"] and "limit" not in r["path"]]
    paged = [r for r in _digest_pages() if "limit=" in r["path"]]
    if not full or not paged:
        pytest.skip("no full digest or no paged digest recorded")
    expected = [
        validate_digest_entry(row, now_ms=now_ms) for row in full[0]["response_json"]["records"]
    ]
    by_start = {_query_cursor(r["path"]): r for r in paged}
    watermark = Watermark()
    seen = []
    while watermark.cursor in by_start:
        page = by_start.pop(watermark.cursor)
        entries = [
            validate_digest_entry(row, now_ms=now_ms) for row in page["response_json"]["records"]
        ]
        seen += entries
        advanced = watermark.advance(entries, lambda _e: True)
        if advanced == watermark:
            break
        watermark = advanced
    assert seen == expected


# -- re-verifying pulled values ------------------------------------------------

VERIFY = V["verify_record"]


@pytest.mark.parametrize("case", params(VERIFY["cases"], key="kind"))
def test_verify_record(case: dict[str, Any]) -> None:
    outcome = accept_pulled_value(
        case["name"],
        case["value"],
        advertised_hashes={value_hash(case["value"])},
        now=VERIFY["now"],
    )
    if case["accepted"]:
        assert isinstance(outcome, PullAccepted), outcome
    else:
        assert isinstance(outcome, PullRefused), outcome
        assert outcome.reason


def _cluster_cases() -> list[dict[str, Any]]:
    return [c for c in VERIFY["cases"] if c["value"].startswith("v=dmp1;t=cluster;")]


def test_cluster_with_pinned_operator() -> None:
    pinned = VERIFY["cluster_with_pinned_operator"]
    cases = _cluster_cases()
    assert cases
    for case in cases:
        outcome = accept_pulled_value(
            case["name"],
            case["value"],
            advertised_hashes={value_hash(case["value"])},
            now=VERIFY["now"],
            cluster_operator_spk=h(pinned["cluster_operator_spk"]),
        )
        assert isinstance(outcome, PullAccepted) is pinned["accepted"]
        # Pinned to another key, the same manifest is refused.
        other = bytes(31) + b"\x07"
        refused = accept_pulled_value(
            case["name"],
            case["value"],
            advertised_hashes={value_hash(case["value"])},
            now=VERIFY["now"],
            cluster_operator_spk=other,
        )
        assert isinstance(refused, PullRefused)


@pytest.mark.parametrize("case", params(VERIFY["cases"], key="kind"))
def test_unadvertised_hash_is_refused(case: dict[str, Any]) -> None:
    """Whatever the value, it is refused when its hash was not in the peer's digest."""
    outcome = accept_pulled_value(
        case["name"],
        case["value"],
        advertised_hashes={value_hash(case["value"] + "x"), "0" * 64},
        now=VERIFY["now"],
    )
    assert isinstance(outcome, PullRefused)


def _record_type(value: str) -> str:
    return value.split(";")[1].removeprefix("t=")


def _tamper(value: str) -> str:
    """Change one base64 character two thirds into the value (never padding)."""
    i = len(value) * 2 // 3
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


# prekey and bootstrap values are only length-checked on pull, and a chunk's
# Reed-Solomon code repairs a one-byte change (wire.md §4, §9).
_SIGNED_CASES = [
    c
    for c in VERIFY["cases"]
    if c["accepted"]
    and c["value"].startswith("v=dmp")
    and _record_type(c["value"]) not in ("prekey", "bootstrap", "chunk")
]


@pytest.mark.parametrize("case", params(_SIGNED_CASES, key="kind"))
def test_tampered_signed_value_is_refused(case: dict[str, Any]) -> None:
    """Changing one payload character of an accepted signed value makes it fail re-verification."""
    tampered = _tamper(case["value"])
    outcome = accept_pulled_value(
        case["name"], tampered, advertised_hashes={value_hash(tampered)}, now=VERIFY["now"]
    )
    assert isinstance(outcome, PullRefused), (case["kind"], outcome)


@pytest.mark.parametrize(
    "case",
    params(
        [c for c in VERIFY["cases"] if c["accepted"] and c["value"].startswith("v=dmp1;t=chunk;")],
        key="kind",
    ),
)
def test_chunk_with_one_damaged_byte_is_repaired(case: dict[str, Any]) -> None:
    tampered = _tamper(case["value"])
    outcome = accept_pulled_value(
        case["name"], tampered, advertised_hashes={value_hash(tampered)}, now=VERIFY["now"]
    )
    assert outcome == PullAccepted("chunk")


def test_signed_cases_present() -> None:
    assert _SIGNED_CASES
