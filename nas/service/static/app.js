// The nas web page: a jobs table, and per job its fronts, hypervolume, learning curves and
// predictors. Everything comes from the API with the bearer token, which the page takes from
// "#token=..." in its address (never sent to the server) or from the form, and keeps per tab.
"use strict";

const POLL_MS = 3000;
const ACTIVE = ["pending", "running"];
window.nasCharts = {}; // canvas id -> Chart, for tests and the console

function token() { return sessionStorage.getItem("nasToken"); }

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token()}`, ...(options.headers || {}) },
  });
  if (response.status === 401) {
    sessionStorage.removeItem("nasToken");
    showLogin();
    throw new Error("the token was refused");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

function showError(error) { document.getElementById("error").textContent = error ? String(error.message || error) : ""; }

function showLogin() {
  for (const id of ["jobs", "job"]) document.getElementById(id).hidden = true;
  document.getElementById("login").hidden = false;
}

function cell(row, text) { const td = row.insertCell(); td.textContent = text ?? ""; return td; }

function fmt(key, value) {
  if (value === null || value === undefined) return "-";
  if (/^(macs|params)/.test(key)) return Math.round(value).toLocaleString("en");
  if (/accuracy/.test(key)) return value.toFixed(4);
  return Number(value).toPrecision(4);
}

// ---- the jobs table ---------------------------------------------------------------------------
async function showJobs() {
  document.getElementById("jobs").hidden = false;
  document.getElementById("where").textContent = "jobs";
  const body = document.querySelector("#jobs-table tbody");
  const refresh = async () => {
    try {
      const jobs = await getJson("/api/jobs");
      body.replaceChildren();
      for (const job of jobs) {
        const row = body.insertRow();
        row.className = `status-${job.status}`;
        const link = document.createElement("a");
        link.href = `/jobs/${job.id}`;
        link.textContent = job.id;
        cell(row, "").append(link);
        for (const text of [job.name, job.status, job.stage, job.stage_detail,
          job.created_at.replace("T", " ").slice(0, 19)]) cell(row, text);
      }
      showError(null);
    } catch (error) { showError(error); }
  };
  await refresh();
  setInterval(refresh, POLL_MS);
}

// ---- one job ----------------------------------------------------------------------------------
function chart(container, id, config) {
  let canvas = document.getElementById(id);
  if (!canvas) {
    const box = document.createElement("div");
    box.className = "chart";
    canvas = document.createElement("canvas");
    canvas.id = id;
    box.append(canvas);
    container.append(box);
  }
  if (window.nasCharts[id]) window.nasCharts[id].destroy();
  config.options = { animation: false, maintainAspectRatio: false, ...config.options };
  window.nasCharts[id] = new Chart(canvas, config);
  return window.nasCharts[id];
}

function axis(title, type = "linear") { return { type, title: { display: true, text: title } }; }

function frontChart(jobId, front) {
  const [yKey, xKey] = front.objectives;
  const label = front.target ? `target ${front.target}` : "spec objectives";
  const id = `front-${front.target || "objectives"}`;
  const points = front.points.map((p) => ({ x: p.metrics[xKey], y: p.metrics[yKey], point: p }));
  const c = chart(document.getElementById("fronts"), id, {
    type: "scatter",
    data: { datasets: [{ label: `front: ${label}`, data: points, pointRadius: 5, pointHoverRadius: 8,
      showLine: true, borderColor: "#1565c0", backgroundColor: "#1565c0" }] },
    options: {
      scales: { x: axis(xKey), y: axis(yKey) },
      plugins: { tooltip: { callbacks: { label: (ctx) => pointLines(ctx.raw.point) } } },
      onClick: (_, elements) => {
        if (elements.length) offerExport(jobId, points[elements[0].index].point);
      },
    },
  });
  c.canvas.dataset.target = front.target || "";
  c.canvas.dataset.points = String(points.length);
}

function pointLines(p) {
  const lines = [`subnet ${p.subnet}`];
  for (const [key, value] of Object.entries(p.metrics)) {
    const predicted = p.predicted && key in p.predicted ? ` (predicted ${fmt(key, p.predicted[key])})` : "";
    lines.push(`${key}: ${fmt(key, value)} measured${predicted}`);
  }
  lines.push(`config: ${Object.entries(p.config).map(([k, v]) => `${k}=${v}`).join(" ")}`);
  return lines;
}

function offerExport(jobId, point) {
  const panel = document.getElementById("export");
  panel.hidden = false;
  panel.dataset.subnet = String(point.subnet);
  document.getElementById("export-title").textContent = `subnet ${point.subnet}: download`;
  document.getElementById("export-state").textContent = "";
  for (const button of panel.querySelectorAll("button")) {
    button.onclick = () => download(jobId, point.subnet, button.dataset.format);
  }
}

async function download(jobId, subnet, format) {
  const state = document.getElementById("export-state");
  state.textContent = `exporting ${format}...`;
  try {
    const response = await api(`/api/jobs/${jobId}/subnets/${subnet}/export?format=${format}`);
    const blob = await response.blob();
    const disposition = response.headers.get("content-disposition") || "";
    const name = (disposition.match(/filename="?([^";]+)"?/) || [])[1] || `subnet${subnet}.${format}`;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    state.textContent = `downloaded ${name}`;
  } catch (error) { state.textContent = String(error.message || error); }
}

function hypervolumeChart(search) {
  chart(document.body, "hypervolume", {
    type: "line",
    data: { labels: search.map((s) => s.iteration),
      datasets: [{ label: "hypervolume (measured front)", data: search.map((s) => s.hypervolume),
        borderColor: "#2e7d32" }] },
    options: { scales: { x: axis("iteration", "category"), y: axis("hypervolume") },
      plugins: { tooltip: { callbacks: { afterLabel: (ctx) => `${search[ctx.dataIndex].evaluations} evaluations` } } } },
  });
}

const COLOURS = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f"];

function curveChart(run) {
  const names = Object.keys(run.curves);
  const datasets = names.map((name, i) => ({
    label: name, data: run.curves[name].map((v, epoch) => ({ x: epoch + 1, y: v })),
    borderColor: COLOURS[i % COLOURS.length], backgroundColor: COLOURS[i % COLOURS.length],
    showLine: true, pointRadius: 1, yAxisID: /loss/.test(name) ? "loss" : "y",
  }));
  // the rule judges the run's score (mean of largest and smallest val acc); mark it there
  const scoreOf = (epoch) => {
    const parts = ["val_acc/largest", "val_acc/smallest"].map((n) => (run.curves[n] || [])[epoch - 1]);
    return parts.every((v) => v !== undefined) ? (parts[0] + parts[1]) / 2 : null;
  };
  datasets.push({
    label: "stop decisions", type: "scatter",
    data: run.decisions.map((d) => ({ x: d.epoch, y: scoreOf(d.epoch), decision: d })),
    pointStyle: run.decisions.map((d) => (d.stop ? "crossRot" : "circle")),
    pointRadius: run.decisions.map((d) => (d.stop ? 9 : 4)),
    borderColor: "#c62828", backgroundColor: "rgba(0,0,0,0)", borderWidth: 2,
  });
  const tuned = Object.entries(run.tuned).map(([k, v]) => `${k}=${Number(v).toPrecision(3)}`).join(", ");
  chart(document.getElementById("curves"), `curves-${run.id}`, {
    type: "scatter", data: { datasets },
    options: {
      scales: { x: axis("epoch"), y: axis("accuracy"),
        loss: { ...axis("loss"), position: "right", grid: { drawOnChartArea: false } } },
      plugins: {
        title: { display: true, text: `run ${run.id}: ${run.status}, ${run.epochs_done} epochs ${tuned ? `(${tuned})` : ""}` },
        tooltip: { callbacks: { label: (ctx) => (ctx.raw.decision
          ? `epoch ${ctx.raw.decision.epoch}: ${ctx.raw.decision.stop ? "stop" : "continue"}; ${ctx.raw.decision.reason}`
          : `${ctx.dataset.label}: ${fmt(ctx.dataset.label, ctx.raw.y)}`) } },
      },
    },
  });
}

function predictionCharts(predictions) {
  const byMetric = {};
  for (const p of predictions.points) if (p.measured !== null) (byMetric[p.metric] ||= []).push(p);
  for (const [metric, points] of Object.entries(byMetric)) {
    const values = points.flatMap((p) => [p.predicted, p.measured]);
    const low = Math.min(...values), high = Math.max(...values);
    chart(document.getElementById("predictions"), `predictions-${metric}`, {
      type: "scatter",
      data: { datasets: [
        { label: `${metric}: ${points.length} subnets`, data: points.map((p) => ({ x: p.measured, y: p.predicted, p })),
          backgroundColor: "#6a1b9a" },
        { label: "predicted = measured", data: [{ x: low, y: low }, { x: high, y: high }], showLine: true,
          pointRadius: 0, borderColor: "#999", borderDash: [4, 4] },
      ] },
      options: { scales: { x: axis(`measured ${metric}`), y: axis(`predicted ${metric}`) },
        plugins: { tooltip: { callbacks: { label: (ctx) => (ctx.raw.p
          ? `subnet ${ctx.raw.p.subnet}, iteration ${ctx.raw.p.iteration}: predicted ${fmt(metric, ctx.raw.p.predicted)}, measured ${fmt(metric, ctx.raw.p.measured)}`
          : "") } } } },
    });
  }
}

async function showJob(jobId) {
  document.getElementById("job").hidden = false;
  document.getElementById("where").textContent = `job ${jobId}`;
  const cancel = document.getElementById("cancel");
  cancel.onclick = async () => {
    try { await api(`/api/jobs/${jobId}/cancel`, { method: "POST" }); await refresh(); } catch (error) { showError(error); }
  };
  let drawnAt = null;
  const refresh = async () => {
    const job = await getJson(`/api/jobs/${jobId}`);
    document.getElementById("job-title").textContent = `${job.name} (${job.id})`;
    document.getElementById("job-status").textContent =
      `${job.status}${job.error ? `: ${job.error}` : ""}; ${job.subnets} subnets`;
    document.getElementById("job-status").dataset.status = job.status;
    cancel.hidden = !ACTIVE.includes(job.status);
    const stages = document.querySelector("#stages tbody");
    stages.replaceChildren();
    for (const s of job.stages) {
      const row = stages.insertRow();
      cell(row, s.stage); cell(row, s.state); cell(row, s.detail);
    }
    if (drawnAt === job.updated_at) return job;
    drawnAt = job.updated_at; // the plots change only when the job does
    const [fronts, runs, predictions] = await Promise.all([
      getJson(`/api/jobs/${jobId}/fronts`), getJson(`/api/jobs/${jobId}/runs`),
      getJson(`/api/jobs/${jobId}/predictions`),
    ]);
    for (const front of fronts) frontChart(jobId, front);
    hypervolumeChart(job.search);
    for (const run of runs) curveChart(run);
    predictionCharts(predictions);
    document.getElementById("job").dataset.loaded = "true";
    return job;
  };
  const loop = async () => {
    try {
      const job = await refresh();
      showError(null);
      if (ACTIVE.includes(job.status)) setTimeout(loop, POLL_MS);
    } catch (error) { showError(error); setTimeout(loop, POLL_MS); }
  };
  await loop();
}

function route() {
  document.getElementById("login").hidden = true;
  const match = location.pathname.match(/^\/jobs\/([A-Za-z0-9_-]+)$/);
  return match ? showJob(match[1]) : showJobs();
}

document.addEventListener("DOMContentLoaded", () => {
  const fromHash = location.hash.match(/token=([^&]+)/);
  if (fromHash) {
    sessionStorage.setItem("nasToken", decodeURIComponent(fromHash[1]));
    history.replaceState(null, "", location.pathname + location.search); // out of the address bar
  }
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("nasToken", document.getElementById("token").value.trim());
    route();
  });
  if (token()) route(); else showLogin();
});
