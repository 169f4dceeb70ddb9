// @runcast/client/react in headless Chromium against the real stack: hooks render live data,
// subscribe in effects and unsubscribe in their cleanup.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync, mkdtempSync, copyFileSync, rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { Stack, mintToken, waitFor } from "../harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
let stack, server, browser, origin, token, out;

before(async () => {
  out = mkdtempSync(join(tmpdir(), "runcast-react-"));
  await build({ entryPoints: [join(here, "react-app/main.jsx")], bundle: true, format: "esm", outfile: join(out, "app.js"), jsx: "automatic", define: { "process.env.NODE_ENV": '"development"' }, logLevel: "warning" });
  copyFileSync(join(here, "react-app/index.html"), join(out, "index.html"));
  server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = path === "/" ? "index.html" : path.slice(1);
    let body;
    try {
      body = readFileSync(join(out, file));
    } catch {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": file.endsWith(".js") ? "text/javascript" : "text/html" }).end(body);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${server.address().port}`;
  stack = new Stack();
  stack.corsOrigins = origin;
  await stack.start();
  token = mintToken();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium", args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
});

after(async () => {
  await browser?.close().catch(() => {});
  server?.close();
  server?.closeAllConnections?.();
  await stack?.stop();
  if (out) rmSync(out, { recursive: true, force: true });
});

test("React hooks: live rows filtered in render, one execution with logs, unsubscribe on unmount", { timeout: 90000 }, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const workflow = `react-${Date.now()}`;
  await page.goto(`${origin}/?${new URLSearchParams({ token, gateway: stack.gatewayUrl, api: stack.apiUrl, workflow })}`);
  await page.waitForSelector('#state[data-status="live"]', { timeout: 20000 });
  const rest = (path, body) => fetch(`${stack.apiUrl}${path}`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify(body) }).then((r) => r.json());
  const a = await rest("/executions", { workflow_id: workflow });
  const b = await rest("/executions", { workflow_id: workflow });
  await rest("/executions", { workflow_id: "someone-else" });
  // pending rows are filtered out in render (statuses: running, completed)
  stack.cli(["exec", "status", a.execution_id, "running"]);
  await page.waitForSelector(`#rows li[data-id="${a.execution_id}"][data-status="running"]`, { timeout: 10000 });
  assert.equal(await page.$(`#rows li[data-id="${b.execution_id}"]`), null, "pending: filtered out");
  stack.cli(["exec", "status", b.execution_id, "running"]);
  stack.cli(["exec", "status", b.execution_id, "completed"]);
  await page.waitForSelector(`#rows li[data-id="${b.execution_id}"][data-status="completed"]`, { timeout: 10000 });
  assert.equal(await page.$$eval("#rows li", (l) => l.length), 2, "only this workflow's running/completed executions");
  // useExecution: state and logs
  await page.evaluate((id) => window.setDetail(id), a.execution_id);
  stack.cli(["logs", "append", a.execution_id, "hello from the agent"]);
  await page.waitForSelector('#detail .log:text("hello from the agent")', { timeout: 10000 });
  assert.equal(await page.getAttribute("#detail", "data-status"), "running");
  const channels = () => page.evaluate(() => window.runcast.connection.subscriptions().map((s) => s.channel).sort());
  assert.deepEqual(await channels(), ["agents", `executions:${a.execution_id}`, `logs:${a.execution_id}`, `workflows:${workflow}`]);
  // unmount: effects' cleanups unsubscribe
  await page.evaluate(() => { window.setShown(false); window.setDetail(""); });
  await waitFor("every subscription released", async () => (await channels()).length === 0, 5000);
  assert.deepEqual(errors, []);
});
