"""stream_server/shell/guard.py's TokenBucket: the POST /offer rate limit per client address."""

from __future__ import annotations

import pytest

from stream_server.shell.guard import TokenBucket


def test_burst_then_refused_with_the_wait_until_the_next_token() -> None:
    b = TokenBucket(rate_per_s=2.0, burst=3)
    assert [b.allow("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.allow("a", now=0.0)
    assert wait == pytest.approx(0.5)  # one token per 0.5 s
    assert b.allow("a", now=0.25) == pytest.approx(0.25)  # a refused try costs nothing
    assert b.allow("a", now=0.5) == 0.0


def test_tokens_refill_up_to_the_burst_only() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=2)
    b.allow("a", now=0.0)
    b.allow("a", now=0.0)
    # An hour idle refills to the burst (2), not to 3600.
    later = [b.allow("a", now=3600.0) for _ in range(3)]
    assert later[:2] == [0.0, 0.0] and later[2] > 0


def test_each_client_has_its_own_bucket() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=1)
    assert b.allow("a", now=0.0) == 0.0
    assert b.allow("a", now=0.0) > 0
    assert b.allow("b", now=0.0) == 0.0


def test_idle_clients_are_forgotten_past_ten_thousand() -> None:
    b = TokenBucket(rate_per_s=1.0, burst=1)
    for i in range(10_000):
        b.allow(f"old{i}", now=0.0)
    b.allow("new", now=100.0)  # the old ones are long refilled: forgetting them changes nothing
    assert set(b.buckets) == {"new"}
