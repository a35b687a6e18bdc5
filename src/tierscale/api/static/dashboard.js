// tierscale dashboard: polls the JSON API and draws every chart as plain SVG (no library, no CDN).
// Text from the API (reasons, errors) is only ever set with textContent, never parsed as HTML.
// The page is read-only (it holds no token): where a change is possible it shows the CLI command for it.
"use strict";

const POLL_MS = 2000;
const WINDOW_S = 900;
const SVG_NS = "http://www.w3.org/2000/svg";
const W = 560, H = 170, M = { l: 42, r: 10, t: 8, b: 20 };
const C = {
  blue: "#2f6fde", green: "#1f9d55", orange: "#e07b00", red: "#d33a2c",
  purple: "#8a4bd8", grey: "#9aa3b2", ink: "#1d2330",
};
const UNIT = { cpu: "%", requests_per_replica: " req/s", latency_p95_ms: " ms", prometheus: "" };
const METRIC_TITLE = {
  cpu: "CPU utilization",
  requests_per_replica: "Requests per replica",
  latency_p95_ms: "Latency p95 (per replica)",
  prometheus: "Prometheus query per replica",
};

// What each rollout state lets the user do, as `tierscale rollout ACTION GROUP` (see rolloutCommands).
const ROLLOUT_ACTIONS = {
  progressing: [["pause", "stop replacing replicas"], ["undo", "return to the previous revision"]],
  rolling_back: [["pause", "stop replacing replicas"]],
  awaiting_promotion: [["promote", "the canaries are healthy: go on"], ["undo", "drop the canaries"]],
  paused: [["resume", "go on"], ["undo", "return to the previous revision"]],
  failed: [["resume", "retry the rollout"], ["undo", "return to the previous revision"]],
};

let polls = 0;
const views = new Map(); // group name -> {root, parts...}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function s(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function clock(t) {
  return new Date(t * 1000).toTimeString().slice(0, 8);
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 100) return Math.round(v).toString();
  return Number(v.toPrecision(digits)).toString();
}

// A round grid step (1, 2, 2.5, 5 × 10^n) of at least `raw`.
function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

