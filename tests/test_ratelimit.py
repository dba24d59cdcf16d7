"""The token bucket, pure: the clock is passed in, so nothing here waits or times."""

import pytest

from sessions_app.errors import RateLimited, RateLimitExceeded
from sessions_app.ratelimit import TokenBucket


def test_a_full_burst_is_admitted_at_once_and_the_next_frame_is_rate_limited():
    bucket = TokenBucket(rate=2, burst=5, now=0.0)
    for _ in range(5):
        bucket.admit(0.0)
    with pytest.raises(RateLimited) as caught:
        bucket.admit(0.0)
    assert caught.value.close_code is None


def test_tokens_refill_at_the_rate():
    bucket = TokenBucket(rate=2, burst=1, now=0.0)
    bucket.admit(0.0)
    with pytest.raises(RateLimited):
        bucket.admit(0.25)
    bucket.admit(0.5)  # 0.5 s at 2 per second is one token
    with pytest.raises(RateLimited):
        bucket.admit(0.5)


def test_a_steady_rate_at_the_limit_is_never_refused():
    bucket = TokenBucket(rate=8, burst=1, now=0.0)
    for step in range(1000):
        bucket.admit(step / 8)  # eighths are exact in binary floating point


def test_more_refusals_than_the_burst_before_refilling_is_a_flood_closed_with_4429():
    bucket = TokenBucket(rate=1, burst=3, now=0.0)
    for _ in range(3):
        bucket.admit(0.0)
    for _ in range(3):
        with pytest.raises(RateLimited):
            bucket.admit(0.0)
    with pytest.raises(RateLimitExceeded) as caught:
        bucket.admit(0.0)
    assert (caught.value.code, caught.value.close_code) == ("rate_limit_exceeded", 4429)


def test_sending_at_twice_the_rate_persistently_is_closed_even_though_some_frames_pass():
    bucket = TokenBucket(rate=10, burst=4, now=0.0)
    outcomes = []
    for step in range(200):
        try:
            bucket.admit(step / 20)
            outcomes.append("ok")
        except RateLimitExceeded:
            outcomes.append("closed")
            break
        except RateLimited:
            outcomes.append("limited")
    assert outcomes[-1] == "closed"
    assert "ok" in outcomes[5:]


def test_backing_off_until_the_bucket_refills_forgives_earlier_refusals():
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    for _ in range(2):
        bucket.admit(0.0)
    for _ in range(2):
        with pytest.raises(RateLimited):
            bucket.admit(0.0)
    for _ in range(2):
        bucket.admit(2.0)  # quiet for burst / rate seconds: full again, slate clean
    for _ in range(2):
        with pytest.raises(RateLimited):
            bucket.admit(2.0)


def test_a_rate_of_zero_turns_the_limit_off():
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    for _ in range(10_000):
        bucket.admit(0.0)


def test_a_clock_that_goes_backwards_adds_no_tokens():
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    bucket.admit(10.0)
    with pytest.raises(RateLimited):
        bucket.admit(5.0)
