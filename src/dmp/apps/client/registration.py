"""Self-registration with a node: bearer token or TSIG key (layer: apps; wire.md §8).

``dnsmesh register`` (bearer token, saved to ``<tokens-home>/<host>.json``)
and ``dnsmesh tsig register`` (TSIG key, stored in ``config.yaml``; after it
every write goes through DNS UPDATE + TSIG):

1. ``GET /v1/registration/challenge``;
2. sign ``challenge ‖ canonical subject ‖ node ‖ 0x01`` with the identity's
   Ed25519 key (the ``node`` the challenge names);
3. for TSIG also prove possession of the mailbox X25519 key
   (``HMAC(X25519(x25519_private, server_x25519_pub), challenge ‖ subject ‖
   x25519_pub)``), so the key is scoped to this user's ``mb-`` names;
4. ``POST`` the proofs, store what comes back.

The HTTP calls go through :class:`~dmp.ports.registration.RegistrationApi`
(one node per instance); replies of the wrong shape raise ``PeerRejected``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from dmp.apps.client.config import ClientConfig
from dmp.domain import registration as reg
from dmp.domain.crypto import IdentityKeys
from dmp.ports.client_state import SavedToken, TokenFiles, node_host
from dmp.ports.registration import RegistrationApi
from dmp.ports.transport import PeerRejected

__all__ = ["TsigRegistration", "register", "tsig_register"]


@attrs.frozen
class _Challenge:
    challenge: bytes
    node: str
    server_x25519_pub: bytes


def _field(reply: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in reply:
        raise PeerRejected(f"{what}: the node's reply has no {key!r}")
    return reply[key]


def _hex_field(reply: Mapping[str, Any], key: str, what: str, size: int) -> bytes:
    value = _field(reply, key, what)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise PeerRejected(f"{what}: {key!r} in the node's reply is not {size} bytes of hex")
    return raw


def _secret(reply: Mapping[str, Any], what: str) -> bytes:
    value = _str_field(reply, "tsig_secret_hex", what)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if not raw:
        raise PeerRejected(f"{what}: 'tsig_secret_hex' in the node's reply is not hex")
    return raw


def _optional_int(reply: Mapping[str, Any], key: str, what: str) -> int | None:
    value = reply.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PeerRejected(f"{what}: {key!r} in the node's reply is not a number")
    return int(value)


def _str_field(reply: Mapping[str, Any], key: str, what: str) -> str:
    value = _field(reply, key, what)
    if not isinstance(value, str) or not value:
        raise PeerRejected(f"{what}: {key!r} in the node's reply is not a string")
    return value


async def _challenge(api: RegistrationApi) -> _Challenge:
    what = "GET /v1/registration/challenge"
    reply = await api.challenge()
    return _Challenge(
        challenge=_hex_field(reply, "challenge", what, reg.CHALLENGE_LEN),
        node=_str_field(reply, "node", what),
        server_x25519_pub=_hex_field(reply, "server_x25519_pub", what, 32),
    )


def _subject(config: ClientConfig, subject: str | None) -> str:
    return reg.canonicalize_subject(subject or config.address)


async def register(
    api: RegistrationApi,
    node: str,
    *,
    keys: IdentityKeys,
    config: ClientConfig,
    tokens: TokenFiles,
    now: int,
    subject: str | None = None,
) -> SavedToken:
    """Obtain a bearer token from ``node`` and save it (``dnsmesh register``).

    Args:
        api: the registration calls of that node.
        node: ``--node`` as given (scheme and path are stripped for the file name).
        keys: the identity that signs.
        config: the configuration (default subject ``username@effective_domain``).
        tokens: where the token is saved.
        now: POSIX seconds (``saved_at``).
        subject: ``--subject``; canonicalized before signing.

    Returns:
        The saved token.

    Raises:
        BadSubject: the subject does not canonicalize.
        PeerUnreachable, PeerRejected: the node refused or could not be reached.
        ClientStateError: the token file cannot be written.
    """
    canonical = _subject(config, subject)
    challenge = await _challenge(api)
    payload = reg.signing_payload(challenge.challenge, canonical, challenge.node)
    reply = await api.confirm(
        subject=canonical,
        ed25519_spk=keys.ed25519_public,
        challenge=challenge.challenge,
        signature=reg.sign_registration(keys.ed25519_seed, payload),
    )
    what = "POST /v1/registration/confirm"
    saved = SavedToken(
        node=node_host(node),
        subject=str(reply.get("subject") or canonical),
        token=_str_field(reply, "token", what),
        expires_at=_optional_int(reply, "expires_at", what),
        registered_spk=keys.ed25519_public.hex(),
        saved_at=now,
    )
    tokens.save(saved)
    return saved


@attrs.frozen
class TsigRegistration:
    """What ``tsig register`` stored in the configuration.

    Attributes:
        key_name: the TSIG key name.
        algorithm: e.g. ``hmac-sha256``.
        zone: the zone UPDATEs name.
        dns_server: where UPDATEs go.
        dns_port: its port.
        subject: the canonical subject.
        allowed_suffixes: the key's scope as granted.
        expires_at: POSIX seconds, or None.
    """

    key_name: str
    algorithm: str
    zone: str
    dns_server: str
    dns_port: int
    subject: str
    allowed_suffixes: tuple[str, ...]
    expires_at: int | None


def _bare_host(node: str) -> str:
    host = node_host(node)
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


async def tsig_register(
    api: RegistrationApi,
    node: str,
    *,
    keys: IdentityKeys,
    config: ClientConfig,
    subject: str | None = None,
    dns_server: str | None = None,
    dns_port: int = 53,
    persist: Callable[[ClientConfig], object] | None = None,
) -> TsigRegistration:
    """Obtain a TSIG key from ``node`` and store it in ``config`` (``dnsmesh tsig register``).

    Sets ``tsig_key_name``, ``tsig_secret_hex``, ``tsig_algorithm``,
    ``tsig_zone``, ``tsig_dns_server`` (``dns_server`` or the node's host) and
    ``tsig_dns_port``, then calls ``persist(config)``.

    Args:
        api: the registration calls of that node.
        node: ``--node`` as given.
        keys: the identity that signs and proves its X25519 key.
        config: the configuration to update.
        subject: ``--subject``; canonicalized before signing.
        dns_server: ``--dns-server`` (default: the node's host).
        dns_port: ``--dns-port``.
        persist: saves the configuration (None: keep it in memory).

    Returns:
        The stored key's description (no secret).

    Raises:
        BadSubject: the subject does not canonicalize.
        BadProof: the node's X25519 key is unusable.
        PeerUnreachable, PeerRejected: the node refused or could not be reached.
    """
    canonical = _subject(config, subject)
    challenge = await _challenge(api)
    payload = reg.signing_payload(challenge.challenge, canonical, challenge.node)
    pop = reg.x25519_pop(
        keys.x25519_private,
        challenge.server_x25519_pub,
        challenge.challenge,
        canonical,
        keys.x25519_public,
    )
    reply = await api.tsig_confirm(
        subject=canonical,
        ed25519_spk=keys.ed25519_public,
        challenge=challenge.challenge,
        signature=reg.sign_registration(keys.ed25519_seed, payload),
        x25519_pub=keys.x25519_public,
        x25519_pop=pop,
    )
    what = "POST /v1/registration/tsig-confirm"
    key_name = _str_field(reply, "tsig_key_name", what)
    secret = _secret(reply, what)
    algorithm = str(reply.get("tsig_algorithm") or "hmac-sha256")
    zone = _str_field(reply, "zone", what)
    suffixes = reply.get("allowed_suffixes") or []
    if not isinstance(suffixes, list):
        raise PeerRejected(f"{what}: the node's reply has the wrong shape")
    server = dns_server or _bare_host(node)
    config.tsig_key_name = key_name
    config.tsig_secret_hex = secret.hex()
    config.tsig_algorithm = algorithm
    config.tsig_zone = zone.rstrip(".")
    config.tsig_dns_server = server
    config.tsig_dns_port = dns_port
    if persist is not None:
        persist(config)
    return TsigRegistration(
        key_name=key_name,
        algorithm=algorithm,
        zone=config.tsig_zone,
        dns_server=server,
        dns_port=dns_port,
        subject=str(reply.get("subject") or canonical),
        allowed_suffixes=tuple(str(s) for s in suffixes),
        expires_at=_optional_int(reply, "expires_at", what),
    )
