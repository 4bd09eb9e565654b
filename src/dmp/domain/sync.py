"""Anti-entropy between cluster peers: cursors, digest checks, pull decisions (layer: domain; pure).

wire.md §9. Every node keeps rows ``(owner, value, ttl, stored_ts_ms,
value_hash)`` and serves a digest ordered by ``(stored_ts_ms, owner,
value_hash)``; a peer pages through it with a cursor
``<stored_ts_ms>:<owner>:<value_hash>``, pulls the values it lacks and
re-verifies them before storing.

Rules of this module:

* :class:`SyncCursor` is the only place the digest order lives; it is
  ``attrs``-ordered over ``(stored_ts_ms, owner, value_hash)``, exactly the
  server's sort order.
* Two cursor parsers: :meth:`SyncCursor.parse_server` (the digest endpoint;
  failure raises :class:`BadCursor`, HTTP 400) and
  :meth:`SyncCursor.parse_worker` (the puller reading a peer's
  ``next_cursor``; anything unusable, including a ``ts`` more than 60 s in
  the future, is ignored and gives ``None``).
* A peer's digest rows are untrusted: :func:`validate_digest_entry` raises
  :class:`BadDigestEntry` for anything off-shape.
* :func:`plan_pulls` decides what to pull: pairs missing locally, or whose
  peer TTL exceeds ours by more than 5 s.
* :class:`Watermark` advances only across the contiguous prefix of handled
  entries and never moves backwards; a peer's ``next_cursor`` never moves it.
* :func:`is_reserved_owner` names the DMP-shaped owners at which non-DMP
  text is refused on pull.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import attrs
import dns.name

from dmp.domain.errors import BadCursor, BadDigestEntry

__all__ = [
    "FUTURE_TS_SLACK_MS",
    "MAX_DIGEST_TTL",
    "MAX_PULL_NAMES",
    "ORIGIN",
    "TTL_REFRESH_SLACK_S",
    "DigestEntry",
    "SyncCursor",
    "Watermark",
    "is_reserved_owner",
    "plan_pulls",
    "pull_names",
    "validate_digest_entry",
    "value_hash",
]

FUTURE_TS_SLACK_MS: Final = 60_000
"""A peer's ``ts`` may be at most this far ahead of our clock (ms)."""
MAX_DIGEST_TTL: Final = 2**31
TTL_REFRESH_SLACK_S: Final = 5
"""Pull a pair we hold only when the peer's remaining TTL beats ours by more than this."""
MAX_PULL_NAMES: Final = 256
"""At most this many names per ``POST /v1/sync/pull``."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,253}")
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")
_TS_RE: Final = re.compile(r"[0-9]+")
_CURSOR_ERROR: Final = "cursor must be '<ts>:<name>:<value_hash>'"


def value_hash(value: str) -> str:
    """``sha256(utf8(value))`` as lowercase hex: the digest's ``hash`` of a TXT value."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@attrs.frozen(order=True)
