// The Runcast dashboard: @runcast/client's store rendered with plain DOM, batched per animation
// frame (only rows whose execution changed are touched), so 1,000 executions updating several
// times a second stay smooth.
//
// Configuration (query parameters, remembered in sessionStorage):
//   token    a JWT (or the login box asks for one)
//   gateway  ws-gateway base URL (default: this page's origin, as it is served by the gateway)
//   api      execution-api REST base (default: what the gateway's /config.json names, from
//            RUNCAST_DASHBOARD_API_URL; without it http://<this host>:8081/api/v1 when the page
//            comes from port 8080, otherwise <this origin>/api/v1, as behind an ingress)
//   transport auto | websocket | sse (default auto)
import {
  RuncastClient, filterExecutions, secondsUntilRetry, EXECUTION_STATUSES,
  type Execution, type ExecutionStatus, type Agent, type LogLine, type Watch,
} from "../../js/src/index.js";

const params = new URLSearchParams(location.search);
function setting(name: string, fallback: string): string {
  const value = params.get(name);
  if (value) {
    sessionStorage.setItem(`runcast.${name}`, value);
    return value;
  }
  return sessionStorage.getItem(`runcast.${name}`) ?? fallback;
}

const $ = <T extends HTMLElement = HTMLElement>(sel: string, root: ParentNode = document) => root.querySelector(sel) as T;
const el = (tag: string, cls?: string, text?: string) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

/** What the serving gateway says about its deployment (nothing when served from elsewhere). */
interface ServedConfig {
  api?: string | null;
}

async function servedConfig(): Promise<ServedConfig> {
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    return res.ok ? ((await res.json()) as ServedConfig) : {};
  } catch {
    return {};
  }
}

