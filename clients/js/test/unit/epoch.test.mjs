// Positions have an epoch (DESIGN §7): the client remembers the epoch of `subscribed`, sends it
// back as `since_epoch` when it resumes, follows the gateway's head on `recovered: false` (reloading
// from REST once, never in a loop), and the optimistic create watches from the created offset.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Connection, RuncastClient } from "../../dist/index.js";
import { Clock, fakeWebSocketClass, flush } from "./fakes.mjs";

const OLD = "2026-11-01T10:00:00.123456789Z";
const NEW = "2026-12-01T21:00:00.5Z";

function setup(extra = {}) {
  const clock = new Clock();
  const WS = fakeWebSocketClass();
  const conn = new Connection({
    gatewayUrl: "http://gw.test:8080", token: "t0", WebSocket: WS, transport: "websocket",
    random: () => 0.5, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: () => clock.now, ...extra,
  });
  return { clock, WS, conn };
}

async function opened(WS, i = 0) {
  await flush();
  WS.sockets[i].open();
  await flush();
  return WS.sockets[i];
}

test("the epoch of `subscribed` is sent back as since_epoch with since_offset on every resume", async () => {
  const { clock, WS, conn } = setup();
  const got = [];
  conn.subscribe("executions", { onEvent: (m) => got.push(m.offset) });
  const ws = await opened(WS);
  assert.deepEqual(ws.subscribes(), [{ type: "subscribe", channel: "executions", id: "executions" }], "live: no position yet");
  ws.deliver({ type: "subscribed", channel: "executions", offset: 9, epoch: OLD });
  ws.event("executions", 10);
  ws.drop(1006);
  await clock.advance(500);
  const ws2 = await opened(WS, 1);
  assert.deepEqual(ws2.subscribes(), [{ type: "subscribe", channel: "executions", id: "executions", since_offset: 10, since_epoch: OLD }]);
  ws2.deliver({ type: "subscribed", channel: "executions", offset: 12, epoch: OLD, recovered: true, replayed: 2 });
  ws2.event("executions", 11);
  ws2.event("executions", 12);
  assert.deepEqual(got, [10, 11, 12]);
  // A resync names the position and its epoch.
  ws2.deliver({ type: "resync", channel: "executions", offset: 12, epoch: OLD });
  assert.deepEqual(ws2.sent.at(-1), { type: "subscribe", channel: "executions", id: "executions", since_offset: 12, since_epoch: OLD });
  conn.close();
});

test("a caller's own position can carry its epoch (sinceEpoch)", async () => {
  const { WS, conn } = setup();
  conn.subscribe("agents", { sinceOffset: 7, sinceEpoch: OLD, onEvent() {} });
  const ws = await opened(WS);
  assert.deepEqual(ws.subscribes(), [{ type: "subscribe", channel: "agents", id: "agents", since_offset: 7, since_epoch: OLD }]);
  conn.close();
});

test("recovered:false (epoch_changed) reloads once with the reason, resumes in the new epoch, and never loops", async () => {
  const { WS, conn } = setup();
  const got = [];
  const causes = [];
  conn.subscribe("workflows:wf", {
    sinceOffset: 5000, sinceEpoch: OLD,
    onEvent: (m) => got.push(m.offset),
    onReset: async (reason, cause) => (causes.push([reason, cause]), 3),
  });
  const ws = await opened(WS);
  assert.deepEqual(ws.subscribes()[0], { type: "subscribe", channel: "workflows:wf", id: "workflows:wf", since_offset: 5000, since_epoch: OLD });
  ws.deliver({ type: "subscribed", channel: "workflows:wf", offset: 5, epoch: NEW, recovered: false, reason: "epoch_changed", replayed: 0 });
  await flush();
  assert.deepEqual(causes, [["not_recovered", "epoch_changed"]]);
  assert.deepEqual(ws.sent.at(-1), { type: "unsubscribe", channel: "workflows:wf" });
  ws.deliver({ type: "unsubscribed", channel: "workflows:wf" });
  assert.deepEqual(ws.sent.at(-1), { type: "subscribe", channel: "workflows:wf", id: "workflows:wf", since_offset: 3, since_epoch: NEW });
  // Even if that is refused too (e.g. the read model still counts in the old stream), the
  // subscription goes live from the head instead of reloading forever.
  ws.deliver({ type: "subscribed", channel: "workflows:wf", offset: 6, epoch: NEW, recovered: false, reason: "epoch_changed", replayed: 0 });
  await flush();
  assert.equal(causes.length, 1, "one reload");
  ws.event("workflows:wf", 7);
  assert.deepEqual(got, [7], "events of the new stream are not mistaken for duplicates of the old offset");
  assert.equal(conn.stats.resets, 1);
  conn.close();
});

