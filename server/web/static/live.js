// Live page: polls /ui/live.json and draws two small line charts on canvases (no chart library).
"use strict";

(() => {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];
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
    const yMax = Math.max(1, ...values) * 1.1;
    const x = (t) => pad.left + ((t - t0) / Math.max(t1 - t0, 1)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / yMax) * (height - pad.top - pad.bottom);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#555";
    ctx.strokeStyle = "#ddd";
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      ctx.beginPath(); ctx.moveTo(pad.left, y(v)); ctx.lineTo(width - pad.right, y(v)); ctx.stroke();
      ctx.fillText(v < 10 ? v.toFixed(1) : v.toFixed(0), 4, y(v) + 4);
    }
    ctx.fillText(`-${Math.round((t1 - t0) / 60)} min`, pad.left, height - 6);
    const nowLabel = `now (${unit})`;
    ctx.fillText(nowLabel, width - pad.right - ctx.measureText(nowLabel).width, height - 6);
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
    const rps = tasks.map((task, i) => ({
      name: task, color: COLORS[i % COLORS.length],
      points: live.points.map((p) => [p.t, p.requests_per_s[task] || 0]),
    }));
    drawLines(document.getElementById("rps-chart"), rps, { t0, t1, unit: "requests/s" });
    legend(document.getElementById("rps-legend"), rps.length ? rps : [{ name: "no requests yet", color: "#ddd" }]);
    const batch = [
      { name: "distinct tasks per batch", color: COLORS[0], dots: true, points: live.points.map((p) => [p.t, p.tasks_per_batch]) },
      { name: "images per batch", color: COLORS[1], dots: true, dashed: true, points: live.points.map((p) => [p.t, p.images_per_batch]) },
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
