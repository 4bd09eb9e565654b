"""Bearer-token and audit-log ports (layer: ports).

Bearer tokens authorize HTTP record writes in the ``multi-tenant`` auth mode
(behaviour.md §b, §d; wire.md §8, §10). A token is the text
``dmp_v1_<52 base32>``; the store never sees it, only
``token_hash = sha256(utf8(token)).hexdigest()``.

Two kinds of token exist:

* **admin-issued** (``dmp-node admin token issue``): ``registered_spk`` is
  None. They never lock a subject against self-service registration.
* **self-service** (``POST /v1/registration/confirm``): ``registered_spk`` is
  the hex Ed25519 key that signed the registration. While such a token is
  live, registering the same subject with another key is refused (409,
  anti-takeover); registering with the same key revokes it and mints anew.

What a token may write depends on the owner name's :class:`ScopeClass`
(:func:`classify_owner`): owner-exclusive names bound to the token's subject,
the shared pool (any live token, publish only), everything else operator-only.

Every decision lands in the :class:`AuditLog` as an :class:`AuditEvent`:
issued, revoked, used, rejected, throttled. Rows about the shared pool carry
neither subject nor token hash (publishing into mailboxes stays anonymous).

Adapters: ``dmp.adapters.token_store`` (``MemoryTokenStore``,
``SqliteTokenStore``); both implement :class:`TokenStore` and
:class:`AuditLog`, and one conformance suite
(``tests/integration/test_token_store.py``) runs against both.
"""

from __future__ import annotations

import enum
import hashlib
import re
from typing import Protocol, runtime_checkable

import attrs

__all__ = [
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "ScopeClass",
    "TokenExists",
    "TokenRecord",
    "TokenStore",
    "TokenStoreError",
    "classify_owner",
    "owner_allowed",
]


class TokenStoreError(Exception):
    """The token store failed."""


class TokenExists(TokenStoreError):
    """A token with this hash is already stored."""


class ScopeClass(enum.Enum):
    """Who may write an owner name with a bearer token (behaviour.md §d)."""

    OWNER_EXCLUSIVE = "owner-exclusive"
    """Identity, rotation and prekey names of one user: only that user's tokens."""
    SHARED_POOL = "shared-pool"
    """Mailbox slots and chunks: any live token may publish (not delete)."""
    OPERATOR_ONLY = "operator-only"
    """Everything else: the operator token only."""


