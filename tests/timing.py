"""Every wall-clock bound in the tests comes from here: one scale factor, and polling for a
condition instead of sleeping and then asserting.

`DEEPFAKE_TEST_TIME_SCALE` (default 1) multiplies every deadline: set it to 2 or 3 on a slow or
busy machine (CI on 2 shared cores may). A bound that the README promises (SIGTERM exits within
5 s, a first score within 2 s) is `scaled(promise)`: at scale 1 it is the promise itself, so a
regression past it still fails; a larger scale only widens it for a machine known to be slower.
Polls return as soon as the condition holds, so a fast machine pays nothing for the slack."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _scale() -> float:
    raw = os.environ.get("DEEPFAKE_TEST_TIME_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"DEEPFAKE_TEST_TIME_SCALE must be a number, got {raw!r}") from None
    if not 0.5 <= value <= 20:
        raise RuntimeError(f"DEEPFAKE_TEST_TIME_SCALE must be in 0.5..20, got {value}")
    return value


TIME_SCALE = _scale()


def scaled(seconds: float) -> float:
    """`seconds` times the scale factor."""
    return seconds * TIME_SCALE


def ms(seconds: float) -> float:
    """`scaled(seconds)` in milliseconds, for Playwright's `timeout=`."""
    return scaled(seconds) * 1000.0


def deadline(seconds: float) -> float:
    """A `time.monotonic()` deadline `scaled(seconds)` from now."""
    return time.monotonic() + scaled(seconds)


def poll(
    probe: Callable[[], T], within: float, every: float = 0.05, until: Callable[[T], bool] = bool
) -> T:
    """Call `probe` until `until(value)` holds or `scaled(within)` seconds have passed; the last
    value either way (the caller asserts on it, so a failure shows what was seen)."""
    end = deadline(within)
    while True:
        value = probe()
        if until(value) or time.monotonic() >= end:
            return value
        time.sleep(every)


async def poll_async(
    probe: Callable[[], T], within: float, every: float = 0.05, until: Callable[[T], bool] = bool
) -> T:
    """`poll` for a coroutine: sleeps with asyncio so the loop keeps running."""
    end = deadline(within)
    while True:
        value = probe()
        if until(value) or time.monotonic() >= end:
            return value
        await asyncio.sleep(every)
