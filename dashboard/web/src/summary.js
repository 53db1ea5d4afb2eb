// The fleet summary: nodes by status, region and role; GPUs and VRAM;
// models and on how many nodes each is available.

import { esc, gb } from "./format.js";
import { STATUSES, summarize } from "./fleet.js";

function list(map, limit = 50) {
  const rows = [...map.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, limit);
  if (rows.length === 0) return `<span class="muted">none</span>`;
  return `<ul>${rows.map(([k, v]) => `<li><span>${esc(k)}</span><b>${v}</b></li>`).join("")}</ul>`;
}

/** Draws the summary into `el`. */
export function drawSummary(el, fleet) {
  const s = summarize(fleet);
  const statuses = STATUSES.map(
    (st) => `<li><span class="status s-${st}">${st}</span><b data-summary="${st}">${s.byStatus[st] || 0}</b></li>`,
  ).join("");
  el.innerHTML = `
    <div class="card"><h2>Nodes</h2><div class="big" data-summary="nodes">${s.nodes}</div><ul>${statuses}</ul></div>
    <div class="card"><h2>By region</h2>${list(s.byRegion)}</div>
    <div class="card"><h2>By role</h2>${list(s.byRole)}</div>
    <div class="card"><h2>GPUs</h2><div class="big" data-summary="gpus">${s.gpus}</div>
      <div>VRAM <b data-summary="vram-free">${gb(s.vramFree)}</b> free of <b data-summary="vram-total">${gb(s.vramTotal)}</b> GiB</div></div>
    <div class="card"><h2>Models (nodes)</h2>${list(s.models)}</div>`;
}
