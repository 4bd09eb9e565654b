"""Contacts: add, list, and resolve a recipient (layer: apps).

A contact is pinned when its Ed25519 key (``spk``) is known; pins are bound
to the contact's zone (wire.md §6). ``contacts add`` without
``--signing-key`` leaves it unpinned (trust on first use, with a warning).
An empty domain is backfilled to our own zone with ``domain_explicit``
False, so no receiver-zone claim is sent to it (behaviour.md §a).

These functions work on the configuration only (no passphrase needed); the
caller saves the configuration afterwards.
"""

from __future__ import annotations

import attrs

from dmp.apps.client.config import ClientConfig, ConfigError, Contact
from dmp.domain.names import strip_dot

__all__ = [
    "ContactView",
    "add_contact",
    "find_contact",
    "list_contacts",
    "parse_key_hex",
    "pinned_keys",
]


def parse_key_hex(text: str, what: str) -> bytes:
    """A 32-byte key from 64 hex characters.

    Raises:
        ConfigError: not 64 hex characters.
    """
    value = text.strip().lower()
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ConfigError(f"{what} must be 64 hex characters") from exc
    if len(raw) != 32:
        raise ConfigError(f"{what} must be 64 hex characters (32 bytes), got {len(raw)} bytes")
    return raw


@attrs.frozen
class ContactView:
    """One row of ``contacts list``.

    Attributes:
        name: the contact key.
        contact: the stored contact.
        zone: the zone its messages are read from.
        pinned: whether its signing key is known.
    """

    name: str
    contact: Contact
    zone: str
    pinned: bool


def add_contact(
    config: ClientConfig,
    name: str,
    x25519_hex: str,
    *,
    signing_key_hex: str | None = None,
    domain: str | None = None,
    username: str | None = None,
) -> Contact:
    """Pin (or, without a signing key, record unpinned) a contact (``contacts add``).

    Args:
        config: the configuration to change (the caller saves it).
        name: the contact key.
        x25519_hex: the contact's X25519 public key, 64 hex.
        signing_key_hex: the contact's Ed25519 public key, 64 hex; None leaves
            the contact unpinned.
        domain: the contact's zone; None or empty means our own zone
            (``domain_explicit`` False).
        username: the remote identity name (default: the local part of
            ``name``).

    Returns:
        The stored contact.

    Raises:
        ConfigError: an empty name or a malformed key.
    """
    if not name.strip():
        raise ConfigError("contact name must not be empty")
    pub = parse_key_hex(x25519_hex, "X25519 public key").hex()
    spk = "" if signing_key_hex is None else parse_key_hex(signing_key_hex, "signing key").hex()
    explicit = bool(domain and domain.strip())
    zone = strip_dot(domain.strip()) if domain and explicit else config.effective_domain
    contact = Contact(
        pub=pub,
        spk=spk,
        domain=zone,
        username=username or name.partition("@")[0] or name,
        domain_explicit=explicit,
    )
    config.contacts[name] = contact
    return contact


def list_contacts(config: ClientConfig) -> list[ContactView]:
    """Every contact, sorted by name (``contacts list``)."""
    own = config.effective_domain
    return [
        ContactView(name, c, strip_dot(c.domain or own), bool(c.spk))
        for name, c in sorted(config.contacts.items())
    ]


def pinned_keys(config: ClientConfig) -> list[tuple[bytes, str]]:
    """``(spk, zone)`` of every pinned contact (malformed keys are skipped)."""
    out = []
    own = config.effective_domain
    for contact in config.contacts.values():
        if not contact.spk:
            continue
        try:
            spk = bytes.fromhex(contact.spk)
        except ValueError:
            continue
        if len(spk) == 32:
            out.append((spk, strip_dot(contact.domain or own)))
    return out


def find_contact(config: ClientConfig, recipient: str) -> tuple[str, Contact] | None:
    """The contact ``recipient`` names: a contact key, or ``user@host`` of a contact.

    ``user@host`` matches a contact whose username (or key) is ``user`` and
    whose zone is ``host`` (case-insensitive, trailing dot ignored).
    """
    contact = config.contacts.get(recipient)
    if contact is not None:
        return recipient, contact
    user, sep, host = recipient.rpartition("@")
    if not sep:
        return None
    host_key = strip_dot(host).casefold()
    own = config.effective_domain
    for name, c in sorted(config.contacts.items()):
        if (c.username or name) == user and strip_dot(c.domain or own).casefold() == host_key:
            return name, c
    return None
