// The node table: sortable by any column, filtered by the selector's
// answer, virtualised (only the rows in view exist in the DOM), redrawn at
// most once per animation frame.

import { age, bar, esc, gb } from "./format.js";
import { totalVram, usedVram } from "./fleet.js";

const ROW_HEIGHT = 28;
const OVERSCAN = 8;

const num = (v) => (v != null && Number.isFinite(Number(v)) ? Number(v) : -1);
const metric = (n, key) => (n.metrics ? num(n.metrics[key]) : -1);

/** GPU use: the node's figure, else the mean of its cards'. */
function gpuPct(n) {
  const direct = metric(n, "gpu_pct");
  if (direct >= 0) return direct;
  const cards = n.metrics && Array.isArray(n.metrics.gpus) ? n.metrics.gpus.map((g) => num(g.util_pct)).filter((v) => v >= 0) : [];
  return cards.length ? cards.reduce((a, b) => a + b, 0) / cards.length : -1;
}

/** Strings in natural order (node-2 before node-10). */
const collator = new Intl.Collator(undefined, { numeric: true });

/** The columns: header, width, sort key, cell HTML. */
const COLUMNS = [
  { id: "id", title: "ID", width: "minmax(150px, 1.4fr)", key: (n) => n.id, cell: (n) => esc(n.id) },
  { id: "name", title: "Name", width: "minmax(80px, 1fr)", key: (n) => str(n.record && n.record.node_name), cell: (n) => esc(n.record && n.record.node_name) },
  { id: "role", title: "Role", width: "80px", key: (n) => str(n.record && n.record.role), cell: (n) => esc(n.record && n.record.role) },
  { id: "status", title: "Status", width: "92px", key: (n) => n.status, cell: (n) => `<span class="status s-${esc(n.status)}">${esc(n.status)}</span>` },
  { id: "heartbeat", title: "Heartbeat", width: "78px", key: (n) => -num(n.lastSeen), cell: (n, now) => `<span class="age">${age(now - n.lastSeen)}</span>` },
  { id: "cpu", title: "CPU", width: "60px", key: (n) => metric(n, "cpu_pct"), cell: (n) => bar(metric(n, "cpu_pct") < 0 ? NaN : metric(n, "cpu_pct")) },
  { id: "ram", title: "RAM", width: "60px", key: (n) => metric(n, "ram_pct"), cell: (n) => bar(metric(n, "ram_pct") < 0 ? NaN : metric(n, "ram_pct")) },
  { id: "gpu", title: "GPU", width: "60px", key: gpuPct, cell: (n) => bar(gpuPct(n) < 0 ? NaN : gpuPct(n)) },
  { id: "vram", title: "VRAM GiB", width: "90px", key: (n) => totalVram(n), cell: vramCell },
  { id: "models", title: "Models", width: "minmax(120px, 1.6fr)", key: (n) => models(n).length, cell: modelsCell },
  { id: "labels", title: "Labels", width: "minmax(120px, 1.4fr)", key: (n) => labelText(n), cell: (n) => labelsCell(n) },
];

function str(v) {
  return v == null ? "" : String(v);
}

function models(n) {
  const caps = n.record && n.record.capabilities;
  return caps && Array.isArray(caps.models) ? caps.models : [];
}

function vramCell(n) {
  const total = totalVram(n);
  if (!total) return `<span class="muted">–</span>`;
  return `${gb(usedVram(n, total))} / ${gb(total)}`;
}

function modelsCell(n) {
  const loaded = new Set(n.modelsLoaded);
  return models(n)
    .map((m) => `<span class="model${loaded.has(m) ? " loaded" : ""}" title="${loaded.has(m) ? "loaded" : "available"}">${esc(m)}</span>`)
    .join("");
}

function labelText(n) {
  const labels = (n.record && n.record.labels) || {};
  return Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(",");
}

function labelsCell(n) {
  const labels = (n.record && n.record.labels) || {};
  return Object.keys(labels)
    .sort()
    .map((k) => `<span class="label">${esc(k)}=${esc(labels[k])}</span>`)
    .join("");
}

/** Columns whose values change with every heartbeat (sorted at most once a second). */
const LIVE_COLUMNS = new Set(["heartbeat", "cpu", "ram", "gpu", "vram", "status"]);

