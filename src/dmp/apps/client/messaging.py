"""Send and receive messages (layer: apps; wire.md §3–§6, §5.2, §5.9).

Send (``dnsmesh send``)::

    resolve the recipient (a contact, or user@host fetched and verified)
    ├─ concurrently: its identity record (versions → DMPv2 envelope),
    │  its prekey pool (verified under the pinned key, unexpired) and the
    │  claim providers (heartbeats of the seed zones)
    build_message (domain)           one random prekey no pending manifest of
                                     ours to this recipient names (our 10 slots
                                     for it, read with the pool), or the
                                     long-term key when none is left
    publish every chunk, then the manifest        (into our own zone)
    claims: one per provider zone, and one in the recipient's zone when its
            domain was recorded explicitly; failures only counted

Receive (``dnsmesh recv``), every lookup of a stage in one bounded task group::

    phase 1  claims in our own zone          (only when some contact is pinned)
    phase 2  slot walk: slot-0..9 of our mailbox in every contact zone and ours
    phase 3  claims at the claim providers   (skipped by --primary-only)
    → manifests named by claims are fetched from the claim's zone (all 10 slots)
    → chunks of every candidate manifest
    → decrypt one by one; consume the prekey only after the AEAD succeeded
      (kept for the rest of the pass: two unread messages may share one)
    → verify DMPv2 sender labels, delete consumed prekey records
    → pinned senders to the inbox, unpinned claim senders to the intro queue

Rules enforced on receive:

* a manifest must verify, be addressed to us, be unexpired and carry chunk
  hashes (:func:`~dmp.domain.manifest.verify_manifest`);
* zone-bound pins (:func:`~dmp.domain.message.check_sender_pinned`): a
  manifest found in zone Z is accepted from a contact pinned to Z, or from
  any pinned contact in our own zone; with no pins at all only with
  ``allow_tofu``. Unpinned manifests found by the slot walk are dropped;
  unpinned senders reached through a claim are quarantined in the intro
  queue;
* ``(sender_spk, msg_id)`` is handled once (replay cache, until the
  manifest's ``exp``); denylisted senders are ignored;
* the envelope's ``from`` is shown only after the claimed identity's key
  matches the manifest's ``sender_spk``.
"""

from __future__ import annotations

import hashlib
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import anyio
import attrs
import dns.exception
import dns.name

from dmp.apps.client.config import Contact
from dmp.apps.client.contacts import find_contact, pinned_keys
from dmp.apps.client.deps import ClientDeps, Lookups, lookup_many, run_bounded, zone_key
from dmp.apps.client.identity import (
    fetch_identity,
    identity_owners,
    own_prekey_owner,
    prekey_wire,
    verify_sender_label,
)
from dmp.domain.claim import Claim, sign_claim, verify_claim
from dmp.domain.errors import DmpError, UnknownContact
from dmp.domain.heartbeat import Heartbeat, select_providers, verify_heartbeat
from dmp.domain.identity import IdentityRecord, verify_identity
from dmp.domain.manifest import SlotManifest, verify_manifest
from dmp.domain.message import (
    DEFAULT_TTL,
    DMPV2_PREFIX,
    OutgoingMessage,
    ReceivedMessage,
    build_message,
    check_sender_pinned,
    choose_prekey,
    chunk_owners,
    open_message,
)
from dmp.domain.names import (
    SLOT_COUNT,
    claim_owner,
    heartbeat_owner,
    prekey_owner,
    seen_owner,
    slot_owner,
    strip_dot,
)
from dmp.domain.prekey import Prekey, verify_prekey
from dmp.ports.client_state import PendingIntro, StoredPrekey
from dmp.ports.transport import TransportError

__all__ = [
    "DEFAULT_PROVIDER_LIMIT",
    "MAX_CLAIM_ZONES",
    "MAX_INTROS_PER_RECEIVE",
    "Delivered",
    "ReceiveResult",
    "Rejection",
    "SendResult",
    "discover_claim_providers",
    "receive_messages",
    "send_message",
]

