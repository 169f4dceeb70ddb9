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

/** Options of a command that changes an execution. */
export interface CommandOptions {
  /**
   * The caller's id for this change (1 to 64 of A-Z a-z 0-9 _ -; a UUID fits). Sending the command
   * again with the same id after a lost answer applies it once and answers the execution as the
   * first try left it; the event it made carries the id (`request_id`) on the live stream. One id,
   * one change: the same id with another change is refused (400, `INVALID_ARGUMENT`).
   */
  requestId?: string;
}

/** A command's JSON body with the `request_id` of its options, when given. */
function commandBody(fields: Record<string, unknown>, options: CommandOptions): Record<string, unknown> {
  return options.requestId === undefined ? fields : { ...fields, request_id: options.requestId };
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

  cancelExecution(id: string, reason = "", options: CommandOptions = {}): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/cancel`, commandBody({ reason }, options));
  }

  pauseExecution(id: string, reason = "", options: CommandOptions = {}): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/pause`, commandBody({ reason }, options));
  }

  resumeExecution(id: string, reason = "", options: CommandOptions = {}): Promise<Execution> {
    return this.request("POST", `/executions/${encodeURIComponent(id)}/resume`, commandBody({ reason }, options));
  }

  resolveApproval(id: string, approvalId: string, granted: boolean, comment = "", options: CommandOptions = {}): Promise<Execution> {
    const path = `/executions/${encodeURIComponent(id)}/approvals/${encodeURIComponent(approvalId)}`;
    return this.request("POST", path, commandBody({ granted, comment }, options));
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
