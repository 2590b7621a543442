// canary-gateway dashboard: polls the admin API once a second and draws the
// per-version series as inline SVG. No framework, no build step, no CDN.
// The bearer token lives in sessionStorage (this tab only) and goes out only
// as an Authorization header on same-origin calls.
"use strict";

const TOKEN_KEY = "canary-gateway.token";
const WINDOW_S = 900;
const CARD_WINDOW_S = 10;
const POLL_MS = 1000;
// How long a poll's call may take before it fails (the page then says the
// numbers are stale and polls again); an action (which may wait on the
// store) gets longer.
const POLL_TIMEOUT_MS = 4000;
const ACTION_TIMEOUT_MS = 30000;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = ["var(--stable)", "var(--canary)", "var(--c3)", "var(--c4)"];

const $ = (id) => document.getElementById(id);
const state = {
  series: new Map(), // name -> {t:[], requests:[], ...}
  lastT: 0,
  status: null,
  rollout: null,
  rolloutAvailable: true,
  timer: null,
  weightsDirty: false,
  busy: false,
  polls: 0,
};

// ---- the admin API -------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** Why a call failed without an answer: timed out, or unreachable. */
function noAnswer(e, timeoutMs) {
  const timedOut = e && (e.name === "TimeoutError" || e.name === "AbortError");
  return timedOut ? "no answer from the gateway within " + timeoutMs / 1000 + " s"
    : "cannot reach the gateway: " + (e && e.message);
}

/** Calls the admin API; resolves to {ok, status, data, error}. A call
 * without an answer in time (GET: POLL_TIMEOUT_MS, else ACTION_TIMEOUT_MS)
 * is aborted and fails (status 0), so a hung request never stops the polls. */
async function api(method, path, body) {
  const timeoutMs = method === "GET" ? POLL_TIMEOUT_MS : ACTION_TIMEOUT_MS;
  const headers = { Authorization: "Bearer " + token() };
  const init = {
    method, headers, cache: "no-store", credentials: "omit",
    signal: AbortSignal.timeout(timeoutMs),
  };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  let text;
  try {
    resp = await fetch(path, init);
    text = await resp.text();
  } catch (e) {
    return { ok: false, status: 0, data: null, error: noAnswer(e, timeoutMs) };
  }
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  const error = resp.ok ? null
    : `${resp.status} ${resp.statusText || ""}`.trim() + ": " + ((data && data.error) || text.trim() || "no details");
  if (resp.status === 401) tokenRefused(error);
  return { ok: resp.ok, status: resp.status, data, error };
}

function tokenRefused(error) {
  $("conn").textContent = "token refused: sign in again";
  $("updated").textContent = "";
  $("conn").classList.add("bad");
  $("login").hidden = false;
  showMsg($("login-msg"), "The token was refused (" + error + ").", true);
}

function showMsg(el, text, bad) {
  el.textContent = text;
  el.classList.toggle("bad", !!bad);
}

/** Runs an action and shows its result or its error text, and the
 * answer's `warning` (a change applied that needs a look: weight given to a
 * version without endpoints, a rollback not in the store yet). */
async function act(label, method, path, body, describe) {
  const out = $("action-result");
  showMsg(out, label + "…", false);
  const r = await api(method, path, body);
  if (r.ok) {
    const warning = r.data && r.data.warning;
    showMsg(out, label + ": done. " + (describe ? describe(r.data) : "") +
      (warning ? " Warning: " + warning : ""), !!warning);
    state.weightsDirty = false;
    poll();
  } else {
    showMsg(out, label + " failed: " + r.error, true);
  }
  return r;
}

function describeWeights(d) {
  if (!d || !d.weights) return "";
  return "Weights now " + Object.entries(d.weights).map(([k, v]) => k + " " + v).join(", ") +
    " (generation " + d.generation + ", stable " + d.stable + ").";
}

// ---- sign in / out ------------------------------------------------------

async function signIn(ev) {
  ev.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  const r = await api("GET", "/weights");
  if (!r.ok) {
    sessionStorage.removeItem(TOKEN_KEY);
    showMsg($("login-msg"), "Sign-in failed: " + r.error, true);
    return;
  }
  $("token").value = "";
  start();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.timer);
  state.timer = null;
  $("dash").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  showMsg($("login-msg"), "", false);
  $("conn").textContent = "signed out";
  $("updated").textContent = "";
  $("conn").classList.remove("bad");
  $("token").focus();
}

