// One logical connection to ws-gateway: its state, reconnects and token refresh. WebSocket first,
// SSE when WebSocket cannot connect (transport/); a token provider refreshed in band (`auth`)
// before expiry; exponential backoff with full jitter; subscriptions (subscription.ts) that
// survive reconnects (resume from each channel's last offset, drop duplicates).
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { refreshDelay, resolveToken, type TokenProvider } from "./token.js";
import { RuncastSubscriptionError } from "./errors.js";
import { Subscription, type SubscribeOptions } from "./subscription.js";
import type { Timers, Transport, TransportHost, TransportKind } from "./transport/transport.js";
import { openWebSocket, webSocketUrl, type WebSocketFactory } from "./transport/websocket.js";
import { httpBase, openSse } from "./transport/sse.js";
import type { ErrorCode, ErrorMessage, NotRecoveredReason, ServerMessage } from "./types.js";


export type ConnectionState =
  | { status: "connecting"; transport?: TransportKind }
  | { status: "live"; transport: TransportKind }
  | { status: "reconnecting"; attempt: number; retryAt: number; delayMs: number; lastError?: string }
  | { status: "offline"; reason: string };

/** The transport a connection went live on changed (or was chosen, the first time: `from` is
 * undefined). `reason`: why WebSocket was not used, when SSE was chosen in `auto` mode. */
export interface TransportChange {
  from: TransportKind | undefined;
  to: TransportKind;
  reason?: string;
}

/** What `connection.on()` (and `client.on()`) report. */
export interface ConnectionEvents {
  /** A subscription the gateway refused (the subscription is dropped, its `ready` rejects), or a
   * gateway error that names no subscription. Without a listener here and without the
   * subscription's own `onError`, it is logged with `console.error`: never silent. */
  error: (error: RuncastSubscriptionError) => void;
  /** The connection went live on another transport than last time: WebSocket → SSE fallback,
   * SSE → WebSocket (after a reconnect, or the periodic upgrade try in `auto` mode). */
  transport: (change: TransportChange) => void;
}

/** Gateway error codes after which the same subscribe is retried (after a short backoff) rather
 * than given up: the gateway could not serve it right now, or dropped the message. */
const TRANSIENT_ERRORS: ReadonlySet<string> = new Set<ErrorCode>(["unavailable", "rate_limited"]);
/** Error codes that do not concern the subscription's fate. */
const HARMLESS_ERRORS: ReadonlySet<string> = new Set<ErrorCode>(["already_subscribed", "not_subscribed"]);

/** Seconds until the next try of a `reconnecting` state (rounded up), for display. */
export function secondsUntilRetry(state: ConnectionState, now: number = Date.now()): number {
  return state.status === "reconnecting" ? Math.max(0, Math.ceil((state.retryAt - now) / 1000)) : 0;
}

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
  /** `auto` mode, live on SSE: try WebSocket again this often and move over when it opens
   * (subscriptions resume from their offsets; a `transport` event says so). Default 60 s; 0: never
   * (WebSocket is then tried again only at the next reconnect). */
  upgradeIntervalMs?: number;
  /** Timers, injectable for tests. */
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (handle: any) => void;
  now?: () => number;
}

type Listener = (state: ConnectionState) => void;

export class Connection {
  state: ConnectionState = { status: "connecting" };
  private readonly subs = new Map<string, Subscription>();
  private readonly listeners = new Set<Listener>();
  private readonly events: { [K in keyof ConnectionEvents]: Set<ConnectionEvents[K]> } = { error: new Set(), transport: new Set() };
  /** The transport of the last time the connection was live. */
  private lastTransport: TransportKind | undefined;
  private upgradeTimer: any;
  private transport: Transport | undefined;
  private attempt = 0;
  private retryTimer: any;
  private refreshTimer: any;
  private token: string | undefined;
  private closed = false;
  private generation = 0;
  /** The generation whose `open()` is in flight: `connect()` waits for it instead of starting a
   * second one (the later would orphan the first's transport, whose answers are then ignored). */
  private opening: number | undefined;
  private readonly opts: Required<Pick<ConnectionOptions, "transport" | "random" | "connectTimeoutMs" | "maxAttempts">> & ConnectionOptions;
  /** Counters for diagnostics and tests. */
  readonly stats = { connects: 0, websocketFailures: 0, sseConnects: 0, duplicatesDropped: 0, resets: 0, reloadFailures: 0, upgrades: 0 };

