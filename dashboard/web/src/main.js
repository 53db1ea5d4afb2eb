// The fleet page. It talks to NATS over nats-server's own WebSocket
// listener, with the official NATS JavaScript packages, and writes nothing:
//   - the `nodes` KV bucket, watched (initial values, then every update);
//   - heartbeats live from node.*.events (the bucket holds checkpoints);
//   - alerts: the last hour replayed from ALERTS, then system.broadcast;
//   - the selector box, answered by the registry on registry.discover;
//   - a node's timeline, replayed from NODE_EVENTS and ALERTS.

import { credsAuthenticator, wsconnect } from "@nats-io/nats-core";
import { Kvm } from "@nats-io/kv";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { Fleet } from "./fleet.js";
import { NodeTable } from "./table.js";
import { drawSummary } from "./summary.js";
import { AlertFeed } from "./alerts.js";
import { alertEntry, drawDetail, eventEntry, foldHeartbeats } from "./detail.js";

const $ = (id) => document.getElementById(id);
const NODE_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;
const MAX_EVENT_BYTES = 64 * 1024;
const HOUR_MS = 3600 * 1000;
const decoder = new TextDecoder();

/** What tests and benchmarks read: readiness, first render, counts, errors. */
const probe = (window.fleetDashboard = {
  ready: false,
  firstRenderMs: null,
  nodes: 0,
  dropped: 0,
  error: null,
  // Milliseconds spent, by kind of work (the benchmark reads them).
  spent: { events: 0, records: 0, alerts: 0, table: 0, summary: 0 },
});

/** Runs `fn`, adding its time to `probe.spent[kind]`. */
function timed(kind, fn) {
  const t = performance.now();
  try {
    return fn();
  } finally {
    probe.spent[kind] += performance.now() - t;
  }
}

const fleet = new Fleet();
const feed = new AlertFeed($("alerts"), $("alerts-count"));
let selectedId = null;
let timeline = null;
let timelineError = null;
let nc = null;
let config = null;

const table = new NodeTable(
  fleet,
  { head: $("table-head"), scroll: $("table-scroll"), spacer: $("table-spacer"), rows: $("table-rows"), foot: $("table-foot") },
  (id) => select(id),
);

// One redraw per animation frame, whatever arrived in between; the summary
// at most four times a second.
let framePending = false;
let summaryAt = 0;
let summaryVersion = -1;
let summaryTimer = null;
function scheduleFrame() {
  if (framePending) return;
  framePending = true;
  requestAnimationFrame(() => {
    framePending = false;
    const now = performance.now();
    // The summary walks every node: at most 4 times a second, once a
    // second past 2 000 nodes.
    const every = fleet.nodes.size > 2000 ? 1000 : 250;
    if (summaryVersion !== fleet.version && now - summaryAt >= every) {
      timed("summary", () => drawSummary($("summary"), fleet));
      summaryAt = now;
      summaryVersion = fleet.version;
    } else if (summaryVersion !== fleet.version && !summaryTimer) {
      summaryTimer = setTimeout(() => {
        summaryTimer = null;
        scheduleFrame();
      }, every);
    }
    probe.nodes = fleet.nodes.size;
  });
}

fleet.listen((kind, id) => {
  table.touch(id);
  scheduleFrame();
  if (id === selectedId) scheduleDetail();
  if (kind !== "live") selectorMayHaveChanged();
});

// Heartbeat ages tick once a second (a clock, not a poll: nothing is asked).
setInterval(() => {
  table.refresh();
  if (selectedId) scheduleDetail();
}, 1000);

// --- connection -----------------------------------------------------------

function setConnection(state, text) {
  const el = $("connection");
  el.className = `conn conn-${state}`;
  el.dataset.connection = state;
  el.textContent = text;
}

function showBanner(text) {
  const el = $("banner");
  el.textContent = text;
  el.hidden = !text;
}

function fail(text) {
  probe.error = text;
  setConnection("failed", "not connected");
  showBanner(text);
  const el = $("banner");
  el.dataset.role = "connection-error";
}

