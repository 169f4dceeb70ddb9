import { test } from "node:test";
import assert from "node:assert/strict";
import { Connection, ChannelCursor, secondsUntilRetry } from "../../dist/index.js";
import { Clock, fakeWebSocketClass, flush, jwt } from "./fakes.mjs";

function setup(extra = {}) {
  const clock = new Clock();
  const WS = fakeWebSocketClass();
  const states = [];
  const conn = new Connection({
    gatewayUrl: "http://gw.test:8080", token: "t0", WebSocket: WS, transport: "websocket",
    random: () => 0.5, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: () => clock.now, ...extra,
  });
  conn.onStateChange((s) => states.push(s));
  return { clock, WS, conn, states };
}

test("the cursor drops duplicates and older offsets, and resumes from the last one", () => {
  const c = new ChannelCursor();
  assert.equal(c.resumeFrom, undefined);
  assert.deepEqual([5, 6, 6, 4, 7].map((o) => c.accept(o)), [true, true, false, false, true]);
  assert.equal(c.resumeFrom, 7);
  assert.equal(c.duplicates, 2);
  const from = new ChannelCursor(10);
  assert.equal(from.accept(10), false);
  assert.equal(from.accept(11), true);
});

test("connects, subscribes, exposes each offset once, and resumes after a drop with since_offset", async () => {
  const { clock, WS, conn, states } = setup();
  const got = [];
  conn.subscribe("executions", { sinceOffset: 2, onEvent: (m) => got.push(m.offset) });
  await flush();
  assert.equal(conn.state.status, "connecting");
  assert.match(WS.sockets[0].url, /^ws:\/\/gw\.test:8080\/ws\?token=t0$/);
  assert.equal(WS.sockets[0].protocol, "runcast.v1.json");
  WS.sockets[0].open();
  await flush();
  assert.deepEqual(conn.state, { status: "live", transport: "websocket" });
  assert.deepEqual(WS.sockets[0].subscribes(), [{ type: "subscribe", channel: "executions", id: "executions", since_offset: 2 }]);
  const ws = WS.sockets[0];
  ws.deliver({ type: "subscribed", channel: "executions", offset: 9, recovered: true, replayed: 2 });
  for (const o of [3, 4, 4, 2, 5]) ws.event("executions", o);
  assert.deepEqual(got, [3, 4, 5]);
  assert.equal(conn.stats.duplicatesDropped, 2);

  ws.drop(1006);
  assert.equal(conn.state.status, "reconnecting");
  assert.equal(conn.state.attempt, 1);
  assert.equal(conn.state.delayMs, 500); // random 0.5 × 1 s
  assert.equal(secondsUntilRetry(conn.state, clock.now), 1);
  await clock.advance(499);
  assert.equal(WS.sockets.length, 1, "no retry before the delay");
  await clock.advance(1);
  assert.equal(WS.sockets.length, 2);
  WS.sockets[1].refuse();
  await flush();
  assert.equal(conn.state.status, "reconnecting");
  assert.equal(conn.state.attempt, 2);
  assert.equal(conn.state.delayMs, 1000); // 0.5 × 2 s
  await clock.advance(1000);
  const ws2 = WS.sockets[2];
  ws2.open();
  await flush();
  assert.equal(conn.state.status, "live");
  assert.deepEqual(ws2.subscribes(), [{ type: "subscribe", channel: "executions", id: "executions", since_offset: 5 }]);
  ws2.event("executions", 5); // replay overlap
  ws2.event("executions", 6);
  assert.deepEqual(got, [3, 4, 5, 6]);
  // attempts start over once live
  ws2.drop();
  assert.equal(conn.state.attempt, 1);
  assert.deepEqual(states.map((s) => s.status), ["connecting", "live", "reconnecting", "reconnecting", "live", "reconnecting"]);
  conn.close();
  assert.equal(conn.state.status, "offline");
});

