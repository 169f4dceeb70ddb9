import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement as h } from "react";
import { renderToString } from "react-dom/server";
import { RuncastClient } from "../../dist/index.js";
import { RuncastProvider, useExecutions, useConnectionState, useExecution } from "../../dist/react.js";

test("hooks read the store through useSyncExternalStore and filter in render", () => {
  const client = new RuncastClient({ gatewayUrl: "ws://gw", apiUrl: "http://api", token: "t", WebSocket: class {}, fetch: async () => { throw new Error("no network in this test"); } });
  const e = (id, status) => ({ execution_id: id, workflow_id: "wf", status, version: 1, created_at: id, steps: [], approvals: [], labels: {} });
  client.store.loadExecutions([e("a", "running"), e("b", "failed")]);
  client.store.appendLogs("a", [{ line_number: 1, text: "hello" }]);
  function Table() {
    const rows = useExecutions({ statuses: ["running"] });
    const state = useConnectionState();
    const { execution, logs } = useExecution("a");
    return h("div", null, `${state.status}|${rows.map((r) => r.execution_id).join(",")}|${execution?.status}|${logs[0]?.text}`);
  }
  const html = renderToString(h(RuncastProvider, { client }, h(Table)));
  assert.match(html, /connecting\|a\|running\|hello/);
});