function start() {
  $("login").hidden = true;
  showMsg($("login-msg"), "", false);
  $("dash").hidden = false;
  $("logout").hidden = false;
  $("conn").classList.remove("bad");
  poll();
  if (!state.timer) state.timer = setInterval(poll, POLL_MS);
}

// ---- polling ------------------------------------------------------------

async function poll() {
  if (state.busy || !token()) return;
  state.busy = true;
  state.polls++;
  try {
    const [status, series, rollout, audit] = await Promise.all([
      api("GET", "/status"),
      api("GET", "/ui/series?since=" + state.lastT),
      // Without the rollout API, ask again only every 15 s.
      state.rolloutAvailable || state.polls % 15 === 0 ? api("GET", "/rollout") : { ok: false, status: 404, error: "no such endpoint" },
      api("GET", "/ui/audit"),
    ]);
    if (status.status === 401) return;
    if (status.ok) {
      state.status = status.data;
      // The live region only changes when the state does (no announcement a second).
      const conn = "live" + (status.data.ready ? "" : " · NOT READY: " + (status.data.not_ready_reason || ""));
      if ($("conn").textContent !== conn) $("conn").textContent = conn;
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      $("conn").classList.toggle("bad", !status.data.ready);
    } else {
      // Not "live": the numbers on the page are the last ones read.
      $("conn").textContent = "stale: status unavailable: " + status.error;
      $("conn").classList.add("bad");
    }
    if (series.ok) mergeSeries(series.data);
    // 404 "no such endpoint": a gateway without the rollout API; any other
    // 404: no rollout was started yet.
    state.rolloutAvailable = !(rollout.status === 404 && /no such endpoint/.test(rollout.error || ""));
    state.rollout = rollout.ok ? rollout.data : null;
    render(audit.ok ? audit.data : null, rollout);
  } finally {
    state.busy = false;
  }
}

function mergeSeries(data) {
  let last = state.lastT;
  for (const v of data.versions || []) {
    let s = state.series.get(v.name);
    if (!s) {
      s = { t: [], requests: [], errors: [], p50_ms: [], p99_ms: [], weight: [], share: [] };
      state.series.set(v.name, s);
    }
    for (const key of Object.keys(s)) s[key].push(...(v[key] || []));
    if (v.t.length) last = Math.max(last, v.t[v.t.length - 1]);
  }
  const oldest = last - WINDOW_S;
  for (const s of state.series.values()) {
    let drop = 0;
    while (drop < s.t.length && s.t[drop] <= oldest) drop++;
    if (drop) for (const key of Object.keys(s)) s[key].splice(0, drop);
  }
  state.lastT = last;
}

// ---- rendering ----------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmt(n, digits) {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  return Number(n).toFixed(digits === undefined ? 1 : digits);
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return fmt(s, 0) + " s ago";
  if (s < 5400) return fmt(s / 60, 0) + " min ago";
  return new Date(ms).toLocaleString();
}

/** The versions in config order, each with its role and colour. */
function versions() {
  const st = state.status;
  if (!st) return [];
  return st.versions.map((v, i) => ({
    name: v.name, weight: v.weight, stable: v.stable, index: i,
    role: v.stable ? "stable" : "canary",
    colour: COLOURS[i % COLOURS.length],
    dash: v.stable ? null : "6 4",
    raw: v,
  }));
}

function render(audit, rollout) {
  const vs = versions();
  if (!vs.length) return;
  const warnings = state.status.warnings || [];
  $("warnings").hidden = !warnings.length;
  $("warnings").replaceChildren(el("strong", { text: "Needs attention: " }), warnings.join(" · "));
  renderCards(vs);
  renderCharts(vs);
  renderRollout(rollout, vs);
  renderWeights(vs);
  renderEndpoints(vs);
  renderStore();
  renderFleet();
  if (audit) renderAudit(audit.entries || []);
}

