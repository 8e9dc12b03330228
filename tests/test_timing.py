"""The one time scale every wall-clock bound in the suite is multiplied by (tests/timing.py)."""

from __future__ import annotations

import time

import pytest

from tests import timing


def test_scale_comes_from_the_environment_and_bad_values_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEEPFAKE_TEST_TIME_SCALE", raising=False)
    assert timing._scale() == 1.0
    monkeypatch.setenv("DEEPFAKE_TEST_TIME_SCALE", "2")
    assert timing._scale() == 2.0
    for bad in ("fast", "0", "100"):
        monkeypatch.setenv("DEEPFAKE_TEST_TIME_SCALE", bad)
        with pytest.raises(RuntimeError, match="DEEPFAKE_TEST_TIME_SCALE"):
            timing._scale()


def test_poll_returns_as_soon_as_the_condition_holds_and_the_last_value_otherwise() -> None:
    t0 = time.monotonic()
    calls = iter(range(100))
    assert timing.poll(lambda: next(calls), 5, every=0.01, until=lambda n: n >= 3) == 3
    assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    assert timing.poll(lambda: 0, 0.2 / timing.TIME_SCALE, every=0.01) == 0
    assert time.monotonic() - t0 >= 0.2 - 1e-3
