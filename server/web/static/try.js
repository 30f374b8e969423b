// Try page: choose a task, give it images (drop, paste, pick, camera, examples), show the answers.
"use strict";

(() => {
  const errorBox = document.getElementById("try-error");
  const results = document.getElementById("results");
  const examples = document.getElementById("examples");

  const selectedTask = () => {
    const checked = document.querySelector('input[name="task"]:checked');
    return checked ? checked.value : null;
  };

  // ---- the searchable task list ----------------------------------------------------------------------
  document.getElementById("task-search").addEventListener("input", (event) => {
    const query = event.target.value.trim().toLowerCase();
    for (const option of document.querySelectorAll(".task-option")) {
      const hit = !query || option.dataset.task.includes(query) || option.dataset.labels.includes(query);
      option.hidden = !hit;
    }
  });
  const taskList = document.getElementById("task-list");
  taskList.addEventListener("change", () => loadExamples(selectedTask()));

  // with an API token the list comes from the server (the same template) once the token is given
  async function loadTaskList() {
    ps.clearError(errorBox);
    try {
      const html = await ps.api("/ui/fragments/tasks", { as: "text" });
      const legend = taskList.querySelector("legend");
      taskList.innerHTML = html;  // server-rendered by Jinja, which escaped every name and label
      taskList.prepend(legend);
    } catch (err) {
      ps.showError(errorBox, err);
      return;
    }
    loadExamples(selectedTask());
  }

  // ---- example images of the chosen task -------------------------------------------------------------
  async function loadExamples(task) {
    examples.replaceChildren();
    if (!task) return;
    let list = [];
    try {
      list = await ps.api(`/ui/examples/${encodeURIComponent(task)}`);
    } catch (err) {
      ps.showError(errorBox, err);
      return;
    }
    if (!list.length) return;
    examples.append(ps.el("p", { class: "muted", text: `Examples for ${task} (true label under each):` }));
    const row = ps.el("div", { class: "example-row" });
    for (const example of list) {
      let blob;
      try {
        blob = await ps.api(example.url, { as: "blob" });  // with the token: no <img src> can carry one
      } catch (err) {
        ps.showError(errorBox, err);
        return;
      }
      row.append(ps.el("button", {
        type: "button", class: "example", "aria-label": `Classify example ${example.label}`,
        onclick: () => classify([new File([blob], example.name, { type: blob.type })], example.label),
      }, ps.el("img", { src: URL.createObjectURL(blob), alt: "" }), ps.el("span", {}, ps.breakable(example.label))));
    }
    examples.append(row);
  }

  // ---- classify --------------------------------------------------------------------------------------
  // A phone's photo is 12 MP and several MB: the backbone sees a few dozen pixels a side, so the page sends at
  // most SEND_SIDE pixels a side (a JPEG re-encoded in the browser); small images go as they are.
  const SEND_SIDE = 1024;
  async function shrunk(file) {
    if (!file.type.startsWith("image/") || file.size < 256 * 1024) return file;
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      return file;  // the server says what is wrong with it
    }
    const scale = SEND_SIDE / Math.max(bitmap.width, bitmap.height);
    if (scale >= 1) { bitmap.close(); return file; }
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
    return blob || file;
  }

  // trueLabel: known for the example images (their file name says it), shown next to the answer
  async function classify(files, trueLabel = null) {
    ps.clearError(errorBox);
    const task = selectedTask();
    if (!task) { ps.showError(errorBox, new Error("choose a task first")); return; }
    if (!files.length) return;
    const form = new FormData();
    const sent = await Promise.all(files.map(shrunk));
    // one image: the `file` form answers one object; several: `files` answers a list, in order
    sent.forEach((file, i) => form.append(files.length === 1 ? "file" : "files", file, files[i].name || "image"));
    const topK = document.getElementById("top-k").value;
    let answer;
    try {
      answer = await ps.api(`/classify/${encodeURIComponent(task)}?top_k=${topK}`, {
        method: "POST", body: form,
      });
    } catch (err) {
      ps.showError(errorBox, err);
      return;
    }
    const answers = Array.isArray(answer) ? answer : [answer];
    document.getElementById("results-empty").hidden = true;
    answers.forEach((a, i) => results.prepend(resultCard(a, files[i], trueLabel)));
    const listed = document.querySelector(`.task-option[data-task="${CSS.escape(task)}"] .task-version`);
    if (listed && answers.length) {  // keep the list honest when the task changed since the page loaded
      listed.textContent = ps.shortVersion(answers[0].version);
      listed.title = answers[0].version;
    }
  }

  function resultCard(answer, file, trueLabel) {
    const top = answer.predictions[0];
    const truth = trueLabel === null ? null : ps.el("span", {
      class: top && top.label === trueLabel ? "truth right" : "truth wrong",
      text: top && top.label === trueLabel ? ` · true label ${trueLabel} ✓` : ` · true label ${trueLabel} ✗`,
    });
    const bars = ps.el("ol", { class: "bars" }, answer.predictions.map((p) => ps.el("li", {},
      ps.el("span", { class: "bar-label", text: p.label }),
      ps.el("span", { class: "bar-track" }, ps.el("span", { class: "bar", style: `width:${(100 * p.score).toFixed(1)}%` })),
      ps.el("span", { class: "bar-score", text: ps.percent(p.score) }))));
    return ps.el("article", { class: "result", "data-task": answer.task },
      ps.el("img", { class: "thumb", src: URL.createObjectURL(file), alt: file.name || "image" }),
      ps.el("div", { class: "result-body" },
        ps.el("p", { class: "result-head" },
          ps.el("strong", { class: "top-label", text: top ? top.label : "–" }),
          ` · ${answer.task} · version `,
          ps.el("code", { class: "version", title: answer.version, text: ps.shortVersion(answer.version) }), truth),
        bars,
        ps.el("p", { class: "timing muted", text: `queue ${ps.ms(answer.timing_ms.queue)} · compute ` +
          `${ps.ms(answer.timing_ms.compute)} · total ${ps.ms(answer.timing_ms.total)}` })));
  }

  // ---- image sources ---------------------------------------------------------------------------------
  const zone = document.getElementById("drop-zone");
  for (const id of ["image-files", "camera-file"]) {
    document.getElementById(id).addEventListener("change", (event) => {
      classify([...event.target.files]);
      event.target.value = "";  // the same file again is a new request
    });
  }
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    classify([...event.dataTransfer.files]);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      document.getElementById("image-files").click();
    }
  });
  document.addEventListener("paste", (event) => {
    const files = [...event.clipboardData.files];
    if (files.length) { event.preventDefault(); classify(files); }
  });

  if (ps.apiTokenRequired) ps.whenToken(loadTaskList);
  else loadExamples(selectedTask());
})();
