// One execution's page (`#/executions/{id}`): its state, facts and actions, approvals, a step
// timeline, input and labels, its events (pages of GET /events, then live) and its logs.
import { TERMINAL_STATUSES, type Execution, type LogLine, type RuncastEvent, type Watch } from "@runcast/client";
import type { App } from "./app.js";
import { $, el } from "./dom.js";
import { ago, at, clock, duration, formatMs, summarize } from "./format.js";
import { setting } from "./settings.js";

export interface DetailView {
  /** Brings the page up to date with the store (scheduled on every store change). */
  renderDetail(): void;
  /** Relative times, a running timeline and the approvals' countdowns. */
  renderClock(now: number): void;
  /** Shows execution `id` (`route.detailId`): watches it, pages its events in. */
  open(id: string): void;
  /** Stops watching the execution shown. */
  close(): void;
}

export function createDetailView(app: App): DetailView {
  const { client, route, onFailure, showError, copyButton } = app;

  // --- execution page
  let detailWatch: Watch | undefined;
  // What the execution page shows now. The store hands out a new object only when an entity
  // changes, so comparing references skips the rebuild on the many frames where other rows
  // changed: rebuilding the approval buttons every frame would swallow a click whose mouseup
  // lands on a fresh button.
  let shownExecution: Execution | undefined;
  let shownLogs: readonly LogLine[] | undefined;
  function renderDetail() {
    if (!route.detailId) return;
    const e = client.store.getExecution(route.detailId);
    const logs = client.store.getLogs(route.detailId);
    if (e && e === shownExecution && logs === shownLogs) return;
    const executionChanged = e !== shownExecution;
    shownExecution = e;
    shownLogs = logs;
    $("#detail-title").textContent = `Execution ${route.detailId}`;
    $("#detail-title").append(copyButton(route.detailId));
    const meta = $("#detail-meta");
    if (executionChanged) {
      meta.innerHTML = "";
      renderActions(e);
    }
    if (!e) {
      meta.textContent = "Loading…";
      return;
    }
    if (executionChanged) {
      meta.append(el("span", `badge ${e.status}`, e.status), el("span", "", ` ${e.workflow_id} · ${e.progress}% · step ${e.current_step || "—"} · version ${e.version}`));
      if (e.status_message) meta.append(el("div", "muted", e.status_message));
      if (e.error) meta.append(el("div", "toast", e.error));
      meta.dataset.status = e.status;
      renderFacts(e, Date.now());
      renderApprovals(e);
      renderTimeline(e, Date.now());
      const input = $("#detail-input");
      const text = e.input === undefined || e.input === null || (typeof e.input === "object" && !Object.keys(e.input as object).length) ? "(none)" : JSON.stringify(e.input, null, 2);
      if (input.textContent !== text) input.textContent = text;
      const labels = $("#detail-labels");
      const labelText = JSON.stringify(e.labels ?? {});
      if (labels.dataset.labels !== labelText) {
        labels.dataset.labels = labelText;
        labels.innerHTML = "";
        const entries = Object.entries(e.labels ?? {});
        if (!entries.length) labels.append(el("li", "muted", "(none)"));
        for (const [k, v] of entries) {
          const li = el("li");
          li.append(el("span", `chip${k === "trigger" || k === "source" ? " trigger" : ""}`, `${k}=${v}`));
          labels.append(li);
        }
      }
    }
    const pre = $("#detail-logs");
    if (pre.dataset.lines !== String(logs.length)) {
      pre.textContent = logs.length
        ? logs.map((l) => `${String(l.line_number).padStart(4)} ${l.stream === "stderr" ? "!" : " "} ${l.text}`).join("\n")
        : "(no log lines yet)";
      pre.dataset.lines = String(logs.length);
      pre.scrollTop = pre.scrollHeight;
    }
  }
  function renderFacts(e: Execution, now: number) {
    const facts: [string, string, string?][] = [
      ["workflow", e.workflow_id],
      ["agent", e.agent_id || "—"],
      ["created", at(e.created_at, now), e.created_at],
      ["started", at(e.started_at, now), e.started_at],
      ["finished", at(e.finished_at, now), e.finished_at],
      ["duration", e.started_at ? duration(e.started_at, e.finished_at, now) : "—"],
      ["updated", e.updated_at ? ago(e.updated_at, now) : "—", e.updated_at],
    ];
    if (e.heartbeat_timeout_seconds) facts.push(["heartbeat timeout", `${e.heartbeat_timeout_seconds} s`]);
    const dl = $("#detail-facts");
    const key = JSON.stringify(facts);
    if (dl.dataset.key === key) return;
    dl.dataset.key = key;
    dl.innerHTML = "";
    for (const [name, value, iso] of facts) {
      const div = el("div");
      div.dataset.fact = name;
      const dd = el("dd", "", value);
      if (iso) dd.title = new Date(iso).toLocaleString();
      if (name === "agent" && e.agent_id) {
        dd.textContent = "";
        const a = document.createElement("a");
        a.href = "#/agents";
        a.textContent = e.agent_id;
        dd.append(a);
      }
      div.append(el("dt", "", name), dd);
      dl.append(div);
    }
  }
  /** Pause only when running, Resume only when paused, Cancel only when not terminal. */
  function renderActions(e: Execution | undefined) {
    const allowed: Record<string, [boolean, string]> = {
      pause: [e?.status === "running", "only a running execution can be paused"],
      resume: [e?.status === "paused", "only a paused execution can be resumed"],
      cancel: [!!e && !TERMINAL_STATUSES.includes(e.status) && !e.optimistic, "a finished execution cannot be cancelled"],
    };
    for (const b of document.querySelectorAll<HTMLButtonElement>("#detail-view [data-action]")) {
      const [ok, why] = allowed[b.dataset.action!]!;
      b.disabled = !ok;
      b.title = ok ? "" : e ? `${why} (it is ${e.status})` : "loading…";
    }
  }
  function renderApprovals(e: Execution) {
    const approvals = $("#detail-approvals");
    approvals.innerHTML = "";
    if (!e.approvals.length) approvals.append(el("li", "muted", "(none)"));
    for (const a of e.approvals) {
      const li = el("li", "", `${a.approval_id}: ${a.status}${a.reason ? ` — ${a.reason}` : ""} `);
      li.dataset.approval = a.approval_id;
      if (a.status === "pending") {
        if (a.deadline) {
          const c = el("span", "countdown");
          c.dataset.deadline = a.deadline;
          c.title = `deadline ${new Date(a.deadline).toLocaleString()}`;
          li.append(c);
        }
        for (const granted of [true, false]) {
          const b = el("button", "", granted ? "Approve" : "Deny");
          b.dataset.approval = a.approval_id;
          b.addEventListener("click", () => client.resolveApproval(e.execution_id, a.approval_id, granted).catch(onFailure((err) => showError(err.message))));
          li.append(b);
        }
      }
      approvals.append(li);
    }
    renderCountdowns(Date.now());
  }
  /** "expires in 2:31" on pending approvals with a deadline; only the countdown text changes. */
  function renderCountdowns(now: number) {
    for (const c of document.querySelectorAll<HTMLElement>("#detail-approvals .countdown")) {
      const left = Date.parse(c.dataset.deadline!) - now;
      const text = left > 0 ? `expires in ${clock(left)}` : "deadline passed";
      if (c.textContent !== text) c.textContent = text;
      c.classList.toggle("urgent", left < 30000);
    }
  }
  /** Steps as bars on one time axis: from the execution's start (or its first step's) to its end
   * (or now, while it runs); a step without `started_at` has no bar. */
  function renderTimeline(e: Execution, now: number) {
    const steps = $("#detail-steps");
    const t = (s?: string) => (s ? Date.parse(s) : NaN);
    const starts = [t(e.started_at), ...e.steps.map((s) => t(s.started_at))].filter(Number.isFinite);
    const ends = [t(e.finished_at), ...e.steps.map((s) => t(s.finished_at))].filter(Number.isFinite);
    const running = !TERMINAL_STATUSES.includes(e.status);
    const t0 = starts.length ? Math.min(...starts) : now;
    const t1 = Math.max(t0 + 1000, running ? now : ends.length ? Math.max(...ends) : now, ...ends);
    const span = t1 - t0;
    steps.innerHTML = "";
    steps.dataset.running = String(running && e.steps.some((s) => s.status === "running"));
    if (!e.steps.length) steps.append(el("li", "muted empty", "(no steps reported yet)"));
    for (const s of e.steps) {
      const li = el("li");
      li.dataset.step = s.step_id;
      li.dataset.status = s.status;
      // The label is the li's own text (`build: running`, the grid's first cell), so the item
      // reads as one phrase; a long one runs under the track, which covers it (full text on hover).
      const label = document.createTextNode(`${s.name || s.step_id}: ${s.status}${s.error ? ` (${s.error})` : ""}`);
      li.title = label.data;
      const track = el("div", "track");
      const start = t(s.started_at);
      if (Number.isFinite(start)) {
        const end = Number.isFinite(t(s.finished_at)) ? t(s.finished_at) : running ? now : start;
        const seg = el("div", "seg");
        seg.style.left = `${(((start - t0) / span) * 100).toFixed(2)}%`;
        seg.style.width = `${(((Math.max(end, start) - start) / span) * 100).toFixed(2)}%`;
        seg.title = `${new Date(start).toLocaleTimeString()} → ${Number.isFinite(t(s.finished_at)) ? new Date(end).toLocaleTimeString() : "now"}`;
        track.append(seg);
      }
      li.append(label, track, el("span", "dur", Number.isFinite(start) ? duration(s.started_at!, s.finished_at, now) : "—"));
      steps.append(li);
    }
    $("#timeline-axis").innerHTML = "";
    if (e.steps.length) $("#timeline-axis").append(el("span", "", new Date(t0).toLocaleTimeString()), el("span", "", `${formatMs(span)}${running ? " (so far)" : ""}`));
  }

  // --- the execution's events: pages of GET /events (oldest first), then live ones appended
  const HISTORY_TYPES = [
    "execution.created", "execution.started", "execution.progress", "execution.paused", "execution.resumed", "execution.blocked",
    "execution.completed", "execution.failed", "execution.cancelled", "step.started", "step.completed", "step.failed", "step.skipped",
    "approval.required", "approval.granted", "approval.denied", "approval.expired",
  ];
  const EVENTS_PAGE = Math.max(1, Math.min(500, Number(setting("events_page", "100")) || 100));
  let eventHistory: { id: string; cursor: string; done: boolean; seen: Set<string>; pending: RuncastEvent[]; loading: boolean } | undefined;
  const eventsBody = $("#detail-events tbody");
  function eventRow(ev: RuncastEvent, live: boolean) {
    const tr = document.createElement("tr");
    tr.dataset.type = ev.type;
    tr.dataset.offset = String(ev.offset ?? "");
    if (live) tr.className = "live";
    const time = el("td", "time", ev.occurred_at ? new Date(ev.occurred_at).toLocaleTimeString() : "");
    time.title = ev.occurred_at ?? "";
    tr.append(time, el("td", "type", ev.type), el("td", "offset", String(ev.offset ?? "")), el("td", "details", summarize(ev)));
    return tr;
  }
  async function loadEvents() {
    const h = eventHistory;
    if (!h || h.loading || h.done) return;
    h.loading = true;
    $("#events-status").textContent = "loading…";
    try {
      const page = await client.rest.listEvents({ execution_id: h.id, type: HISTORY_TYPES, limit: EVENTS_PAGE, cursor: h.cursor || undefined });
      if (eventHistory !== h) return;
      for (const ev of page.items) {
        if (h.seen.has(ev.event_id)) continue;
        h.seen.add(ev.event_id);
        eventsBody.append(eventRow(ev, false));
      }
      h.cursor = page.next_cursor;
      h.done = !page.next_cursor;
      if (h.done) {
        // the live events that came while the eventHistory was paged in, after it (none twice)
        for (const ev of h.pending.sort((a, b) => a.offset - b.offset)) appendLive(ev);
        h.pending = [];
      }
      $("#events-status").textContent = h.done ? `${h.seen.size} events${h.seen.size ? "" : " yet"}; new ones appear live` : `${h.seen.size} loaded`;
    } catch (err) {
      if (eventHistory === h) $("#events-status").textContent = `could not load events: ${(err as Error).message}`;
      onFailure()(err as Error);
    } finally {
      h.loading = false;
      if (eventHistory === h) $("#events-more").hidden = h.done;
    }
  }
  function appendLive(ev: RuncastEvent) {
    const h = eventHistory;
    if (!h || ev.execution_id !== h.id || ev.type === "log.appended") return;
    if (!h.done) {
      // shown in order once the pages reach them
      h.pending.push(ev);
      $("#events-status").textContent = `${h.seen.size} loaded; ${h.pending.length} newer arrived live: load more to reach them`;
      return;
    }
    if (h.seen.has(ev.event_id)) return;
    h.seen.add(ev.event_id);
    eventsBody.append(eventRow(ev, true));
    $("#events-status").textContent = `${h.seen.size} events; new ones appear live`;
    const box = $("#events-scroll");
    box.scrollTop = box.scrollHeight;
  }
  $("#events-more").addEventListener("click", () => void loadEvents());

  for (const b of document.querySelectorAll<HTMLButtonElement>("#detail-view [data-action]")) {
    b.addEventListener("click", () => {
      if (!route.detailId || b.disabled) return;
      const action = b.dataset.action;
      // one request at a time: the button stays disabled until the answer (then the state decides)
      b.disabled = true;
      const p = action === "pause" ? client.pauseExecution(route.detailId) : action === "resume" ? client.resumeExecution(route.detailId) : client.cancelExecution(route.detailId, "cancelled from the dashboard");
      p.catch(onFailure((err) => showError(err.message))).finally(() => renderActions(route.detailId ? client.store.getExecution(route.detailId) : undefined));
    });
  }

  function renderClock(now: number) {
    if (!route.detailId) return;
    const e = client.store.getExecution(route.detailId);
    if (e) {
      renderFacts(e, now);
      if ($("#detail-steps").dataset.running === "true") renderTimeline(e, now);
    }
    renderCountdowns(now);
  }

  function open(id: string) {
    $("#detail-logs").dataset.lines = "";
    shownExecution = undefined;
    shownLogs = undefined;
    eventsBody.innerHTML = "";
    $("#events-more").hidden = true;
    eventHistory = { id, cursor: "", done: false, seen: new Set(), pending: [], loading: false };
    detailWatch = client.watchExecution(id, { onEvent: (ev) => appendLive(ev) });
    void detailWatch.ready.catch(onFailure());
    void loadEvents();
    renderDetail();
  }

  function close() {
    detailWatch?.stop();
    detailWatch = undefined;
    eventHistory = undefined;
  }

  return { renderDetail, renderClock, open, close };
}
