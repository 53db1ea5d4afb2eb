// The alerts feed: the last hour replayed from the ALERTS stream on load,
// then every alert live from system.broadcast, newest first, each once.

import { clock, esc, parseTime } from "./format.js";

const MAX_SHOWN = 500;

/** The alerts the page has seen, and their list in the DOM. */
export class AlertFeed {
  constructor(listEl, countEl) {
    this.listEl = listEl;
    this.countEl = countEl;
    this.seen = new Set();
    /** Every alert kept (for node timelines), oldest first. */
    this.all = [];
    this.pending = [];
    this.scheduled = false;
  }

  /** Adds an alert unless its id was seen; false when it was a repeat. */
  add(alert) {
    const id = alert.id || `${alert.type}|${alert.node_id}|${alert.at}`;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    this.all.push(alert);
    this.pending.push(alert);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
    return true;
  }

  /** This node's alerts, oldest first. */
  forNode(id) {
    return this.all.filter((a) => a.node_id === id);
  }

  flush() {
    this.scheduled = false;
    // Only the newest MAX_SHOWN of a batch can be seen: build only those
    // (a replay of the last hour may bring thousands at once).
    const batch = this.pending.sort((a, b) => (parseTime(a.at) || 0) - (parseTime(b.at) || 0)).slice(-MAX_SHOWN);
    this.pending = [];
    const frag = document.createDocumentFragment();
    for (const a of batch) {
      const li = document.createElement("li");
      const type = String(a.type || "unknown");
      li.dataset.alertType = type;
      // Not data-node-id: that attribute marks node rows (the contract).
      if (a.node_id) li.dataset.alertNode = String(a.node_id);
      li.className = `a-${type.replace(/[^a-z0-9]+/gi, "-")}`;
      const what = a.node_id ? `${esc(a.node_id)} ` : "";
      li.innerHTML = `<span class="t">${esc(clock(parseTime(a.at)))}</span><b>${esc(type)}</b> ${what}<span class="muted">${esc(a.message || "")}</span>`;
      frag.prepend(li);
    }
    this.listEl.prepend(frag);
    while (this.listEl.childElementCount > MAX_SHOWN) this.listEl.lastElementChild.remove();
    this.countEl.textContent = `(${this.all.length})`;
  }
}