// series: [{label, color, xs, ys, dash, step, dots, unit}]
function drawChart(fig, now, series, opts = {}) {
  const svg = fig.querySelector("svg");
  const cap = fig.querySelector("figcaption");
  const tmin = now - WINDOW_S;
  const x = (t) => M.l + ((t - tmin) / WINDOW_S) * (W - M.l - M.r);
  let ymax = opts.yMin || 0;
  let points = 0;
  for (const se of series) {
    for (let i = 0; i < se.xs.length; i++) {
      const v = se.ys[i];
      if (v !== null && v !== undefined && se.xs[i] >= tmin) ymax = Math.max(ymax, v);
    }
  }
  // Headroom above the highest line, then a grid of about four round steps.
  const top = Math.max(ymax * 1.1, opts.integer ? 1 : 1e-9);
  let step = niceStep(top / 4);
  if (opts.integer) step = Math.max(1, Math.ceil(step));
  const ticks = Math.max(1, Math.ceil(top / step));
  ymax = ticks * step;
  const y = (v) => H - M.b - (v / ymax) * (H - M.t - M.b);
  svg.replaceChildren();
  for (let i = 0; i <= ticks; i++) {
    const v = step * i;
    svg.append(s("line", { class: "grid", x1: M.l, x2: W - M.r, y1: y(v), y2: y(v) }));
    const label = s("text", { class: "axis", x: M.l - 5, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = fmt(v, 2);
    svg.append(label);
  }
  for (let m = 0; m <= 15; m += 3) {
    const t = tmin + m * 60;
    const label = s("text", { class: "axis", x: x(t), y: H - 5, "text-anchor": m === 0 ? "start" : "middle" });
    label.textContent = m === 15 ? "now" : `-${15 - m}m`;
    svg.append(label);
  }
  // lines
  for (const se of series) {
    let d = "";
    let prev = null;
    for (let i = 0; i < se.xs.length; i++) {
      const t = se.xs[i], v = se.ys[i];
      if (t < tmin || v === null || v === undefined) { prev = null; continue; }
      const px = x(t).toFixed(1), py = y(v).toFixed(1);
      if (se.dots) {
        const dot = s("circle", { cx: px, cy: py, r: 3.5, fill: se.color, "fill-opacity": 0.75 });
        const title = s("title");
        title.textContent = `${clock(t)} ${se.label}: ${fmt(v)}${se.unit || ""}`;
        dot.append(title);
        svg.append(dot);
      } else if (prev === null) d += `M${px} ${py}`;
      else if (se.step) d += `H${px}V${py}`;
      else d += `L${px} ${py}`;
      prev = v;
      points++;
    }
    if (d) {
      svg.append(s("path", {
        d, fill: "none", stroke: se.color, "stroke-width": se.width || 2,
        "stroke-dasharray": se.dash ? "5 4" : "none", "stroke-linejoin": "round",
      }));
    }
  }
  for (const mk of opts.markers || []) {
    if (mk.t < tmin) continue;
    const px = x(mk.t);
    const tri = s("path", {
      d: mk.up ? `M${px - 4} ${M.t + 8}L${px + 4} ${M.t + 8}L${px} ${M.t}Z` : `M${px - 4} ${M.t}L${px + 4} ${M.t}L${px} ${M.t + 8}Z`,
      fill: mk.up ? C.green : C.purple,
    });
    const title = s("title");
    title.textContent = `${clock(mk.t)} ${mk.text}`;
    tri.append(title);
    svg.append(tri);
  }
  if (points === 0) {
    const t = s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" });
    t.textContent = opts.empty || "no data yet";
    svg.append(t);
  }
  svg.setAttribute("data-points", String(points));
  // caption: title + legend with the latest value of each line
  cap.replaceChildren(h("span", { class: "title" }, opts.title));
  for (const se of series) {
    let last = null;
    for (let i = se.ys.length - 1; i >= 0; i--) if (se.ys[i] !== null && se.ys[i] !== undefined) { last = se.ys[i]; break; }
    const sw = h("span", { class: se.dash ? "sw dash" : "sw" });
    sw.style.background = se.color;
    sw.style.color = se.color;
    cap.append(h("span", {}, sw, `${se.label} ${fmt(last)}${last === null ? "" : se.unit || ""}`));
  }
  return points;
}

function figure(name) {
  return h("figure", { "data-chart": name }, h("figcaption"), s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}` }));
}

function kpi(label) {
  const b = h("b", {}, "–");
  return [h("div", { class: "kpi" }, b, h("span", {}, label)), b];
}

function makeView(name) {
  const v = {};
  v.title = h("h2", {}, name);
  v.chips = h("span", { class: "chips" });
  const [kd, bd] = kpi("desired"), [kc, bc] = kpi("current"), [kr, br] = kpi("ready");
  const [kq, bq] = kpi("req/s"), [kp, bp] = kpi("p95 ms");
  v.kpi = { desired: bd, current: bc, ready: br, rps: bq, p95: bp };
  v.why = h("div", { class: "why" }, "waiting for the first decision…");
  v.rollout = makeRolloutStrip();
  v.ha = h("div", { class: "ha", hidden: "" });
  v.charts = h("div", { class: "charts" });
  v.figs = { replicas: figure("replicas"), traffic: figure("traffic"), latency: figure("latency"), provision: figure("provision") };
  v.metricFigs = new Map();
  v.tbody = h("tbody");
  const table = h("table", { class: "replicas" },
    h("thead", {}, h("tr", {}, ...["replica", "address", "revision", "state", "health", "cpu %", "req/s", "p95 ms", "age"].map(
      (c, i) => h("th", { class: i >= 5 ? "num" : "" }, c)))),
    v.tbody);
  v.timeline = h("ol", { class: "timeline" });
  v.root = h("section", { class: "group", "data-group": name },
    h("div", { class: "ghead" }, v.title, v.chips, h("div", { class: "kpis" }, kd, kc, kr, kq, kp)),
    v.why, v.ha, v.rollout.root, v.charts,
    h("div", { class: "bottom" },
      h("div", {}, h("h3", {}, "Replicas"), table),
      h("div", {}, h("h3", {}, "Decisions and events"), v.timeline)));
  return v;
}

function makeRolloutStrip() {
  const r = {};
  r.state = h("span", { class: "rstate" });
  r.revs = h("span", { class: "revs" });
  r.counts = h("span", { class: "rcounts" });
  r.bar = h("div", { class: "rbar" });
  r.legend = h("div", { class: "rlegend" });
  r.reason = h("div", { class: "rreason" });
  r.cmds = h("div", { class: "rcmds" });
  r.root = h("div", { class: "rollout", hidden: "" },
    h("div", { class: "rhead" }, h("b", {}, "Rollout"), r.state, r.revs, r.counts), r.bar, r.legend, r.reason, r.cmds);
  return r;
}

// Shown while a rollout is under way, or while replicas of several revisions serve side by side.
function rolloutShown(ro) {
  return !!ro && (ro.state !== "complete" || Object.keys(ro.replicas || {}).length > 1);
}

function cliSuffix() {
  // The CLI's default address is 127.0.0.1:9900; a dashboard served elsewhere names its own.
  const origin = window.location.origin;
  const atDefault = location.port === "9900" && ["127.0.0.1", "localhost"].includes(location.hostname);
  return atDefault ? "" : ` --api ${origin}`;
}

function rolloutCommands(group, ro) {
  const out = [];
  for (const [action, what] of ROLLOUT_ACTIONS[ro.state] || []) {
    if (action === "undo" && !ro.previous) continue;
    out.push([`tierscale rollout ${action} ${group}${cliSuffix()}`, what]);
  }
  out.push([`tierscale rollout status ${group}${cliSuffix()}`, "follow it"]);
  return out;
}

// With `ha:`: who leads, and each controller's last renew (a standby serves this page read-only).
function renderHa(el, ha) {
  el.hidden = !ha;
  if (!ha) return;
  el.setAttribute("data-role", ha.role);
  const now = Date.now() / 1000;
  const lead = ha.role === "leader" ? "leads" : `stands by; leader ${ha.leader || "unknown"}${ha.leader_api ? ` at ${ha.leader_api}` : ""}`;
  el.replaceChildren(
    h("b", {}, "Controllers"), ` ${ha.name} ${lead}`,
    ...(ha.members || []).map((m) => h("span", { class: `member ${m.role}`, "data-member": m.name },
      `${m.name}: ${m.role}, renewed ${Math.max(0, now - m.renewed_at).toFixed(1)} s ago`)),
    ...(ha.error ? [h("span", { class: "bad" }, `etcd: ${ha.error}`)] : []));
}

function renderRollout(r, st) {
  const ro = st.rollout;
  const shown = rolloutShown(ro);
  r.root.hidden = !shown;
  r.root.setAttribute("data-state", shown ? ro.state : "");
  if (!shown) return;
  r.root.setAttribute("data-target", ro.target);
  r.state.className = `rstate ${ro.state}`;
  r.state.textContent = ro.state.replace("_", " ");
  r.revs.replaceChildren(h("code", { class: "rv new" }, ro.target), " ← ", h("code", { class: "rv old" }, ro.previous || "unknown"));
  r.revs.title = `new replicas are made from ${ro.target}; ${ro.previous ? `${ro.previous} was the last revision fully rolled out` : "no earlier revision is known"}`;
  if (ro.declared !== ro.target) r.revs.append(h("span", { class: "muted" }, ` (config: ${ro.declared}${ro.rejected === ro.declared ? ", rejected" : ""})`));
  const desired = st.desired ?? "–";
  const parts = [`${ro.updated}/${desired} updated`, `${ro.healthy} healthy`, `surge +${ro.max_surge}`, `unavailable ${ro.max_unavailable}`];
  if (ro.canary > 0) parts.push(`canary ${ro.canary}${ro.promoted ? " (promoted)" : ""}`);
  if (ro.started_at) parts.push(`since ${clock(ro.started_at)}`);
  r.counts.textContent = parts.join(" · ");
  // One segment per revision, as wide as its share of the replicas: the target first, then the others.
  const revs = Object.entries(ro.replicas || {}).sort((a, b) => (b[0] === ro.target) - (a[0] === ro.target) || b[1] - a[1]);
  const total = revs.reduce((n, [, c]) => n + c, 0);
  r.bar.replaceChildren(...revs.map(([rev, n]) => {
    const kind = rev === ro.target ? "new" : rev === ro.rejected ? "rejected" : "old";
    const seg = h("span", { class: `seg ${kind}`, "data-revision": rev, "data-count": String(n), title: `${rev}: ${n} replica(s)` }, String(n));
    seg.style.flexGrow = String(n);
    return seg;
  }));
  if (!total) r.bar.append(h("span", { class: "seg none" }, "no replicas"));
  r.legend.replaceChildren(...revs.map(([rev, n]) => {
    const kind = rev === ro.target ? "new" : rev === ro.rejected ? "rejected" : "old";
    const label = kind === "new" ? "target" : kind === "rejected" ? "rejected" : rev === ro.previous ? "previous" : "old";
    return h("span", {}, h("span", { class: `sw ${kind}` }), `${rev} ${label} × ${n}`);
  }));
  r.reason.textContent = ro.reason ? `Reason: ${ro.reason}` : "";
  r.reason.hidden = !ro.reason;
  const cmds = rolloutCommands(st.group, ro);
  r.cmds.replaceChildren(h("span", { class: "muted" }, "From a shell with the API token:"),
    ...cmds.map(([cmd, what]) => h("span", { class: "cmd" }, h("code", {}, cmd), h("span", { class: "muted" }, ` ${what}`))));
}

function metricFig(v, name) {
  if (!v.metricFigs.has(name)) v.metricFigs.set(name, figure(`metric-${name}`));
  return v.metricFigs.get(name);
}

function layoutCharts(v, metricNames) {
  const figs = [v.figs.replicas, ...metricNames.map((m) => metricFig(v, m)), v.figs.traffic, v.figs.latency, v.figs.provision];
  if (figs.length !== v.charts.children.length || figs.some((f, i) => v.charts.children[i] !== f)) v.charts.replaceChildren(...figs);
}

function kindClass(kind) {
  if (/fail|error|unhealthy|replaced|rollback|mismatch/.test(kind)) return "kind bad";
  if (/ready|created|adopted|rollout_complete/.test(kind)) return "kind good";
  if (/drain|deleted|unmanaged/.test(kind)) return "kind leave";
  if (/^rollout_|^config_/.test(kind)) return "kind roll";
  if (kind === "manual") return "kind manual";
  return "kind";
}

function renderGroup(v, st, series, events) {
  const now = series.now;
  v.chips.replaceChildren(
    h("span", { class: "chip" }, st.tier), h("span", { class: "chip" }, st.policy),
    h("span", { class: "chip" }, `min ${st.min} · max ${st.max}`));
  if (st.paused) v.chips.append(h("span", { class: "chip paused" }, st.manual_replicas !== null ? `PAUSED at ${st.manual_replicas}` : "PAUSED"));
  if (st.dry_run) v.chips.append(h("span", { class: "chip" }, "dry run"));
  if (st.provider_ok === false) v.chips.append(h("span", { class: "chip err" }, `provider error: ${st.last_error}`));
  if (st.revision) v.chips.append(h("span", { class: "chip", title: "template revision new replicas are made from" }, `rev ${st.revision}`));
  const ro = st.rollout;
  if (ro && ro.state === "complete" && ro.rejected && ro.rejected === ro.declared && ro.declared !== ro.target) {
    v.chips.append(h("span", {
      class: "chip paused", title: `the config's revision was rolled back; \`tierscale rollout resume ${st.group}\` retries it`,
    }, `rolled back from ${ro.declared}`));
  }
  v.kpi.desired.textContent = st.desired ?? "–";
  v.kpi.current.textContent = st.current;
  v.kpi.ready.textContent = st.ready;
  v.kpi.rps.textContent = fmt(st.rps);
  v.kpi.p95.textContent = fmt(st.p95_ms);
  const d = st.last_decision;
  if (d) {
    v.why.replaceChildren(h("b", {}, "Why: "), `${d.current} → ${d.desired}: ${d.reason}`);
    if (d.limits.length) v.why.append(h("span", { class: "limits" }, `limited by ${d.limits.join(", ")}`));
  }
  const t = series.t;
  const markers = events.filter((e) => e.type === "decision").map((e) => ({
    t: e.ts, up: e.desired > e.current, text: `${e.current} → ${e.desired}: ${e.message}`,
  }));
  const names = Object.keys(series.metrics);
  layoutCharts(v, names);
  // desired is drawn last, dashed, so it stays visible where the three lines coincide
  drawChart(v.figs.replicas, now, [
    { label: "current", color: C.green, xs: t, ys: series.current, step: true, width: 3 },
    { label: "ready", color: C.orange, xs: t, ys: series.ready, step: true, width: 1.5 },
    { label: "desired", color: C.blue, xs: t, ys: series.desired, step: true, dash: true },
    { label: "max", color: C.grey, xs: t.length ? [t[0], now] : [], ys: t.length ? [st.max, st.max] : [], dash: true, width: 1 },
  ], { title: "Replicas", integer: true, yMin: st.max > 0 ? Math.min(st.max, Math.max(1, st.min)) : 1, markers });
  v.figs.replicas.setAttribute("data-desired", String(st.desired));
  for (const name of names) {
    const m = series.metrics[name];
    drawChart(metricFig(v, name), now, [
      { label: "value", color: C.purple, xs: t, ys: m.value, unit: UNIT[name] },
      { label: "target", color: C.red, xs: t, ys: m.target, dash: true, unit: UNIT[name] },
    ], { title: METRIC_TITLE[name] || name, empty: st.paused ? "policy paused" : "no data yet" });
  }
  drawChart(v.figs.traffic, now, [{ label: "req/s", color: C.blue, xs: t, ys: series.rps }], { title: "Requests/s at the balancer" });
  drawChart(v.figs.latency, now, [{ label: "p95", color: C.orange, xs: t, ys: series.p95_ms, unit: " ms" }], { title: "Latency p95 at the balancer" });
  const prov = series.provision;
  drawChart(v.figs.provision, now, [
    { label: "latest", color: C.green, xs: prov.map((p) => p.t), ys: prov.map((p) => p.seconds), dots: true, unit: " s" },
  ], { title: "Provision time (create → healthy)", empty: "no replica provisioned in 15 min" });
  renderRollout(v.rollout, st);
  renderHa(v.ha, st.ha);
  // replica table; a replica not on the revision new ones are made from is marked "old"
  const target = (st.rollout && st.rollout.target) || st.revision;
  v.tbody.replaceChildren(...st.replicas.map((r) => {
    const bar = h("span", { class: "cpubar" }, h("i"));
    bar.firstChild.style.width = `${Math.min(100, r.cpu || 0)}%`;
    const off = !!target && r.revision !== target;
    const rev = h("td", { class: off ? "rev off" : "rev", "data-revision": r.revision }, h("code", {}, r.revision || "unmarked"));
    if (off) {
      rev.append(h("span", { class: "tag" }, "old"));
      rev.title = `not the target revision ${target}`;
    }
    const addr = h("td", {}, r.address || "–");
    if (r.host) addr.title = `on ${r.host}`;
    return h("tr", { "data-replica": r.id },
      h("td", {}, r.id), addr, rev, h("td", { class: `state ${r.state}` }, r.state),
      h("td", {}, r.health), h("td", { class: "num" }, bar, fmt(r.cpu, 2)), h("td", { class: "num" }, fmt(r.rps)),
      h("td", { class: "num" }, fmt(r.p95_ms)), h("td", { class: "num" }, `${Math.round(r.age)}s`));
  }));
  if (!st.replicas.length) v.tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "no replicas")));
  // timeline, newest first; a count change shows once, as its decision (the "scaled" event repeats it)
  const rows = events.filter((e) => e.kind !== "scaled").reverse().slice(0, 80).map((e) => {
    const kind = e.type === "decision" ? "decision" : e.kind;
    const msg = e.type === "decision" ? `${e.current} → ${e.desired}: ${e.message}` : e.message;
    const li = h("li", { class: e.type, "data-kind": kind }, h("time", {}, clock(e.ts)), h("span", { class: kindClass(kind), title: kind }, kind), h("span", { class: "msg" }, msg));
    if (e.type === "decision" && e.limits && e.limits.length) li.title = `limited by ${e.limits.join(", ")}`;
    return li;
  });
  v.timeline.replaceChildren(...rows);
  v.timeline.setAttribute("data-count", String(rows.length));
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const { groups } = await getJSON("/api/groups");
    const main = document.getElementById("groups");
    const details = await Promise.all(groups.map((g) => {
      const q = encodeURIComponent(g.group);
      return Promise.all([getJSON(`/api/groups/${q}/series`), getJSON(`/api/events?group=${q}&since=15m&limit=200`)]);
    }));
    const wanted = [];
    groups.forEach((g, i) => {
      if (!views.has(g.group)) views.set(g.group, makeView(g.group));
      const v = views.get(g.group);
      renderGroup(v, g, details[i][0], details[i][1].events);
      wanted.push(v.root);
    });
    if (!wanted.length) main.replaceChildren(h("p", { class: "muted" }, "no groups configured"));
    else if (wanted.length !== main.children.length || wanted.some((r, i) => main.children[i] !== r)) main.replaceChildren(...wanted);
    polls++;
    document.body.setAttribute("data-polls", String(polls));
    conn.textContent = "live";
    conn.className = "conn live";
    document.getElementById("updated").textContent = `updated ${clock(Date.now() / 1000)}`;
  } catch (err) {
    conn.textContent = `disconnected (${err.message})`;
    conn.className = "conn down";
  }
  setTimeout(poll, POLL_MS);
}

poll();
