// The live view of a thunkmesh rendezvous: it follows /api/events (server-sent events) and
// draws the nodes, the jobs, a task stream (one row per node slot), the bytes moved and the
// ready queue over time, and the thunks of each job. Plain script, no library, nothing fetched
// from elsewhere.
"use strict";

const WINDOW_MS = 120000;
const tasks = new Map(); // task id (a decimal string) -> what the journal said of it
const jobs = new Map(); // job -> { status, tasks: [task ids], gone }
const samples = []; // { at, ready, running }
const openJobs = new Set();
let status = null;
let statusAt = 0; // performance.now() when `status` came
let selected = null;
let drawing = false;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function seconds(ms) { return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s"; }

function colour(program) {
  let h = 2166136261;
  for (let i = 0; i < program.length; i++) { h = Math.imul(h ^ program.charCodeAt(i), 16777619) >>> 0; }
  return "hsl(" + (h % 360) + ",60%,55%)";
}

/** The rendezvous' clock now, in milliseconds since it started. */
function now() {
  return status ? status.uptime_ms + (performance.now() - statusAt) : 0;
}

function job(id) {
  if (!jobs.has(id)) { jobs.set(id, { status: null, tasks: [], gone: false }); }
  return jobs.get(id);
}

function onJournal(data) {
  for (const e of data.entries) {
    if (e.kind === "started") {
      if (!tasks.has(e.task)) { job(e.job).tasks.push(e.task); }
      tasks.set(e.task, { ...e, start: e.at_ms, end: null, ok: null });
    } else if (e.kind === "ended") {
      const t = tasks.get(e.task);
      if (t) { Object.assign(t, { end: e.at_ms, ok: e.ok, ended: e }); }
    }
  }
  schedule();
}

function onStatus(s) {
  status = s;
  statusAt = performance.now();
  const live = new Set(s.jobs.map((j) => j.session));
  for (const j of s.jobs) { job(j.session).status = j; }
  for (const [id, j] of jobs) { j.gone = !live.has(id); }
  const ready = s.jobs.reduce((n, j) => n + j.thunks_queued, 0);
  const running = s.jobs.reduce((n, j) => n + j.thunks_running, 0);
  samples.push({ at: s.uptime_ms, ready, running });
  while (samples.length > 2000) { samples.shift(); }
  schedule();
}

function schedule() {
  if (!drawing) {
    drawing = true;
    requestAnimationFrame(() => { drawing = false; draw(); });
  }
}

function draw() {
  if (!status) { return; }
  $("uptime").textContent = "up " + seconds(status.uptime_ms) + ", " + status.nodes.length + " node(s)";
  drawNodes();
  drawJobs();
  drawStream();
  drawBytes();
  drawQueue();
  drawFinished();
}

function drawNodes() {
  $("nodes").tBodies[0].innerHTML = status.nodes.map((n) =>
    "<tr><td>" + esc(n.name) + "</td><td>" + esc(n.nat) + "</td><td>" + n.slots + "</td><td>" + n.running +
    "</td><td>" + n.cached_objects + " (" + bytes(n.cached_bytes) + ")</td><td>" + seconds(n.connected_ms) + " ago</td><td>" + esc(n.sandbox) + "</td></tr>"
  ).join("");
}

function drawJobs() {
  const rows = [];
  for (const [id, j] of jobs) {
    const s = j.status;
    if (!s) { continue; }
    const done = j.tasks.filter((t) => tasks.get(t).ok === true).length;
    const state = j.gone ? "finished" : "running";
    const share = s.thunks_total ? (100 * s.thunks_done / s.thunks_total) : 0;
    rows.push("<tr data-job=\"" + id + "\"><td>" + id + "</td><td>" + esc(s.mode) + "</td><td><span class=\"bar\"><i style=\"width:" +
      share.toFixed(1) + "%\"></i></span> " + s.thunks_done + "/" + s.thunks_total + "</td><td>" + done + " task(s)</td><td>" +
      (j.gone ? 0 : s.thunks_running) + "</td><td>" + (j.gone ? 0 : s.thunks_queued) + "</td><td>" + s.thunks_per_second.toFixed(1) +
      "</td><td class=\"state\">" + state + "</td></tr>");
  }
  $("jobs").tBodies[0].innerHTML = rows.reverse().join("") || "<tr><td colspan=\"8\" class=\"hint\">No job yet.</td></tr>";
}

/** Rows of the task stream: each node's slots, tasks packed on the first free one. */
function lanes(from) {
  const byNode = new Map();
  for (const n of status.nodes) { byNode.set(n.name, { ends: new Array(n.slots).fill(-1), placed: [] }); }
  const shown = [...tasks.values()].filter((t) => (t.end === null || t.end >= from)).sort((a, b) => a.start - b.start);
  for (const t of shown) {
    if (!byNode.has(t.node)) { byNode.set(t.node, { ends: [], placed: [] }); }
    const n = byNode.get(t.node);
    let lane = n.ends.findIndex((end) => end !== null && end <= t.start);
    if (lane < 0) { lane = n.ends.length; n.ends.push(null); }
    n.ends[lane] = t.end;
    n.placed.push({ t, lane });
  }
  return byNode;
}

function drawStream() {
  const svg = $("stream");
  const width = svg.clientWidth || 900;
  const label = 130, row = 16, end = now(), from = Math.max(0, end - WINDOW_MS);
  const first = Math.min(...[...tasks.values()].map((t) => t.start).filter((s) => s >= from), end);
  const span = Math.max(1000, end - first);
  const x = (ms) => label + (ms - first) / span * (width - label - 10);
  const parts = [];
  let y = 0;
  const programs = new Set();
  for (const [name, n] of lanes(first)) {
    const rows = Math.max(1, n.ends.length);
    parts.push("<text x=\"2\" y=\"" + (y + 12) + "\">" + esc(name) + "</text>");
    for (const { t, lane } of n.placed) {
      programs.add(t.program);
      const top = y + lane * row + 1, x0 = x(Math.max(t.start, first)), x1 = x(t.end === null ? end : t.end);
      const cls = "task" + (t.ok === false ? " failed" : "") + (selected === t.task ? " selected" : "");
      parts.push("<rect class=\"" + cls + "\" data-task=\"" + t.task + "\" x=\"" + x0.toFixed(1) + "\" y=\"" + top +
        "\" width=\"" + Math.max(1.5, x1 - x0).toFixed(1) + "\" height=\"" + (row - 3) + "\" fill=\"" + colour(t.program) +
        "\"><title>" + esc(t.name) + " on " + esc(t.node) + "</title></rect>");
      const fetch = t.ended ? t.ended.fetch_ms : 0;
      if (fetch > 0) {
        parts.push("<rect class=\"fetch\" x=\"" + x0.toFixed(1) + "\" y=\"" + top + "\" width=\"" +
          Math.min(Math.max(1, x(first + fetch) - label), Math.max(1.5, x1 - x0)).toFixed(1) + "\" height=\"" + (row - 3) + "\"></rect>");
      }
    }
    y += rows * row + 4;
  }
  for (let i = 0; i <= 4; i++) {
    const ms = first + span * i / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    parts.push("<text x=\"" + x(ms).toFixed(1) + "\" y=\"" + (y + 12) + "\" text-anchor=\"" + anchor + "\">" + seconds(ms - first) + "</text>");
  }
  svg.setAttribute("height", y + 18);
  svg.innerHTML = parts.join("");
  $("legend").innerHTML = [...programs].sort().map((p) => "<span><i style=\"background:" + colour(p) + "\"></i>" + esc(p) + "</span>").join("");
}

function chart(svg, series, max, from, end, kind) {
  const width = svg.clientWidth || 400, height = 140, left = 60;
  const x = (ms) => left + (ms - from) / Math.max(1, end - from) * (width - left - 6);
  const y = (v) => height - 4 - v / Math.max(max, 1) * (height - 14);
  const parts = ["<text x=\"0\" y=\"12\">" + esc(kind(max)) + "</text><text x=\"0\" y=\"" + (height - 4) + "\">0</text>"];
  for (const s of series) { parts.push(s(x, y)); }
  parts.push("<text x=\"" + left + "\" y=\"" + (height + 14) + "\">" + seconds(end - from) + " shown</text>");
  svg.setAttribute("height", height + 18);
  svg.innerHTML = parts.join("");
}

function drawBytes() {
  const end = now(), from = Math.max(0, end - WINDOW_MS), bin = 1000;
  const keys = [["peer_bytes", "#3b82f6"], ["relay_bytes", "#a855f7"], ["storage_read_bytes", "#f59e0b"], ["storage_written_bytes", "#ef4444"]];
  const bins = new Map();
  for (const t of tasks.values()) {
    if (!t.ended || t.end < from) { continue; }
    const b = Math.floor(t.end / bin);
    const sums = bins.get(b) || [0, 0, 0, 0];
    keys.forEach(([k], i) => { sums[i] += t.ended[k]; });
    bins.set(b, sums);
  }
  const max = Math.max(0, ...[...bins.values()].map((s) => s.reduce((a, v) => a + v, 0)));
  chart($("bytes"), [(x, y) => {
    const bars = [];
    for (const [b, sums] of bins) {
      let base = 0;
      sums.forEach((v, i) => {
        if (v > 0) {
          bars.push("<rect x=\"" + x(b * bin).toFixed(1) + "\" y=\"" + y(base + v).toFixed(1) + "\" width=\"" +
            Math.max(2, x((b + 1) * bin) - x(b * bin) - 1).toFixed(1) + "\" height=\"" + (y(base) - y(base + v)).toFixed(1) +
            "\" fill=\"" + keys[i][1] + "\"></rect>");
        }
        base += v;
      });
    }
    return bars.join("");
  }], max, from, end, (m) => bytes(m) + "/s");
}

function drawQueue() {
  const end = now(), from = Math.max(0, end - WINDOW_MS);
  const shown = samples.filter((s) => s.at >= from);
  const max = Math.max(1, ...shown.map((s) => Math.max(s.ready, s.running)));
  const line = (key, colour) => (x, y) => "<polyline fill=\"none\" stroke=\"" + colour + "\" stroke-width=\"2\" points=\"" +
    shown.map((s) => x(s.at).toFixed(1) + "," + y(s[key]).toFixed(1)).join(" ") + "\"></polyline>";
  chart($("queue"), [line("ready", "#10b981"), line("running", "#64748b")], max, from, end, (m) => m + " thunks");
}

function drawDetail() {
  const t = tasks.get(selected);
  if (!t) { $("detail").innerHTML = "Nothing selected."; return; }
  const e = t.ended;
  const inputs = t.inputs.map((i) => "<tr><td><code>" + esc(i.blob.slice(0, 20)) + "…</code></td><td>" + bytes(i.bytes) +
    "</td><td>" + esc(i.from) + "</td></tr>").join("");
  const more = t.inputs_total > t.inputs.length ? "<p class=\"hint\">and " + (t.inputs_total - t.inputs.length) + " more input(s)</p>" : "";
  $("detail").innerHTML = "<p><b>" + esc(t.name) + "</b> (job " + t.job + ", task " + t.task + ") ran <b>" + esc(t.program) +
    "</b> on <b>" + esc(t.node) + "</b>: " + (t.end === null ? "running for " + seconds(now() - t.start) :
      seconds(t.end - t.start) + (t.ok ? ", succeeded" : ", did not succeed")) + ".</p><p>Why there: " + esc(t.why) + ".</p>" +
    (e ? "<p>Program " + e.program_ms.toFixed(1) + " ms, fetching " + e.fetch_ms.toFixed(1) + " ms; moved " + bytes(e.peer_bytes) +
      " from peers, " + bytes(e.relay_bytes) + " through the relay, " + bytes(e.storage_read_bytes) + " from storage, wrote " +
      bytes(e.storage_written_bytes) + " to storage.</p>" : "") +
    "<table><thead><tr><th>input</th><th>size</th><th>from</th></tr></thead><tbody>" + inputs + "</tbody></table>" + more;
}

function drawFinished() {
  const parts = [];
  for (const [id, j] of [...jobs].reverse()) {
    const ts = j.tasks.map((t) => tasks.get(t)).filter(Boolean);
    const ok = ts.filter((t) => t.ok === true).length, failed = ts.filter((t) => t.ok === false).length;
    const rows = ts.map((t) => "<tr><td>" + esc(t.name) + "</td><td>" + esc(t.node) + "</td><td>" +
      (t.end === null ? "running" : seconds(t.end - t.start)) + "</td><td>" + (t.ok === null ? "" : t.ok ? "ok" : "failed") + "</td></tr>").join("");
    parts.push("<details data-job=\"" + id + "\"" + (openJobs.has(id) ? " open" : "") + "><summary>job " + id + " (" +
      (j.gone ? "finished" : "running") + "): " + ts.length + " task(s), " + ok + " succeeded, " + failed + " not</summary>" +
      "<table><thead><tr><th>thunk</th><th>node</th><th>time</th><th></th></tr></thead><tbody>" + rows + "</tbody></table></details>");
  }
  $("finished").innerHTML = parts.join("") || "<p class=\"hint\">No task yet.</p>";
  drawDetail();
}

$("stream").addEventListener("click", (ev) => {
  const task = ev.target.getAttribute && ev.target.getAttribute("data-task");
  if (task) { selected = task; schedule(); }
});

$("finished").addEventListener("toggle", (ev) => {
  const id = Number(ev.target.getAttribute("data-job"));
  if (ev.target.open) { openJobs.add(id); } else { openJobs.delete(id); }
}, true);

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "on"; });
  events.addEventListener("status", (m) => onStatus(JSON.parse(m.data)));
  events.addEventListener("journal", (m) => onJournal(JSON.parse(m.data)));
  events.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "off"; });
}

setInterval(schedule, 500);
connect();
