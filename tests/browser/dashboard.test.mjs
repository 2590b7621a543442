// The dashboard in a real headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core, against a real gateway: the `demo` subcommand
// (two built-in backends, v1 stable at 90 and v2 canary at 10) on loopback
// ports chosen by the system.
//
// Checks (issue #14 "Tests"): the page loads under a strict CSP; a wrong
// token is refused and nothing changes; both versions appear with numbers
// that change under load; a weight change made in the page (keyboard only,
// with its confirmation step) changes the traffic split; a token that stops
// being valid mid-session is refused and nothing changes; a rollback from the
// page and a rollout aborted from it send all traffic to stable; a /status
// that never answers makes the page leave "live" (and polling goes on); the
// page fits 1280 px and a phone's width.
//
// Run: tests/browser/run.sh (builds the gateway, installs playwright-core).
// Environment: GATEWAY_BIN (default target/debug/canary-gateway),
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (default
// target/browser), SOAK_S (seconds of extra load before the screenshots,
// for the picture in docs/; default 0).

import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.GATEWAY_BIN || path.join(root, "target/debug/canary-gateway");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// A relative SCREENSHOT_DIR is taken from the repository root (run.sh runs from tests/browser).
const SHOTS = process.env.SCREENSHOT_DIR ? path.resolve(root, process.env.SCREENSHOT_DIR) : path.join(root, "target/browser");
const SOAK_S = Number(process.env.SOAK_S || 0);
const LIMIT_MS = 20_000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let failures = 0;
const results = [];

async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failures++;
    results.push(`FAIL ${name}: ${e.stack || e}`);
  }
  console.log(results[results.length - 1]);
}

/** Polls `fn` until it returns a truthy value, or throws after `limit` ms. */
async function eventually(what, fn, limit = LIMIT_MS) {
  const deadline = Date.now() + limit;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(100);
  }
}

// ---- the gateway --------------------------------------------------------

function startDemo() {
  const child = spawn(BIN, ["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => { err += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the demo did not start:\n" + out + err)), 30_000);
    child.on("exit", (code) => reject(new Error(`the demo exited with ${code}:\n${out}${err}`)));
    child.stdout.on("data", (d) => {
      out += d;
      const proxy = /behind http:\/\/(\S+)/.exec(out);
      const admin = /(127\.0\.0\.1:\d+)\/weights/.exec(out);
      const token = /Admin token: (\S+)/.exec(out);
      if (proxy && admin && token) {
        clearTimeout(timer);
        resolve({ child, proxy: "http://" + proxy[1], admin: "http://" + admin[1], token: token[1] });
      }
    });
  });
}

