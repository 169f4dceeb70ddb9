// The wire types of DESIGN §2–§4 (JSON form: snake_case, enums as lowercase strings, RFC 3339).

export type ExecutionStatus = "pending" | "running" | "paused" | "blocked" | "completed" | "failed" | "cancelled";
export const TERMINAL_STATUSES: readonly ExecutionStatus[] = ["completed", "failed", "cancelled"];
export const EXECUTION_STATUSES: readonly ExecutionStatus[] = ["pending", "running", "paused", "blocked", "completed", "failed", "cancelled"];
export type StepStatus = "pending" | "running" | "completed" | "failed" | "skipped";
export type ApprovalStatus = "pending" | "granted" | "denied" | "expired" | string;
export type AgentStatus = "online" | "busy" | "offline" | string;

export type EventType =
  | "execution.created" | "execution.started" | "execution.progress" | "execution.paused" | "execution.resumed"
  | "execution.blocked" | "execution.completed" | "execution.failed" | "execution.cancelled"
  | "step.started" | "step.completed" | "step.failed" | "step.skipped"
  | "approval.required" | "approval.granted" | "approval.denied" | "approval.expired"
  | "log.appended" | "agent.online" | "agent.heartbeat" | "agent.offline";

export interface Step {
  step_id: string;
  name: string;
  status: StepStatus;
  started_at?: string;
  finished_at?: string;
  error?: string;
}

export interface Approval {
  approval_id: string;
  status: ApprovalStatus;
  reason?: string;
  deadline?: string;
  requested_at?: string;
  resolved_at?: string;
  comment?: string;
  resolved_by?: string;
}

export interface Execution {
  execution_id: string;
  tenant_id: string;
  workflow_id: string;
  status: ExecutionStatus;
  version: number;
  offset: number;
  progress: number;
  current_step: string;
  steps: Step[];
  approvals: Approval[];
  labels: Record<string, string>;
  input?: unknown;
  error: string;
  status_message?: string;
  created_at?: string;
  updated_at?: string;
  started_at?: string;
  finished_at?: string;
  /** The agent that moved it to `running` and owns it (DESIGN §7); empty before. */
  agent_id?: string;
  /** Fails with `no heartbeat for {n}s` when running this long without an event; 0: never. */
  heartbeat_timeout_seconds?: number;
  /** Client-side only: a row shown by `createExecution()` before the server confirmed it. */
  optimistic?: boolean;
}

export interface Agent {
  agent_id: string;
  tenant_id: string;
  status: AgentStatus;
  cpu_percent: number;
  memory_percent: number;
  gpu_percent: number;
  running_execution_ids: string[];
  labels: Record<string, string>;
  timeout_seconds: number;
  version: number;
  offset: number;
  last_heartbeat_at?: string;
  online_since?: string;
}

export interface LogLine {
  line_number: number;
  text: string;
  stream?: "stdout" | "stderr" | string;
}

/** One event (`data` of an event frame, or an item of `GET /events`). */
export interface RuncastEvent {
  event_id: string;
  tenant_id: string;
  execution_id: string;
  agent_id: string;
  workflow_id: string;
  version: number;
  occurred_at: string;
  type: EventType;
  offset: number;
  payload?: Record<string, any>;
  /** The entity's whole state after the event; absent on `log.appended`. */
  state?: Execution | Agent;
  /** The `request_id` of the command that made the event, when its caller gave one. */
  request_id?: string;
}

// --- the gateway's wire protocol (docs/protocol.md; crates/runcast-contract/src/gateway/, whose
// tests check that these names are the same as its ServerMessage, ErrorCode and CloseCode)

/** Every `code` an `error` message can carry (the gateway's `ErrorCode`). */
export type ErrorCode =
  | "invalid_json" | "invalid_message" | "unknown_type" | "unknown_channel" | "invalid_filter"
  | "too_many_subscriptions" | "already_subscribed" | "not_subscribed" | "rate_limited"
  | "unauthenticated" | "permission_denied" | "unavailable" | "internal";

/** The WebSocket close codes the gateway uses: 1001 draining (after `reconnect`) or an unanswered
 * ping, 1002 a frame that breaks the WebSocket protocol, 1008 an inbound flood, 1009 a frame too
 * large, 1011 a server error, 4001 the token expired. */
export type CloseCode = 1001 | 1002 | 1008 | 1009 | 1011 | 4001;

/** What every server message may carry: the time the gateway sent it (RFC 3339), and the `id`
 * of the request it answers, echoed when the request had one. */
interface ServerMessageBase {
  timestamp?: string;
  id?: string | number;
}

/** A subscription is live: `offset` is where it continues (the replay's last, or the stream's
 * head), `epoch` the stream those offsets belong to (send it back as `since_epoch`). On a resume
 * (`since_offset` given): `recovered` and `replayed`; `recovered: false` names its `reason`. */
