// The REST client's commands send what the API expects: the body fields, and `request_id` only
// when the caller gave one (safe retries); API errors arrive typed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RestClient, RuncastApiError } from "../../dist/index.js";

function recording(answer = { status: 200, body: { execution_id: "e1", status: "cancelled" } }) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, method: init.method, body: init.body === undefined ? undefined : JSON.parse(init.body) });
    return new Response(JSON.stringify(answer.body), { status: answer.status });
  };
  return { calls, client: new RestClient({ apiUrl: "http://api.test/api/v1/", token: "t", fetch }) };
}

test("commands send request_id only when given", async () => {
  const { calls, client } = recording();
  await client.cancelExecution("e1", "superseded");
  await client.cancelExecution("e1", "superseded", { requestId: "cancel-1" });
  await client.pauseExecution("e 2", "", { requestId: "pause-1" });
  await client.resumeExecution("e1");
  await client.resolveApproval("e1", "deploy", true, "go", { requestId: "approve-1" });
  assert.deepEqual(calls, [
    { url: "http://api.test/api/v1/executions/e1/cancel", method: "POST", body: { reason: "superseded" } },
    { url: "http://api.test/api/v1/executions/e1/cancel", method: "POST", body: { reason: "superseded", request_id: "cancel-1" } },
    { url: "http://api.test/api/v1/executions/e%202/pause", method: "POST", body: { reason: "", request_id: "pause-1" } },
    { url: "http://api.test/api/v1/executions/e1/resume", method: "POST", body: { reason: "" } },
    { url: "http://api.test/api/v1/executions/e1/approvals/deploy", method: "POST", body: { granted: true, comment: "go", request_id: "approve-1" } },
  ]);
});

test("a refused command is a typed error with the API's code and message", async () => {
  const { client } = recording({ status: 400, body: { error: { code: "INVALID_ARGUMENT", message: "request_id contains ' '" } } });
  await assert.rejects(client.cancelExecution("e1", "", { requestId: "a b" }), (err) => {
    assert.ok(err instanceof RuncastApiError);
    assert.equal(err.status, 400);
    assert.equal(err.code, "INVALID_ARGUMENT");
    assert.match(err.message, /request_id/);
    return true;
  });
});

test("the client's commands retry transient failures under one request id and give up on the rest", async () => {
  const { Clock, flush } = await import("./fakes.mjs");
  const { RuncastClient } = await import("../../dist/index.js");
  const clock = new Clock();
  const answers = [];
  const bodies = [];
  const fetch = async (url, init) => {
    bodies.push({ url, body: JSON.parse(init.body) });
    const next = answers.shift();
    if (next === "network") throw new TypeError("fetch failed");
    return new Response(JSON.stringify(next.body), { status: next.status });
  };
  const client = new RuncastClient({
    apiUrl: "http://api.test/api/v1", gatewayUrl: "ws://gw.test", token: "t", fetch,
    setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: () => clock.now, random: () => 0.5,
  });
  const paused = { execution_id: "e1", status: "paused", version: 4 };
  const unavailable = { status: 503, body: { error: { code: "UNAVAILABLE", message: "NATS is down" } } };

  const tenantBusy = { status: 429, body: { error: { code: "RESOURCE_EXHAUSTED", message: "the tenant has its maximum" } } };

  // Unreachable, then 503, then 429, then the answer: four tries, one request id, the answer in the
  // store.
  answers.push("network", unavailable, tenantBusy, { status: 200, body: paused });
  const done = client.pauseExecution("e1", "lunch");
  for (let i = 0; i < 5; i++) await clock.advance(5000);
  assert.deepEqual(await done, paused);
  assert.equal(bodies.length, 4);
  const ids = new Set(bodies.map((b) => b.body.request_id));
  assert.equal(ids.size, 1, "every try carries the same request id");
  assert.match([...ids][0], /^[A-Za-z0-9_-]{1,64}$/);
  assert.equal(client.store.getExecution("e1")?.status, "paused");

  // A refusal is the caller's at once; so is the 4th transient failure. The caller's id is kept.
  bodies.length = 0;
  answers.push({ status: 409, body: { error: { code: "FAILED_PRECONDITION", message: "already paused" } } });
  await assert.rejects(client.pauseExecution("e1", "", { requestId: "pause-2" }), /already paused/);
  assert.deepEqual(bodies.map((b) => b.body.request_id), ["pause-2"]);
  bodies.length = 0;
  answers.push(unavailable, unavailable, unavailable, unavailable);
  const failing = assert.rejects(client.cancelExecution("e1", "stop", { requestId: "cancel-1" }), (err) => err.status === 503);
  for (let i = 0; i < 5; i++) await clock.advance(5000);
  await failing;
  await flush();
  assert.deepEqual(bodies.map((b) => b.body.request_id), ["cancel-1", "cancel-1", "cancel-1", "cancel-1"]);
});
