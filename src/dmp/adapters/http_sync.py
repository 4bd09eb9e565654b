"""Anti-entropy HTTP endpoints: request parsing and response bodies (layer: adapters).

The routes themselves live in :mod:`dmp.adapters.http_api`; this module holds
what they decide, so that it can be tested without an app (wire.md §9,
behaviour.md §d):

* ``GET /v1/sync/digest?cursor=<ts>:<name>:<hash>&limit=<n>``: the unexpired
  rows strictly after the cursor in ``(stored_ts_ms, owner, value_hash)``
  order, ``{"records": [{"name", "hash", "ts", "ttl"}], "has_more",
  "next_cursor"}``. ``cursor`` defaults to ``0::`` and may omit the hash;
  the legacy ``since=<ts>`` (used only when there is no ``cursor``) means
  strictly after every row at ``ts``. ``limit`` defaults to 1000, is capped
  at 10000 and must be > 0. ``has_more`` says whether a row follows the
  page; ``next_cursor`` is the last row's position, or the request's cursor
  echoed when the page is empty. ``ttl`` is the remaining lifetime in
  seconds, at least 1.
* ``POST /v1/sync/pull`` with ``{"names": [...]}`` (a list of at most 256
  strings; trailing dots stripped, duplicates merged, names looked up as
  given, so case-sensitively): ``{"records": [{"name", "value", "ttl"}]}``, every unexpired value
  of those names in digest order; unknown names are simply absent.
* ``GET /v1/sync/cluster-manifest``: the highest-``seq`` cluster manifest
  stored at ``cluster.<DMP_CLUSTER_BASE_DOMAIN>`` as ``{"wire", "seq", "exp",
  "cluster_name"}``, or 204 when there is none (or no base domain). With a
  pinned ``DMP_SYNC_OPERATOR_SPK`` only manifests that fully verify under it
  for that cluster name count; without one, as in the reference, any value
  whose body decodes counts (signature, expiry and name unchecked: a peer
  verifies it against its own pinned key before installing it).

Errors are 400 ``{"error": ...}`` with the reference node's messages. An
empty ``cursor=``, ``since=`` or ``limit=`` counts as absent, as there.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Final

from dmp.domain.cluster import (
    CLUSTER_PREFIX,
    ClusterManifest,
    decode_cluster_body,
    signed_blob,
    verify_cluster,
)
from dmp.domain.errors import BadCursor, DmpError
from dmp.domain.keys import ED25519_SIG_LEN
from dmp.domain.sync import MAX_PULL_NAMES, ORIGIN, SyncCursor
from dmp.ports.store import StoredRecord

__all__ = [
    "DEFAULT_DIGEST_LIMIT",
    "MAX_DIGEST_LIMIT",
    "SyncRequestError",
    "cluster_manifest_body",
    "digest_body",
    "parse_digest_query",
    "parse_pull_names",
    "pull_body",
    "sync_token_matches",
]

DEFAULT_DIGEST_LIMIT: Final = 1000
MAX_DIGEST_LIMIT: Final = 10_000
#: ``since=<ts>`` becomes the cursor ``<ts>:\u00ff:g``: after every ASCII owner
#: and every hex hash at ``ts`` (the reference echoes the same text back).
_SINCE_OWNER: Final = "\u00ff"
_SINCE_HASH: Final = "g"
_CURSOR_ERROR: Final = "cursor must be '<ts>:<name>:<value_hash>'"
_INT: Final = re.compile(r"\s*[+-]?[0-9]+\s*")


class SyncRequestError(ValueError):
    """A sync request is malformed; the message is the 400 body's ``error``."""


def sync_token_matches(configured: str | None, presented: str | None) -> bool:
    """Whether ``presented`` is the configured peer token (constant time).

    Both sides are hashed first, so the comparison takes the same time
    whatever the lengths. No configured token matches nothing.
    """
    if not configured or not presented:
        return False
    want = hashlib.sha256(configured.encode("utf-8", "surrogatepass")).digest()
    got = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(want, got)


def _int(raw: str, field: str) -> int:
    if _INT.fullmatch(raw) is None:
        raise SyncRequestError(f"{field} must be an integer")
    try:
        return int(raw)
    except ValueError:  # more digits than int() converts
        raise SyncRequestError(f"{field} must be an integer") from None