function start(token: string, served: ServedConfig) {
  const gateway = setting("gateway", location.origin.replace(/^http/, "ws"));
  const guessed = location.port === "8080" ? `${location.protocol}//${location.hostname}:8081/api/v1` : `${location.origin}/api/v1`;
  const api = setting("api", served.api || guessed);
  const transport = setting("transport", "auto") as "auto" | "websocket" | "sse";
  const client = new RuncastClient({ gatewayUrl: gateway, apiUrl: api, token, transport });
  (window as any).runcast = client; // for the console and the e2e tests
  $("#login").hidden = true;
  $("#app").hidden = false;

  const renderStats = { frames: 0, ms: 0, maxMs: 0 };
  (window as any).runcastRenderStats = renderStats;
  // --- batched rendering: every store change marks the frame dirty; one render per frame
  let frame = 0;
  const scheduled = new Set<() => void>();
  const schedule = (fn: () => void) => {
    scheduled.add(fn);
    if (!frame) frame = requestAnimationFrame(() => {
      frame = 0;
      const fns = [...scheduled];
      scheduled.clear();
      const t0 = performance.now();
      for (const f of fns) f();
      renderStats.frames++;
      renderStats.ms += performance.now() - t0;
      renderStats.maxMs = Math.max(renderStats.maxMs, performance.now() - t0);
    });
  };
  client.store.subscribe(() => {
    schedule(renderTable);
    schedule(renderAgents);
    schedule(renderDetail);
  });

  // --- connection indicator
  const conn = $("#conn");
  const renderConn = () => {
    const s = client.state;
    conn.dataset.status = s.status;
    let text: string;
    switch (s.status) {
      case "live": text = `Live (${s.transport})`; break;
      case "connecting": text = "Connecting…"; break;
      case "reconnecting":
        conn.dataset.attempt = String(s.attempt);
        text = `Reconnecting — attempt ${s.attempt}, next try in ${secondsUntilRetry(s)} s`;
        break;
      case "offline": text = `Offline (${s.reason})`; break;
    }
    $(".text", conn).textContent = text;
    conn.title = s.status === "reconnecting" && s.lastError ? s.lastError : "";
  };
  client.connection.onStateChange(renderConn);
  setInterval(() => client.state.status === "reconnecting" && renderConn(), 1000);
  addEventListener("online", () => client.connection.retryNow());
  renderConn();

  // --- filters
  let workflowFilter = "";
  const statusFilter = new Set<ExecutionStatus>();
  const statusBox = $("#filter-statuses");
  for (const s of EXECUTION_STATUSES) {
    const label = el("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = s;
    box.dataset.status = s;
    box.addEventListener("change", () => {
      box.checked ? statusFilter.add(s) : statusFilter.delete(s);
      orderDirty = true;
      schedule(renderTable);
    });
    label.append(box, s);
    statusBox.append(label);
  }
  let listWatch: Watch = client.watchExecutions();
  const wfInput = $<HTMLInputElement>("#filter-workflow");
  wfInput.addEventListener("change", () => {
    const next = wfInput.value.trim();
    if (next === workflowFilter) return;
    workflowFilter = next;
    // all executions stay live; the filter is applied in render
    orderDirty = true;
    schedule(renderTable);
  });
  client.watchAgents();

  // --- create form (optimistic)
  const toast = $("#toast");
  const showError = (message: string) => {
    toast.textContent = message;
    toast.hidden = false;
    setTimeout(() => (toast.hidden = true), 8000);
  };
  $("#create-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("#create-workflow");
    const workflow_id = input.value.trim();
    client.createExecution({ workflow_id, labels: { source: "dashboard" } }).catch((err) => showError(`Create failed: ${err.message}`));
  });

  // --- executions table
  const tbody = $("#executions tbody");
  const rows = new Map<string, HTMLTableRowElement>();
  let orderDirty = true;
  let shown: Execution[] = [];
  const workflows = new Set<string>();
  interface RowCells { badge: HTMLElement; bar: HTMLElement; pct: HTMLElement; step: HTMLElement; updated: HTMLElement; last: Partial<Execution> }
  const cellsOf = new WeakMap<HTMLTableRowElement, RowCells>();
  // Writes only what changed: 1,000 rows updating several times a second stay cheap.
  const rowFor = (e: Execution) => {
    let tr = rows.get(e.execution_id);
    let c = tr && cellsOf.get(tr);
    if (!tr || !c) {
      tr = document.createElement("tr");
      tr.dataset.id = e.execution_id;
      const id = el("td", "id");
      const a = document.createElement("a");
      a.textContent = e.optimistic ? "(creating…)" : e.execution_id;
      if (!e.optimistic) a.href = `#/executions/${e.execution_id}`;
      id.append(a);
      const status = el("td", "status");
      const badge = el("span", "badge");
      status.append(badge);
      const bar = el("span", "bar");
      const fill = el("i");
      bar.append(fill);
      const progress = el("td", "progress");
      const pct = el("span", "pct");
      progress.append(bar, pct);
      const step = el("td", "step");
      const updated = el("td", "updated");
      tr.append(id, el("td", "workflow", e.workflow_id), status, progress, step, updated);
      c = { badge, bar: fill, pct, step, updated, last: {} };
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
    if (last.updated_at !== e.updated_at) c.updated.textContent = e.updated_at ? new Date(e.updated_at).toLocaleTimeString() : "";
    c.last = { status: e.status, version: e.version, progress: e.progress, current_step: e.current_step, updated_at: e.updated_at };
    return tr;
  };
  let lastCount = -1;
  const OVERSCAN = 10;
  let rowHeight = 29;
  let winFrom = -1, winTo = -1, windowDirty = true;
  const scroller = $("#table-scroll");
  const topSpacer = el("tr", "spacer") as HTMLTableRowElement;
  const bottomSpacer = el("tr", "spacer") as HTMLTableRowElement;
  tbody.append(topSpacer, bottomSpacer);
  scroller.addEventListener("scroll", () => schedule(renderTable), { passive: true });
  addEventListener("resize", () => schedule(renderTable));
  function renderTable() {
    const all = client.store.getExecutions();
    const changed = client.store.takeChanged();
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
    if (orderDirty) {
      orderDirty = false;
      shown = filterExecutions(all, workflowFilter || undefined, statuses);
      for (const e of all) if (!e.optimistic && e.workflow_id && !workflows.has(e.workflow_id)) {
        workflows.add(e.workflow_id);
        const o = document.createElement("option");
        o.value = e.workflow_id;
        $("#workflows").append(o);
      }
      $("#count").textContent = `${shown.length} of ${all.length} executions`;
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
    pendingDetail = pendingDetail || changed.has(detailId ?? "");
  }

  // --- agents panel
  const agentList = $("#agents ul");
  const agentRows = new Map<string, HTMLLIElement>();
  let lastAgents: Agent[] = [];
  function renderAgents() {
    const agents = client.store.getAgents();
    if (agents === lastAgents) return;
    lastAgents = agents;
    for (const a of agents) {
      let li = agentRows.get(a.agent_id);
      if (!li) {
        li = document.createElement("li");
        li.dataset.id = a.agent_id;
        agentRows.set(a.agent_id, li);
        agentList.append(li);
      }
      if (li.dataset.version === String(a.version)) continue;
      li.dataset.version = String(a.version);
      li.dataset.status = a.status;
      const pct = (n: number) => `${Math.round(n ?? 0)}%`;
      li.innerHTML = "";
      li.append(
        el("div", "name", `${a.status === "offline" ? "○" : "●"} ${a.agent_id}`),
        el("div", "muted", `${a.status} · cpu ${pct(a.cpu_percent)} · mem ${pct(a.memory_percent)} · gpu ${pct(a.gpu_percent)} · running ${a.running_execution_ids?.length ?? 0}`),
      );
    }
  }

  // --- execution page
  let detailId: string | undefined;
  let detailWatch: Watch | undefined;
  let pendingDetail = false;
  // What the execution page shows now. The store hands out a new object only when an entity
  // changes, so comparing references skips the rebuild on the many frames where other rows
  // changed: rebuilding the approval buttons every frame would swallow a click whose mouseup
  // lands on a fresh button.
  let shownExecution: Execution | undefined;
  let shownLogs: readonly LogLine[] | undefined;
  function renderDetail() {
    if (!detailId) return;
    const e = client.store.getExecution(detailId);
    const logs = client.store.getLogs(detailId);
    if (e && e === shownExecution && logs === shownLogs) return;
    shownExecution = e;
    shownLogs = logs;
    $("#detail-title").textContent = `Execution ${detailId}`;
    const meta = $("#detail-meta");
    meta.innerHTML = "";
    if (!e) {
      meta.textContent = "Loading…";
      return;
    }
    meta.append(el("span", `badge ${e.status}`, e.status), el("span", "", ` ${e.workflow_id} · ${e.progress}% · step ${e.current_step || "—"} · version ${e.version}`));
    if (e.error) meta.append(el("div", "toast", e.error));
    meta.dataset.status = e.status;
    const steps = $("#detail-steps");
    steps.innerHTML = "";
    for (const s of e.steps) steps.append(el("li", "", `${s.name || s.step_id}: ${s.status}${s.error ? ` (${s.error})` : ""}`));
    const approvals = $("#detail-approvals");
    approvals.innerHTML = "";
    for (const a of e.approvals) {
      const li = el("li", "", `${a.approval_id}: ${a.status}${a.reason ? ` — ${a.reason}` : ""} `);
      if (a.status === "pending") {
        for (const granted of [true, false]) {
          const b = el("button", "", granted ? "Approve" : "Deny");
          b.dataset.approval = a.approval_id;
          b.addEventListener("click", () => client.resolveApproval(e.execution_id, a.approval_id, granted).catch((err) => showError(err.message)));
          li.append(b);
        }
      }
      approvals.append(li);
    }
    const pre = $("#detail-logs");
    if (pre.dataset.lines !== String(logs.length)) {
      pre.textContent = logs.map((l) => `${String(l.line_number).padStart(4)} ${l.stream === "stderr" ? "!" : " "} ${l.text}`).join("\n");
      pre.dataset.lines = String(logs.length);
      pre.scrollTop = pre.scrollHeight;
    }
  }
  for (const b of document.querySelectorAll<HTMLButtonElement>("#detail-view [data-action]")) {
    b.addEventListener("click", () => {
      if (!detailId) return;
      const action = b.dataset.action;
      const p = action === "pause" ? client.pauseExecution(detailId) : action === "resume" ? client.resumeExecution(detailId) : client.cancelExecution(detailId, "cancelled from the dashboard");
      p.catch((err) => showError(err.message));
    });
  }

  function route() {
    const m = location.hash.match(/^#\/executions\/([A-Za-z0-9_-]{1,64})$/);
    detailWatch?.stop();
    detailWatch = undefined;
    detailId = m?.[1];
    $("#list-view").hidden = !!detailId;
    $("#detail-view").hidden = !detailId;
    if (detailId) {
      $("#detail-logs").dataset.lines = "";
      shownExecution = undefined;
      detailWatch = client.watchExecution(detailId);
      renderDetail();
    }
  }
  addEventListener("hashchange", route);
  route();
  void listWatch.ready.catch((err) => showError(`Loading executions failed: ${err.message}`));
}

void servedConfig().then((served) => {
  const token = setting("token", "");
  if (token) start(token, served);
  else {
    $("#login").hidden = false;
    $("#login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $<HTMLInputElement>("#login-token").value.trim();
      sessionStorage.setItem("runcast.token", value);
      start(value, served);
    });
  }
});