DEFAULT_PROVIDER_LIMIT: Final = 3
"""Claim providers a send writes to, at most (wire.md §5.10)."""

MAX_CLAIM_ZONES: Final = 16
"""Sender zones one receive follows claims into (anyone can write a claim)."""

MAX_INTROS_PER_RECEIVE: Final = 16
"""First-contact messages one receive fetches and decrypts; more wait for the next."""

Route = Literal["inbox", "intro"]
Via = Literal["slot", "claim"]


def _name(zone: str) -> dns.name.Name:
    return dns.name.from_text(strip_dot(zone) + ".")


# -- claim providers ---------------------------------------------------------------


async def discover_claim_providers(deps: ClientDeps) -> list[str]:
    """The zones to send claims to (M8.3).

    ``claim_provider_zone`` wins; else the host of ``claim_provider_override``;
    else the heartbeats published at ``_dnsmesh-heartbeat.<z>`` and
    ``_dnsmesh-seen.<z>`` for our own zone and every seed zone, verified and
    ranked by :func:`~dmp.domain.heartbeat.select_providers` (claim-provider
    bit, newest per operator, top 3).

    Returns:
        Provider zones, best first (possibly empty). Lookup failures only
        shorten the list.
    """
    cfg = deps.config
    if cfg.claim_provider_zone:
        return [strip_dot(cfg.claim_provider_zone)]
    if cfg.claim_provider_override:
        url = cfg.claim_provider_override
        host = urllib.parse.urlsplit(url if "://" in url else f"https://{url}").hostname
        return [strip_dot(host)] if host else []
    zones = list(dict.fromkeys([deps.own_zone, *deps.provider_seeds]))
    owners = [o for z in zones for o in (heartbeat_owner(z), seen_owner(z))]
    lookups = await lookup_many(deps, owners)
    now = deps.now()
    heartbeats: list[Heartbeat] = []
    for owner in owners:
        for value in lookups.get(owner):
            try:
                heartbeats.append(verify_heartbeat(value, now=now))
            except DmpError:
                continue
    chosen = select_providers(heartbeats, limit=DEFAULT_PROVIDER_LIMIT)
    return list(dict.fromkeys(strip_dot(h.provider_zone) for h in chosen))


# -- send ---------------------------------------------------------------------------


@attrs.frozen
class SendResult:
    """What ``send`` did.

    Attributes:
        recipient: the contact name (or the address when not a contact).
        msg_id: 16 bytes.
        manifest_owner: ``slot-N.mb-<h12>.<our zone>``.
        slot: the mailbox slot.
        total_chunks: ``n`` chunks published.
        data_chunks: ``k``.
        prekey_id: the recipient prekey used, 0 for the long-term key.
        envelope: whether the DMPv2 envelope (sender label) was used.
        claim_zones: the zones claims were attempted in.
        claims_sent: how many of them were accepted.
        claim_errors: one line per failed claim.
    """

    recipient: str
    msg_id: bytes
    manifest_owner: dns.name.Name
    slot: int
    total_chunks: int
    data_chunks: int
    prekey_id: int
    envelope: bool
    claim_zones: tuple[str, ...]
    claims_sent: int
    claim_errors: tuple[str, ...]

    @property
    def claims_attempted(self) -> int:
        return len(self.claim_zones)


@attrs.frozen
class _Recipient:
    name: str
    x25519_public: bytes
    spk: bytes | None
    zone: str
    username: str
    domain_explicit: bool
    record: IdentityRecord | None = None


def _contact_recipient(deps: ClientDeps, name: str, contact: Contact) -> _Recipient:
    if not contact.pub:
        raise UnknownContact(
            f"contact {name!r} has no X25519 key yet; run `dnsmesh identity fetch <user@host> --add`"
        )
    try:
        pub = bytes.fromhex(contact.pub)
        spk = bytes.fromhex(contact.spk) if contact.spk else None
    except ValueError as exc:
        raise UnknownContact(f"contact {name!r} has a malformed key in config.yaml") from exc
    if len(pub) != 32 or (spk is not None and len(spk) != 32):
        raise UnknownContact(f"contact {name!r} has a malformed key in config.yaml")
    return _Recipient(
        name=name,
        x25519_public=pub,
        spk=spk,
        zone=deps.contact_zone(contact),
        username=contact.username or name.partition("@")[0] or name,
        domain_explicit=contact.domain_explicit,
    )


