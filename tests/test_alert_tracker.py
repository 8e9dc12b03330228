"""stream_server/shell/alerts.py's AlertTracker: a face at or above the threshold for
`hold_seconds` fires one alert; dropping below, or leaving, re-arms it."""

from __future__ import annotations

from stream_server.core.messages import FaceScore, Label, ScoreMessage
from stream_server.shell.alerts import AlertTracker


def msg(*faces: tuple[int, float, Label]) -> ScoreMessage:
    scores = tuple(FaceScore(t, (0.1, 0.1, 0.2, 0.2), p, 20, lab) for t, p, lab in faces)
    return ScoreMessage("cam", 0, 0.0, None, "real", scores, 1.0, 0, "m@1")


def test_fires_once_after_the_hold_time() -> None:
    a = AlertTracker(threshold=0.5, hold_seconds=3.0)
    assert a.update(msg((1, 0.9, "fake")), now=0.0) == []
    assert a.update(msg((1, 0.9, "fake")), now=2.9) == []
    fired = a.update(msg((1, 0.8, "fake")), now=3.0)
    assert fired == [{"track": 1, "p_fake": 0.8, "box": [0.1, 0.1, 0.2, 0.2], "above_for_s": 3.0}]
    assert a.update(msg((1, 0.9, "fake")), now=10.0) == []  # once per episode


def test_dropping_below_resets_the_clock_and_re_arms() -> None:
    a = AlertTracker(threshold=0.5, hold_seconds=1.0)
    a.update(msg((1, 0.9, "fake")), now=0.0)
    assert len(a.update(msg((1, 0.9, "fake")), now=1.0)) == 1
    a.update(msg((1, 0.2, "real")), now=1.5)
    assert a.update(msg((1, 0.9, "fake")), now=2.0) == []  # clock restarted at 2.0
    assert len(a.update(msg((1, 0.9, "fake")), now=3.0)) == 1


def test_warming_up_faces_never_alert_and_tracks_are_separate() -> None:
    a = AlertTracker(threshold=0.5, hold_seconds=0.0)
    assert a.update(msg((1, 0.99, "warming_up")), now=0.0) == []
    fired = a.update(msg((1, 0.99, "warming_up"), (2, 0.7, "fake")), now=0.0)
    assert [x["track"] for x in fired] == [2]


def test_a_face_that_leaves_is_forgotten() -> None:
    a = AlertTracker(threshold=0.5, hold_seconds=1.0)
    a.update(msg((1, 0.9, "fake")), now=0.0)
    a.update(msg(), now=0.5)  # no face in this frame
    assert a.above_since == {} and a.fired == set()
    assert a.update(msg((1, 0.9, "fake")), now=1.0) == []  # a new episode starts at 1.0
