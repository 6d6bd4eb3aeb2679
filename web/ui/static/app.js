// pgtrail activity log: a single page over the JSON API (/api/v1). Every
// view is a URL (permalinks); every value is put in the page as text.
"use strict";

const main = document.getElementById("main");

// show replaces the page's content, leaving out what is null.
function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}
let info = null; // /api/v1/info

// --- DOM and formatting helpers ---

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function link(href, ...children) {
  return el("a", { href, "data-nav": true }, ...children);
}

function json(v) {
  return v === undefined ? "—" : JSON.stringify(v);
}

function when(iso) {
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const local = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return el("time", { datetime: iso, title: iso }, local);
}

function op(o) {
  return el("span", { class: "op " + o }, o);
}

function recordPath(c) {
  return `${encodeURIComponent(c.schema + "." + c.table)}/${encodeURIComponent(c.primary_key)}`;
}

function contextChips(ctx) {
  return Object.entries(ctx || {}).map(([k, v]) => el("span", { class: "ctx" }, `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`));
}

// --- API ---

class APIError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const token = sessionStorage.getItem("pgtrail-token");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function api(path, options = {}) {
  const res = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (res.status === 401) {
    await login();
    return api(path, options);
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new APIError(res.status, body.error || res.statusText, body);
  return body;
}

function login() {
  const dialog = document.getElementById("login");
  return new Promise((resolve) => {
    const form = document.getElementById("login-form");
    form.onsubmit = () => {
      sessionStorage.setItem("pgtrail-token", document.getElementById("token").value.trim());
      resolve();
    };
    if (!dialog.open) dialog.showModal();
  });
}

function showError(err) {
  return el("div", { class: "error" }, err.message || String(err));
}

// --- Routing ---

function navigate(url, replace) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

async function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  show(el("p", { class: "muted" }, "Loading…"));
  try {
    if (!info) info = await api("/api/v1/info");
    let m;
    if (path === "/" || path === "") await feed(params);
    else if ((m = path.match(/^\/changes\/([^/]+)$/))) await details(decodeURIComponent(m[1]));
    else if ((m = path.match(/^\/history\/([^/]+)\/(.+)$/))) await timeline(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    else if ((m = path.match(/^\/as-of\/([^/]+)\/(.+)$/))) await asOf(decodeURIComponent(m[1]), decodeURIComponent(m[2]), params.get("at"));
    else if ((m = path.match(/^\/transactions\/([^/]+)\/([^/]+)$/))) await transaction(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    else if (path === "/revert") await revert(params);
    else show(el("h1", {}, "Not found"), link("/", "Back to the feed"));
  } catch (err) {
    show(showError(err));
  }
}

// --- Feed ---

// Filter fields: URL parameter, label, input type. "user" and "ctx" become
// the API's context filter.
const filterFields = [
  ["table", "Table", "text", "public.orders"],
  ["operation", "Operation", "select"],
  ["user", "User", "text", "42 or userId=42"],
  ["ctx", "Context", "text", "key=value …"],
  ["since", "Since", "datetime-local"],
  ["until", "Until", "datetime-local"],
  ["primary_key", "Primary key", "text", "42"],
  ["q", "Text", "search", "in values"],
];

// contextFilter turns the user and ctx fields into a JSON object: values
// that read as JSON (42, true) keep their type.
function contextFilter(params) {
  const obj = {};
  const put = (k, v) => { try { obj[k] = JSON.parse(v); } catch { obj[k] = v; } };
  // The user field holds a user id (context key user_id) or key=value.
  const user = params.get("user");
  if (user && user.includes("=")) put(user.slice(0, user.indexOf("=")), user.slice(user.indexOf("=") + 1));
  else if (user) put("user_id", user);
  for (const pair of (params.get("ctx") || "").split(/\s+/).filter(Boolean)) {
    const i = pair.indexOf("=");
    if (i > 0) put(pair.slice(0, i), pair.slice(i + 1));
  }
  return Object.keys(obj).length ? JSON.stringify(obj) : "";
}

function localToISO(v) {
  return v ? new Date(v).toISOString() : "";
}

// apiQuery is the /changes query of the page's filters.
function apiQuery(params) {
  const q = new URLSearchParams();
  for (const k of ["table", "operation", "primary_key", "q"]) if (params.get(k)) q.set(k, params.get(k));
  for (const k of ["since", "until"]) if (params.get(k)) q.set(k, localToISO(params.get(k)));
  const ctx = contextFilter(params);
  if (ctx) q.set("context", ctx);
  return q;
}

async function feed(params) {
  const form = el("form", { class: "panel filters", id: "filters" });
  for (const [name, label, type, placeholder] of filterFields) {
    let input;
    if (type === "select") {
      input = el("select", { name }, ["", "CREATE", "UPDATE", "DELETE", "TRUNCATE"].map((o) =>
        el("option", { value: o, selected: params.get(name) === o }, o || "any")));
    } else {
      input = el("input", { name, type, placeholder, value: params.get(name) || "" });
    }
    form.append(el("label", { class: name === "ctx" ? "wide" : null }, label, input));
  }
  form.append(el("div", { class: "actions" },
    el("button", { type: "submit", class: "primary" }, "Filter"),
    el("button", { type: "button", onclick: () => navigate("/") }, "Clear")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    navigate("/" + (next.toString() ? "?" + next : ""));
  });

  const q = apiQuery(params);
  const body = el("tbody");
  const table = el("table", { class: "feed" },
    el("thead", {}, el("tr", {}, ["When", "What", "Who", "Changed"].map((h) => el("th", {}, h)))), body);
  const more = el("button", { type: "button", hidden: true }, "Load more");
  const bar = el("div", { class: "bar" },
    el("span", { class: "muted", id: "count" }), el("span", { class: "spacer" }),
    el("button", { type: "button", onclick: () => download(q, "csv") }, "Export CSV"),
    el("button", { type: "button", onclick: () => download(q, "ndjson") }, "Export NDJSON"));
  show(form, bar, el("div", { class: "panel" }, table, el("div", { class: "bar" }, more)));

  let shown = 0;
  async function page(cursor) {
    const pq = new URLSearchParams(q);
    pq.set("limit", "50");
    if (cursor) pq.set("cursor", cursor);
    const p = await api("/api/v1/changes?" + pq);
    for (const c of p.changes) body.append(feedRow(c));
    shown += p.changes.length;
    document.getElementById("count").textContent = shown === 0 ? "No change matches." :
      `${shown} change${shown === 1 ? "" : "s"}${p.next_cursor ? " (more below)" : ""}` +
      (p.search_bounded ? " — the text search stopped after 50,000 changes; load more to search further" : "");
    more.hidden = !p.next_cursor;
    more.onclick = () => page(p.next_cursor).catch((err) => bar.after(showError(err)));
  }
  await page(null);
}

function feedRow(c) {
  const cols = Object.keys(c.diff || {}).sort();
  const go = () => navigate("/changes/" + c.id);
  return el("tr", { class: "change", "data-id": c.id, onclick: (e) => { if (!e.target.closest("a")) go(); } },
    el("td", { class: "when" }, when(c.committed_at)),
    el("td", { class: "what" }, op(c.operation), " ", link("/changes/" + c.id, `${c.schema}.${c.table}`), " ",
      c.primary_key !== null ? link("/history/" + recordPath(c), el("span", { class: "mono" }, c.primary_key)) : null),
    el("td", { class: "who" }, contextChips(c.context)),
    el("td", { class: "cols" }, c.operation === "UPDATE" ? cols.join(", ") || "—" : cols.length ? `${cols.length} columns` : ""));
}

async function download(q, format) {
  const eq = new URLSearchParams(q);
  eq.set("format", format);
  const res = await fetch("/api/v1/export?" + eq, { headers: headers() });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    main.prepend(showError(new Error(body.error || res.statusText)));
    return;
  }
  const blob = await res.blob();
  const name = (res.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
  const a = el("a", { href: URL.createObjectURL(blob), download: name ? name[1] : "pgtrail-changes." + format });
  document.body.append(a);
  a.click();
  a.remove();
}

// --- Change details and diffs ---

function isObject(v) {
  return v !== null && typeof v === "object";
}

// pathDiff lists the leaves that differ between two JSON values, by path.
function pathDiff(a, b, path, out) {
  if (isObject(a) && isObject(b) && Array.isArray(a) === Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of [...keys].sort()) {
      const p = Array.isArray(a) ? `${path}[${k}]` : `${path}.${k}`;
      pathDiff(a[k], b[k], p, out);
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    out.push([path, a, b]);
  }
  return out;
}

function diffTable(c) {
  const before = c.before || {}, after = c.after || {};
  const changed = Object.keys(c.diff || {}).sort();
  const rows = [];
  for (const col of changed) {
    const [b, a] = c.diff[col];
    if (c.operation === "UPDATE" && isObject(b) && isObject(a)) {
      rows.push(el("tr", {}, el("td", { class: "col" }, col), el("td", { colspan: 2, class: "muted" }, "nested changes:")));
      for (const [p, x, y] of pathDiff(b, a, col, [])) {
        rows.push(el("tr", { class: "path" }, el("td", { class: "col" }, p), el("td", { class: "old" }, json(x)), el("td", { class: "new" }, json(y))));
      }
    } else {
      rows.push(el("tr", {}, el("td", { class: "col" }, col),
        el("td", { class: b === null && c.operation === "CREATE" ? null : "old" }, c.operation === "CREATE" ? "" : json(b)),
        el("td", { class: c.operation === "DELETE" ? null : "new" }, c.operation === "DELETE" ? "" : json(a))));
    }
  }
  const unchanged = Object.keys(after).filter((k) => !(k in (c.diff || {}))).sort();
  const wrap = [el("table", { class: "diff", id: "diff" },
    el("thead", {}, el("tr", {}, el("th", {}, "Column"), el("th", {}, "Before"), el("th", {}, "After"))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 3, class: "muted" }, "No column changed."))))];
  if (c.operation === "UPDATE" && unchanged.length) {
    wrap.push(el("details", { id: "unchanged" }, el("summary", {}, `${unchanged.length} unchanged column${unchanged.length === 1 ? "" : "s"}`),
      el("table", { class: "diff" }, el("tbody", {}, unchanged.map((k) =>
        el("tr", {}, el("td", { class: "col" }, k), el("td", { colspan: 2 }, json(after[k]))))))));
  }
  const lacking = c.operation === "UPDATE" ? Object.keys(after).filter((k) => !(k in before)) : [];
  if (lacking.length) {
    wrap.unshift(el("div", { class: "note" }, `The before image lacks ${lacking.join(", ")}: the table was captured without REPLICA IDENTITY FULL, so what these held before is not in the trail.`));
  }
  if ((c.unchanged_toast || []).length) {
    wrap.push(el("div", { class: "note" }, `Not sent by PostgreSQL (unchanged large values): ${c.unchanged_toast.join(", ")}.`));
  }
  return wrap;
}

