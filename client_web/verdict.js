// The large verdict, and face boxes drawn over a video element.
export const LABELS = {
  real: "Real",
  fake: "Likely fake",
  no_face: "No face",
  warming_up: "Warming up…",
  idle: "Not started",
  connecting: "Connecting…",
};

export function renderVerdict(el, label, p) {
  el.className = `verdict ${label}`;
  el.dataset.label = label;
  const [labelEl, probEl] = el.querySelectorAll("span");
  labelEl.textContent = LABELS[label] || label;
  probEl.textContent = p === null || p === undefined ? "" : `Fake probability ${Math.round(p * 100)}%`;
}

export function drawBoxes(canvas, video, faces, threshold) {
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  canvas.dataset.boxes = String(faces.length);
  if (!vw || !vh || !faces.length) return;
  const scale = Math.min(w / vw, h / vh); // object-fit: contain
  const ox = (w - vw * scale) / 2;
  const oy = (h - vh * scale) / 2;
  ctx.lineWidth = 3;
  ctx.font = "bold 14px system-ui, sans-serif";
  for (const f of faces) {
    const [x, y, bw, bh] = f.box;
    const color = f.label === "warming_up" ? "#f5a524" : f.p_fake >= threshold ? "#e5484d" : "#2fbf71";
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    const rx = ox + x * vw * scale;
    const ry = oy + y * vh * scale;
    ctx.strokeRect(rx, ry, bw * vw * scale, bh * vh * scale);
    ctx.fillText(`${Math.round(f.p_fake * 100)}%`, rx + 4, Math.max(14, ry - 6));
  }
}
