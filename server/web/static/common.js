// Shared helpers for every page: calls to the public HTTP API, errors shown verbatim, a confirmation
// dialog, formatting. Tokens are read from their password fields when a request is made: they live in
// this tab only (sessionStorage: never in a URL, a cookie or localStorage).
"use strict";

const ps = {};

ps.el = (tag, attrs = {}, ...children) => {
  // builds DOM with textContent only: task names and labels come from uploads and are never parsed as HTML
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP, a style attribute is not
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
};

// Tokens live in this tab only: the fields' values, kept in sessionStorage so that moving between the pages
// of the tab does not lose them (never in a URL, a cookie or localStorage; the tab's closing clears them).
const stored = (id) => `promptserve:${id}`;
ps.token = (id) => {
  const input = document.getElementById(id);
  const typed = input && input.value.trim();
  return typed || sessionStorage.getItem(stored(id)) || null;
};
for (const id of ["api-token", "admin-token"]) {
  const input = document.getElementById(id);
  if (!input) continue;
  input.value = sessionStorage.getItem(stored(id)) || "";
  input.addEventListener("input", () => {
    const value = input.value.trim();
    if (value) sessionStorage.setItem(stored(id), value); else sessionStorage.removeItem(stored(id));
  });
}
// for reads: the API token when the server asks for one (the admin token opens everything too)
ps.readToken = () => ps.token("api-token") || ps.token("admin-token");

// run `load` now, or, when the server needs an API token, each time one is submitted (the page's shell is
// public and holds no data: everything it shows is fetched with the token)
ps.apiTokenRequired = document.body.dataset.apiTokenRequired === "true";
ps.whenToken = (load) => {
  if (!ps.apiTokenRequired) { load(); return; }
  document.getElementById("api-token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  if (ps.token("api-token")) load();  // given on another page of this tab
};

class ApiError extends Error {
  constructor(status, code, detail) {
    super(`HTTP ${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

// fetch + JSON (or text, or a blob); a non-2xx answer throws ApiError carrying the server's {error, detail}
// as sent. token: the read token unless given (writes pass the admin token)
ps.api = async (path, { method = "GET", body = null, headers = {}, token = undefined, as = "json" } = {}) => {
  const allHeaders = { Accept: as === "json" ? "application/json" : "*/*", ...headers };
  const bearer = token === undefined ? ps.readToken() : token;
  if (bearer) allHeaders.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(path, { method, body, headers: allHeaders });
  } catch (err) {
    throw new ApiError(0, "network", `the server did not answer (${err.message})`);
  }
  if (response.ok && as === "blob") return response.blob();
  const text = await response.text();
  if (response.ok && as === "text") return text;
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const code = (data && data.error) || response.statusText || "error";
    const detail = (data && data.detail) || text || "(no detail)";
    throw new ApiError(response.status, code, detail);
  }
  return data;
};

// a label as text nodes with a line-break opportunity after each "_", "-" or ".": "21_double_curve" wraps as
// "21_double_" / "curve", not "21_double_curv" / "e"
ps.breakable = (text) => String(text).split(/(?<=[_.-])/).flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part]));

ps.showError = (element, err) => {
  element.textContent = err instanceof ApiError ? err.message : `Error: ${err.message || err}`;
  element.hidden = false;
};
ps.clearError = (element) => { element.textContent = ""; element.hidden = true; };

// a modal <dialog> (keyboard: Tab between the buttons, Esc cancels); resolves true on Confirm
ps.confirm = (text) => new Promise((resolve) => {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-ok").focus();
});

ps.shortVersion = (version) => (version ? version.slice(0, 12) : "–");
ps.percent = (x) => (typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "–");
ps.bytes = (n) => {
  if (typeof n !== "number") return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
};
ps.date = (value) => {
  if (value === null || value === undefined || value === "") return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace("T", " ").slice(0, 16);
};
ps.ago = (unixSeconds) => {
  if (!unixSeconds) return "not since start";
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
};
ps.ms = (x) => (typeof x === "number" ? `${x < 10 ? x.toFixed(2) : x.toFixed(0)} ms` : "–");
