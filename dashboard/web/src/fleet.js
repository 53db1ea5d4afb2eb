// The fleet as the page knows it: one entry per node, from the `nodes` KV
// bucket (the registry's truth), overlaid with what arrives live (heartbeats
// on node.<id>.events, status from alerts on system.broadcast).

import { parseTime } from "./format.js";

/** The statuses a record may have, in the order the summary shows them. */
export const STATUSES = ["online", "degraded", "offline", "maintenance"];

/** One node: its latest record plus the live overlay. */
class Node {
  constructor(id) {
    this.id = id;
    this.record = null;
    this.revision = 0;
    this.status = "offline";
    this.statusAt = 0; // server time (ms) of the fact that set `status`
    this.lastSeen = NaN; // ms: the latest heartbeat, checkpoint or live
    this.metrics = null;
    this.modelsLoaded = [];
    this.services = [];
  }
}

/** Every node, and a change counter the views redraw on. */
export class Fleet {
  constructor() {
    /** @type {Map<string, Node>} */
    this.nodes = new Map();
    /** Bumped on any change; `records` on all but live heartbeats;
     * `membership` when a node comes or goes. */
    this.version = 0;
    this.records = 0;
    this.membership = 0;
    this.listeners = [];
  }

  /** Calls `fn(kind, id)` on every change ("put", "delete", "live", "status"). */
  listen(fn) {
    this.listeners.push(fn);
  }

  changed(kind, id) {
    this.version++;
    if (kind !== "live") this.records++;
    if (kind === "put-new" || kind === "delete") this.membership++;
    for (const fn of this.listeners) fn(kind, id);
  }

  /** A record from the bucket (initial value or update). */
  putRecord(id, record, revision) {
    let node = this.nodes.get(id);
    const isNew = !node;
    if (isNew) {
      node = new Node(id);
      this.nodes.set(id, node);
    }
    if (revision <= node.revision) return;
    node.record = record;
    node.revision = revision;
    const at = parseTime(record.updated_at) || 0;
    if (at >= node.statusAt) {
      node.status = String(record.status || "offline");
      node.statusAt = at;
    }
    const beat = parseTime(record.last_heartbeat);
    if (!(node.lastSeen >= beat)) node.lastSeen = beat;
    node.metrics = record.metrics || node.metrics;
    node.modelsLoaded = Array.isArray(record.models_loaded) ? record.models_loaded : [];
    node.services = Array.isArray(record.services) ? record.services : [];
    this.changed(isNew ? "put-new" : "put", id);
  }

  /** A key deleted or purged (deregistered). */
  remove(id) {
    if (this.nodes.delete(id)) this.changed("delete", id);
  }

  /** A heartbeat event seen live, received at `at` (ms). */
  heartbeat(id, event, at) {
    const node = this.nodes.get(id);
    if (!node) return;
    node.lastSeen = at;
    if (event.metrics && typeof event.metrics === "object") node.metrics = event.metrics;
    if (Array.isArray(event.models_loaded)) node.modelsLoaded = event.models_loaded;
    if (Array.isArray(event.services)) node.services = event.services;
    this.changed("live", id);
  }

  /** A lifecycle alert: the node's new status, as of the alert's time. */
  alertStatus(id, status, atText) {
    const node = this.nodes.get(id);
    if (!node || !STATUSES.includes(status)) return;
    const at = parseTime(atText) || Date.now();
    if (at < node.statusAt) return;
    node.status = status;
    node.statusAt = at;
    this.changed("status", id);
  }
}

/** The figures of the summary cards. */
export function summarize(fleet) {
  const byStatus = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  const byRegion = new Map();
  const byRole = new Map();
  const models = new Map();
  let gpus = 0;
  let vramTotal = 0;
  let vramUsed = 0;
  const bump = (map, key) => map.set(key, (map.get(key) || 0) + 1);
  for (const node of fleet.nodes.values()) {
    const r = node.record || {};
    byStatus[node.status] = (byStatus[node.status] || 0) + 1;
    bump(byRegion, (r.labels && r.labels.region) || "(none)");
    bump(byRole, r.role || "(none)");
    const caps = r.capabilities || {};
    const cards = Array.isArray(caps.gpus) ? caps.gpus : [];
    gpus += cards.length;
    const total = cards.reduce((sum, g) => sum + (Number(g.vram_gb) || 0), 0);
    vramTotal += total;
    vramUsed += usedVram(node, total);
    for (const m of Array.isArray(caps.models) ? caps.models : []) bump(models, String(m));
  }
  return { nodes: fleet.nodes.size, byStatus, byRegion, byRole, models, gpus, vramTotal, vramFree: Math.max(0, vramTotal - vramUsed) };
}

/** VRAM in use on a node's GPUs (GiB), from its latest metrics. */
export function usedVram(node, total) {
  const per = node.metrics && Array.isArray(node.metrics.gpus) ? node.metrics.gpus : [];
  const used = per.reduce((sum, g) => sum + (Number(g.vram_used_gb) || 0), 0);
  return Math.min(used, total);
}

/** A node's total VRAM (GiB). */
export function totalVram(node) {
  const cards = node.record && node.record.capabilities && Array.isArray(node.record.capabilities.gpus) ? node.record.capabilities.gpus : [];
  return cards.reduce((sum, g) => sum + (Number(g.vram_gb) || 0), 0);
}
