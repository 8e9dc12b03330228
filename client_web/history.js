// A camera's kept history: its last hour of per-minute score summaries as an inline SVG chart
// (GET /v1/cameras/{id}/history), and its alerts as a list (GET /v1/alerts?camera=...).
const SVG = "http://www.w3.org/2000/svg";
const COLORS = { mean: "#4c8dff", max: "#e5484d", real: "#2fbf71", grid: "#2c3744", text: "#9aa4b1" };
const PAD = { l: 34, r: 10, t: 8, b: 20 };

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const pct = (p) => `${Math.round(p * 100)}%`;

// Draws `summaries` (the history's per-minute summaries: t, scores, p_fake_mean, p_fake_max)
// between `since` and `until` (Unix seconds) into `svg`; alerts are ticks on the time axis.
// svg.dataset.minutes tells how many minutes had a face to score.
export function drawHistory(svg, { summaries = [], alerts = [], since, until, threshold = 0.5 }) {
  svg.replaceChildren();
  // Drawn at the element's own size (text stays 11 px); redraw after a resize.
  const W = Math.max(200, Math.round(svg.clientWidth || 600));
  const H = Math.max(80, Math.round(svg.clientHeight || 160));
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const X = (t) => PAD.l + ((Math.min(until, Math.max(since, t)) - since) / Math.max(1, until - since)) * (W - PAD.l - PAD.r);
  const Y = (p) => PAD.t + (1 - p) * (H - PAD.t - PAD.b);
  for (const p of [0, 0.5, 1]) {
    svg.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: Y(p), y2: Y(p), stroke: COLORS.grid }));
    svg.append(el("text", { x: 0, y: Y(p) + 4, fill: COLORS.text, "font-size": 11 }, pct(p)));
  }
  svg.append(el("text", { x: PAD.l, y: H - 4, fill: COLORS.text, "font-size": 11 }, clock(since)));
  svg.append(el("text", { x: W - PAD.r, y: H - 4, fill: COLORS.text, "font-size": 11, "text-anchor": "end" }, clock(until)));
  svg.append(
    el("line", {
      x1: PAD.l, x2: W - PAD.r, y1: Y(threshold), y2: Y(threshold),
      stroke: COLORS.max, "stroke-dasharray": "5 4", class: "threshold",
    }),
  );
  // The mean per minute as a line, broken where a minute had no face (or no score at all).
  const scored = summaries.filter((m) => m.p_fake_mean !== null && m.p_fake_mean !== undefined);
  let path = "";
  let prev = null;
  for (const m of scored) {
    const x = X(m.t + 30);
    const y = Y(m.p_fake_mean);
    path += `${prev !== null && m.t - prev <= 60 ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)} `;
    prev = m.t;
  }
  if (path) svg.append(el("path", { d: path.trim(), fill: "none", stroke: COLORS.mean, "stroke-width": 2, class: "mean" }));
  for (const m of scored) {
    const dot = el("circle", {
      cx: X(m.t + 30), cy: Y(m.p_fake_max ?? m.p_fake_mean), r: 2.5, class: "minute",
      fill: (m.p_fake_max ?? 0) >= threshold ? COLORS.max : COLORS.real,
    });
    const partial = m.partial ? " (minute still being counted)" : "";
    dot.append(el("title", {}, `${clock(m.t)}: mean ${pct(m.p_fake_mean)}, highest ${pct(m.p_fake_max ?? m.p_fake_mean)}, ${m.scores} scores${partial}`));
    svg.append(dot);
  }
  for (const a of alerts) {
    const tick = el("line", { x1: X(a.t), x2: X(a.t), y1: PAD.t, y2: H - PAD.b, stroke: COLORS.max, "stroke-width": 1, class: "alert" });
    tick.append(el("title", {}, `Alert at ${clock(a.t)}: fake ${pct(a.p_fake)}`));
    svg.append(tick);
  }
  svg.dataset.minutes = String(scored.length);
  svg.dataset.alerts = String(alerts.length);
  const desc = scored.length
    ? `Fake probability per minute, ${clock(since)} to ${clock(until)}: ${scored.length} minutes scored, highest ${pct(Math.max(...scored.map((m) => m.p_fake_max ?? m.p_fake_mean)))}`
    : `No scores between ${clock(since)} and ${clock(until)}`;
  svg.setAttribute("aria-label", desc);
}

// Fills the list `ol` with `alerts` (newest first, as GET /v1/alerts gives them).
export function listAlerts(ol, alerts) {
  ol.replaceChildren();
  for (const a of alerts) {
    const li = document.createElement("li");
    const when = new Date(a.t * 1000).toLocaleString();
    li.textContent = `${when}: fake ${pct(a.p_fake)}, above the threshold for ${Number(a.above_for_s).toFixed(1)} s (face ${a.track})`;
    ol.append(li);
  }
  ol.dataset.count = String(alerts.length);
}
