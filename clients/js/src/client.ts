// RuncastClient: the connection, the REST API and the store, wired together. Lists load over
// REST and continue live from their `as_of_offset`; nothing polls.
import { Connection, type ConnectionEvents, type ConnectionOptions, type ConnectionState } from "./connection.js";
import type { Subscription } from "./subscription.js";
import { RestClient, type CommandOptions } from "./rest.js";
import { RuncastStore, type StoreOptions } from "./store.js";
import { RuncastApiError } from "./errors.js";
import { backoffDelay } from "./backoff.js";
import type { CreateExecutionInput, EventMessage, Execution, ExecutionStatus, RuncastEvent } from "./types.js";

export interface ClientOptions extends ConnectionOptions {
  /** execution-api REST base: `http://host:8081/api/v1`. */
  apiUrl: string;
  store?: RuncastStore;
  storeOptions?: StoreOptions;
  /** Most executions a list loads over REST (newest first). Default 1000. */
  listLimit?: number;
}

export interface Watch {
  /** Resolves once the REST load is in the store and the live subscription is requested. */
  ready: Promise<void>;
  /** Resolves once the gateway confirmed the subscription (`subscribed`); rejects with a
   * `RuncastSubscriptionError` when it refuses it (the client's `error` event fires too). */
  subscribed: Promise<void>;
  stop(): void;
}

export interface WatchExecutionsOptions {
  workflowId?: string;
  /** Every event delivered on the channel, in offset order, each once. */
  onEvent?: (event: RuncastEvent, message: EventMessage) => void;
}

