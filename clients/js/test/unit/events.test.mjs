// Subscription errors are raised by default (an `error` event, a rejected `ready`, the console
// when nobody listens) and transport changes are observable (`transport` events), over both
// transports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Connection, RuncastClient, RuncastSubscriptionError } from "../../dist/index.js";
import { Clock, fakeWebSocketClass, flush } from "./fakes.mjs";

function setup(extra = {}) {
  const clock = new Clock();
  const WS = fakeWebSocketClass();
  const conn = new Connection({
    gatewayUrl: "http://gw.test:8080", token: "t0", WebSocket: WS, transport: "websocket",
    random: () => 0.5, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: () => clock.now, ...extra,
  });
  return { clock, WS, conn };
}

/** Runs `fn` with console.error recorded (and silenced). */
async function capturingConsole(fn) {
  const logged = [];
  const original = console.error;
  console.error = (...args) => logged.push(args.join(" "));
  try {
    await fn(logged);
  } finally {
    console.error = original;
  }
  return logged;
}

const refusal = (channel) => ({
  type: "error", id: channel, code: "unknown_channel",
  message: `unknown channel '${channel}': executions, executions:{id}, workflows:{id}, approvals, logs:{execution_id}, agents, agents:{id}`,
});

test("a refused subscription (typo in the channel) rejects its ready, fires `error`, and is not resubscribed", async () => {
  const { clock, WS, conn } = setup();
  const errors = [];
  conn.on("error", (e) => errors.push(e));
  const sub = conn.subscribe("executoins", { onEvent: () => {} });
  const ok = conn.subscribe("executions", { onEvent: () => {} });
  await flush();
  WS.sockets[0].open();
  await flush();
  WS.sockets[0].deliver(refusal("executoins"));
  WS.sockets[0].deliver({ type: "subscribed", channel: "executions", offset: 3 });
  await assert.rejects(sub.ready, (e) => {
    assert.ok(e instanceof RuncastSubscriptionError);
    assert.equal(e.code, "unknown_channel");
    assert.equal(e.channel, "executoins");
    assert.match(e.message, /subscription to executoins refused \(unknown_channel\): unknown channel 'executoins'/);
    return true;
  });
  assert.equal((await ok.ready).offset, 3);
  assert.equal(errors.length, 1);
  assert.equal(errors[0], sub.error);
  assert.equal(sub.status, "closed");
  assert.deepEqual(conn.subscriptions().map((s) => s.channel), ["executions"]);
  // a reconnect resubscribes only what the gateway accepted
  WS.sockets[0].drop();
  await clock.advance(1000);
  WS.sockets[1].open();
  await flush();
  assert.deepEqual(WS.sockets[1].subscribes().map((m) => m.channel), ["executions"]);
  sub.unsubscribe(); // harmless after the refusal
  conn.close();
});

test("nobody listening and no onError: the refusal goes to console.error; with onError or a listener it does not", async () => {
  const logged = await capturingConsole(async (logged) => {
    const { WS, conn } = setup();
    const unheard = conn.subscribe("agent", { onEvent: () => {} });
    const seen = [];
    const handled = conn.subscribe("logs", { onEvent: () => {}, onError: (m) => seen.push(m.code) });
    await flush();
    WS.sockets[0].open();
    await flush();
    WS.sockets[0].deliver(refusal("agent"));
    WS.sockets[0].deliver(refusal("logs"));
    await assert.rejects(unheard.ready, /unknown_channel/);
    await assert.rejects(handled.ready, /unknown_channel/);
    assert.deepEqual(seen, ["unknown_channel"]);
    assert.equal(logged.length, 1, logged.join("\n"));
    assert.match(logged[0], /^runcast: subscription to agent refused \(unknown_channel\)/);
    // once something listens to `error`, the console stays quiet
    const heard = [];
    conn.on("error", (e) => heard.push(e.channel));
    const third = conn.subscribe("approval", { onEvent: () => {} });
    await flush();
    WS.sockets[0].deliver(refusal("approval"));
    await assert.rejects(third.ready);
    assert.deepEqual(heard, ["approval"]);
    conn.close();
  });
  assert.equal(logged.length, 1);
});

