// The dashboard's views (issue 14) in headless Chromium against a real stack, at 1440, 1024 and
// 390 px: the list (per-status counts, substring search, relative times that move, short ids with
// the full id on hover, agent and labels, filters in the URL restored on load, the empty state,
// cards below 900 px with nothing wider than the screen), the execution page (step timeline with
// bars by start/finish, the event history paged from REST then appended live, input and labels,
// actions enabled only in the states they apply to, an approval deadline counting down), the
// agents page (running executions, offline agents greyed, long-offline ones pruned) and the stale
// state while the live connection is down. Screenshots go to clients/js/test-artifacts/views-*.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync, existsSync, mkdirSync } from "node:fs";
import { join, extname, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Stack, mintToken, waitFor } from "../harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const DIST = resolve(here, "../../../dashboard/dist");
const ARTIFACTS = resolve(here, "../../test-artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const WIDTHS = { wide: { width: 1440, height: 900 }, medium: { width: 1024, height: 768 }, phone: { width: 390, height: 844 } };

let stack, server, browser, origin, token;

function staticServer(root, config) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".map": "application/json" };
  return http.createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/config.json") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-cache" }).end(JSON.stringify(config()));
      return;
    }
    const file = join(root, path === "/" ? "index.html" : path.replace(/^\/+/, ""));
    if (!file.startsWith(root) || !existsSync(file)) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
}

before(async () => {
  assert.ok(existsSync(join(DIST, "index.html")), "build the dashboard first (npm run build:dashboard)");
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  server = staticServer(DIST, () => ({ api: stack?.apiUrl, allowed_origins: [stack?.gatewayHttp] }));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${server.address().port}`;
  stack = new Stack();
  stack.corsOrigins = origin;
  await stack.start();
  token = mintToken({ ttlSeconds: 3600 });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  server?.close();
  server?.closeAllConnections?.();
  await stack?.stop();
});

const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, `views-${name}.png`), fullPage: true });

async function api(method, path, body) {
  const res = await fetch(`${stack.apiUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** Opens the dashboard (gateway and API from the query, the token too) at `route`. */
async function open(viewport, route = "#/", extra = {}) {
  const page = await browser.newPage({ viewport });
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  const q = new URLSearchParams({ token, gateway: stack.gatewayUrl, api: stack.apiUrl, ...extra });
  await page.goto(`${origin}/?${q}${route}`);
  await page.waitForSelector('#conn[data-status="live"]', { timeout: 20000 });
  return page;
}

/** Nothing on the page is wider than the viewport (no sideways scrolling). */
async function assertFits(page, what) {
  const { scroll, width } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: innerWidth }));
  assert.ok(scroll <= width, `${what}: the page is ${scroll} px wide in a ${width} px viewport`);
}

const text = (page, sel) => page.$eval(sel, (e) => e.textContent);