async def _resolve_recipient(deps: ClientDeps, recipient: str) -> _Recipient:
    found = find_contact(deps.config, recipient)
    if found is not None:
        return _contact_recipient(deps, *found)
    if "@" not in recipient:
        raise UnknownContact(
            f"no contact {recipient!r}; use user@host or `dnsmesh identity fetch --add` first"
        )
    fetched = await fetch_identity(deps, recipient)
    record = fetched.record
    return _Recipient(
        name=recipient,
        x25519_public=record.x25519_public,
        spk=record.ed25519_public,
        zone=fetched.host,
        username=fetched.user,
        domain_explicit=True,
        record=record,
    )


def _matching_record(lookups: Lookups, rcpt: _Recipient) -> IdentityRecord | None:
    for owner in identity_owners(rcpt.username, rcpt.zone):
        for value in lookups.get(owner):
            try:
                record = verify_identity(value)
            except DmpError:
                continue
            if record.x25519_public != rcpt.x25519_public:
                continue
            if rcpt.spk is not None and record.ed25519_public != rcpt.spk:
                continue
            return record
    return None


def _live_prekeys(values: list[str], spk: bytes, now: int) -> list[Prekey]:
    out: list[Prekey] = []
    seen: set[int] = set()
    for value in values:
        try:
            prekey = verify_prekey(value, spk, now=now)
        except DmpError:
            continue
        if prekey.prekey_id not in seen:
            seen.add(prekey.prekey_id)
            out.append(prekey)
    return out


def _own_slot_owners(deps: ClientDeps, rcpt: _Recipient) -> list[dns.name.Name]:
    """The 10 slots of ``rcpt``'s mailbox in our own zone (where our manifests to it are)."""
    recipient_id = hashlib.sha256(rcpt.x25519_public).digest()
    return [slot_owner(recipient_id, n, deps.own_zone) for n in range(SLOT_COUNT)]


def _pending_prekey_ids(deps: ClientDeps, rcpt: _Recipient, lookups: Lookups, now: int) -> set[int]:
    """Prekey ids named by our own unexpired manifests to ``rcpt`` (messages maybe unread).

    A receiver consumes a one-time prekey with the first message over it; a
    reference receiver then cannot open a second unread one over the same
    prekey (docs/interop.md, known reference behaviours). So we never pick a
    prekey that one of our pending manifests names (once a message is read,
    the receiver deletes its prekey's record from the pool anyway). Only
    manifests signed by us count: anyone may write a slot.
    """
    recipient_id = hashlib.sha256(rcpt.x25519_public).digest()
    pending: set[int] = set()
    for owner in _own_slot_owners(deps, rcpt):
        for wire in lookups.get(owner):
            try:
                manifest = verify_manifest(wire, now=now, recipient_id=recipient_id)
            except DmpError:
                continue
            if manifest.sender_spk == deps.keys.ed25519_public and manifest.prekey_id:
                pending.add(manifest.prekey_id)
    return pending


