// Registry pages: the task table (/ui/tasks) and one task (/ui/tasks/<task>): history, report, labels,
// and the admin actions (upload a version, roll back, delete), each confirmed first.
"use strict";

(() => {
  // an admin action without the admin token would be refused as if the API token were wrong: say what is missing
  const adminToken = () => {
    const token = ps.token("admin-token");
    if (!token) throw new Error("enter the admin token first: uploads, rollbacks and deletes need it");
    return token;
  };

  // PUT /tasks/<task> with the file's bytes; returns the new current record
  async function uploadVersion(task, file) {
    return ps.api(`/tasks/${encodeURIComponent(task)}`, {
      method: "PUT", body: await file.arrayBuffer(), token: adminToken(),
      headers: { "Content-Type": "application/octet-stream" },
    });
  }

  // ---- /ui/tasks ---------------------------------------------------------------------------------------
  async function renderTable() {
    const errorBox = document.getElementById("tasks-error");
    let list, live;
    try {
      [list, live] = await Promise.all([ps.api("/tasks"), ps.api("/ui/live.json")]);
    } catch (err) {
      ps.showError(errorBox, err);
      return;
    }
    ps.clearError(errorBox);
    const rows = list.tasks.map((t) => {
      const usage = live.tasks[t.task] || {};
      return ps.el("tr", { "data-task": t.task },
        ps.el("th", { scope: "row" }, ps.el("a", { href: `/ui/tasks/${encodeURIComponent(t.task)}`, text: t.task })),
        ps.el("td", {}, ps.el("code", { title: t.version, text: ps.shortVersion(t.version) })),
        ps.el("td", { text: ps.date(t.created) }),
        ps.el("td", { class: "num", text: t.labels.length }),
        ps.el("td", { class: "num", text: ps.percent(t.metrics.test_acc) }),
        ps.el("td", { class: "num", text: ps.bytes(t.size) }),
        ps.el("td", { text: document.body.dataset.remoteEngine === "true" ? "(replicas)" : t.resident ? "yes" : "no" }),
        ps.el("td", { text: ps.ago(usage.last_used) }),
        ps.el("td", { class: "num", text: usage.requests ?? 0 }),
        ps.el("td", { class: "num", text: ps.ms(usage.latency_p50_ms) }));
    });
    const body = document.querySelector("#tasks-table tbody");
    body.replaceChildren(...(rows.length ? rows : [ps.el("tr", {}, ps.el("td", { colspan: 10, text: "no tasks yet" }))]));
  }

  function setUpTable() {
    let refreshing = null;
    ps.whenToken(() => {
      renderTable();
      refreshing = refreshing || setInterval(renderTable, 5000);
    });
    document.getElementById("new-task-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = document.getElementById("new-task-status");
      // the upload's own error box: the table's refresh below clears only the table's
      const errorBox = document.getElementById("new-task-error");
      const task = document.getElementById("new-task-name").value.trim();
      const file = document.getElementById("new-task-file").files[0];
      if (!(await ps.confirm(`Upload ${file.name} as task “${task}”? It is served at once.`))) return;
      try {
        const record = await uploadVersion(task, file);
        ps.clearError(errorBox);
        status.textContent = `Uploaded: ${record.task} now serves version ${ps.shortVersion(record.version)}.`;
      } catch (err) {
        status.textContent = "";
        ps.showError(errorBox, err);
      }
      renderTable();
    });
  }

  // ---- /ui/tasks/<task> ----------------------------------------------------------------------------------
  function facts(list, pairs) {
    list.replaceChildren(...pairs.flatMap(([term, value]) => [
      ps.el("dt", { text: term }), ps.el("dd", {}, value instanceof Node ? value : String(value))]));
  }

  function reportValue(value) {
    if (typeof value === "number") return String(Number(value.toFixed(4)));
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  async function renderTask(task) {
    const errorBox = document.getElementById("task-error");
    let detail;
    try {
      detail = await ps.api(`/tasks/${encodeURIComponent(task)}`);
    } catch (err) {
      ps.showError(errorBox, err);
      return;
    }
    const current = detail.current;
    facts(document.getElementById("task-facts"), [
      ["Current version", ps.el("code", { class: "current-version", title: current.version, text: current.version })],
      ["Created", ps.date(current.created)],
      ["Method", current.method || "–"],
      ["Classes", current.labels.length],
      ["Test accuracy", ps.percent(current.metrics.test_acc)],
      ["Size", ps.bytes(current.size)],
      ["Resident here", detail.resident ? `yes (${ps.shortVersion(detail.resident_version)})` : "no"],
    ]);
    facts(document.getElementById("task-report"), Object.entries(current.metrics).sort()
      .map(([key, value]) => [key.replaceAll("_", " "), reportValue(value)]));
    document.getElementById("task-labels").replaceChildren(...current.labels.map((l) => ps.el("li", { text: l })));
    const rows = [...detail.history].reverse().map((r) => ps.el("tr", { "data-version": r.version },
      ps.el("td", {}, ps.el("code", { title: r.version, text: ps.shortVersion(r.version) })),
      ps.el("td", { text: ps.date(r.created) }),
      ps.el("td", { text: r.method || "–" }),
      ps.el("td", { class: "num", text: ps.percent(r.metrics.test_acc) }),
      ps.el("td", { class: "num", text: ps.bytes(r.size) }),
      ps.el("td", {}, r.version === current.version ? ps.el("strong", { text: "current" }) :
        ps.el("button", { type: "button", class: "rollback secondary", "aria-label": `Roll back to ${ps.shortVersion(r.version)}`,
          onclick: () => act(task, `Roll ${task} back to version ${ps.shortVersion(r.version)}? It is served at once.`,
            () => ps.api(`/tasks/${encodeURIComponent(task)}/rollback`, {
              method: "POST", token: adminToken(), headers: { "Content-Type": "application/json" },
              body: JSON.stringify({ version: r.version }) }),
            (record) => `Rolled back: ${task} now serves ${ps.shortVersion(record.version)}.`) }, "Roll back"))));
    document.querySelector("#history-table tbody").replaceChildren(...rows);
  }

  // confirm, call, then show the outcome (the server's error verbatim on failure) and re-read the task
  async function act(task, question, call, describe, reread = true) {
    if (!(await ps.confirm(question))) return;
    const errorBox = document.getElementById("task-error");
    const status = document.getElementById("task-status");
    try {
      const result = await call();
      ps.clearError(errorBox);
      status.textContent = describe(result);
    } catch (err) {
      status.textContent = "";
      ps.showError(errorBox, err);
      return;
    }
    if (reread) await renderTask(task);
  }

  function setUpTask(task) {
    ps.whenToken(() => renderTask(task));
    document.getElementById("upload-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const file = document.getElementById("upload-file").files[0];
      act(task, `Upload ${file.name} as the new version of ${task}? It is served at once.`,
        () => uploadVersion(task, file),
        (record) => `Uploaded: ${task} now serves ${ps.shortVersion(record.version)}.`);
    });
    document.getElementById("delete-task").addEventListener("click", async () => {
      await act(task, `Delete ${task} and every version of it? Requests for it answer 404 at once.`,
        () => ps.api(`/tasks/${encodeURIComponent(task)}`, { method: "DELETE", token: adminToken() }),
        () => `Deleted ${task} and all its versions.`, false);
      if (document.getElementById("task-status").textContent.startsWith("Deleted")) {
        for (const id of ["task-facts", "task-report", "task-labels"]) document.getElementById(id).replaceChildren();
        document.querySelector("#history-table tbody").replaceChildren();
        // nothing is left to act on: the buttons go too (an upload now would make a new task of that name)
        for (const control of document.querySelectorAll("#upload-form button, #upload-form input, #delete-task")) {
          control.disabled = true;
        }
      }
    });
  }

  const heading = document.getElementById("task-heading");
  if (heading) setUpTask(heading.dataset.task);
  else setUpTable();
})();