async function loadConfig() {
  let cfg = {};
  try {
    const res = await fetch("/config.json", { cache: "no-store" });
    if (res.ok) cfg = await res.json();
  } catch {
    // Served without a config (a plain file server): the defaults below.
  }
  const params = new URLSearchParams(location.search);
  if (params.get("ws")) cfg.ws_url = params.get("ws");
  if (params.get("heartbeats") === "off") cfg.live_heartbeats = false;
  if (!cfg.ws_url) cfg.ws_url = `ws://${location.hostname || "127.0.0.1"}:9222`;
  cfg.names = { bucket: "nodes", alerts_stream: "ALERTS", events_stream: "NODE_EVENTS", ...(cfg.names || {}) };
  return cfg;
}

async function connect(cfg) {
  const options = {
    servers: cfg.ws_url,
    name: "fleet-dashboard",
    maxReconnectAttempts: -1,
    reconnectTimeWait: 2000,
    timeout: 5000,
  };
  if (cfg.creds) options.authenticator = credsAuthenticator(new TextEncoder().encode(cfg.creds));
  return wsconnect(options);
}

async function watchConnection() {
  for await (const s of nc.status()) {
    if (s.type === "disconnect" || s.type === "reconnecting") {
      setConnection("disconnected", "reconnecting…");
      showBanner(`Lost the connection to NATS at ${config.ws_url}; reconnecting…`);
    } else if (s.type === "reconnect") {
      setConnection("connected", `connected · ${config.ws_url}`);
      showBanner("");
    } else if (s.type === "error" && s.error) {
      showBanner(`NATS error at ${config.ws_url}: ${s.error.message || s.error}`);
    }
  }
}

// --- the nodes bucket -----------------------------------------------------

function firstRender() {
  if (probe.ready) {
    // A watch opened again: its initial values are nothing new.
    table.refresh();
    return;
  }
  requestAnimationFrame(() => {
    table.force = true;
    table.draw();
    drawSummary($("summary"), fleet);
    summaryVersion = fleet.version;
    probe.nodes = fleet.nodes.size;
    probe.firstRenderMs = performance.now();
    probe.ready = true;
    document.body.dataset.ready = "true";
  });
}