/** Figures over the last CARD_WINDOW_S seconds of a version's series. */
function recent(name) {
  const s = state.series.get(name);
  const out = { rate: null, errorRate: null, p50: null, p99: null, share: null };
  if (!s || !s.t.length) return out;
  const from = Math.max(0, s.t.length - CARD_WINDOW_S);
  const span = s.t.length - from;
  let req = 0, err = 0;
  for (let i = from; i < s.t.length; i++) { req += s.requests[i]; err += s.errors[i]; }
  let total = 0;
  for (const other of state.series.values()) {
    const f = Math.max(0, other.t.length - CARD_WINDOW_S);
    for (let i = f; i < other.t.length; i++) total += other.requests[i];
  }
  const lastOf = (arr) => { for (let i = arr.length - 1; i >= from; i--) if (arr[i] !== null) return arr[i]; return null; };
  out.rate = req / span;
  out.errorRate = req ? (100 * err) / req : null;
  out.p50 = lastOf(s.p50_ms);
  out.p99 = lastOf(s.p99_ms);
  out.share = total ? (100 * req) / total : null;
  return out;
}

function renderCards(vs) {
  const box = $("versions");
  const total = vs.reduce((a, v) => a + v.weight, 0) || 1;
  box.replaceChildren(...vs.map((v) => {
    const r = recent(v.name);
    const field = (label, key, value) => [el("div", {}, el("dt", { text: label }), el("dd", { "data-field": key, text: value }))];
    return el("article", { class: "card " + v.role, id: "card-" + v.name, "data-version": v.name, "aria-label": v.name + " (" + v.role + ")" },
      el("h3", {}, el("span", { text: v.name }), el("span", { class: "badge", text: v.role })),
      el("dl", {},
        ...field("Weight", "weight", v.weight + " (" + fmt((100 * v.weight) / total) + "%)"),
        ...field("Actual share", "share", r.share === null ? "–" : fmt(r.share) + "%"),
        ...field("Requests/s", "rate", fmt(r.rate)),
        ...field("Errors (5xx)", "errors", r.errorRate === null ? "–" : fmt(r.errorRate, 2) + "%"),
        ...field("p50", "p50", r.p50 === null ? "–" : fmt(r.p50, 2) + " ms"),
        ...field("p99", "p99", r.p99 === null ? "–" : fmt(r.p99, 2) + " ms")));
  }));
}

const CHARTS = [
  { key: "rate", title: "Requests per second", unit: "/s", value: (s, i) => s.requests[i] },
  { key: "errors", title: "Error rate (5xx, %)", unit: "%", value: (s, i) => (s.requests[i] ? (100 * s.errors[i]) / s.requests[i] : null) },
  { key: "p50", title: "p50 latency (ms)", unit: " ms", value: (s, i) => s.p50_ms[i] },
  { key: "p99", title: "p99 latency (ms)", unit: " ms", value: (s, i) => s.p99_ms[i] },
  { key: "share", title: "Actual share (%) · weight (dotted)", unit: "%", value: (s, i) => (100 * s.share[i]), weight: true },
];

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function renderLegend(vs) {
  $("legend").replaceChildren(...vs.map((v) => {
    const s = svg("svg", { width: 28, height: 10, "aria-hidden": "true" });
    s.append(svg("line", { x1: 0, y1: 5, x2: 28, y2: 5, stroke: v.colour, "stroke-width": 3, "stroke-dasharray": v.dash }));
    return el("span", {}, s, v.name + " (" + v.role + (v.dash ? ", dashed" : ", solid") + ")");
  }));
}