class SyncCursor:
    """A position in a node's digest: everything strictly after it comes next.

    Ordered exactly like the digest, by ``(stored_ts_ms, owner, value_hash)``.

    Attributes:
        stored_ts_ms: local acceptance time of the row, in milliseconds (≥ 0).
        owner: the row's owner name as stored (``""`` at the origin).
        value_hash: :func:`value_hash` of the row's value (``""`` = before every
            value of ``owner`` at that time).
    """

    stored_ts_ms: int = 0
    owner: str = ""
    value_hash: str = ""

    def to_text(self) -> str:
        """``<stored_ts_ms>:<owner>:<value_hash>``, the wire form (``0::`` at the origin)."""
        return f"{self.stored_ts_ms}:{self.owner}:{self.value_hash}"

    @classmethod
    def parse_server(cls, raw: str) -> SyncCursor:
        """Parse the digest endpoint's ``cursor=`` parameter (wire.md §9).

        Accepts ``<ts>:<name>:<hash>`` and ``<ts>:<name>`` (hash ``""``);
        ``ts`` is ASCII decimal, ``name`` is empty or ``[A-Za-z0-9._-]{1,253}``,
        ``hash`` is empty or 64 lowercase hex.

        Raises:
            BadCursor: any other shape (the endpoint answers 400).
        """
        if not isinstance(raw, str):
            raise BadCursor(_CURSOR_ERROR)
        parts = raw.split(":")
        if len(parts) == 2:
            parts.append("")
        if len(parts) != 3:
            raise BadCursor(_CURSOR_ERROR)
        ts_text, owner, hash_text = parts
        if _TS_RE.fullmatch(ts_text) is None:
            raise BadCursor(_CURSOR_ERROR)
        if owner and _NAME_RE.fullmatch(owner) is None:
            raise BadCursor(_CURSOR_ERROR)
        if hash_text and _HASH_RE.fullmatch(hash_text) is None:
            raise BadCursor(_CURSOR_ERROR)
        return cls(int(ts_text), owner, hash_text)

    @classmethod
    def parse_worker(cls, raw: object, *, now_ms: int) -> SyncCursor | None:
        """Read a peer's ``next_cursor`` as the puller does (wire.md §9).

        Same grammar as :meth:`parse_server`, and additionally ``ts`` must be
        at most :data:`FUTURE_TS_SLACK_MS` after ``now_ms``.

        Args:
            raw: the peer's ``next_cursor`` (any JSON value).
            now_ms: our clock, in milliseconds.

        Returns:
            The cursor, or ``None`` when it is to be ignored (a policy
            outcome about untrusted peer data, not an error).
        """
        if not isinstance(raw, str):
            return None
        try:
            cursor = cls.parse_server(raw)
        except BadCursor:
            return None
        if cursor.stored_ts_ms > now_ms + FUTURE_TS_SLACK_MS:
            return None
        return cursor


ORIGIN: Final = SyncCursor()


@attrs.frozen
class DigestEntry:
    """One validated row of a peer's digest.

    Attributes:
        owner: the owner name as the peer sent it.
        value_hash: 64 lowercase hex.
        stored_ts_ms: the peer's acceptance time, in milliseconds.
        ttl: remaining lifetime at the peer, in seconds.
    """

    owner: str
    value_hash: str
    stored_ts_ms: int
    ttl: int

    @property
    def key(self) -> tuple[str, str]:
        """``(owner, value_hash)``: the identity of a stored value."""
        return (self.owner, self.value_hash)

    @property
    def cursor(self) -> SyncCursor:
        """This row's position in the digest order."""
        return SyncCursor(self.stored_ts_ms, self.owner, self.value_hash)


def validate_digest_entry(entry: Mapping[str, object], *, now_ms: int) -> DigestEntry:
    """Check one row of a peer's ``/v1/sync/digest`` answer (wire.md §9).

    Args:
        entry: the JSON object ``{"name", "hash", "ts", "ttl"}``.
        now_ms: our clock, in milliseconds.

    Returns:
        The row as a :class:`DigestEntry`.

    Raises:
        BadDigestEntry: not a mapping; ``name`` not ``[A-Za-z0-9._-]{1,253}``;
            ``hash`` not 64 lowercase hex; ``ts`` not an int in
            ``[0, now_ms + 60000]``; ``ttl`` not an int in ``[0, 2**31]``
            (booleans are not ints here).
    """
    if not isinstance(entry, Mapping):
        raise BadDigestEntry(f"digest entry must be an object, got {type(entry).__name__}")
    name = entry.get("name")
    hash_text = entry.get("hash")
    ts = entry.get("ts")
    ttl = entry.get("ttl")
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise BadDigestEntry(f"digest entry name {name!r} is not a DNS-shaped name")
    if not isinstance(hash_text, str) or _HASH_RE.fullmatch(hash_text) is None:
        raise BadDigestEntry(f"digest entry hash {hash_text!r} is not 64 lowercase hex")
    if (
        not isinstance(ts, int)
        or isinstance(ts, bool)
        or not 0 <= ts <= now_ms + FUTURE_TS_SLACK_MS
    ):
        raise BadDigestEntry(f"digest entry ts {ts!r} is not an int in [0, now+60s] (ms)")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_DIGEST_TTL:
        raise BadDigestEntry(f"digest entry ttl {ttl!r} is not an int in [0, 2**31]")
    return DigestEntry(owner=name, value_hash=hash_text, stored_ts_ms=ts, ttl=ttl)


