"""Identity use cases: publish, fetch (and pin), one-time prekeys, rotation (layer: apps).

Owners (wire.md §2): an identity lives at ``dmp.<identity_domain>`` when
``identity_domain`` is configured (zone-anchored), else at
``id-<sha256(username)[:16]>.<domain>``; prekeys at
``prekeys.id-<sha256(username)[:12]>.<zone>``; rotations and revocations at
``rotate.`` + the identity owner.

Fetch rules (behaviour.md §a ``identity fetch``, wire.md §5.3, §5.7):

* ``user@host`` tries ``dmp.<host>`` then ``id-<hash16(user)>.<host>``; a
  bare ``user`` tries ``id-<hash16(user)>.<domain>``. The first owner with a
  valid record wins.
* Every value is verified; only records whose username is exactly ``user``
  count.
* Keys revoked or superseded (the old side of a verified rotation) in the
  ``rotate.*`` RRsets of ``user@host`` are dropped.
* More than one distinct record (by fingerprint) left ⇒
  :class:`~dmp.domain.errors.AmbiguousIdentity`, unless
  ``accept_fingerprint`` picks one.
* Pinning (``add``) binds the contact to the zone the record came from. An
  existing pin with another key is only replaced when the rotation chain
  from the pinned key leads to the fetched key (otherwise
  :class:`~dmp.domain.errors.PinMismatch`, or
  :class:`~dmp.domain.errors.RotationChainError` when the chain must not be
  followed, e.g. the pinned key is revoked).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import dns.name

from dmp.apps.client.config import Contact
from dmp.apps.client.deps import ClientDeps, Lookups, lookup_many, run_bounded
from dmp.domain.crypto import IdentityKeys, x25519_public
from dmp.domain.errors import (
    AmbiguousIdentity,
    DmpError,
    IdentityNotFound,
    PinMismatch,
)
from dmp.domain.identity import IdentityRecord, sign_identity, verify_identity
from dmp.domain.names import (
    identity_owner,
    prekey_owner,
    rotation_owner,
    strip_dot,
    user_rotation_owners,
    zone_identity_owner,
)
from dmp.domain.prekey import Prekey, sign_prekey
from dmp.domain.rotation import (
    Revocation,
    RevocationReason,
    Rotation,
    SubjectType,
    partition_rotation_rrset,
    sign_revocation,
    sign_rotation,
    walk_rotation_chain,
)
from dmp.ports.client_state import StoredPrekey

__all__ = [
    "DEFAULT_IDENTITY_TTL",
    "DEFAULT_PREKEY_COUNT",
    "DEFAULT_PREKEY_TTL",
    "DEFAULT_ROTATION_EXP_S",
    "PREKEY_KEEP_AFTER_EXP_S",
    "FetchedIdentity",
    "IdentityCandidate",
    "PublishedIdentity",
    "RefreshedPrekeys",
    "RotatedIdentity",
    "fetch_identity",
    "identity_owners",
    "own_identity_owner",
    "own_prekey_owner",
    "prekey_wire",
    "publish_identity",
    "refresh_prekeys",
    "rotate_identity",
    "show_identity",
    "verify_sender_label",
]

DEFAULT_IDENTITY_TTL: Final = 86400
DEFAULT_PREKEY_COUNT: Final = 25
"""The CLI default of ``identity refresh-prekeys --count``."""
DEFAULT_PREKEY_TTL: Final = 86400
DEFAULT_ROTATION_EXP_S: Final = 365 * 86400
PREKEY_KEEP_AFTER_EXP_S: Final = 86400
"""A prekey's private key is kept this long past its record's expiry, for
messages encrypted to it just before it expired."""

_U32_LIMIT: Final = 1 << 32

_Call = Callable[[], Awaitable[None]]


# -- owners --------------------------------------------------------------------------


def own_identity_owner(deps: ClientDeps) -> dns.name.Name:
    """Where this user's identity record lives (``dmp.<identity_domain>`` or hashed)."""
    cfg = deps.config
    if cfg.identity_domain:
        return zone_identity_owner(cfg.identity_domain)
    return identity_owner(cfg.username, cfg.domain)


def identity_owners(user: str, host: str, *, zone_anchored: bool = True) -> list[dns.name.Name]:
    """The owners an identity of ``user@host`` is looked up at, in order of preference."""
    owners = [identity_owner(user, host)]
    if zone_anchored:
        owners.insert(0, zone_identity_owner(host))
    return owners


