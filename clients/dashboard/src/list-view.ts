// The list of executions: the create form, the search and status filters (kept in the URL,
// `#/?q=…&status=…`), per-status counts, and a windowed table whose rows are written only where
// their execution changed (1,000 executions updating several times a second stay smooth).
import { EXECUTION_STATUSES, type Execution, type ExecutionStatus } from "@runcast/client";
import type { App } from "./app.js";
import { $, el } from "./dom.js";
import { ago, duration, labelChips, shortId } from "./format.js";

export interface ListView {
  /** Brings the table up to date with the store (scheduled on every store change). */
  renderTable(): void;
  /** The cells that depend on the clock, in the rows on screen. */
  renderClock(now: number): void;
  /** `#/` (+ filters): reads the filters from the hash; false when it is not the list's. */
  readFilters(hash: string): boolean;
  filtersChanged(): void;
  /** The list is shown again: lay the window out anew. */
  shown(): void;
  /** The REST load is in the store: an empty list now says "no executions yet". */
  loaded(): void;
}

export function createListView(app: App, agents: { executionsChanged(any: boolean): void }): ListView {
  const { client, route, schedule, onFailure, showError, copyButton } = app;

  // --- filters: a substring search (workflow or id) and statuses, kept in the URL (`#/?q=…&status=…`)
  let search = "";
  const statusFilter = new Set<ExecutionStatus>();
  const statusLabels = new Map<ExecutionStatus, { label: HTMLElement; n: HTMLElement; box: HTMLInputElement }>();
  const statusBox = $("#filter-statuses");
  for (const s of EXECUTION_STATUSES) {
    const label = el("label");
    label.dataset.status = s;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = s;
    box.dataset.status = s;
    box.addEventListener("change", () => {
      box.checked ? statusFilter.add(s) : statusFilter.delete(s);
      filtersChanged();
    });
    const n = el("span", "n", "0");
    label.append(box, ` ${s} `, n);
    statusBox.append(label);
    statusLabels.set(s, { label, n, box });
  }
  const wfInput = $<HTMLInputElement>("#filter-workflow");
  /** The list's address: `#/` plus the filters. */
  const listHash = () => {
    const q = new URLSearchParams();
    if (search) q.set("q", search);
    if (statusFilter.size) q.set("status", EXECUTION_STATUSES.filter((s) => statusFilter.has(s)).join(","));
    return q.size ? `#/?${q}` : "#/";
  };
  const readFilters = (hash: string) => {
    const m = hash.match(/^#\/(?:\?(.*))?$/);
    if (!m) return false;
    const q = new URLSearchParams(m[1] ?? "");
    search = (q.get("q") ?? "").trim();
    statusFilter.clear();
    for (const s of (q.get("status") ?? "").split(",")) if ((EXECUTION_STATUSES as readonly string[]).includes(s)) statusFilter.add(s as ExecutionStatus);
    wfInput.value = search;
    for (const [s, { box }] of statusLabels) box.checked = statusFilter.has(s);
    return true;
  };
  const filtersChanged = () => {
    $("#clear-filters").hidden = !search && !statusFilter.size;
    // the ways back to the list keep the filters
    for (const a of document.querySelectorAll<HTMLAnchorElement>('#back, #nav a[data-view="list"]')) a.setAttribute("href", listHash());
    if (!route.detailId && !route.agentsView) {
      const next = listHash();
      if (location.hash !== next && !(next === "#/" && location.hash === "")) history.replaceState(history.state, "", `${location.pathname}${location.search}${next}`);
    }
    orderDirty = true;
    schedule(renderTable);
  };
  const onSearch = () => {
    const next = wfInput.value.trim();
    if (next === search) return;
    search = next;
    filtersChanged();
  };
  wfInput.addEventListener("input", onSearch);
  wfInput.addEventListener("change", onSearch);
  const clearFilters = () => {
    search = "";
    wfInput.value = "";
    statusFilter.clear();
    for (const { box } of statusLabels.values()) box.checked = false;
    filtersChanged();
  };
  $("#clear-filters").addEventListener("click", clearFilters);
  $("#empty-clear").addEventListener("click", clearFilters);
  const matchesSearch = (e: Execution) => {
    if (!search) return true;
    const needle = search.toLowerCase();
    return e.workflow_id.toLowerCase().includes(needle) || (!e.optimistic && e.execution_id.toLowerCase().includes(needle));
  };

  // --- create form (optimistic)
  $("#create-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("#create-workflow");
    const workflow_id = input.value.trim();
    client.createExecution({ workflow_id, labels: { source: "dashboard" } }).catch(onFailure((err) => showError(`Create failed: ${err.message}`)));
  });

  // --- executions table
  const tbody = $("#executions tbody");
  const rows = new Map<string, HTMLTableRowElement>();
  let orderDirty = true;
  let shown: Execution[] = [];
  const workflows = new Set<string>();
  interface RowCells {
    badge: HTMLElement; bar: HTMLElement; pct: HTMLElement; step: HTMLElement; agent: HTMLElement; started: HTMLElement;
    duration: HTMLElement; updated: HTMLElement; labels: HTMLElement; last: Partial<Execution>;
  }
  const cellsOf = new WeakMap<HTMLTableRowElement, RowCells>();
  const td = (cls: string, label?: string) => {
    const c = el("td", cls);
    if (label) c.dataset.label = label;
    return c;
  };
  // Writes only what changed: 1,000 rows updating several times a second stay cheap.
  const rowFor = (e: Execution) => {
    let tr = rows.get(e.execution_id);
    let c = tr && cellsOf.get(tr);
    if (!tr || !c) {
      tr = document.createElement("tr");
      tr.dataset.id = e.execution_id;
      const id = td("id");
      const a = document.createElement("a");
      a.textContent = e.optimistic ? "(creating…)" : shortId(e.execution_id);
      if (!e.optimistic) {
        a.href = `#/executions/${e.execution_id}`;
        a.title = e.execution_id;
        id.append(a, copyButton(e.execution_id));
      } else id.append(a);
      const status = td("status");
      const badge = el("span", "badge");
      status.append(badge);
      const bar = el("span", "bar");
      const fill = el("i");
      bar.append(fill);
      const progress = td("progress");
      const pct = el("span", "pct");
      progress.append(bar, pct);
      const step = td("step", "step");
      const agent = td("agent", "agent");
      const started = td("started", "started");
      const duration = td("duration");
      const updated = td("updated", "updated");
      const labels = td("labels");
      tr.append(id, el("td", "workflow", e.workflow_id), status, progress, step, agent, started, duration, updated, labels);
      c = { badge, bar: fill, pct, step, agent, started, duration, updated, labels, last: {} };
      cellsOf.set(tr, c);
      rows.set(e.execution_id, tr);
      if (e.optimistic) tr.className = "optimistic";
    }
    const last = c.last;
    if (!e.optimistic && tr.className) tr.className = "";
    if (last.status !== e.status) {
      tr.dataset.status = e.status;
      c.badge.className = `badge ${e.status}`;
      c.badge.textContent = e.status;
    }
    if (last.version !== e.version) tr.dataset.version = String(e.version);
    if (last.progress !== e.progress) {
      c.bar.style.width = `${e.progress}%`;
      c.pct.textContent = ` ${e.progress}%`;
    }
    if (last.current_step !== e.current_step) c.step.textContent = e.current_step;
    if (last.agent_id !== e.agent_id) {
      c.agent.textContent = e.agent_id || "—";
      c.agent.title = e.agent_id ?? "";
    }
    if (last.labels !== e.labels) {
      c.labels.textContent = "";
      c.labels.append(...labelChips(e.labels));
      c.labels.title = Object.entries(e.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(", ");
    }
    if (last.updated_at !== e.updated_at || last.started_at !== e.started_at || last.finished_at !== e.finished_at || last.created_at !== e.created_at) {
      c.started.title = e.started_at ? new Date(e.started_at).toLocaleString() : e.created_at ? `created ${new Date(e.created_at).toLocaleString()}` : "";
      c.updated.title = e.updated_at ? new Date(e.updated_at).toLocaleString() : "";
      writeTimes(e, c, Date.now());
    }
    c.last = { status: e.status, version: e.version, progress: e.progress, current_step: e.current_step, updated_at: e.updated_at, started_at: e.started_at, finished_at: e.finished_at, created_at: e.created_at, agent_id: e.agent_id, labels: e.labels };
    return tr;
  };
  /** The cells that depend on the clock: "3 s ago", a running execution's duration. */
  function writeTimes(e: Execution, c: RowCells, now: number) {
    const started = e.started_at ? ago(e.started_at, now) : "—";
    if (c.started.textContent !== started) c.started.textContent = started;
    const d = e.started_at ? duration(e.started_at, e.finished_at, now) : "—";
    if (c.duration.textContent !== d) c.duration.textContent = d;
    const u = e.updated_at ? ago(e.updated_at, now) : "";
    if (c.updated.textContent !== u) c.updated.textContent = u;
  }
  let lastCount = -1;
  const OVERSCAN = 10;
  let rowHeight = 29;
  let winFrom = -1, winTo = -1, windowDirty = true;
  const scroller = $("#table-scroll");
  const topSpacer = el("tr", "spacer") as HTMLTableRowElement;
  const bottomSpacer = el("tr", "spacer") as HTMLTableRowElement;
  tbody.append(topSpacer, bottomSpacer);
  scroller.addEventListener("scroll", () => schedule(renderTable), { passive: true });
  addEventListener("resize", () => {
    windowDirty = true;
    schedule(renderTable);
  });
  const counts = new Map<ExecutionStatus, number>();
  function renderTable() {
    const all = client.store.getExecutions();
    const changed = client.store.takeChanged();
    agents.executionsChanged(changed.size > 0);
    const statuses = [...statusFilter];
    // The order (newest first) only changes when executions come or go; membership under a
    // status filter also when a status changes.
    if (!orderDirty && all.length !== lastCount) orderDirty = true;
    if (!orderDirty) {
      for (const id of changed) {
        const tr = rows.get(id);
        const e = client.store.getExecution(id);
        if (!tr || !e || (statuses.length && tr.dataset.status !== e.status) || !!e.optimistic !== tr.classList.contains("optimistic")) {
          orderDirty = true;
          break;
        }
      }
    }
    lastCount = all.length;
    if (orderDirty || changed.size) {
      // per-status counts of what the search matches (one pass; cheap next to the DOM)
      counts.clear();
      let matching = 0;
      for (const e of all) {
        if (e.optimistic || !matchesSearch(e)) continue;
        matching++;
        counts.set(e.status, (counts.get(e.status) ?? 0) + 1);
      }
      for (const [s, { label, n }] of statusLabels) {
        const v = String(counts.get(s) ?? 0);
        if (n.textContent !== v) {
          n.textContent = v;
          label.dataset.count = v;
        }
      }
      statusBox.dataset.matching = String(matching);
    }
    if (orderDirty) {
      orderDirty = false;
      shown = all.filter((e) => matchesSearch(e) && (!statuses.length || statuses.includes(e.status)));
      for (const e of all) if (!e.optimistic && e.workflow_id && !workflows.has(e.workflow_id)) {
        workflows.add(e.workflow_id);
        const o = document.createElement("option");
        o.value = e.workflow_id;
        $("#workflows").append(o);
      }
      $("#count").textContent = `${shown.length} of ${all.length} executions`;
      renderEmpty(all.length);
      for (const id of rows.keys()) if (!client.store.getExecution(id)) rows.delete(id);
      windowDirty = true;
    }
    // Windowed rendering: only the rows in view (plus some overscan) are in the DOM; spacer rows
    // keep the scroll height. Rows entering the window are brought up to date as they attach.
    const top = scroller.scrollTop;
    const height = scroller.clientHeight || 800;
    const from = Math.max(0, Math.floor(top / rowHeight) - OVERSCAN);
    const to = Math.min(shown.length, Math.ceil((top + height) / rowHeight) + OVERSCAN);
    if (windowDirty || from !== winFrom || to !== winTo) {
      windowDirty = false;
      winFrom = from;
      winTo = to;
      topSpacer.style.height = `${from * rowHeight}px`;
      bottomSpacer.style.height = `${(shown.length - to) * rowHeight}px`;
      const wanted = shown.slice(from, to);
      const keep = new Set(wanted.map((e) => e.execution_id));
      for (const tr of [...tbody.children] as HTMLTableRowElement[]) {
        if (tr !== topSpacer && tr !== bottomSpacer && !keep.has(tr.dataset.id!)) tr.remove();
      }
      let cursor = topSpacer.nextElementSibling;
      for (const e of wanted) {
        const attached = rows.get(e.execution_id)?.isConnected;
        const tr = attached && !changed.has(e.execution_id) ? rows.get(e.execution_id)! : rowFor(e);
        if (tr !== cursor) tbody.insertBefore(tr, cursor);
        else cursor = cursor.nextElementSibling;
      }
      const first = topSpacer.nextElementSibling as HTMLElement | null;
      if (first && first !== bottomSpacer) {
        const h = first.getBoundingClientRect().height;
        if (h > 0 && Math.abs(h - rowHeight) > 0.5) { rowHeight = h; windowDirty = true; schedule(renderTable); }
      }
    } else {
      for (const id of changed) {
        const tr = rows.get(id);
        const e = client.store.getExecution(id);
        if (e && tr?.isConnected) rowFor(e);
      }
    }
  }
  // a row (a card on a phone) opens its execution wherever it is tapped, not only on the id
  tbody.addEventListener("click", (ev) => {
    const target = ev.target as HTMLElement;
    if (target.closest("a, button")) return;
    const tr = target.closest<HTMLTableRowElement>("tr[data-id]");
    if (tr && !tr.classList.contains("optimistic") && !getSelection()?.toString()) location.hash = `#/executions/${tr.dataset.id}`;
  });
  const emptyBox = $("#empty");
  function renderEmpty(total: number) {
    const empty = shown.length === 0;
    emptyBox.hidden = !empty;
    $("#executions thead").hidden = empty;
    if (!empty) return;
    const filtered = !!search || statusFilter.size > 0;
    const what = [search ? `“${search}”` : "", statusFilter.size ? `status ${[...statusFilter].join(" or ")}` : ""].filter(Boolean).join(" with ");
    $("#empty-text").textContent = filtered
      ? `No executions match ${what} (${total} in all).`
      : listLoaded ? "No executions yet: create one above, or start a worker (runcast simulate)." : "Loading executions…";
    $("#empty-clear").hidden = !filtered;
  }
  let listLoaded = false;

  function renderClock(now: number) {
    for (const tr of tbody.children as HTMLCollectionOf<HTMLTableRowElement>) {
      const id = tr.dataset.id;
      const c = id && cellsOf.get(tr);
      const e = id ? client.store.getExecution(id) : undefined;
      if (c && e) writeTimes(e, c, now);
    }
  }

  return {
    renderTable,
    renderClock,
    readFilters,
    filtersChanged,
    shown: () => {
      windowDirty = true;
      schedule(renderTable);
    },
    loaded: () => {
      listLoaded = true;
      orderDirty = true;
      schedule(renderTable);
    },
  };
}