function renderCharts(vs) {
  renderLegend(vs);
  const W = 600, H = 170, L = 56, T = 10, B = 22;
  const R = matchMedia("(max-width: 760px)").matches ? 14 : 70; // phones: latest values in the caption
  const now = state.lastT;
  const x = (t) => L + ((t - (now - WINDOW_S)) / WINDOW_S) * (W - L - R);
  const box = $("charts");
  const figures = CHARTS.map((c) => {
    const lines = vs.map((v) => {
      const s = state.series.get(v.name);
      const pts = [];
      const wpts = [];
      const total = vs.reduce((a, o) => a + o.weight, 0) || 1;
      if (s) for (let i = 0; i < s.t.length; i++) {
        pts.push([s.t[i], c.value(s, i)]);
        if (c.weight) {
          const sum = vs.reduce((a, o) => { const os = state.series.get(o.name); const j = os ? os.t.indexOf(s.t[i]) : -1; return a + (j >= 0 ? os.weight[j] : 0); }, 0) || total;
          wpts.push([s.t[i], (100 * s.weight[i]) / sum]);
        }
      }
      return { v, pts, wpts };
    });
    let max = 0;
    for (const l of lines) for (const [, y] of [...l.pts, ...l.wpts]) if (y !== null && y > max) max = y;
    max = c.weight ? 100 : niceMax(max);
    const y = (val) => T + (1 - val / max) * (H - T - B);
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
    for (const f of [0, 0.5, 1]) {
      g.append(svg("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: f ? "grid" : "axis" }));
      const label = svg("text", { x: L - 4, y: y(max * f) + 4, "text-anchor": "end" });
      label.textContent = fmt(max * f, Number.isInteger(max * f) ? 0 : 1);
      g.append(label);
    }
    for (const [t, label] of [[now - WINDOW_S, "-15 min"], [now - 600, "-10"], [now - 300, "-5"], [now, "now"]]) {
      const tx = svg("text", { x: x(t), y: H - 4, "text-anchor": t === now ? "end" : t === now - WINDOW_S ? "start" : "middle" });
      tx.textContent = label;
      g.append(tx);
    }
    const summary = [];
    const latest = [];
    for (const l of lines) {
      const path = (pts) => {
        let d = "", pen = false;
        for (const [t, val] of pts) {
          if (val === null || val === undefined || !isFinite(val)) { pen = false; continue; }
          d += (pen ? "L" : "M") + x(t).toFixed(1) + " " + y(Math.min(val, max)).toFixed(1);
          pen = true;
        }
        return d;
      };
      if (c.weight) g.append(svg("path", { d: path(l.wpts), fill: "none", stroke: l.v.colour, "stroke-width": 1.5, "stroke-dasharray": "2 3", opacity: 0.9 }));
      g.append(svg("path", { d: path(l.pts), fill: "none", stroke: l.v.colour, "stroke-width": 2, "stroke-dasharray": l.v.dash }));
      let lastVal = null;
      for (let i = l.pts.length - 1; i >= 0; i--) if (l.pts[i][1] !== null && isFinite(l.pts[i][1])) { lastVal = l.pts[i][1]; break; }
      if (lastVal !== null) {
        const lab = svg("text", { x: W - R + 4, y: y(Math.min(lastVal, max)) + 4 + (l.v.stable ? 0 : 12), class: "end" });
        lab.textContent = l.v.name + " " + fmt(lastVal, lastVal >= 10 ? 0 : 1);
        lab.setAttribute("fill", l.v.colour);
        g.append(lab);
      }
      summary.push(l.v.name + " (" + l.v.role + ") " + (lastVal === null ? "no data" : fmt(lastVal) + c.unit));
      latest.push(el("span", { class: "latest" }, l.v.name + " " + (lastVal === null ? "–" : fmt(lastVal, lastVal >= 10 ? 0 : 1))));
    }
    g.setAttribute("aria-label", c.title + ", last 15 minutes; latest: " + summary.join(", "));
    return el("figure", { "data-chart": c.key }, el("figcaption", {}, c.title, ...latest), g);
  });
  box.replaceChildren(...figures);
}

// ---- rollout --------------------------------------------------------------

function first(obj, ...keys) {
  if (!obj) return undefined;
  for (const k of keys) {
    const parts = k.split(".");
    let v = obj;
    for (const p of parts) v = v === null || v === undefined ? undefined : v[p];
    if (v !== undefined && v !== null) return v;
  }
  return undefined;
}

function when(v) {
  if (v === undefined || v === null) return "–";
  if (typeof v === "number") {
    const ms = v > 1e12 ? v : v * 1000; // ms or s since the epoch
    const d = (ms - Date.now()) / 1000;
    const rel = Math.abs(d) < 1 ? "now" : d > 0 ? "in " + fmt(d, 0) + " s" : fmt(-d, 0) + " s ago";
    return new Date(ms).toLocaleTimeString() + " (" + rel + ")";
  }
  return String(v);
}

function renderRollout(resp, vs) {
  const box = $("rollout");
  const banner = $("abort-banner");
  const r = state.rollout;
  const rawPhase = first(r, "phase", "state");
  const phase = ["none", "idle", ""].includes(rawPhase) ? undefined : rawPhase;
  const running = phase && !["succeeded", "aborted", "none"].includes(phase);
  for (const id of ["ro-pause", "ro-resume", "ro-abort", "ro-promote"]) $(id).disabled = !running;
  if (running) $("ro-pause").disabled = phase === "paused";
  if (running) $("ro-resume").disabled = phase !== "paused";
  const select = $("ro-canary");
  const canaries = vs.filter((v) => !v.stable).map((v) => v.name);
  if ([...select.options].map((o) => o.value).join() !== canaries.join()) {
    select.replaceChildren(...canaries.map((n) => el("option", { value: n, text: n })));
  }
  if (!phase) {
    banner.hidden = true;
    box.replaceChildren(el("p", {
      text: !state.rolloutAvailable ? "No rollout (this gateway has no rollout API)."
        : resp && !resp.ok && resp.status !== 404 ? "Rollout status unavailable: " + resp.error : "No rollout.",
    }));
    return;
  }
  const reason = first(r, "abort_reason", "aborted_because", "reason");
  banner.hidden = phase !== "aborted";
  banner.textContent = "Rollout aborted because " + (reason || "(no reason given)") + ". All traffic went back to stable.";
  const steps = first(r, "steps", "plan.steps") || [];
  const current = first(r, "current_step", "step", "step_index");
  const history = first(r, "history", "steps_taken") || [];
  const stepAt = (i) => {
    const h = history.find((e) => e && (e.step === i || e.index === i));
    return h ? first(h, "at_ms", "started_at_ms", "at", "time") : undefined;
  };
  const list = el("ol", { class: "steps", "aria-label": "Steps" }, ...steps.map((s, i) => {
    const share = typeof s === "object" ? first(s, "share", "percent") : s;
    // Before its first step (empty history) no step is in force yet: step 0 is next.
    const status = current === undefined ? "" : i < current ? "done"
      : i === current ? (history.length ? "current" : "next") : "";
    const at = stepAt(i) || (typeof s === "object" ? first(s, "at_ms", "started_at_ms") : undefined);
    return el("li", { class: status }, share + "%" + (status ? " · " + status : "") + (at ? " · " + when(at) : ""));
  }));
  const kv = el("dl", { class: "kv" });
  const add = (k, v) => { if (v !== undefined && v !== null && v !== "") kv.append(el("dt", { text: k }), el("dd", { text: String(v) })); };
  add("Phase", phase);
  add("Canary", first(r, "canary", "plan.canary"));
  add("Started", first(r, "started_at_ms") === undefined ? undefined : when(first(r, "started_at_ms")));
  add("Current step", current === undefined ? undefined : (current + 1) + " of " + steps.length);
  const share = first(r, "current_share", "share", "canary_share");
  add("Canary share", share === undefined ? undefined : share + "%");
  const due = first(r, "next_step_at_ms", "next_step_due_ms", "next_due_ms", "next_step_at");
  add("Next step due", due === undefined ? first(r, "next_step_in_s") !== undefined ? "in " + first(r, "next_step_in_s") + " s" : undefined : when(due));
  add("Why", first(r, "why", "holding_reason", "hold_reason"));
  if (reason) add("Abort reason", reason);
  const parts = [kv, el("h3", { text: "Steps" }), list];
  const a = first(r, "last_analysis", "analysis");
  if (a) {
    const verdict = first(a, "verdict");
    const why = first(a, "why", "reason");
    parts.push(el("h3", { text: "Last analysis" }),
      el("p", {}, el("strong", { text: "Verdict: " + (verdict || "–") }), why ? " — " + why : ""));
    const rows = ["canary", "stable"].filter((k) => a[k]).map((k) => {
      const m = a[k];
      return el("tr", {}, el("th", { scope: "row", text: k + (m.version ? " (" + m.version + ")" : "") }),
        ...[first(m, "requests"), first(m, "errors"), fmt(first(m, "error_rate") * 100, 2) + "%",
          fmt(first(m, "p50_ms", "p50"), 2), fmt(first(m, "p99_ms", "p99"), 2)].map((t) => el("td", { text: String(t) })));
    });
    if (rows.length) {
      parts.push(el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["", "Requests", "Errors", "Error rate", "p50 ms", "p99 ms"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...rows))));
    }
    const stat = first(a, "statistic", "test_statistic", "z");
    const p = first(a, "p_value", "pvalue");
    const test = first(a, "test");
    const ratio = first(a, "p99_ratio");
    if (stat !== undefined || p !== undefined) {
      parts.push(el("p", { text: (test ? test + " test: " : "") + "statistic " + fmt(stat, 3) + ", p-value " + fmt(p, 4) +
        (ratio !== undefined ? ", p99 ratio " + fmt(ratio, 2) : "") }));
    }
  }
  parts.push(el("details", {}, el("summary", { text: "Raw rollout state (JSON)" }), el("pre", { text: JSON.stringify(r, null, 2) })));
  const open = box.querySelector("details") && box.querySelector("details").open;
  box.replaceChildren(...parts);
  if (open) box.querySelector("details").open = true;
}