async def send_message(
    deps: ClientDeps, recipient: str, body: str | bytes, *, ttl: int = DEFAULT_TTL
) -> SendResult:
    """Encrypt and publish one message, then announce it with claims (``send``).

    Args:
        deps: the client dependencies.
        recipient: a contact key, or ``user@host`` (a contact with that
            username and zone, else the identity is fetched and verified).
        body: the message text (UTF-8) or bytes.
        ttl: message lifetime and DNS TTL of its records, seconds (300).

    Returns:
        What was published and how many claims were accepted.

    Raises:
        UnknownContact: no such contact, or it has no X25519 key.
        IdentityNotFound, AmbiguousIdentity: ``user@host`` could not be resolved.
        ErasureError: the message is too large.
        TransportError: a chunk or the manifest could not be published
            (claim failures never fail the send).
    """
    rcpt = await _resolve_recipient(deps, recipient)
    now = deps.now()
    owners: list[dns.name.Name] = []
    if rcpt.record is None:
        owners += identity_owners(rcpt.username, rcpt.zone)
    pool_owner = prekey_owner(rcpt.username, rcpt.zone) if rcpt.spk is not None else None
    if pool_owner is not None:
        owners.append(pool_owner)
        owners += _own_slot_owners(deps, rcpt)
    providers: list[str] = []

    async def fetch_providers() -> None:
        providers.extend(await discover_claim_providers(deps))

    # Provider discovery runs while the message is built and published. A
    # failure is raised after the task group, unwrapped.
    outcome: list[OutgoingMessage | Exception] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch_providers)
        try:
            lookups = await lookup_many(deps, owners)
            outcome.append(
                await _build_and_publish(deps, rcpt, body, now, ttl, lookups, pool_owner)
            )
        except (DmpError, TransportError) as exc:
            outcome.append(exc)
            tg.cancel_scope.cancel()
    (out,) = outcome
    if isinstance(out, Exception):
        raise out

    zones = list(providers)
    if rcpt.domain_explicit:
        zones.append(rcpt.zone)
    by_key: dict[str, str] = {}
    for zone in zones:
        by_key.setdefault(zone_key(zone), strip_dot(zone))
    unique_zones = list(by_key.values())
    sent, errors = await _send_claims(
        deps, out.msg_id, out.recipient_id, out.slot, now, ttl, unique_zones
    )
    return SendResult(
        recipient=rcpt.name,
        msg_id=out.msg_id,
        manifest_owner=out.manifest_owner,
        slot=out.slot,
        total_chunks=out.n,
        data_chunks=out.k,
        prekey_id=out.prekey_id,
        envelope=out.plaintext.startswith(DMPV2_PREFIX),
        claim_zones=tuple(unique_zones),
        claims_sent=sent,
        claim_errors=tuple(errors),
    )


async def _build_and_publish(
    deps: ClientDeps,
    rcpt: _Recipient,
    body: str | bytes,
    now: int,
    ttl: int,
    lookups: Lookups,
    pool_owner: dns.name.Name | None,
) -> OutgoingMessage:
    """Encrypt to the recipient, publish every chunk, then the manifest."""
    record = rcpt.record or _matching_record(lookups, rcpt)
    advertise_v2 = record is not None and 2 in record.versions
    prekeys: list[Prekey] = []
    if pool_owner is not None and rcpt.spk is not None:
        pending = _pending_prekey_ids(deps, rcpt, lookups, now)
        prekeys = [
            p
            for p in _live_prekeys(lookups.get(pool_owner), rcpt.spk, now)
            if p.prekey_id not in pending
        ]
    chosen = choose_prekey(prekeys, deps.rng)
    msg_id = uuid.UUID(bytes=deps.rng.randbytes(16), version=4).bytes
    out = build_message(
        sender=deps.keys,
        sender_zone=deps.own_zone,
        recipient_x25519_public=rcpt.x25519_public,
        body=body.encode("utf-8") if isinstance(body, str) else body,
        now=now,
        ttl=ttl,
        msg_id=msg_id,
        ephemeral_private=deps.rng.randbytes(32),
        nonce=deps.rng.randbytes(12),
        prekey=None if chosen is None else (chosen.prekey_id, chosen.x25519_public),
        envelope_from=deps.config.address if advertise_v2 else None,
    )

    def publisher(owner: dns.name.Name, value: str) -> Callable[[], Awaitable[None]]:
        return lambda: deps.writer.publish(owner, value, ttl)

    outcomes = await run_bounded(deps, [publisher(c.owner, c.txt) for c in out.chunks])
    for outcome in outcomes:
        if outcome is not None:
            raise outcome
    await deps.writer.publish(out.manifest_owner, out.manifest_wire, ttl)
    return out