def parse_digest_query(args: Mapping[str, str]) -> tuple[SyncCursor, int]:
    """``(cursor, limit)`` from the digest's query parameters.

    Checked in the reference's order: ``cursor``, then ``since`` (only when
    there is no cursor), then ``limit``.

    Raises:
        SyncRequestError: a malformed cursor, a non-integer or negative
            ``since``, a non-integer or non-positive ``limit``.
    """
    cursor = ORIGIN
    raw_cursor = args.get("cursor", "")
    raw_since = args.get("since", "")
    if raw_cursor:
        try:
            cursor = SyncCursor.parse_server(raw_cursor)
        except BadCursor as exc:
            raise SyncRequestError(str(exc)) from None
        except ValueError:  # a ts with more digits than int() converts
            raise SyncRequestError(_CURSOR_ERROR) from None
    elif raw_since:
        since = _int(raw_since, "since")
        if since < 0:
            raise SyncRequestError("since must be >= 0")
        cursor = SyncCursor(since, _SINCE_OWNER, _SINCE_HASH)
    limit = DEFAULT_DIGEST_LIMIT
    raw_limit = args.get("limit", "")
    if raw_limit:
        limit = _int(raw_limit, "limit")
        if limit <= 0:
            raise SyncRequestError("limit must be > 0")
    return cursor, min(limit, MAX_DIGEST_LIMIT)


def digest_body(
    rows: list[StoredRecord], cursor: SyncCursor, limit: int, now: float
) -> dict[str, object]:
    """The digest response for ``rows`` (fetched with ``limit + 1`` to learn ``has_more``)."""
    page = rows[:limit]
    last = page[-1] if page else None
    next_cursor = (
        cursor if last is None else SyncCursor(last.stored_ts_ms, last.owner, last.value_hash)
    )
    return {
        "records": [
            {
                "name": rec.owner,
                "hash": rec.value_hash,
                "ts": rec.stored_ts_ms,
                "ttl": rec.remaining_ttl(now),
            }
            for rec in page
        ],
        "has_more": len(rows) > limit,
        "next_cursor": next_cursor.to_text(),
    }


def parse_pull_names(present: bool, body: object) -> list[str]:
    """The distinct owners to look up for a pull, trailing dots stripped, in request order.

    Args:
        present: whether the request had a body (none counts as ``{}``).
        body: the parsed JSON body, None when it was not JSON (or ``null``).

    Raises:
        SyncRequestError: not JSON; ``names`` missing or not a list; more
            than 256 names; a name that is not a string.
    """
    if not present:
        body = {}
    elif body is None:
        raise SyncRequestError("invalid body")
    names = body.get("names") if isinstance(body, dict) else None
    if not isinstance(names, list):
        raise SyncRequestError("names must be a list")
    if len(names) > MAX_PULL_NAMES:
        raise SyncRequestError(f"at most {MAX_PULL_NAMES} names per request")
    if not all(isinstance(name, str) for name in names):
        raise SyncRequestError("names must be strings")
    # A non-ASCII name cannot be a stored owner (nor be looked up in sqlite
    # when it holds a lone surrogate): it is simply not found.
    return list(dict.fromkeys(name.rstrip(".") for name in names if name.isascii()))


def pull_body(rows: Iterable[StoredRecord], now: float) -> dict[str, object]:
    """The pull response: every row, in digest order, with its remaining TTL."""
    ordered = sorted(rows, key=lambda rec: (rec.stored_ts_ms, rec.owner, rec.value_hash))
    return {
        "records": [
            {"name": rec.owner, "value": rec.value, "ttl": rec.remaining_ttl(now)}
            for rec in ordered
        ]
    }


def cluster_manifest_body(
    values: Iterable[str], *, operator_spk: bytes | None, base: str, now: int
) -> dict[str, object] | None:
    """The manifest response for the values stored at ``cluster.<base>``, or None (204).

    Args:
        values: the TXT values at ``cluster.<base>``, in store order (the
            first of equal ``seq`` wins).
        operator_spk: the pinned operator key, if any.
        base: the cluster base domain (the expected ``cluster_name`` when pinned).
        now: POSIX seconds, for the expiry check when pinned.
    """
    best: tuple[str, ClusterManifest] | None = None
    for wire in values:
        try:
            if operator_spk is not None:
                manifest = verify_cluster(wire, operator_spk, now=now, expected_cluster_name=base)
            else:
                blob = signed_blob(wire, CLUSTER_PREFIX, ED25519_SIG_LEN)
                manifest = decode_cluster_body(blob[:-ED25519_SIG_LEN])
        except DmpError:
            continue
        if best is None or manifest.seq > best[1].seq:
            best = (wire, manifest)
    if best is None:
        return None
    wire, manifest = best
    return {
        "wire": wire,
        "seq": manifest.seq,
        "exp": manifest.exp,
        "cluster_name": manifest.cluster_name,
    }
