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
* :func:`accept_pulled_value` decides whether a pulled value is stored: its
  hash must be one the peer advertised for that owner and it must re-verify
  by type. A refusal is a policy outcome, so it is returned
  (:class:`PullRefused`), not raised.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

import attrs
import dns.name

from dmp.domain.bootstrap import BOOTSTRAP_PREFIX
from dmp.domain.chunk import parse_chunk_txt, unwrap_block
from dmp.domain.claim import verify_claim
from dmp.domain.cluster import CLUSTER_PREFIX, decode_cluster_body, signed_blob, verify_cluster
from dmp.domain.codec import (
    THIRTY_DAYS_S,
    b64decode_lenient,
    b64decode_strict,
    check_expiry_cap,
    strip_prefix,
)
from dmp.domain.errors import BadCursor, BadDigestEntry, DmpError, MalformedRecord
from dmp.domain.identity import verify_identity
from dmp.domain.keys import ED25519_SIG_LEN
from dmp.domain.manifest import parse_manifest
from dmp.domain.prekey import PREKEY_PREFIX
from dmp.domain.rotation import verify_revocation, verify_rotation

__all__ = [
    "FUTURE_TS_SLACK_MS",
    "MAX_DIGEST_TTL",
    "MAX_PULL_NAMES",
    "ORIGIN",
    "TTL_REFRESH_SLACK_S",
    "DigestEntry",
    "PullAccepted",
    "PullRefused",
    "SyncCursor",
    "Watermark",
    "accept_pulled_value",
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


# -- re-verifying pulled values ------------------------------------------------

_MIN_SIGNED_BLOB: Final = ED25519_SIG_LEN + 1
"""Prekey and bootstrap values are only checked to decode to at least this many bytes."""


@attrs.frozen
class PullAccepted:
    """Store the pulled value (with the TTL the peer sent).

    Attributes:
        kind: what it verified as: ``chunk``, ``manifest``, ``identity``,
            ``prekey``, ``cluster``, ``bootstrap``, ``rotation``,
            ``revocation``, ``claim``, or ``text`` (non-DMP TXT at an
            ordinary owner).
    """

    kind: str


@attrs.frozen
class PullRefused:
    """Do not store the pulled value; ``reason`` says why (for logs and metrics)."""

    reason: str


def _dmp_type(value: str) -> str | None:
    """The ``t=`` field of a ``;``-separated ``key=value`` DMP TXT value."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, field_value = part.partition("=")
        if sep:
            fields[key] = field_value
    return fields.get("t")


def _check_min_blob(blob: bytes, kind: str) -> None:
    if len(blob) < _MIN_SIGNED_BLOB:
        raise MalformedRecord(
            f"{kind} payload of {len(blob)} bytes is shorter than {_MIN_SIGNED_BLOB}"
        )


def _verify_cluster_record(value: str, operator_spk: bytes | None, now: int) -> None:
    if operator_spk is None:
        # No pinned key: the manifest must at least verify under its own embedded key.
        blob = signed_blob(value, CLUSTER_PREFIX, ED25519_SIG_LEN)
        operator_spk = decode_cluster_body(blob[:-ED25519_SIG_LEN]).operator_spk
    verify_cluster(value, operator_spk, now=now)


def _verify_by_type(kind: str, value: str, *, now: int, operator_spk: bytes | None) -> None:
    if kind == "chunk":
        unwrap_block(parse_chunk_txt(value))
    elif kind == "manifest":
        manifest = parse_manifest(value)
        check_expiry_cap(manifest.exp, now, THIRTY_DAYS_S)
    elif kind == "identity":
        verify_identity(value)
    elif kind == "prekey":
        _check_min_blob(b64decode_lenient(strip_prefix(value, PREKEY_PREFIX)), kind)
    elif kind == "cluster":
        _verify_cluster_record(value, operator_spk, now)
    elif kind == "bootstrap":
        _check_min_blob(b64decode_strict(strip_prefix(value, BOOTSTRAP_PREFIX)), kind)
    elif kind == "rotation":
        verify_rotation(value, None, None, now=now)
    elif kind == "revocation":
        verify_revocation(value, None, None, now=now)
    elif kind == "claim":
        verify_claim(value, now=now)
    else:  # pragma: no cover - guarded by _PULLABLE_TYPES
        raise AssertionError(kind)


_PULLABLE_TYPES: Final = frozenset(
    {
        "chunk",
        "manifest",
        "identity",
        "prekey",
        "cluster",
        "bootstrap",
        "rotation",
        "revocation",
        "claim",
    }
)


def accept_pulled_value(
    owner: str | dns.name.Name,
    value: str,
    *,
    advertised_hashes: Collection[str],
    now: int,
    cluster_operator_spk: bytes | None = None,
) -> PullAccepted | PullRefused:
    """Whether the puller stores a value a peer returned from ``/v1/sync/pull`` (wire.md §9).

    In order: ``value_hash(value)`` must be one of the hashes the peer's
    digest advertised for ``owner``; then a ``v=dmp…`` value must re-verify
    by its ``t=`` type:

    * manifest (signature; ``exp`` at most 30 days ahead), identity, claim,
      rotation, revocation: the full signature and time checks of the type;
    * cluster: against ``cluster_operator_spk`` when the node pins one, else
      against the key embedded in the manifest;
    * prekey, bootstrap: the payload decodes to at least 65 bytes (the
      signer of a prekey is not in the record);
    * chunk: the decoded ``d=`` bytes unwrap (Reed–Solomon and checksum);
    * any other type (``heartbeat`` included): refused.

    Non-DMP text is refused at a DMP-shaped owner (:func:`is_reserved_owner`)
    and accepted anywhere else.

    Args:
        owner: the owner the value was pulled for.
        value: the pulled TXT value.
        advertised_hashes: the peer's digest hashes for ``owner``.
        now: current time, POSIX seconds.
        cluster_operator_spk: the pinned cluster operator key
            (``DMP_SYNC_OPERATOR_SPK``), if any.

    Returns:
        :class:`PullAccepted` (store it with the pulled TTL) or
        :class:`PullRefused`.
    """
    if value_hash(value) not in advertised_hashes:
        return PullRefused("value hash was not advertised in the digest for this owner")
    if not value.startswith("v=dmp"):
        if is_reserved_owner(owner):
            return PullRefused("non-DMP text at a DMP-shaped owner")
        return PullAccepted("text")
    kind = _dmp_type(value)
    if kind not in _PULLABLE_TYPES:
        return PullRefused(f"DMP record type {kind!r} is not replicated")
    try:
        _verify_by_type(kind, value, now=now, operator_spk=cluster_operator_spk)
    except DmpError as exc:
        return PullRefused(f"{kind} record does not verify: {type(exc).__name__}: {exc}")
    return PullAccepted(kind)