test("a transient error (unavailable) is retried, not raised", async () => {
  const { clock, WS, conn } = setup();
  const errors = [];
  conn.on("error", (e) => errors.push(e));
  const sub = conn.subscribe("executions", { onEvent: () => {} });
  await flush();
  const ws = WS.sockets[0];
  ws.open();
  await flush();
  ws.deliver({ type: "error", id: "executions", code: "unavailable", message: "NATS is not answering" });
  await clock.advance(1000);
  assert.equal(ws.subscribes().length, 2, "subscribed again after a backoff");
  ws.deliver({ type: "subscribed", channel: "executions", offset: 9 });
  assert.equal((await sub.ready).offset, 9);
  assert.deepEqual(errors, []);
  conn.close();
});

test("the client: `error` event and a rejected `watch.subscribed` for a refused channel; REST load unaffected", async () => {
  const WS = fakeWebSocketClass();
  const fakeFetch = async (url) => {
    if (String(url).includes("/executions/")) return new Response(JSON.stringify({ execution_id: "x", version: 1, offset: 4, status: "running", steps: [], approvals: [], labels: {} }), { status: 200 });
    return new Response(JSON.stringify({ items: [], next_cursor: "", as_of_offset: 7 }), { status: 200 });
  };
  const client = new RuncastClient({ gatewayUrl: "ws://gw", apiUrl: "http://api/api/v1", token: "tok", WebSocket: WS, fetch: fakeFetch, transport: "websocket" });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const watch = client.watchExecutions({ workflowId: "bad workflow" });
  await watch.ready; // the REST list loaded
  await flush();
  WS.sockets[0].open();
  await flush();
  const sent = WS.sockets[0].subscribes()[0];
  assert.equal(sent.channel, "workflows:bad workflow");
  WS.sockets[0].deliver({ type: "error", id: sent.id, code: "unknown_channel", message: "channel 'workflows:bad workflow': an id is 1-64 of [A-Za-z0-9_-]" });
  await assert.rejects(watch.subscribed, (e) => e instanceof RuncastSubscriptionError && e.code === "unknown_channel");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].channel, "workflows:bad workflow");
  // a good watch confirms
  const good = client.watchExecution("x", { logs: false });
  await good.ready;
  await flush();
  const g = WS.sockets[0].subscribes().at(-1);
  WS.sockets[0].deliver({ type: "subscribed", channel: g.channel, offset: 4 });
  await good.subscribed;
  client.close();
});

/** A fetch that answers /healthz, and /sse streams the test pushes frames into (or a status). */
function sseServer({ refuse } = {}) {
  const encoder = new TextEncoder();
  const streams = [];
  const requests = [];
  const fetch = async (url, init = {}) => {
    requests.push({ url: String(url), headers: init.headers ?? {} });
    if (String(url).endsWith("/healthz")) return new Response("ok");
    const channel = new URL(String(url)).searchParams.get("channel");
    if (refuse?.[channel]) return new Response(JSON.stringify({ error: refuse[channel] }), { status: 400, headers: { "content-type": "application/json" } });
    const stream = { channel, aborted: false, push: undefined };
    init.signal?.addEventListener("abort", () => (stream.aborted = true));
    const body = new ReadableStream({ start(c) { stream.push = (text) => c.enqueue(encoder.encode(text)); } });
    streams.push(stream);
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  };
  const frame = (channel, o) => `id: ${o}\nevent: execution.progress\ndata: ${JSON.stringify({ type: "execution.progress", channel, offset: o, data: { offset: o } })}\n\n`;
  return { fetch, streams, requests, frame };
}

