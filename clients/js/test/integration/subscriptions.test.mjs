// @runcast/client against the real gateway (a stack from ../harness.mjs): a subscription the
// gateway refuses is raised (rejected promise, `error` event) over WebSocket and over SSE, and
// transport changes are reported — a fallback to SSE behind a proxy that refuses upgrades, and the
// move back to WebSocket once upgrades pass again, with every event delivered once (compared with
// the REST history).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { Stack, mintToken, waitFor, within } from "../harness.mjs";
import { RuncastClient, RuncastSubscriptionError } from "../../dist/index.js";

let stack;
let token;
before(async () => {
  stack = await new Stack().start();
  token = mintToken();
});
after(async () => {
  await stack?.stop();
});

const WS = globalThis.WebSocket;

for (const transport of ["websocket", "sse"]) {
  test(`${transport}: a typo in the channel rejects the subscription and fires 'error'; the others go on`, { timeout: 60000 }, async (t) => {
    assert.ok(WS, "run with node --experimental-websocket (Node 20) or Node 22+");
    const client = new RuncastClient({ gatewayUrl: stack.gatewayUrl, apiUrl: stack.apiUrl, token, WebSocket: WS, transport });
    t.after(() => client.close());
    const errors = [];
    client.on("error", (e) => errors.push(e));
    const watch = client.watchExecutions();
    // What the client knows, for an answer that never comes.
    const seen = () => ({
      state: client.state,
      stats: client.connection.stats,
      subscriptions: client.connection.subscriptions().map((s) => [s.channel, s.status]),
      errors: errors.map((e) => [e.channel, e.code]),
    });
    const typo = client.connection.subscribe("executoins", { onEvent: () => {} });
    await assert.rejects(within("the refusal of the typo", typo.ready, 15000, seen), (e) => {
      assert.ok(e instanceof RuncastSubscriptionError, String(e));
      assert.equal(e.code, "unknown_channel");
      assert.equal(e.channel, "executoins");
      assert.match(e.message, /^subscription to executoins refused \(unknown_channel\): unknown channel 'executoins'/);
      return true;
    });
    // an id the gateway cannot take: the watch's `subscribed` rejects
    const bad = client.watchExecution("not a valid id!", { logs: false });
    await assert.rejects(
      within("the refusal of the invalid id", bad.subscribed, 15000, seen),
      (e) => e instanceof RuncastSubscriptionError && e.channel === "executions:not a valid id!",
    );
    assert.deepEqual(errors.map((e) => e.channel).sort(), ["executions:not a valid id!", "executoins"]);
    // the good subscription on the same connection is confirmed and live
    await within("the good subscription's confirmation", watch.subscribed, 15000, seen);
    assert.deepEqual(client.state, { status: "live", transport });
    const created = await within("the create call", client.rest.createExecution({ workflow_id: `typo-${transport}` }));
    await waitFor("the created execution live in the store", () => client.store.getExecution(created.execution_id), 10000);
    assert.equal(client.connection.stats.connects, 1, "no reconnect for a refused subscription");
    assert.deepEqual(client.connection.subscriptions().map((s) => s.channel), ["executions"]);
    watch.stop();
  });
}

/** A reverse proxy to the gateway: plain HTTP (streamed) always; WebSocket upgrades refused (403)
 * while `refuse` is true, passed through otherwise. */
async function upgradeProxy(targetHttp) {
  const target = new URL(targetHttp);
  const state = { refuse: true, refused: 0, passed: 0 };
  const server = http.createServer((req, res) => {
    const upstream = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
    res.on("close", () => upstream.destroy());
  });
  server.on("upgrade", (req, socket, head) => {
    if (state.refuse) {
      state.refused++;
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
      return;
    }
    state.passed++;
    const up = net.connect(Number(target.port), target.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (head?.length) up.write(head);
      socket.pipe(up).pipe(socket);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  state.url = `ws://127.0.0.1:${server.address().port}`;
  state.close = () => { server.close(); server.closeAllConnections?.(); };
  return state;
}

test("transport events: WebSocket refused → SSE (with the reason); upgrades pass again → back on WebSocket, every event once", { timeout: 120000 }, async (t) => {
  const proxy = await upgradeProxy(stack.gatewayHttp);
  const client = new RuncastClient({ gatewayUrl: proxy.url, apiUrl: stack.apiUrl, token, WebSocket: WS, upgradeIntervalMs: 1000 });
  t.after(() => { client.close(); proxy.close(); });
  const changes = [];
  client.on("transport", (c) => changes.push(c));
  const workflow = `transport-${Date.now()}`;
  const exposed = [];
  const watch = client.watchExecutions({ workflowId: workflow, onEvent: (e, m) => exposed.push({ id: e.event_id, offset: m.offset }) });
  await watch.ready;
  await waitFor("live over SSE", () => client.state.status === "live" && client.state.transport === "sse", 20000);
  await watch.subscribed;
  assert.equal(changes.length, 1);
  assert.equal(changes[0].from, undefined);
  assert.equal(changes[0].to, "sse");
  assert.match(changes[0].reason, /^websocket: (refused|timed out)/); // why WebSocket was not used

  const drive = async () => {
    const e = await client.rest.createExecution({ workflow_id: workflow });
    stack.cli(["exec", "status", e.execution_id, "running"]);
    stack.cli(["exec", "status", e.execution_id, "completed"]);
    return e;
  };
  const first = await drive();
  await waitFor("SSE events", () => client.store.getExecution(first.execution_id)?.status === "completed", 10000);
  // tries go on failing while the proxy refuses; then they pass and the connection moves over
  await waitFor("a refused upgrade try", () => proxy.refused >= 2, 10000);
  assert.equal(client.state.transport, "sse");
  proxy.refuse = false;
  await waitFor("back on WebSocket", () => client.state.status === "live" && client.state.transport === "websocket", 20000);
  assert.deepEqual(changes.slice(1), [{ from: "sse", to: "websocket" }]);
  assert.equal(client.connection.stats.upgrades, 1);
  const second = await drive();
  await waitFor("WebSocket events", () => client.store.getExecution(second.execution_id)?.status === "completed", 10000);

  // every event of the workflow once, in order, across the move
  let rest = [];
  await waitFor("events = REST history", async () => {
    rest = (await stack.listAll("/events", token, { workflow_id: workflow })).filter((e) => !e.type.startsWith("agent.") && e.type !== "log.appended").sort((a, b) => a.offset - b.offset);
    return rest.length === 6 && exposed.length === 6;
  }, 30000, 200).catch((err) => { throw new Error(`${err.message}: rest ${rest.length}, client ${exposed.length}`); });
  assert.deepEqual(exposed.map((e) => e.id), rest.map((e) => e.event_id));
  watch.stop();
});
