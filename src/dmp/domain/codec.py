"""Shared wire helpers (layer: domain; pure).

Base64 in the two flavours the reference uses, TXT character-string
splitting and joining, the big-endian integer readers, and the time rules
shared by several record types.

Sources: wire.md §1.1 (base64 strictness), §1.4 (multi-string TXT),
§1.6 (time rules); RFC 1035 §3.3.14 (TXT character-strings ≤ 255 octets).
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Final

from dmp.domain.errors import ClockSkew, ExpiryTooFar, MalformedRecord, RecordExpired

__all__ = [
    "DAY_S",
    "FIVE_YEARS_S",
    "MAX_CHARACTER_STRING",
    "THIRTY_DAYS_S",
    "Reader",
    "b64decode_lenient",
    "b64decode_strict",
    "b64encode",
    "check_expiry_cap",
    "check_future_skew",
    "check_not_expired",
    "join_txt",
    "split_txt",
    "strip_prefix",
]

MAX_CHARACTER_STRING: Final = 255
DAY_S: Final = 86400
THIRTY_DAYS_S: Final = 30 * DAY_S
FIVE_YEARS_S: Final = 5 * 365 * DAY_S


def b64encode(data: bytes) -> str:
    """RFC 4648 standard base64 with ``=`` padding, as text."""
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    """Decode standard base64, rejecting any non-alphabet character.

    Used by cluster, bootstrap, rotation, revocation, claim and heartbeat
    records (wire.md §1.1).

    Raises:
        MalformedRecord: a non-alphabet character or bad padding.
    """
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise MalformedRecord(f"invalid base64: {exc}") from exc


def b64decode_lenient(text: str) -> bytes:
    """Decode standard base64, silently discarding non-alphabet characters.

    Used by manifest, identity, prekey and chunk records (wire.md §1.1);
    matches Python's ``base64.b64decode(s)`` without ``validate``.

    Raises:
        MalformedRecord: non-ASCII text, or bad padding or length after
            discarding.
    """
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRecord(f"invalid base64: {exc}") from exc


def strip_prefix(wire: str, prefix: str) -> str:
    """Return the payload after ``prefix``.

    Raises:
        MalformedRecord: ``wire`` does not start with ``prefix``.
    """
    if not wire.startswith(prefix):
        raise MalformedRecord(f"record does not start with {prefix!r}")
    return wire[len(prefix) :]


def split_txt(value: bytes | str, size: int = MAX_CHARACTER_STRING) -> tuple[bytes, ...]:
    """Split one TXT value into character-strings of at most ``size`` bytes.

    An empty value gives one empty character-string (a TXT RR has at least
    one). Split points carry no meaning (wire.md §1.4).
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    if not data:
        return (b"",)
    return tuple(data[i : i + size] for i in range(0, len(data), size))


def join_txt(txt_strings: tuple[bytes, ...] | list[bytes]) -> str:
    """Join the character-strings of one TXT RR and decode them as UTF-8.

    Raises:
        MalformedRecord: the joined bytes are not valid UTF-8.
    """
    try:
        return b"".join(txt_strings).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("TXT value is not valid UTF-8") from exc


class Reader:
    """A cursor over a bytes blob with big-endian fixed-size reads.

    Every read raises :class:`MalformedRecord` when the blob is too short.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise MalformedRecord("record is truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def expect_end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedRecord(f"{len(self._data) - self._pos} trailing bytes")


def check_not_expired(exp: int, now: int, *, inclusive: bool = False) -> None:
    """Reject a record whose ``exp`` has passed.

    ``inclusive=False`` rejects only ``now > exp`` (manifest, cluster,
    bootstrap, rotation); ``inclusive=True`` also rejects ``now == exp``
    (claim, heartbeat: ``exp <= now``). wire.md §1.6.

    Raises:
        RecordExpired
    """
    if now > exp or (inclusive and now == exp):
        raise RecordExpired(f"expired at {exp}, now {now}")


def check_expiry_cap(exp: int, now: int, cap_s: int) -> None:
    """Reject ``exp - now > cap_s`` (wire.md §1.6).

    Raises:
        ExpiryTooFar
    """
    if exp - now > cap_s:
        raise ExpiryTooFar(f"exp {exp} is more than {cap_s} s after now {now}")


def check_future_skew(ts: int, now: int, skew_s: int) -> None:
    """Reject ``ts - now > skew_s`` (a timestamp from the future).

    Raises:
        ClockSkew
    """
    if ts - now > skew_s:
        raise ClockSkew(f"ts {ts} is more than {skew_s} s after now {now}")