# -- show / publish -----------------------------------------------------------------------


@attrs.frozen
class PublishedIdentity:
    """What ``identity publish`` put in DNS.

    Attributes:
        owner: the identity owner.
        wire: the TXT value published.
        record: the identity record.
        fingerprint: its 16-hex fingerprint.
        stale_removed: older values of this identity deleted from the owner.
    """

    owner: dns.name.Name
    wire: str
    record: IdentityRecord
    fingerprint: str
    stale_removed: int


def show_identity(deps: ClientDeps) -> IdentityRecord:
    """The identity this user would publish now (offline; ``identity show``)."""
    keys = deps.keys
    return IdentityRecord(deps.config.username, keys.x25519_public, keys.ed25519_public, deps.now())


async def _publish_identity_record(
    deps: ClientDeps, keys: IdentityKeys, *, ttl: int, advertise_v2: bool
) -> PublishedIdentity:
    now = deps.now()
    record = IdentityRecord(
        username=deps.config.username,
        x25519_public=keys.x25519_public,
        ed25519_public=keys.ed25519_public,
        ts=now,
        versions=(1, 2) if advertise_v2 else (1,),
    )
    wire = sign_identity(record, keys.ed25519_seed)
    owner = own_identity_owner(deps)
    existing = await lookup_many(deps, [owner])
    await deps.writer.publish(owner, wire, ttl)
    stale = []
    for value in existing.get(owner):
        if value == wire:
            continue
        try:
            old = verify_identity(value)
        except DmpError:
            continue
        if old.ed25519_public == keys.ed25519_public and old.username == record.username:
            stale.append(value)

    def deleter(value: str) -> _Call:
        return lambda: deps.writer.delete(owner, value)

    outcomes = await run_bounded(deps, [deleter(v) for v in stale])
    return PublishedIdentity(
        owner=owner,
        wire=wire,
        record=record,
        fingerprint=record.fingerprint,
        stale_removed=sum(1 for o in outcomes if o is None),
    )


async def publish_identity(
    deps: ClientDeps, *, ttl: int = DEFAULT_IDENTITY_TTL, advertise_v2: bool = False
) -> PublishedIdentity:
    """Sign and publish this user's identity record (``identity publish``).

    Older values of the same identity (same username and signing key) at the
    owner are deleted afterwards, best effort, so republishing does not pile
    records up.

    Args:
        deps: the client dependencies.
        ttl: DNS TTL of the record, seconds.
        advertise_v2: advertise versions ``(1, 2)`` (senders then use the
            DMPv2 envelope); default ``(1,)``.

    Returns:
        What was published.

    Raises:
        MalformedRecord: the username is empty or over 64 UTF-8 bytes.
        TransportError: the publish failed.
    """
    return await _publish_identity_record(deps, deps.keys, ttl=ttl, advertise_v2=advertise_v2)


# -- fetch ---------------------------------------------------------------------------


@attrs.frozen
class IdentityCandidate:
    """One valid identity record found.

    Attributes:
        owner: where it was found.
        record: the verified record.
        fingerprint: its 16-hex fingerprint.
    """

    owner: dns.name.Name
    record: IdentityRecord
    fingerprint: str


@attrs.frozen
class FetchedIdentity:
    """The result of ``identity fetch``.

    Attributes:
        user: the username looked up.
        host: the zone it was looked up in.
        domain_explicit: the zone was given (``user@host`` or ``--domain``).
        chosen: the record used.
        candidates: every distinct valid record that survived rotation
            checks (one, unless ``accept_fingerprint`` chose among several).
        dropped: fingerprints dropped as revoked or superseded.
        contact_name: the contact pinned or updated (``add``), else None.
        rotated_from: the previously pinned key when the pin followed a
            rotation chain, else None.
    """

    user: str
    host: str
    domain_explicit: bool
    chosen: IdentityCandidate
    candidates: tuple[IdentityCandidate, ...]
    dropped: tuple[str, ...] = ()
    contact_name: str | None = None
    rotated_from: bytes | None = None

    @property
    def address(self) -> str:
        """``user@host``."""
        return f"{self.user}@{self.host}"

    @property
    def record(self) -> IdentityRecord:
        return self.chosen.record

    @property
    def fingerprint(self) -> str:
        return self.chosen.fingerprint