async function adminApi(gw, method, p, body, token = gw.token) {
  const r = await fetch(gw.admin + p, {
    method,
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, data: text ? JSON.parse(text) : null };
}

/** Keeps `concurrency` request loops going through the proxy until stopped. */
function load(gw, concurrency = 4) {
  const counts = { v1: 0, v2: 0, other: 0 };
  let running = true;
  const loops = Array.from({ length: concurrency }, async () => {
    while (running) {
      try {
        const r = await fetch(gw.proxy + "/", { headers: { "x-load": "1" } });
        await r.arrayBuffer();
        const v = r.headers.get("x-canary-version");
        counts[v in counts ? v : "other"]++;
      } catch (_) {
        counts.other++;
        await sleep(20);
      }
    }
  });
  return {
    counts,
    reset() { counts.v1 = counts.v2 = counts.other = 0; },
    async stop() { running = false; await Promise.all(loops); },
  };
}

/** The split of the next `n` requests through the proxy. */
async function split(gw, n = 400) {
  const counts = {};
  for (let i = 0; i < n; i++) {
    const r = await fetch(gw.proxy + "/");
    await r.arrayBuffer();
    const v = r.headers.get("x-canary-version");
    counts[v] = (counts[v] || 0) + 1;
  }
  return counts;
}

// ---- the page -----------------------------------------------------------

async function cardNumber(page, version, field) {
  const text = await page.locator(`#card-${version} [data-field="${field}"]`).textContent();
  const n = parseFloat(text);
  return Number.isFinite(n) ? n : null;
}

async function signIn(page, token) {
  await page.locator("#token").fill(token);
  await page.locator("#token").press("Enter");
}

async function confirmDialog(page, expect) {
  const dialog = page.locator("#confirm");
  await dialog.waitFor({ state: "visible" });
  const text = await page.locator("#confirm-text").textContent();
  if (expect) assert.match(text, expect);
  // Keyboard: the dialog opens with Cancel focused; Shift+Tab reaches Apply.
  await page.keyboard.press("Shift+Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "confirm-ok");
  await page.keyboard.press("Enter");
  await dialog.waitFor({ state: "hidden" });
  return text;
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const gw = await startDemo();
  console.log(`gateway: proxy ${gw.proxy}, admin ${gw.admin}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  let traffic = null;

  try {
    await check("the page loads without a token, under a strict CSP, and asks for one", async () => {
      const resp = await page.goto(gw.admin + "/ui");
      assert.equal(resp.status(), 200);
      const csp = resp.headers()["content-security-policy"];
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /script-src 'self'/);
      assert.equal(await page.title(), "canary-gateway dashboard");
      assert.ok(await page.locator("#token").isVisible());
      assert.ok(await page.locator("#dash").isHidden());
      const denied = await fetch(gw.admin + "/ui/series");
      assert.equal(denied.status, 401, "the data needs the token");
    });

    await check("a wrong token is refused and nothing changes", async () => {
      const before = (await adminApi(gw, "GET", "/weights")).data;
      await signIn(page, "not-the-token");
      await eventually("the refusal", async () => /401/.test(await page.locator("#login-msg").textContent()));
      assert.ok(await page.locator("#dash").isHidden(), "no dashboard with a wrong token");
      assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused token is not kept");
      const after = (await adminApi(gw, "GET", "/weights")).data;
      assert.deepEqual(after, before);
      assert.ok(!page.url().includes("not-the-token"), "the token never goes into the URL");
    });

    await check("both versions appear, labelled, with numbers that change under load", async () => {
      await signIn(page, gw.token);
      await page.locator("#dash").waitFor({ state: "visible" });
      await page.locator("#card-v1").waitFor();
      assert.match(await page.locator("#card-v1 .badge").textContent(), /stable/);
      assert.match(await page.locator("#card-v2 .badge").textContent(), /canary/);
      assert.equal(await cardNumber(page, "v1", "weight"), 90);
      assert.equal(await cardNumber(page, "v2", "weight"), 10);
      const cookies = await context.cookies();
      assert.equal(cookies.length, 0, "no cookie holds the token");
      const idle = [await cardNumber(page, "v1", "rate"), await cardNumber(page, "v2", "rate")];
      traffic = load(gw);
      const busy = await eventually("request rates on both versions", async () => {
        const r = [await cardNumber(page, "v1", "rate"), await cardNumber(page, "v2", "rate")];
        return r[0] > 5 && r[1] > 0.5 && r;
      });
      assert.ok(busy[0] !== idle[0] && busy[1] !== idle[1], `idle ${idle}, busy ${busy}`);
      assert.ok(busy[0] > busy[1], "90/10: v1 serves more");
      const share = await eventually("the actual share", async () => cardNumber(page, "v2", "share"));
      assert.ok(share > 2 && share < 25, `v2 share ${share}%`);
      assert.ok((await cardNumber(page, "v1", "p50")) > 0, "p50 shown");
      // The charts draw a line per version.
      const paths = await page.locator('[data-chart="rate"] path').count();
      assert.ok(paths >= 2, `${paths} lines`);
      const label = await page.locator('[data-chart="rate"] svg').getAttribute("aria-label");
      assert.match(label, /v1 \(stable\).*v2 \(canary\)/);
    });

    await check("a cancelled weight change changes nothing", async () => {
      const before = (await adminApi(gw, "GET", "/weights")).data;
      await page.locator("#w-v2").fill("60");
      await page.locator("#w-v1").fill("40");
      await page.locator("#w-v1").press("Enter");
      await page.locator("#confirm").waitFor({ state: "visible" });
      await page.keyboard.press("Escape");
      await page.locator("#confirm").waitFor({ state: "hidden" });
      await eventually("the cancel message", async () => /cancelled/.test(await page.locator("#action-result").textContent()));
      assert.deepEqual((await adminApi(gw, "GET", "/weights")).data, before);
      await page.locator("#weights-reset").click();
    });

    await check("a weight change made in the page (keyboard, confirmed) changes the traffic split", async () => {
      if (SOAK_S > 0) await sleep((SOAK_S * 1000) / 3); // some 90/10 history for the pictures
      const before = await split(gw, 300);
      assert.ok((before.v2 || 0) < 60, `before: ${JSON.stringify(before)}`);
      const slider = page.locator("#canary-slider");
      await slider.focus();
      for (let i = 0; i < 40; i++) await page.keyboard.press("ArrowRight"); // 10% -> 50%
      assert.equal(await slider.inputValue(), "50");
      assert.equal(await page.locator("#w-v2").inputValue(), "50");
      assert.equal(await page.locator("#w-v1").inputValue(), "50");
      await page.locator("#weights-form button[type=submit]").focus();
      await page.keyboard.press("Enter");
      await confirmDialog(page, /v2 \(canary\) 10 → 50/);
      await eventually("the result", async () => /Set weights: done/.test(await page.locator("#action-result").textContent()));
      const w = (await adminApi(gw, "GET", "/weights")).data;
      assert.deepEqual(w.weights, { v1: 50, v2: 50 });
      const after = await split(gw, 400);
      assert.ok(after.v2 > 140 && after.v1 > 140, `after: ${JSON.stringify(after)}`);
      const share = await eventually("the page's share near 50%", async () => {
        const s = await cardNumber(page, "v2", "share");
        return s > 35 && s < 65 && s;
      });
      assert.ok(share);
      await eventually("the audit entry", async () => /v2 10 → 50/.test(await page.locator("#audit").textContent()));
    });

    if (SOAK_S > 0) {
      console.log(`soak: ${SOAK_S} s more load for the screenshots`);
      await sleep(SOAK_S * 1000);
    }

    await check("screenshots at 1280 px and on a phone, no overflow", async () => {
      await page.screenshot({ path: path.join(SHOTS, "dashboard.png"), fullPage: true });
      const phone = await context.newPage();
      await phone.setViewportSize({ width: 390, height: 844 });
      await phone.goto(gw.admin + "/ui"); // same tab session? no: a new page has its own sessionStorage
      await signIn(phone, gw.token);
      await phone.locator("#card-v2").waitFor();
      await eventually("the phone's charts", async () => (await phone.locator('[data-chart="rate"] path').count()) >= 2);
      const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the phone page is ${overflow} px too wide`);
      await phone.screenshot({ path: path.join(SHOTS, "dashboard-phone.png"), fullPage: true });
      await phone.close();
      const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(wide <= 1, `the 1280 px page is ${wide} px too wide`);
    });

    await check("a token that stops being valid is refused and nothing changes", async () => {
      const before = (await adminApi(gw, "GET", "/weights")).data;
      await page.evaluate(() => sessionStorage.setItem("canary-gateway.token", "rotated-away"));
      await page.locator("#w-v2").fill("80");
      await page.locator("#w-v1").fill("20");
      await page.locator("#weights-form button[type=submit]").click();
      await confirmDialog(page, /50 → 80/);
      await eventually("the 401", async () => /Set weights failed: 401/.test(await page.locator("#action-result").textContent()));
      assert.match(await page.locator("#action-result").textContent(), /wrong bearer token/);
      assert.deepEqual((await adminApi(gw, "GET", "/weights")).data, before);
      await eventually("the sign-in form", async () => page.locator("#login").isVisible());
      await signIn(page, gw.token);
      await eventually("live again", async () => /live/.test(await page.locator("#conn").textContent()));
      await page.locator("#weights-reset").click();
    });

    await check("a rollout started in the page and aborted from it sends all traffic to stable", async () => {
      await page.locator("#ro-start-box summary").click();
      await page.locator("#ro-canary").selectOption("v2");
      await page.locator("#ro-steps").fill("20, 60, 100");
      await page.locator("#ro-interval").fill("300");
      await page.locator("#ro-start button[type=submit]").click();
      await eventually("the rollout start", async () => /Start rollout of v2: done/.test(await page.locator("#action-result").textContent()));
      await eventually("the phase", async () => /progressing|holding|waiting_gate/.test(await page.locator("#rollout").textContent()));
      const text = await page.locator("#rollout").textContent();
      assert.match(text, /Canaryv2/);
      assert.match(text, /Current step1 of 3/);
      assert.match(text, /Canary share20%/);
      assert.match(text, /20% · current/);
      assert.ok(await page.locator("#ro-pause").isEnabled() && await page.locator("#ro-abort").isEnabled());
      await page.locator("#rollout").screenshot({ path: path.join(SHOTS, "rollout-panel.png") });
      await page.locator("#ro-abort").click();
      await confirmDialog(page, /Abort/);
      await eventually("the abort result", async () => /Rollout abort: done/.test(await page.locator("#action-result").textContent()));
      await eventually("the aborted banner", async () => page.locator("#abort-banner").isVisible());
      assert.match(await page.locator("#abort-banner").textContent(), /aborted because/);
      const after = await split(gw, 200);
      assert.deepEqual(after, { v1: 200 }, JSON.stringify(after));
    });

    await check("a /status that never answers makes the page leave \"live\" and polling goes on", async () => {
      const stub = await context.newPage();
      let hang = false;
      // While `hang`, GET /status is held and never answered.
      await stub.route(/\/status$/, (route) => (hang ? undefined : route.continue()));
      await stub.goto(gw.admin + "/ui");
      await signIn(stub, gw.token);
      await eventually("live", async () => /^live/.test(await stub.locator("#conn").textContent()));
      hang = true;
      const started = Date.now();
      const label = await eventually("the page to leave \"live\"", async () => {
        const t = await stub.locator("#conn").textContent();
        return !/^live/.test(t) && t;
      }, 8_000);
      assert.match(label, /stale.*no answer from the gateway within 4 s/, label);
      assert.ok(Date.now() - started < 8_000, `${Date.now() - started} ms`);
      hang = false;
      await eventually("live again", async () => /^live/.test(await stub.locator("#conn").textContent()), 8_000);
      await stub.close();
    });

    await check("the rollout panel shows the issue #12 contract's fields (GET /rollout stubbed in the browser)", async () => {
      const stub = await context.newPage();
      const now = Date.now();
      // The shape of docs/rollout.md (issue #12's GET /rollout).
      let rollout = {
        phase: "progressing", canary: "v2", stable: "v1", step: 2, share: 10.0, steps: [1.0, 5.0, 10.0, 25.0, 50.0, 100.0],
        started_at_ms: now - 120_000, step_started_at_ms: now - 5_000, next_step_due_ms: now + 42_000, next_step_in_s: 42,
        why: null,
        history: [{ step: 0, share: 1.0, at_ms: now - 120_000 }, { step: 1, share: 5.0, at_ms: now - 60_000 }, { step: 2, share: 10.0, at_ms: now - 5_000 }],
        last_analysis: {
          at_ms: now - 5_000, since_ms: now - 65_000,
          canary: { requests: 412, errors: 1, error_rate: 0.0024, p50_ms: 3.1, p99_ms: 19.5 },
          stable: { requests: 3705, errors: 6, error_rate: 0.0016, p50_ms: 3.0, p99_ms: 18.2 },
          verdict: "pass", reason: "pass", why: "error rate and p99 within chance of stable",
          test: "z", statistic: 0.61, p_value: 0.27, p99_ratio: 1.07,
        },
        abort_reason: null,
        plan: { steps: [1.0, 5.0, 10.0, 25.0, 50.0, 100.0], interval_s: 60.0, min_requests: 200 },
      };
      await stub.route("**/rollout", (route) => route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(rollout) }));
      await stub.goto(gw.admin + "/ui");
      await signIn(stub, gw.token);
      await eventually("the phase", async () => /progressing/.test(await stub.locator("#rollout").textContent()));
      const text = await stub.locator("#rollout").textContent();
      for (const want of [/Current step3 of 6/, /Canary share10%/, /Next step due.*in 4\d s/, /Verdict: pass/, /within chance/, /z test: statistic 0\.610, p-value 0\.2700, p99 ratio 1\.07/, /10% · current/, /1% · done/]) {
        assert.match(text, want);
      }
      assert.ok(await stub.locator("#abort-banner").isHidden());
      assert.ok(await stub.locator("#ro-pause").isEnabled() && await stub.locator("#ro-abort").isEnabled());
      assert.ok(await stub.locator("#ro-resume").isDisabled());
      rollout = { ...rollout, phase: "aborted", next_step_due_ms: null, next_step_in_s: null, abort_reason: "canary error rate 20.0% above max_error_rate 1.0%" };
      await eventually("the aborted banner", async () => stub.locator("#abort-banner").isVisible());
      assert.match(await stub.locator("#abort-banner").textContent(), /aborted because canary error rate 20\.0% above max_error_rate/);
      assert.ok(await stub.locator("#ro-abort").isDisabled());
      await stub.locator("#rollout").screenshot({ path: path.join(SHOTS, "rollout-panel-stubbed.png") });
      await stub.close();
    });

    await check("the fleet panel lists this task with the demo's file store", async () => {
      const fleet = (await adminApi(gw, "GET", "/status")).data.fleet;
      assert.equal(fleet.tasks.length, 1);
      await eventually("this task's row", async () => /\(this task\)/.test(await page.locator("#fleet").textContent()));
      const row = await page.locator("#fleet tbody tr").allTextContents();
      assert.equal(row.length, 1, JSON.stringify(row));
      assert.ok(row[0].startsWith(fleet.tasks[0].task + " (this task)"), row[0]);
      const summary = await page.locator("#fleet-summary").textContent();
      assert.match(summary, /Converged on generation \d+ · 1 task · stale after \d+ s · reports not shared/);
    });

    await check("the fleet panel shows each task's generation, stale tasks and convergence (/status faked in the browser)", async () => {
      const stub = await context.newPage();
      const now = Date.now();
      const report = (task, generation, age_s, more) => ({
        task, generation, reported_at_ms: now - age_s * 1000, applied_at_ms: now - 60_000, ready: true, draining: false,
        degraded: false, version: "0.1.0", age_s, stale: false, this_task: false, ...more,
      });
      // The shape of docs/fleet.md (GET /status fleet with a DynamoDB store).
      let fleet = {
        tasks: [report("ip-10-0-1-23-1-5f0c2a91", 7, 0, { this_task: true }), report("ip-10-0-2-40-1-0b77e3d4", 6, 0.7),
          report("ip-10-0-3-9-1-77aa01c2", 5, 42.3, { stale: true, ready: false })],
        converged: false, generation: null, stale_after_s: 11.0, reports_shared: true,
        last_error: "AccessDeniedException: not authorized to perform dynamodb:UpdateItem",
      };
      // The real /status with its fleet replaced, so the rest of the page stays live.
      await stub.route(/\/status$/, async (route) => {
        const real = await route.fetch();
        const body = await real.json();
        await route.fulfill({ status: real.status(), contentType: "application/json", body: JSON.stringify({ ...body, fleet }) });
      });
      await stub.goto(gw.admin + "/ui");
      await signIn(stub, gw.token);
      await eventually("the three tasks", async () => (await stub.locator("#fleet tbody tr").count()) === 3);
      const rows = await stub.locator("#fleet tbody tr").allTextContents();
      assert.match(rows[0], /^ip-10-0-1-23-1-5f0c2a91 \(this task\)7/);
      assert.match(rows[1], /^ip-10-0-2-40-1-0b77e3d46/);
      assert.match(rows[1], /0\.7 s.*ready · other generation than this task/);
      assert.doesNotMatch(rows[1], /STALE|this task\)/);
      assert.match(rows[2], /^ip-10-0-3-9-1-77aa01c25/);
      assert.match(rows[2], /42\.3 s.*STALE: not counted · not ready/);
      assert.doesNotMatch(rows[2], /other generation/, "a stale task does not count");
      let summary = await stub.locator("#fleet-summary").textContent();
      assert.match(summary, /NOT converged: generations 7 \(1 task\), 6 \(1 task\) · 3 tasks \(1 stale, not counted\) · stale after 11 s/);
      assert.match(summary, /This task's report failed: AccessDeniedException/);
      await stub.locator("section", { has: stub.locator("#fleet") }).screenshot({ path: path.join(SHOTS, "fleet-panel-stubbed.png") });

      fleet = { ...fleet, tasks: [fleet.tasks[0], { ...fleet.tasks[1], generation: 7 }, fleet.tasks[2]], converged: true, generation: 7, last_error: undefined };
      await eventually("convergence", async () => /Converged on generation 7/.test(await stub.locator("#fleet-summary").textContent()));
      summary = await stub.locator("#fleet-summary").textContent();
      assert.doesNotMatch(summary, /failed|NOT/);
      assert.doesNotMatch((await stub.locator("#fleet tbody tr").allTextContents()).join("\n"), /other generation/);

      // Cloud Map: no reports are kept, convergence cannot be observed.
      fleet = { tasks: [fleet.tasks[0]], converged: false, generation: null, stale_after_s: 11.0, reports_shared: false,
        note: "the Cloud Map store keeps no task reports: use the DynamoDB store to observe convergence" };
      await eventually("the note", async () => /Note: the Cloud Map store keeps no task reports/.test(await stub.locator("#fleet-summary").textContent()));
      assert.match(await stub.locator("#fleet-summary").textContent(), /^Convergence unknown · 1 task/);
      await stub.close();
    });

    await check("an action's answer with a warning shows the warning (POST /rollback answered in the browser)", async () => {
      const stub = await context.newPage();
      const warning = "rollback applied on this task only: the store could not take it yet; retrying in the background";
      // The answer of a rollback the store did not take in time; nothing reaches the gateway.
      await stub.route(/\/rollback$/, (route) => route.fulfill({
        status: 200, contentType: "application/json",
        body: JSON.stringify({ weights: { v1: 100, v2: 0 }, generation: 41, stable: "v1", rollback_pending: true, warning }),
      }));
      await stub.goto(gw.admin + "/ui");
      await signIn(stub, gw.token);
      await stub.locator("#rollback").click();
      await confirmDialog(stub, /v1 \(stable\) takes all the traffic/);
      await eventually("the result", async () => /Roll back: done/.test(await stub.locator("#action-result").textContent()));
      const out = stub.locator("#action-result");
      assert.match(await out.textContent(), /generation 41.*Warning: rollback applied on this task only/);
      assert.ok(await out.evaluate((e) => e.classList.contains("bad")), "shown as a problem");
      await stub.close();
    });

    await check("a rollback from the page sends all traffic to stable", async () => {
      await page.locator("#rollback").click();
      await confirmDialog(page, /v1 \(stable\) takes all the traffic/);
      await eventually("the result", async () => /Roll back: done/.test(await page.locator("#action-result").textContent()));
      const w = (await adminApi(gw, "GET", "/weights")).data;
      assert.equal(w.weights.v2, 0);
      const after = await split(gw, 200);
      assert.deepEqual(after, { v1: 200 }, JSON.stringify(after));
      await eventually("the page's share at 100%", async () => (await cardNumber(page, "v1", "weight")) === 100);
    });

    await check("no script errors or CSP violations", async () => {
      // The refused calls (401) and GET /rollout before any rollout (404) are expected.
      assert.deepEqual(problems.filter((p) => !/status of 40[14] /.test(p)), []);
    });
  } finally {
    if (traffic) await traffic.stop();
    await browser.close();
    gw.child.kill("SIGTERM");
  }
  console.log(`\n${results.length - failures} passed, ${failures} failed; screenshots in ${SHOTS}`);
  process.exit(failures ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