async function details(id) {
  const c = await api("/api/v1/changes/" + encodeURIComponent(id));
  const rec = c.primary_key !== null ? recordPath(c) : null;
  const moment = encodeURIComponent(c.committed_at);
  show(
    el("h1", {}, op(c.operation), ` ${c.schema}.${c.table} `, c.primary_key !== null ? el("span", { class: "mono" }, c.primary_key) : null),
    el("div", { class: "bar" },
      rec ? link("/history/" + rec, "Record timeline") : null,
      link(`/transactions/${encodeURIComponent(c.database)}/${c.transaction_id}`, "Transaction"),
      rec ? link(`/as-of/${rec}?at=${moment}`, "Row as of this moment") : null,
      info.revert ? link("/revert?change=" + c.id, "Revert…") : null),
    el("div", { class: "panel" }, el("dl", { class: "meta" },
      el("dt", {}, "Committed"), el("dd", {}, when(c.committed_at)),
      el("dt", {}, "Context"), el("dd", {}, Object.keys(c.context || {}).length ? contextChips(c.context) : el("span", { class: "muted" }, "none")),
      el("dt", {}, "Transaction"), el("dd", { class: "mono" }, `${c.database}:${c.transaction_id}`),
      el("dt", {}, "Change"), el("dd", { class: "mono" }, c.id))),
    el("div", { class: "panel" }, diffTable(c)));
}