async function openBucket() {
  const kvm = new Kvm(nc);
  for (;;) {
    try {
      return await kvm.open(config.names.bucket);
    } catch (err) {
      showBanner(`Waiting for the registry: bucket ${config.names.bucket} not readable (${err.message}); retrying…`);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

async function watchNodes() {
  const kv = await openBucket();
  showBanner("");
  const status = await kv.status();
  let initial = status.values > 0;
  if (!initial) firstRender();
  const watcher = await kv.watch();
  for await (const e of watcher) {
    if (e.operation === "DEL" || e.operation === "PURGE") {
      fleet.remove(e.key);
    } else if (e.length > 0 && e.length <= 1024 * 1024) {
      let record = null;
      try {
        record = e.json();
      } catch {
        record = null;
      }
      if (record && typeof record === "object" && NODE_ID.test(e.key)) {
        timed("records", () => fleet.putRecord(e.key, record, e.revision));
      } else {
        probe.dropped++;
      }
    }
    if (initial && e.delta === 0) {
      initial = false;
      firstRender();
    }
  }
}

/** Watches the bucket; a watch that ends or fails is opened again (the
 * records it brings again are ignored by revision). */
async function keepWatchingNodes() {
  for (;;) {
    try {
      await watchNodes();
    } catch (err) {
      showBanner(`Watching the ${config.names.bucket} bucket failed (${err.message}); retrying…`);
    }
    if (nc.isClosed()) return;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// --- live heartbeats and alerts -------------------------------------------

function isJson(msg) {
  const type = msg.headers ? msg.headers.get("Content-Type") : "";
  return !type || type.startsWith("application/json");
}

// Heartbeats are queued as they arrive (the latest per node, with its
// arrival time) and applied in the next animation frame, within a time
// budget: a burst of thousands costs the socket's task only a Map insert
// each, and the page keeps drawing.
const pendingBeats = new Map();
const BEAT_BUDGET_MS = 8;
let beatsScheduled = false;

function onEvent(err, msg) {
  if (err || msg.data.length > MAX_EVENT_BYTES || !isJson(msg)) return;
  const id = msg.subject.split(".")[1];
  pendingBeats.delete(id);
  pendingBeats.set(id, [msg.data, Date.now()]);
  if (!beatsScheduled) {
    beatsScheduled = true;
    requestAnimationFrame(applyBeats);
  }
}

function applyBeats() {
  beatsScheduled = false;
  timed("events", () => {
    const deadline = performance.now() + BEAT_BUDGET_MS;
    for (const [id, [data, at]] of pendingBeats) {
      pendingBeats.delete(id);
      let event = null;
      try {
        event = JSON.parse(decoder.decode(data));
      } catch {
        event = null;
      }
      if (event && event.node_id === id && event.type === "heartbeat") fleet.heartbeat(id, event, at);
      if (performance.now() > deadline) break;
    }
  });
  if (pendingBeats.size > 0 && !beatsScheduled) {
    beatsScheduled = true;
    requestAnimationFrame(applyBeats);
  }
}

const LIFECYCLE = new Set([
  "node.registered",
  "node.online",
  "node.degraded",
  "node.offline",
  "node.maintenance",
  "node.resumed",
]);

function onAlert(alert) {
  if (!alert || typeof alert !== "object" || typeof alert.type !== "string") return;
  if (!feed.add(alert)) return;
  if (LIFECYCLE.has(alert.type) && typeof alert.node_id === "string" && typeof alert.status === "string") {
    fleet.alertStatus(alert.node_id, alert.status, alert.at);
  }
  if (alert.node_id && alert.node_id === selectedId) scheduleDetail();
}

function parseAlert(data) {
  if (data.length > MAX_EVENT_BYTES) return null;
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    return null;
  }
}

/** Every message of `stream` on `filter` since `since` (ms), oldest first. */
async function replay(stream, filter, since, onMsg) {
  const js = jetstream(nc);
  const consumer = await js.consumers.get(stream, {
    filter_subjects: [filter],
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: new Date(since).toISOString(),
  });
  const info = await consumer.info(true);
  if (info.num_pending === 0) return;
  for (;;) {
    let got = 0;
    let done = false;
    const batch = await consumer.fetch({ max_messages: 500, expires: 2000 });
    for await (const m of batch) {
      got++;
      onMsg(m);
      if (m.info.pending === 0) {
        done = true;
        batch.stop();
      }
    }
    if (done || got === 0) return;
  }
}

async function startAlerts() {
  nc.subscribe("system.broadcast", { callback: (err, msg) => !err && onAlert(parseAlert(msg.data)) });
  try {
    await replay(config.names.alerts_stream, "system.broadcast", Date.now() - HOUR_MS, (m) => onAlert(parseAlert(m.data)));
  } catch (err) {
    onAlert({ type: "dashboard.error", message: `could not replay ${config.names.alerts_stream}: ${err.message}`, at: new Date().toISOString() });
  }
}

// --- node detail ----------------------------------------------------------

let detailPending = false;
function scheduleDetail() {
  if (detailPending) return;
  detailPending = true;
  requestAnimationFrame(() => {
    detailPending = false;
    const node = selectedId ? fleet.nodes.get(selectedId) : null;
    const merged = timeline ? foldHeartbeats([...timeline, ...feed.forNode(selectedId).map(alertEntry)].sort((a, b) => a.at - b.at)) : null;
    drawDetail($("detail"), node, merged, timelineError);
  });
}

async function select(id) {
  selectedId = id;
  timeline = null;
  timelineError = null;
  scheduleDetail();
  if (!NODE_ID.test(id)) return;
  const events = [];
  let binary = 0;
  try {
    await replay(config.names.events_stream, `node.${id}.events`, Date.now() - HOUR_MS, (m) => {
      if (!isJson(m)) {
        binary++;
        return;
      }
      try {
        events.push(eventEntry(JSON.parse(decoder.decode(m.data)), m.info.timestampNanos / 1e6));
      } catch {
        // Not an event: shown by nodectl audit as dropped; nothing to draw.
      }
    });
  } catch (err) {
    timelineError = `could not replay ${config.names.events_stream}: ${err.message}`;
  }
  if (selectedId !== id) return;
  if (binary) timelineError = `${binary} protobuf events not shown (nodectl audit shows them)`;
  timeline = events;
  scheduleDetail();
}

$("detail").addEventListener("click", (e) => {
  if (e.target && e.target.dataset && e.target.dataset.action === "close") {
    selectedId = null;
    table.selected = null;
    scheduleDetail();
    table.schedule();
  }
});

// --- the selector box -----------------------------------------------------

const selectorInput = document.querySelector('input[data-role="selector"]');
let selectorTimer = null;
let selectorRun = 0;
let selectorRefreshAt = 0;

function selectorMayHaveChanged() {
  if (!selectorInput.value.trim()) return;
  const wait = Math.max(0, selectorRefreshAt + 2000 - Date.now());
  if (selectorTimer) return;
  selectorTimer = setTimeout(runSelector, wait);
}

selectorInput.addEventListener("input", () => {
  clearTimeout(selectorTimer);
  selectorTimer = setTimeout(runSelector, 250);
});

function selectorState(text, invalid) {
  $("selector-state").textContent = text;
  selectorInput.classList.toggle("invalid", Boolean(invalid));
  selectorInput.dataset.state = invalid ? "invalid" : text ? "applied" : "";
}

async function runSelector() {
  selectorTimer = null;
  selectorRefreshAt = Date.now();
  const run = ++selectorRun;
  const text = selectorInput.value.trim();
  if (!text) {
    table.setFilter(null);
    selectorState("", false);
    return;
  }
  let query;
  if (text.startsWith("{")) {
    try {
      query = JSON.parse(text);
    } catch (err) {
      selectorState(`not JSON: ${err.message}`, true);
      return;
    }
  } else {
    query = { selector: text };
  }
  if (!("status" in query)) query.status = "any";
  const paged = !("limit" in query);
  if (paged) Object.assign(query, { sort: "node_id", limit: 10000, fields: ["status"] });
  const ids = new Set();
  try {
    let cursor;
    do {
      const body = cursor ? { ...query, cursor } : query;
      const msg = await nc.request("registry.discover", JSON.stringify(body), { timeout: 5000 });
      const reply = JSON.parse(decoder.decode(msg.data));
      if (msg.headers && msg.headers.get("Nats-Service-Error-Code")) {
        throw new Error((reply.error && reply.error.message) || msg.headers.get("Nats-Service-Error"));
      }
      for (const n of reply.nodes || []) ids.add(n.node_id);
      cursor = paged ? reply.next_cursor : undefined;
    } while (cursor && run === selectorRun);
  } catch (err) {
    if (run === selectorRun) selectorState(err.message, true);
    return;
  }
  if (run !== selectorRun) return;
  table.setFilter(ids);
  selectorState(`${ids.size} match`, false);
}

// --- start ----------------------------------------------------------------

async function main() {
  config = await loadConfig();
  setConnection("connecting", `connecting · ${config.ws_url}`);
  try {
    nc = await connect(config);
  } catch (err) {
    const why = err && err.message ? err.message : String(err);
    fail(`Cannot connect to NATS at ${config.ws_url}: ${why}. Is nats-server running with its websocket listener on, and are the credentials right?`);
    return;
  }
  setConnection("connected", `connected · ${config.ws_url}`);
  watchConnection();
  nc.closed().then((err) => fail(`The connection to NATS at ${config.ws_url} closed${err ? `: ${err.message}` : ""}`));
  // Live heartbeats (the bucket holds a checkpoint a minute); `?heartbeats=off`
  // leaves the page on the checkpoints alone, for very large fleets.
  if (config.live_heartbeats !== false) nc.subscribe("node.*.events", { callback: onEvent });
  startAlerts();
  keepWatchingNodes();
}

main();