// ---- weights, promote, rollback -------------------------------------------

function renderWeights(vs) {
  const box = $("weight-inputs");
  const names = vs.map((v) => v.name).join();
  if (box.dataset.names !== names) {
    box.dataset.names = names;
    box.replaceChildren(...vs.flatMap((v) => [
      el("label", { for: "w-" + v.name, text: v.name + " (" + v.role + ") weight" }),
      el("input", { id: "w-" + v.name, type: "number", min: 0, step: 1, "data-version": v.name, required: true }),
    ]));
    for (const input of box.querySelectorAll("input")) input.addEventListener("input", () => { state.weightsDirty = true; syncSlider(); });
    state.weightsDirty = false;
  }
  if (!state.weightsDirty) for (const v of vs) $("w-" + v.name).value = v.weight;
  const canaries = vs.filter((v) => !v.stable);
  $("slider-row").hidden = !(vs.length === 2 && canaries.length === 1);
  if (canaries.length === 1) $("slider-label").textContent = canaries[0].name + " (canary) share, %";
  syncSlider();
  const promote = $("promote-version");
  const opts = vs.filter((v) => !v.stable).map((v) => v.name);
  if ([...promote.options].map((o) => o.value).join() !== opts.join()) {
    promote.replaceChildren(...opts.map((n) => el("option", { value: n, text: n })));
  }
}