async def _send_claims(
    deps: ClientDeps,
    msg_id: bytes,
    recipient_id: bytes,
    slot: int,
    now: int,
    ttl: int,
    zones: list[str],
) -> tuple[int, list[str]]:
    if not zones:
        return 0, []
    claim = Claim(
        msg_id=msg_id,
        sender_spk=deps.keys.ed25519_public,
        sender_mailbox_domain=deps.own_zone,
        slot=slot,
        ts=now,
        exp=now + ttl,
    )
    try:
        wire = sign_claim(claim, deps.keys.ed25519_seed)
    except DmpError as exc:
        return 0, [f"{z}: cannot build a claim: {exc}" for z in zones]
    calls: list[Callable[[], Awaitable[None]]] = []
    errors: list[str] = []
    targets: list[str] = []
    for zone in zones:
        try:
            zone_name, owner = _name(zone), claim_owner(recipient_id, slot, zone)
        except dns.exception.DNSException as exc:
            errors.append(f"{zone}: {exc}")
            continue
        targets.append(zone)
        calls.append(_claim_call(deps, zone_name, owner, wire, ttl))
    outcomes = await run_bounded(deps, calls)
    for zone, outcome in zip(targets, outcomes, strict=True):
        if outcome is not None:
            errors.append(f"{zone}: {outcome}")
    return sum(1 for o in outcomes if o is None), errors


def _claim_call(
    deps: ClientDeps, zone: dns.name.Name, owner: dns.name.Name, wire: str, ttl: int
) -> Callable[[], Awaitable[None]]:
    return lambda: deps.claim_sender.send_claim(zone, owner, wire, ttl)


# -- receive ------------------------------------------------------------------------


@attrs.frozen
class Delivered:
    """A message delivered to the inbox.

    Attributes:
        body: the message body bytes.
        sender_label: the verified DMPv2 sender address, or ``""``.
        sender_spk: the sender's Ed25519 key (from the manifest).
        msg_id: 16 bytes.
        timestamp: the send time (header ``ts``).
        zone: where the manifest was found.
        contact: the pinned contact with this key, if any.
        prekey_id: the prekey consumed (0 = long-term key).
        via: ``"slot"`` (slot walk) or ``"claim"``.
    """

    body: bytes
    sender_label: str
    sender_spk: bytes
    msg_id: bytes
    timestamp: int
    zone: str
    contact: str | None
    prekey_id: int
    via: Via

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")


@attrs.frozen
class Rejection:
    """A record that was found but not used.

    Attributes:
        owner: where it was found.
        reason: ``ErrorClass: message``.
    """

    owner: str
    reason: str


@attrs.frozen
class ReceiveResult:
    """What ``recv`` found.

    Attributes:
        delivered: inbox messages, oldest first.
        queued: messages newly put in the intro queue.
        rejected: records refused (bad, expired, unpinned, undecryptable, ...).
        lookups: TXT lookups made.
        failed_lookups: lookups that failed (network).
        prekeys_consumed: prekey ids used up.
        prekey_deletes_failed: consumed prekey records that could not be deleted.
    """

    delivered: tuple[Delivered, ...]
    queued: tuple[PendingIntro, ...]
    rejected: tuple[Rejection, ...]
    lookups: int
    failed_lookups: int
    prekeys_consumed: tuple[int, ...]
    prekey_deletes_failed: int


@attrs.frozen
class _Candidate:
    manifest: SlotManifest
    zone: str
    route: Route
    via: Via


