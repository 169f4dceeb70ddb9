// A typed store of executions, agents and logs, fed by REST lists and live events. Entities merge
// by `version` (every event carries the whole state), so replays and REST/event races are harmless.
import type { Agent, Execution, LogLine, RuncastEvent } from "./types.js";

type Listener = () => void;

export interface StoreOptions {
  /** How change notifications are batched. Default: one per microtask. */
  schedule?: (flush: () => void) => void;
}

export class RuncastStore {
  private readonly executions = new Map<string, Execution>();
  private readonly agents = new Map<string, Agent>();
  private readonly logs = new Map<string, LogLine[]>();
  private readonly listeners = new Set<Listener>();
  private pending = false;
  /** Bumped on every change; cached snapshots are recomputed when it moves. */
  revision = 0;
  private execCache: { rev: number; list: Execution[] } = { rev: -1, list: [] };
  private agentCache: { rev: number; list: Agent[] } = { rev: -1, list: [] };
  /** Ids changed since the last `takeChanged()` (for incremental renderers). */
  private changed = new Set<string>();
  readonly errors: { at: number; message: string; code?: string; execution_id?: string }[] = [];

  constructor(private readonly options: StoreOptions = {}) {}

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private touch(id?: string): void {
    this.revision++;
    if (id) this.changed.add(id);
    if (this.pending) return;
    this.pending = true;
    const flush = () => {
      this.pending = false;
      for (const l of [...this.listeners]) l();
    };
    (this.options.schedule ?? queueMicrotask)(flush);
  }

  /** Ids changed since the last call. */
  takeChanged(): Set<string> {
    const c = this.changed;
    this.changed = new Set();
    return c;
  }

  // --- executions

  /** Upserts an execution if it is newer than what the store holds. Returns whether it applied. */
  upsertExecution(execution: Execution, offset?: number): boolean {
    const current = this.executions.get(execution.execution_id);
    if (current && !current.optimistic && current.version >= execution.version) return false;
    const next = offset !== undefined && !(execution.offset > 0) ? { ...execution, offset } : execution;
    if (next.optimistic === undefined && current?.optimistic) delete (next as any).optimistic;
    this.executions.set(execution.execution_id, next);
    this.touch(execution.execution_id);
    return true;
  }

  /** Applies one event (an event frame's `data`, or a `GET /events` item). */
  applyEvent(event: RuncastEvent, offset: number = event.offset): boolean {
    if (event.type === "log.appended") {
      const lines = (event.payload?.logs_appended?.lines ?? []) as LogLine[];
      return this.appendLogs(event.execution_id, lines);
    }
    const state = event.state;
    if (!state) return false;
    if (event.type.startsWith("agent.")) return this.upsertAgent(state as Agent, offset);
    return this.upsertExecution(state as Execution, offset);
  }

  getExecution(id: string): Execution | undefined {
    return this.executions.get(id);
  }

  /** All executions, newest first (a stable array until the next change). */
  getExecutions(): Execution[] {
    if (this.execCache.rev !== this.revision) {
      const list = [...this.executions.values()];
      // plain comparisons (RFC 3339 UTC strings sort by time): localeCompare is far slower
      const key = (e: Execution) => e.created_at ?? "";
      list.sort((a, b) => (key(a) < key(b) ? 1 : key(a) > key(b) ? -1 : a.execution_id < b.execution_id ? 1 : a.execution_id > b.execution_id ? -1 : 0));
      this.execCache = { rev: this.revision, list };
    }
    return this.execCache.list;
  }

  removeExecution(id: string): void {
    if (this.executions.delete(id)) this.touch(id);
  }

  /** Replaces what a REST list covers: newer-or-equal versions win per entity. */
  loadExecutions(items: Execution[]): void {
    for (const e of items) this.upsertExecution(e);
  }

  // --- agents

  upsertAgent(agent: Agent, offset?: number): boolean {
    const current = this.agents.get(agent.agent_id);
    if (current && current.version >= agent.version) return false;
    this.agents.set(agent.agent_id, offset !== undefined && !(agent.offset > 0) ? { ...agent, offset } : agent);
    this.touch(agent.agent_id);
    return true;
  }

  getAgents(): Agent[] {
    if (this.agentCache.rev !== this.revision) {
      this.agentCache = { rev: this.revision, list: [...this.agents.values()].sort((a, b) => (a.agent_id < b.agent_id ? -1 : a.agent_id > b.agent_id ? 1 : 0)) };
    }
    return this.agentCache.list;
  }

  getAgent(id: string): Agent | undefined {
    return this.agents.get(id);
  }

  // --- logs

  /** Appends log lines in order, dropping line numbers already held. */
  appendLogs(executionId: string, lines: LogLine[]): boolean {
    let list = this.logs.get(executionId);
    if (!list) this.logs.set(executionId, (list = []));
    let changed = false;
    for (const line of lines) {
      const last = list.length ? list[list.length - 1]!.line_number : 0;
      if (line.line_number <= last) continue;
      list.push(line);
      changed = true;
    }
    if (changed) {
      this.logs.set(executionId, list.slice()); // a new array: snapshots stay immutable
      this.touch(executionId);
    }
    return changed;
  }

  getLogs(executionId: string): LogLine[] {
    return this.logs.get(executionId) ?? EMPTY;
  }

  // --- optimistic creation

  /** Shows a placeholder row at once; `confirm` or `rollback` it later. */
  addOptimistic(tempId: string, workflowId: string, labels: Record<string, string> = {}): Execution {
    const now = new Date().toISOString();
    const row: Execution = {
      execution_id: tempId, tenant_id: "", workflow_id: workflowId, status: "pending", version: 0, offset: 0,
      progress: 0, current_step: "", steps: [], approvals: [], labels, error: "", created_at: now, updated_at: now, optimistic: true,
    };
    this.executions.set(tempId, row);
    this.touch(tempId);
    return row;
  }

  /** The server accepted it: the placeholder becomes the real execution (or whatever newer
   * version the events already delivered). */
  confirmOptimistic(tempId: string, execution: Execution): void {
    this.executions.delete(tempId);
    this.touch(tempId);
    this.upsertExecution(execution);
  }

  rollbackOptimistic(tempId: string, error: { message: string; code?: string }): void {
    this.executions.delete(tempId);
    this.errors.push({ at: Date.now(), message: error.message, code: error.code, execution_id: tempId });
    this.touch(tempId);
  }
}

const EMPTY: LogLine[] = [];
