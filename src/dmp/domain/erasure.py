"""Cross-chunk erasure coding of the outer message (layer: domain; pure).

The outer message is length-prefixed and cut into 128-byte data shares;
parity shares come from **zfec**'s systematic Reed–Solomon code over
GF(2^8) (poly 0x11d, α = 2), so any ``k`` of the ``n`` shares rebuild the
message. Parity must match zfec bit for bit because the slot manifest
commits to every share's wrapped hash (wire.md §4 steps 1–3, §5.2).

Rules:

* ``wrapped = u32(len(data)) ‖ data``, zero-padded to ``128·k`` bytes,
  ``k = max(1, ceil(len(wrapped) / 128))``.
* ``parity = max(1, ceil(0.3·k))`` (computed as ``ceil(3k/10)`` in integers;
  identical to the reference's float formula for every k), ``n = k + parity``.
* zfec handles at most 256 shares, so ``n ≤ 256`` here even though the
  manifest format allows up to 1024.
* Decoding uses the ``k`` lowest-index shares offered.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Final

import attrs
import zfec

from dmp.domain.errors import ErasureError, NotEnoughShares

__all__ = [
    "MAX_ZFEC_SHARES",
    "SHARE_SIZE",
    "ErasureShares",
    "erasure_decode",
    "erasure_encode",
    "erasure_params",
]

SHARE_SIZE: Final = 128
"""Bytes per erasure share (and per data block)."""

LENGTH_PREFIX_LEN: Final = 4
MAX_ZFEC_SHARES: Final = 256
"""zfec's limit on ``n`` (shares are numbered by one byte)."""


@attrs.frozen
class ErasureShares:
    """The ``n`` shares of one erasure-coded blob.

    Attributes:
        k: data shares needed to decode (shares ``0..k-1`` are the data).
        n: total shares (``k`` data + parity).
        shares: ``n`` shares of :data:`SHARE_SIZE` bytes, index = share number.
    """

    k: int
    n: int
    shares: tuple[bytes, ...]


def erasure_params(length: int) -> tuple[int, int]:
    """``(k, n)`` for a blob of ``length`` bytes (wire.md §4 steps 1–2).

    Args:
        length: the unprefixed blob length in bytes (≥ 0).

    Returns:
        ``(k, n)`` with ``k = max(1, ceil((length + 4) / 128))`` and
        ``n = k + max(1, ceil(0.3·k))``.

    Raises:
        ValueError: ``length`` is negative.
    """
    if length < 0:
        raise ValueError("length must be non-negative")
    k = max(1, -(-(length + LENGTH_PREFIX_LEN) // SHARE_SIZE))
    parity = max(1, -(-3 * k // 10))
    return k, k + parity


@lru_cache(maxsize=64)
def _encoder(k: int, n: int) -> zfec.Encoder:
    return zfec.Encoder(k, n)


@lru_cache(maxsize=64)
def _decoder(k: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(k, n)


def erasure_encode(data: bytes) -> ErasureShares:
    """Length-prefix, pad and erasure-code ``data`` (wire.md §4 steps 1–3).

    Args:
        data: the blob (the outer message), any length up to the zfec limit
            (``n ≤ 256``, i.e. ``k ≤ 196``, about 25 KB).

    Returns:
        The ``n`` shares; shares ``0..k-1`` are the padded data blocks.

    Raises:
        ErasureError: ``data`` is too large for ``n ≤ 256`` shares.
    """
    k, n = erasure_params(len(data))
    if n > MAX_ZFEC_SHARES:
        raise ErasureError(f"{len(data)} bytes need {n} shares; the limit is {MAX_ZFEC_SHARES}")
    padded = struct.pack(">I", len(data)) + data
    padded += bytes(k * SHARE_SIZE - len(padded))
    blocks = tuple(padded[i * SHARE_SIZE : (i + 1) * SHARE_SIZE] for i in range(k))
    parity = _encoder(k, n).encode(blocks, tuple(range(k, n)))
    return ErasureShares(k=k, n=n, shares=blocks + tuple(bytes(p) for p in parity))


def erasure_decode(shares: Mapping[int, bytes], k: int, n: int) -> bytes:
    """Rebuild the blob from any ``k`` of the ``n`` shares (wire.md §4 step 5).

    The ``k`` lowest-index usable shares are used (index in ``0..n-1`` and
    exactly :data:`SHARE_SIZE` bytes); the others are ignored.

    Args:
        shares: share number → 128-byte share.
        k: data shares (the manifest's ``data_chunks``).
        n: total shares (the manifest's ``total_chunks``).

    Returns:
        The blob, with the length prefix and padding removed.

    Raises:
        NotEnoughShares: fewer than ``k`` usable shares.
        ErasureError: ``k``/``n`` out of range (``1 ≤ k ≤ n ≤ 256``), or the
            length prefix exceeds the decoded bytes.
    """
    if not 1 <= k <= n <= MAX_ZFEC_SHARES:
        raise ErasureError(f"unsupported erasure parameters k={k}, n={n}")
    usable = sorted(i for i, s in shares.items() if 0 <= i < n and len(s) == SHARE_SIZE)
    if len(usable) < k:
        raise NotEnoughShares(f"{len(usable)} usable shares, {k} needed")
    chosen = tuple(usable[:k])
    if chosen == tuple(range(k)):
        joined = b"".join(shares[i] for i in chosen)
    else:
        try:
            blocks = _decoder(k, n).decode(tuple(shares[i] for i in chosen), chosen)
        except zfec.Error as exc:  # pragma: no cover - inputs are validated above
            raise ErasureError(f"zfec decode failed: {exc}") from exc
        joined = b"".join(bytes(b) for b in blocks)
    (length,) = struct.unpack(">I", joined[:LENGTH_PREFIX_LEN])
    if length > len(joined) - LENGTH_PREFIX_LEN:
        raise ErasureError(f"length prefix {length} exceeds the {len(joined) - 4} decoded bytes")
    return joined[LENGTH_PREFIX_LEN : LENGTH_PREFIX_LEN + length]