test("SSE: a 400 for a channel fails that subscription (no reconnect loop), the others stay live", async () => {
  const sse = sseServer({ refuse: { executoins: { code: "unknown_channel", message: "unknown channel 'executoins'" } } });
  const { conn } = setup({ transport: "sse", fetch: sse.fetch });
  const errors = [];
  conn.on("error", (e) => errors.push(e));
  const bad = conn.subscribe("executoins", { onEvent: () => {} });
  const got = [];
  conn.subscribe("executions", { onEvent: (m) => got.push(m.offset) });
  await assert.rejects(bad.ready, (e) => e.code === "unknown_channel" && e.channel === "executoins");
  await flush();
  assert.equal(conn.state.status, "live");
  assert.equal(errors.length, 1);
  sse.streams[0].push(sse.frame("executions", 1));
  await flush();
  assert.deepEqual(got, [1]);
  assert.equal(sse.requests.filter((r) => r.url.includes("channel=executoins")).length, 1, "asked once");
  conn.close();
});

test("transport events: WebSocket refused → SSE (with the reason), the periodic try moves back to WebSocket from the last offset", async () => {
  const sse = sseServer();
  const { clock, WS, conn } = setup({ transport: "auto", fetch: sse.fetch, upgradeIntervalMs: 30000 });
  const changes = [];
  conn.on("transport", (c) => changes.push(c));
  const got = [];
  conn.subscribe("executions", { onEvent: (m) => got.push(m.offset) });
  await flush();
  WS.sockets[0].refuse();
  await flush();
  assert.deepEqual(conn.state, { status: "live", transport: "sse" });
  assert.equal(changes.length, 1);
  assert.equal(changes[0].from, undefined);
  assert.equal(changes[0].to, "sse");
  assert.match(changes[0].reason, /^websocket: refused/);
  sse.streams[0].push(sse.frame("executions", 5) + sse.frame("executions", 6));
  await flush();
  assert.deepEqual(got, [5, 6]);

  // the first try fails: still SSE, tried again later
  await clock.advance(30000);
  assert.equal(WS.sockets.length, 2);
  WS.sockets[1].refuse();
  await flush();
  assert.equal(conn.state.transport, "sse");
  assert.equal(changes.length, 1);
  await clock.advance(30000);
  assert.equal(WS.sockets.length, 3);
  const ws = WS.sockets[2];
  ws.open();
  await flush();
  assert.deepEqual(conn.state, { status: "live", transport: "websocket" });
  assert.deepEqual(changes.slice(1), [{ from: "sse", to: "websocket" }]);
  assert.equal(sse.streams[0].aborted, true, "the SSE stream is closed");
  assert.deepEqual(ws.subscribes(), [{ type: "subscribe", channel: "executions", id: "executions", since_offset: 6 }]);
  ws.event("executions", 6); // overlap: dropped
  ws.event("executions", 7);
  assert.deepEqual(got, [5, 6, 7]);
  assert.equal(conn.stats.upgrades, 1);

  // the WebSocket drops and is refused on the reconnect: SSE again, reported
  ws.drop();
  await clock.advance(1000);
  WS.sockets[3].refuse();
  await flush();
  assert.equal(conn.state.transport, "sse");
  assert.equal(changes.at(-1).from, "websocket");
  assert.equal(changes.at(-1).to, "sse");
  conn.close();
});

test("transport websocket only: no upgrade tries, one transport event at the first connect", async () => {
  const { clock, WS, conn } = setup();
  const changes = [];
  conn.on("transport", (c) => changes.push(c));
  conn.subscribe("executions", { onEvent: () => {} });
  await flush();
  WS.sockets[0].open();
  await flush();
  WS.sockets[0].drop();
  await clock.advance(1000);
  WS.sockets[1].open();
  await flush();
  assert.deepEqual(changes, [{ from: undefined, to: "websocket" }]);
  await clock.advance(120000);
  assert.equal(WS.sockets.length, 2);
  conn.close();
});
