// The Runcast dashboard: @runcast/client's store rendered with plain DOM, batched per animation
// frame (only rows whose execution changed are touched), so 1,000 executions updating several
// times a second stay smooth.
//
// Configuration (query parameters, remembered in sessionStorage):
//   token    a JWT (or the login box asks for one)
//   gateway  ws-gateway base URL (default: this page's origin, as it is served by the gateway)
//   api      execution-api REST base (default: http://<this host>:8081/api/v1)
//   transport auto | websocket | sse (default auto)
import {
  RuncastClient, filterExecutions, secondsUntilRetry, EXECUTION_STATUSES,
  type Execution, type ExecutionStatus, type Agent, type Watch,
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

function start(token: string) {
  const gateway = setting("gateway", location.origin.replace(/^http/, "ws"));
  const api = setting("api", `${location.protocol}//${location.hostname}:8081/api/v1`);
  const transport = setting("transport", "auto") as "auto" | "websocket" | "sse";
  const client = new RuncastClient({ gatewayUrl: gateway, apiUrl: api, token, transport });
  (window as any).runcast = client; // for the console and the e2e tests
  $("#login").hidden = true;
  $("#app").hidden = false;

  // --- batched rendering: every store change marks the frame dirty; one render per frame
  let frame = 0;
  const scheduled = new Set<() => void>();
  const schedule = (fn: () => void) => {
    scheduled.add(fn);
    if (!frame) frame = requestAnimationFrame(() => {
      frame = 0;
      const fns = [...scheduled];
      scheduled.clear();
      for (const f of fns) f();
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
  const rowFor = (e: Execution) => {
    let tr = rows.get(e.execution_id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.id = e.execution_id;
      const id = el("td", "id");
      const a = document.createElement("a");
      a.textContent = e.optimistic ? "(creating…)" : e.execution_id;
      if (!e.optimistic) a.href = `#/executions/${e.execution_id}`;
      id.append(a);
      const bar = el("span", "bar");
      bar.append(el("i"));
      const progress = el("td", "progress");
      progress.append(bar, el("span", "pct"));
      tr.append(id, el("td", "workflow", e.workflow_id), el("td", "status"), progress, el("td", "step"), el("td", "updated"));
      rows.set(e.execution_id, tr);
    }
    const cells = tr.children;
    tr.className = e.optimistic ? "optimistic" : "";
    tr.dataset.status = e.status;
    tr.dataset.version = String(e.version);
    const status = cells[2]!;
    status.innerHTML = "";
    status.append(el("span", `badge ${e.status}`, e.status));
    (cells[3]!.querySelector("i") as HTMLElement).style.width = `${e.progress}%`;
    cells[3]!.querySelector(".pct")!.textContent = ` ${e.progress}%`;
    cells[4]!.textContent = e.current_step;
    cells[5]!.textContent = e.updated_at ? new Date(e.updated_at).toLocaleTimeString() : "";
    return tr;
  };
  let lastAll: Execution[] = [];
  function renderTable() {
    const all = client.store.getExecutions();
    const changed = client.store.takeChanged();
    const statuses = [...statusFilter];
    if (all !== lastAll && (orderDirty || all.length !== lastAll.length || [...changed].some((id) => !rows.has(id) || rows.get(id)!.dataset.status !== client.store.getExecution(id)?.status))) orderDirty = true;
    lastAll = all;
    if (orderDirty) {
      orderDirty = false;
      shown = filterExecutions(all, workflowFilter || undefined, statuses);
      const live = new Set(shown.map((e) => e.execution_id));
      for (const [id, tr] of rows) if (!live.has(id)) { tr.remove(); if (!client.store.getExecution(id)) rows.delete(id); }
      // reorder only where needed: walk the wanted order and move nodes that are out of place
      let cursor = tbody.firstElementChild;
      for (const e of shown) {
        const tr = changed.has(e.execution_id) || !rows.has(e.execution_id) ? rowFor(e) : rows.get(e.execution_id)!;
        if (tr !== cursor) tbody.insertBefore(tr, cursor);
        else cursor = cursor.nextElementSibling;
      }
      for (const e of all) if (!e.optimistic && e.workflow_id && !workflows.has(e.workflow_id)) {
        workflows.add(e.workflow_id);
        const o = document.createElement("option");
        o.value = e.workflow_id;
        $("#workflows").append(o);
      }
      $("#count").textContent = `${shown.length} of ${all.length} executions`;
    } else {
      for (const id of changed) {
        const e = client.store.getExecution(id);
        if (e && rows.has(id)) rowFor(e);
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
  function renderDetail() {
    if (!detailId) return;
    const e = client.store.getExecution(detailId);
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
    const logs = client.store.getLogs(detailId);
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
      detailWatch = client.watchExecution(detailId);
      renderDetail();
    }
  }
  addEventListener("hashchange", route);
  route();
  void listWatch.ready.catch((err) => showError(`Loading executions failed: ${err.message}`));
}

const token = setting("token", "");
if (token) start(token);
else {
  $("#login").hidden = false;
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $<HTMLInputElement>("#login-token").value.trim();
    sessionStorage.setItem("runcast.token", value);
    start(value);
  });
}
