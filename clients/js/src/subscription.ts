// One channel's subscription: what the application asked for, its resume position (offset and
// epoch) and its status. It outlives transports: every (re)connect subscribes it again from where
// it stopped. The connection decides what to do with each message; the bookkeeping is here.
import type { Connection } from "./connection.js";
import { RuncastSubscriptionError } from "./errors.js";
import type {
  ErrorMessage, EventMessage, NotRecoveredReason, ResyncMessage, SnapshotMessage, SubscribeRequest, SubscribedMessage,
  SubscriptionFilters,
} from "./types.js";

export interface SubscribeOptions {
  filters?: SubscriptionFilters;
  /** Start after this offset (replay what came after it); default: live from now. */
  sinceOffset?: number;
  /** The epoch `sinceOffset` belongs to (from an earlier `subscribed`); default: not checked. */
  sinceEpoch?: string;
  snapshot?: boolean;
  /** Every event frame, in order, each offset at most once. */
  onEvent: (message: EventMessage) => void;
  onSnapshot?: (message: SnapshotMessage) => void;
  /** The gateway could not resume (`recovered: false`, `cause` = its `reason`): reload from REST
   * and return its `as_of_offset`; the subscription then resumes from there. Without it (or when
   * it returns nothing) the subscription simply continues live from the gateway's head. */
  onReset?: (reason: "not_recovered", cause?: NotRecoveredReason) => Promise<number | undefined> | number | undefined;
  onSubscribed?: (message: SubscribedMessage) => void;
  /** Every `error` the gateway sends for this subscription. When given, a refused subscription
   * is not logged to the console (the `error` event and `ready` still report it). */
  onError?: (message: ErrorMessage) => void;
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

/** The query parameters of an SSE stream that carry filters (comma-separated lists). */
const FILTER_KEYS = ["workflow_ids", "execution_ids", "statuses", "types"] as const;

export class Subscription {
  readonly cursor: ChannelCursor;
  /** `pending`: not (yet) confirmed by `subscribed` on the current transport. */
  status: "pending" | "active" | "resetting" | "closed" = "pending";
  replayed = 0;
  /** The epoch of the stream the cursor's offsets belong to, as the gateway last named it. Sent as
   * `since_epoch` on every resume, so an offset of a re-created stream is never replayed from. */
  epoch: string | undefined;
  /** Set while a reload's resubscribe is in flight: a second `recovered: false` right after a
   * reload continues live instead of reloading again (no reload loop). */
  reloaded = false;
  /** Set from a `recovered: false` until the application's reload (`onReset`) has returned: the
   * cursor follows the gateway's head meanwhile, so a reconnect must not forget the reload. */
  reloadPending = false;
  /** Resolves with the first `subscribed`; rejects with a {@link RuncastSubscriptionError} when
   * the gateway refuses the subscription (e.g. a typo in the channel). */
  readonly ready: Promise<SubscribedMessage>;
  /** Why the gateway refused it, once it has. */
  error: RuncastSubscriptionError | undefined;
  private settle!: { resolve: (m: SubscribedMessage) => void; reject: (e: RuncastSubscriptionError) => void };
  constructor(readonly connection: Connection, readonly channel: string, readonly options: SubscribeOptions) {
    this.cursor = new ChannelCursor(options.sinceOffset);
    this.epoch = options.sinceOffset !== undefined ? options.sinceEpoch : undefined;
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // Whoever awaits `ready` sees the rejection; nobody awaiting it is not an unhandled rejection
    // (the `error` event, or the console, reports it).
    this.ready.catch(() => undefined);
  }
  /** @internal */
  confirmed(message: SubscribedMessage): void {
    this.settle.resolve(message);
  }
  /** @internal */
  refused(error: RuncastSubscriptionError): void {
    this.error = error;
    this.status = "closed";
    this.settle.reject(error);
  }

  /** The resume position of the next subscribe: `since_offset` and, when known, `since_epoch`. */
  get resume(): { since_offset?: number; since_epoch?: string } {
    const since = this.cursor.resumeFrom;
    if (since === undefined) return {};
    return this.epoch ? { since_offset: since, since_epoch: this.epoch } : { since_offset: since };
  }
  get lastOffset(): number | undefined {
    return this.cursor.lastOffset;
  }
  unsubscribe(): void {
    this.connection.unsubscribe(this);
  }

  /** @internal A snapshot is asked for only when the subscription starts without a position. */
  get wantsSnapshot(): boolean {
    return !!this.options.snapshot && this.cursor.resumeFrom === undefined;
  }

  /** @internal The WebSocket `subscribe` that resumes it (the `id` is the channel). */
  subscribeRequest(): SubscribeRequest {
    const msg: SubscribeRequest = { type: "subscribe", channel: this.channel, id: this.channel };
    const f = this.options.filters;
    if (f && Object.values(f).some((v) => v && v.length)) msg.filters = f;
    Object.assign(msg, this.resume);
    if (this.wantsSnapshot) msg.snapshot = true;
    return msg;
  }

  /** @internal The query of the SSE stream that resumes it; the offset travels as Last-Event-ID. */
  sseQuery(): URLSearchParams {
    const q = new URLSearchParams({ channel: this.channel });
    const f = this.options.filters ?? {};
    for (const key of FILTER_KEYS) {
      const values = f[key];
      if (values?.length) q.set(key, values.join(","));
    }
    if (this.wantsSnapshot) q.set("snapshot", "true");
    if (this.resume.since_epoch !== undefined) q.set("since_epoch", this.resume.since_epoch);
    return q;
  }

  /** @internal `subscribed`: active again. Returns whether this confirms a reload's resubscribe. */
  onSubscribed(message: SubscribedMessage): { wasReload: boolean } {
    this.status = "active";
    this.replayed = message.replayed ?? 0;
    if (message.epoch) this.epoch = message.epoch;
    const wasReload = this.reloaded;
    this.reloaded = false;
    if (message.recovered === false) {
      // The gateway continues live from its head and replayed nothing: the cursor follows it
      // (an offset of an older epoch may be far above the new stream's).
      if (typeof message.offset === "number") this.cursor.reset(message.offset);
    }
    this.confirmed(message);
    return { wasReload };
  }

  /** @internal `snapshot`: its offset counts as delivered. */
  onSnapshot(message: SnapshotMessage): void {
    if (typeof message.offset === "number" && message.offset > 0) this.cursor.accept(message.offset);
  }

  /** @internal `resync`: dropped from the live feed; resume exactly where the gateway says (no gap). */
  onResync(message: ResyncMessage): void {
    if (message.epoch && this.epoch && message.epoch !== this.epoch) {
      // Another stream than the one the cursor counted in: its offset is the only position.
      this.epoch = message.epoch;
      if (typeof message.offset === "number") this.cursor.reset(message.offset);
    } else if (typeof message.offset === "number") {
      this.cursor.reset(Math.max(message.offset, this.cursor.lastOffset ?? 0));
    }
    if (message.epoch) this.epoch = message.epoch;
    this.status = "pending";
  }
}
