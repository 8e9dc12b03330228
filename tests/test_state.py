"""Kept state (issue 17): cameras with stable ids and their history in SQLite under --data-dir
survive a restart of the service; the file survives kill -9 in the middle of writes; the
--cameras-file (TOML) declares cameras with the same model as the API; bad input gets clear
errors. Real uvicorn, a real GStreamer RTSP camera, real `deepfake-serve` processes; loopback
only."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bundles import low_threshold
from tests.conftest import LiveServer, free_port
from tests.rtsp import RtspServer, write_camera_clip
from tests.timing import poll

FAST = {"camera_stall_seconds": 2.0, "camera_backoff_max": 1.0, "camera_allow": ("127.0.0.1",)}


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_camera_clip(tmp_path_factory.mktemp("state") / "cam.mp4", loops=6)


def closed_port_url() -> str:
    return f"rtsp://127.0.0.1:{free_port()}/nothing"


@pytest.mark.rtsp
def test_cameras_and_their_history_survive_a_restart(
    tiny_bundle: Path, tmp_path: Path, camera_clip: Path
) -> None:
    """Two cameras registered through the API (one id a slug of its name, one given) come back
    after a restart with the same ids and settings; the history read before the restart (minute
    summaries, status changes, alerts) is read again unchanged after it."""
    bundle = low_threshold(tiny_bundle, tmp_path)
    data = tmp_path / "data"
    with RtspServer(camera_clip, free_port()) as rtsp:
        with LiveServer(bundle=bundle, data_dir=data, **FAST) as srv:
            r = httpx.post(
                srv.url + "/v1/cameras",
                json={"url": rtsp.url, "name": "Front Door", "alert_seconds": 0.5},
            )
            assert r.status_code == 201, r.text
            front = r.json()
            assert front["id"] == "front-door" and front["alert_seconds"] == 0.5
            r = httpx.post(srv.url + "/v1/cameras", json={"url": closed_port_url(), "id": "yard-2"})
            assert r.status_code == 201, r.text
            # An alert is kept (and listed), and the camera's status went live.
            alerts = poll(
                lambda: httpx.get(srv.url + "/v1/alerts").json()["alerts"],
                20,
                every=0.2,
                until=bool,
            )
            assert alerts and alerts[0]["camera"] == "front-door", alerts
            assert alerts[0]["name"] == "Front Door" and alerts[0]["p_fake"] >= 0.01
            assert abs(alerts[0]["t"] - time.time()) < 60  # wall clock
            poll(
                lambda: httpx.get(srv.url + "/v1/cameras/yard-2").json()["status"],
                10,
                every=0.2,
                until=lambda s: s == "error",
            )
            live = httpx.get(srv.url + "/v1/cameras/front-door/history?since=0").json()
            assert live["summaries"] and live["summaries"][-1].get("partial") is True
            assert any(s["status"] == "live" for s in live["statuses"]), live
            listed = httpx.get(srv.url + "/v1/cameras").json()["cameras"]
        # Stopped: the minute being counted is kept at shutdown.
    before = {
        "cameras": [(c["id"], c["name"], c["alert_seconds"]) for c in listed],
        "front": _history(data, "front-door"),
    }
    assert before["front"]["summaries"], before
    assert sum(m["scores"] for m in before["front"]["summaries"]) >= 3
    assert not any(m.get("partial") for m in before["front"]["summaries"])
    assert before["front"]["alerts"] and before["front"]["statuses"]
    # Restarted, with the RTSP camera gone: same ids and settings, the same history.
    with LiveServer(bundle=bundle, data_dir=data, **FAST) as srv:
        listed = httpx.get(srv.url + "/v1/cameras").json()["cameras"]
        assert [(c["id"], c["name"], c["alert_seconds"]) for c in listed] == before["cameras"]
        after = httpx.get(srv.url + "/v1/cameras/front-door/history?since=0").json()
        assert after["summaries"] == before["front"]["summaries"]
        assert after["alerts"] == before["front"]["alerts"]
        n = len(before["front"]["statuses"])
        assert after["statuses"][:n] == before["front"]["statuses"]
        # The same camera again is a duplicate; the id is taken even with another URL.
        r = httpx.post(srv.url + "/v1/cameras", json={"url": closed_port_url(), "id": "yard-2"})
        assert r.status_code == 409 and "taken" in r.json()["error"]
        # Removing a camera removes its history.
        assert httpx.delete(srv.url + "/v1/cameras/front-door").status_code == 204
        assert httpx.get(srv.url + "/v1/cameras/front-door/history").status_code == 404
        assert httpx.get(srv.url + "/v1/alerts?since=0").json()["alerts"] == []
    db = sqlite3.connect(data / "state.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM summaries").fetchone()[0] == 0
    db.close()
    assert (data / "state.sqlite3").stat().st_mode & 0o077 == 0  # URLs carry credentials


def _history(data: Path, camera: str) -> dict[str, Any]:
    """The camera's history as kept in the database, read with no service running."""
    from stream_server.shell.store import Store

    store = Store(data, 30)
    try:
        return store.history(camera, 0, time.time() + 60)
    finally:
        store.close()