// --- Timeline, transaction, as-of ---

function changeList(changes) {
  return el("ol", { class: "timeline" }, changes.map((c) => el("li", { "data-id": c.id },
    el("div", { class: "bar" }, when(c.committed_at), op(c.operation), link("/changes/" + c.id, `${c.schema}.${c.table}`),
      c.primary_key !== null ? el("span", { class: "mono" }, c.primary_key) : null, contextChips(c.context)),
    el("div", { class: "panel" }, diffTable(c)))));
}

async function timeline(table, pk) {
  const path = `${encodeURIComponent(table)}/${encodeURIComponent(pk)}`;
  const p = await api(`/api/v1/history/${path}`);
  show(el("h1", {}, `${table} `, el("span", { class: "mono" }, pk), el("span", { class: "muted" }, " — timeline")),
    el("div", { class: "bar" }, link(`/as-of/${path}?at=${encodeURIComponent(new Date().toISOString())}`, "Row as of a moment…"),
      link("/?" + new URLSearchParams({ table, primary_key: pk }), "In the feed")),
    p.changes.length ? changeList(p.changes) : el("p", { class: "empty" }, "No change of this record in the trail."),
    p.next_cursor ? el("p", { class: "muted" }, "Showing the first 1,000 changes.") : null);
}

async function transaction(db, xid) {
  const p = await api(`/api/v1/transactions/${encodeURIComponent(db)}/${encodeURIComponent(xid)}`);
  show(el("h1", {}, `Transaction ${db}:${xid}`, el("span", { class: "muted" }, ` — ${p.changes.length} changes`)),
    el("div", { class: "bar" }, info.revert ? link(`/revert?transaction=${encodeURIComponent(db + ":" + xid)}`, "Revert this transaction…") : null),
    changeList(p.changes));
}

