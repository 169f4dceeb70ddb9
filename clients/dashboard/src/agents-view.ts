// The agents: the panel beside the list (wide screens) and the Agents page (`#/agents`), with
// live telemetry and presence and the executions each one runs.
import { TERMINAL_STATUSES, type Agent } from "@runcast/client";
import type { App } from "./app.js";
import { $, el } from "./dom.js";
import { ago, labelChips, shortId } from "./format.js";
import { setting } from "./settings.js";

export interface AgentsView {
  /** Renders when shown (the panel or the page); otherwise later, when it is. */
  renderAgents(): void;
  /** Marks the agents out of date and schedules a render. */
  invalidate(): void;
  /** Executions changed (`any`: some did): a shown panel re-renders, since its running lists may. */
  executionsChanged(any: boolean): void;
  /** The panel or the page is on screen. */
  shown(): boolean;
}

export function createAgentsView(app: App): AgentsView {
  const { client, route, schedule } = app;
  // --- agents: the panel beside the list and the Agents page. Offline agents are greyed, and
  // left out once their last heartbeat is older than `prune_agents_after` (seconds, default 600).
  // While the live connection is down, no agent is shown as online: presence is unknown.
  const pruneAfterMs = Math.max(0, Number(setting("prune_agents_after", "600")) || 600) * 1000;
  let agentsDirty = true;
  const wideEnough = matchMedia("(min-width: 1281px)"); // the panel beside the list (see app.css)
  const agentsShown = () => route.agentsView || (!route.detailId && wideEnough.matches);
  const sideList = $("#agents ul");
  const cardList = $("#agent-cards");
  const agentItems = new Map<string, { side: HTMLLIElement; card: HTMLLIElement; key: string }>();
  function runningOf(a: Agent, byAgent: Map<string, string[]>): string[] {
    const ids = new Set(a.running_execution_ids ?? []);
    for (const id of byAgent.get(a.agent_id) ?? []) ids.add(id);
    return [...ids];
  }
  function renderAgents() {
    if (!agentsShown()) return;
    agentsDirty = false;
    const now = Date.now();
    const stale = document.body.dataset.stale === "true";
    const byAgent = new Map<string, string[]>();
    for (const e of client.store.getExecutions()) {
      if (e.agent_id && !TERMINAL_STATUSES.includes(e.status)) {
        const list = byAgent.get(e.agent_id) ?? [];
        list.push(e.execution_id);
        byAgent.set(e.agent_id, list);
      }
    }
    const seen = new Set<string>();
    const agents = [...client.store.getAgents()].sort((a, b) => Number(a.status === "offline") - Number(b.status === "offline") || a.agent_id.localeCompare(b.agent_id));
    for (const a of agents) {
      const lastBeat = a.last_heartbeat_at ? Date.parse(a.last_heartbeat_at) : NaN;
      if (a.status === "offline" && pruneAfterMs > 0 && !(now - lastBeat < pruneAfterMs)) continue; // pruned
      seen.add(a.agent_id);
      const running = a.status === "offline" ? [] : runningOf(a, byAgent);
      const presence = stale ? "unknown" : a.status;
      const beat = Number.isFinite(lastBeat) ? ago(a.last_heartbeat_at!, now) : "never";
      const key = JSON.stringify([a.version, presence, beat, running]);
      let item = agentItems.get(a.agent_id);
      if (!item) {
        item = { side: document.createElement("li"), card: document.createElement("li"), key: "" };
        item.side.dataset.id = item.card.dataset.id = a.agent_id;
        agentItems.set(a.agent_id, item);
      }
      // in order: moved only when out of place (no layout work on frames where nothing moved)
      const position = seen.size - 1;
      for (const [list, li] of [[sideList, item.side], [cardList, item.card]] as const) {
        if (list.children[position] !== li) list.insertBefore(li, list.children[position] ?? null);
      }
      if (item.key === key) continue;
      item.key = key;
      const pct = (n: number) => `${Math.round(n ?? 0)}%`;
      const statusText = stale ? "presence unknown (not live)" : a.status;
      for (const li of [item.side, item.card]) {
        li.dataset.status = a.status;
        li.dataset.presence = presence;
        li.dataset.running = String(running.length);
        li.innerHTML = "";
      }
      item.side.append(
        el("div", "name", `${stale ? "◌" : a.status === "offline" ? "○" : "●"} ${a.agent_id}`),
        el("div", "muted", `${statusText} · cpu ${pct(a.cpu_percent)} · mem ${pct(a.memory_percent)} · gpu ${pct(a.gpu_percent)} · running ${running.length}`),
      );
      const runningBox = el("div", "running");
      runningBox.append(el("span", "muted", running.length ? `Running (${running.length}): ` : "Running: none"));
      for (const id of running) {
        const link = document.createElement("a");
        link.href = `#/executions/${id}`;
        link.textContent = shortId(id);
        link.title = id;
        runningBox.append(link);
      }
      item.card.append(
        el("div", "name", `${stale ? "◌" : a.status === "offline" ? "○" : "●"} ${a.agent_id}`),
        el("div", "presence", `${statusText} · last heartbeat ${beat}`),
        el("div", "muted", `cpu ${pct(a.cpu_percent)} · mem ${pct(a.memory_percent)} · gpu ${pct(a.gpu_percent)}`),
        runningBox,
      );
      if (Object.keys(a.labels ?? {}).length) {
        const chips = el("div");
        chips.append(...labelChips(a.labels));
        item.card.append(chips);
      }
    }
    for (const [id, item] of agentItems) {
      if (seen.has(id)) continue;
      item.side.remove();
      item.card.remove();
      agentItems.delete(id);
    }
    $("#agents").dataset.count = String(seen.size);
    $("#agents-note").textContent = !seen.size
      ? "No agents are reporting. Agents appear here with their first heartbeat."
      : stale
      ? "Not live: presence is unknown until the connection is back."
      : `${seen.size} agent${seen.size === 1 ? "" : "s"}; offline agents are greyed and left out ${Math.round(pruneAfterMs / 60000)} min after their last heartbeat.`;
  }
  let lastAgents: readonly Agent[] | undefined;
  client.store.subscribe(() => {
    const agents = client.store.getAgents();
    if (agents !== lastAgents) {
      lastAgents = agents;
      agentsDirty = true;
      schedule(renderAgents);
    }
  });

  return {
    renderAgents,
    invalidate: () => {
      agentsDirty = true;
      schedule(renderAgents);
    },
    executionsChanged: (any: boolean) => {
      if (!agentsShown()) return;
      agentsDirty = agentsDirty || any;
      if (agentsDirty) schedule(renderAgents);
    },
    shown: agentsShown,
  };
}