export interface SubscribedMessage extends ServerMessageBase {
  type: "subscribed";
  channel: string;
  offset?: number;
  epoch?: string;
  recovered?: boolean;
  replayed?: number;
  reason?: NotRecoveredReason;
}

/** The answer to `unsubscribe`. */
export interface UnsubscribedMessage extends ServerMessageBase {
  type: "unsubscribed";
  channel?: string;
}

/** The answer to `ping`. */
export interface PongMessage extends ServerMessageBase {
  type: "pong";
}

/** `snapshot: true` on `executions:{id}` / `agents:{id}`: the entity's state at `offset` (`data`
 * null, offset 0: no events yet), before the events after it. */
export interface SnapshotMessage extends ServerMessageBase {
  type: "snapshot";
  channel: string;
  offset?: number;
  data?: Execution | Agent | null;
}

/** A request was refused (the connection stays open), or a subscription failed. Over SSE the
 * client reports a refused stream (HTTP 4xx) as one too: `code` is then the JSON error's code, or
 * `http_{status}`. */
export interface ErrorMessage extends ServerMessageBase {
  type: "error";
  code?: ErrorCode | (string & {});
  message?: string;
  /** Set by the client for a refused SSE stream; the gateway names the request by `id`. */
  channel?: string;
}

/** The subscription left the live feed (the client fell behind, or the stream was re-created):
 * subscribe again with `since_offset = offset`, `since_epoch = epoch`. */
export interface ResyncMessage extends ServerMessageBase {
  type: "resync";
  channel: string;
  offset?: number;
  epoch?: string;
  reason?: string;
}

/** The replica is draining: reconnect (to another one) after `retry_after_ms` and resume. */
export interface ReconnectMessage extends ServerMessageBase {
  type: "reconnect";
  reason?: string;
  retry_after_ms?: number;
}

/** Everything but events. */
export type ControlMessage =
  | SubscribedMessage | UnsubscribedMessage | PongMessage | SnapshotMessage | ErrorMessage | ResyncMessage | ReconnectMessage;

/** One event on one channel: `type` is the event's, `offset` its position in the channel's
 * stream (the SSE `id:`), `data` the event. */
export interface EventMessage extends ServerMessageBase {
  type: EventType;
  channel: string;
  offset: number;
  data: RuncastEvent;
}

/** What the gateway sends (DESIGN §4): a union on `type`, so `switch (message.type)` narrows it. */
export type ServerMessage = ControlMessage | EventMessage;

/** The `type`s of {@link ControlMessage}s. */
export const CONTROL_TYPES: Set<string> = new Set<string>(["subscribed", "unsubscribed", "pong", "snapshot", "error", "resync", "reconnect"]);

/** A message is an event frame when its `type` is none of the control types. */
export function isEventMessage(message: ServerMessage): message is EventMessage {
  return !CONTROL_TYPES.has(message.type);
}

/** A JSON text frame (or SSE `data:`) as a server message; undefined when it is not JSON or not
 * an object with a string `type`. */
export function parseServerMessage(text: string): ServerMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  return typeof (value as { type?: unknown }).type === "string" ? (value as ServerMessage) : undefined;
}

/** What a client sends over WebSocket. */
export interface SubscribeRequest {
  type: "subscribe";
  channel: string;
  id?: string | number;
  filters?: SubscriptionFilters;
  since_offset?: number;
  since_epoch?: string;
  snapshot?: boolean;
}
export interface UnsubscribeRequest {
  type: "unsubscribe";
  channel: string;
  id?: string | number;
}
export interface PingRequest {
  type: "ping";
  id?: string | number;
}
export interface AuthRequest {
  type: "auth";
  token: string;
  id?: string | number;
}
export type ClientMessage = SubscribeRequest | UnsubscribeRequest | PingRequest | AuthRequest;

/** Why the gateway could not resume a subscription (`subscribed.reason` when `recovered: false`):
 * the stream was re-created (`epoch_changed`), neither the stream nor the history holds the
 * offset any more (`too_old`), or the history is down right now (`unavailable`). */
export type NotRecoveredReason = "epoch_changed" | "too_old" | "unavailable";

export interface SubscriptionFilters {
  workflow_ids?: string[];
  execution_ids?: string[];
  statuses?: ExecutionStatus[] | string[];
  types?: EventType[] | string[];
}

export interface ListResponse<T> {
  items: T[];
  next_cursor: string;
  as_of_offset: number;
}

export interface CreateExecutionInput {
  workflow_id: string;
  idempotency_key?: string;
  labels?: Record<string, string>;
  input?: Record<string, unknown>;
}