/** The table of nodes. */
export class NodeTable {
  constructor(fleet, elements, onSelect) {
    this.fleet = fleet;
    this.el = elements; // {head, scroll, spacer, rows, foot}
    this.onSelect = onSelect;
    this.sortBy = "id";
    this.desc = false;
    this.filter = null; // Set of node ids, or null for all
    this.order = [];
    this.orderAt = -1; // fleet.version the order was computed at
    this.sortedAt = 0;
    this.selected = null;
    this.pending = false;
    // What changed since the last draw: rows are rebuilt only when one in
    // view did, the order or the window moved, or `force` (the age tick).
    this.dirty = new Set();
    this.force = true;
    this.orderSerial = 0;
    this.drawnKey = "";
    this.el.head.style.setProperty("--cols", COLUMNS.map((c) => c.width).join(" "));
    this.el.rows.style.setProperty("--cols", COLUMNS.map((c) => c.width).join(" "));
    this.el.head.innerHTML = COLUMNS.map((c) => `<span data-sort="${c.id}">${esc(c.title)}</span>`).join("");
    this.el.head.addEventListener("click", (e) => {
      const id = e.target && e.target.dataset ? e.target.dataset.sort : null;
      if (!id) return;
      this.desc = this.sortBy === id ? !this.desc : false;
      this.sortBy = id;
      this.orderAt = -1;
      this.force = true;
      this.schedule();
    });
    this.el.scroll.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.el.rows.addEventListener("click", (e) => {
      const row = e.target.closest ? e.target.closest("[data-node-id]") : null;
      if (row) {
        this.selected = row.dataset.nodeId;
        this.onSelect(this.selected);
        this.schedule();
      }
    });
    window.addEventListener("resize", () => this.schedule());
  }

  /** Notes that node `id` changed (redrawn if it is in view). */
  touch(id) {
    this.dirty.add(id);
    this.schedule();
  }

  /** Redraws every row in view on the next frame (the heartbeat ages). */
  refresh() {
    this.force = true;
    this.schedule();
  }

  /** Shows only these node ids (null: all). */
  setFilter(ids) {
    this.filter = ids;
    this.orderAt = -1;
    this.force = true;
    this.schedule();
  }

  /** Asks for a redraw on the next animation frame (many asks, one draw). */
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      const t = performance.now();
      this.draw();
      if (window.fleetDashboard) window.fleetDashboard.spent.table += performance.now() - t;
    });
  }

  /** The ids in display order (re-sorted when needed). */
  rowsInOrder(now) {
    // Re-sort when nodes come or go; when a record changes (for columns
    // only records change); at most once a second for the columns that
    // every heartbeat moves.
    const live = LIVE_COLUMNS.has(this.sortBy);
    const membershipChanged = this.orderMembership !== this.fleet.membership;
    const recordsChanged = this.orderRecords !== this.fleet.records;
    const liveChanged = this.orderAt !== this.fleet.version;
    const byId = this.sortBy === "id";
    const since = now - this.sortedAt;
    if (
      this.orderAt === -1 ||
      (membershipChanged && since > 250) ||
      (!live && !byId && recordsChanged && since > 250) ||
      (live && liveChanged && since > 1000)
    ) {
      const column = COLUMNS.find((c) => c.id === this.sortBy) || COLUMNS[0];
      const keyed = [];
      for (const node of this.fleet.nodes.values()) {
        if (this.filter && !this.filter.has(node.id)) continue;
        keyed.push([column.key(node), node.id]);
      }
      const dir = this.desc ? -1 : 1;
      const compare = (x, y) => (typeof x === "string" && typeof y === "string" ? collator.compare(x, y) : x < y ? -1 : x > y ? 1 : 0);
      keyed.sort((a, b) => dir * compare(a[0], b[0]) || collator.compare(a[1], b[1]));
      this.order = keyed.map((k) => k[1]);
      this.orderSerial++;
      this.orderAt = this.fleet.version;
      this.orderRecords = this.fleet.records;
      this.orderMembership = this.fleet.membership;
      this.sortedAt = now;
    }
    return this.order;
  }

  draw() {
    const now = Date.now();
    const order = this.rowsInOrder(now);
    for (const span of this.el.head.children) {
      span.classList.toggle("sorted", span.dataset.sort === this.sortBy);
      span.classList.toggle("desc", span.dataset.sort === this.sortBy && this.desc);
    }
    this.el.spacer.style.height = `${order.length * ROW_HEIGHT}px`;
    const top = this.el.scroll.scrollTop;
    const height = this.el.scroll.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(order.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    const key = `${first}:${last}:${this.orderSerial}:${this.selected}:${this.sortBy}:${this.desc}`;
    let changed = this.force || key !== this.drawnKey;
    for (let i = first; !changed && i < last; i++) changed = this.dirty.has(order[i]);
    this.dirty.clear();
    this.force = false;
    if (!changed) return;
    this.drawnKey = key;
    this.el.rows.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const html = [];
    for (let i = first; i < last; i++) {
      const node = this.fleet.nodes.get(order[i]);
      if (!node) continue;
      const cells = COLUMNS.map((c) => `<span>${c.cell(node, now)}</span>`).join("");
      const sel = node.id === this.selected ? " selected" : "";
      html.push(`<div class="row${sel}" data-node-id="${esc(node.id)}" data-status="${esc(node.status)}">${cells}</div>`);
    }
    this.el.rows.innerHTML = html.join("");
    const shown = this.filter ? `${order.length} of ${this.fleet.nodes.size} nodes match the selector` : `${order.length} nodes`;
    this.el.foot.textContent = shown;
  }
}
