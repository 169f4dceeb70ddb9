// Settings and trust: what the link (fragment or query) and sessionStorage say, what the serving
// gateway's /config.json says, and which origins the token may be sent to.
// --- the URL: settings from the fragment (`#token=…&api=…`) or the query; the token leaves the
// address bar before anything else runs. A fragment that is a route (`#/executions/…`) is kept.
const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(/^#[^/]/.test(location.hash) ? location.hash.slice(1) : "");
const params = new Map<string, string>();
for (const source of [query, fragment]) for (const [k, v] of source) if (v) params.set(k, v);
{
  const urlToken = params.get("token");
  if (urlToken) sessionStorage.setItem("runcast.token", urlToken);
  if (query.has("token") || fragment.has("token")) {
    query.delete("token");
    fragment.delete("token");
    const search = query.size ? `?${query}` : "";
    const hash = /^#[^/]/.test(location.hash) ? (fragment.size ? `#${fragment}` : "") : location.hash;
    history.replaceState(history.state, "", `${location.pathname}${search}${hash}`);
  }
}

export const TOKEN_KEY = "runcast.token";
export function setting(name: string, fallback: string): string {
  const value = params.get(name);
  if (value) {
    sessionStorage.setItem(`runcast.${name}`, value);
    return value;
  }
  return sessionStorage.getItem(`runcast.${name}`) ?? fallback;
}

/** What the serving gateway says about its deployment (nothing when served from elsewhere). */
export interface ServedConfig {
  api?: string | null;
  /** Further origins (or URLs) the token may be sent to: a list or a comma-separated string. */
  allowed_origins?: string[] | string | null;
}

export async function servedConfig(): Promise<ServedConfig> {
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    return res.ok ? ((await res.json()) as ServedConfig) : {};
  } catch {
    return {};
  }
}

/** `scheme://host[:port]` of a URL (ws → http, wss → https, as the browser's origins compare);
 * undefined for anything that is not an http(s)/ws(s) URL. Relative URLs resolve against the page. */
export function originOf(url: string): string | undefined {
  try {
    const u = new URL(url, location.href);
    const scheme = ({ "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" } as Record<string, string>)[u.protocol];
    return scheme ? `${scheme}//${u.host}` : undefined;
  } catch {
    return undefined;
  }
}

/** Where the dashboard connects, or why it will not. */
export type Targets =
  | { ok: true; gateway: string; api: string }
  | { ok: false; name: "gateway" | "api"; value: string; origin: string };

/** The gateway and API to use: a `gateway` / `api` from the link (or remembered from an earlier
 * link in this tab) only when its origin is one this deployment trusts with the token. */
export function resolveTargets(served: ServedConfig): Targets {
  const guessedApi = location.port === "8080" ? `${location.protocol}//${location.hostname}:8081/api/v1` : `${location.origin}/api/v1`;
  const defaults = { gateway: location.origin.replace(/^http/, "ws"), api: served.api || guessedApi };
  const trusted = new Set<string>([location.origin]);
  const add = (url: string | null | undefined) => {
    const o = url ? originOf(url.trim()) : undefined;
    if (o) trusted.add(o);
  };
  add(defaults.api);
  const extra = served.allowed_origins;
  for (const o of Array.isArray(extra) ? extra : typeof extra === "string" ? extra.split(",") : []) add(o);
  const chosen = { ...defaults };
  for (const name of ["gateway", "api"] as const) {
    const key = `runcast.${name}`;
    const value = params.get(name) || sessionStorage.getItem(key);
    if (!value) continue;
    const origin = originOf(value);
    if (!origin || !trusted.has(origin)) {
      sessionStorage.removeItem(key); // never remembered, so the plain page works again
      return { ok: false, name, value, origin: origin ?? value };
    }
    sessionStorage.setItem(key, value);
    chosen[name] = value;
  }
  return { ok: true, ...chosen };
}

/** Sends nothing (and so no token) to an origin outside `trusted`: a second line of defence under
 * the link check, for every request and WebSocket the SDK makes. */
export function guardedTransports(trusted: Set<string>) {
  const check = (url: string) => {
    const o = originOf(url);
    if (!o || !trusted.has(o)) throw new Error(`not sending the token to ${o ?? url}`);
  };
  const guardedFetch = ((input: RequestInfo | URL, init?: RequestInit) => {
    try {
      check(typeof input === "string" ? input : input instanceof URL ? input.href : input.url);
    } catch (err) {
      return Promise.reject(err);
    }
    return fetch(input, init);
  }) as typeof fetch;
  const GuardedWebSocket = function (url: string, protocols?: string | string[]) {
    check(url);
    return new WebSocket(url, protocols);
  } as unknown as typeof WebSocket;
  return { fetch: guardedFetch, WebSocket: GuardedWebSocket };
}