def test_history_queries_and_bad_input(tiny_bundle: Path, tmp_path: Path) -> None:
    """?since=/?until= take Unix seconds or ISO 8601; anything else is a 400 that says what is
    wanted; ids and settings are checked with the reason given."""
    with LiveServer(bundle=tiny_bundle, data_dir=tmp_path / "d", **FAST) as srv:
        cam = httpx.post(srv.url + "/v1/cameras", json={"url": closed_port_url(), "name": "Hall"})
        assert cam.status_code == 201 and cam.json()["id"] == "hall"
        again = httpx.post(srv.url + "/v1/cameras", json={"url": closed_port_url(), "name": "Hall"})
        assert again.json()["id"] == "hall-2"  # the slug made unique
        ok = httpx.get(srv.url + "/v1/cameras/hall/history?since=2020-01-01T00:00:00Z")
        assert ok.status_code == 200 and ok.json()["since"] == 1577836800.0
        for query, why in [
            ("since=yesterday", "since must be Unix seconds or an ISO 8601 time"),
            ("since=100&until=50", "until must be later than since"),
        ]:
            r = httpx.get(srv.url + "/v1/cameras/hall/history?" + query)
            assert r.status_code == 400 and why in r.json()["error"], r.text
        r = httpx.get(srv.url + "/v1/alerts?limit=0")
        assert r.status_code == 400 and "limit" in r.json()["error"]
        assert httpx.get(srv.url + "/v1/alerts?camera=nope").status_code == 404
        for body, why in [
            ({"url": closed_port_url(), "id": "Bad Id"}, "id must be 1 to 40 lowercase"),
            ({"url": closed_port_url(), "alert_seconds": -1}, "alert_seconds must be"),
            ({"url": closed_port_url(), "colour": "red"}, "unknown camera setting 'colour'"),
        ]:
            r = httpx.post(srv.url + "/v1/cameras", json=body)
            assert r.status_code == 400 and why in r.json()["error"], r.text
        # Rename and change a setting: the id stays.
        r = httpx.patch(
            srv.url + "/v1/cameras/hall", json={"name": "Main hall", "alert_seconds": 2}
        )
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "hall" and r.json()["name"] == "Main hall"
        r = httpx.patch(srv.url + "/v1/cameras/hall", json={"id": "other"})
        assert r.status_code == 400 and "unknown camera setting 'id'" in r.json()["error"]


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    from stream_server.shell.store import Store, StoreError

    Store(tmp_path, 30).close()
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this program's 1"):
        Store(tmp_path, 30)