test("a reload that fails is retried with backoff, events dropped meanwhile; one cut short by a reconnect runs after the next subscribed", async () => {
  const { clock, WS, conn } = setup();
  const got = [];
  let calls = 0;
  let apiDown = true;
  const warn = console.warn;
  console.warn = () => {};
  try {
    conn.subscribe("executions", {
      sinceOffset: 50,
      onEvent: (m) => got.push(m.offset),
      onReset: async () => {
        calls++;
        if (apiDown) throw new Error("the API is unreachable");
        return 60;
      },
    });
    const ws = await opened(WS);
    ws.deliver({ type: "subscribed", channel: "executions", offset: 70, epoch: NEW, recovered: false, reason: "too_old", replayed: 0 });
    await flush();
    assert.equal(calls, 1);
    ws.event("executions", 71);
    assert.deepEqual(got, [], "not live while the reload is owed: 51..70 would be missing from what it shows");
    await clock.advance(1000);
    assert.equal(calls, 2, "retried after a backoff");
    // The connection drops while the API is still down: the cursor is at the head (70), the
    // reload is still owed.
    ws.drop(1006);
    await clock.advance(1000);
    const ws2 = await opened(WS, 1);
    assert.equal(ws2.subscribes()[0].since_offset, 70);
    ws2.deliver({ type: "subscribed", channel: "executions", offset: 72, epoch: NEW, recovered: true, replayed: 2 });
    await flush();
    assert.equal(calls, 3, "the owed reload runs after the resume");
    ws2.event("executions", 72);
    assert.deepEqual(got, [], "still not live");
    apiDown = false;
    await clock.advance(4000);
    assert.equal(calls, 4);
    assert.deepEqual(ws2.sent.at(-1), { type: "unsubscribe", channel: "executions" });
    ws2.deliver({ type: "unsubscribed", channel: "executions" });
    assert.deepEqual(ws2.sent.at(-1), { type: "subscribe", channel: "executions", id: "executions", since_offset: 60, since_epoch: NEW });
    ws2.deliver({ type: "subscribed", channel: "executions", offset: 72, epoch: NEW, recovered: true, replayed: 12 });
    ws2.event("executions", 61);
    assert.deepEqual(got, [61], "from the reload's position on");
    assert.equal(conn.stats.reloadFailures, 3);
    assert.equal(conn.stats.resets, 2);
  } finally {
    console.warn = warn;
    conn.close();
  }
});

test("recovered:false without onReset continues live from the gateway's head", async () => {
  const { WS, conn } = setup();
  const got = [];
  conn.subscribe("executions", { sinceOffset: 900, onEvent: (m) => got.push(m.offset) });
  const ws = await opened(WS);
  ws.deliver({ type: "subscribed", channel: "executions", offset: 20, epoch: NEW, recovered: false, reason: "too_old", replayed: 0 });
  ws.event("executions", 21);
  assert.deepEqual(got, [21]);
  assert.equal(conn.subscriptions()[0].epoch, NEW);
  conn.close();
});

test("SSE resumes with Last-Event-ID and since_epoch", async () => {
  const WS = fakeWebSocketClass();
  const requests = [];
  const encoder = new TextEncoder();
  let push;
  const fakeFetch = async (url, init = {}) => {
    requests.push({ url: String(url), headers: init.headers ?? {} });
    if (String(url).endsWith("/healthz")) return new Response("ok");
    const body = new ReadableStream({ start(c) { push = (text) => c.enqueue(encoder.encode(text)); } });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  };
  const conn = new Connection({ gatewayUrl: "ws://gw:1", token: "tok", WebSocket: WS, fetch: fakeFetch });
  const subscribed = [];
  conn.subscribe("executions", { sinceOffset: 4, sinceEpoch: OLD, onEvent() {}, onSubscribed: (m) => subscribed.push(m) });
  await flush();
  WS.sockets[0].refuse();
  await flush();
  const sse = requests.find((r) => r.url.includes("/sse"));
  assert.equal(sse.url, `http://gw:1/sse?channel=executions&since_epoch=${encodeURIComponent(OLD)}`);
  assert.equal(sse.headers["last-event-id"], "4");
  push(`event: subscribed\ndata: ${JSON.stringify({ type: "subscribed", channel: "executions", offset: 4, epoch: OLD, recovered: true, replayed: 0 })}\n\n`);
  await flush();
  assert.equal(subscribed.length, 1);
  assert.equal(conn.subscriptions()[0].epoch, OLD);
  conn.close();
});

test("create then watch: the watch starts at the created execution's offset − 1, no snapshot", async () => {
  const WS = fakeWebSocketClass();
  const created = { execution_id: "e-new", tenant_id: "t", workflow_id: "wf", status: "pending", version: 1, offset: 42, progress: 0, current_step: "", steps: [], approvals: [], labels: {}, error: "" };
  const client = new RuncastClient({
    gatewayUrl: "ws://gw", apiUrl: "http://api/api/v1", token: "tok", transport: "websocket", WebSocket: WS,
    fetch: async () => new Response(JSON.stringify(created), { status: 201 }),
  });
  const { execution, watch } = await client.createAndWatchExecution({ workflow_id: "wf" });
  assert.equal(execution.execution_id, "e-new");
  const ws = await opened(WS);
  assert.deepEqual(ws.subscribes(), [{ type: "subscribe", channel: "executions:e-new", id: "executions:e-new", since_offset: 41 }]);
  // The created event itself is the first delivery; the store keeps the newest version.
  ws.event("executions:e-new", 42, { execution_id: "e-new", version: 1, status: "pending" });
  ws.event("executions:e-new", 43, { execution_id: "e-new", version: 2, status: "running" });
  assert.equal(client.store.getExecution("e-new").status, "running");
  watch.stop();
  client.close();
});
