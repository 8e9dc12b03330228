// The webcam live check: camera, preview, verdict, timeline, stats, reconnects.
import { request } from "./api.js";
import { cameraConstraints, connect, reconnectDelay, serverConfig } from "./rtc.js";
import { Timeline } from "./chart.js";
import { renderVerdict, drawBoxes } from "./verdict.js";

const $ = (id) => document.getElementById(id);

// Browsers give the webcam only to secure pages: https://, or http://localhost on this machine.
export const INSECURE =
  "The webcam needs a secure page: this one was opened over plain http from another machine, " +
  "so the browser offers no camera. Open it with https:// (start the server with --tls-self-signed, " +
  "or --tls-cert and --tls-key), or on the server's own machine as http://localhost.";

export function initLive() {
  const video = $("preview");
  const overlay = $("overlay");
  const select = $("camera-select");
  const startBtn = $("start");
  const stopBtn = $("stop");
  const errorEl = $("live-error");
  const verdict = $("verdict");
  const timeline = new Timeline($("timeline"), 60);
  let media = null;
  let session = null;
  let running = false;
  let retries = 0;
  let retryTimer = null;
  let connects = 0; // peer connections that reached "connected"
  let threshold = 0.5;
  let recent = [];

  const status = (text) => ($("status").textContent = text);
  const showError = (text) => {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  };

  async function listCameras() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const current = select.value;
    select.replaceChildren(new Option("Default camera", ""));
    devices.forEach((d, i) => select.append(new Option(d.label || `Camera ${i + 1}`, d.deviceId)));
    if ([...select.options].some((o) => o.value === current)) select.value = current;
  }

  function cameraError(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError")
      return "Camera permission was denied. Allow camera access for this site in your browser settings, then press Start camera again.";
    if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError")
      return "No camera was found. Connect a camera or start a virtual camera (such as OBS), then press Start camera.";
    if (name === "NotReadableError")
      return "The camera is in use by another application. Close it and press Start camera again.";
    if (!navigator.mediaDevices) return INSECURE;
    return `The camera could not be started (${name || err}).`;
  }

  function resetStats() {
    recent = [];
    $("stat-fps").textContent = "–";
    $("stat-latency").textContent = "–";
  }

  function onMessage(msg) {
    if (!running) return; // a message still in flight after Stop
    if (msg.type === "score") {
      recent.push(performance.now());
      recent = recent.filter((t) => t > performance.now() - 2000);
      renderVerdict(verdict, msg.label, msg.p_fake);
      timeline.push(msg.label === "no_face" ? null : msg.p_fake);
      drawBoxes(overlay, video, msg.faces, threshold);
      $("stat-fps").textContent = `${(recent.length / 2).toFixed(1)} frames/s`;
      $("stat-latency").textContent = `${Math.round(msg.latency_ms)} ms`;
      $("stat-model").textContent = msg.model;
      status("live");
    } else if (msg.type === "error") {
      showError(`The server could not analyse a frame: ${msg.detail}`);
    } else if (msg.type === "connected") {
      status("connected");
    }
  }

  function onState(state) {
    if (!running) return;
    if (state === "failed" || state === "disconnected" || state === "closed") {
      const ended = session && session.answer;
      scheduleReconnect();
      if (ended) explainEnd(ended, connects);
    } else if (state === "connected") {
      connects += 1;
      retries = 0;
      showError("");
    }
  }

  // With --ray-address a session runs on a cluster node (with --ingest-workers in a worker
  // process), and when that node (or process) dies its data channel dies with it: the server
  // then tells the session's `error` message on GET /v1/sessions/{id}, waited for here while the
  // page reconnects. Shown unless a new connection has been made since.
  async function explainEnd(answer, connectsThen) {
    if ((answer.node === undefined && answer.worker === undefined) || !answer.stream) return;
    let state;
    try {
      state = await request(`/v1/sessions/${encodeURIComponent(answer.stream)}?wait=30`);
    } catch {
      return; // the server is unreachable or has forgotten it: the reconnect says what it can
    }
    const msg = state && state.state === "ended" ? state.message : null;
    if (!msg || msg.type !== "error" || !running || connects !== connectsThen) return;
    showError(`Connection lost: ${msg.detail}. Reconnecting…`);
  }

  function scheduleReconnect(reason = "Connection lost.") {
    if (retryTimer || !running) return;
    if (session) session.close();
    session = null;
    retries += 1;
    const delay = reconnectDelay(retries);
    status("reconnecting");
    showError(`${reason} Reconnecting in ${Math.round(delay / 1000)} s…`);
    retryTimer = setTimeout(async () => {
      retryTimer = null;
      await openSession();
    }, delay);
  }

  async function openSession() {
    status("connecting");
    try {
      session = await connect({ stream: media, onMessage, onState });
      threshold = session.answer.threshold ?? 0.5;
      timeline.threshold = threshold;
      $("stat-model").textContent = session.answer.model;
      showError("");
      retries = 0;
    } catch (err) {
      session = null;
      if (err.status === 0 || err.status === 503) {
        scheduleReconnect(err.message);
      } else {
        stop();
        showError(err.message);
      }
    }
  }

  async function start() {
    showError("");
    startBtn.disabled = true;
    renderVerdict(verdict, "connecting", null);
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("no mediaDevices");
      // A modest capture, as the server asks (an unreachable server: the camera's defaults).
      const config = await serverConfig().catch(() => ({}));
      const constraints = cameraConstraints(config.capture, select.value);
      media = await navigator.mediaDevices.getUserMedia({ video: constraints, audio: false });
    } catch (err) {
      showError(cameraError(err));
      renderVerdict(verdict, "idle", null);
      startBtn.disabled = false;
      status("idle");
      return;
    }
    video.srcObject = media;
    await listCameras();
    running = true;
    stopBtn.disabled = false;
    timeline.clear();
    await openSession();
  }

  function stop() {
    running = false;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (session) session.close();
    session = null;
    if (media) media.getTracks().forEach((t) => t.stop());
    media = null;
    video.srcObject = null;
    drawBoxes(overlay, video, [], threshold);
    renderVerdict(verdict, "idle", null);
    resetStats();
    status("idle");
    startBtn.disabled = false;
    stopBtn.disabled = true;
  }

  startBtn.addEventListener("click", start);
  stopBtn.addEventListener("click", stop);
  select.addEventListener("change", () => {
    if (running) {
      stop();
      start();
    }
  });
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener)
    navigator.mediaDevices.addEventListener("devicechange", listCameras);
  listCameras().catch(() => {});
  if (!window.isSecureContext || !navigator.mediaDevices) showError(INSECURE);
  renderVerdict(verdict, "idle", null);
  timeline.draw();
  window.addEventListener("resize", () => timeline.draw());
}
