// Camera monitor: the registered RTSP cameras, and one camera's video with its live scores.
import { request } from "./api.js";
import { connect } from "./rtc.js";
import { Timeline } from "./chart.js";
import { renderVerdict, drawBoxes } from "./verdict.js";

const $ = (id) => document.getElementById(id);

export function initCameras() {
  const list = $("camera-list");
  const errorEl = $("cameras-error");
  const stage = $("camera-stage");
  const video = $("camera-video");
  const verdict = $("camera-verdict");
  const timeline = new Timeline($("camera-timeline"), 60);
  let session = null;
  let threshold = 0.5;

  const showError = (text) => {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  };

  async function refresh() {
    try {
      const body = await request("/v1/cameras");
      const cameras = body.cameras || [];
      list.replaceChildren();
      if (!cameras.length) {
        const li = document.createElement("li");
        li.textContent = "No cameras are registered. Register one with POST /v1/cameras.";
        list.append(li);
      }
      for (const cam of cameras) {
        const li = document.createElement("li");
        const text = document.createElement("span");
        const last = cam.last_score && cam.last_score.p_fake != null ? `, fake ${Math.round(cam.last_score.p_fake * 100)}%` : "";
        text.textContent = `${cam.name} — ${cam.status}${last}`;
        const btn = document.createElement("button");
        btn.type = "button";
        btn.textContent = "Watch";
        btn.setAttribute("aria-label", `Watch ${cam.name}`);
        btn.addEventListener("click", () => watch(cam));
        li.append(text, btn);
        list.append(li);
      }
      showError("");
    } catch (err) {
      showError(err.status === 404 ? "Camera monitoring is not available on this server." : err.message);
    }
  }

  let watching = null; // the current watch; messages of an earlier one are ignored

  async function watch(cam) {
    stopWatching();
    const mine = {};
    watching = mine;
    stage.hidden = false;
    renderVerdict(verdict, "connecting", null);
    timeline.clear();
    try {
      const opened = await connect({
        camera: cam.id,
        onTrack: (stream) => watching === mine && (video.srcObject = stream),
        onMessage: (msg) => {
          if (msg.type !== "score" || watching !== mine) return;
          renderVerdict(verdict, msg.label, msg.p_fake);
          timeline.push(msg.label === "no_face" ? null : msg.p_fake);
          drawBoxes($("camera-overlay"), video, msg.faces, threshold);
        },
      });
      if (watching !== mine) {
        opened.close(); // stopped (or another camera chosen) while connecting
        return;
      }
      session = opened;
      threshold = session.answer.threshold ?? 0.5;
      timeline.threshold = threshold;
    } catch (err) {
      if (watching !== mine) return;
      showError(err.message);
      renderVerdict(verdict, "idle", null);
    }
  }

  function stopWatching() {
    watching = null;
    if (session) session.close();
    session = null;
    video.srcObject = null;
    drawBoxes($("camera-overlay"), video, [], threshold); // no stale face box
    timeline.clear();
    renderVerdict(verdict, "idle", null);
  }

  $("camera-stop").addEventListener("click", () => {
    stopWatching();
    stage.hidden = true;
  });
  return { refresh };
}