test("recovered:false reloads over REST and resubscribes from its as_of_offset", async () => {
  const { WS, conn } = setup();
  const got = [];
  let resets = 0;
  conn.subscribe("workflows:wf", { sinceOffset: 100, onEvent: (m) => got.push(m.offset), onReset: async () => (resets++, 40) });
  await flush();
  const ws = WS.sockets[0];
  ws.open();
  await flush();
  ws.deliver({ type: "subscribed", channel: "workflows:wf", offset: 50, recovered: false, replayed: 0 });
  await flush();
  assert.equal(resets, 1);
  ws.event("workflows:wf", 51); // live events while resetting are not exposed: the replay brings them
  assert.deepEqual(ws.sent.at(-1), { type: "unsubscribe", channel: "workflows:wf" });
  ws.deliver({ type: "unsubscribed", channel: "workflows:wf" });
  assert.deepEqual(ws.sent.at(-1), { type: "subscribe", channel: "workflows:wf", id: "workflows:wf", since_offset: 40 });
  ws.deliver({ type: "subscribed", channel: "workflows:wf", offset: 51, recovered: true, replayed: 11 });
  for (let o = 41; o <= 51; o++) ws.event("workflows:wf", o);
  assert.deepEqual(got, Array.from({ length: 11 }, (_, i) => 41 + i));
});

test("resync resumes from the offset the gateway names", async () => {
  const { WS, conn } = setup();
  const got = [];
  conn.subscribe("agents", { onEvent: (m) => got.push(m.offset) });
  await flush();
  const ws = WS.sockets[0];
  ws.open();
  await flush();
  assert.deepEqual(ws.subscribes()[0], { type: "subscribe", channel: "agents", id: "agents" });
  ws.event("agents", 7);
  ws.deliver({ type: "resync", channel: "agents", offset: 7 });
  assert.deepEqual(ws.sent.at(-1), { type: "subscribe", channel: "agents", id: "agents", since_offset: 7 });
  ws.event("agents", 8);
  assert.deepEqual(got, [7, 8]);
});

test("reconnect (drain) reconnects at once; unsubscribe stops delivery", async () => {
  const { clock, WS, conn } = setup();
  const got = [];
  const sub = conn.subscribe("executions", { onEvent: (m) => got.push(m.offset) });
  await flush();
  WS.sockets[0].open();
  await flush();
  WS.sockets[0].deliver({ type: "reconnect" });
  assert.equal(conn.state.status, "reconnecting");
  assert.equal(conn.state.delayMs, 0);
  await clock.advance(0);
  WS.sockets[1].open();
  await flush();
  sub.unsubscribe();
  assert.deepEqual(WS.sockets[1].sent.at(-1), { type: "unsubscribe", channel: "executions" });
  WS.sockets[1].event("executions", 3);
  assert.deepEqual(got, []);
});

test("reconnect (drain) with retry_after_ms waits that long, then resumes from the last offset", async () => {
  const { clock, WS, conn } = setup();
  conn.subscribe("executions", { onEvent: () => {} });
  await flush();
  WS.sockets[0].open();
  await flush();
  WS.sockets[0].event("executions", 41);
  WS.sockets[0].deliver({ type: "reconnect", retry_after_ms: 1200 });
  assert.equal(conn.state.status, "reconnecting");
  assert.equal(conn.state.delayMs, 1200);
  await clock.advance(1199);
  assert.equal(WS.sockets.length, 1, "not before the hinted delay");
  await clock.advance(1);
  assert.equal(WS.sockets.length, 2);
  WS.sockets[1].open();
  await flush();
  assert.equal(WS.sockets[1].subscribes()[0].since_offset, 41);
});

test("the token provider is called again before expiry and the new token is sent in band", async () => {
  const clock = new Clock();
  let n = 0;
  const tokens = [];
  const provider = () => {
    const t = jwt({ sub: "u", exp: Math.floor(clock.now / 1000) + 100, n: n++ });
    tokens.push(t);
    return t;
  };
  const WS = fakeWebSocketClass();
  const conn = new Connection({ gatewayUrl: "ws://gw", token: provider, WebSocket: WS, transport: "websocket", setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: () => clock.now });
  conn.connect();
  await flush();
  WS.sockets[0].open();
  await flush();
  assert.equal(tokens.length, 1);
  await clock.advance(79_000);
  assert.equal(tokens.length, 1, "not before 80 % of the lifetime");
  await clock.advance(1_500);
  assert.equal(tokens.length, 2);
  assert.deepEqual(WS.sockets[0].sent.at(-1), { type: "auth", token: tokens[1] });
  assert.equal(WS.sockets.length, 1, "no reconnect needed");
  conn.close();
});

