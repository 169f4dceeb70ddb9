// The Runcast dashboard: @runcast/client's store rendered with plain DOM, batched per animation
// frame (only rows whose execution changed are touched), so 1,000 executions updating several
// times a second stay smooth. This file wires the views together and routes; each view is its own
// module: list-view, detail-view, agents-view, connection-view (login and connection state), with
// settings (link, trust), app (what they share), format and dom.
//
// Configuration (in the URL fragment or the query; remembered in sessionStorage for this tab):
//   token    a JWT (or the login box asks for one). Best given in the fragment (`#token=…`, never
//            sent to any server); `?token=` is accepted too. Either way it is taken out of the
//            address bar at once (history.replaceState) and kept in sessionStorage only.
//   gateway  ws-gateway base URL (default: this page's origin, as it is served by the gateway)
//   api      execution-api REST base (default: what the gateway's /config.json names, from
//            RUNCAST_DASHBOARD_API_URL; without it http://<this host>:8081/api/v1 when the page
//            comes from port 8080, otherwise <this origin>/api/v1, as behind an ingress)
//   transport auto | websocket | sse (default auto)
//
// The token goes only to trusted origins: this page's own, the API's that /config.json names, the
// ones it lists in `allowed_origins`, and (when /config.json names no API) the default API above.
// A `gateway` or `api` elsewhere is refused with a message and nothing is sent there. A token the
// API or the gateway rejects (HTTP 401, WebSocket close 4001) is forgotten and the login box shown.
// settings first: it takes the token out of the address bar before anything else runs
import { TOKEN_KEY, guardedTransports, originOf, resolveTargets, servedConfig, setting, type ServedConfig } from "./settings.js";
import { RuncastClient, type Watch } from "@runcast/client";
import { createApp } from "./app.js";
import { createAgentsView } from "./agents-view.js";
import { createConnectionView, refuseLink, showLogin } from "./connection-view.js";
import { createDetailView } from "./detail-view.js";
import { $ } from "./dom.js";
import { createListView } from "./list-view.js";

let started = false;

function start(token: string, served: ServedConfig) {
  const targets = resolveTargets(served);
  if (!targets.ok) {
    refuseLink(targets);
    return;
  }
  started = true;
  const { gateway, api } = targets;
  const transport = setting("transport", "auto") as "auto" | "websocket" | "sse";
  const guard = guardedTransports(new Set([originOf(gateway)!, originOf(api)!]));
  const client = new RuncastClient({ gatewayUrl: gateway, apiUrl: api, token, transport, fetch: guard.fetch, WebSocket: guard.WebSocket });
  (window as any).runcast = client; // for the console and the e2e tests
  $("#login").hidden = true;
  $("#app").hidden = false;

  const app = createApp(client, (otherwise) => connection.onFailure(otherwise));
  client.store.subscribe(() => {
    app.schedule(list.renderTable);
    app.schedule(detail.renderDetail);
  });
  const connection = createConnectionView(app, () => agents.invalidate());
  const agents = createAgentsView(app);
  const list = createListView(app, agents);
  const detail = createDetailView(app);

  const listWatch: Watch = client.watchExecutions();
  void client.watchAgents().ready.catch(app.onFailure());
  client.on("error", (err) => app.showError(err.message));

  // --- the clock: relative times, durations, countdowns and a running timeline, once a second
  function renderClock() {
    const now = Date.now();
    list.renderClock(now);
    detail.renderClock(now);
    connection.renderStale();
    if (agents.shown()) agents.renderAgents();
  }
  setInterval(() => app.schedule(renderClock), 1000);

  // --- routes: `#/` (+ filters), `#/executions/{id}`, `#/agents`
  function route() {
    const m = location.hash.match(/^#\/executions\/([A-Za-z0-9_-]{1,64})$/);
    detail.close();
    const detailId = (app.route.detailId = m?.[1]);
    const agentsView = (app.route.agentsView = location.hash === "#/agents");
    if (!detailId && !agentsView) {
      if (list.readFilters(location.hash || "#/")) list.filtersChanged();
    }
    $("#list-view").hidden = !!detailId || agentsView;
    $("#detail-view").hidden = !detailId;
    $("#agents-view").hidden = !agentsView;
    $("#nav").hidden = false;
    for (const a of document.querySelectorAll<HTMLAnchorElement>("#nav a")) {
      const current = (a.dataset.view === "agents") === agentsView && !detailId;
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (detailId) detail.open(detailId);
    else {
      agents.invalidate();
      list.shown();
    }
  }
  addEventListener("hashchange", route);
  route();
  void listWatch.ready.then(list.loaded, app.onFailure((err) => app.showError(`Loading executions failed: ${err.message}`)));
}

void servedConfig().then((served) => {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $<HTMLInputElement>("#login-token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    // after a rejected token the page starts over (one client per page)
    if (started) location.reload();
    else start(value, served);
  });
  const token = sessionStorage.getItem(TOKEN_KEY) ?? "";
  if (token) start(token, served);
  else {
    const targets = resolveTargets(served);
    if (targets.ok) showLogin();
    else refuseLink(targets);
  }
});