function formWeights() {
  const out = {};
  for (const input of $("weight-inputs").querySelectorAll("input")) {
    out[input.dataset.version] = Number(input.value);
  }
  return out;
}

function syncSlider() {
  const vs = versions();
  const canary = vs.find((v) => !v.stable);
  if (!canary || vs.length !== 2) return;
  const w = formWeights();
  const total = Object.values(w).reduce((a, b) => a + b, 0);
  const pct = total ? Math.round((100 * w[canary.name]) / total) : 0;
  $("canary-slider").value = pct;
  $("slider-out").textContent = pct + "%";
  $("canary-slider").setAttribute("aria-valuetext", pct + "% to " + canary.name);
}

function sliderMoved() {
  const vs = versions();
  const canary = vs.find((v) => !v.stable);
  const stable = vs.find((v) => v.stable);
  if (!canary || !stable) return;
  const w = formWeights();
  const total = Object.values(w).reduce((a, b) => a + b, 0) || 100;
  const pct = Number($("canary-slider").value);
  const c = Math.round((total * pct) / 100);
  $("w-" + canary.name).value = c;
  $("w-" + stable.name).value = total - c;
  state.weightsDirty = true;
  syncSlider();
}

/** Asks for confirmation in a modal dialog; resolves to true or false. */
function confirmStep(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel || "Apply";
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false); // Escape
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function reviewWeights(ev) {
  ev.preventDefault();
  const vs = versions();
  const next = formWeights();
  for (const [name, w] of Object.entries(next)) {
    if (!Number.isInteger(w) || w < 0) {
      showMsg($("action-result"), "The weight of " + name + " must be a whole number ≥ 0.", true);
      return;
    }
  }
  const changes = vs.filter((v) => next[v.name] !== v.weight);
  if (!changes.length) {
    showMsg($("action-result"), "Nothing to change: the weights are already " + vs.map((v) => v.name + " " + v.weight).join(", ") + ".", false);
    return;
  }
  const total = Object.values(next).reduce((a, b) => a + b, 0) || 1;
  const text = "Change the weights: " + vs.map((v) => v.name + " (" + v.role + ") " + v.weight + " → " + next[v.name] +
    " (" + fmt((100 * next[v.name]) / total) + "%)").join("; ") + ". Traffic moves at once.";
  if (!(await confirmStep(text, "Apply weights"))) {
    showMsg($("action-result"), "Weight change cancelled; nothing changed.", false);
    return;
  }
  await act("Set weights", "PUT", "/weights", { weights: next }, describeWeights);
}

