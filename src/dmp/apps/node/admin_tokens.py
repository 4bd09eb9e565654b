"""Operator commands over the bearer-token store and audit log (layer: apps).

The functions behind ``dmp-node admin token issue|list|revoke|rotate`` and
``dmp-node admin audit tail`` (behaviour.md §b: the reference's
``dnsmesh-node-admin``). They work directly on a :class:`TokenStore` and an
:class:`AuditLog` (usually one ``SqliteTokenStore`` opened on the token DB);
the CLI parses flags, opens the store, calls one function and prints with the
``format_*``/``*_to_json`` helpers here.

A token is printed once, at issue; only its sha256 is stored. Each issue and
revoke is written to the audit log (``remote`` empty, ``detail`` ``admin …``).
Failures the operator can fix raise :class:`AdminError` (CLI exit code 1).
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Sequence
from typing import Final

import attrs

from dmp.apps.node.registration import RandomBytes
from dmp.domain.errors import BadSubject
from dmp.domain.registration import bearer_token_from_draw, canonicalize_subject, token_hash
from dmp.ports.tokens import AuditEntry, AuditEvent, AuditLog, TokenRecord, TokenStore

__all__ = [
    "AdminError",
    "IssuedToken",
    "audit_tail",
    "audit_to_json",
    "format_audit",
    "format_tokens",
    "issue_token",
    "list_tokens",
    "normalize_subject",
    "parse_duration",
    "revoke_tokens",
    "rotate_tokens",
    "token_to_json",
]

DEFAULT_RATE: Final = 10.0
DEFAULT_BURST: Final = 50
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX_PREFIX = re.compile(r"^[0-9a-fA-F]{4,64}$")


class AdminError(Exception):
    """An admin command cannot be carried out (bad argument, nothing matched)."""


@attrs.frozen
class IssuedToken:
    """A freshly minted token: the text (shown once) and what was stored."""

    token: str = attrs.field(repr=False)
    record: TokenRecord


def parse_duration(text: str) -> int:
    """Seconds from ``90d``, ``12h``, ``30m``, ``300s``, ``4w`` or a bare number of seconds.

    Raises:
        AdminError: not a positive duration.
    """
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise AdminError(f"bad duration {text!r} (use e.g. 90d, 12h, 300s, 4w)")
    return int(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]


def normalize_subject(subject: str) -> str:
    """The stored form of a subject: canonical ``user@host`` when it is one, else as given.

    Operator tokens may carry any label without whitespace (``ci-bot``); only
    ``user@host`` subjects can own names (behaviour.md §d).

    Raises:
        AdminError: empty, containing whitespace, or an ``@`` form that does
            not canonicalize.
    """
    text = subject.strip()
    if not text or any(c.isspace() for c in text):
        raise AdminError(f"bad subject {subject!r}")
    if "@" in text:
        try:
            return canonicalize_subject(text)
        except BadSubject as exc:
            raise AdminError(str(exc)) from exc
    return text


async def issue_token(
    tokens: TokenStore,
    audit: AuditLog,
    subject: str,
    *,
    random_bytes: RandomBytes,
    now: int | None = None,
    expires_in_s: int | None = None,
    rate_per_sec: float = DEFAULT_RATE,
    rate_burst: int = DEFAULT_BURST,
    note: str = "",
    prekey_x25519: str | None = None,
) -> IssuedToken:
    """Mint an admin token (``token issue``).

    Args:
        tokens: the token store.
        audit: the audit log.
        subject: who the token is for (see :func:`normalize_subject`).
        random_bytes: randomness (32 bytes are drawn).
        now: POSIX seconds (wall clock when None).
        expires_in_s: lifetime in seconds, or None for no expiry.
        rate_per_sec: per-token rate (0 disables the limit).
        rate_burst: per-token burst.
        note: free text stored with the token.
        prekey_x25519: ``--with-prekey-scope``: 64 hex X25519 public key.

    Raises:
        AdminError: bad subject, rate, burst, lifetime or prekey key.
    """
    subject = normalize_subject(subject)
    if rate_per_sec < 0 or rate_burst < 1:
        raise AdminError("rate must be >= 0 and burst >= 1")
    if expires_in_s is not None and expires_in_s <= 0:
        raise AdminError("expiry must be positive")
    if prekey_x25519 is not None:
        if not _HEX64.match(prekey_x25519):
            raise AdminError("--with-prekey-scope needs a 64-hex X25519 public key")
        prekey_x25519 = prekey_x25519.lower()
    t = int(_time.time()) if now is None else now
    token = bearer_token_from_draw(random_bytes(32))
    record = TokenRecord(
        token_hash=token_hash(token),
        subject=subject,
        issued_at=t,
        expires_at=None if expires_in_s is None else t + expires_in_s,
        rate_per_sec=float(rate_per_sec),
        rate_burst=int(rate_burst),
        note=note,
        prekey_x25519=prekey_x25519,
    )
    await tokens.add(record)
    await audit.append(
        AuditEntry(
            ts=float(t),
            event=AuditEvent.ISSUED,
            subject=subject,
            token_hash=record.token_hash,
            detail="admin issue" + (f": {note}" if note else ""),
        )
    )
    return IssuedToken(token, record)


async def list_tokens(
    tokens: TokenStore, *, subject: str | None = None, include_revoked: bool = False
) -> list[TokenRecord]:
    """Tokens, oldest first (``token list``); never token material."""
    if subject is not None:
        subject = normalize_subject(subject)
    return await tokens.find(subject=subject, include_revoked=include_revoked)


async def _revoke_all(
    tokens: TokenStore, audit: AuditLog, records: Sequence[TokenRecord], now: int, why: str
) -> list[TokenRecord]:
    done: list[TokenRecord] = []
    for rec in records:
        if await tokens.revoke(rec.token_hash, now):
            done.append(attrs.evolve(rec, revoked_at=now))
            await audit.append(
                AuditEntry(
                    ts=float(now),
                    event=AuditEvent.REVOKED,
                    subject=rec.subject,
                    token_hash=rec.token_hash,
                    detail=why,
                )
            )
    return done


async def revoke_tokens(
    tokens: TokenStore, audit: AuditLog, target: str, *, now: int | None = None
) -> list[TokenRecord]:
    """Revoke every live token of a subject, or the one token with a hash prefix (``token revoke``).

    A target that names a subject with live tokens revokes them all;
    otherwise it must be an unambiguous hex prefix (at least 4 characters)
    of one live token's hash.

    Returns:
        The revoked tokens (with ``revoked_at`` set).

    Raises:
        AdminError: nothing matched, or the prefix is ambiguous.
    """
    t = int(_time.time()) if now is None else now
    try:
        subject = normalize_subject(target)
    except AdminError:
        subject = None
    if subject is not None:
        live = await tokens.find(subject=subject)
        if live:
            return await _revoke_all(tokens, audit, live, t, "admin revoke")
    if not _HEX_PREFIX.match(target.strip()):
        raise AdminError(f"no live tokens for {target!r}")
    matches = await tokens.find(hash_prefix=target.strip().lower())
    if not matches:
        raise AdminError(f"no live token matches {target!r}")
    if len(matches) > 1:
        raise AdminError(f"hash prefix {target!r} is ambiguous ({len(matches)} live tokens)")
    return await _revoke_all(tokens, audit, matches, t, "admin revoke")


async def rotate_tokens(
    tokens: TokenStore,
    audit: AuditLog,
    subject: str,
    *,
    random_bytes: RandomBytes,
    now: int | None = None,
    expires_in_s: int | None = None,
    rate_per_sec: float = DEFAULT_RATE,
    rate_burst: int = DEFAULT_BURST,
) -> tuple[list[TokenRecord], IssuedToken]:
    """Revoke every live token of ``subject`` and mint a new one (``token rotate``).

    Returns:
        ``(revoked, issued)``.

    Raises:
        AdminError: bad subject or limits.
    """
    t = int(_time.time()) if now is None else now
    canonical = normalize_subject(subject)
    revoked = await _revoke_all(
        tokens, audit, await tokens.find(subject=canonical), t, "admin rotate"
    )
    issued = await issue_token(
        tokens,
        audit,
        canonical,
        random_bytes=random_bytes,
        now=t,
        expires_in_s=expires_in_s,
        rate_per_sec=rate_per_sec,
        rate_burst=rate_burst,
        note="rotated",
    )
    return revoked, issued


async def audit_tail(
    audit: AuditLog, *, limit: int = 50, event: AuditEvent | str | None = None
) -> list[AuditEntry]:
    """The most recent audit rows, newest first (``audit tail``).

    Raises:
        AdminError: unknown event name or non-positive limit.
    """
    if limit <= 0:
        raise AdminError("limit must be positive")
    if isinstance(event, str):
        try:
            event = AuditEvent(event.lower())
        except ValueError as exc:
            names = ", ".join(e.value for e in AuditEvent)
            raise AdminError(f"unknown event {event!r} (one of {names})") from exc
    return await audit.tail(limit=limit, event=event)


# -- output ------------------------------------------------------------------


def token_to_json(rec: TokenRecord) -> dict[str, object]:
    """A token's metadata as JSON (no token material; the hash only)."""
    return {
        "token_hash": rec.token_hash,
        "subject": rec.subject,
        "issued_at": rec.issued_at,
        "expires_at": rec.expires_at,
        "rate_per_sec": rec.rate_per_sec,
        "rate_burst": rec.rate_burst,
        "note": rec.note,
        "self_service": rec.self_service,
        "registered_spk": rec.registered_spk,
        "prekey_x25519": rec.prekey_x25519,
        "revoked_at": rec.revoked_at,
    }


