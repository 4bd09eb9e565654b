"""TSIG key names, scope suffixes and the UPDATE authorizer (layer: domain; pure).

wire.md §7. A node mints one TSIG key per registered subject:

* key name ``{local}-{spk_hex[:8]}-{sha256(utf8(subject)).hex[:6]}.{zone}.``
  (``local`` = the canonical subject's local part);
* secret = 32 random bytes (hex on the wire), algorithm ``hmac-sha256``;
* a list of owner *suffixes* the key may write (:func:`compute_scopes`).
  Identity hashes use the local part, not the whole subject.

Rules of the matcher (:func:`suffix_matches`):

* comparison ignores case and one trailing dot on either side;
* a literal suffix (no ``*``) matches the owner itself and every name below
  it, on label boundaries (``Name.is_subdomain``);
* a suffix with ``*`` is a right-aligned, label-by-label glob: each suffix
  label matches the owner label at the same distance from the right, ``*``
  matches any run of characters inside one label (possibly empty) and never
  crosses a dot; the owner may carry extra leading labels;
* DELETE is authorized only through a literal suffix (:func:`authorize`), so a
  wildcard scope can add to shared mailbox names but never remove others'
  records.

The un-TSIG'd path accepts only claim ADDs at
``claim-<digits>.mb-<12 hex>.<zone>`` (:func:`untsigd_claim_hash12`).
Authorization outcomes are policy, so they are returned (:class:`Allowed`,
:class:`Refused`), not raised.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

import attrs
import dns.exception
import dns.name
import dns.rcode

from dmp.domain.errors import KeyNameTooLong, ScopeError
from dmp.domain.registration import canonicalize_subject

__all__ = [
    "MAX_KEY_LABEL",
    "TSIG_ALGORITHM",
    "TSIG_SECRET_LEN",
    "Allowed",
    "Refused",
    "ScopeMode",
    "UpdateOp",
    "authorize",
    "compute_scopes",
    "is_wildcard",
    "key_name",
    "mailbox_scope_hash12",
    "stored_scopes",
    "suffix_matches",
    "tsig_secret_hex",
    "untsigd_claim_hash12",
]

TSIG_ALGORITHM: Final = "hmac-sha256"
TSIG_SECRET_LEN: Final = 32
MAX_KEY_LABEL: Final = 63


class ScopeMode(enum.Enum):
    """Which suffix list a minted key gets (wire.md §7.2).

    ``DEFAULT``: the user's own names plus the shared mailbox wildcards.
    ``TIGHT`` (``DMP_TSIG_TIGHT_SCOPE=1``): without the four wildcard suffixes.
    ``LOOSE`` (``DMP_TSIG_LOOSE_SCOPE=1``): the whole served zone.
    """

    DEFAULT = "default"
    TIGHT = "tight"
    LOOSE = "loose"


class UpdateOp(enum.Enum):
    """The kind of one RFC 2136 update RR: ADD (class IN) or DELETE (class NONE/ANY)."""

    ADD = "add"
    DELETE = "delete"


def _strip_dot(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zone_text(zone: str | dns.name.Name) -> str:
    text = zone.to_text(omit_final_dot=True) if isinstance(zone, dns.name.Name) else zone
    return _strip_dot(text).lower()


def tsig_secret_hex(draw: bytes) -> str:
    """The ``tsig_secret_hex`` of a key minted from 32 random bytes (wire.md §7.1).

    Raises:
        ValueError: ``draw`` is not 32 bytes.
    """
    if len(draw) != TSIG_SECRET_LEN:
        raise ValueError(f"TSIG secret draw must be {TSIG_SECRET_LEN} bytes, got {len(draw)}")
    return draw.hex()


def key_name(subject: str, ed25519_public: bytes, zone: str | dns.name.Name) -> dns.name.Name:
    """The TSIG key name minted for ``subject`` (wire.md §7.1).

    Args:
        subject: the registration subject (canonicalized here).
        ed25519_public: the registrant's 32-byte Ed25519 public key.
        zone: the node's served zone (trailing dot optional).

    Returns:
        The absolute name ``{local}-{spk_hex[:8]}-{sha256(subject).hex[:6]}.{zone}.``,
        e.g. ``alice-f6eff01c-29b772.example.``. A local part with dots gives
        more than one label (``bob.smith`` → ``bob.smith-…``).

    Raises:
        BadSubject: ``subject`` does not canonicalize.
        KeyNameTooLong: ``{local}-{spk8}-{hash6}`` is over 63 octets (HTTP 400).
        ScopeError: the result is not a valid DNS name (an empty label from
            ``..`` in the local part, or over 255 octets).
    """
    canonical = canonicalize_subject(subject)
    local = canonical.partition("@")[0]
    first = f"{local}-{ed25519_public.hex()[:8]}-{_sha_hex(canonical.encode('utf-8'))[:6]}"
    if len(first.encode("ascii")) > MAX_KEY_LABEL:
        raise KeyNameTooLong(
            f"TSIG key name label {first!r} is {len(first)} octets (max {MAX_KEY_LABEL})"
        )
    try:
        return dns.name.from_text(f"{first}.{_zone_text(zone)}.")
    except dns.exception.DNSException as exc:
        raise ScopeError(f"TSIG key name for {canonical!r} is not a valid DNS name") from exc


def mailbox_scope_hash12(x25519_public: bytes) -> str:
    """``sha256(sha256(x25519_public)).hex[:12]``: the ``mb-`` label of a mailbox."""
    return _sha_hex(hashlib.sha256(x25519_public).digest())[:12]


def compute_scopes(
    subject: str,
    ed25519_public: bytes,
    zone: str | dns.name.Name,
    mode: ScopeMode,
    x25519_public: bytes | None,
) -> tuple[str, ...]:
    """The scope suffixes of a minted key, in the order the reference builds them (wire.md §7.2).

    With ``z`` the served zone and ``h16``/``h12`` = ``sha256(utf8(local)).hex[:16/12]``:
    ``DEFAULT`` = ``id-{h16}.z``, ``id-{h12}.z``, ``_dnsmesh-claim-{spk_hex[:16]}.z``,
    ``_dnsmesh-claim-*.z``, ``slot-*.mb-*.z``, ``chunk-*-*.z``, ``claim-*.mb-*.z``,
    then ``mb-{mailbox_scope_hash12(x25519_public)}.z``; ``TIGHT`` drops the four
    wildcards; ``LOOSE`` is just ``z``.

    Args:
        subject: the registration subject (canonicalized here).
        ed25519_public: the registrant's 32-byte Ed25519 public key.
        zone: the served zone.
        mode: which list.
        x25519_public: the registrant's X25519 public key **only when its
            proof of possession verified**; ``None`` omits the ``mb-`` suffix.

    Returns:
        Lowercase suffixes without a trailing dot, in computed order.

    Raises:
        BadSubject: ``subject`` does not canonicalize.
    """
    z = _zone_text(zone)
    if mode is ScopeMode.LOOSE:
        return (z,)
    local = canonicalize_subject(subject).partition("@")[0]
    local_hash = _sha_hex(local.encode("utf-8"))
    scopes = [
        f"id-{local_hash[:16]}.{z}",
        f"id-{local_hash[:12]}.{z}",
        f"_dnsmesh-claim-{ed25519_public.hex()[:16]}.{z}",
    ]
    if mode is ScopeMode.DEFAULT:
        scopes += [
            f"_dnsmesh-claim-*.{z}",
            f"slot-*.mb-*.{z}",
            f"chunk-*-*.{z}",
            f"claim-*.mb-*.{z}",
        ]
    if x25519_public is not None:
        scopes.append(f"mb-{mailbox_scope_hash12(x25519_public)}.{z}")
    return tuple(scopes)


def stored_scopes(
    subject: str,
    ed25519_public: bytes,
    zone: str | dns.name.Name,
    mode: ScopeMode,
    x25519_public: bytes | None,
) -> tuple[str, ...]:
    """:func:`compute_scopes`, lowercased and sorted: the keystore form and ``allowed_suffixes``.

    Raises:
        BadSubject: ``subject`` does not canonicalize.
    """
    computed = compute_scopes(subject, ed25519_public, zone, mode, x25519_public)
    return tuple(sorted({s.lower() for s in computed}))


# -- matching --------------------------------------------------------------


def is_wildcard(suffix: str) -> bool:
    """Whether ``suffix`` is a glob (contains ``*``) rather than a literal suffix."""
    return "*" in suffix


def _owner_name(owner: str | dns.name.Name) -> dns.name.Name | None:
    if isinstance(owner, dns.name.Name):
        return owner if owner.is_absolute() else owner.concatenate(dns.name.root)
    text = _strip_dot(owner)
    if not text:
        return None
    try:
        return dns.name.from_text(text + ".")
    except dns.exception.DNSException:
        return None


def _suffix_text(suffix: str) -> str:
    text = _strip_dot(suffix)
    return text[1:] if text.startswith(".") else text


@lru_cache(maxsize=1024)
def _literal_suffix(suffix: str) -> dns.name.Name | None:
    text = _suffix_text(suffix)
    if not text:
        return None
    try:
        return dns.name.from_text(text + ".")
    except dns.exception.DNSException:
        return None


@lru_cache(maxsize=1024)
def _glob_suffix(suffix: str) -> tuple[re.Pattern[bytes], ...] | None:
    text = _suffix_text(suffix)
    if not text:
        return None
    labels = text.lower().encode("utf-8").split(b".")
    if any(not label for label in labels):
        return None
    return tuple(
        re.compile(b".*".join(re.escape(part) for part in label.split(b"*")), re.DOTALL)
        for label in labels
    )


def suffix_matches(owner: str | dns.name.Name, suffix: str) -> bool:
    """Whether ``owner`` falls under one scope ``suffix`` (wire.md §7.2).

    Args:
        owner: the update RR's owner (text or a ``dns.name.Name``).
        suffix: one scope suffix, literal or with ``*`` (case and one trailing
            dot are ignored; so is one leading dot).

    Returns:
        ``True`` when it matches. An empty suffix, or an owner that is not a
        DNS name, matches nothing.
    """
    name = _owner_name(owner)
    if name is None:
        return False
    if not is_wildcard(suffix):
        literal = _literal_suffix(suffix)
        return literal is not None and name.is_subdomain(literal)
    patterns = _glob_suffix(suffix)
    if patterns is None:
        return False
    labels = [label.lower() for label in name.labels[:-1]]  # drop the root label
    if len(labels) < len(patterns):
        return False
    tail = labels[len(labels) - len(patterns) :]
    return all(p.fullmatch(label) is not None for p, label in zip(patterns, tail, strict=True))


@attrs.frozen
class Allowed:
    """The update RR is inside the key's scope; ``suffix`` is the one that matched."""

    suffix: str