  constructor(options: ConnectionOptions) {
    this.opts = { transport: "auto", random: Math.random, connectTimeoutMs: 10000, maxAttempts: Infinity, upgradeIntervalMs: 60000, ...options };
  }

  /** Listens to `error` (refused subscriptions) or `transport` (changes of transport); returns
   * the function that stops listening. */
  on<K extends keyof ConnectionEvents>(type: K, listener: ConnectionEvents[K]): () => void {
    this.events[type].add(listener);
    return () => this.events[type].delete(listener);
  }

  private emit<K extends keyof ConnectionEvents>(type: K, ...args: Parameters<ConnectionEvents[K]>): void {
    for (const l of [...this.events[type]]) {
      try {
        (l as (...a: unknown[]) => void)(...args);
      } catch (err) {
        console.error(err);
      }
    }
  }

  /** The gateway refused `sub` (or sent an error naming none): drop it, reject its `ready`, tell
   * its `onError` and the `error` listeners; with neither, the console. */
  private refuse(sub: Subscription | undefined, message: ErrorMessage): void {
    const error = new RuncastSubscriptionError(sub?.channel ?? message.channel, message.code ?? "error", message.message ?? "");
    if (sub) {
      if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
      sub.refused(error);
      sub.options.onError?.(message);
    }
    this.emit("error", error);
    if (!sub?.options.onError && this.events.error.size === 0) console.error(`runcast: ${error.message}`);
  }

  /** Went live on `kind`: report a change of transport. */
  private wentLive(kind: TransportKind, reason?: string): void {
    const from = this.lastTransport;
    this.lastTransport = kind;
    if (from !== kind) this.emit("transport", reason && kind === "sse" ? { from, to: kind, reason } : { from, to: kind });
  }

