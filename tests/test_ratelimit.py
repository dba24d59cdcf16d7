"""The token bucket, pure: the clock is passed in, so nothing here waits or times."""

import pytest

from sessions_app.errors import RateLimited, RateLimitExceeded
from sessions_app.ratelimit import TokenBucket

pytestmark = pytest.mark.path_independent


def outcomes(bucket: TokenBucket, times: list[float]) -> list[str]:
    """Feed frames arriving at `times`: "ok", "limited" (stays open) or "closed" (4429), stopping at a close."""
    seen = []
    for now in times:
        try:
            bucket.admit(now)
            seen.append("ok")
        except RateLimitExceeded as error:
            assert (error.code, error.close_code) == ("rate_limit_exceeded", 4429)
            return [*seen, "closed"]
        except RateLimited as error:
            assert (error.code, error.close_code) == ("rate_limited", None)
            seen.append("limited")
    return seen


def test_a_full_burst_is_admitted_at_once_and_the_next_frame_is_rate_limited():
    assert outcomes(TokenBucket(rate=2, burst=5, now=0.0), [0.0] * 6) == ["ok"] * 5 + ["limited"]


def test_tokens_refill_at_the_rate():
    # 0.5 s at 2 per second is one token.
    assert outcomes(TokenBucket(rate=2, burst=1, now=0.0), [0.0, 0.25, 0.5, 0.5]) == ["ok", "limited", "ok", "limited"]


def test_a_steady_rate_at_the_limit_is_never_refused():
    # Eighths are exact in binary floating point.
    assert set(outcomes(TokenBucket(rate=8, burst=1, now=0.0), [step / 8 for step in range(1000)])) == {"ok"}


def test_more_refusals_than_the_burst_before_refilling_is_a_flood_closed_with_4429():
    assert outcomes(TokenBucket(rate=1, burst=3, now=0.0), [0.0] * 10) == ["ok"] * 3 + ["limited"] * 3 + ["closed"]


def test_sending_at_twice_the_rate_persistently_is_closed_even_though_some_frames_pass():
    seen = outcomes(TokenBucket(rate=10, burst=4, now=0.0), [step / 20 for step in range(200)])
    assert seen[-1] == "closed"
    assert "ok" in seen[5:]


def test_backing_off_until_the_bucket_refills_forgives_earlier_refusals():
    # Quiet for burst / rate seconds: full again, with a clean slate.
    seen = outcomes(TokenBucket(rate=1, burst=2, now=0.0), [0.0] * 4 + [2.0] * 4)
    assert seen == ["ok", "ok", "limited", "limited"] * 2


def test_a_rate_of_zero_turns_the_limit_off():
    assert set(outcomes(TokenBucket(rate=0, burst=1, now=0.0), [0.0] * 10_000)) == {"ok"}


def test_a_clock_that_goes_backwards_adds_no_tokens():
    assert outcomes(TokenBucket(rate=1, burst=1, now=10.0), [10.0, 5.0]) == ["ok", "limited"]


@pytest.mark.parametrize("burst", [0, -3])
def test_a_burst_below_one_still_admits_one_frame(burst):
    assert outcomes(TokenBucket(rate=1, burst=burst, now=0.0), [0.0, 0.0]) == ["ok", "limited"]
