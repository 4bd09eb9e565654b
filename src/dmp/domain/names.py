"""Owner names of every DMP record (layer: domain; wire.md §2).

Builders return absolute :class:`dns.name.Name` values. They keep the case
they are given (the reference does not lowercase owner names); use
:func:`owner_text` for the store's canonical text form (lowercase, no
trailing dot). Hashes: ``h12(x) = sha256(x).hex[:12]``, usernames hashed as
UTF-8 exactly as typed (case-sensitive).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

import dns.name

__all__ = [
    "SLOT_COUNT",
    "bootstrap_owner",
    "chunk_owner",
    "claim_owner",
    "cluster_owner",
    "heartbeat_owner",
    "identity_owner",
    "mailbox_hash12",
    "msg_key",
    "owner_text",
    "prekey_owner",
    "rotation_owner",
    "seen_owner",
    "slot_for",
    "slot_owner",
    "strip_dot",
    "user_rotation_owners",
    "zone_identity_owner",
]

SLOT_COUNT: Final = 10


def strip_dot(domain: str) -> str:
    """``domain`` without one trailing dot."""
    return domain[:-1] if domain.endswith(".") else domain


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(strip_dot(text) + ".")


def owner_text(owner: dns.name.Name | str) -> str:
    """Canonical store form: lowercase, no trailing dot."""
    text = owner.to_text(omit_final_dot=True) if isinstance(owner, dns.name.Name) else owner
    return strip_dot(text).lower()


def _sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mailbox_hash12(recipient_id: bytes) -> str:
    """``sha256(recipient_id).hex[:12]``, the ``mb-`` label (recipient_id = sha256(x25519_pub))."""
    return _sha_hex(recipient_id)[:12]


def slot_for(msg_id: bytes) -> int:
    """Mailbox slot ``u32(msg_id[0:4]) mod 10``."""
    value: int = struct.unpack(">I", msg_id[:4])[0]
    return value % SLOT_COUNT


def slot_owner(recipient_id: bytes, slot: int, zone: str) -> dns.name.Name:
    """``slot-{N}.mb-{h12(recipient_id)}.{zone}`` (the sender's zone)."""
    return _name(f"slot-{slot}.mb-{mailbox_hash12(recipient_id)}.{strip_dot(zone)}")


def msg_key(msg_id: bytes, recipient_id: bytes, sender_spk: bytes) -> str:
    """``sha256(msg_id ‖ recipient_id ‖ sender_spk).hex[:12]``."""
    return _sha_hex(msg_id + recipient_id + sender_spk)[:12]


def chunk_owner(index: int, key: str, zone: str) -> dns.name.Name:
    """``chunk-{i:04d}-{msg_key}.{zone}``."""
    return _name(f"chunk-{index:04d}-{key}.{strip_dot(zone)}")


def identity_owner(username: str, domain: str) -> dns.name.Name:
    """Hashed identity owner ``id-{sha256(username).hex[:16]}.{domain}``."""
    return _name(f"id-{_sha_hex(username.encode('utf-8'))[:16]}.{strip_dot(domain)}")


def zone_identity_owner(identity_domain: str) -> dns.name.Name:
    """Zone-anchored identity owner ``dmp.{identity_domain}``."""
    return _name(f"dmp.{strip_dot(identity_domain)}")


def prekey_owner(username: str, domain: str) -> dns.name.Name:
    """``prekeys.id-{sha256(username).hex[:12]}.{domain}``."""
    return _name(f"prekeys.id-{_sha_hex(username.encode('utf-8'))[:12]}.{strip_dot(domain)}")


def claim_owner(recipient_id: bytes, slot: int, zone: str) -> dns.name.Name:
    """``claim-{slot}.mb-{h12(recipient_id)}.{zone}`` (provider or recipient zone)."""
    return _name(f"claim-{slot}.mb-{mailbox_hash12(recipient_id)}.{strip_dot(zone)}")


def cluster_owner(cluster_name: str) -> dns.name.Name:
    """``cluster.{cluster_name}``."""
    return _name(f"cluster.{strip_dot(cluster_name)}")


def bootstrap_owner(user_domain: str) -> dns.name.Name:
    """``_dmp.{user_domain}``."""
    return _name(f"_dmp.{strip_dot(user_domain)}")


def heartbeat_owner(served_zone: str) -> dns.name.Name:
    """``_dnsmesh-heartbeat.{served_zone}``."""
    return _name(f"_dnsmesh-heartbeat.{strip_dot(served_zone)}")


def seen_owner(served_zone: str) -> dns.name.Name:
    """``_dnsmesh-seen.{served_zone}``."""
    return _name(f"_dnsmesh-seen.{strip_dot(served_zone)}")


def rotation_owner(record_owner: dns.name.Name) -> dns.name.Name:
    """``rotate.`` + the owner of the rotated record (identity, cluster or bootstrap)."""
    return dns.name.Name((b"rotate", *record_owner.labels))


def user_rotation_owners(subject: str) -> tuple[dns.name.Name, dns.name.Name]:
    """For ``user@host``: ``(rotate.dmp.{host}, rotate.id-{hash16(user)}.{host})``.

    Readers query both and union the results (wire.md §2).

    Raises:
        ValueError: ``subject`` has no ``@``.
    """
    user, sep, host = subject.rpartition("@")
    if not sep:
        raise ValueError(f"subject {subject!r} is not user@host")
    return (
        rotation_owner(zone_identity_owner(host)),
        rotation_owner(identity_owner(user, host)),
    )
