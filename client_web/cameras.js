// Camera monitor: the registered RTSP cameras (add, rename, remove), one camera's video with its
// live scores, and a camera's kept history (last hour per minute, alerts of the last 24 hours).
import { request } from "./api.js";
import { connect, reconnectDelay, serverConfig } from "./rtc.js";
import { Timeline } from "./chart.js";
import { renderVerdict, drawBoxes } from "./verdict.js";
import { drawHistory, listAlerts } from "./history.js";

const $ = (id) => document.getElementById(id);
const JSON_HEADERS = { "Content-Type": "application/json" };

// What went wrong, in the server's words where it gave any (a 4xx reason such as
// "camera id 'gate' is taken"), else api.js's plain-language explanation.
function failure(what, err) {
  if (err.status === 401 || err.status === 403 || err.status === 0 || !err.reason) return `${what}: ${err.message}`;
  return `${what}: ${err.reason}.`;
}

export function initCameras() {
  const list = $("camera-list");
  const errorEl = $("cameras-error");
  const noteEl = $("cameras-note");
  const stage = $("camera-stage");
  const video = $("camera-video");
  const verdict = $("camera-verdict");
  const form = $("camera-add");
  const details = $("camera-details");
  const timeline = new Timeline($("camera-timeline"), 60);
  let session = null;
  let threshold = 0.5;
  let cameras = [];
  let editing = null; // {id, mode: "rename" | "remove"}: the row showing an inline form
  let shown = null; // the camera whose history is shown
  let historyTimer = null;
  let recent = [];
  let drawn = null; // what the history chart shows, to redraw it at a new size

  const showError = (text) => {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  };
  const note = (text) => {
    noteEl.textContent = text;
    noteEl.hidden = !text;
  };

  function button(text, label, onClick, cls = "") {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = text;
    if (label) btn.setAttribute("aria-label", label);
    if (cls) btn.className = cls;
    btn.addEventListener("click", onClick);
    return btn;
  }

  function summary(cam) {
    const last = cam.last_score && cam.last_score.p_fake != null ? `, fake ${Math.round(cam.last_score.p_fake * 100)}%` : "";
    const error = cam.error ? ` (${cam.error})` : "";
    return `${cam.name} — ${cam.status}${error}${last}`;
  }

  function row(cam) {
    const li = document.createElement("li");
    li.dataset.camera = cam.id;
    if (editing && editing.id === cam.id && editing.mode === "rename") {
      const f = document.createElement("form");
      f.className = "inline";
      const input = document.createElement("input");
      input.value = cam.name;
      input.maxLength = 100;
      input.setAttribute("aria-label", `New name for ${cam.name}`);
      f.append(input, button("Save", `Save the name of ${cam.name}`, () => f.requestSubmit(), "primary"));
      f.append(button("Cancel", null, () => ((editing = null), render())));
      f.addEventListener("submit", (e) => {
        e.preventDefault();
        rename(cam, input.value.trim());
      });
      li.append(f);
      setTimeout(() => input.focus(), 0);
      return li;
    }
    if (editing && editing.id === cam.id && editing.mode === "remove") {
      const text = document.createElement("span");
      text.textContent = `Remove ${cam.name} and its history?`;
      const btns = document.createElement("span");
      btns.className = "buttons";
      btns.append(button("Remove", `Confirm removing ${cam.name}`, () => remove(cam), "danger"));
      btns.append(button("Cancel", null, () => ((editing = null), render())));
      li.append(text, btns);
      return li;
    }
    const text = document.createElement("span");
    text.className = "camera-summary";
    text.textContent = summary(cam);
    const btns = document.createElement("span");
    btns.className = "buttons";
    btns.append(button("Watch", `Watch ${cam.name}`, () => watch(cam)));
    btns.append(button("History", `History of ${cam.name}`, () => showHistory(cam)));
    const fromFile = cam.source === "file";
    for (const [text_, mode] of [["Rename", "rename"], ["Remove", "remove"]]) {
      const btn = button(text_, `${text_} ${cam.name}`, () => ((editing = { id: cam.id, mode }), render()));
      if (fromFile) {
        btn.disabled = true;
        btn.title = "Declared in --cameras-file: change it there";
      }
      btns.append(btn);
    }
    li.append(text, btns);
    return li;
  }

  function render() {
    list.replaceChildren();
    if (!cameras.length) {
      const li = document.createElement("li");
      li.textContent = "No cameras are registered. Add one below.";
      list.append(li);
    }
    for (const cam of cameras) list.append(row(cam));
  }

  async function refresh() {
    try {
      const body = await request("/v1/cameras");
      cameras = body.cameras || [];
      if (editing && !cameras.some((c) => c.id === editing.id)) editing = null;
      render();
      showError("");
      return true;
    } catch (err) {
      showError(err.status === 404 ? "Camera monitoring is not available on this server." : failure("The cameras could not be listed", err));
      return false;
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { url: $("camera-url").value.trim() };
    const name = $("camera-name").value.trim();
    const id = $("camera-id").value.trim();
    const seconds = $("camera-alert-seconds").value.trim();
    if (!body.url) {
      showError("Enter the camera's RTSP address, such as rtsp://192.168.1.20:554/stream.");
      $("camera-url").focus();
      return;
    }
    if (name) body.name = name;
    if (id) body.id = id;
    if (seconds) body.alert_seconds = Number(seconds);
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const cam = await request("/v1/cameras", { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(body) });
      form.reset();
      showError("");
      note(`Added ${cam.name} (id ${cam.id}).`);
      await refresh();
    } catch (err) {
      note("");
      showError(failure("The camera could not be added", err));
    } finally {
      submit.disabled = false;
    }
  });

  async function rename(cam, name) {
    if (!name) {
      showError("A camera's name cannot be empty.");
      return;
    }
    try {
      const changed = await request(`/v1/cameras/${encodeURIComponent(cam.id)}`, {
        method: "PATCH",
        headers: JSON_HEADERS,
        body: JSON.stringify({ name }),
      });
      editing = null;
      showError("");
      note(`Renamed ${cam.name} to ${changed.name}.`);
      if (shown && shown.id === cam.id) showHistory(changed);
      await refresh();
    } catch (err) {
      showError(failure(`${cam.name} could not be renamed`, err));
    }
  }

  async function remove(cam) {
    try {
      await request(`/v1/cameras/${encodeURIComponent(cam.id)}`, { method: "DELETE" });
      editing = null;
      showError("");
      note(`Removed ${cam.name}.`);
      if (watching && watching.id === cam.id) closeStage();
      if (shown && shown.id === cam.id) closeHistory();
      await refresh();
    } catch (err) {
      showError(failure(`${cam.name} could not be removed`, err));
      if (err.status === 404) await refresh();
    }
  }

  // -- history -------------------------------------------------------------------------------
  async function loadHistory() {
    if (!shown) return;
    const cam = shown;
    const until = Date.now() / 1000;
    const since = until - 3600;
    const id = encodeURIComponent(cam.id);
    try {
      const [config, history, alerts] = await Promise.all([
        serverConfig().catch(() => ({})),
        request(`/v1/cameras/${id}/history?since=${since.toFixed(0)}`),
        request(`/v1/alerts?camera=${id}&limit=50`),
      ]);
      if (shown !== cam) return;
      drawn = { summaries: history.summaries, alerts: history.alerts, since, until, threshold: config.threshold ?? 0.5 };
      drawHistory($("camera-history"), drawn);
      listAlerts($("camera-alerts"), alerts.alerts);
      $("camera-alerts-none").hidden = alerts.alerts.length > 0;
      details.dataset.loaded = String(Number(details.dataset.loaded || 0) + 1);
    } catch (err) {
      if (shown !== cam) return;
      showError(failure(`The history of ${cam.name} could not be read`, err));
    }
  }

  function showHistory(cam) {
    shown = cam;
    details.hidden = false;
    details.dataset.camera = cam.id;
    details.dataset.loaded = "0";
    drawn = null;
    $("camera-details-title").textContent = `History: ${cam.name}`;
    clearInterval(historyTimer);
    historyTimer = setInterval(() => !details.hidden && !document.hidden && loadHistory(), 30000);
    return loadHistory();
  }

  function closeHistory() {
    shown = null;
    clearInterval(historyTimer);
    historyTimer = null;
    details.hidden = true;
  }

  $("camera-history-refresh").addEventListener("click", () => loadHistory());
  window.addEventListener("resize", () => drawn && !details.hidden && drawHistory($("camera-history"), drawn));
  $("camera-history-close").addEventListener("click", closeHistory);

  // -- watching ------------------------------------------------------------------------------
  let watching = null; // the current watch; messages of an earlier one are ignored
  let retries = 0; // reconnects since the watch last went live
  let retryTimer = null;

  function resetStats() {
    recent = [];
    $("camera-stat-fps").textContent = "–";
    $("camera-stat-latency").textContent = "–";
  }

  // A watch whose connection drops (the server restarted, a cluster node that carried the
  // camera died, the network went away) is opened again on its own, with the live page's
  // back-off (1, 2, 4 ... 10 s), until it goes live again or the user stops watching.
  function reconnect(cam, mine, reason) {
    if (watching !== mine || retryTimer) return;
    if (session) session.close();
    session = null;
    retries += 1;
    const delay = reconnectDelay(retries);
    renderVerdict(verdict, "connecting", null);
    showError(`${reason} Reconnecting to ${cam.name} in ${Math.round(delay / 1000)} s…`);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      if (watching === mine) watch(cam, { again: true });
    }, delay);
  }

  async function watch(cam, { again = false } = {}) {
    stopWatching({ keepRetries: again });
    const mine = { id: cam.id };
    watching = mine;
    stage.hidden = false;
    renderVerdict(verdict, "connecting", null);
    if (!again) timeline.clear();
    showHistory(cam);
    try {
      const opened = await connect({
        camera: cam.id,
        onTrack: (stream) => watching === mine && (video.srcObject = stream),
        onState: (state) => {
          if (watching !== mine) return;
          if (state === "failed" || state === "disconnected") {
            reconnect(cam, mine, `The connection to ${cam.name} was lost.`);
          } else if (state === "connected") {
            retries = 0;
            showError("");
          }
        },
        onMessage: (msg) => {
          if (msg.type !== "score" || watching !== mine) return;
          const now = performance.now();
          recent.push(now);
          recent = recent.filter((t) => t > now - 2000);
          renderVerdict(verdict, msg.label, msg.p_fake);
          timeline.push(msg.label === "no_face" ? null : msg.p_fake);
          drawBoxes($("camera-overlay"), video, msg.faces, threshold);
          $("camera-stat-fps").textContent = `${(recent.length / 2).toFixed(1)} frames/s`;
          $("camera-stat-latency").textContent = `${Math.round(msg.latency_ms)} ms`;
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
      if (again && (err.status === 0 || err.status >= 500)) {
        // still unreachable, or not ready yet: keep trying while the user watches
        reconnect(cam, mine, failure(`${cam.name} could not be watched`, err));
        return;
      }
      showError(failure(`${cam.name} could not be watched`, err));
      renderVerdict(verdict, "idle", null);
    }
  }

  function stopWatching({ keepRetries = false } = {}) {
    watching = null;
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    if (!keepRetries) retries = 0;
    if (session) session.close();
    session = null;
    video.srcObject = null;
    drawBoxes($("camera-overlay"), video, [], threshold); // no stale face box
    if (!keepRetries) timeline.clear();
    resetStats();
    renderVerdict(verdict, "idle", null);
  }

  function closeStage() {
    stopWatching();
    stage.hidden = true;
  }

  // The list's statuses and scores stay current while the view is shown (not while a row is
  // being edited: that would drop what is typed).
  setInterval(() => {
    if (!document.hidden && !editing && !$("view-cameras").hidden) refresh();
  }, 10000);

  $("camera-stop").addEventListener("click", () => {
    closeStage();
    refresh(); // the list shows the camera's latest score
  });
  return { refresh };
}
