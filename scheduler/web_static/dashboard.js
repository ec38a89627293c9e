// The Seraphim dashboard: polls the scheduler's /api/ with the cluster token and draws jobs, one job's processes,
// its metric curves (plain SVG), its PS shards and its log (followed by byte offset). No build step, no library.
"use strict";

const TOKEN_KEY = "seraphim-token";
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#6e7781", "#bf3989"];
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("token")) {  // keep the token for this tab and take it out of the address bar
  sessionStorage.setItem(TOKEN_KEY, hash.get("token"));
  hash.delete("token");
  history.replaceState(null, "", "#" + hash.toString());
}
const state = { token: sessionStorage.getItem(TOKEN_KEY), job: hash.get("job"), logSource: "job", logOffset: -1,
                lastShards: {} };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

async function api(path) {
  const reply = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  const body = await reply.json();
  if (reply.status === 401) { askToken(body.error); throw new Error(body.error); }
  if (!reply.ok) throw new Error(body.error || reply.statusText);
  return body;
}

function askToken(message) {
  document.getElementById("token-form").hidden = false;
  setStatus(message || "the dashboard needs the cluster token", true);
}

function setStatus(text, error = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = error ? "error" : "";
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(s % 60).padStart(2, "0");
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + "G";
  if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k";
  return Number(v).toPrecision(4);
}

function fixed(v, digits = 4) { return v === undefined || v === null ? "" : Number(v).toFixed(digits); }

function renderJobs(jobs) {
  const body = document.querySelector("#jobs-table tbody");
  body.replaceChildren(...jobs.map((j) => {
    const loss = j.metrics.train_loss ?? j.metrics.loss;
    const row = el("tr", { "data-job": j.job_id, class: j.job_id === state.job ? "selected" : "" },
      el("td", {}, j.job_id), el("td", {}, j.algorithm), el("td", { class: "state-" + j.state }, j.state),
      el("td", {}, el("progress", { max: Math.max(j.total_steps, 1), value: j.step }), ` ${j.step}/${j.total_steps}`),
      el("td", { class: "num" }, j.restarts), el("td", { class: "num" }, duration(j.duration_s)),
      el("td", { class: "num" }, fixed(loss)));
    row.addEventListener("click", () => { selectJob(j.job_id); poll(); });
    return row;
  }));
  if (!state.job && jobs.length) selectJob(jobs[0].job_id);
}

function selectJob(jobId) {
  if (jobId === state.job) return;
  state.job = jobId;
  state.logOffset = -1;
  state.logSource = "job";
  state.lastShards = {};
  document.getElementById("log").textContent = "";
  hash.set("job", jobId);
  history.replaceState(null, "", "#" + hash.toString());
}

function renderJob(job) {
  document.getElementById("job").hidden = false;
  document.getElementById("job-title").textContent = job.job_id;
  const reason = job.reason ? ` — ${job.reason}` : "";
  document.getElementById("job-summary").replaceChildren(
    el("span", { class: "state-" + job.state }, job.state),
    ` ${job.algorithm}, ${job.num_ps} PS, ${job.num_workers} workers, step ${job.step}/${job.total_steps}, ` +
    `${job.restarts} restarts, ${duration(job.duration_s)}, run directory ${job.run_dir}${reason}`);
  document.querySelector("#processes tbody").replaceChildren(...job.processes.map((p) => el("tr", {},
    el("td", {}, p.name), el("td", {}, p.state), el("td", {}, p.host), el("td", { class: "num" }, p.pid),
    el("td", { class: "num" }, p.attempt), el("td", { class: "num" }, p.role === "worker" ? p.step : ""),
    el("td", { class: "num" }, p.heartbeat_age_s === null ? "" : p.heartbeat_age_s.toFixed(1) + " s"),
    el("td", {}, p.address))));
}

