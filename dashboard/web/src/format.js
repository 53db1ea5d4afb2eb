// Small formatting helpers shared by the views. Everything that reaches
// innerHTML passes through `esc`: node records come from the network.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text made safe for HTML (content and attribute values). */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** A duration in ms as a short age: "4s", "2m 05s", "3h 10m", "2d 4h". */
export function age(ms) {
  if (!Number.isFinite(ms)) return "–";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** A percentage bar (0–100), with the figure as its tooltip. */
export function bar(pct) {
  if (!Number.isFinite(pct)) return `<span class="muted">–</span>`;
  const v = Math.min(100, Math.max(0, pct));
  return `<span class="bar${v >= 90 ? " hot" : ""}" title="${v.toFixed(1)}%"><i style="width:${v.toFixed(1)}%"></i></span>`;
}

/** GiB with one decimal, or "–". */
export function gb(value) {
  return Number.isFinite(value) ? value.toFixed(1) : "–";
}

/** An RFC 3339 time as local HH:MM:SS (with the date when not today). */
export function clock(ms) {
  if (!Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

/** Milliseconds since the epoch of an RFC 3339 string, or NaN. */
export function parseTime(text) {
  return typeof text === "string" ? Date.parse(text) : NaN;
}