function randomId(): string {
  const c = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return "x" + Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** Tries of a command before a transient failure is the caller's (backoff: up to 1, 2, 4 s). */
const COMMAND_TRIES = 4;

/** A failure a later try may not meet: the API unreachable, or a gateway in front of it or the API
 * itself saying "not now" (502, 503 with or without `Retry-After`, 504, and 429: the caller's
 * tenant has its share of the API's requests in flight). */
function isTransient(err: unknown): boolean {
  return err instanceof RuncastApiError && [0, 429, 502, 503, 504].includes(err.status);
}

interface Shared {
  count: number;
  sub?: Subscription;
  ready: Promise<void>;
  subscribed: Promise<void>;
  listeners: Set<(event: RuncastEvent, message: EventMessage) => void>;
  stopped: boolean;
}

export class RuncastClient {
  readonly connection: Connection;
  readonly rest: RestClient;
  readonly store: RuncastStore;
  private readonly shared = new Map<string, Shared>();
  private readonly listLimit: number;
  private readonly setTimeout: (fn: () => void, ms: number) => unknown;
  private readonly random: () => number;

  constructor(options: ClientOptions) {
    this.connection = new Connection(options);
    this.rest = new RestClient({ apiUrl: options.apiUrl, token: options.token, fetch: options.fetch });
    this.store = options.store ?? new RuncastStore(options.storeOptions);
    this.listLimit = options.listLimit ?? 1000;
    this.setTimeout = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.random = options.random ?? Math.random;
  }

  get state(): ConnectionState {
    return this.connection.state;
  }

  connect(): this {
    this.connection.connect();
    return this;
  }

  close(): void {
    this.connection.close();
  }

  /** `error`: a subscription the gateway refused (e.g. a typo in a channel); `transport`: the
   * connection moved between WebSocket and SSE. Returns the function that stops listening. */
  on<K extends keyof ConnectionEvents>(type: K, listener: ConnectionEvents[K]): () => void {
    return this.connection.on(type, listener);
  }

  /** One subscription per channel, shared by every watcher (reference counted). */
  private watch(channel: string, setup: (shared: Shared) => Promise<void>, onEvent?: (e: RuncastEvent, m: EventMessage) => void): Watch {
    let shared = this.shared.get(channel);
    if (!shared) {
      const s: Shared = { count: 0, listeners: new Set(), stopped: false, ready: Promise.resolve(), subscribed: Promise.resolve() };
      // A failed REST load (API down, network) is retried with the same backoff as the
      // connection until it succeeds or the watch stops; `ready` resolves on success.
      s.ready = (async () => {
        for (let attempt = 1; ; attempt++) {
          try {
            await setup(s);
            return;
          } catch (err) {
            if (s.stopped) return;
            const e = err as RuncastApiError;
            this.store.errors.push({ at: Date.now(), message: `${channel}: ${e.message}`, code: e.code });
            if (e.status >= 400 && e.status < 500) throw err; // bad request, auth: retrying will not help
            await new Promise((r) => setTimeout(r, backoffDelay(attempt)));
            if (s.stopped) return;
          }
        }
      })();
      s.ready.catch(() => {
        // a refused load frees the slot so the next watcher tries again
        if (this.shared.get(channel) === s && !s.sub) this.shared.delete(channel);
      });
      s.subscribed = s.ready.then(async () => {
        await s.sub?.ready;
      });
      s.subscribed.catch(() => {
        // a refused subscription frees the slot too (the store keeps what the REST load put there)
        if (this.shared.get(channel) === s && s.sub?.error) this.shared.delete(channel);
      });
      this.shared.set(channel, (shared = s));
    }
    const s = shared;
    s.count++;
    if (onEvent) s.listeners.add(onEvent);
    let stopped = false;
    return {
      ready: s.ready,
      subscribed: s.subscribed,
      stop: () => {
        if (stopped) return;
        stopped = true;
        if (onEvent) s.listeners.delete(onEvent);
        if (--s.count === 0) {
          s.stopped = true;
          s.sub?.unsubscribe();
          if (this.shared.get(channel) === s) this.shared.delete(channel);
        }
      },
    };
  }

  private dispatch(s: Shared, message: EventMessage): void {
    const event = message.data;
    if (!event) return;
    this.store.applyEvent(event, message.offset);
    for (const l of s.listeners) l(event, message);
  }

  /** Loads executions (all, or one workflow's) over REST, then follows them live. */
  watchExecutions(options: WatchExecutionsOptions = {}): Watch {
    const channel = options.workflowId ? `workflows:${options.workflowId}` : "executions";
    const load = async () => {
      const page = await this.rest.listAll(
        (cursor) => this.rest.listExecutions({ workflow_id: options.workflowId, limit: 500, cursor }),
        this.listLimit,
      );
      this.store.loadExecutions(page.items);
      return page.as_of_offset;
    };
    return this.watch(channel, async (s) => {
      const asOf = await load();
      if (s.stopped) return;
      this.connect();
      s.sub = this.connection.subscribe(channel, { sinceOffset: asOf, onEvent: (m) => this.dispatch(s, m), onReset: load });
    }, options.onEvent);
  }

  /** Loads the agents over REST, then follows telemetry and presence live. */
  watchAgents(): Watch {
    const load = async () => {
      const page = await this.rest.listAll((cursor) => this.rest.listAgents({ limit: 500, cursor }), this.listLimit);
      for (const a of page.items) this.store.upsertAgent(a);
      return page.as_of_offset;
    };
    return this.watch("agents", async (s) => {
      const asOf = await load();
      if (s.stopped) return;
      this.connect();
      s.sub = this.connection.subscribe("agents", { sinceOffset: asOf, onEvent: (m) => this.dispatch(s, m), onReset: load });
    });
  }

  /** One execution: its state (snapshot, then events) and its logs (from the first line).
   * `sinceOffset`: start from the events after it instead of a snapshot (e.g. the created
   * execution's `offset` − 1, so its first event is the first thing delivered). */
  watchExecution(
    id: string,
    { logs = true, sinceOffset, onEvent }: { logs?: boolean; sinceOffset?: number; onEvent?: (event: RuncastEvent, message: EventMessage) => void } = {},
  ): Watch {
    const fromOffset = sinceOffset !== undefined && sinceOffset >= 0 ? sinceOffset : undefined;
    const state = this.watch(`executions:${id}`, async (s) => {
      this.connect();
      s.sub = this.connection.subscribe(`executions:${id}`, {
        snapshot: fromOffset === undefined,
        sinceOffset: fromOffset,
        onSnapshot: (m) => {
          if (m.data) this.store.upsertExecution(m.data as Execution, m.offset);
        },
        onEvent: (m) => this.dispatch(s, m),
        onReset: async () => {
          const e = await this.rest.getExecution(id);
          this.store.upsertExecution(e);
          return e.offset;
        },
      });
    }, onEvent);
    const log = logs
      ? this.watch(`logs:${id}`, async (s) => {
          this.connect();
          s.sub = this.connection.subscribe(`logs:${id}`, { sinceOffset: 0, onEvent: (m) => this.dispatch(s, m) });
        })
      : undefined;
    const subscribed = Promise.all([state.subscribed, log?.subscribed]).then(() => undefined);
    subscribed.catch(() => undefined); // reported by the `error` event; rejects for who awaits it
    return {
      ready: Promise.all([state.ready, log?.ready]).then(() => undefined),
      subscribed,
      stop: () => {
        state.stop();
        log?.stop();
      },
    };
  }

  /** Optimistic create: the row is in the store at once (`optimistic: true`), replaced by the
   * real execution when the API answers, or removed (with the error in `store.errors`). */
  async createExecution(input: CreateExecutionInput): Promise<Execution> {
    const key = input.idempotency_key || randomId();
    const tempId = `optimistic-${key}`;
    this.store.addOptimistic(tempId, input.workflow_id, input.labels);
    try {
      const execution = await this.rest.createExecution({ ...input, idempotency_key: key });
      this.store.confirmOptimistic(tempId, execution);
      return execution;
    } catch (err) {
      const e = err as RuncastApiError;
      this.store.rollbackOptimistic(tempId, { message: e.message, code: e.code });
      throw err;
    }
  }

  /** Optimistic create, then a watch of the new execution from its own first event:
   * `since_offset` = the created execution's `offset` − 1 (DESIGN §7, "create then watch"), so
   * every event from `execution.created` on is delivered and none can fall between the create
   * and the subscription. An API that does not report the offset falls back to a snapshot. */
  async createAndWatchExecution(input: CreateExecutionInput, { logs = false }: { logs?: boolean } = {}): Promise<{ execution: Execution; watch: Watch }> {
    const execution = await this.createExecution(input);
    const sinceOffset = execution.offset > 0 ? execution.offset - 1 : undefined;
    const watch = this.watchExecution(execution.execution_id, { logs, sinceOffset });
    return { execution, watch };
  }

  /** Cancels; a transient failure is retried with the same request id, so it is applied once. */
  cancelExecution(id: string, reason?: string, options?: CommandOptions): Promise<Execution> {
    return this.command((o) => this.rest.cancelExecution(id, reason, o), options);
  }

  pauseExecution(id: string, reason?: string, options?: CommandOptions): Promise<Execution> {
    return this.command((o) => this.rest.pauseExecution(id, reason, o), options);
  }

  resumeExecution(id: string, reason?: string, options?: CommandOptions): Promise<Execution> {
    return this.command((o) => this.rest.resumeExecution(id, reason, o), options);
  }

  resolveApproval(id: string, approvalId: string, granted: boolean, comment?: string, options?: CommandOptions): Promise<Execution> {
    return this.command((o) => this.rest.resolveApproval(id, approvalId, granted, comment, o), options);
  }

  /** Sends a command under one request id (the caller's, or a new one) for all its tries: the API
   * unreachable or answering 429/502/503/504 is retried with backoff up to `COMMAND_TRIES` times, and
   * the request id makes a try whose answer was lost count once. The answer goes into the store. */
  private async command(send: (options: CommandOptions) => Promise<Execution>, options: CommandOptions = {}): Promise<Execution> {
    const tries: CommandOptions = { requestId: options.requestId ?? randomId() };
    for (let attempt = 1; ; attempt++) {
      try {
        const execution = await send(tries);
        this.store.upsertExecution(execution);
        return execution;
      } catch (err) {
        if (!isTransient(err) || attempt >= COMMAND_TRIES) throw err;
        await new Promise<void>((resolve) => this.setTimeout(resolve, backoffDelay(attempt, {}, this.random)));
      }
    }
  }
}

/** Executions matching a workflow and a set of statuses (client-side, over the store). */
export function filterExecutions(list: Execution[], workflowId?: string, statuses?: readonly ExecutionStatus[]): Execution[] {
  if (!workflowId && !statuses?.length) return list;
  return list.filter((e) => (!workflowId || e.workflow_id === workflowId) && (!statuses?.length || statuses.includes(e.status)));
}

export function createClient(options: ClientOptions): RuncastClient {
  return new RuncastClient(options);
}