def _split_address(deps: ClientDeps, who: str, domain: str | None) -> tuple[str, str, bool]:
    user, sep, host = who.rpartition("@")
    if sep and user and host:
        return user, strip_dot(host), True
    if domain:
        return who, strip_dot(domain), True
    return who, strip_dot(deps.config.domain), False


def _valid_records(
    lookups: Lookups, owner: dns.name.Name, user: str
) -> dict[str, IdentityCandidate]:
    found: dict[str, IdentityCandidate] = {}
    for value in lookups.get(owner):
        try:
            record = verify_identity(value)
        except DmpError:
            continue
        if record.username != user:
            continue
        fp = record.fingerprint
        current = found.get(fp)
        if current is None or record.ts > current.record.ts:
            found[fp] = IdentityCandidate(owner, record, fp)
    return found


async def fetch_identity(
    deps: ClientDeps,
    who: str,
    *,
    domain: str | None = None,
    add: bool = False,
    contact_name: str | None = None,
    accept_fingerprint: str | None = None,
) -> FetchedIdentity:
    """Resolve, verify and optionally pin an identity (``identity fetch``).

    Args:
        deps: the client dependencies.
        who: ``user@host`` or a bare ``user``.
        domain: the zone for a bare ``user`` (default: our ``domain``).
        add: pin the identity as a contact (saved through ``deps.persist_config``).
        contact_name: the contact key to pin under (default: ``who`` as typed).
        accept_fingerprint: choose this 16-hex fingerprint when several
            distinct records exist; when only one exists it must match.

    Returns:
        The chosen record, all candidates and what was pinned.

    Raises:
        IdentityNotFound: no valid record for ``user`` at any owner.
        AmbiguousIdentity: several distinct valid records and no (matching)
            ``accept_fingerprint``.
        PinMismatch: ``accept_fingerprint`` matches no candidate, or (with
            ``add``) the contact is pinned to another key that no rotation
            chain leads from.
        RotationChainError: (with ``add``) the chain from the pinned key must
            not be followed.
        TransportError: every lookup failed.
    """
    user, host, explicit = _split_address(deps, who, domain)
    now = deps.now()
    owners = identity_owners(user, host, zone_anchored=explicit and "@" in who)
    subject = f"{user}@{host}"
    rotate_owners = list(user_rotation_owners(subject))
    lookups = await lookup_many(deps, [*owners, *rotate_owners])
    lookups.raise_if_all_failed(owners)
    rotations, revocations = partition_rotation_rrset(
        [v for o in rotate_owners for v in lookups.get(o)], subject=subject, now=now
    )
    gone = {r.revoked_spk for r in revocations} | {r.old_spk for r in rotations}
    candidates: dict[str, IdentityCandidate] = {}
    dropped: list[str] = []
    for owner in owners:
        found = _valid_records(lookups, owner, user)
        if not found:
            continue
        for fp, cand in found.items():
            if cand.record.ed25519_public in gone:
                dropped.append(fp)
            else:
                candidates[fp] = cand
        break
    if not candidates:
        where = ", ".join(o.to_text(omit_final_dot=True) for o in owners)
        detail = " (every record is revoked or superseded)" if dropped else ""
        raise IdentityNotFound(f"no valid identity for {subject} at {where}{detail}")
    ordered = tuple(candidates[fp] for fp in sorted(candidates))
    if accept_fingerprint is not None:
        wanted = accept_fingerprint.strip().lower()
        if wanted not in candidates:
            raise PinMismatch(
                f"no identity for {subject} has fingerprint {wanted} "
                f"(found {', '.join(sorted(candidates))})"
            )
        chosen = candidates[wanted]
    elif len(candidates) > 1:
        raise AmbiguousIdentity(
            f"{len(candidates)} distinct identities for {subject}: "
            f"{', '.join(sorted(candidates))}; choose one with --accept-fingerprint",
            fingerprints=tuple(sorted(candidates)),
        )
    else:
        chosen = ordered[0]
    result = FetchedIdentity(
        user=user,
        host=host,
        domain_explicit=explicit,
        chosen=chosen,
        candidates=ordered,
        dropped=tuple(sorted(set(dropped))),
    )
    if not add:
        return result
    name = contact_name or who
    rotated_from = _pin(deps, name, result, rotations, revocations, subject)
    return attrs.evolve(result, contact_name=name, rotated_from=rotated_from)


