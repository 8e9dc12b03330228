// Canvas charts: a rolling timeline of fake probability with the threshold marked.
const COLORS = { real: "#2fbf71", fake: "#e5484d", line: "#4c8dff", grid: "#2c3744", text: "#9aa4b1" };

function setup(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300;
  const h = canvas.clientHeight || 140;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

export function drawSeries(canvas, points, { threshold = 0.5, xmin = 0, xmax = 60, xlabel = "s" } = {}) {
  // points: [{x, p}] with p in 0..1 or null (gap)
  const { ctx, w, h } = setup(canvas);
  const pad = { l: 30, r: 8, t: 8, b: 18 };
  const X = (x) => pad.l + ((x - xmin) / Math.max(1e-6, xmax - xmin)) * (w - pad.l - pad.r);
  const Y = (p) => pad.t + (1 - p) * (h - pad.t - pad.b);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  for (const p of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(p));
    ctx.lineTo(w - pad.r, Y(p));
    ctx.stroke();
    ctx.fillText(`${Math.round(p * 100)}%`, 0, Y(p) + 4);
  }
  ctx.fillText(`${Math.round(xmin)}${xlabel}`, pad.l, h - 4);
  ctx.fillText(`${Math.round(xmax)}${xlabel}`, w - pad.r - 28, h - 4);
  ctx.setLineDash([5, 4]);
  ctx.strokeStyle = COLORS.fake;
  ctx.beginPath();
  ctx.moveTo(pad.l, Y(threshold));
  ctx.lineTo(w - pad.r, Y(threshold));
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.strokeStyle = COLORS.line;
  ctx.lineWidth = 2;
  ctx.beginPath();
  let drawing = false;
  for (const pt of points) {
    if (pt.p === null || pt.p === undefined) {
      drawing = false;
      continue;
    }
    if (!drawing) ctx.moveTo(X(pt.x), Y(pt.p));
    else ctx.lineTo(X(pt.x), Y(pt.p));
    drawing = true;
  }
  ctx.stroke();
  for (const pt of points) {
    if (pt.p === null || pt.p === undefined) continue;
    ctx.fillStyle = pt.p >= threshold ? COLORS.fake : COLORS.real;
    ctx.fillRect(X(pt.x) - 1.5, Y(pt.p) - 1.5, 3, 3);
  }
}

export class Timeline {
  constructor(canvas, seconds = 60) {
    this.canvas = canvas;
    this.seconds = seconds;
    this.points = [];
    this.threshold = 0.5;
  }
  clear() {
    this.points = [];
    this.draw();
  }
  push(p) {
    const now = performance.now() / 1000;
    this.points.push({ t: now, p });
    while (this.points.length && this.points[0].t < now - this.seconds) this.points.shift();
    this.draw();
  }
  draw() {
    const now = performance.now() / 1000;
    const pts = this.points.map((q) => ({ x: q.t - now + this.seconds, p: q.p }));
    drawSeries(this.canvas, pts, { threshold: this.threshold, xmin: 0, xmax: this.seconds, xlabel: "" });
    this.canvas.dataset.points = String(this.points.filter((q) => q.p !== null).length);
  }
}
