import { test } from "node:test";
import assert from "node:assert/strict";
import { RuncastStore, RuncastClient, RuncastApiError, filterExecutions } from "../../dist/index.js";
import { flush } from "./fakes.mjs";

const exec = (id, version, extra = {}) => ({ execution_id: id, tenant_id: "t", workflow_id: "wf", status: "running", version, offset: 0, progress: 0, current_step: "", steps: [], approvals: [], labels: {}, error: "", created_at: `2026-01-01T00:00:0${version}Z`, ...extra });

test("executions merge by version: older or equal versions never overwrite newer ones", () => {
  const s = new RuncastStore();
  assert.equal(s.upsertExecution(exec("a", 3, { progress: 30 })), true);
  assert.equal(s.upsertExecution(exec("a", 2, { progress: 20 })), false);
  assert.equal(s.upsertExecution(exec("a", 3, { progress: 99 })), false);
  assert.equal(s.getExecution("a").progress, 30);
  // an event carries the offset in the frame: it is recorded on the state
  assert.equal(s.applyEvent({ type: "execution.completed", execution_id: "a", offset: 17, state: exec("a", 4, { status: "completed" }) }), true);
  assert.equal(s.getExecution("a").status, "completed");
  assert.equal(s.getExecution("a").offset, 17);
  // REST list after events: stale items are ignored
  s.loadExecutions([exec("a", 1), exec("b", 1)]);
  assert.equal(s.getExecution("a").version, 4);
  assert.deepEqual(s.getExecutions().map((e) => e.execution_id), ["a", "b"], "newest created first");
});

test("snapshots are stable between changes and listeners are batched", async () => {
  const s = new RuncastStore();
  let calls = 0;
  s.subscribe(() => calls++);
  s.upsertExecution(exec("a", 1));
  s.upsertExecution(exec("a", 2));
  s.upsertExecution(exec("b", 1));
  const first = s.getExecutions();
  assert.equal(s.getExecutions(), first, "same array while nothing changed");
  await flush();
  assert.equal(calls, 1, "one notification for three changes in a tick");
  assert.deepEqual([...s.takeChanged()].sort(), ["a", "b"]);
  s.upsertExecution(exec("a", 3));
  assert.notEqual(s.getExecutions(), first);
});

test("logs append in order, dropping line numbers already held", () => {
  const s = new RuncastStore();
  const line = (n) => ({ line_number: n, text: `l${n}` });
  s.applyEvent({ type: "log.appended", execution_id: "a", offset: 1, payload: { logs_appended: { lines: [line(1), line(2)] } } });
  s.applyEvent({ type: "log.appended", execution_id: "a", offset: 2, payload: { logs_appended: { lines: [line(2), line(3)] } } });
  assert.deepEqual(s.getLogs("a").map((l) => l.line_number), [1, 2, 3]);
});

test("agents merge by version", () => {
  const s = new RuncastStore();
  s.upsertAgent({ agent_id: "x", version: 2, status: "busy", cpu_percent: 5 });
  s.applyEvent({ type: "agent.heartbeat", agent_id: "x", offset: 3, state: { agent_id: "x", version: 1, status: "online" } });
  assert.equal(s.getAgent("x").status, "busy");
  s.applyEvent({ type: "agent.offline", agent_id: "x", offset: 4, state: { agent_id: "x", version: 3, status: "offline" } });
  assert.equal(s.getAgent("x").status, "offline");
});

function clientWith(fetchImpl) {
  return new RuncastClient({ gatewayUrl: "ws://gw", apiUrl: "http://api/api/v1", token: "tok", fetch: fetchImpl, WebSocket: class {} });
}

