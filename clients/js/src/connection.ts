// One logical connection to ws-gateway: WebSocket first, SSE when WebSocket cannot connect; a
// token provider refreshed in band (`auth`) before expiry; exponential backoff with full jitter;
// subscriptions that survive reconnects (resume from each channel's last offset, drop duplicates).
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { refreshDelay, resolveToken, type TokenProvider } from "./token.js";
import type { ServerMessage, SubscriptionFilters } from "./types.js";

export type ConnectionState =
  | { status: "connecting"; transport?: TransportKind }
  | { status: "live"; transport: TransportKind }
  | { status: "reconnecting"; attempt: number; retryAt: number; delayMs: number; lastError?: string }
  | { status: "offline"; reason: string };

export type TransportKind = "websocket" | "sse";

/** Seconds until the next try of a `reconnecting` state (rounded up), for display. */
export function secondsUntilRetry(state: ConnectionState, now: number = Date.now()): number {
  return state.status === "reconnecting" ? Math.max(0, Math.ceil((state.retryAt - now) / 1000)) : 0;
}

export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol?: string;
  onopen: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketFactory = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectionOptions {
  /** ws-gateway base URL: `ws://host:8080`, `wss://…`, or `http(s)://…` (both transports derive from it). */
  gatewayUrl: string;
  token: TokenProvider;
  /** `auto` (default): WebSocket, SSE when WebSocket cannot connect. */
  transport?: "auto" | TransportKind;
  WebSocket?: WebSocketFactory;
  fetch?: typeof fetch;
  backoff?: BackoffOptions;
  random?: () => number;
  /** Give up (state `offline`) after this many failed attempts in a row. Default: never. */
  maxAttempts?: number;
  /** A WebSocket that has not opened after this long counts as failed. Default 10 s. */
  connectTimeoutMs?: number;
  /** Timers, injectable for tests. */
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (handle: any) => void;
  now?: () => number;
}

export interface SubscribeOptions {
  filters?: SubscriptionFilters;
  /** Start after this offset (replay what came after it); default: live from now. */
  sinceOffset?: number;
  snapshot?: boolean;
  /** Every event frame, in order, each offset at most once. */
  onEvent: (message: ServerMessage) => void;
  onSnapshot?: (message: ServerMessage) => void;
  /** The gateway could not resume (`recovered: false`): reload from REST and return its
   * `as_of_offset`; the subscription then resumes from there. */
  onReset?: (reason: "not_recovered") => Promise<number | undefined> | number | undefined;
  onSubscribed?: (message: ServerMessage) => void;
  onError?: (message: ServerMessage) => void;
}

/** Per-channel resume bookkeeping: the last offset delivered, and duplicate detection. */
export class ChannelCursor {
  lastOffset: number | undefined;
  duplicates = 0;
  constructor(sinceOffset?: number) {
    this.lastOffset = sinceOffset;
  }
  /** True when `offset` is new (and records it); false for a duplicate or an older offset. */
  accept(offset: number): boolean {
    if (this.lastOffset !== undefined && offset <= this.lastOffset) {
      this.duplicates++;
      return false;
    }
    this.lastOffset = offset;
    return true;
  }
  /** The `since_offset` of the next subscribe (undefined: start live). */
  get resumeFrom(): number | undefined {
    return this.lastOffset;
  }
  reset(offset: number | undefined): void {
    this.lastOffset = offset;
  }
}

export class Subscription {
  readonly cursor: ChannelCursor;
  /** `pending`: not (yet) confirmed by `subscribed` on the current transport. */
  status: "pending" | "active" | "resetting" | "closed" = "pending";
  replayed = 0;
  constructor(readonly connection: Connection, readonly channel: string, readonly options: SubscribeOptions) {
    this.cursor = new ChannelCursor(options.sinceOffset);
  }
  get lastOffset(): number | undefined {
    return this.cursor.lastOffset;
  }
  unsubscribe(): void {
    this.connection.unsubscribe(this);
  }
}

interface Transport {
  kind: TransportKind;
  subscribe(sub: Subscription): void;
  unsubscribe(sub: Subscription): void;
  auth(token: string): void;
  close(): void;
}

type Listener = (state: ConnectionState) => void;

const WS_OPEN = 1;