def _owner_text(owner: dns.name.Name) -> str:
    return owner.to_text(omit_final_dot=True)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Receiver:
    """One ``recv`` run: the state shared by its stages."""

    def __init__(self, deps: ClientDeps) -> None:
        self.deps = deps
        self.now = deps.now()
        self.me = deps.keys.user_id
        self.own_zone = deps.own_zone
        self.pins = pinned_keys(deps.config)
        self.lookups = Lookups()
        self.rejected: list[Rejection] = []
        # (zone key, spk, msg_id) → manifest, for every verified manifest seen
        self.found: dict[tuple[str, bytes, bytes], SlotManifest] = {}
        self.walked: set[str] = set()
        self.candidates: dict[tuple[bytes, bytes], _Candidate] = {}

    # -- helpers --

    def reject(self, owner: dns.name.Name | str, reason: str) -> None:
        text = owner if isinstance(owner, str) else _owner_text(owner)
        self.rejected.append(Rejection(text, reason))

    def pinned_for(self, spk: bytes, zone: str) -> bool:
        try:
            check_sender_pinned(
                spk,
                zone,
                pinned=self.pins,
                own_zone=self.own_zone,
                allow_tofu=self.deps.config.allow_tofu,
            )
        except DmpError:
            return False
        return True

    def handled(self, spk: bytes, msg_id: bytes) -> bool:
        deps = self.deps
        return (
            (spk, msg_id) in self.candidates
            or deps.replay.seen(spk, msg_id, self.now)
            or deps.intros.is_blocked(spk)
            or deps.intros.contains(spk, msg_id)
        )

    def slot_owners(self, zone: str) -> list[dns.name.Name]:
        return [slot_owner(self.me, slot, zone) for slot in range(SLOT_COUNT)]

    def claim_owners(self, zone: str) -> list[dns.name.Name]:
        return [claim_owner(self.me, slot, zone) for slot in range(SLOT_COUNT)]

    def add_candidate(self, cand: _Candidate) -> None:
        key = (cand.manifest.sender_spk, cand.manifest.msg_id)
        current = self.candidates.get(key)
        if current is None or (current.route == "intro" and cand.route == "inbox"):
            self.candidates[key] = cand

    # -- stages --

    def read_slots(self, zone: str) -> list[SlotManifest]:
        """Verified manifests for us in ``zone`` (from lookups already made)."""
        out = []
        for owner in self.slot_owners(zone):
            for value in self.lookups.get(owner):
                try:
                    manifest = verify_manifest(value, now=self.now, recipient_id=self.me)
                except DmpError as exc:
                    self.reject(owner, _reason(exc))
                    continue
                self.found[(zone_key(zone), manifest.sender_spk, manifest.msg_id)] = manifest
                out.append(manifest)
        self.walked.add(zone_key(zone))
        return out

    def walk(self, zones: list[str]) -> None:
        """Phase 2: keep the manifests of senders pinned for their zone."""
        for zone in zones:
            for manifest in self.read_slots(zone):
                if self.handled(manifest.sender_spk, manifest.msg_id):
                    continue
                if not self.pinned_for(manifest.sender_spk, zone):
                    self.reject(
                        slot_owner(self.me, 0, zone).parent(),
                        f"sender {manifest.sender_spk.hex()[:16]}… is not pinned for {zone}",
                    )
                    continue
                self.add_candidate(_Candidate(manifest, zone, "inbox", "slot"))

    def read_claims(self, owners: list[dns.name.Name]) -> list[Claim]:
        claims = []
        for owner in owners:
            for value in self.lookups.get(owner):
                try:
                    claims.append(verify_claim(value, now=self.now))
                except DmpError as exc:
                    self.reject(owner, _reason(exc))
        return claims

    async def follow_claims(self, claims: list[Claim]) -> None:
        """Fetch the manifests claims point to; route them by the pin rule."""
        wanted: dict[tuple[str, bytes, bytes], Claim] = {}
        for claim in claims:
            if self.handled(claim.sender_spk, claim.msg_id):
                continue
            wanted.setdefault(
                (zone_key(claim.sender_mailbox_domain), claim.sender_spk, claim.msg_id), claim
            )
        zones: dict[str, str] = {}
        for (zkey, _, _), claim in list(wanted.items()):
            if zkey in self.walked or zkey in zones:
                continue
            if len(zones) >= MAX_CLAIM_ZONES:
                self.reject(claim.sender_mailbox_domain, "too many claimed zones; left for later")
                del wanted[(zkey, claim.sender_spk, claim.msg_id)]
                continue
            zones[zkey] = strip_dot(claim.sender_mailbox_domain)
        owners: list[dns.name.Name] = []
        valid_zones: list[str] = []
        for zone in zones.values():
            try:
                owners += self.slot_owners(zone)
            except dns.exception.DNSException as exc:
                self.reject(zone, f"claim names an unusable zone: {exc}")
                continue
            valid_zones.append(zone)
        self.lookups.merge(await lookup_many(self.deps, owners))
        for zone in valid_zones:
            self.read_slots(zone)
        intros = 0
        for key, claim in wanted.items():
            manifest = self.found.get(key)
            if manifest is None:
                self.reject(
                    claim.sender_mailbox_domain,
                    f"claimed message {claim.msg_id.hex()} is not in {claim.sender_mailbox_domain}",
                )
                continue
            zone = strip_dot(claim.sender_mailbox_domain)
            route: Route = "inbox" if self.pinned_for(manifest.sender_spk, zone) else "intro"
            if route == "intro":
                if intros >= MAX_INTROS_PER_RECEIVE:
                    self.reject(zone, "too many first-contact messages; left for later")
                    continue
                intros += 1
            self.add_candidate(_Candidate(manifest, zone, route, "claim"))


