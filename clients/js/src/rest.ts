// The REST API under /api/v1 (DESIGN §3), typed.
import { RuncastApiError } from "./errors.js";
import { resolveToken, type TokenProvider } from "./token.js";
import type { Agent, CreateExecutionInput, Execution, ExecutionStatus, ListResponse, RuncastEvent } from "./types.js";

export interface RestOptions {
  /** `http://host:8081/api/v1` */
  apiUrl: string;
  token: TokenProvider;
  fetch?: typeof fetch;
}

export interface ListExecutionsQuery {
  workflow_id?: string;
  statuses?: ExecutionStatus[];
  limit?: number;
  cursor?: string;
}

export interface ListEventsQuery {
  execution_id?: string;
  workflow_id?: string;
  type?: string[];
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

export class RestClient {
  constructor(private readonly options: RestOptions) {}

  async request<T>(method: string, path: string, body?: unknown, query?: Record<string, string | number | undefined>): Promise<T> {
    const doFetch = this.options.fetch ?? (globalThis as any).fetch;
    const token = await resolveToken(this.options.token);
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== "") q.set(k, String(v));
    const url = `${this.options.apiUrl.replace(/\/+$/, "")}${path}${q.size ? `?${q}` : ""}`;
    let res: Response;
    try {
      res = await doFetch(url, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      throw new RuncastApiError(0, "UNAVAILABLE", `cannot reach the API at ${url}: ${(err as Error).message}`);
    }
    const text = await res.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const e = json?.error;
      throw new RuncastApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? (text || res.statusText));
    }
    return json as T;
  }

  listExecutions(query: ListExecutionsQuery = {}): Promise<ListResponse<Execution>> {
    return this.request("GET", "/executions", undefined, {
      workflow_id: query.workflow_id,
      statuses: query.statuses?.join(","),
      limit: query.limit,
      cursor: query.cursor,
    });
  }

  getExecution(id: string): Promise<Execution> {
    return this.request("GET", `/executions/${encodeURIComponent(id)}`);
  }

  createExecution(input: CreateExecutionInput): Promise<Execution> {
    return this.request("POST", "/executions", input);
  }

  cancelExecution(id: string, reason = ""): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/cancel`, { reason });
  }

  pauseExecution(id: string, reason = ""): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/pause`, { reason });
  }

  resumeExecution(id: string, reason = ""): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/resume`, { reason });
  }

  resolveApproval(id: string, approvalId: string, granted: boolean, comment = ""): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/approvals/${encodeURIComponent(approvalId)}`, { granted, comment });
  }

  listEvents(query: ListEventsQuery = {}): Promise<ListResponse<RuncastEvent>> {
    return this.request("GET", "/events", undefined, {
      execution_id: query.execution_id,
      workflow_id: query.workflow_id,
      type: query.type?.join(","),
      since: query.since,
      until: query.until,
      limit: query.limit,
      cursor: query.cursor,
    });
  }

  listAgents(query: { statuses?: string[]; limit?: number; cursor?: string } = {}): Promise<ListResponse<Agent>> {
    return this.request("GET", "/agents", undefined, { statuses: query.statuses?.join(","), limit: query.limit, cursor: query.cursor });
  }

  /** Every page of a list, up to `max` items; `as_of_offset` of the first page (the lowest). */
  async listAll<T>(page: (cursor: string) => Promise<ListResponse<T>>, max = 10000): Promise<ListResponse<T>> {
    const items: T[] = [];
    let cursor = "";
    let asOf: number | undefined;
    for (;;) {
      const p = await page(cursor);
      asOf = asOf === undefined ? p.as_of_offset : Math.min(asOf, p.as_of_offset);
      items.push(...p.items);
      if (!p.next_cursor || items.length >= max) return { items, next_cursor: p.next_cursor, as_of_offset: asOf };
      cursor = p.next_cursor;
    }
  }
}