test("gives up after maxAttempts: offline", async () => {
  const { clock, WS, conn } = setup({ maxAttempts: 2 });
  conn.connect();
  await flush();
  WS.sockets[0].refuse();
  await flush();
  await clock.advance(60_000);
  WS.sockets[1].refuse();
  await flush();
  await clock.advance(60_000);
  WS.sockets[2].refuse();
  await flush();
  assert.equal(conn.state.status, "offline");
});

test("subscriptions made while connecting share one connection, and its answers reach them", async () => {
  // Two subscribes before the socket opens used to start two opens; the socket that opened last
  // became the transport whatever its generation, and everything it said was ignored.
  const { WS, conn } = setup();
  const first = conn.subscribe("executions", { onEvent: () => {} });
  await flush();
  const second = conn.subscribe("executions:bad id", { onEvent: () => {} });
  await flush();
  assert.equal(WS.sockets.length, 1, "one connection while the first is opening");
  WS.sockets[0].open();
  await flush();
  assert.deepEqual(conn.state, { status: "live", transport: "websocket" });
  assert.deepEqual(WS.sockets[0].subscribes().map((m) => m.channel), ["executions", "executions:bad id"]);
  WS.sockets[0].deliver({ type: "subscribed", channel: "executions", id: "executions", offset: 0 });
  WS.sockets[0].deliver({ type: "error", channel: "executions:bad id", id: "executions:bad id", code: "unknown_channel", message: "bad" });
  await flush();
  await first.ready;
  await assert.rejects(second.ready, (e) => e.code === "unknown_channel");
  assert.equal(conn.stats.connects, 1);
  conn.close();
});

test("a transport that opens after its connection attempt was superseded is closed, not kept", async () => {
  const { WS, conn } = setup();
  const sub = conn.subscribe("executions", { onEvent: () => {} });
  await flush();
  conn.close(); // supersedes the attempt in flight
  WS.sockets[0].open();
  await flush();
  assert.equal(WS.sockets[0].readyState, 3, "the late socket is closed");
  assert.equal(conn.stats.connects, 0);
  assert.equal(sub.status, "pending");
});

test("falls back to SSE when the WebSocket is refused, with the same events", async () => {
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
  const got = [];
  conn.subscribe("executions", { sinceOffset: 4, filters: { statuses: ["running"] }, onEvent: (m) => got.push(m.offset) });
  await flush();
  WS.sockets[0].refuse();
  await flush();
  assert.deepEqual(conn.state, { status: "live", transport: "sse" });
  const sse = requests.find((r) => r.url.includes("/sse"));
  assert.equal(sse.url, "http://gw:1/sse?channel=executions&statuses=running");
  assert.equal(sse.headers.authorization, "Bearer tok");
  assert.equal(sse.headers["last-event-id"], "4");
  const frame = (o) => `id: ${o}\nevent: execution.progress\ndata: ${JSON.stringify({ type: "execution.progress", channel: "executions", offset: o, data: { offset: o } })}\n\n`;
  push(": heartbeat\n\n" + frame(4) + frame(5).slice(0, 20));
  await flush();
  push(frame(5).slice(20) + frame(6));
  await flush();
  assert.deepEqual(got, [5, 6]);
  conn.close();
});

test("no network (navigator.onLine false): offline, no retries, reconnects on `online`", async () => {
  const listeners = new Map();
  const hadNavigator = Object.getOwnPropertyDescriptor(globalThis, "navigator");
  Object.defineProperty(globalThis, "navigator", { value: { onLine: true }, configurable: true, writable: true });
  globalThis.addEventListener = (type, fn) => listeners.set(type, fn);
  globalThis.removeEventListener = (type) => listeners.delete(type);
  try {
    const { clock, WS, conn } = setup();
    conn.connect();
    await flush();
    WS.sockets[0].open();
    await flush();
    globalThis.navigator.onLine = false;
    listeners.get("offline")(); // the socket itself may not notice for minutes
    assert.deepEqual(conn.state, { status: "offline", reason: "no network" });
    await clock.advance(120_000);
    assert.equal(WS.sockets.length, 1, "no retries while offline");
    globalThis.navigator.onLine = true;
    listeners.get("online")();
    await flush();
    assert.equal(WS.sockets.length, 2);
    WS.sockets[1].open();
    await flush();
    assert.equal(conn.state.status, "live");
    conn.close();
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    if (hadNavigator) Object.defineProperty(globalThis, "navigator", hadNavigator);
    else delete globalThis.navigator;
  }
});
