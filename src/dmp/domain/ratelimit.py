"""Token buckets, keyed and bounded (layer: domain; pure: ``now`` is a parameter).

Used for the per-source-IP DNS and HTTP limits, the per-token HTTP limits,
the registration bucket and the per-recipient un-TSIG'd claim limit
(behaviour.md §b-§e). A rate of 0 disables a bucket (always allows).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["KeyedBuckets", "TokenBucket"]

K = TypeVar("K")


class TokenBucket:
    """A classic token bucket.

    Args:
        rate: tokens added per second (0 disables the limit).
        burst: capacity in tokens; the bucket starts full.
        now: creation time, POSIX seconds.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1.0))
        self._tokens = self.burst
        self._stamp = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available; True when allowed."""
        if self.rate <= 0:
            return True
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0 when they already are)."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        return max(0.0, (cost - tokens) / self.rate)


class KeyedBuckets(Generic[K]):
    """One :class:`TokenBucket` per key, with LRU eviction past ``max_keys``.

    An evicted key starts again with a full bucket, so ``max_keys`` should
    comfortably exceed the number of concurrently active sources.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: K, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; True when allowed."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now, cost)

    def __len__(self) -> int:
        return len(self._buckets)