def audit_to_json(entry: AuditEntry) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "ts": entry.ts,
        "event": entry.event.value,
        "subject": entry.subject,
        "token_hash": entry.token_hash,
        "detail": entry.detail,
        "remote": entry.remote,
    }


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(ts))


def format_tokens(records: Sequence[TokenRecord], now: float) -> str:
    """A plain-text table of tokens (hash prefix, subject, state, expiry, limits)."""
    if not records:
        return "no tokens"
    lines = [f"{'HASH':<12}  {'SUBJECT':<32}  {'STATE':<8}  {'EXPIRES':<20}  RATE/BURST  KIND"]
    for r in records:
        state = "revoked" if r.revoked else ("live" if r.live(now) else "expired")
        kind = "self-service" if r.self_service else "admin"
        lines.append(
            f"{r.token_hash[:12]:<12}  {r.subject:<32}  {state:<8}  {_when(r.expires_at):<20}  "
            f"{r.rate_per_sec:g}/{r.rate_burst:<8}  {kind}" + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)


def format_audit(entries: Sequence[AuditEntry]) -> str:
    """A plain-text listing of audit rows, one per line."""
    if not entries:
        return "no audit rows"
    return "\n".join(
        f"{_when(e.ts)}  {e.event.value:<9}  {e.subject or '-':<28}  "
        f"{(e.token_hash or '-')[:12]:<12}  {e.remote or '-':<15}  {e.detail}"
        for e in entries
    )