@attrs.frozen
class Refused:
    """The update RR is outside the key's scope: answer ``rcode`` (REFUSED)."""

    reason: str
    rcode: dns.rcode.Rcode = dns.rcode.REFUSED


def authorize(scopes: Iterable[str], op: UpdateOp, owner: str | dns.name.Name) -> Allowed | Refused:
    """Decide one update RR against a key's scope suffixes (wire.md §7.2, §7.4).

    ADD is allowed through any matching suffix; DELETE only through a
    matching literal (wildcard-free) suffix.

    Args:
        scopes: the key's stored suffixes.
        op: ADD or DELETE.
        owner: the update RR's owner.

    Returns:
        :class:`Allowed` with the first matching suffix, else :class:`Refused`.
    """
    for suffix in scopes:
        if op is UpdateOp.DELETE and is_wildcard(suffix):
            continue
        if suffix_matches(owner, suffix):
            return Allowed(suffix)
    shown = owner.to_text() if isinstance(owner, dns.name.Name) else owner
    if op is UpdateOp.DELETE:
        return Refused(f"{shown!r} is not under a literal suffix of this key (DELETE)")
    return Refused(f"{shown!r} is outside this key's scope (ADD)")


_CLAIM_OWNER_RE: Final = re.compile(r"claim-[0-9]+\.mb-([0-9a-f]{12})\.(.+)")


def untsigd_claim_hash12(owner: str | dns.name.Name, zone: str | dns.name.Name) -> str | None:
    """The owner-shape gate for un-TSIG'd UPDATEs (wire.md §7.4).

    Args:
        owner: the update RR's owner.
        zone: the served zone.

    Returns:
        The lowercase ``hash12`` when ``owner`` is exactly
        ``claim-<digits>.mb-<12 hex>.<zone>`` (case and one trailing dot
        ignored), else ``None``: the UPDATE is outside the un-TSIG'd surface
        (a policy outcome, answered REFUSED).
    """
    text = owner.to_text(omit_final_dot=True) if isinstance(owner, dns.name.Name) else owner
    match = _CLAIM_OWNER_RE.fullmatch(_strip_dot(text).lower())
    if match is None or match.group(2) != _zone_text(zone):
        return None
    return match.group(1)
