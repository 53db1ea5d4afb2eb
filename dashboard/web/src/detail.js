// Node detail: capabilities, GPUs, services, labels, and the node's audit
// timeline (its events in NODE_EVENTS merged with its alerts, like
// `nodectl audit --node ID`).

import { age, clock, esc, gb, parseTime } from "./format.js";

function kv(rows) {
  return `<dl class="kv">${rows
    .filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`)
    .join("")}</dl>`;
}

/** Draws node `node` (a Fleet entry) with its `timeline` (null: loading). */
export function drawDetail(el, node, timeline, timelineError) {
  if (!node) {
    el.hidden = true;
    return;
  }
  const r = node.record || {};
  const caps = r.capabilities || {};
  const gpus = Array.isArray(caps.gpus) ? caps.gpus : [];
  const usage = node.metrics && Array.isArray(node.metrics.gpus) ? node.metrics.gpus : [];
  const labels = r.labels || {};
  const cordons = Array.isArray(r.gpu_cordons) ? r.gpu_cordons : [];
  const gpuRows = gpus
    .map((g, i) => {
      const u = usage.find((x) => Number(x.index) === i) || {};
      const cordon = cordons.find((c) => Number(c.index) === i);
      return `<li>#${i} ${esc(g.vendor)} ${esc(g.model)} · ${gb(Number(g.vram_gb))} GiB${
        Number.isFinite(Number(u.util_pct)) ? ` · ${Number(u.util_pct).toFixed(0)}% · ${gb(Number(u.vram_used_gb))} GiB used` : ""
      }${cordon ? ` · <b data-role="gpu-cordon">cordoned: ${esc(cordon.reason)}${cordon.by ? ` (${esc(cordon.by)})` : ""}</b>` : ""}</li>`;
    })
    .join("");
  // Why it is out of service, who said so, and until when.
  const m = r.maintenance;
  const drain =
    node.status === "maintenance" && m
      ? esc(
          [m.reason || "cordoned", m.by && `by ${m.by}`, m.since && `since ${clock(parseTime(m.since))}`, m.resume_at && `until ${clock(parseTime(m.resume_at))}`]
            .filter(Boolean)
            .join(" · "),
        )
      : "";
  const events = timeline
    ? timeline
        .slice(-200)
        .reverse()
        .map(
          (e) =>
            `<li class="src-${e.source}"><span class="muted">${esc(clock(e.at))}</span> <b>${esc(e.kind)}</b> ${esc(e.note || "")}</li>`,
        )
        .join("")
    : "";
  el.hidden = false;
  el.innerHTML = `
    <button class="close" data-action="close" title="close">×</button>
    <h2>${esc(node.id)}</h2>
    ${kv([
      ["status", `<span class="status s-${esc(node.status)}">${esc(node.status)}</span>`],
      ["maintenance", drain && `<span data-role="maintenance">${drain}</span>`],
      ["last heartbeat", `${esc(age(Date.now() - node.lastSeen))} ago`],
      ["name", esc(r.node_name)],
      ["role", esc(r.role)],
      ["host", esc([r.hostname, r.ip_address, r.local_ip].filter(Boolean).join(" · "))],
      ["agent", esc(r.agent_version)],
      [
        "profile",
        esc(
          [
            r.profile_revision !== undefined && r.profile_revision !== null && `revision ${r.profile_revision}`,
            r.profile_error && `refused: ${r.profile_error}`,
            Array.isArray(r.profile_mismatch) && r.profile_mismatch.length > 0 && `lacks ${r.profile_mismatch.join(", ")}`,
          ]
            .filter(Boolean)
            .join(" · "),
        ),
      ],
      ["registered", esc(clock(parseTime(r.registered_at)))],
      ["os", esc([caps.os, caps.os_version, caps.arch].filter(Boolean).join(" "))],
      ["cpu", esc([caps.cpu_model, caps.cpu_cores && `${caps.cpu_cores} cores`].filter(Boolean).join(" · "))],
      ["ram / disk", `${gb(Number(caps.ram_gb))} / ${gb(Number(caps.disk_gb))} GiB`],
      ["tags", esc((caps.tags || []).join(", "))],
      ["models", esc((caps.models || []).join(", "))],
      ["loaded", esc(node.modelsLoaded.join(", "))],
      ["services", esc(node.services.join(", "))],
      ["labels", esc(Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(", "))],
    ])}
    <h3>GPUs</h3>${gpuRows ? `<ul>${gpuRows}</ul>` : `<span class="muted">none</span>`}
    <h3>Timeline (last hour)</h3>
    ${timelineError ? `<div class="muted">${esc(timelineError)}</div>` : ""}
    ${timeline ? `<ol class="timeline" data-role="timeline">${events || `<li class="muted">nothing in the last hour</li>`}</ol>` : `<div class="muted">loading…</div>`}`;
}

/** One line of the timeline from a NODE_EVENTS event. */
export function eventEntry(event, at) {
  let note = "";
  if (event.type === "register") note = [event.role, event.agent_version && `agent ${event.agent_version}`].filter(Boolean).join(" · ");
  if (event.type === "deregister") note = event.reason || "";
  return { at, source: "event", kind: String(event.type || "event"), note };
}

/** One line of the timeline from an alert. */
export function alertEntry(alert) {
  return { at: parseTime(alert.at), source: "alert", kind: String(alert.type), note: String(alert.message || "") };
}

/** Folds runs of heartbeats into one line each ("heartbeat ×40"). */
export function foldHeartbeats(entries) {
  const out = [];
  for (const e of entries) {
    const prev = out[out.length - 1];
    if (e.kind === "heartbeat" && prev && prev.kind === "heartbeat" && prev.source === "event") {
      prev.count = (prev.count || 1) + 1;
      prev.at = e.at;
      prev.note = `×${prev.count}`;
    } else {
      out.push({ ...e });
    }
  }
  return out;
}