test("optimistic create: the row appears at once, then becomes the real execution", async () => {
  let release;
  const bodies = [];
  const client = clientWith(async (url, init) => {
    bodies.push(JSON.parse(init.body));
    await new Promise((r) => (release = r));
    return new Response(JSON.stringify(exec("real-1", 1, { status: "pending", workflow_id: "deploy" })), { status: 201 });
  });
  const done = client.createExecution({ workflow_id: "deploy", labels: { k: "v" } });
  const rows = client.store.getExecutions();
  assert.equal(rows.length, 1);
  assert.equal(rows[0].optimistic, true);
  assert.equal(rows[0].workflow_id, "deploy");
  assert.equal(rows[0].status, "pending");
  await flush();
  assert.match(bodies[0].idempotency_key, /^[A-Za-z0-9_-]{1,64}$/, "retries are safe: an idempotency key is always sent");
  // the real event may arrive before the response: merge by version keeps the newest
  client.store.upsertExecution(exec("real-1", 2, { status: "running", workflow_id: "deploy" }));
  release();
  const created = await done;
  assert.equal(created.execution_id, "real-1");
  assert.deepEqual(client.store.getExecutions().map((e) => [e.execution_id, e.status, !!e.optimistic]), [["real-1", "running", false]]);
});

test("optimistic create rolls back with the API's error", async () => {
  const client = clientWith(async () => new Response(JSON.stringify({ error: { code: "INVALID_ARGUMENT", message: "workflow_id contains ' '" } }), { status: 400 }));
  const p = client.createExecution({ workflow_id: "bad id" });
  assert.equal(client.store.getExecutions().length, 1);
  await assert.rejects(p, (err) => err instanceof RuncastApiError && err.status === 400 && err.code === "INVALID_ARGUMENT" && /contains/.test(err.message));
  assert.equal(client.store.getExecutions().length, 0);
  assert.equal(client.store.errors.at(-1).code, "INVALID_ARGUMENT");
});

test("optimistic create rolls back when the API is unreachable", async () => {
  const client = clientWith(async () => { throw new TypeError("fetch failed"); });
  await assert.rejects(client.createExecution({ workflow_id: "wf" }), (err) => err.code === "UNAVAILABLE");
  assert.equal(client.store.getExecutions().length, 0);
});

test("filters by workflow and status", () => {
  const list = [exec("a", 1, { workflow_id: "x", status: "running" }), exec("b", 1, { workflow_id: "y", status: "failed" })];
  assert.deepEqual(filterExecutions(list, "x").map((e) => e.execution_id), ["a"]);
  assert.deepEqual(filterExecutions(list, undefined, ["failed"]).map((e) => e.execution_id), ["b"]);
  assert.equal(filterExecutions(list), list);
});

test("a list that fails to load (API unreachable) is retried until it loads", async () => {
  let calls = 0;
  const client = new RuncastClient({
    gatewayUrl: "ws://gw", apiUrl: "http://api/api/v1", token: "tok", WebSocket: class { constructor() { this.readyState = 0; } close() {} },
    random: () => 0,
    fetch: async () => {
      calls++;
      if (calls < 3) throw new TypeError("fetch failed");
      return new Response(JSON.stringify({ items: [exec("a", 1)], next_cursor: "", as_of_offset: 5 }));
    },
  });
  const watch = client.watchExecutions();
  // backoffDelay uses Math.random: attempts 1 and 2 wait < 1 s and < 2 s
  await watch.ready;
  assert.equal(calls, 3);
  assert.equal(client.store.getExecution("a").version, 1);
  assert.equal(client.store.errors.length, 2);
  assert.equal(client.connection.subscriptions()[0].lastOffset, 5, "subscribes from the list's as_of_offset");
  watch.stop();
  client.close();
});

test("a refused list load (4xx) is not retried", async () => {
  let calls = 0;
  const client = new RuncastClient({ gatewayUrl: "ws://gw", apiUrl: "http://api", token: "t", WebSocket: class {}, fetch: async () => (calls++, new Response(JSON.stringify({ error: { code: "UNAUTHENTICATED", message: "bad token" } }), { status: 401 })) });
  await assert.rejects(client.watchExecutions().ready, (e) => e.code === "UNAUTHENTICATED");
  assert.equal(calls, 1);
});