def test_history_is_bounded_by_history_days(tmp_path: Path) -> None:
    from stream_server.shell.store import CameraSpec, Minute, Store

    store = Store(tmp_path, history_days=1)
    store.put_camera(CameraSpec(id="c", name="c", url="rtsp://x/y"))
    now = time.time()
    old, new = Minute(int((now - 2 * 86400) // 60)), Minute(int(now // 60))
    old.add(0.5, "real")
    new.add(0.7, "fake")
    store.add_minute("c", old)
    store.add_minute("c", new)
    store.add_status("c", "live", "", now - 2 * 86400)
    store.add_alert(
        "c",
        {"track": 1, "p_fake": 0.9, "box": [0, 0, 1, 1], "above_for_s": 3},
        "m",
        now - 2 * 86400,
    )
    assert store.prune(now) == 3
    h = store.history("c", 0, now + 60)
    assert [m["t"] for m in h["summaries"]] == [new.minute * 60]
    assert h["statuses"] == [] and h["alerts"] == []
    store.close()


def test_the_database_survives_kill_9_in_the_middle_of_writes(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A deepfake-serve process renamed as fast as it answers, then killed with SIGKILL in the
    middle of it: the file opens cleanly (integrity_check ok), every rename it acknowledged is
    kept (the last acknowledged or a later one), and a restarted service serves that name under
    the same id."""
    from tests.test_remote_use import served

    data = tmp_path / "data"
    args = ("--bundle", str(tiny_bundle), "--data-dir", str(data), "--camera-allow", "127.0.0.1")
    sent: list[str] = []
    acked: list[str] = []
    with served(*args) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        poll(lambda: _up(url), 60, every=0.2, until=bool)
        r = httpx.post(url + "/v1/cameras", json={"url": closed_port_url(), "name": "Porch"})
        assert r.status_code == 201, r.text
        stop = threading.Event()

        def rename() -> None:
            with httpx.Client(timeout=5) as c:
                i = 0
                while not stop.is_set():
                    name = f"porch {i}"
                    sent.append(name)
                    try:
                        ok = c.patch(url + "/v1/cameras/porch", json={"name": name})
                    except httpx.TransportError:
                        return
                    if ok.status_code == 200:
                        acked.append(name)
                    i += 1

        writer = threading.Thread(target=rename, daemon=True)
        writer.start()
        poll(lambda: len(acked), 30, every=0.05, until=lambda n: n >= 50)
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        stop.set()
        writer.join(10)
    assert srv.proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(data / "state.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (kept,) = db.execute("SELECT name FROM cameras WHERE id = 'porch'").fetchone()
    db.close()
    assert kept in sent[sent.index(acked[-1]) :], (kept, acked[-3:], sent[-3:])
    with served(*args) as again:
        url = f"http://127.0.0.1:{again.port}"
        poll(lambda: _up(url), 60, every=0.2, until=bool)
        cams = httpx.get(url + "/v1/cameras").json()["cameras"]
        assert [(c["id"], c["name"]) for c in cams] == [("porch", kept)]


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.rtsp
def test_a_toml_cameras_file_declares_cameras_like_the_api(
    tiny_bundle: Path, tmp_path: Path, camera_clip: Path
) -> None:
    """--cameras-file in TOML: the same keys as POST /v1/cameras; its cameras are monitored
    (scores arrive), keep their ids across restarts, cannot be changed through the API (409 that
    names the file), and go when the file no longer declares them. Bad entries are refused with
    a log line; the rest still start."""
    data = tmp_path / "data"
    cams = tmp_path / "cameras.toml"
    with RtspServer(camera_clip, free_port()) as rtsp:
        cams.write_text(
            "[[cameras]]\n"
            'name = "Loading Bay"\n'
            f'url = "{rtsp.url}"\n'
            "alert_seconds = 1.5\n\n"
            "[[cameras]]\n"
            'id = "side"\n'
            f'url = "{closed_port_url()}"\n\n'
            "[[cameras]]\n"
            'name = "bad"\n'
            'url = "http://example.invalid/"\n'
        )
        with LiveServer(bundle=tiny_bundle, data_dir=data, cameras_file=cams, **FAST) as srv:
            listed = {c["id"]: c for c in httpx.get(srv.url + "/v1/cameras").json()["cameras"]}
            assert set(listed) == {"loading-bay", "side"}, listed
            bay = listed["loading-bay"]
            assert bay["alert_seconds"] == 1.5 and bay["source"] == "file"
            poll(
                lambda: httpx.get(srv.url + "/v1/cameras/loading-bay").json()["last_score"],
                20,
                every=0.2,
                until=bool,
            )
            r = httpx.patch(srv.url + "/v1/cameras/side", json={"name": "x"})
            assert r.status_code == 409 and "--cameras-file" in r.json()["error"]
            assert httpx.delete(srv.url + "/v1/cameras/side").status_code == 409
            api = httpx.post(srv.url + "/v1/cameras", json={"url": closed_port_url(), "id": "a"})
            assert api.status_code == 201
        cams.write_text(f'[[cameras]]\nname = "Loading Bay"\nurl = "{rtsp.url}"\n')
        with LiveServer(bundle=tiny_bundle, data_dir=data, cameras_file=cams, **FAST) as srv:
            ids = [c["id"] for c in httpx.get(srv.url + "/v1/cameras").json()["cameras"]]
            assert sorted(ids) == ["a", "loading-bay"]  # 'side' left the file; 'a' is kept
            assert httpx.get(srv.url + "/v1/cameras/loading-bay").json()["alert_seconds"] is None
    bad = tmp_path / "bad.toml"
    bad.write_text("[[cameras]\nname = ")
    from stream_server.shell.store import StoreError, load_cameras_file

    with pytest.raises(StoreError, match="is not valid TOML"):
        load_cameras_file(bad)
