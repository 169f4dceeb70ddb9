// @runcast/client against the real stack (NATS + PostgreSQL + the three services, started by
// ../harness.mjs): resume across a gateway restart with no gap and no duplicate, compared with the
// history from REST; SSE fallback when a proxy refuses WebSocket upgrades.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Stack, mintToken, waitFor } from "../harness.mjs";
import { RuncastClient } from "../../dist/index.js";

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

/** Every execution event in the REST history after `afterOffset`, in offset order. */
async function history(afterOffset, params = {}) {
  const items = await stack.listAll("/events", token, params);
  return items
    .filter((e) => e.offset > afterOffset && !e.type.startsWith("agent.") && e.type !== "log.appended")
    .sort((a, b) => a.offset - b.offset);
}

test("gateway killed and restarted mid-stream: the client resumes, its events equal the REST history", { timeout: 120000 }, async (t) => {
  assert.ok(WS, "run with node --experimental-websocket (Node 20) or Node 22+");
  const client = new RuncastClient({ gatewayUrl: stack.gatewayUrl, apiUrl: stack.apiUrl, token: () => token, WebSocket: WS });
  t.after(() => client.close());
  const states = [];
  client.connection.onStateChange((s) => states.push(s.status === "reconnecting" ? `reconnecting#${s.attempt}` : s.status));
  const exposed = [];
  const watch = client.watchExecutions({ onEvent: (event, message) => exposed.push({ id: event.event_id, offset: message.offset, type: event.type }) });
  await watch.ready;
  const start = (await stack.listAll("/executions", token)).length === 0 ? 0 : undefined;
  assert.equal(start, 0, "a fresh stack");
  await waitFor("live", () => client.state.status === "live");

  const sim = stack.simulate({ agents: 3, rate: 8 });
  await waitFor("30 events before the restart", () => exposed.length >= 30, 30000);
  const beforeKill = exposed.length;
  await stack.kill("ws-gateway", { hard: true });
  await waitFor("reconnecting", () => client.state.status === "reconnecting", 10000);
  // events keep being published while the gateway is down
  const offsetDown = (await history(0)).at(-1)?.offset ?? 0;
  await waitFor("events published while the gateway is down", async () => ((await history(0)).at(-1)?.offset ?? 0) > offsetDown + 20, 30000, 200);
  stack.startService("ws-gateway", stack.serviceEnv["ws-gateway"]);
  await stack.waitReady(stack.gatewayAddr);
  await waitFor("live again", () => client.state.status === "live", 70000);
  await waitFor("events after the restart", () => exposed.length > beforeKill + 30, 30000);
  // a second, graceful restart (drain: `reconnect`, close 1001)
  await stack.restartGateway();
  await waitFor("live after the drain", () => client.state.status === "live" && client.connection.stats.connects >= 3, 70000);
  const n = exposed.length;
  await waitFor("events after the drain", () => exposed.length > n + 20, 30000);
  await stack.kill("simulate");
  sim.removeAllListeners();

  // quiescence: the history (persisted) and the client agree. DESIGN §4: state transitions, steps
  // and approvals are always delivered, in order; `execution.progress` may be coalesced (the newest
  // value per execution replaces older undelivered ones), so a progress event may be missing only
  // when a later event of the same execution was delivered.
  const coalescable = (e) => e.type === "execution.progress";
  let rest = [];
  const compare = () => {
    const got = new Map(exposed.map((e) => [e.offset, e]));
    const restOffsets = new Set(rest.map((e) => e.offset));
    const lastOffsetOf = new Map();
    for (const e of rest) if (got.has(e.offset)) lastOffsetOf.set(e.execution_id, e.offset);
    const missing = rest.filter((e) => !got.has(e.offset) && !(coalescable(e) && (lastOffsetOf.get(e.execution_id) ?? 0) > e.offset));
    const extra = exposed.filter((e) => !restOffsets.has(e.offset));
    const coalesced = rest.filter((e) => !got.has(e.offset)).length - missing.length;
    return { missing, extra, coalesced };
  };
  await waitFor("the client's events to match the REST history", async () => {
    rest = await history(0);
    const { missing, extra } = compare();
    return rest.length > 0 && missing.length === 0 && extra.length === 0 && rest.at(-1).offset === exposed.at(-1).offset;
  }, 30000, 300).catch((err) => {
    const { missing, extra } = compare();
    throw new Error(`${err.message}; rest ${rest.length} client ${exposed.length}; missing ${missing.slice(0, 10).map((e) => `${e.offset}:${e.type}`)}; extra ${extra.slice(0, 10).map((e) => e.offset)}`);
  });
  const { coalesced } = compare();
  const always = rest.filter((e) => !coalescable(e)).map((e) => e.event_id);
  const got = new Set(exposed.map((e) => e.id));
  const alwaysSet = new Set(always);
  assert.deepEqual(exposed.map((e) => e.id).filter((id) => alwaysSet.has(id)), always, "every non-progress event, in order");
  assert.equal(got.size, exposed.length, "no duplicate");
  for (let i = 1; i < exposed.length; i++) assert.ok(exposed[i].offset > exposed[i - 1].offset, "offsets increase");
  assert.ok(states.includes("reconnecting#1"), `states: ${states.join(" ")}`);
  console.log(`# events: ${rest.length} in history, ${exposed.length} exposed, ${coalesced} progress events coalesced by the gateway`);
  // the store agrees with the REST list
  // Fetched again on every try: the api's sweeper may still expire an approval simulate left
  // open, which the live store sees before the read model has it.
  let list = [];
  await waitFor("store = REST list", async () => {
    list = await stack.listAll("/executions", token);
    return list.every((e) => client.store.getExecution(e.execution_id)?.version === e.version);
  }, 10000, 200).catch((err) => {
    const differ = list.filter((e) => client.store.getExecution(e.execution_id)?.version !== e.version).slice(0, 5);
    throw new Error(`${err.message}: ${differ.map((e) => `${e.execution_id} rest=${e.version} store=${client.store.getExecution(e.execution_id)?.version}`).join("; ")}`);
  });
  watch.stop();
  client.close();
});