@attrs.frozen
class TokenRecord:
    """One stored bearer token (never the token text itself).

    Attributes:
        token_hash: ``sha256(utf8(token)).hexdigest()``, 64 lowercase hex.
        subject: canonical ``user@host`` (admin tokens may use any label).
        issued_at: POSIX seconds.
        expires_at: POSIX seconds, or None for no expiry.
        rate_per_sec: per-token request rate (0 disables the limit).
        rate_burst: per-token bucket capacity.
        note: free text from the operator.
        registered_spk: hex Ed25519 key for self-service tokens, else None.
        prekey_x25519: hex X25519 public key whose mailbox/prekey names the
            token may also write (``--with-prekey-scope``), else None.
        revoked_at: POSIX seconds of revocation, or None while not revoked.
    """

    token_hash: str
    subject: str
    issued_at: int
    expires_at: int | None
    rate_per_sec: float = 10.0
    rate_burst: int = 50
    note: str = ""
    registered_spk: str | None = None
    prekey_x25519: str | None = None
    revoked_at: int | None = None

    @property
    def self_service(self) -> bool:
        """True for tokens minted by registration (bound to an Ed25519 key)."""
        return self.registered_spk is not None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def live(self, now: float) -> bool:
        """Not revoked and not expired at ``now`` (expired when ``now >= expires_at``)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class AuditEvent(enum.Enum):
    """What happened to or with a token."""

    ISSUED = "issued"
    REVOKED = "revoked"
    USED = "used"
    REJECTED = "rejected"
    THROTTLED = "throttled"


@attrs.frozen
class AuditEntry:
    """One audit row.

    Attributes:
        ts: POSIX seconds (float; sub-second precision kept where available).
        event: what happened.
        subject: the token's subject, or None (unknown token, shared pool).
        token_hash: the token's hash, or None (no token, shared pool).
        detail: a short human-readable description (method, owner, reason).
        remote: the client address, or None.
        seq: the store-assigned sequence number (0 before it is stored).
    """

    ts: float
    event: AuditEvent
    subject: str | None = None
    token_hash: str | None = None
    detail: str = ""
    remote: str | None = None
    seq: int = 0


@runtime_checkable
class TokenStore(Protocol):
    """Bearer tokens, stored as sha256 only; durable on return of each write."""

    async def add(self, record: TokenRecord) -> None:
        """Store a new token.

        Raises:
            TokenExists: ``record.token_hash`` is already stored.
            TokenStoreError: the store failed.
        """
        ...

    async def get(self, token_hash: str) -> TokenRecord | None:
        """The token (revoked or expired included), or None when unknown."""
        ...

    async def find(
        self,
        *,
        subject: str | None = None,
        hash_prefix: str | None = None,
        include_revoked: bool = False,
    ) -> list[TokenRecord]:
        """Tokens matching every given filter, oldest ``issued_at`` first."""
        ...

    async def revoke(self, token_hash: str, now: int) -> bool:
        """Mark the token revoked at ``now``; False when unknown or already revoked."""
        ...

    async def aclose(self) -> None:
        """Close the store; later calls raise :class:`TokenStoreError`."""
        ...


@runtime_checkable
class AuditLog(Protocol):
    """Append-only record of token decisions, newest readable first.

    Unlike token changes, audit rows need not be fsync'd one by one: an
    adapter may leave the newest rows to a later fsync (power loss may drop
    them), but a row is stored, and survives a crash of the process, once
    :meth:`append` has returned.
    """

    async def append(self, entry: AuditEntry) -> None:
        """Add one row (its ``seq`` is assigned by the store); stored when this returns."""
        ...

    async def tail(self, limit: int = 50, event: AuditEvent | None = None) -> list[AuditEntry]:
        """The ``limit`` most recent rows (of ``event`` only, when given), newest first."""
        ...


# -- scope classes (pure) ----------------------------------------------------

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ID16 = re.compile(rf"^id-(?P<h>[0-9a-f]{{16}})\.{_DOMAIN}$")
_PREKEYS = re.compile(rf"^prekeys\.id-(?P<h>[0-9a-f]{{12}})\.{_DOMAIN}$")
_PK = re.compile(rf"^pk-[0-9]+\.(?P<h>[0-9a-f]{{12}})\.{_DOMAIN}$")
_ZONE_ID = re.compile(rf"^(?:rotate\.)?dmp\.(?P<user>{_LABEL})\.{_DOMAIN}$")
_ROTATE_ID16 = re.compile(rf"^rotate\.id-(?P<h>[0-9a-f]{{16}})\.{_DOMAIN}$")
_SLOT = re.compile(rf"^slot-[0-9]+\.mb-[0-9a-f]{{12}}\.{_DOMAIN}$")
_CHUNK = re.compile(rf"^chunk-[0-9]+-[0-9a-f]{{12}}\.{_DOMAIN}$")


def _sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def classify_owner(owner: str) -> ScopeClass:
    """The scope class of an owner name (behaviour.md §d, "multi-tenant scope classes").

    Owner-exclusive: ``dmp.<user>.<domain>``, ``rotate.dmp.<user>.<domain>``,
    ``id-<hash16>.<domain>``, ``rotate.id-<hash16>.<domain>``,
    ``prekeys.id-<hash12>.<domain>``, ``pk-<n>.<hash12>.<domain>``.
    Shared pool: ``slot-<n>.mb-<hash12>.<domain>``, ``chunk-<n>-<hash12>.<domain>``.
    Everything else is operator-only.

    Args:
        owner: owner text; compared case-insensitively, one trailing dot ignored.

    Returns:
        The class; never raises.
    """
    name = owner.lower().removesuffix(".")
    if _SLOT.match(name) or _CHUNK.match(name):
        return ScopeClass.SHARED_POOL
    if any(p.match(name) for p in (_ID16, _ROTATE_ID16, _PREKEYS, _PK, _ZONE_ID)):
        return ScopeClass.OWNER_EXCLUSIVE
    return ScopeClass.OPERATOR_ONLY


def owner_allowed(owner: str, token: TokenRecord) -> bool:
    """Whether ``token``'s subject owns the owner-exclusive name ``owner``.

    The hash forms are recomputed from the lowercased local part of the
    token's subject (``id-<sha256(local)[:16]>``, ``prekeys.id-``/``pk-<n>.``
    with ``sha256(local)[:12]``); ``dmp.<user>.`` compares the label with
    the local part. A token issued ``--with-prekey-scope X25519`` may also
    write ``pk-<n>.<h12>`` where ``h12`` is that key's mailbox hash
    (``sha256(sha256(x25519_public))[:12]``). Shared-pool and operator-only
    names are never "owned": this returns False for them.

    Args:
        owner: owner text (case-insensitive, one trailing dot ignored).
        token: the authenticated token.
    """
    name = owner.lower().removesuffix(".")
    local = token.subject.lower().partition("@")[0]
    if not local:
        return False
    h = _sha_hex(local.encode("utf-8"))
    m = _ID16.match(name) or _ROTATE_ID16.match(name)
    if m:
        return m.group("h") == h[:16]
    m = _PREKEYS.match(name)
    if m:
        return m.group("h") == h[:12]
    m = _PK.match(name)
    if m:
        if m.group("h") == h[:12]:
            return True
        if token.prekey_x25519:
            try:
                x_pub = bytes.fromhex(token.prekey_x25519)
            except ValueError:
                return False
            mailbox = _sha_hex(hashlib.sha256(x_pub).digest())[:12]
            return m.group("h") == mailbox
        return False
    m = _ZONE_ID.match(name)
    if m:
        return m.group("user") == local
    return False
