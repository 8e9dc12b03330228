// Analyze a file: upload with progress, then the verdict and the per-second timeline.
import { authHeaders, explain } from "./api.js";
import { drawSeries } from "./chart.js";
import { renderVerdict } from "./verdict.js";

const $ = (id) => document.getElementById(id);

export function initAnalyze() {
  const drop = $("drop");
  const input = $("file-input");
  const progress = $("upload-progress");
  const statusEl = $("analyze-status");
  const errorEl = $("analyze-error");
  const result = $("analyze-result");

  const showError = (text) => {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  };

  function upload(file) {
    showError("");
    result.hidden = true;
    progress.hidden = false;
    progress.value = 0;
    statusEl.textContent = `Uploading ${file.name}…`;
    const form = new FormData();
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/analyze");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        progress.value = e.loaded / e.total;
        statusEl.textContent = `Uploading ${file.name}: ${Math.round((100 * e.loaded) / e.total)}%`;
      }
    });
    xhr.upload.addEventListener("load", () => {
      progress.removeAttribute("value");
      statusEl.textContent = "Analysing the video…";
    });
    xhr.addEventListener("error", () => done(0, null));
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {}
      done(xhr.status, body);
    });
    xhr.send(form);
  }

  function done(status, body) {
    progress.hidden = true;
    if (status !== 200 || !body) {
      statusEl.textContent = "";
      showError(status === 404 ? "File analysis is not available on this server." : explain(status, body && body.error));
      return;
    }
    statusEl.textContent = `${body.path ? body.path.split("/").pop() : "Video"}: ${body.duration_s.toFixed(1)} s, ${body.frames_analysed} frames analysed.`;
    result.hidden = false;
    renderVerdict($("file-verdict"), body.verdict, body.p_fake);
    const pts = body.timeline.map((s) => ({ x: s.second, p: s.p_fake }));
    drawSeries($("file-timeline"), pts, {
      threshold: body.threshold ?? 0.5,
      xmin: 0,
      xmax: Math.max(1, body.timeline.length - 1),
    });
  }

  input.addEventListener("change", () => input.files[0] && upload(input.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
  });
}
