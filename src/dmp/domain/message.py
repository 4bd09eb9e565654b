"""Message framing and the pure send/receive pipeline (layer: domain; pure).

Send (wire.md §3.2–3.7, §4, §6)::

    header_json = {"v":1,"type":"DATA","msg_id":…,"sender":…,"recipient":…,
                   "total":1,"chunk":0,"ts":now,"ttl":ttl}       (no spaces)
    aad         = header_json with total=0, chunk=0 ‖ u32(prekey_id)
    plaintext   = body, or b"DMPV2:" ‖ {"from":user@host} ‖ b"\\n" ‖ body
    encrypted   = eph_pub ‖ nonce ‖ ChaCha20-Poly1305(HKDF(X25519(eph, R)))
    outer       = u16(len(header_json)) ‖ header_json ‖ encrypted ‖ 32 zero bytes
    shares      = erasure_encode(outer)                       (k of n, zfec)
    chunk i     = "v=dmp1;t=chunk;d=" + base64(wrap_block(share i))
                  at chunk-{i:04d}-{msg_key}.{sender zone}
    manifest    = signed SlotManifest(…, chunk_hashes = sha256(wrapped i))
                  at slot-{u32(msg_id[:4]) mod 10}.mb-{h12(recipient_id)}.{sender zone}

Receive: the caller gates the manifest (:func:`dmp.domain.manifest.verify_manifest`),
fetches chunk TXT values, and :func:`open_message` does the rest: the first
value per chunk index whose hash and RS/checksum pass, erasure decode, outer
parse, header checks (msg_id and recipient equal the manifest's, ``now ≤
ts + ttl``), AEAD with the AAD rebuilt from the *parsed* header, and the
DMPv2 envelope. The envelope ``from`` is only a claim: the client surfaces it
after matching the claimed identity's key to ``sender_spk`` (wire.md §3.6).

Everything random (msg_id, ephemeral key, nonce, the prekey choice) comes in
as a parameter.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs
import dns.name

from dmp.domain.chunk import chunk_txt, unwrap_chunk_txt, wrap_block
from dmp.domain.crypto import (
    EncryptedMessage,
    IdentityKeys,
    decrypt_message,
    encrypt_message,
)
from dmp.domain.erasure import erasure_decode, erasure_encode
from dmp.domain.errors import (
    BadAddress,
    DecryptionFailed,
    DmpError,
    MalformedRecord,
    MessageExpired,
    RecordMismatch,
)
from dmp.domain.manifest import SlotManifest, sign_manifest
from dmp.domain.names import chunk_owner, msg_key, slot_for, slot_owner, strip_dot

__all__ = [
    "DEFAULT_TTL",
    "DMPV2_PREFIX",
    "MAX_ENVELOPE_HEADER_LEN",
    "MESSAGE_TYPES",
    "TRAILER_LEN",
    "MessageHeader",
    "OuterMessage",
    "OutgoingChunk",
    "OutgoingMessage",
    "ReceivedMessage",
    "build_aad",
    "build_message",
    "canonicalize_address",
    "check_sender_pinned",
    "choose_prekey",
    "chunk_owners",
    "decode_envelope",
    "decode_header_json",
    "decode_outer",
    "encode_envelope",
    "encode_header_json",
    "encode_outer",
    "open_message",
]

DEFAULT_TTL: Final = 300
"""Message TTL (seconds) the reference CLI and library use."""

MESSAGE_TYPES: Final = frozenset({"DATA", "ACK", "DISCOVERY", "IDENTITY", "MAILBOX"})
"""Header ``type`` values that parse; only ``DATA`` is ever sent."""

TRAILER_LEN: Final = 32
"""The all-zero historical signature placeholder at the end of the outer message."""

DMPV2_PREFIX: Final = b"DMPV2:"
MAX_ENVELOPE_HEADER_LEN: Final = 256

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")


# -- header JSON and AAD (wire.md §3.3, §3.5) --------------------------------


@attrs.frozen
class MessageHeader:
    """The inner ``DMPHeader`` carried as JSON in the outer message.

    Attributes:
        msg_id: 16 bytes (the manifest's msg_id).
        sender: 32 bytes, ``sha256(sender X25519 public key)`` (not checked
            on receive).
        recipient: 32 bytes, the recipient_id.
        ts: send time, POSIX seconds.
        ttl: lifetime in seconds; the message expires when ``now > ts + ttl``.
        total: always 1 on send (0 inside the AAD).
        chunk: always 0.
        type: one of :data:`MESSAGE_TYPES`; ``"DATA"`` on send.
        v: header version, 1.
    """

    msg_id: bytes
    sender: bytes
    recipient: bytes
    ts: int
    ttl: int
    total: int = 1
    chunk: int = 0
    type: str = "DATA"
    v: int = 1

    def is_expired(self, now: int) -> bool:
        """``now > ts + ttl``."""
        return now > self.ts + self.ttl


def encode_header_json(header: MessageHeader) -> bytes:
    """The header JSON, byte for byte as the reference writes it (wire.md §3.5).

    Keys in the order v, type, msg_id, sender, recipient, total, chunk, ts,
    ttl; ``separators=(",", ":")``; ASCII; hex in lowercase.

    Returns:
        UTF-8 (ASCII) bytes.
    """
    obj = {
        "v": header.v,
        "type": header.type,
        "msg_id": header.msg_id.hex(),
        "sender": header.sender.hex(),
        "recipient": header.recipient.hex(),
        "total": header.total,
        "chunk": header.chunk,
        "ts": header.ts,
        "ttl": header.ttl,
    }
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _int_field(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedRecord(f"message header field {key!r} is not an integer")
    return value


def _hex_field(obj: Mapping[str, Any], key: str, size: int) -> bytes:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedRecord(f"message header field {key!r} is not a string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise MalformedRecord(f"message header field {key!r} is not hex") from exc
    if len(raw) != size:
        raise MalformedRecord(f"message header field {key!r} is not {size} bytes")
    return raw


def decode_header_json(data: bytes) -> MessageHeader:
    """Parse the header JSON of an outer message (wire.md §3.5).

    Unknown keys are ignored. The AAD is rebuilt from the parsed fields, so a
    header that does not re-serialize to the sender's bytes fails the AEAD.

    Args:
        data: the header bytes.

    Returns:
        The header.

    Raises:
        MalformedRecord: not a UTF-8 JSON object, a field is missing or has
            the wrong type or size, or an unknown ``type``.
    """
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise MalformedRecord(f"message header is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedRecord("message header is not a JSON object")
    kind = obj.get("type")
    if kind not in MESSAGE_TYPES:
        raise MalformedRecord(f"unknown message type {kind!r}")
    return MessageHeader(
        msg_id=_hex_field(obj, "msg_id", 16),
        sender=_hex_field(obj, "sender", 32),
        recipient=_hex_field(obj, "recipient", 32),
        ts=_int_field(obj, "ts"),
        ttl=_int_field(obj, "ttl"),
        total=_int_field(obj, "total"),
        chunk=_int_field(obj, "chunk"),
        type=str(kind),
        v=_int_field(obj, "v"),
    )


def build_aad(header: MessageHeader, prekey_id: int) -> bytes:
    """``header JSON with total=0, chunk=0 ‖ u32(prekey_id)`` (wire.md §3.3).

    Args:
        header: the message header (its total/chunk are ignored).
        prekey_id: the manifest's prekey_id (0 = long-term key).

    Returns:
        The AEAD associated data.

    Raises:
        struct.error: ``prekey_id`` does not fit a u32.
    """
    return encode_header_json(attrs.evolve(header, total=0, chunk=0)) + _U32.pack(prekey_id)


# -- outer message (wire.md §3.4) --------------------------------------------


@attrs.frozen
class OuterMessage:
    """The parsed outer ``DMPMessage``.

    Attributes:
        header_json: the raw header bytes.
        header: the parsed header.
        payload: the encrypted message (``eph_pub ‖ nonce ‖ ciphertext‖tag``).
    """

    header_json: bytes
    header: MessageHeader
    payload: bytes


def encode_outer(header_json: bytes, payload: bytes) -> bytes:
    """``u16(len(header_json)) ‖ header_json ‖ payload ‖ 32 zero bytes``.

    Raises:
        struct.error: the header is longer than 65535 bytes.
    """
    return _U16.pack(len(header_json)) + header_json + payload + bytes(TRAILER_LEN)


def decode_outer(data: bytes) -> OuterMessage:
    """Split and parse an outer message; the trailer is ignored (wire.md §3.4).

    Args:
        data: the erasure-decoded blob.

    Returns:
        The header (raw and parsed) and the encrypted payload.

    Raises:
        MalformedRecord: shorter than 34 bytes, a header length past the
            end, or a bad header (see :func:`decode_header_json`).
    """
    if len(data) < 2 + TRAILER_LEN:
        raise MalformedRecord(f"outer message of {len(data)} bytes is too short")
    (header_len,) = _U16.unpack_from(data)
    if len(data) < 2 + header_len + TRAILER_LEN:
        raise MalformedRecord(f"outer header length {header_len} runs past the message")
    header_json = data[2 : 2 + header_len]
    return OuterMessage(
        header_json=header_json,
        header=decode_header_json(header_json),
        payload=data[2 + header_len : len(data) - TRAILER_LEN],
    )


# -- DMPv2 plaintext envelope (wire.md §3.6) ---------------------------------

_LOCAL_PART: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_HOST_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_HOST_LEN: Final = 253


def canonicalize_address(address: str) -> str:
    """The canonical ``user@host`` form of a DMPv2 sender address.

    Rules: surrounding whitespace stripped; ASCII only; lowercased; exactly
    one ``@``; one trailing dot of the host stripped. Local part: 1–64 of
    ``[a-z0-9_.-]``, starting alphanumeric, not ending with ``.``, no
    ``..``. Host: ≤ 253 characters of dot-separated labels, each 1–63 of
    ``[a-z0-9-]`` not starting or ending with ``-``.

    Args:
        address: the address as typed or as found in an envelope.

    Returns:
        The canonical address.

    Raises:
        BadAddress: the address does not canonicalize.
    """
    text = address.strip()
    if not text.isascii():
        raise BadAddress(f"address {address!r} is not ASCII")
    text = text.lower()
    local, sep, host = text.partition("@")
    if not sep or "@" in host:
        raise BadAddress(f"address {address!r} is not user@host")
    host = strip_dot(host)
    if not _LOCAL_PART.fullmatch(local) or ".." in local or local.endswith("."):
        raise BadAddress(f"address {address!r} has an invalid local part")
    if not host or len(host) > _MAX_HOST_LEN:
        raise BadAddress(f"address {address!r} has an invalid host")
    if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise BadAddress(f"address {address!r} has an invalid host label")
    return f"{local}@{host}"


def encode_envelope(body: bytes, sender_address: str | None) -> bytes:
    """The AEAD plaintext for ``body`` (wire.md §3.6).

    With a sender address that canonicalizes, the plaintext is
    ``b"DMPV2:" ‖ json({"from": canonical}, sorted keys, no spaces) ‖ b"\\n" ‖
    body``; otherwise (no address, a bad address, or a header over 256
    bytes) it is ``body`` alone (a v1 plaintext). Callers pass an address
    only when the recipient's identity advertises version 2.

    Args:
        body: the message body bytes.
        sender_address: the sender's ``user@host``, or ``None``.

    Returns:
        The plaintext.
    """
    if sender_address is None:
        return body
    try:
        canonical = canonicalize_address(sender_address)
    except BadAddress:
        return body
    header = json.dumps({"from": canonical}, sort_keys=True, separators=(",", ":")).encode()
    if len(header) > MAX_ENVELOPE_HEADER_LEN:
        return body
    return DMPV2_PREFIX + header + b"\n" + body


def decode_envelope(plaintext: bytes) -> tuple[bytes, str | None]:
    """Split a decrypted plaintext into ``(body, claimed_from)`` (wire.md §3.6).

    A plaintext that starts with ``DMPV2:`` and has ``\\n`` within the next
    257 bytes carries an envelope header; if that header is a JSON object
    the body is what follows the ``\\n`` and ``claimed_from`` is its
    canonicalized ``from`` (``None`` when absent or not an address).
    Anything else is a v1 plaintext: the whole plaintext is the body.

    Args:
        plaintext: the AEAD output.

    Returns:
        ``(body, claimed_from)``; ``claimed_from`` is unverified.
    """
    if not plaintext.startswith(DMPV2_PREFIX):
        return plaintext, None
    start = len(DMPV2_PREFIX)
    newline = plaintext.find(b"\n", start, start + MAX_ENVELOPE_HEADER_LEN + 1)
    if newline < 0:
        return plaintext, None
    try:
        header = json.loads(plaintext[start:newline].decode("utf-8"))
    except ValueError:
        return plaintext, None
    if not isinstance(header, dict):
        return plaintext, None
    claimed = header.get("from")
    claimed_from: str | None = None
    if isinstance(claimed, str):
        try:
            claimed_from = canonicalize_address(claimed)
        except BadAddress:
            claimed_from = None
    return plaintext[newline + 1 :], claimed_from


# -- send ---------------------------------------------------------------------


@attrs.frozen
class OutgoingChunk:
    """One chunk record to publish.

    Attributes:
        index: share number ``0..n-1``.
        owner: ``chunk-{index:04d}-{msg_key}.{sender zone}``.
        share: the 128-byte erasure share.
        wrapped: the 168-byte wrapped chunk.
        sha256: ``sha256(wrapped)``, committed to by the manifest.
        txt: the TXT value.
    """

    index: int
    owner: dns.name.Name
    share: bytes
    wrapped: bytes
    sha256: bytes
    txt: str


@attrs.frozen
class OutgoingMessage:
    """Everything one send computes; publish ``chunks`` then the manifest.

    Attributes:
        msg_id: 16 bytes.
        recipient_id: ``sha256(recipient X25519 public key)``.
        prekey_id: the prekey used, 0 for the long-term key.
        ecdh_public: the X25519 key encrypted to (prekey or long-term).
        ttl: seconds; the TTL for the chunk and manifest records.
        header: the inner header.
        header_json: its bytes (``total`` 1).
        aad: the AEAD associated data.
        plaintext: the AEAD input (with the DMPv2 envelope if any).
        encrypted: ephemeral key, nonce, ciphertext and tag.
        outer: the outer message.
        k: data shares.
        n: total shares.
        msg_key: the 12-hex chunk-name key.
        chunks: the ``n`` chunk records.
        manifest: the manifest.
        manifest_wire: its signed TXT value.
        manifest_owner: ``slot-{slot}.mb-{h12}.{sender zone}``.
        slot: mailbox slot ``u32(msg_id[:4]) mod 10``.
    """

    msg_id: bytes
    recipient_id: bytes
    prekey_id: int
    ecdh_public: bytes
    ttl: int
    header: MessageHeader
    header_json: bytes
    aad: bytes
    plaintext: bytes
    encrypted: EncryptedMessage
    outer: bytes
    k: int
    n: int
    msg_key: str
    chunks: tuple[OutgoingChunk, ...]
    manifest: SlotManifest
    manifest_wire: str
    manifest_owner: dns.name.Name
    slot: int


def build_message(
    *,
    sender: IdentityKeys,
    sender_zone: str,
    recipient_x25519_public: bytes,
    body: bytes,
    now: int,
    ttl: int,
    msg_id: bytes,
    ephemeral_private: bytes,
    nonce: bytes,
    prekey: tuple[int, bytes] | None,
    envelope_from: str | None,
) -> OutgoingMessage:
    """Encrypt, frame, erasure-code, wrap and sign one message (wire.md §3–§6).

    Args:
        sender: the sender's keys.
        sender_zone: the zone the chunks and manifest are published in.
        recipient_x25519_public: the recipient's long-term X25519 key
            (32 bytes); ``recipient_id`` is its sha256.
        body: the message body bytes.
        now: send time, POSIX seconds (header ``ts`` and manifest ``ts``).
        ttl: lifetime in seconds; manifest ``exp = now + ttl``.
        msg_id: 16 random bytes (a UUIDv4 in the reference).
        ephemeral_private: 32 random bytes, the ephemeral X25519 key.
        nonce: 12 random bytes.
        prekey: ``(prekey_id, prekey X25519 public key)`` of a verified,
            unexpired prekey of the recipient, or ``None`` for the
            long-term key.
        envelope_from: the sender's ``user@host`` when the recipient
            advertises version 2 (DMPv2 envelope), else ``None``.

    Returns:
        The chunk records, the signed manifest and every intermediate value.

    Raises:
        ValueError: a random input or key has the wrong length, or
            ``prekey_id`` is 0 or not a u32.
        ErasureError: the message needs more than 256 shares (about 25 KB).
    """
    if len(msg_id) != 16 or len(nonce) != 12 or len(ephemeral_private) != 32:
        raise ValueError("msg_id, nonce and ephemeral_private must be 16, 12 and 32 bytes")
    if len(recipient_x25519_public) != 32:
        raise ValueError("recipient_x25519_public must be 32 bytes")
    if prekey is None:
        prekey_id, ecdh_public = 0, recipient_x25519_public
    else:
        prekey_id, ecdh_public = prekey
        if not 1 <= prekey_id <= 0xFFFFFFFF or len(ecdh_public) != 32:
            raise ValueError("prekey must be (id in 1..2^32-1, 32-byte X25519 public key)")
    recipient_id = hashlib.sha256(recipient_x25519_public).digest()
    header = MessageHeader(
        msg_id=msg_id, sender=sender.user_id, recipient=recipient_id, ts=now, ttl=ttl
    )
    header_json = encode_header_json(header)
    aad = build_aad(header, prekey_id)
    plaintext = encode_envelope(body, envelope_from)
    encrypted = encrypt_message(
        ecdh_public, plaintext, aad, ephemeral_private=ephemeral_private, nonce=nonce
    )
    outer = encode_outer(header_json, encrypted.encode())
    coded = erasure_encode(outer)
    key = msg_key(msg_id, recipient_id, sender.ed25519_public)
    chunks = []
    for index, share in enumerate(coded.shares):
        wrapped = wrap_block(share)
        chunks.append(
            OutgoingChunk(
                index=index,
                owner=chunk_owner(index, key, sender_zone),
                share=share,
                wrapped=wrapped,
                sha256=hashlib.sha256(wrapped).digest(),
                txt=chunk_txt(wrapped),
            )
        )
    manifest = SlotManifest(
        msg_id=msg_id,
        sender_spk=sender.ed25519_public,
        recipient_id=recipient_id,
        total_chunks=coded.n,
        data_chunks=coded.k,
        prekey_id=prekey_id,
        ts=now,
        exp=now + ttl,
        chunk_hashes=tuple(c.sha256 for c in chunks),
    )
    slot = slot_for(msg_id)
    return OutgoingMessage(
        msg_id=msg_id,
        recipient_id=recipient_id,
        prekey_id=prekey_id,
        ecdh_public=ecdh_public,
        ttl=ttl,
        header=header,
        header_json=header_json,
        aad=aad,
        plaintext=plaintext,
        encrypted=encrypted,
        outer=outer,
        k=coded.k,
        n=coded.n,
        msg_key=key,
        chunks=tuple(chunks),
        manifest=manifest,
        manifest_wire=sign_manifest(manifest, sender.ed25519_seed),
        manifest_owner=slot_owner(recipient_id, slot, sender_zone),
        slot=slot,
    )


P = TypeVar("P")


def choose_prekey(prekeys: Sequence[P], rng: random.Random) -> P | None:
    """Pick one prekey uniformly at random (wire.md §3.7).

    The caller passes only prekeys that verified under the contact's pinned
    key and are unexpired.

    Args:
        prekeys: the candidates.
        rng: the injected random source.

    Returns:
        One of ``prekeys``, or ``None`` when there are none (then the
        message goes to the long-term key, ``prekey_id = 0``).
    """
    if not prekeys:
        return None
    return prekeys[rng.randrange(len(prekeys))]


# -- receive --------------------------------------------------------------------


@attrs.frozen
class ReceivedMessage:
    """A decrypted message.

    Attributes:
        body: the message body (envelope removed).
        claimed_from: the canonical envelope ``from``, **unverified**; show
            it only after the sender's identity record matches
            ``sender_spk`` (wire.md §3.6). ``None`` for a v1 plaintext.
        msg_id: 16 bytes.
        ts: the header's send time.
        sender_spk: the manifest's Ed25519 key.
        prekey_id: the prekey consumed (0 = long-term key); delete its
            private key now.
    """

    body: bytes
    claimed_from: str | None
    msg_id: bytes
    ts: int
    sender_spk: bytes
    prekey_id: int


def chunk_owners(manifest: SlotManifest, zone: str) -> tuple[dns.name.Name, ...]:
    """The owners of a manifest's chunks, index ``0..n-1`` (wire.md §2).

    Args:
        manifest: the manifest.
        zone: the zone the manifest was found in (chunks live beside it;
            receivers refuse chunks from other zones).

    Returns:
        ``chunk-{i:04d}-{msg_key}.{zone}`` for every ``i`` in ``0..n-1``.
    """
    key = msg_key(manifest.msg_id, manifest.recipient_id, manifest.sender_spk)
    return tuple(chunk_owner(i, key, zone) for i in range(manifest.total_chunks))


def _collect_shares(
    manifest: SlotManifest, chunk_txts: Mapping[int, Sequence[str]]
) -> dict[int, bytes]:
    shares: dict[int, bytes] = {}
    for index in range(manifest.total_chunks):
        if len(shares) >= manifest.data_chunks:
            break
        for txt in chunk_txts.get(index, ()):
            try:
                shares[index] = unwrap_chunk_txt(txt, manifest.chunk_hashes[index])
            except DmpError:
                continue
            break
    return shares


def open_message(
    manifest: SlotManifest,
    chunk_txts: Mapping[int, Sequence[str]],
    *,
    recipient: IdentityKeys,
    prekey_private: bytes | None,
    now: int,
) -> ReceivedMessage:
    """Reassemble and decrypt one message (wire.md §3.3–3.6, §4 step 5).

    Args:
        manifest: a manifest that passed
            :func:`~dmp.domain.manifest.verify_manifest` (and the pin check).
        chunk_txts: chunk index → the TXT values found at that chunk owner;
            per index the first value that passes the hash and RS/checksum
            checks is used, and indices are walked upwards until ``k``
            shares are held.
        recipient: the receiver's keys.
        prekey_private: the X25519 private key of ``manifest.prekey_id``
            when it is not 0.
        now: POSIX seconds.

    Returns:
        The body, the unverified claimed sender address and the metadata.

    Raises:
        MalformedRecord: a legacy manifest, or a malformed outer message.
        RecordMismatch: the manifest or inner header is for another
            recipient, or the header's msg_id differs from the manifest's.
        NotEnoughShares: fewer than ``k`` usable chunks.
        ErasureError: unusable erasure parameters or length prefix.
        MessageExpired: ``now > ts + ttl``.
        DecryptionFailed: no private key for the prekey, or the AEAD failed.
    """
    if manifest.is_legacy:
        raise MalformedRecord("legacy manifest without chunk hashes is refused")
    if manifest.recipient_id != recipient.user_id:
        raise RecordMismatch("manifest is addressed to another recipient")
    shares = _collect_shares(manifest, chunk_txts)
    outer = decode_outer(erasure_decode(shares, manifest.data_chunks, manifest.total_chunks))
    header = outer.header
    if header.msg_id != manifest.msg_id:
        raise RecordMismatch("message header msg_id differs from the manifest's")
    if header.recipient != manifest.recipient_id:
        raise RecordMismatch("message header recipient differs from the manifest's")
    if header.is_expired(now):
        raise MessageExpired(f"message expired at {header.ts + header.ttl}, now {now}")
    encrypted = EncryptedMessage.decode(outer.payload)
    if manifest.prekey_id == 0:
        private_key = recipient.x25519_private
    elif prekey_private is None:
        raise DecryptionFailed(f"no private key for prekey {manifest.prekey_id}")
    else:
        private_key = prekey_private
    plaintext = decrypt_message(private_key, encrypted, build_aad(header, manifest.prekey_id))
    body, claimed_from = decode_envelope(plaintext)
    return ReceivedMessage(
        body=body,
        claimed_from=claimed_from,
        msg_id=manifest.msg_id,
        ts=header.ts,
        sender_spk=manifest.sender_spk,
        prekey_id=manifest.prekey_id,
    )


def _zone_key(zone: str) -> str:
    return strip_dot(zone).casefold()


def check_sender_pinned(
    sender_spk: bytes,
    zone: str,
    *,
    pinned: Iterable[tuple[bytes, str]],
    own_zone: str,
    allow_tofu: bool = False,
) -> None:
    """The zone-bound pin rule for a manifest's sender (wire.md §5.2, §6).

    A manifest found in ``zone`` is accepted only if ``sender_spk`` is
    pinned to that zone, or it is pinned to any zone and ``zone`` is the
    receiver's own zone. With no pins at all it is accepted only when TOFU
    is allowed (off by default). Zones compare case-insensitively, ignoring
    one trailing dot.

    Args:
        sender_spk: the manifest's 32-byte Ed25519 key.
        zone: the zone the manifest was found in.
        pinned: the contacts' ``(ed25519 key, zone)`` pairs.
        own_zone: the receiver's own zone.
        allow_tofu: accept any sender when nobody is pinned.

    Raises:
        RecordMismatch: the sender is not pinned for ``zone``.
    """
    pins = [(spk, _zone_key(z)) for spk, z in pinned]
    if not pins:
        if allow_tofu:
            return
        raise RecordMismatch("no contact is pinned and TOFU is off")
    here = _zone_key(zone)
    for spk, pin_zone in pins:
        if spk == sender_spk and (pin_zone == here or here == _zone_key(own_zone)):
            return
    raise RecordMismatch(f"sender {sender_spk.hex()[:16]}… is not pinned for zone {zone}")
