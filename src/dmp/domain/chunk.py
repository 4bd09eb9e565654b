"""Per-chunk wrap of an erasure share, and the chunk TXT record (layer: domain; pure).

Each 128-byte erasure share ``block`` is published as

    wrapped = sha256(block)[0:8] ‖ block ‖ rs_parity(block)     (168 bytes)
    TXT     = "v=dmp1;t=chunk;d=" + base64(wrapped)               (241 chars)

where ``rs_parity`` is the 32 parity bytes of the systematic Reed–Solomon
code of ``reedsolo.RSCodec(32)``: GF(2^8) with polynomial 0x11d, generator
α = 2, first consecutive root 0, ``g(x) = Π_{i=0..31} (x − α^i)``, parity =
``block(x)·x^32 mod g(x)``, highest-degree coefficient first. The manifest
commits to ``sha256(wrapped)`` (wire.md §4 steps 4–6, §5.1).

Speed: reedsolo is pure Python (hundreds of µs per block). Parity is linear
over GF(2) in the block bytes, so :func:`rs_parity` XORs precomputed
per-(position, byte value) parity contributions held as ints. Receiving
first compares the 8-byte checksum and the recomputed parity with what
arrived; only when either differs does it fall back to reedsolo's decoder,
so what is accepted and rejected is exactly the reference's.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Final

import reedsolo

from dmp.domain.codec import b64decode_lenient, b64encode
from dmp.domain.errors import ChunkHashMismatch, ChunkUnrecoverable, MalformedRecord

__all__ = [
    "CHECKSUM_LEN",
    "CHUNK_PREFIX",
    "RS_MAX_MESSAGE_LEN",
    "RS_PARITY_LEN",
    "WRAPPED_LEN",
    "chunk_txt",
    "parse_chunk_txt",
    "rs_parity",
    "unwrap_block",
    "unwrap_chunk_txt",
    "wrap_block",
]

CHUNK_PREFIX: Final = "v=dmp1;t=chunk;d="
CHECKSUM_LEN: Final = 8
RS_PARITY_LEN: Final = 32
BLOCK_LEN: Final = 128
WRAPPED_LEN: Final = CHECKSUM_LEN + BLOCK_LEN + RS_PARITY_LEN
RS_MAX_MESSAGE_LEN: Final = 255 - RS_PARITY_LEN
"""Longest message one RS(255, 223) codeword carries."""

_PRIM: Final = 0x11D


# -- GF(2^8) and the table-driven parity encoder ----------------------------


def _gf_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= _PRIM
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


def _gf_mul(a: int, b: int, exp: list[int], log: list[int]) -> int:
    if a == 0 or b == 0:
        return 0
    return exp[log[a] + log[b]]


def _generator_low(exp: list[int], log: list[int]) -> list[int]:
    """The 32 low coefficients of the monic ``g(x)``, highest degree first."""
    g = [1]
    for i in range(RS_PARITY_LEN):
        root = exp[i]  # α^(fcr + i), fcr = 0
        # g(x) · (x + root); coefficients highest degree first.
        nxt = [*g, 0]
        for j, c in enumerate(g):
            nxt[j + 1] ^= _gf_mul(c, root, exp, log)
        g = nxt
    return g[1:]


@lru_cache(maxsize=1)
def _parity_tables() -> tuple[tuple[int, ...], ...]:
    """``T[p][b]`` = parity of byte ``b`` at power ``x^p`` of the message, as an int.

    The message byte at index ``i`` of an ``L``-byte message has power
    ``p = L - 1 - i``; its parity contribution is ``b · (x^(32+p) mod g)``.
    """
    exp, log = _gf_tables()
    g_low = _generator_low(exp, log)
    tables: list[tuple[int, ...]] = []
    rem = list(g_low)  # x^32 mod g
    for _ in range(RS_MAX_MESSAGE_LEN):
        unit = [
            int.from_bytes(bytes(_gf_mul(bit, c, exp, log) for c in rem), "big")
            for bit in (1 << j for j in range(8))
        ]
        row = [0] * 256
        for b in range(1, 256):
            low = b & -b
            row[b] = row[b ^ low] ^ unit[low.bit_length() - 1]
        tables.append(tuple(row))
        # rem · x mod g: shift left, fold the overflowing coefficient back in.
        top = rem[0]
        rem = [*rem[1:], 0]
        if top:
            rem = [r ^ _gf_mul(top, c, exp, log) for r, c in zip(rem, g_low, strict=True)]
    return tuple(tables)


@lru_cache(maxsize=8)
def _tables_for_length(length: int) -> tuple[tuple[int, ...], ...]:
    """The parity rows for an ``length``-byte message, in message-byte order."""
    return tuple(reversed(_parity_tables()[:length]))


def rs_parity(message: bytes) -> bytes:
    """The 32 ``reedsolo.RSCodec(32)`` parity bytes of ``message``.

    Args:
        message: 1 to 223 bytes (one RS(255, 223) codeword's worth).

    Returns:
        32 bytes, identical to ``RSCodec(32).encode(message)[-32:]``.

    Raises:
        ValueError: ``message`` is empty or longer than 223 bytes.
    """
    if not 1 <= len(message) <= RS_MAX_MESSAGE_LEN:
        raise ValueError(f"RS message must be 1..{RS_MAX_MESSAGE_LEN} bytes, got {len(message)}")
    acc = 0
    for row, b in zip(_tables_for_length(len(message)), message, strict=True):
        acc ^= row[b]
    return acc.to_bytes(RS_PARITY_LEN, "big")


@lru_cache(maxsize=1)
def _codec() -> reedsolo.RSCodec:
    return reedsolo.RSCodec(RS_PARITY_LEN, nsize=255, fcr=0, prim=_PRIM, generator=2)


# -- wrap / unwrap -----------------------------------------------------------


def _checksum(block: bytes) -> bytes:
    return hashlib.sha256(block).digest()[:CHECKSUM_LEN]


def wrap_block(block: bytes) -> bytes:
    """``sha256(block)[:8] ‖ block ‖ rs_parity(block)`` (wire.md §4 step 4).

    Args:
        block: one 128-byte erasure share.

    Returns:
        The 168-byte wrapped chunk.

    Raises:
        ValueError: ``block`` is not 128 bytes.
    """
    if len(block) != BLOCK_LEN:
        raise ValueError(f"chunk block must be {BLOCK_LEN} bytes, got {len(block)}")
    return _checksum(block) + block + rs_parity(block)


def unwrap_block(wrapped: bytes) -> bytes:
    """Check (and if needed RS-repair) a wrapped chunk; return its 128-byte block.

    Fast path: when the parity equals the recomputed parity the codeword is
    valid (reedsolo would return it unchanged), so only the checksum is
    compared. Otherwise reedsolo corrects up to 16 byte errors in ``block ‖ parity``
    and the checksum must match the corrected block (wire.md §4 step 5).

    Args:
        wrapped: the 168 decoded bytes of a chunk's ``d=``.

    Returns:
        The 128-byte erasure share.

    Raises:
        ChunkUnrecoverable: wrong length, RS decoding failed, or the
            checksum does not match the (corrected) block.
    """
    if len(wrapped) != WRAPPED_LEN:
        raise ChunkUnrecoverable(f"wrapped chunk must be {WRAPPED_LEN} bytes, got {len(wrapped)}")
    checksum = wrapped[:CHECKSUM_LEN]
    block = wrapped[CHECKSUM_LEN : CHECKSUM_LEN + BLOCK_LEN]
    if rs_parity(block) == wrapped[CHECKSUM_LEN + BLOCK_LEN :]:
        # A valid codeword: reedsolo would return it unchanged.
        if _checksum(block) != checksum:
            raise ChunkUnrecoverable("chunk checksum does not match the block")
        return block
    try:
        decoded = _codec().decode(wrapped[CHECKSUM_LEN:])
    except reedsolo.ReedSolomonError as exc:
        raise ChunkUnrecoverable(f"Reed-Solomon decode failed: {exc}") from exc
    repaired = bytes(decoded[0])
    if len(repaired) != BLOCK_LEN or _checksum(repaired) != checksum:
        raise ChunkUnrecoverable("chunk checksum does not match the decoded block")
    return repaired


def chunk_txt(wrapped: bytes) -> str:
    """The TXT value ``v=dmp1;t=chunk;d=`` + base64(wrapped) (wire.md §1.1)."""
    return CHUNK_PREFIX + b64encode(wrapped)


def parse_chunk_txt(txt: str) -> bytes:
    """The decoded ``d=`` payload of a chunk TXT value.

    The value is split on ``;`` into ``key=value`` fields (the first ``=``
    separates; fields without ``=`` are ignored). It must start with
    ``v=dmp`` and carry ``t=chunk`` and ``d=``; a legacy ``m=`` field is
    ignored. ``d`` is decoded with lenient base64 (wire.md §1.1).

    Args:
        txt: one TXT value (character-strings already joined).

    Returns:
        The decoded bytes of ``d`` (168 bytes for a well-formed chunk).

    Raises:
        MalformedRecord: not a ``v=dmp`` chunk record, no ``d`` field, or
            undecodable base64.
    """
    if not txt.startswith("v=dmp"):
        raise MalformedRecord("chunk TXT does not start with v=dmp")
    fields: dict[str, str] = {}
    for part in txt.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    if fields.get("t") != "chunk":
        raise MalformedRecord(f"TXT record type is {fields.get('t')!r}, not 'chunk'")
    if "d" not in fields:
        raise MalformedRecord("chunk TXT has no d= field")
    return b64decode_lenient(fields["d"])


def unwrap_chunk_txt(txt: str, expected_sha256: bytes) -> bytes:
    """The receive check for one chunk TXT value (wire.md §4 step 5).

    Args:
        txt: the TXT value found at ``chunk-iiii-<msg_key>.<zone>``.
        expected_sha256: the manifest's ``chunk_hashes[i]`` (32 bytes).

    Returns:
        The 128-byte erasure share.

    Raises:
        MalformedRecord: not a chunk record (see :func:`parse_chunk_txt`).
        ChunkHashMismatch: ``sha256(decoded d) != expected_sha256``.
        ChunkUnrecoverable: the RS/checksum unwrap failed.
    """
    wrapped = parse_chunk_txt(txt)
    if hashlib.sha256(wrapped).digest() != expected_sha256:
        raise ChunkHashMismatch(f"chunk sha256 {hashlib.sha256(wrapped).hexdigest()[:16]}…")
    return unwrap_block(wrapped)