test("list: counts, substring search, relative times, short ids, agent and labels, filters in the URL, empty state; 1440, 1024 and 390 px", { timeout: 120000 }, async () => {
  const deploy = await api("POST", "/executions", { workflow_id: "views-deploy", labels: { trigger: "schedule", team: "infra" } });
  const canary = await api("POST", "/executions", { workflow_id: "views-deploy-canary", labels: { trigger: "webhook" } });
  await api("POST", "/executions", { workflow_id: "views-build", labels: {} });
  stack.cli(["exec", "status", deploy.execution_id, "running", "--agent", "agent-views-1"]);

  // a shared link with a search: restored on load
  const page = await open(WIDTHS.wide, `#/?q=deploy`);
  assert.equal(await page.inputValue("#filter-workflow"), "deploy");
  await page.waitForFunction(() => document.querySelectorAll("#executions tbody tr[data-id]").length === 2, null, { timeout: 10000 });
  const row = `#executions tr[data-id="${deploy.execution_id}"]`;
  await page.waitForSelector(`${row}[data-status="running"]`, { timeout: 10000 });
  // the search matches substrings of the workflow (both deploys, not the build)
  assert.deepEqual((await page.$$eval("#executions tbody tr[data-id] td.workflow", (tds) => tds.map((t) => t.textContent))).sort(), ["views-deploy", "views-deploy-canary"]);
  // per-status counts of what the search matches
  await page.waitForFunction(() => document.querySelector('#filter-statuses label[data-status="running"] .n').textContent === "1", null, { timeout: 5000 });
  assert.equal(await text(page, '#filter-statuses label[data-status="pending"] .n'), "1");
  assert.equal(await text(page, '#filter-statuses label[data-status="completed"] .n'), "0");
  assert.match(await text(page, "#count"), /^2 of \d+ executions$/);
  // short id, the full one on hover
  assert.equal(await text(page, `${row} td.id a`), deploy.execution_id.slice(-8));
  assert.equal(await page.getAttribute(`${row} td.id a`, "title"), deploy.execution_id);
  assert.equal(await page.getAttribute(`${row} td.id a`, "href"), `#/executions/${deploy.execution_id}`);
  assert.equal(await page.isVisible(`${row} td.id button.copy`), true);
  // agent, trigger and labels
  assert.equal(await text(page, `${row} td.agent`), "agent-views-1");
  assert.match(await text(page, `${row} td.labels`), /^schedule.*team=infra/);
  // relative times that move: "N s ago" now, and later than that a moment after
  const started = await text(page, `${row} td.started`);
  assert.match(started, /^(just now|\d+ s ago)$/);
  assert.match(await text(page, `${row} td.updated`), /^(just now|\d+ s ago)$/);
  await page.waitForFunction(([sel, before]) => document.querySelector(sel).textContent !== before, [`${row} td.started`, started], { timeout: 5000 });
  assert.match(await text(page, `${row} td.started`), /^\d+ s ago$/);
  assert.match(await text(page, `${row} td.duration`), /^\d+ (ms|s)$/);
  assert.equal(await page.getAttribute(`${row} td.started`, "title"), new Date(Date.parse((await api("GET", `/executions/${deploy.execution_id}`)).started_at)).toLocaleString("en-US"));
  assert.equal(await page.isVisible("#agents"), true, "the agents panel beside the list at 1440 px");
  await shot(page, "list-1440");

  // a status filter joins the search in the URL; a reload restores both
  await page.check('#filter-statuses input[data-status="running"]');
  await page.waitForFunction(() => document.querySelectorAll("#executions tbody tr[data-id]").length === 1, null, { timeout: 5000 });
  assert.equal(new URL(page.url()).hash, "#/?q=deploy&status=running");
  await page.reload();
  await page.waitForSelector('#conn[data-status="live"]', { timeout: 20000 });
  await page.waitForSelector(`${row}`, { timeout: 10000 });
  assert.equal(await page.inputValue("#filter-workflow"), "deploy");
  assert.equal(await page.isChecked('#filter-statuses input[data-status="running"]'), true);
  await page.waitForFunction(() => document.querySelectorAll("#executions tbody tr[data-id]").length === 1, null, { timeout: 5000 });
  // and the execution page's way back keeps them
  await page.click(`${row} td.id a`);
  await page.waitForSelector("#detail-view:not([hidden])");
  assert.equal(await page.getAttribute("#back", "href"), "#/?q=deploy&status=running");
  await page.click("#back");
  await page.waitForSelector(`${row}`, { timeout: 10000 });
  await page.uncheck('#filter-statuses input[data-status="running"]');

  // an id searches too
  await page.fill("#filter-workflow", canary.execution_id.slice(0, 13));
  await page.waitForFunction((id) => {
    const trs = [...document.querySelectorAll("#executions tbody tr[data-id]")];
    return trs.length === 1 && trs[0].dataset.id === id;
  }, canary.execution_id, { timeout: 5000 });

  // 1024 px: still a table, nothing wider than the screen
  await page.setViewportSize(WIDTHS.medium);
  await page.fill("#filter-workflow", "views");
  await page.waitForFunction(() => document.querySelectorAll("#executions tbody tr[data-id]").length === 3, null, { timeout: 5000 });
  assert.equal(await page.isVisible("#executions thead"), true);
  assert.equal(await page.$eval(row, (tr) => getComputedStyle(tr).display), "table-row");
  await assertFits(page, "list at 1024 px");
  await shot(page, "list-1024");

  // 390 px: cards, with status, workflow, relative times, the search box and the counts usable
  await page.setViewportSize(WIDTHS.phone);
  await page.waitForFunction((sel) => getComputedStyle(document.querySelector(sel)).display === "grid", row, { timeout: 5000 });
  assert.equal(await page.isVisible("#executions thead"), false);
  const card = await page.$eval(row, (tr) => {
    const box = tr.getBoundingClientRect();
    const seen = (sel) => {
      const r = tr.querySelector(sel).getBoundingClientRect();
      return r.width > 0 && r.height > 0 && r.left >= box.left - 1 && r.right <= box.right + 1;
    };
    return { width: box.width, status: seen("td.status .badge"), workflow: seen("td.workflow"), updated: seen("td.updated"), id: seen("td.id a"), text: tr.querySelector("td.status").textContent };
  });
  assert.ok(card.width <= 390 && card.width > 300, `card width ${card.width}`);
  assert.deepEqual([card.status, card.workflow, card.updated, card.id], [true, true, true, true]);
  assert.equal(card.text, "running", "the status reads in full, not a stub");
  const search = await page.$eval("#filter-workflow", (i) => i.getBoundingClientRect().width);
  assert.ok(search >= 300, `search box ${search} px wide`);
  assert.equal(await page.isVisible('#filter-statuses label[data-status="running"] .n'), true);
  await assertFits(page, "list at 390 px");
  await shot(page, "list-390");
  // a tap anywhere on a card opens its execution
  await page.click(`${row} td.workflow`);
  await page.waitForSelector(`#detail-view:not([hidden]) #detail-meta[data-status="running"]`, { timeout: 10000 });
  assert.equal(new URL(page.url()).hash, `#/executions/${deploy.execution_id}`);
  await assertFits(page, "execution page at 390 px");
  await page.click("#back");
  await page.waitForSelector(row, { timeout: 10000 });

  // an empty result says so (and offers the way out)
  await page.fill("#filter-workflow", "no-such-workflow-xyz");
  await page.waitForSelector("#empty:not([hidden])", { timeout: 5000 });
  assert.match(await text(page, "#empty-text"), /^No executions match “no-such-workflow-xyz” \(\d+ in all\)\.$/);
  assert.equal(await page.$$eval("#executions tbody tr[data-id]", (t) => t.length), 0);
  await shot(page, "list-empty-390");
  await page.click("#empty-clear");
  await page.waitForSelector("#empty", { state: "hidden", timeout: 5000 });
  assert.equal(await page.inputValue("#filter-workflow"), "");
  assert.equal(new URL(page.url()).hash, "#/");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("execution page: timeline, events paged then live, input and labels, state-aware actions, approval countdown; 1440, 1024 and 390 px", { timeout: 120000 }, async () => {
  const e = await api("POST", "/executions", { workflow_id: "views-release", labels: { trigger: "manual", env: "staging" }, input: { ref: "main", replicas: 3 } });
  const id = e.execution_id;
  stack.cli(["exec", "status", id, "running", "--agent", "agent-views-2"]);
  stack.cli(["exec", "step", id, "build", "running"]);
  stack.cli(["exec", "step", id, "build", "completed"]);
  stack.cli(["exec", "step", id, "test", "running"]);
  // pages of 3 events, so the history takes a few "load more"
  const page = await open(WIDTHS.wide, `#/executions/${id}`, { events_page: "3" });
  await page.waitForSelector('#detail-meta[data-status="running"]', { timeout: 10000 });
  await page.waitForSelector('#detail-steps li[data-step="test"][data-status="running"] .seg', { timeout: 10000 });

  // the timeline: bars by start/finish, on one axis; the running step grows
  const bars = () => page.$$eval("#detail-steps li", (lis) => Object.fromEntries(lis.map((li) => {
    const seg = li.querySelector(".seg");
    return [li.dataset.step, { left: parseFloat(seg.style.left), width: parseFloat(seg.style.width), text: li.textContent }];
  })));
  const first = await bars();
  assert.match(first.build.text, /^build: completed/);
  assert.match(first.test.text, /^test: running/);
  assert.ok(first.build.left >= 0 && first.test.left >= first.build.left + first.build.width - 0.01, JSON.stringify(first));
  assert.ok(first.test.left + first.test.width <= 100.01);
  await page.waitForFunction(() => {
    const seg = document.querySelector('#detail-steps li[data-step="test"] .seg');
    const build = document.querySelector('#detail-steps li[data-step="build"] .seg');
    return parseFloat(seg.style.width) > 50 && parseFloat(build.style.left) + parseFloat(build.style.width) < 50;
  }, null, { timeout: 10000 });

  // input, labels, agent
  assert.match(await text(page, "#detail-input"), /"replicas": 3/);
  assert.match(await text(page, "#detail-labels"), /trigger=manual.*env=staging|env=staging.*trigger=manual/);
  assert.equal(await text(page, '#detail-facts [data-fact="agent"] dd'), "agent-views-2");
  assert.match(await text(page, '#detail-facts [data-fact="started"] dd'), /^\d{1,2}:\d\d:\d\d( [AP]M)? · (just now|\d+ s ago)$/);

  // actions: running → Pause and Cancel, not Resume
  const enabled = () => page.$$eval("#detail-view [data-action]", (bs) => Object.fromEntries(bs.map((b) => [b.dataset.action, !b.disabled])));
  assert.deepEqual(await enabled(), { pause: true, resume: false, cancel: true });
  assert.match(await page.getAttribute('[data-action="resume"]', "title"), /only a paused execution can be resumed \(it is running\)/);

  // the event history: 3 at a time from REST, every event once, in order
  const rest = (await api("GET", `/events?execution_id=${id}&limit=100`)).items.filter((ev) => ev.type !== "log.appended");
  assert.ok(rest.length >= 5, JSON.stringify(rest.map((ev) => ev.type)));
  await page.waitForFunction(() => document.querySelectorAll("#detail-events tbody tr").length === 3, null, { timeout: 10000 });
  assert.equal(await page.isVisible("#events-more"), true);
  while (await page.isVisible("#events-more")) {
    const n = await page.$$eval("#detail-events tbody tr", (t) => t.length);
    await page.click("#events-more");
    await page.waitForFunction((n) => document.querySelectorAll("#detail-events tbody tr").length > n || document.querySelector("#events-more").hidden, n, { timeout: 10000 });
  }
  const shown = () => page.$$eval("#detail-events tbody tr", (trs) => trs.map((tr) => [tr.dataset.type, Number(tr.dataset.offset)]));
  await page.waitForFunction((n) => document.querySelectorAll("#detail-events tbody tr").length >= n, rest.length, { timeout: 10000 });
  assert.deepEqual((await shown()).slice(0, rest.length), rest.map((ev) => [ev.type, ev.offset]));
  // live: a new event is appended
  stack.cli(["exec", "progress", id, "60", "--step", "test"]);
  await page.waitForSelector('#detail-events tbody tr.live[data-type="execution.progress"]', { timeout: 10000 });
  const all = await shown();
  assert.equal(new Set(all.map(([, o]) => o)).size, all.length, "no event twice");
  await shot(page, "execution-1440");

  // Pause (allowed) → paused: Resume, not Pause
  await page.click('[data-action="pause"]');
  await page.waitForSelector('#detail-meta[data-status="paused"]', { timeout: 10000 });
  await page.waitForFunction(() => document.querySelector('[data-action="pause"]').disabled && !document.querySelector('[data-action="resume"]').disabled, null, { timeout: 5000 });
  assert.deepEqual(await enabled(), { pause: false, resume: true, cancel: true });
  await page.click('[data-action="resume"]');
  await page.waitForSelector('#detail-meta[data-status="running"]', { timeout: 10000 });

  // an approval with a deadline: blocked (no Pause, no Resume), a countdown that moves
  await page.setViewportSize(WIDTHS.medium);
  stack.cli(["exec", "request-approval", id, "go-live", "--reason", "ship it?", "--expires-in", "10m"]);
  await page.waitForSelector('#detail-meta[data-status="blocked"]', { timeout: 10000 });
  const countdown = '#detail-approvals li[data-approval="go-live"] .countdown';
  await page.waitForSelector(countdown, { timeout: 10000 });
  const c0 = await text(page, countdown);
  assert.match(c0, /^expires in (10:00|9:[0-5]\d)$/);
  await page.waitForFunction(([sel, before]) => document.querySelector(sel).textContent !== before, [countdown, c0], { timeout: 5000 });
  assert.match(await text(page, countdown), /^expires in 9:[0-5]\d$/);
  assert.deepEqual(await enabled(), { pause: false, resume: false, cancel: true });
  await assertFits(page, "execution page at 1024 px");
  await shot(page, "execution-approval-1024");
  await page.click('#detail-approvals button[data-approval="go-live"]:text("Approve")');
  await page.waitForSelector('#detail-approvals li:text("go-live: granted")', { timeout: 10000 });
  await page.waitForSelector('#detail-meta[data-status="running"]', { timeout: 10000 });
  assert.equal(await page.$$eval("#detail-approvals .countdown", (c) => c.length), 0);

  // 390 px: the timeline and the actions fit
  await page.setViewportSize(WIDTHS.phone);
  await assertFits(page, "execution page at 390 px");
  const seg = await page.$eval('#detail-steps li[data-step="test"] .seg', (s) => s.getBoundingClientRect().toJSON());
  assert.ok(seg.width > 0 && seg.right <= 390, JSON.stringify(seg));
  assert.equal(await page.isVisible('[data-action="cancel"]'), true);
  await shot(page, "execution-390");

  // Cancel: terminal, every action disabled
  await page.click('[data-action="cancel"]');
  await page.waitForSelector('#detail-meta[data-status="cancelled"]', { timeout: 10000 });
  await page.waitForFunction(() => [...document.querySelectorAll("#detail-view [data-action]")].every((b) => b.disabled), null, { timeout: 5000 });
  await page.waitForSelector('#detail-events tbody tr.live[data-type="execution.cancelled"]', { timeout: 10000 });
  await shot(page, "execution-cancelled-390");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("agents page: running executions per agent, offline greyed, long-offline pruned; stale while the connection is down", { timeout: 120000 }, async () => {
  const sim = stack.simulate({ agents: 2, rate: 2 });
  const page = await open(WIDTHS.wide, "#/agents");
  try {
    await page.waitForSelector('#agent-cards li[data-presence="online"], #agent-cards li[data-presence="busy"]', { timeout: 20000 });
    // an agent with running executions lists them, linked
    await page.waitForSelector('#agent-cards li:not([data-running="0"]) .running a[href^="#/executions/"]', { timeout: 30000 });
    // an agent offline for 20 s is greyed; one offline for 2 hours is left out
    await page.evaluate(() => {
      const agent = (id, secondsAgo) => ({
        agent_id: id, tenant_id: "dev", status: "offline", cpu_percent: 0, memory_percent: 0, gpu_percent: 0, running_execution_ids: [],
        labels: {}, timeout_seconds: 15, version: 5, offset: 0, last_heartbeat_at: new Date(Date.now() - secondsAgo * 1000).toISOString(),
      });
      window.runcast.store.upsertAgent(agent("views-offline-recent", 20));
      window.runcast.store.upsertAgent(agent("views-offline-long-ago", 7200));
    });
    const recent = '#agent-cards li[data-id="views-offline-recent"]';
    await page.waitForSelector(`${recent}[data-status="offline"]`, { timeout: 5000 });
    assert.ok(Number(await page.$eval(recent, (li) => getComputedStyle(li).opacity)) < 1, "greyed");
    assert.match(await text(page, recent), /offline · last heartbeat 2\d s ago/);
    assert.equal(await page.$$eval('#agent-cards li[data-id="views-offline-long-ago"]', (l) => l.length), 0, "pruned");
    assert.equal(await page.$$eval('#agents li[data-id="views-offline-long-ago"]', (l) => l.length), 0, "pruned beside the list too");
    await shot(page, "agents-1440");
    await page.setViewportSize(WIDTHS.phone);
    await assertFits(page, "agents at 390 px");
    await shot(page, "agents-390");
    await page.setViewportSize(WIDTHS.wide);

    // the connection goes down: marked stale, nobody reads "online"
    await page.context().setOffline(true);
    await page.waitForSelector('body[data-stale="true"]', { timeout: 10000 });
    await page.waitForSelector("#stale:not([hidden])");
    assert.match(await text(page, "#stale"), /^Live updates are paused \((offline|reconnecting)\): what you see is as of .* and may be out of date\.$/);
    await page.waitForFunction(() => [...document.querySelectorAll("#agent-cards li")].every((li) => li.dataset.presence === "unknown"), null, { timeout: 5000 });
    const cards = await page.$$eval("#agent-cards li", (lis) => lis.map((li) => li.textContent));
    assert.ok(cards.length >= 2);
    for (const c of cards) assert.doesNotMatch(c, /\bonline\b/, c);
    await shot(page, "agents-stale-1440");
    // the list too
    await page.click('#nav a[data-view="list"]');
    await page.waitForSelector("#executions tbody tr[data-id]", { timeout: 5000 });
    for (const li of await page.$$eval("#agents li", (lis) => lis.map((li) => li.textContent))) assert.doesNotMatch(li, /\bonline\b/, li);
    await shot(page, "list-stale-1440");
    // back: live, not stale
    await page.context().setOffline(false);
    await page.waitForSelector('#conn[data-status="live"]', { timeout: 20000 });
    await page.waitForSelector('body[data-stale="false"]', { timeout: 5000 });
    assert.equal(await page.isHidden("#stale"), true);
    await page.waitForSelector('#agents li[data-presence="online"], #agents li[data-presence="busy"]', { timeout: 20000 });
    assert.deepEqual(page.errors, []);
  } finally {
    await stack.kill("simulate");
    sim.removeAllListeners();
    await page.close();
  }
});

test("compression: Chromium's own WebSocket negotiates permessage-deflate; its compressed subscribe is read, a big state arrives whole", { timeout: 60000 }, async () => {
  // An input of ~6 KB: the snapshot and the events carry it, well past what is worth compressing.
  const input = { artifacts: Array.from({ length: 60 }, (_, i) => ({ name: `artifact-${i}.tar.gz`, sha256: `${i}`.padStart(64, "0"), size: 1000 + i })) };
  const created = await api("POST", "/executions", { workflow_id: "views-compressed", input });
  const metrics = async () => (await (await fetch(`${stack.gatewayHttp}/metrics`)).text()).split("\n");
  const value = (lines, series) => Number(lines.find((l) => l.startsWith(series))?.split(" ").pop());
  const before = await metrics();
  const page = await browser.newPage();
  try {
    await page.goto(`${origin}/config.json`);
    const seen = await page.evaluate(async ({ url, id }) => {
      const ws = new WebSocket(url);
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = () => reject(new Error("the WebSocket failed"));
      });
      const snapshot = new Promise((resolve, reject) => {
        ws.onmessage = (m) => {
          const message = JSON.parse(m.data);
          if (message.type === "snapshot") resolve(message);
          if (message.type === "error") reject(new Error(m.data));
        };
        ws.onclose = (e) => reject(new Error(`closed ${e.code}`));
      });
      // Chromium compresses what it sends once the extension is on: the gateway must inflate it.
      ws.send(JSON.stringify({ type: "subscribe", channel: `executions:${id}`, snapshot: true, id: "big" }));
      const message = await snapshot;
      ws.close();
      return { extensions: ws.extensions, message };
    }, { url: `${stack.gatewayUrl}/ws?token=${token}`, id: created.execution_id });
    assert.equal(seen.extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    assert.equal(seen.message.data.execution_id, created.execution_id);
    assert.deepEqual(seen.message.data.input, input);
    const after = await metrics();
    const grew = (series) => value(after, series) - value(before, series);
    assert.ok(grew("runcast_ws_compression_negotiated_total") >= 1);
    assert.ok(grew('runcast_ws_compressed_bytes_total{form="plain"}') >= 6000, "the snapshot went compressed");
    assert.ok(grew('runcast_ws_compressed_bytes_total{form="compressed"}') * 3 < grew('runcast_ws_compressed_bytes_total{form="plain"}'));
  } finally {
    await page.close();
  }
});

test("compression: Chromium's EventSource gets SSE in gzip and reads each event of a big state as it comes", { timeout: 60000 }, async () => {
  const input = { artifacts: Array.from({ length: 60 }, (_, i) => ({ name: `artifact-${i}.tar.gz`, sha256: `${i}`.padStart(64, "1"), size: 2000 + i })) };
  const created = await api("POST", "/executions", { workflow_id: "views-sse-gzip", input });
  const page = await browser.newPage();
  try {
    // Same origin as /sse: EventSource needs no CORS then.
    await page.goto(`${stack.gatewayHttp}/healthz`);
    const url = `${stack.gatewayHttp}/sse?channel=executions:${created.execution_id}&snapshot=true&token=${token}`;
    const response = page.waitForResponse((r) => r.url().includes("/sse?"));
    await page.evaluate((url) => {
      window.seen = [];
      const source = new EventSource(url);
      for (const type of ["snapshot", "execution.started"]) {
        source.addEventListener(type, (e) => window.seen.push({ type, id: e.lastEventId, data: JSON.parse(e.data) }));
      }
      source.onerror = () => window.seen.push({ type: "error" });
    }, url);
    assert.equal((await response).headers()["content-encoding"], "gzip");
    await page.waitForFunction(() => window.seen.some((m) => m.type === "snapshot"), null, { timeout: 10000 });
    // A change while the stream is open arrives on its own, not when more data follows it.
    await api("POST", `/executions/${created.execution_id}/status`, { status: "running" });
    await page.waitForFunction(() => window.seen.some((m) => m.type === "execution.started"), null, { timeout: 10000 });
    const seen = await page.evaluate(() => window.seen);
    assert.deepEqual(seen.map((m) => m.type), ["snapshot", "execution.started"]);
    const started = seen[1];
    assert.deepEqual(started.data.data.state.input, input);
    assert.equal(started.id, String(started.data.offset));
  } finally {
    await page.close();
  }
});
