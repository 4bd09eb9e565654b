"""Self-service registration: challenges, bearer tokens and TSIG keys (layer: apps).

The use cases behind ``GET /v1/registration/challenge``,
``POST /v1/registration/confirm`` and ``POST /v1/registration/tsig-confirm``
(wire.md §7.1, §7.2, §8; behaviour.md §d). The HTTP adapter only turns JSON
into calls and results into responses.

Challenges live in memory: single use, ``challenge_ttl_s`` (60 s) lifetime,
at most ``max_pending`` (10000) outstanding; when full, expired entries are
dropped first and then the oldest. Each challenge carries a fresh server
X25519 key pair for the proof of possession of the registrant's mailbox key.

A confirm runs its checks in the reference's fixed order, so that no check
leaks what a later one would say (wire.md §8.5):

1. shape (400): JSON object, canonical subject, hex field lengths;
2. consume the challenge (400 ``challenge expired or unknown``), whatever
   happens next;
3. Ed25519 signature over ``challenge ‖ canonical subject ‖ node ‖ 0x01``
   (401), then, for TSIG, the X25519 PoP when one is given (401);
4. subject domain allowlist (403);
5. anti-takeover (409): a live self-service token or active TSIG key of the
   subject bound to another Ed25519 key;
6. mint.

Refusals are returned as :class:`Refused` values (status + message), not
raised. Randomness is injected (``random_bytes(n) -> bytes``), drawn in this
order: challenge (32), server X25519 private key (32) per challenge; token
(32) per token; TSIG secret (32) per key.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Final

import attrs

from dmp.domain import registration as reg
from dmp.domain import tsig
from dmp.domain.crypto import x25519_public
from dmp.domain.errors import BadSubject, DmpError, ScopeError
from dmp.ports.store import TsigKey, TsigKeyStore
from dmp.ports.tokens import AuditEntry, AuditEvent, AuditLog, TokenRecord, TokenStore

__all__ = [
    "CHALLENGE_EXPIRED",
    "POP_FAILED",
    "SIGNATURE_FAILED",
    "TAKEOVER",
    "Challenge",
    "RandomBytes",
    "Refused",
    "Registrar",
    "RegistrationSettings",
    "TokenMinted",
    "TsigMinted",
]

RandomBytes = Callable[[int], bytes]
"""A source of random bytes: ``random_bytes(n)`` returns ``n`` bytes."""

CHALLENGE_EXPIRED: Final = "challenge expired or unknown"
SIGNATURE_FAILED: Final = "signature verification failed"
POP_FAILED: Final = (
    "x25519_pop verification failed: registrant did not prove possession of the claimed X25519 key"
)
TAKEOVER: Final = (
    "subject already has a live token; re-registration must be signed with the "
    "previously-registered Ed25519 key"
)


@attrs.frozen(kw_only=True)
class RegistrationSettings:
    """What the registration use cases need from the node configuration.

    Attributes:
        node_hostname: ``DMP_NODE_HOSTNAME``, bound into every signature.
        served_zone: ``DMP_SERVED_ZONE`` (TSIG key names and scopes), or None.
        allowlist: ``DMP_REGISTRATION_ALLOWLIST`` subject domains (empty: any).
        token_ttl_s: ``DMP_REGISTRATION_TOKEN_TTL_SECONDS``: tokens and TSIG keys.
        issued_rate: ``DMP_REGISTRATION_ISSUED_RATE_PER_SEC`` stamped on tokens.
        issued_burst: ``DMP_REGISTRATION_ISSUED_BURST`` stamped on tokens.
        tsig_enabled: ``DMP_DNS_UPDATE_ENABLED`` (tsig-confirm works).
        tsig_loose_scope: ``DMP_TSIG_LOOSE_SCOPE``.
        tsig_tight_scope: ``DMP_TSIG_TIGHT_SCOPE``.
        challenge_ttl_s: challenge lifetime (60 s).
        max_pending: outstanding challenges kept (10000).
    """

    node_hostname: str
    served_zone: str | None = None
    allowlist: tuple[str, ...] = ()
    token_ttl_s: int = 7_776_000
    issued_rate: float = 10.0
    issued_burst: float = 50.0
    tsig_enabled: bool = False
    tsig_loose_scope: bool = False
    tsig_tight_scope: bool = False
    challenge_ttl_s: int = 60
    max_pending: int = 10_000


@attrs.frozen
class Challenge:
    """An issued challenge (wire.md §8.1)."""

    challenge: bytes
    server_private: bytes = attrs.field(repr=False)
    server_public: bytes
    expires_at: int

    def to_json(self, node: str) -> dict[str, object]:
        return {
            "challenge": self.challenge.hex(),
            "node": node,
            "expires_at": self.expires_at,
            "server_x25519_pub": self.server_public.hex(),
            "version": 1,
        }


@attrs.frozen
class Refused:
    """A confirm that was refused: HTTP status and the ``error`` text."""

    status: int
    error: str

    def to_json(self) -> dict[str, object]:
        return {"error": self.error}


@attrs.frozen
class TokenMinted:
    """A bearer token minted by ``/v1/registration/confirm``."""

    token: str = attrs.field(repr=False)
    record: TokenRecord

    def to_json(self) -> dict[str, object]:
        rec = self.record
        return {
            "token": self.token,
            "subject": rec.subject,
            "expires_at": rec.expires_at,
            "rate_per_sec": float(rec.rate_per_sec),
            "rate_burst": int(rec.rate_burst),
        }


@attrs.frozen
class TsigMinted:
    """A TSIG key minted by ``/v1/registration/tsig-confirm``."""

    key: TsigKey
    zone: str

    def to_json(self) -> dict[str, object]:
        k = self.key
        return {
            "tsig_key_name": k.keyname,
            "tsig_secret_hex": k.secret.hex(),
            "tsig_algorithm": k.algorithm,
            "allowed_suffixes": list(k.allowed_suffixes),
            "subject": k.subject,
            "zone": self.zone,
            "expires_at": k.expires_at,
        }


@attrs.frozen
class _Confirm:
    """A confirm body that passed the shape check."""

    subject: str
    spk: bytes
    challenge: bytes
    signature: bytes
    x25519_pub: bytes | None
    x25519_pop: bytes | None


def _hex_field(body: Mapping[str, object], name: str, n_bytes: int) -> bytes:
    raw = body.get(name)
    if not isinstance(raw, str) or len(raw) != 2 * n_bytes:
        raise BadSubject(f"{name} must be {2 * n_bytes} hex characters")
    try:
        return bytes.fromhex(raw)
    except ValueError as exc:
        raise BadSubject(f"{name} must be {2 * n_bytes} hex characters") from exc


def _optional_hex(body: Mapping[str, object], name: str, n_bytes: int) -> bytes | None:
    return None if body.get(name) is None else _hex_field(body, name, n_bytes)


def _parse_confirm(body: object, *, with_x25519: bool) -> _Confirm:
    """The shape check (step 1). Raises RegistrationError subclasses (400)."""
    if not isinstance(body, Mapping):
        raise BadSubject("request body must be a JSON object")
    subject_raw = body.get("subject")
    if not isinstance(subject_raw, str):
        raise BadSubject("subject must be a string")
    subject = reg.canonicalize_subject(subject_raw)
    spk = _hex_field(body, "ed25519_spk", 32)
    challenge = _hex_field(body, "challenge", 32)
    signature = _hex_field(body, "signature", 64)
    x_pub = x_pop = None
    if with_x25519:
        x_pub = _optional_hex(body, "x25519_pub", 32)
        x_pop = _optional_hex(body, "x25519_pop", 32)
        if x_pop is not None and x_pub is None:
            raise BadSubject("x25519_pop requires x25519_pub")
    return _Confirm(subject, spk, challenge, signature, x_pub, x_pop)


class Registrar:
    """The registration use cases over a token store, an audit log and a TSIG keystore.

    Args:
        settings: node configuration for registration.
        tokens: where bearer tokens are stored.
        audit: where issued/revoked/rejected rows go.
        tsig_keys: where minted TSIG keys go (None: TSIG registration off).
        random_bytes: the randomness source (``os.urandom`` in production).
    """

    def __init__(
        self,
        settings: RegistrationSettings,
        *,
        tokens: TokenStore,
        audit: AuditLog,
        tsig_keys: TsigKeyStore | None,
        random_bytes: RandomBytes,
    ) -> None:
        self.settings = settings
        self._tokens = tokens
        self._audit = audit
        self._tsig_keys = tsig_keys
        self._random = random_bytes
        self._pending: collections.OrderedDict[bytes, Challenge] = collections.OrderedDict()

    @property
    def tsig_available(self) -> bool:
        """TSIG registration is on (DNS UPDATE enabled and a keystore is present)."""
        return self.settings.tsig_enabled and self._tsig_keys is not None

    @property
    def pending(self) -> int:
        """How many challenges are outstanding (expired ones not yet dropped included)."""
        return len(self._pending)

    # -- challenges ---------------------------------------------------------

    def issue_challenge(self, now: int) -> Challenge:
        """Draw and remember a new challenge (wire.md §8.1)."""
        challenge = self._random(32)
        server_private = self._random(32)
        ch = Challenge(
            challenge=challenge,
            server_private=server_private,
            server_public=x25519_public(server_private),
            expires_at=now + self.settings.challenge_ttl_s,
        )
        if len(self._pending) >= self.settings.max_pending:
            for key in [k for k, c in self._pending.items() if c.expires_at < now]:
                del self._pending[key]
            while len(self._pending) >= self.settings.max_pending:
                self._pending.popitem(last=False)
        self._pending[challenge] = ch
        return ch

    def _consume(self, challenge: bytes, now: int) -> Challenge | None:
        ch = self._pending.pop(challenge, None)
        if ch is None or now > ch.expires_at:
            return None
        return ch

    # -- shared checks ------------------------------------------------------

    async def _check(
        self, body: object, now: int, remote: str | None, *, tsig_path: bool
    ) -> tuple[_Confirm, Challenge] | Refused:
        try:
            req = _parse_confirm(body, with_x25519=tsig_path)
        except BadSubject as exc:
            return Refused(400, str(exc))
        ch = self._consume(req.challenge, now)
        if ch is None:
            return Refused(400, CHALLENGE_EXPIRED)
        try:
            payload = reg.signing_payload(req.challenge, req.subject, self.settings.node_hostname)
            reg.verify_registration(req.spk, payload, req.signature)
        except DmpError:
            await self._reject(req, now, remote, "bad signature")
            return Refused(401, SIGNATURE_FAILED)
        if tsig_path and req.x25519_pub is not None and req.x25519_pop is not None:
            try:
                reg.check_x25519_pop(
                    ch.server_private, req.x25519_pub, req.challenge, req.subject, req.x25519_pop
                )
            except DmpError:
                await self._reject(req, now, remote, "bad x25519 proof of possession")
                return Refused(401, POP_FAILED)
        if not self._allowed_domain(req.subject):
            await self._reject(req, now, remote, "subject domain not allowlisted")
            return Refused(403, "subject domain is not allowed to register on this node")
        if await self._taken_by_other_key(req.subject, req.spk.hex(), now):
            await self._reject(req, now, remote, "subject bound to another key")
            return Refused(409, TAKEOVER)
        return req, ch

    def _allowed_domain(self, subject: str) -> bool:
        allow = self.settings.allowlist
        if not allow:
            return True
        domain = subject.rpartition("@")[2]
        return domain in {a.lower().removesuffix(".") for a in allow}

    async def _taken_by_other_key(self, subject: str, spk_hex: str, now: int) -> bool:
        for tok in await self._tokens.find(subject=subject):
            if tok.self_service and tok.live(now) and tok.registered_spk != spk_hex:
                return True
        if self._tsig_keys is not None:
            for key in await self._tsig_keys.by_subject(subject):
                live = not key.revoked and key.expires_at > now
                if live and key.ed25519_public.lower() != spk_hex:
                    return True
        return False

    async def _reject(self, req: _Confirm, now: int, remote: str | None, why: str) -> None:
        await self._audit.append(
            AuditEntry(
                ts=float(now),
                event=AuditEvent.REJECTED,
                subject=req.subject,
                detail=f"registration refused: {why}",
                remote=remote,
            )
        )

    # -- confirm ------------------------------------------------------------

    async def confirm_token(
        self, body: object, now: int, remote: str | None = None
    ) -> TokenMinted | Refused:
        """``POST /v1/registration/confirm``: mint a self-service bearer token.

        A live self-service token of the subject bound to the same key is
        revoked first (re-registration rotates the token).
        """
        checked = await self._check(body, now, remote, tsig_path=False)
        if isinstance(checked, Refused):
            return checked
        req, _ = checked
        spk_hex = req.spk.hex()
        for old in await self._tokens.find(subject=req.subject):
            if old.self_service and old.registered_spk == spk_hex:
                await self._tokens.revoke(old.token_hash, now)
                await self._audit.append(
                    AuditEntry(
                        ts=float(now),
                        event=AuditEvent.REVOKED,
                        subject=req.subject,
                        token_hash=old.token_hash,
                        detail="superseded by re-registration",
                        remote=remote,
                    )
                )
        token = reg.bearer_token_from_draw(self._random(32))
        record = TokenRecord(
            token_hash=reg.token_hash(token),
            subject=req.subject,
            issued_at=now,
            expires_at=now + self.settings.token_ttl_s,
            rate_per_sec=float(self.settings.issued_rate),
            rate_burst=int(self.settings.issued_burst),
            note="self-service registration",
            registered_spk=spk_hex,
        )
        await self._tokens.add(record)
        await self._audit.append(
            AuditEntry(
                ts=float(now),
                event=AuditEvent.ISSUED,
                subject=req.subject,
                token_hash=record.token_hash,
                detail="self-service registration",
                remote=remote,
            )
        )
        return TokenMinted(token, record)

    async def confirm_tsig(
        self, body: object, now: int, remote: str | None = None
    ) -> TsigMinted | Refused:
        """``POST /v1/registration/tsig-confirm``: mint a TSIG key (wire.md §7.1, §7.2).

        Re-registering with the same key re-mints under the same key name
        with a new secret. Without a valid PoP the ``mb-`` scope is left out.
        """
        zone = self.settings.served_zone
        if self._tsig_keys is None or not self.settings.tsig_enabled:
            return Refused(404, "tsig registration disabled")
        if not zone:
            return Refused(500, "tsig registration misconfigured: no served zone")
        checked = await self._check(body, now, remote, tsig_path=True)
        if isinstance(checked, Refused):
            return checked
        req, _ = checked
        x_pub = req.x25519_pub if req.x25519_pop is not None else None
        try:
            keyname = tsig.key_name(req.subject, req.spk, zone).to_text().lower()
        except ScopeError as exc:  # KeyNameTooLong: first label over 63 octets
            return Refused(400, str(exc))
        if self.settings.tsig_loose_scope:
            mode = tsig.ScopeMode.LOOSE
        elif self.settings.tsig_tight_scope:
            mode = tsig.ScopeMode.TIGHT
        else:
            mode = tsig.ScopeMode.DEFAULT
        suffixes = tsig.stored_scopes(req.subject, req.spk, zone, mode, x_pub)
        key = TsigKey(
            keyname=keyname,
            secret=self._random(32),
            algorithm=tsig.TSIG_ALGORITHM,
            allowed_suffixes=tuple(suffixes),
            subject=req.subject,
            ed25519_public=req.spk.hex(),
            created_at=now,
            expires_at=now + self.settings.token_ttl_s,
        )
        await self._tsig_keys.put(key)
        await self._audit.append(
            AuditEntry(
                ts=float(now),
                event=AuditEvent.ISSUED,
                subject=req.subject,
                detail=f"tsig key {keyname}",
                remote=remote,
            )
        )
        return TsigMinted(key, zone.lower().removesuffix("."))