def _contact_for(deps: ClientDeps, spk: bytes, zone: str) -> str | None:
    names = []
    for name, contact in sorted(deps.config.contacts.items()):
        if contact.spk and contact.spk.lower() == spk.hex():
            names.append((zone_key(deps.contact_zone(contact)) != zone_key(zone), name))
    return min(names)[1] if names else None


async def receive_messages(
    deps: ClientDeps, *, primary_only: bool = False, skip_primary: bool = False
) -> ReceiveResult:
    """Poll every mailbox once and deliver what is new (``recv``).

    Args:
        deps: the client dependencies.
        primary_only: skip phase 3 (claims at providers). Also implied by
            ``recv_secondary_disable`` once some contact is pinned.
        skip_primary: skip phases 1 and 2 (own-zone claims and slot walk).

    Returns:
        Delivered and queued messages, refused records and lookup counts.

    Raises:
        ValueError: both ``primary_only`` and ``skip_primary``.
        TransportError: every lookup of the first stage failed.
        ClientStateError: local state cannot be written.
    """
    if primary_only and skip_primary:
        raise ValueError("primary_only and skip_primary are mutually exclusive")
    cfg = deps.config
    run = _Receiver(deps)
    do_primary = not skip_primary
    do_phase1 = do_primary and bool(run.pins)
    do_secondary = not primary_only and not (cfg.recv_secondary_disable and run.pins)

    zones: list[str] = []
    if do_primary:
        by_key = {zone_key(run.own_zone): run.own_zone}
        for contact in cfg.contacts.values():
            zone = deps.contact_zone(contact)
            by_key.setdefault(zone_key(zone), zone)
        zones = list(by_key.values())
    own_claims = run.claim_owners(run.own_zone) if do_phase1 else []
    primary_owners = [*own_claims, *(o for z in zones for o in run.slot_owners(z))]
    provider_claims: list[dns.name.Name] = []

    async def primary() -> None:
        run.lookups.merge(await lookup_many(deps, primary_owners))

    async def secondary() -> None:
        for zone in await discover_claim_providers(deps):
            try:
                provider_claims.extend(run.claim_owners(zone))
            except dns.exception.DNSException as exc:
                run.reject(zone, f"unusable provider zone: {exc}")
        run.lookups.merge(await lookup_many(deps, provider_claims))

    async with anyio.create_task_group() as tg:
        if primary_owners:
            tg.start_soon(primary)
        if do_secondary:
            tg.start_soon(secondary)
    asked = [*primary_owners, *provider_claims]
    run.lookups.raise_if_all_failed(asked)

    claims_own = run.read_claims(own_claims)
    run.walk(zones)
    claims_providers = run.read_claims(provider_claims)
    await run.follow_claims([*claims_own, *claims_providers])

    candidates = list(run.candidates.values())
    chunk_owner_lists = [chunk_owners(c.manifest, c.zone) for c in candidates]
    run.lookups.merge(await lookup_many(deps, [o for owners in chunk_owner_lists for o in owners]))

    opened: list[tuple[_Candidate, ReceivedMessage]] = []
    consumed: list[StoredPrekey] = []
    # Senders pick a one-time prekey at random from the published pool (the
    # reference does, with replacement), so two unread messages may name the
    # same one. Its secret stays usable for the rest of this pass: every such
    # message opens, and the prekey is consumed (and its record deleted) once.
    used_in_pass: dict[int, StoredPrekey] = {}
    for cand, owners in zip(candidates, chunk_owner_lists, strict=True):
        manifest = cand.manifest
        stored = None
        if manifest.prekey_id:
            stored = used_in_pass.get(manifest.prekey_id) or deps.prekeys.get(manifest.prekey_id)
        chunk_txts = {i: run.lookups.get(o) for i, o in enumerate(owners)}
        try:
            message = open_message(
                manifest,
                chunk_txts,
                recipient=deps.keys,
                prekey_private=None if stored is None else stored.private_key,
                now=run.now,
            )
        except DmpError as exc:
            run.reject(slot_owner(run.me, 0, cand.zone).parent(), _reason(exc))
            continue
        if stored is not None and stored.prekey_id not in used_in_pass:
            deps.prekeys.consume(stored.prekey_id)
            consumed.append(stored)
            used_in_pass[stored.prekey_id] = stored
        deps.replay.record(manifest.sender_spk, manifest.msg_id, manifest.exp, run.now)
        opened.append((cand, message))

    labels, delete_failures = await _finish(deps, opened, consumed)

    delivered: list[Delivered] = []
    queued: list[PendingIntro] = []
    for (cand, message), label in zip(opened, labels, strict=True):
        if cand.route == "inbox":
            delivered.append(
                Delivered(
                    body=message.body,
                    sender_label=label,
                    sender_spk=message.sender_spk,
                    msg_id=message.msg_id,
                    timestamp=message.ts,
                    zone=cand.zone,
                    contact=_contact_for(deps, message.sender_spk, cand.zone),
                    prekey_id=message.prekey_id,
                    via=cand.via,
                )
            )
        else:
            queued.append(
                deps.intros.add(
                    sender_spk=message.sender_spk,
                    msg_id=message.msg_id,
                    sender_zone=cand.zone,
                    body=message.body,
                    sender_label=label,
                    ts=message.ts,
                    received_at=run.now,
                )
            )
    delivered.sort(key=lambda d: (d.timestamp, d.msg_id))
    return ReceiveResult(
        delivered=tuple(delivered),
        queued=tuple(queued),
        rejected=tuple(run.rejected),
        lookups=run.lookups.count,
        failed_lookups=len(run.lookups.errors),
        prekeys_consumed=tuple(p.prekey_id for p in consumed),
        prekey_deletes_failed=delete_failures,
    )


async def _finish(
    deps: ClientDeps,
    opened: list[tuple[_Candidate, ReceivedMessage]],
    consumed: list[StoredPrekey],
) -> tuple[list[str], int]:
    """Verify sender labels and delete consumed prekey records, all concurrently."""
    labels = [""] * len(opened)
    failures = 0
    owner = own_prekey_owner(deps)

    async def label(index: int, claimed: str, spk: bytes) -> None:
        labels[index] = await verify_sender_label(deps, claimed, spk)

    async def delete(prekey: StoredPrekey) -> None:
        nonlocal failures
        async with deps.limiter:
            try:
                await deps.writer.delete(owner, prekey_wire(deps, prekey))
            except TransportError:
                failures += 1

    async with anyio.create_task_group() as tg:
        for index, (_, message) in enumerate(opened):
            if message.claimed_from:
                tg.start_soon(label, index, message.claimed_from, message.sender_spk)
        for prekey in consumed:
            tg.start_soon(delete, prekey)
    return labels, failures