async function asOf(table, pk, at) {
  const path = `${encodeURIComponent(table)}/${encodeURIComponent(pk)}`;
  const moment = at ? new Date(at) : new Date();
  const input = el("input", { type: "datetime-local", step: "0.001", name: "at",
    value: new Date(moment.getTime() - moment.getTimezoneOffset() * 60000).toISOString().slice(0, 23) });
  const form = el("form", { class: "bar" }, el("label", {}, "As of", input), el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    navigate(`/as-of/${path}?at=${encodeURIComponent(new Date(input.value).toISOString())}`);
  });
  const s = await api(`/api/v1/as-of/${path}?at=${encodeURIComponent(moment.toISOString())}`);
  const body = [];
  if (s.row === null) {
    body.push(el("p", { class: "empty", id: "row" }, s.change ? (s.image === "before" ? "The row did not exist yet." : "The row did not exist (deleted).") : "No change of this record in the trail."));
  } else {
    body.push(el("table", { class: "diff", id: "row" }, el("tbody", {}, Object.keys(s.row).sort().map((k) =>
      el("tr", {}, el("td", { class: "col" }, k), el("td", {}, json(s.row[k])))))));
  }
  if (s.change) {
    body.push(el("p", { class: "muted" }, `From the ${s.image} image of `, link("/changes/" + s.change.id, `${s.change.operation} at `, when(s.change.committed_at)), "."));
  }
  if ((s.unknown_columns || []).length) body.push(el("div", { class: "note" }, `Not in the trail: ${s.unknown_columns.join(", ")}.`));
  show(el("h1", {}, `${table} `, el("span", { class: "mono" }, pk), el("span", { class: "muted" }, " — as of")),
    form, el("div", { class: "panel" }, body), link("/history/" + path, "Timeline"));
}