def plan_pulls(
    entries: Iterable[DigestEntry], local_ttls: Mapping[tuple[str, str], int]
) -> list[DigestEntry]:
    """Which digest rows to pull (wire.md §9).

    A row is pulled when its ``(owner, value_hash)`` is missing locally, or
    when the peer's remaining TTL exceeds ours by more than
    :data:`TTL_REFRESH_SLACK_S` (a republish we have not seen).

    Args:
        entries: validated digest rows, in digest order.
        local_ttls: our remaining TTL in seconds per ``(owner, value_hash)``
            we hold (unexpired rows only).

    Returns:
        The rows to pull, in input order, each ``(owner, value_hash)`` once.
    """
    planned: list[DigestEntry] = []
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.key in seen:
            continue
        ours = local_ttls.get(entry.key)
        if ours is None or entry.ttl > ours + TTL_REFRESH_SLACK_S:
            planned.append(entry)
            seen.add(entry.key)
    return planned


def pull_names(entries: Iterable[DigestEntry]) -> list[str]:
    """The distinct owners of ``entries`` in first-seen order (the ``names`` of a pull).

    Callers send them in batches of at most :data:`MAX_PULL_NAMES`.
    """
    return list(dict.fromkeys(entry.owner for entry in entries))


@attrs.frozen
class Watermark:
    """How far one peer's digest has been fully handled (wire.md §9).

    The worker keeps one per peer, in memory, starting at the origin
    ``0::``, and asks for the digest after ``cursor``.
    """

    cursor: SyncCursor = ORIGIN

    def advance(
        self, entries: Iterable[DigestEntry], handled: Callable[[DigestEntry], bool]
    ) -> Watermark:
        """Move over the contiguous handled prefix of ``entries``.

        Rows at or before the current cursor are ignored; the rest are taken
        in digest order, and the watermark moves to each one while it is
        handled, stopping before the first one that is not. So the result is
        never behind ``self`` and never at or past an unhandled row that was
        ahead of ``self``.

        Args:
            entries: a page of validated digest rows (any order).
            handled: whether a row is done with: it needed no pull, or its
                value was stored, or it was refused for good. A row whose
                pull failed or whose value the peer did not return is not.

        Returns:
            The new watermark (``self`` when nothing moved).
        """
        cursor = self.cursor
        for entry in sorted((e for e in entries if e.cursor > self.cursor), key=_cursor_of):
            if not handled(entry):
                break
            cursor = entry.cursor
        return self if cursor == self.cursor else Watermark(cursor)


def _cursor_of(entry: DigestEntry) -> SyncCursor:
    return entry.cursor


# -- reserved owner names ----------------------------------------------------

_RESERVED_FIRST_LABEL: Final = re.compile(
    r"slot-[0-9]+"
    r"|chunk-[0-9]+-[0-9a-f]+"
    r"|claim-[0-9]+"
    r"|mb-[0-9a-f]+"
    r"|id-[0-9a-f]+"
    r"|pk-[0-9]+"
    r"|prekeys"
    r"|rotate"
    r"|dmp"
    r"|_dmp"
    r"|cluster"
    r"|_dnsmesh-heartbeat"
    r"|_dnsmesh-seen"
    r"|_dnsmesh-claim-[0-9a-f*]+"
)


def is_reserved_owner(owner: str | dns.name.Name) -> bool:
    """Whether ``owner`` is DMP-shaped, so that non-DMP TXT text is refused there on pull.

    Reserved: owners whose first label (case-insensitive) is one a DMP
    record lives under: ``slot-<n>``, ``chunk-<n>-<hex>``, ``claim-<n>``,
    ``mb-<hex>``, ``id-<hex>``, ``pk-<n>``, ``prekeys``, ``rotate``, ``dmp``,
    ``_dmp``, ``cluster``, ``_dnsmesh-heartbeat``, ``_dnsmesh-seen``,
    ``_dnsmesh-claim-<hex>`` (wire.md §2, §9). Anything else, the zone apex
    included, may carry ordinary TXT (SPF, DKIM, site verification).
    """
    text = owner.to_text(omit_final_dot=True) if isinstance(owner, dns.name.Name) else owner
    first = text.split(".", 1)[0].lower()
    return _RESERVED_FIRST_LABEL.fullmatch(first) is not None
