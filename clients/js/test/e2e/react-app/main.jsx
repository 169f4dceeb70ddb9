// A minimal React app on @runcast/client/react, for the browser test of the hooks.
import { createRoot } from "react-dom/client";
import { useState } from "react";
import { RuncastClient } from "../../../src/index.ts";
import { RuncastProvider, useExecutions, useExecution, useConnectionState, useAgents } from "../../../src/react.ts";

const params = new URLSearchParams(location.search);
const client = new RuncastClient({ gatewayUrl: params.get("gateway"), apiUrl: params.get("api"), token: params.get("token") });
window.runcast = client;

function Table({ workflowId }) {
  const rows = useExecutions({ workflowId, statuses: ["running", "completed"] });
  return <ul id="rows">{rows.map((e) => <li key={e.execution_id} data-id={e.execution_id} data-status={e.status}>{e.execution_id} {e.status} {e.progress}%</li>)}</ul>;
}

function Detail({ id }) {
  const { execution, logs } = useExecution(id);
  return <div id="detail" data-status={execution?.status ?? ""}>{logs.map((l) => <div className="log" key={l.line_number}>{l.text}</div>)}</div>;
}

function Agents() {
  const agents = useAgents();
  return <div id="agents" data-count={agents.length} />;
}

function App() {
  const state = useConnectionState();
  const [shown, setShown] = useState(true);
  const [detail, setDetail] = useState("");
  window.setShown = setShown;
  window.setDetail = setDetail;
  return (
    <div>
      <div id="state" data-status={state.status}>{state.status}</div>
      {shown && <Table workflowId={params.get("workflow")} />}
      {shown && <Agents />}
      {detail && <Detail id={detail} />}
    </div>
  );
}

createRoot(document.getElementById("root")).render(<RuncastProvider client={client}><App /></RuncastProvider>);