async function promote() {
  const v = $("promote-version").value;
  if (!v) return;
  if (!(await confirmStep("Promote " + v + ": it takes all the traffic and becomes the stable version.", "Promote " + v))) return;
  await act("Promote " + v, "POST", "/promote", { version: v }, describeWeights);
}

async function rollback() {
  const st = state.status;
  const stable = st ? st.weights.stable : "the stable version";
  if (!(await confirmStep("Roll back: " + stable + " (stable) takes all the traffic at once.", "Roll back"))) return;
  await act("Roll back", "POST", "/rollback", undefined, describeWeights);
}

async function rolloutAction(verb) {
  if ((verb === "abort" || verb === "promote") &&
      !(await confirmStep(verb === "abort" ? "Abort the rollout: all traffic goes back to stable at once." :
        "Promote now: skip the remaining steps.", verb === "abort" ? "Abort rollout" : "Promote now"))) return;
  await act("Rollout " + verb, "POST", "/rollout/" + verb, undefined, (d) => (d && d.phase ? "Phase now " + d.phase + "." : ""));
}

async function startRollout(ev) {
  ev.preventDefault();
  const steps = $("ro-steps").value.split(/[\s,;]+/).filter(Boolean).map(Number);
  if (!steps.length || steps.some((s) => !isFinite(s))) {
    showMsg($("action-result"), "Steps must be numbers, e.g. 1, 5, 10, 25, 50, 100.", true);
    return;
  }
  const body = { canary: $("ro-canary").value, steps, interval_s: Number($("ro-interval").value) };
  const opt = (id, key) => { const v = $(id).value; if (v !== "") body[key] = Number(v); };
  opt("ro-min-req", "min_requests");
  opt("ro-max-err", "max_error_rate");
  opt("ro-max-p99", "max_p99_ms");
  if ($("ro-success").value) body.on_success = $("ro-success").value;
  await act("Start rollout of " + body.canary, "POST", "/rollout", body, (d) => (d && d.phase ? "Phase " + d.phase + "." : ""));
}

// ---- endpoints, store, audit ----------------------------------------------

function renderEndpoints(vs) {
  const rows = [];
  for (const v of vs) {
    const d = v.raw.discovery || {};
    const disc = (d.source || "") + (d.age_seconds !== null && d.age_seconds !== undefined ? " · " + fmt(d.age_seconds) + " s old" : "") +
      (d.stale ? " · STALE" : "") + (d.last_error ? " · error: " + d.last_error : "");
    if (!v.raw.endpoints.length) rows.push(el("tr", {}, el("td", { text: v.name + " (" + v.role + ")" }), el("td", { text: "none" }), el("td", { text: "no endpoints" }), el("td", { text: "–" }), el("td", { text: disc })));
    for (const e of v.raw.endpoints) {
      const health = e.health === "ejected" ? "✕ ejected" + (e.ejected_for_ms ? " for " + fmt(e.ejected_for_ms / 1000) + " s" : "") : "✓ healthy";
      rows.push(el("tr", {}, el("td", { text: v.name + " (" + v.role + ")" }), el("td", { text: e.address }), el("td", { text: health }),
        el("td", { text: String(e.outstanding) }), el("td", { text: disc })));
    }
  }
  $("endpoints").tBodies[0].replaceChildren(...rows);
}