  private get timers(): Timers {
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
    if (this.closed || this.transport || this.retryTimer || this.opening === this.generation) return this;
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
    this.timers.clear(this.upgradeTimer);
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

  /** What the transports of generation `gen` report to (anything of an older one is ignored). */
  private host(gen: number): TransportHost {
    return {
      current: () => gen === this.generation,
      holds: (sub) => this.subs.get(sub.channel) === sub,
      token: () => this.token,
      message: (message, transport) => this.handle(gen, message, transport),
      dropped: (reason, goingAway) => this.dropped(gen, reason, goingAway),
      timers: this.timers,
    };
  }

  private openWebSocket(gen: number): Promise<Transport> {
    const WS = this.opts.WebSocket ?? (globalThis as any).WebSocket;
    return openWebSocket(WS, webSocketUrl(this.opts.gatewayUrl, this.token), this.opts.connectTimeoutMs, this.host(gen));
  }

  private async openSse(gen: number): Promise<Transport> {
    const doFetch = this.opts.fetch ?? (globalThis as any).fetch?.bind(globalThis);
    const transport = await openSse(doFetch, httpBase(this.opts.gatewayUrl), this.host(gen));
    this.stats.sseConnects++;
    return transport;
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.opening = gen;
    try {
      await this.openAs(gen);
    } finally {
      if (this.opening === gen) this.opening = undefined;
    }
  }

  /** Opens a transport for generation `gen`; one that opens after `gen` was superseded is closed,
   * never kept: its host ignores every message of an older generation. */
  private async openAs(gen: number): Promise<void> {
    this.retryTimer = undefined;
    if (this.state.status !== "reconnecting") this.setState({ status: "connecting" });
    let error = "";
    let transport: Transport | undefined;
    try {
      this.token = await resolveToken(this.opts.token);
      if (gen !== this.generation) return;
      const kind = this.opts.transport;
      if (kind === "websocket" || kind === "auto") {
        try {
          transport = await this.openWebSocket(gen);
        } catch (err) {
          this.stats.websocketFailures++;
          error = `websocket: ${(err as Error).message}`;
          if (kind === "websocket" || gen !== this.generation) throw err;
        }
      }
      if (!transport && gen === this.generation && (kind === "sse" || kind === "auto")) {
        transport = await this.openSse(gen);
      }
      if (gen !== this.generation || !transport) {
        transport?.close();
        return;
      }
      this.transport = transport;
      this.stats.connects++;
      this.attempt = 0;
      this.setState({ status: "live", transport: transport.kind });
      this.wentLive(transport.kind, error || undefined);
      this.scheduleRefresh();
      this.scheduleUpgrade();
      for (const sub of this.subs.values()) {
        sub.status = "pending";
        transport.subscribe(sub);
      }
    } catch (err) {
      transport?.close();
      if (gen !== this.generation) return;
      this.transport?.close();
      this.transport = undefined;
      this.scheduleRetry(error ? `${error}; ${(err as Error).message}` : (err as Error).message);
    }
  }

  /** The transport dropped (or was told to reconnect): retry with backoff. */
  private dropped(gen: number, reason: string, immediate = false, hintedDelayMs = 0): void {
    if (gen !== this.generation || this.closed) return;
    this.generation++;
    this.transport?.close();
    this.transport = undefined;
    this.timers.clear(this.refreshTimer);
    this.timers.clear(this.upgradeTimer);
    for (const sub of this.subs.values()) {
      if (sub.status !== "closed") sub.status = "pending";
      sub.reloaded = false;
    }
    this.scheduleRetry(reason, immediate, hintedDelayMs);
  }

  /** `immediate`: no backoff, only the delay the gateway asked for (`reconnect`'s `retry_after_ms`). */
  private scheduleRetry(reason: string, immediate = false, hintedDelayMs = 0): void {
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
    const delayMs = immediate ? hintedDelayMs : backoffDelay(this.attempt, this.opts.backoff, this.opts.random);
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

  /** `auto` mode, live on SSE: try WebSocket again after `upgradeIntervalMs`; when it opens,
   * move every subscription over (each resumes from its offset: no gap, no duplicate) and close
   * the SSE streams. A failed try keeps SSE and tries again later. */
  private scheduleUpgrade(): void {
    this.timers.clear(this.upgradeTimer);
    this.upgradeTimer = undefined;
    const every = this.opts.upgradeIntervalMs ?? 0;
    if (this.opts.transport !== "auto" || this.transport?.kind !== "sse" || !(every > 0)) return;
    const gen = this.generation;
    this.upgradeTimer = this.timers.set(() => void this.tryUpgrade(gen), every);
  }

  private async tryUpgrade(gen: number): Promise<void> {
    if (gen !== this.generation || this.closed || this.transport?.kind !== "sse") return;
    // The WebSocket is opened for the next generation: its messages count only once it is ours.
    const next = gen + 1;
    let ws: Transport;
    try {
      ws = await this.openWebSocket(next);
    } catch {
      if (gen === this.generation) this.scheduleUpgrade();
      return;
    }
    if (gen !== this.generation || this.closed || this.transport?.kind !== "sse") {
      ws.close();
      return;
    }
    this.stats.upgrades++;
    this.generation = next;
    this.transport.close();
    this.transport = ws;
    this.setState({ status: "live", transport: "websocket" });
    this.wentLive("websocket");
    this.scheduleRefresh();
    for (const sub of this.subs.values()) {
      sub.status = "pending";
      sub.reloaded = false;
      ws.subscribe(sub);
    }
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
    const channel = "channel" in message ? message.channel : undefined;
    const sub = channel !== undefined ? this.subs.get(channel) : undefined;
    switch (message.type) {
      case "subscribed": {
        if (!sub) return;
        const { wasReload } = sub.onSubscribed(message);
        sub.options.onSubscribed?.(message);
        // A reload cut short by a reconnect is still owed: the cursor already follows the head.
        if ((message.recovered === false && !wasReload) || sub.reloadPending) void this.reset(sub, transport, gen, message.reason);
        return;
      }
      case "snapshot":
        if (!sub) return;
        sub.onSnapshot(message);
        sub.options.onSnapshot?.(message);
        return;
      case "resync":
        // Dropped from the live feed: resume exactly where the gateway says (no gap). An SSE
        // stream ends after it and resumes by itself.
        if (!sub) return;
        sub.onResync(message);
        if (transport.kind === "websocket") transport.subscribe(sub);
        return;
      case "reconnect": {
        // A draining gateway spreads its clients over a window: wait the delay it drew for us
        // (at most a minute), so they do not all reach the other replicas at once.
        const hinted: unknown = message.retry_after_ms;
        const delayMs = typeof hinted === "number" && Number.isFinite(hinted) ? Math.min(Math.max(0, hinted), 60_000) : 0;
        this.dropped(gen, "the gateway is draining", true, delayMs);
        return;
      }
      case "error": {
        // The gateway echoes the `id` we send (the channel) and may name the channel too.
        const target = sub ?? (typeof message.id === "string" ? this.subs.get(message.id) : undefined);
        const code = message.code ?? "";
        if (target && TRANSIENT_ERRORS.has(code)) {
          // The subscription was not served this time: retry it after a short backoff.
          target.status = "pending";
          this.timers.set(() => {
            if (gen === this.generation && this.subs.get(target.channel) === target) transport.subscribe(target);
          }, backoffDelay(1, this.opts.backoff, this.opts.random));
          target.options.onError?.(message);
          return;
        }
        if (HARMLESS_ERRORS.has(code)) {
          target?.options.onError?.(message);
          return;
        }
        this.refuse(target, message);
        return;
      }
      case "pong":
      case "unsubscribed":
        return;
      default: {
        // an event frame
        if (!sub || typeof message.offset !== "number" || sub.status === "closed" || sub.status === "resetting") return;
        if (!sub.cursor.accept(message.offset)) {
          this.stats.duplicatesDropped++;
          return;
        }
        sub.options.onEvent(message);
      }
    }
  }

  /** `recovered: false`: the application reloads over REST; we resubscribe from its `as_of_offset`
   * (in the epoch the gateway just named: the REST read model follows the current stream). */
  private async reset(sub: Subscription, transport: Transport, gen: number, cause?: NotRecoveredReason): Promise<void> {
    this.stats.resets++;
    if (!sub.options.onReset) return; // keep the live subscription, nothing to reload
    sub.status = "resetting";
    sub.reloadPending = true;
    const current = () => gen === this.generation && this.subs.get(sub.channel) === sub;
    let offset: number | undefined;
    // A failed reload (the API unreachable) is retried with backoff, events dropped meanwhile:
    // going live without it would leave what changed in the gap stale, silently. Cut short by a
    // reconnect, it stays pending and runs again on the next `subscribed`.
    for (let attempt = 1; ; attempt++) {
      try {
        offset = (await sub.options.onReset("not_recovered", cause)) ?? undefined;
        break;
      } catch (err) {
        this.stats.reloadFailures++;
        const delay = backoffDelay(attempt, this.opts.backoff, this.opts.random);
        console.warn(`runcast: reloading ${sub.channel} after an unrecoverable resume failed (${(err as Error)?.message ?? err}); retrying in ${delay} ms`);
        if (!current()) return;
        await new Promise<void>((resolve) => this.timers.set(resolve, delay));
        if (!current()) return;
      }
    }
    if (!current()) return;
    sub.reloadPending = false;
    if (offset === undefined) {
      sub.status = "active";
      return;
    }
    sub.cursor.reset(offset);
    sub.reloaded = true;
    // stays `resetting` (events of the old subscription are dropped) until `subscribed` again
    transport.unsubscribe(sub);
    transport.subscribe(sub);
  }
}
