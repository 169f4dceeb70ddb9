// The login box and the connection's state: the indicator in the header, the stale banner while
// the live connection is down, the notice when it changes transport, and a rejected token
// (forgotten, the login box back with why). Also a link that points elsewhere than this
// deployment trusts.
import { RuncastApiError, secondsUntilRetry, type ConnectionState, type RuncastClient } from "@runcast/client";
import type { App } from "./app.js";
import { $ } from "./dom.js";
import { ago } from "./format.js";
import { TOKEN_KEY, type Targets } from "./settings.js";

/** The link names a gateway or API this deployment does not: say so, send nothing. */
export function refuseLink(t: Extract<Targets, { ok: false }>) {
  $("#login").hidden = true;
  $("#app").hidden = true;
  const conn = $("#conn");
  conn.dataset.status = "offline";
  $(".text", conn).textContent = "Not connected";
  $("#blocked-message").textContent =
    `This link points the dashboard${t.name === "gateway" ? "'s live connection" : "'s API calls"} at ${t.origin} (${t.name}=${t.value}), ` +
    `which this gateway does not name; not sending your token there.`;
  $<HTMLAnchorElement>("#blocked-home").href = location.pathname;
  $("#blocked").hidden = false;
}

/** Why the API or the gateway refused the token, from the SDK's errors; undefined for anything
 * else (network, 5xx, draining: those are retried). REST: a `RuncastApiError` with status 401.
 * Gateway: the connection state's last error — WebSocket close 4001 (token expired), or an SSE
 * stream answered 401 (a WebSocket upgrade refused with 401 is invisible to browsers; `auto`
 * then falls back to SSE, which shows it). */
function tokenRejection(err: unknown): string | undefined {
  if (err instanceof RuncastApiError || (err as RuncastApiError)?.name === "RuncastApiError") {
    const e = err as RuncastApiError;
    return e.status === 401 ? e.message || "unauthenticated" : undefined;
  }
  return undefined;
}
function connectionRejection(s: ConnectionState): string | undefined {
  const why = s.status === "reconnecting" ? s.lastError : s.status === "offline" ? s.reason : undefined;
  if (!why) return undefined;
  if (/\bclosed 4001\b/.test(why)) return "the token expired";
  const sse = why.match(/\bsse \S*: 401\b(.*)$/);
  if (sse) {
    try {
      return JSON.parse(sse[1]!).error?.message || "unauthenticated";
    } catch {
      return "unauthenticated";
    }
  }
  return undefined;
}

/** The login box, with why it is shown (a rejected token) when there is a reason. */
export function showLogin(message = "") {
  const error = $("#login-error");
  error.textContent = message;
  error.hidden = !message;
  const conn = $("#conn");
  if (conn.dataset.status !== "rejected") {
    conn.dataset.status = "offline";
    $(".text", conn).textContent = "Not signed in";
  }
  $("#login").hidden = false;
  $<HTMLInputElement>("#login-token").focus();
}

export interface ConnectionView {
  /** For every SDK promise: a 401 rejects the token, anything else is `otherwise`'s. */
  onFailure(otherwise?: (err: Error) => void): (err: Error) => void;
  /** The stale banner (and `body[data-stale]`), brought up to date; `staleChanged` when it flips. */
  renderStale(): void;
}

export function createConnectionView(app: Pick<App, "client" | "schedule" | "showNotice">, staleChanged: () => void): ConnectionView {
  const { client, schedule, showNotice } = app;
  // --- a rejected token: forgotten (a reload does not reuse it), the connection closed, and the
  // login box back with the reason
  let rejected: string | undefined;
  const rejectToken = (why: string) => {
    if (rejected !== undefined) return;
    rejected = why;
    sessionStorage.removeItem(TOKEN_KEY);
    client.close();
    $("#app").hidden = true;
    renderConn();
    showLogin(`Token rejected: ${why}. Enter a new token to continue.`);
  };
  /** For every SDK promise: a 401 rejects the token, anything else is `otherwise`'s. */
  const onFailure = (otherwise?: (err: Error) => void) => (err: Error) => {
    const why = tokenRejection(err);
    if (why !== undefined) rejectToken(why);
    else otherwise?.(err);
  };

  // --- connection indicator
  const conn = $("#conn");
  const renderConn = () => {
    const s = client.state;
    if (rejected !== undefined) {
      conn.dataset.status = "rejected";
      $(".text", conn).textContent = "Token rejected";
      conn.title = rejected;
      return;
    }
    const why = connectionRejection(s);
    if (why !== undefined) {
      rejectToken(why);
      return;
    }
    conn.dataset.status = s.status;
    let text: string;
    switch (s.status) {
      case "live": text = `Live (${s.transport})`; break;
      case "connecting": text = "Connecting…"; break;
      case "reconnecting":
        conn.dataset.attempt = String(s.attempt);
        text = `Reconnecting — attempt ${s.attempt}, next try in ${secondsUntilRetry(s)} s`;
        break;
      case "offline": text = `Offline (${s.reason})`; break;
    }
    $(".text", conn).textContent = text;
    conn.title = s.status === "reconnecting" && s.lastError ? s.lastError : "";
  };
  client.connection.onStateChange(renderConn);
  setInterval(() => client.state.status === "reconnecting" && renderConn(), 1000);
  addEventListener("online", () => client.connection.retryNow());
  renderConn();

  // --- stale: the live connection is down, so what the page shows may be out of date
  let wasLive = false;
  let staleSince: number | undefined;
  const renderStale = () => {
    const live = client.state.status === "live";
    if (live) {
      wasLive = true;
      staleSince = undefined;
    } else if (wasLive && staleSince === undefined) staleSince = Date.now();
    const stale = staleSince !== undefined && rejected === undefined;
    const was = document.body.dataset.stale === "true";
    document.body.dataset.stale = String(stale);
    const banner = $("#stale");
    banner.hidden = !stale;
    if (stale) {
      banner.textContent =
        `Live updates are paused (${client.state.status === "offline" ? "offline" : "reconnecting"}): what you see is as of ` +
        `${new Date(staleSince!).toLocaleTimeString()} (${ago(new Date(staleSince!).toISOString(), Date.now())}) and may be out of date.`;
    }
    if (was !== stale) staleChanged();
  };
  client.connection.onStateChange(() => schedule(renderStale));
  client.on("transport", (c) => {
    if (c.from) showNotice(`Live connection moved from ${c.from} to ${c.to}${c.reason ? ` (${c.reason})` : ""}.`);
  });

  return { onFailure, renderStale };
}