function renderStore() {
  const st = state.status;
  const s = st.store || {};
  const kv = $("store");
  const problems = [];
  if (s.degraded) problems.push("DEGRADED: started without the store, serving the config file's weights until it can be read");
  if (s.rollback_pending) problems.push("ROLLBACK PENDING: applied here, not yet written to the " + (s.kind === "file" ? "state file" : "store") + " (write retried)");
  if (s.last_error) problems.push("last error: " + s.last_error);
  const items = [["Kind", s.kind], ["State", problems.length ? problems.join("; ") : "ok"],
    ["Last good read/write", ago(s.last_ok_ms)], ["Generation here", st.weights.generation],
    ["Decision", (st.weights.source || "") + ", " + ago(st.weights.updated_at_ms)]];
  for (const [k, v] of Object.entries(s)) {
    if (["kind", "last_ok_ms", "last_error", "degraded", "rollback_pending"].includes(k) || v === null) continue;
    items.push([k.replace(/_/g, " "), typeof v === "object" ? JSON.stringify(v) : String(v)]);
  }
  if (st.appmesh) {
    const a = st.appmesh;
    items.push(["App Mesh route", a.route + (a.last_error ? " · error: " + a.last_error : " · synced " + ago(a.last_ok_ms)) +
      (a.synced_generation !== undefined && a.synced_generation !== null ? " · generation " + a.synced_generation : "")]);
  }
  kv.replaceChildren(...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

/** `/status` `fleet` (docs/fleet.md): which generation each task runs, in text. */
function renderFleet() {
  const f = state.status.fleet;
  const summary = $("fleet-summary");
  const body = $("fleet").tBodies[0];
  $("fleet").hidden = !f;
  if (!f) {
    summary.className = "";
    summary.textContent = "This gateway does not report its fleet.";
    body.replaceChildren();
    return;
  }
  const tasks = f.tasks || [];
  const here = tasks.find((t) => t.this_task) || tasks[0] || {};
  const fresh = tasks.filter((t) => !t.stale);
  const stale = tasks.length - fresh.length;
  const count = tasks.length + (tasks.length === 1 ? " task" : " tasks") +
    (stale ? " (" + stale + " stale, not counted)" : "") + " · stale after " + fmt(f.stale_after_s, 0) + " s" +
    (f.reports_shared ? "" : " · reports not shared: only this task is known");
  let head;
  if (f.converged) head = "Converged on generation " + f.generation;
  else if (f.note) head = "Convergence unknown";
  else {
    const gens = new Map();
    for (const t of fresh) gens.set(t.generation, (gens.get(t.generation) || 0) + 1);
    head = "NOT converged: generations " + [...gens].sort((a, b) => b[0] - a[0]).map(([g, n]) => g + " (" + n + (n === 1 ? " task)" : " tasks)")).join(", ");
  }
  const lines = [head + " · " + count];
  if (f.note) lines.push("Note: " + f.note);
  if (f.last_error) lines.push("This task's report failed: " + f.last_error);
  summary.className = f.converged && !f.last_error ? "" : "bad";
  summary.replaceChildren(...lines.flatMap((l, i) => (i ? [el("br"), l] : [l])));
  body.replaceChildren(...tasks.map((t) => {
    const off = !t.stale && t.generation !== here.generation;
    const states = [];
    if (t.stale) states.push("STALE: not counted");
    states.push(t.ready ? "ready" : "not ready");
    if (t.draining) states.push("draining");
    if (t.degraded) states.push("DEGRADED");
    if (t.appmesh_failing) states.push("App Mesh sync failing");
    if (off) states.push("other generation than this task");
    return el("tr", { class: [t.this_task && "this-task", t.stale && "stale", off && "off-gen"].filter(Boolean).join(" ") },
      el("td", { text: t.task + (t.this_task ? " (this task)" : "") }),
      el("td", { text: String(t.generation) }),
      el("td", { text: fmt(t.age_s) + " s" }),
      el("td", { text: ago(t.applied_at_ms) }),
      el("td", { text: states.join(" · ") }),
      el("td", { text: t.version || "–" }));
  }));
}

function renderAudit(entries) {
  const rows = entries.slice().reverse().slice(0, 50).map((e) => {
    const names = Object.keys(Object.assign({}, e.old_weights, e.new_weights));
    const w = names.map((n) => n + " " + (e.old_weights[n] ?? "–") + " → " + (e.new_weights[n] ?? "–")).join(", ");
    return el("tr", {}, el("td", { text: new Date(e.at_ms).toLocaleTimeString() }), el("td", { text: e.source + (e.writer ? " · task " + e.writer : "") }),
      el("td", { text: String(e.generation) }), el("td", { text: w }),
      el("td", { text: e.old_stable === e.stable ? e.stable : e.old_stable + " → " + e.stable }));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, text: "No changes since the gateway started." })));
  $("audit").tBodies[0].replaceChildren(...rows);
}

// ---- wiring ---------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", signOut);
  $("weights-form").addEventListener("submit", reviewWeights);
  $("weights-reset").addEventListener("click", () => { state.weightsDirty = false; renderWeights(versions()); });
  $("canary-slider").addEventListener("input", sliderMoved);
  $("promote").addEventListener("click", promote);
  $("rollback").addEventListener("click", rollback);
  for (const verb of ["pause", "resume", "abort", "promote"]) $("ro-" + verb).addEventListener("click", () => rolloutAction(verb));
  $("ro-start").addEventListener("submit", startRollout);
  if (token()) start(); else $("token").focus();
});
