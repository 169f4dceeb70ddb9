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
}

/** What the gateway sends: event frames and control messages (DESIGN §4). */
export interface ServerMessage {
  type: string;
  timestamp?: string;
  channel?: string;
  offset?: number;
  data?: any;
  id?: string | number;
  recovered?: boolean;
  replayed?: number;
  code?: string;
  message?: string;
  reason?: string;
}

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

export const CONTROL_TYPES = new Set(["subscribed", "unsubscribed", "pong", "snapshot", "error", "resync", "reconnect"]);