function chart(name, perWorker) {
  const width = 360, height = 170, left = 48, bottom = 22, top = 6, right = 8;
  const points = Object.values(perWorker).flat();
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => left + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (width - left - right);
  const sy = (y) => top + (y1 > y0 ? (y1 - y) / (y1 - y0) : 0.5) * (height - top - bottom);
  const plot = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, "data-metric": name });
  plot.append(svg("rect", { x: left, y: top, width: width - left - right, height: height - top - bottom,
                            fill: "none", stroke: "#d0d7de" }));
  for (const [text, x, y, anchor] of [[compact(y1), left - 4, top + 8, "end"],
                                       [compact(y0), left - 4, height - bottom, "end"],
                                       [x0, left, height - 6, "start"], [x1, width - right, height - 6, "end"]]) {
    const label = svg("text", { x, y, "text-anchor": anchor });
    label.textContent = text;
    plot.append(label);
  }
  const legend = el("div", { class: "legend" });
  Object.entries(perWorker).forEach(([worker, curve], i) => {
    const color = COLORS[i % COLORS.length];
    plot.append(svg("polyline", { fill: "none", stroke: color, "stroke-width": 1.5, "data-worker": worker,
                                  points: curve.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
    if (curve.length < 20) {  // evaluations are a few points: mark each one
      for (const p of curve) plot.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color }));
    }
    legend.append(el("span", { style: "color:" + color }, `worker ${worker}`));
  });
  return el("div", { class: "chart" }, el("div", { class: "title" }, name), plot, legend);
}

function renderCurves(curves) {
  const names = Object.keys(curves).sort();
  document.getElementById("charts").replaceChildren(...names.map((n) => chart(n, curves[n])));
}

function renderShards(reply) {
  const rows = [];
  for (const shard of reply.shards) {
    const totals = shard.totals, last = state.lastShards[shard.shard];
    const seconds = last ? shard.received - last.received : 0;
    const rate = seconds > 0 ? ((totals.rpcs || 0) - (last.rpcs || 0)) / seconds : null;
    state.lastShards[shard.shard] = { received: shard.received, rpcs: totals.rpcs || 0 };
    for (const [table, t] of Object.entries(shard.tables).sort()) {
      rows.push(el("tr", { "data-shard": shard.shard, "data-table": table },
        el("td", { class: "num" }, shard.shard), el("td", {}, table), el("td", { class: "num" }, t.table_rows ?? ""),
        el("td", { class: "num" }, t.pages_resident ?? ""), el("td", { class: "num" }, t.pages_on_disk ?? ""),
        el("td", { class: "num" }, fixed(t.page_hit_ratio, 3)), el("td", { class: "num" }, bytes(t.pulled_bytes_total || 0)),
        el("td", { class: "num" }, bytes(t.pushed_bytes_total || 0)),
        el("td", { class: "num" }, rate === null ? "" : rate.toFixed(1))));
    }
  }
  document.querySelector("#shards tbody").replaceChildren(...rows);
}

async function refreshJob() {
  if (!state.job) return;
  const job = encodeURIComponent(state.job);
  const [detail, curves, shards] = await Promise.all([api(`/api/jobs/${job}`), api(`/api/jobs/${job}/curves`),
                                                      api(`/api/jobs/${job}/shards`)]);
  renderJob(detail);
  renderCurves(curves.curves);
  renderShards(shards);
}

async function refreshLog() {
  if (!state.job) return;
  const source = state.logSource, job = encodeURIComponent(state.job);
  const reply = await api(`/api/jobs/${job}/logs?source=${encodeURIComponent(source)}&offset=${state.logOffset}`);
  if (source !== state.logSource) return;  // the source changed while this request was out
  const select = document.getElementById("log-source");
  if ([...select.options].map((o) => o.value).join() !== reply.sources.join()) {
    select.replaceChildren(...reply.sources.map((s) => el("option", { value: s }, s)));
  }
  select.value = source;
  state.logOffset = reply.offset;
  if (reply.text) {
    const pane = document.getElementById("log");
    pane.textContent = (pane.textContent + reply.text).slice(-256 * 1024);
    pane.scrollTop = pane.scrollHeight;
  }
}

async function poll() {
  if (!state.token) { askToken(); return; }
  try {
    const jobs = await api("/api/jobs");
    renderJobs(jobs.jobs);
    await refreshJob();
    if (document.getElementById("log-follow").checked || state.logOffset < 0) await refreshLog();
    setStatus("updated " + new Date().toLocaleTimeString());
  } catch (err) {
    setStatus(String(err.message || err), true);
  }
}

document.getElementById("log-source").addEventListener("change", (event) => {
  state.logSource = event.target.value;
  state.logOffset = -1;
  document.getElementById("log").textContent = "";
  poll();
});
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = document.getElementById("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  document.getElementById("token-form").hidden = true;
  poll();
});
setInterval(poll, 2000);
poll();