export class Connection {
  state: ConnectionState = { status: "connecting" };
  private readonly subs = new Map<string, Subscription>();
  private readonly listeners = new Set<Listener>();
  private transport: Transport | undefined;
  private attempt = 0;
  private retryTimer: any;
  private refreshTimer: any;
  private token: string | undefined;
  private closed = false;
  private generation = 0;
  private readonly opts: Required<Pick<ConnectionOptions, "transport" | "random" | "connectTimeoutMs" | "maxAttempts">> & ConnectionOptions;
  /** Counters for diagnostics and tests. */
  readonly stats = { connects: 0, websocketFailures: 0, sseConnects: 0, duplicatesDropped: 0, resets: 0 };

  constructor(options: ConnectionOptions) {
    this.opts = { transport: "auto", random: Math.random, connectTimeoutMs: 10000, maxAttempts: Infinity, ...options };
  }

  private get timers() {
    return {
      set: this.opts.setTimeout ?? ((fn: () => void, ms: number) => setTimeout(fn, ms)),
      clear: this.opts.clearTimeout ?? ((h: any) => clearTimeout(h)),
      now: this.opts.now ?? (() => Date.now()),
    };
  }

  onStateChange(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    for (const l of [...this.listeners]) l(state);
  }

  /** The browser says the network is gone: a socket may linger unnoticed, so drop it now. */
  private readonly onOffline = () => {
    if (this.closed || this.state.status === "offline") return;
    this.timers.clear(this.retryTimer);
    this.retryTimer = undefined;
    if (this.transport) this.dropped(this.generation, "no network");
    else this.scheduleRetry("no network");
  };
  private offlineListening = false;

  /** Starts connecting (idempotent). */
  connect(): this {
    const g = globalThis as any;
    if (!this.closed && !this.offlineListening && typeof g.addEventListener === "function") {
      g.addEventListener("offline", this.onOffline);
      this.offlineListening = true;
    }
    if (this.closed || this.transport || this.retryTimer) return this;
    void this.open();
    return this;
  }

  /** Closes for good: state `offline`. */
  close(): void {
    this.closed = true;
    if (this.offlineListening) (globalThis as any).removeEventListener?.("offline", this.onOffline);
    this.offlineListening = false;
    this.generation++;
    this.timers.clear(this.retryTimer);
    this.timers.clear(this.refreshTimer);
    this.retryTimer = undefined;
    this.transport?.close();
    this.transport = undefined;
    this.setState({ status: "offline", reason: "closed" });
  }

  subscribe(channel: string, options: SubscribeOptions): Subscription {
    const existing = this.subs.get(channel);
    if (existing) throw new Error(`already subscribed to ${channel}; unsubscribe first`);
    const sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    if (this.transport && this.state.status === "live") this.transport.subscribe(sub);
    this.connect();
    return sub;
  }

