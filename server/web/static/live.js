// Live page: polls /ui/live.json and draws two small line charts on canvases (no chart library).
"use strict";

(() => {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];
  const BATCH_COLORS = ["#111827", "#6b7280"];  // not task colours: the batch chart's series are not tasks
  // a task's colour comes from its name (a hash), not its rank, so it keeps it whatever other tasks a server has;
  // two tasks whose names want the same colour: the later name (sorted) takes the next free one
  const hashColor = (task) => [...task].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % COLORS.length;
  function taskColors(tasks) {
    const taken = new Set(), colors = {};
    for (const task of [...tasks].sort()) {
      let i = hashColor(task);
      for (let tries = 0; taken.has(i) && tries < COLORS.length; tries++) i = (i + 1) % COLORS.length;
      taken.add(i);
      colors[task] = COLORS[i];
    }
    return colors;
  }
  const taskName = (task) => (task === "_unknown" ? "unknown task names" : task);

  // ticks at 1, 2, 2.5 or 5 times a power of ten: 0, 0.5, 1, 1.5, 2 rather than 0, 0.8, 1.6, 2.5, 3.3
  function niceTicks(max) {
    const raw = Math.max(max, 1) / 4;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const top = step * Math.max(1, Math.ceil(max / step));
    const ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) ticks.push(Number(v.toPrecision(6)));
    return ticks;
  }
  const errorBox = document.getElementById("live-error");

  // series: [{name, color, points: [[t, y|null], ...]}]; null y leaves a gap
  function drawLines(canvas, series, { t0, t1, unit }) {
    const ctx = canvas.getContext("2d");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const pad = { left: 44, right: 10, top: 10, bottom: 22 };
    const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => y !== null);
    const ticks = niceTicks(Math.max(0, ...values));
    const yMax = ticks[ticks.length - 1];
    canvas.dataset.ticks = ticks.join(",");  // what the axis says, for tests and screen readers' neighbours
    const x = (t) => pad.left + ((t - t0) / Math.max(t1 - t0, 1)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / yMax) * (height - pad.top - pad.bottom);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#555";
    ctx.strokeStyle = "#ddd";
    for (const v of ticks) {
      ctx.beginPath(); ctx.moveTo(pad.left, y(v)); ctx.lineTo(width - pad.right, y(v)); ctx.stroke();
      ctx.fillText(String(v), 4, y(v) + 4);
    }
    ctx.fillText(`-${Math.round((t1 - t0) / 60)} min`, pad.left, height - 6);
    const nowLabel = `now (${unit})`;
    ctx.fillText(nowLabel, width - pad.right - ctx.measureText(nowLabel).width, height - 6);
    ctx.save();  // lines and dots stay inside the plot: nothing drawn below zero or past its edges
    ctx.beginPath();
    ctx.rect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
    ctx.clip();
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(s.dashed ? [6, 4] : []);
      ctx.beginPath();
      let drawing = false;
      for (const [t, v] of s.points) {
        if (v === null) { drawing = false; continue; }
        if (drawing) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
        drawing = true;
      }
      ctx.stroke();
      ctx.fillStyle = s.color;  // dots too: an isolated point between gaps still shows
      for (const [t, v] of s.points) {
        if (v !== null && (s.dots || v > 0)) { ctx.beginPath(); ctx.arc(x(t), y(v), 2.5, 0, 2 * Math.PI); ctx.fill(); }
      }
    }
    ctx.restore();
  }

  function legend(list, series) {
    list.replaceChildren(...series.map((s) => ps.el("li", {},
      ps.el("span", { class: s.dashed ? "swatch dashed" : "swatch", style: `--swatch:${s.color}` }), s.name)));
  }

  async function refresh() {
    let live;
    try {
      live = await ps.api("/ui/live.json");
    } catch (err) {
      ps.showError(errorBox, err);
      return;
    }
    ps.clearError(errorBox);
    const t1 = live.now, t0 = t1 - live.window_s;
    const tasks = [...new Set(live.points.flatMap((p) => Object.keys(p.requests_per_s)))].sort();
    const colors = taskColors(tasks);
    const rps = tasks.map((task) => ({
      name: taskName(task), color: colors[task],
      points: live.points.map((p) => [p.t, p.requests_per_s[task] || 0]),
    }));
    drawLines(document.getElementById("rps-chart"), rps, { t0, t1, unit: "requests/s" });
    legend(document.getElementById("rps-legend"), rps.length ? rps : [{ name: "no requests yet", color: "#ddd" }]);
    const batch = [
      { name: "distinct tasks per batch", color: BATCH_COLORS[0], dots: true, points: live.points.map((p) => [p.t, p.tasks_per_batch]) },
      { name: "images per batch", color: BATCH_COLORS[1], dots: true, dashed: true, points: live.points.map((p) => [p.t, p.images_per_batch]) },
    ];
    drawLines(document.getElementById("batch-chart"), batch, { t0, t1, unit: "per batch" });
    legend(document.getElementById("batch-legend"), batch);
    const busy = live.points.filter((p) => p.tasks_per_batch !== null);
    const batches = busy.reduce((n, p) => n + p.batches_per_s * live.interval_s, 0);
    const mean = batches ? busy.reduce((n, p) => n + p.tasks_per_batch * p.batches_per_s * live.interval_s, 0) / batches : null;
    document.getElementById("batch-summary").textContent = mean === null ? "No batch ran in this window." :
      `${Math.round(batches)} batches in the window, ${mean.toFixed(2)} distinct tasks per batch on average.`;
  }

  let refreshing = null;
  ps.whenToken(() => {
    refresh();
    refreshing = refreshing || setInterval(refresh, 2000);
  });
})();