def _pin(
    deps: ClientDeps,
    name: str,
    fetched: FetchedIdentity,
    rotations: tuple[Rotation, ...],
    revocations: tuple[Revocation, ...],
    subject: str,
) -> bytes | None:
    record = fetched.record
    existing = deps.config.contacts.get(name)
    rotated_from: bytes | None = None
    if existing is not None and existing.spk:
        try:
            pinned = bytes.fromhex(existing.spk)
        except ValueError:
            pinned = b""
        if pinned != record.ed25519_public:
            head = walk_rotation_chain(
                pinned,
                rotations,
                revocations,
                subject=subject,
                subject_type=SubjectType.USER,
            )
            if head != record.ed25519_public:
                raise PinMismatch(
                    f"contact {name!r} is pinned to {existing.spk[:16]}…, but {subject} now "
                    f"has fingerprint {fetched.fingerprint} and no rotation leads there"
                )
            rotated_from = pinned
    deps.config.contacts[name] = Contact(
        pub=record.x25519_public.hex(),
        spk=record.ed25519_public.hex(),
        domain=fetched.host,
        username=fetched.user,
        domain_explicit=fetched.domain_explicit,
    )
    deps.save_config()
    return rotated_from


async def verify_sender_label(deps: ClientDeps, claimed_from: str, sender_spk: bytes) -> str:
    """The DMPv2 sender label, if the claimed identity really has ``sender_spk`` (wire.md §3.6).

    Looks up ``dmp.<host>`` and ``id-<hash16(user)>.<host>``; the label is
    shown only when a valid record there names ``user`` (case-insensitive)
    and carries ``sender_spk``.

    Args:
        deps: the client dependencies.
        claimed_from: the canonical ``user@host`` from the envelope.
        sender_spk: the manifest's signing key.

    Returns:
        ``claimed_from``, or ``""`` when it cannot be verified.
    """
    user, sep, host = claimed_from.rpartition("@")
    if not sep or not user or not host:
        return ""
    owners = identity_owners(user, host)
    lookups = await lookup_many(deps, owners)
    for owner in owners:
        for value in lookups.get(owner):
            try:
                record = verify_identity(value)
            except DmpError:
                continue
            if record.ed25519_public == sender_spk and record.username.lower() == user.lower():
                return claimed_from
    return ""


# -- prekeys ------------------------------------------------------------------------------


@attrs.frozen
class RefreshedPrekeys:
    """What ``identity refresh-prekeys`` published.

    Attributes:
        owner: ``prekeys.id-<hash12>.<zone>``.
        prekey_ids: the ids published, in order.
        exp: their expiry, POSIX seconds.
        pruned: expired private keys removed from the local store.
    """

    owner: dns.name.Name
    prekey_ids: tuple[int, ...]
    exp: int
    pruned: int


def own_prekey_owner(deps: ClientDeps) -> dns.name.Name:
    """``prekeys.id-<hash12(username)>.<own zone>``."""
    return prekey_owner(deps.config.username, deps.own_zone)


def prekey_wire(deps: ClientDeps, prekey: StoredPrekey) -> str:
    """The TXT value published for a stored prekey (Ed25519 is deterministic)."""
    return sign_prekey(
        Prekey(prekey.prekey_id, prekey.public_key, prekey.exp), deps.keys.ed25519_seed
    )


