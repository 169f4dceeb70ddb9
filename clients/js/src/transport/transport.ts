// What a transport is to the connection, and what the connection is to a transport. A transport
// only moves messages: it knows nothing of reconnects, backoff or resume policy (the connection
// decides), and it holds no subscription state of its own beyond what its framing needs.
import type { Subscription } from "../subscription.js";
import type { ServerMessage } from "../types.js";

export type TransportKind = "websocket" | "sse";

export interface Transport {
  readonly kind: TransportKind;
  /** Subscribes (again) from the subscription's resume position. */
  subscribe(sub: Subscription): void;
  unsubscribe(sub: Subscription): void;
  /** A fresh token: sent in band where the transport can (WebSocket `auth`). */
  auth(token: string): void;
  /** Closes without reporting a drop. */
  close(): void;
}

/** Timers, injectable for tests. */
export interface Timers {
  set(fn: () => void, ms: number): any;
  clear(handle: any): void;
  now(): number;
}

/** The connection, as one transport (of one generation) sees it. */
export interface TransportHost {
  /** The connection still uses this transport's generation. */
  current(): boolean;
  /** `sub` is still the connection's subscription of its channel. */
  holds(sub: Subscription): boolean;
  /** The current token (for SSE, which sends it with each stream). */
  token(): string | undefined;
  /** A message for the connection to handle. */
  message(message: ServerMessage, transport: Transport): void;
  /** The transport is gone: `goingAway` when the server said so (WebSocket 1001: no backoff). */
  dropped(reason: string, goingAway?: boolean): void;
  readonly timers: Timers;
}
