"""A browser session relayed by a real TURN server (issue 17): Debian's coturn on 127.0.0.1 with a
user and password, the service handing it to the page through --ice-servers (GET /v1/config),
Chromium made to use relayed candidates only (iceTransportPolicy "relay"), and scores arriving.
Loopback only."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.media import face_frames
from tests.browser import chromium, write_y4m
from tests.conftest import LiveServer
from tests.timing import scaled
from tests.turn import TurnServer

# The page's RTCPeerConnection, as made by client_web/rtc.js, with iceTransportPolicy forced to
# "relay": every candidate the browser offers is a TURN allocation, and the only path to the
# service is through coturn. The page's own configuration (iceServers from /v1/config) is kept.
FORCE_RELAY = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__rtc = [];
  window.RTCPeerConnection = function (config) {
    const given = Object.assign({}, config, { iceTransportPolicy: "relay" });
    const pc = new Original(given);
    window.__rtc.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""

# The selected candidate pair of the first connection: its local and remote candidate types.
SELECTED_PAIR = """
async () => {
  const stats = await window.__rtc[0].getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  for (const s of byId.values()) {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      const local = byId.get(pair.localCandidateId);
      const remote = byId.get(pair.remoteCandidateId);
      return { local: local.candidateType, relayProtocol: local.relayProtocol || null,
               remote: remote.candidateType, address: remote.address || remote.ip };
    }
  }
  return null;
}
"""


def frames_received(url: str) -> float:
    """deepfake_frames_received_total from the service's /metrics."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("deepfake_frames_received_total "):
            return float(line.split()[1])
    raise AssertionError("no deepfake_frames_received_total in /metrics")


@pytest.mark.browser
@pytest.mark.turn
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_browser_session_relayed_by_coturn_gets_scores(
    tiny_bundle: Path, tmp_path: Path, transport: str
) -> None:
    """coturn with long-term credentials; the service hands turn:USER:PASSWORD@... to the page;
    Chromium may only use relayed candidates, so every packet goes through coturn: the selected
    pair's local candidate is 'relay', coturn logged an allocation for the user, and scores
    arrive on the data channel."""
    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(320, 240)))
    with (
        TurnServer(tmp_path / "turn") as turn,
        LiveServer(bundle=tiny_bundle, ice_servers=(turn.ice_server(transport),)) as srv,
    ):
        config = httpx.get(srv.url + "/v1/config").json()
        assert config["ice_servers"] == [
            {"urls": [turn.url(transport)], "username": turn.user, "credential": turn.password}
        ]
        with chromium(clip) as ctx:
            page = ctx.new_page()
            page.add_init_script(FORCE_RELAY)
            page.goto(srv.url + "/")
            page.get_by_role("button", name="Start camera").click()
            page.wait_for_function(
                "Number(document.querySelector('#timeline').dataset.points) >= 3",
                timeout=scaled(20) * 1000,
            )
            assert page.evaluate("window.__rtc[0].getConfiguration().iceTransportPolicy") == (
                "relay"
            )
            pair = page.evaluate(SELECTED_PAIR)
            assert pair is not None, "no selected candidate pair"
            assert pair["local"] == "relay" and pair["relayProtocol"] == transport, pair
            assert pair["address"] == "127.0.0.1", pair  # the service's host candidate
            assert turn.allocations() >= 1, "\n".join(turn.lines[-40:])
            page.get_by_role("button", name="Stop").click()
        assert frames_received(srv.url) >= 3


@pytest.mark.browser
@pytest.mark.turn
def test_a_wrong_turn_password_relays_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    """The same with a password coturn does not know: coturn refuses the allocation (401), the
    browser has no relayed candidate, and no frame reaches the service."""
    clip = write_y4m(tmp_path / "face.y4m", face_frames(30, size=(320, 240)))
    with TurnServer(tmp_path / "turn") as turn:
        wrong = turn.ice_server().replace(turn.password, "not-the-password")
        with (
            LiveServer(bundle=tiny_bundle, ice_servers=(wrong,)) as srv,
            chromium(clip) as ctx,
        ):
            page = ctx.new_page()
            page.add_init_script(FORCE_RELAY)
            page.goto(srv.url + "/")
            page.get_by_role("button", name="Start camera").click()
            # Gathering ends without a relayed candidate; the offer carries none.
            page.wait_for_function(
                "window.__rtc.length >= 1 && window.__rtc[0].iceGatheringState === 'complete'",
                timeout=scaled(15) * 1000,
            )
            sdp = page.evaluate("window.__rtc[0].localDescription.sdp")
            assert "typ relay" not in sdp
            assert turn.allocations() == 0, "\n".join(turn.lines)
            # coturn answers 401 to the first, unauthenticated request of every client; a 401
            # to a request that names the user is a wrong password.
            assert turn.refusals() >= 1, "\n".join(turn.lines[-40:])
            assert frames_received(srv.url) == 0