async def refresh_prekeys(
    deps: ClientDeps, *, count: int = DEFAULT_PREKEY_COUNT, ttl: int = DEFAULT_PREKEY_TTL
) -> RefreshedPrekeys:
    """Generate and publish ``count`` one-time prekeys (``identity refresh-prekeys``).

    Ids are random nonzero u32 values not already in the store; private keys
    are stored before anything is published, and dropped again if their
    publish fails. Each record expires ``ttl`` seconds from now (also its DNS
    TTL). Private keys more than :data:`PREKEY_KEEP_AFTER_EXP_S` past their
    expiry are pruned.

    Args:
        deps: the client dependencies.
        count: how many prekeys (≥ 1).
        ttl: lifetime and DNS TTL, seconds.

    Returns:
        The published ids.

    Raises:
        ValueError: ``count`` < 1.
        TransportError: a publish failed (the others may have succeeded).
        ClientStateError: the prekey store cannot be written.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    now = deps.now()
    pruned = deps.prekeys.prune(now - PREKEY_KEEP_AFTER_EXP_S)
    taken = deps.prekeys.ids()
    owner = own_prekey_owner(deps)
    fresh: list[StoredPrekey] = []
    while len(fresh) < count:
        prekey_id = deps.rng.randrange(1, _U32_LIMIT)
        if prekey_id in taken:
            continue
        taken.add(prekey_id)
        private = deps.rng.randbytes(32)
        fresh.append(StoredPrekey(prekey_id, private, x25519_public(private), now + ttl))
    for prekey in fresh:
        deps.prekeys.add(prekey)

    def publisher(wire: str) -> _Call:
        return lambda: deps.writer.publish(owner, wire, ttl)

    outcomes = await run_bounded(deps, [publisher(prekey_wire(deps, p)) for p in fresh])
    failures = [o for o in outcomes if o is not None]
    for prekey, outcome in zip(fresh, outcomes, strict=True):
        if outcome is not None:
            deps.prekeys.consume(prekey.prekey_id)
    if failures:
        raise failures[0]
    return RefreshedPrekeys(
        owner=owner,
        prekey_ids=tuple(p.prekey_id for p in fresh),
        exp=now + ttl,
        pruned=pruned,
    )


# -- rotation ----------------------------------------------------------------------------------


@attrs.frozen
class RotatedIdentity:
    """What ``identity rotate`` published.

    Attributes:
        rotation_owner: ``rotate.`` + the identity owner.
        rotation: the co-signed rotation.
        revocation: the revocation of the old key (compromise / lost key), or None.
        identity: the new identity record as published.
    """

    rotation_owner: dns.name.Name
    rotation: Rotation
    revocation: Revocation | None
    identity: PublishedIdentity


async def rotate_identity(
    deps: ClientDeps,
    new_keys: IdentityKeys,
    *,
    reason: RevocationReason = RevocationReason.ROUTINE,
    ttl: int = DEFAULT_IDENTITY_TTL,
    exp_seconds: int = DEFAULT_ROTATION_EXP_S,
    advertise_v2: bool = False,
) -> RotatedIdentity:
    """Hand this identity over from ``deps.keys`` to ``new_keys`` (``identity rotate``, experimental).

    Publishes the rotation (``seq`` = milliseconds since the epoch, co-signed
    by both keys) at ``rotate.`` + the identity owner; for ``COMPROMISE`` and
    ``LOST_KEY`` also a revocation of the old key; then the new identity
    record. Swapping the passphrase file and ``verify_pubkey`` is the
    caller's job.

    Args:
        deps: the client dependencies (``keys`` = the old keys).
        new_keys: the keys derived from the new passphrase.
        reason: why (revocation published only for compromise / lost key).
        ttl: DNS TTL of the published records.
        exp_seconds: lifetime of the rotation record.
        advertise_v2: advertise versions ``(1, 2)`` in the new identity.

    Returns:
        The published records.

    Raises:
        MalformedRecord: the new key equals the old one, or the subject is invalid.
        TransportError: a publish failed.
    """
    now = deps.now()
    old = deps.keys
    subject = deps.config.address
    owner = rotation_owner(own_identity_owner(deps))
    rotation = Rotation(
        subject_type=SubjectType.USER,
        subject=subject,
        old_spk=old.ed25519_public,
        new_spk=new_keys.ed25519_public,
        seq=int(deps.clock.now() * 1000),
        ts=now,
        exp=now + exp_seconds,
    )
    await deps.writer.publish(
        owner, sign_rotation(rotation, old.ed25519_seed, new_keys.ed25519_seed), ttl
    )
    revocation = None
    if reason in (RevocationReason.COMPROMISE, RevocationReason.LOST_KEY):
        revocation = Revocation(SubjectType.USER, subject, old.ed25519_public, reason, now)
        await deps.writer.publish(owner, sign_revocation(revocation, old.ed25519_seed), ttl)
    identity = await _publish_identity_record(deps, new_keys, ttl=ttl, advertise_v2=advertise_v2)
    return RotatedIdentity(owner, rotation, revocation, identity)