test("SSE fallback: a proxy that refuses WebSocket upgrades, same events over SSE, resumed across a gateway restart", { timeout: 120000 }, async (t) => {
  // A reverse proxy to the gateway that forwards plain HTTP (streaming) and refuses upgrades.
  const target = new URL(stack.gatewayHttp);
  let upgradesRefused = 0;
  const proxy = http.createServer((req, res) => {
    const upstream = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
    res.on("close", () => upstream.destroy());
  });
  proxy.on("upgrade", (req, socket) => {
    upgradesRefused++;
    socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  const proxyUrl = `ws://127.0.0.1:${proxy.address().port}`;
  const client = new RuncastClient({ gatewayUrl: proxyUrl, apiUrl: stack.apiUrl, token, WebSocket: WS });
  t.after(() => { client.close(); proxy.close(); proxy.closeAllConnections?.(); });
  const workflow = `sse-${Date.now()}`;
  const exposed = [];
  const watch = client.watchExecutions({ workflowId: workflow, onEvent: (e, m) => exposed.push({ id: e.event_id, offset: m.offset }) });
  await watch.ready;
  await waitFor("live over SSE", () => client.state.status === "live", 20000).catch((err) => {
    throw new Error(`${err.message}: ${JSON.stringify(client.state)} ${JSON.stringify(client.connection.stats)} upgrades refused ${upgradesRefused}`);
  });
  assert.equal(client.state.transport, "sse");
  assert.ok(upgradesRefused >= 1);
  const created = [];
  for (let i = 0; i < 3; i++) created.push(await client.createExecution({ workflow_id: workflow }));
  for (const e of created) {
    stack.cli(["exec", "status", e.execution_id, "running"]);
    stack.cli(["exec", "progress", e.execution_id, "50"]);
    stack.cli(["exec", "status", e.execution_id, "completed"]);
  }
  let rest = [];
  await waitFor("SSE events = REST history", async () => {
    rest = await history(0, { workflow_id: workflow });
    return rest.length === 12 && exposed.length === 12;
  }, 30000, 200).catch((err) => { throw new Error(`${err.message}: rest ${rest.length}, client ${exposed.length}`); });
  assert.deepEqual(exposed.map((e) => e.id), rest.map((e) => e.event_id));
  for (const e of created) assert.equal(client.store.getExecution(e.execution_id).status, "completed");

  // the gateway restarts under the SSE stream: it resumes with Last-Event-ID, no gap, no duplicate
  await stack.kill("ws-gateway");
  await waitFor("reconnecting", () => client.state.status === "reconnecting", 10000);
  const during = await client.rest.createExecution({ workflow_id: workflow });
  stack.cli(["exec", "status", during.execution_id, "running"]);
  stack.startService("ws-gateway", stack.serviceEnv["ws-gateway"]);
  await stack.waitReady(stack.gatewayAddr);
  await waitFor("live over SSE again", () => client.state.status === "live" && client.state.transport === "sse", 70000);
  stack.cli(["exec", "status", during.execution_id, "cancelled"]);
  await waitFor("SSE events = REST history after the restart", async () => {
    rest = await history(0, { workflow_id: workflow });
    return rest.length === 15 && exposed.length === 15;
  }, 30000, 200).catch((err) => { throw new Error(`${err.message}: rest ${rest.length}, client ${exposed.length}`); });
  assert.deepEqual(exposed.map((e) => e.id), rest.map((e) => e.event_id));
  assert.equal(client.store.getExecution(during.execution_id).status, "cancelled");
  watch.stop();
  client.close();
  await new Promise((r) => proxy.close(r));
});

test("token refresh in band: a connection outlives its first token without reconnecting", { timeout: 60000 }, async (t) => {
  const minted = [];
  const provider = () => {
    const tk = mintToken({ ttlSeconds: 10, sub: "refresher" });
    minted.push(tk);
    return tk;
  };
  const refreshing = new RuncastClient({ gatewayUrl: stack.gatewayUrl, apiUrl: stack.apiUrl, token: provider, WebSocket: WS });
  // control: the same, with a token nobody refreshes — the gateway closes it at expiry (4001)
  const fixed = new RuncastClient({ gatewayUrl: stack.gatewayUrl, apiUrl: stack.apiUrl, token: mintToken({ ttlSeconds: 10, sub: "fixed" }), WebSocket: WS });
  t.after(() => { refreshing.close(); fixed.close(); });
  const workflow = `auth-${Date.now()}`;
  const seen = [];
  const w1 = refreshing.watchExecutions({ workflowId: workflow, onEvent: (e) => seen.push(e.execution_id) });
  const w2 = fixed.watchExecutions({ workflowId: workflow });
  await Promise.all([w1.ready, w2.ready]);
  await waitFor("both live", () => refreshing.state.status === "live" && fixed.state.status === "live", 10000);
  const started = Date.now();
  await waitFor("the unrefreshed connection to be closed at expiry", () => fixed.state.status === "reconnecting", 20000, 100);
  await waitFor("past the first token's expiry", () => Date.now() - started > 3000, 5000, 100);
  assert.ok(minted.length >= 2, `the provider was called again (${minted.length})`);
  assert.equal(refreshing.state.status, "live");
  assert.equal(refreshing.connection.stats.connects, 1, "no reconnect needed");
  const created = await refreshing.rest.request("POST", "/executions", { workflow_id: workflow });
  await waitFor("an event on the refreshed connection", () => seen.includes(created.execution_id), 10000);
  assert.equal(refreshing.connection.stats.connects, 1);
  w1.stop(); w2.stop();
});