// --- Revert ---

async function revert(params) {
  const sel = new URLSearchParams();
  for (const k of ["change", "transaction", "context"]) for (const v of params.getAll(k)) sel.append(k, v);
  const p = await api("/api/v1/revert?" + sel);
  const parts = [el("h1", {}, "Revert preview"),
    el("p", { class: "muted" }, `${p.reverted.length} change${p.reverted.length === 1 ? "" : "s"} undone in reverse order, in one transaction whose context names them.`)];
  if (p.unrevertable.length) {
    parts.push(el("div", { class: "note", id: "unrevertable" }, el("strong", {}, "Cannot be undone from the trail:"),
      el("ul", {}, p.unrevertable.map((u) => el("li", {}, link("/changes/" + u.change, u.change.slice(0, 8)), " — ", u.reason)))));
  }
  if (p.conflicts.length) {
    parts.push(el("div", { class: "note", id: "conflicts" }, el("strong", {}, `${p.conflicts.length} row${p.conflicts.length === 1 ? "" : "s"} changed since:`),
      el("ul", {}, p.conflicts.map((c) => el("li", {}, `${c.schema}.${c.table} `, el("span", { class: "mono" }, c.primary_key), ` — ${c.reason}`)))));
  }
  const sql = el("pre", { id: "sql" }, p.sql || "-- nothing to run");
  const copy = el("button", { type: "button", onclick: async () => {
    try { await navigator.clipboard.writeText(p.sql); copy.textContent = "Copied"; } catch {
      const r = document.createRange(); r.selectNodeContents(sql); getSelection().removeAllRanges(); getSelection().addRange(r);
      copy.textContent = "Selected: press Ctrl+C";
    }
  } }, "Copy as SQL");
  const actions = el("div", { class: "bar" }, copy);
  if (p.apply_enabled && p.sql && !p.unrevertable.length) {
    const force = el("input", { type: "checkbox", id: "force" });
    const apply = el("button", { type: "button", class: "danger", id: "apply", onclick: async () => {
      if (!confirm("Apply this revert to the source database?")) return;
      apply.disabled = true;
      try {
        const r = await api("/api/v1/revert?" + sel, { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ apply: true, force: force.checked }) });
        actions.after(el("div", { class: "note", id: "applied" }, `Applied: ${r.statements} statements, ${r.rows} rows.`));
      } catch (err) {
        apply.disabled = false;
        actions.after(showError(err));
      }
    } }, "Apply revert");
    actions.append(apply);
    if (p.conflicts.length) actions.append(el("label", { class: "bar" }, force, "overwrite rows changed since"));
  } else if (!p.apply_enabled) {
    actions.append(el("span", { class: "muted" }, "Applying from the UI is off (ui.revert.apply)."));
  }
  parts.push(actions, sql);
  show(...parts);
}

// --- Theme ---

function applyTheme(t) {
  if (t === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", t);
}
document.getElementById("theme").addEventListener("click", () => {
  const order = ["auto", "light", "dark"];
  const next = order[(order.indexOf(localStorage.getItem("pgtrail-theme") || "auto") + 1) % order.length];
  localStorage.setItem("pgtrail-theme", next);
  applyTheme(next);
});
applyTheme(localStorage.getItem("pgtrail-theme") || "auto");

route();
