"""Token buckets: burst, refill over virtual time, disable at rate 0, LRU bound."""

from __future__ import annotations

from dmp.domain.ratelimit import KeyedBuckets, TokenBucket


def test_burst_then_refill() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(100.0) == 0.5
    assert bucket.allow(100.5)
    assert not bucket.allow(100.5)
    assert bucket.allow(200.0)


def test_rate_zero_disables() -> None:
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(bucket.allow(0.0) for _ in range(1000))


def test_keyed_buckets_are_independent_and_bounded() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=1.0, burst=1, max_keys=2)
    assert buckets.allow("a", 0.0)
    assert not buckets.allow("a", 0.0)
    assert buckets.allow("b", 0.0)
    assert buckets.allow("c", 0.0)
    assert len(buckets) == 2
    assert buckets.allow("a", 0.0)  # evicted, so it starts full again