  unsubscribe(sub: Subscription): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    const wasSent = sub.status !== "closed";
    sub.status = "closed";
    if (wasSent && this.transport && this.state.status === "live") this.transport.unsubscribe(sub);
  }

  subscriptions(): Subscription[] {
    return [...this.subs.values()];
  }

  private wsUrl(): string {
    const base = this.opts.gatewayUrl.replace(/\/+$/, "").replace(/^http/, "ws");
    return `${base}/ws?token=${encodeURIComponent(this.token ?? "")}`;
  }

  private httpBase(): string {
    return this.opts.gatewayUrl.replace(/\/+$/, "").replace(/^ws/, "http");
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.retryTimer = undefined;
    if (this.state.status !== "reconnecting") this.setState({ status: "connecting" });
    let error = "";
    try {
      this.token = await resolveToken(this.opts.token);
      if (gen !== this.generation) return;
      const kind = this.opts.transport;
      if (kind === "websocket" || kind === "auto") {
        try {
          this.transport = await this.openWebSocket(gen);
        } catch (err) {
          this.stats.websocketFailures++;
          error = `websocket: ${(err as Error).message}`;
          if (kind === "websocket" || gen !== this.generation) throw err;
        }
      }
      if (!this.transport && (kind === "sse" || kind === "auto")) {
        this.transport = await this.openSse(gen);
      }
      if (gen !== this.generation || !this.transport) return;
      this.stats.connects++;
      this.attempt = 0;
      this.setState({ status: "live", transport: this.transport.kind });
      this.scheduleRefresh();
      for (const sub of this.subs.values()) {
        sub.status = "pending";
        this.transport.subscribe(sub);
      }
    } catch (err) {
      if (gen !== this.generation) return;
      this.transport?.close();
      this.transport = undefined;
      this.scheduleRetry(error ? `${error}; ${(err as Error).message}` : (err as Error).message);
    }
  }

  /** The transport dropped (or was told to reconnect): retry with backoff. */
  private dropped(gen: number, reason: string, immediate = false): void {
    if (gen !== this.generation || this.closed) return;
    this.generation++;
    this.transport?.close();
    this.transport = undefined;
    this.timers.clear(this.refreshTimer);
    for (const sub of this.subs.values()) if (sub.status !== "closed") sub.status = "pending";
    this.scheduleRetry(reason, immediate);
  }

  private scheduleRetry(reason: string, immediate = false): void {
    if (this.closed) return;
    if (this.networkDown()) {
      // The browser knows there is no network: wait for its `online` event instead of retrying.
      this.setState({ status: "offline", reason: "no network" });
      this.watchNetwork();
      return;
    }
    this.attempt++;
    if (this.attempt > this.opts.maxAttempts) {
      this.setState({ status: "offline", reason });
      return;
    }
    const delayMs = immediate ? 0 : backoffDelay(this.attempt, this.opts.backoff, this.opts.random);
    const { set, now } = this.timers;
    this.setState({ status: "reconnecting", attempt: this.attempt, retryAt: now() + delayMs, delayMs, lastError: reason });
    this.retryTimer = set(() => void this.open(), delayMs);
  }

  private networkDown(): boolean {
    const nav = (globalThis as any).navigator;
    return !!nav && nav.onLine === false;
  }

  private watchingNetwork = false;
  private watchNetwork(): void {
    const g = globalThis as any;
    if (this.watchingNetwork || typeof g.addEventListener !== "function") return;
    this.watchingNetwork = true;
    const online = () => {
      g.removeEventListener("online", online);
      this.watchingNetwork = false;
      if (!this.closed && this.state.status === "offline") void this.open();
    };
    g.addEventListener("online", online);
  }

  /** Retry now (e.g. the browser went back online, or a user clicked "retry"). */
  retryNow(): void {
    if (this.closed || this.state.status === "live") return;
    this.timers.clear(this.retryTimer);
    void this.open();
  }

  private scheduleRefresh(): void {
    this.timers.clear(this.refreshTimer);
    if (typeof this.opts.token !== "function" || !this.token) return;
    const delay = refreshDelay(this.token, this.timers.now());
    if (delay === undefined) return;
    const gen = this.generation;
    this.refreshTimer = this.timers.set(async () => {
      try {
        const token = await resolveToken(this.opts.token);
        if (gen !== this.generation) return;
        this.token = token;
        this.transport?.auth(token);
        this.scheduleRefresh();
      } catch (err) {
        // Keep the current token; the gateway closes with 4001 at expiry and we reconnect.
        this.refreshTimer = this.timers.set(() => this.scheduleRefresh(), 5000);
      }
    }, delay);
  }

  // --- message handling shared by both transports

  private handle(gen: number, message: ServerMessage, transport: Transport): void {
    if (gen !== this.generation) return;
    const sub = message.channel !== undefined ? this.subs.get(message.channel) : undefined;
    switch (message.type) {
      case "subscribed":
        if (!sub) return;
        sub.status = "active";
        sub.replayed = message.replayed ?? 0;
        sub.options.onSubscribed?.(message);
        if (message.recovered === false) void this.reset(sub, transport, gen);
        return;
      case "snapshot":
        if (!sub) return;
        if (typeof message.offset === "number" && message.offset > 0) sub.cursor.accept(message.offset);
        sub.options.onSnapshot?.(message);
        return;
      case "resync":
        // Dropped from the live feed: resume exactly where the gateway says (no gap).
        if (!sub) return;
        if (typeof message.offset === "number") sub.cursor.reset(Math.max(message.offset, sub.cursor.lastOffset ?? 0));
        sub.status = "pending";
        if (transport.kind === "websocket") transport.subscribe(sub);
        return;
      case "reconnect":
        this.dropped(gen, "the gateway is draining", true);
        return;
      case "error":
        if (sub && message.code === "unavailable") {
          // The subscription was dropped: retry it after a short backoff.
          sub.status = "pending";
          this.timers.set(() => {
            if (gen === this.generation && this.subs.get(sub.channel) === sub) transport.subscribe(sub);
          }, backoffDelay(1, this.opts.backoff, this.opts.random));
        }
        if (sub) sub.options.onError?.(message);
        else for (const s of this.subs.values()) if (message.id === s.channel) s.options.onError?.(message);
        return;
      case "pong":
      case "unsubscribed":
        return;
      default: {
        if (!sub || typeof message.offset !== "number" || sub.status === "closed" || sub.status === "resetting") return;
        if (!sub.cursor.accept(message.offset)) {
          this.stats.duplicatesDropped++;
          return;
        }
        sub.options.onEvent(message);
      }
    }
  }

  /** `recovered: false`: the application reloads over REST; we resubscribe from its `as_of_offset`. */
  private async reset(sub: Subscription, transport: Transport, gen: number): Promise<void> {
    this.stats.resets++;
    if (!sub.options.onReset) return; // keep the live subscription, nothing to reload
    sub.status = "resetting";
    let offset: number | undefined;
    try {
      offset = (await sub.options.onReset("not_recovered")) ?? undefined;
    } catch {
      offset = undefined;
    }
    if (gen !== this.generation || this.subs.get(sub.channel) !== sub) return;
    if (offset === undefined) {
      sub.status = "active";
      return;
    }
    sub.cursor.reset(offset);
    // stays `resetting` (events of the old subscription are dropped) until `subscribed` again
    transport.unsubscribe(sub);
    transport.subscribe(sub);
  }

  // --- WebSocket

  private openWebSocket(gen: number): Promise<Transport> {
    const WS = this.opts.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) return Promise.reject(new Error("no WebSocket implementation (pass options.WebSocket)"));
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new WS(this.wsUrl(), "runcast.v1.json");
      } catch (err) {
        reject(err);
        return;
      }
      let opened = false;
      const timer = this.timers.set(() => {
        if (!opened) {
          ws.onclose = ws.onerror = ws.onopen = ws.onmessage = null;
          try { ws.close(); } catch { /* already closing */ }
          reject(new Error("timed out"));
        }
      }, this.opts.connectTimeoutMs);
      const pendingUnsub = new Map<string, Subscription>();
      const send = (msg: object) => {
        if (ws.readyState === WS_OPEN) ws.send(JSON.stringify(msg));
      };
      const subscribeMsg = (sub: Subscription) => {
        const msg: Record<string, unknown> = { type: "subscribe", channel: sub.channel, id: sub.channel };
        const f = sub.options.filters;
        if (f && Object.values(f).some((v) => v && v.length)) msg.filters = f;
        if (sub.cursor.resumeFrom !== undefined) msg.since_offset = sub.cursor.resumeFrom;
        if (sub.options.snapshot && sub.cursor.resumeFrom === undefined) msg.snapshot = true;
        return msg;
      };
      const transport: Transport = {
        kind: "websocket",
        subscribe: (sub) => {
          if (pendingUnsub.has(sub.channel)) {
            pendingUnsub.set(sub.channel, sub); // subscribe again once `unsubscribed` arrives
            return;
          }
          send(subscribeMsg(sub));
        },
        unsubscribe: (sub) => {
          pendingUnsub.set(sub.channel, undefined as any);
          send({ type: "unsubscribe", channel: sub.channel });
        },
        auth: (token) => send({ type: "auth", token }),
        close: () => {
          ws.onclose = ws.onerror = ws.onmessage = null;
          try { ws.close(1000); } catch { /* ignore */ }
        },
      };
      ws.onopen = () => {
        opened = true;
        this.timers.clear(timer);
        resolve(transport);
      };
      ws.onerror = () => {
        /* onclose follows */
      };
      ws.onclose = (ev: any) => {
        this.timers.clear(timer);
        if (!opened) {
          reject(new Error(`refused (close ${ev?.code ?? "?"})`));
          return;
        }
        this.dropped(gen, `closed ${ev?.code ?? ""} ${ev?.reason ?? ""}`.trim(), ev?.code === 1001);
      };
      ws.onmessage = (ev: any) => {
        if (typeof ev.data !== "string") return;
        let message: ServerMessage;
        try {
          message = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (message.type === "unsubscribed" && message.channel && pendingUnsub.has(message.channel)) {
          const again = pendingUnsub.get(message.channel);
          pendingUnsub.delete(message.channel);
          if (again && this.subs.get(again.channel) === again) send(subscribeMsg(again));
          return;
        }
        if (message.type === "error" && message.code === "not_subscribed" && message.id === undefined) {
          // an unsubscribe raced a resync: resubscribe whatever waited for it
          for (const [channel, again] of pendingUnsub) {
            pendingUnsub.delete(channel);
            if (again && this.subs.get(channel) === again) send(subscribeMsg(again));
          }
          return;
        }
        this.handle(gen, message, transport);
      };
    });
  }

  // --- SSE (fetch streaming, so the token travels in a header; one stream per channel)

  private async openSse(gen: number): Promise<Transport> {
    const doFetch = this.opts.fetch ?? (globalThis as any).fetch?.bind(globalThis);
    if (!doFetch) throw new Error("no fetch implementation (pass options.fetch)");
    const base = this.httpBase();
    // Probe: the gateway must answer (readiness of the SSE path is checked by the first stream).
    const probe = await doFetch(`${base}/healthz`).catch((err: Error) => {
      throw new Error(`sse: ${err.message}`);
    });
    if (!probe.ok) throw new Error(`sse: gateway answered ${probe.status}`);
    this.stats.sseConnects++;
    const streams = new Map<string, AbortController>();
    const conn = this;
    const transport: Transport = {
      kind: "sse",
      subscribe(sub) {
        streams.get(sub.channel)?.abort();
        const abort = new AbortController();
        streams.set(sub.channel, abort);
        void run(sub, abort);
      },
      unsubscribe(sub) {
        streams.get(sub.channel)?.abort();
        streams.delete(sub.channel);
      },
      auth() {
        /* used by the next stream; SSE has no in-band auth */
      },
      close() {
        for (const a of streams.values()) a.abort();
        streams.clear();
      },
    };
    const run = async (sub: Subscription, abort: AbortController) => {
      const q = new URLSearchParams({ channel: sub.channel });
      const f = sub.options.filters ?? {};
      for (const key of ["workflow_ids", "execution_ids", "statuses", "types"] as const) {
        if (f[key]?.length) q.set(key, f[key]!.join(","));
      }
      if (sub.options.snapshot && sub.cursor.resumeFrom === undefined) q.set("snapshot", "true");
      const headers: Record<string, string> = { authorization: `Bearer ${conn.token}`, accept: "text/event-stream" };
      if (sub.cursor.resumeFrom !== undefined) headers["last-event-id"] = String(sub.cursor.resumeFrom);
      let reason = "stream ended";
      const started = conn.timers.now();
      let clean = false;
      try {
        const res = await doFetch(`${base}/sse?${q}`, { headers, signal: abort.signal, cache: "no-store" });
        if (!res.ok || !res.body) {
          const text = await res.text().catch(() => "");
          throw new Error(`sse ${sub.channel}: ${res.status} ${text}`);
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let data: string[] = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let nl: number;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, nl).replace(/\r$/, "");
            buffer = buffer.slice(nl + 1);
            if (line === "") {
              if (data.length) {
                try {
                  conn.handle(gen, JSON.parse(data.join("\n")), transport);
                } catch {
                  /* a record that is not JSON: skip */
                }
              }
              data = [];
            } else if (line.startsWith("data:")) {
              data.push(line.slice(5).replace(/^ /, ""));
            }
            // `id:` equals the frame's `offset`, `event:` its `type`; comments are heartbeats.
          }
        }
        clean = true;
      } catch (err) {
        if (abort.signal.aborted) return;
        reason = (err as Error).message;
      }
      if (abort.signal.aborted || streams.get(sub.channel) !== abort) return;
      if (gen !== conn.generation) return;
      // A stream that ended cleanly after a while (resync, proxy timeout): resume just this one
      // from its last offset. Anything else (refused, drained, gateway gone): reconnect all.
      if (clean && conn.timers.now() - started > 1000) transport.subscribe(sub);
      else conn.dropped(gen, reason);
    };
    return transport;
  }
}
