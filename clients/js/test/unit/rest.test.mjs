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
