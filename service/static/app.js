// The emi service's page: plain JavaScript, no build step, no requests beyond this
// origin. Every value from the service is set as text (never as HTML).
"use strict";

const TOKEN_KEY = "emi-token";
const FINAL = ["succeeded", "failed", "cancelled"];
const POLL_MS = 1000;
let token = sessionStorage.getItem(TOKEN_KEY);
let folder = null; // the folder chosen in the browser
let polling = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const answer = await fetch(path, { ...options, headers });
  if (answer.status === 401) throw new Unauthorized();
  if (!answer.ok) {
    let detail = `${answer.status}`;
    try {
      const body = await answer.json();
      detail = Array.isArray(body.detail) ? body.detail.join("; ") : body.detail || body.error;
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return answer;
}

const json = async (path, options) => (await api(path, options)).json();

function fmt(value, digits = 3) {
  return value == null || Number.isNaN(value) ? "n/a" : Number(value).toFixed(digits);
}

function seconds(total) {
  if (total == null || !Number.isFinite(total)) return "n/a";
  const s = Math.max(0, Math.round(total));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${r} s` : `${r} s`;
}

// -- the token ----------------------------------------------------------------------

function askToken(message) {
  stopPolling();
  $("main").hidden = true;
  $("forget-token").hidden = true;
  $("token-panel").hidden = false;
  $("token-error").textContent = message || "";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  start();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  askToken("");
});

// -- heads ----------------------------------------------------------------------------

const LAYER_WORDS = { last: "the last layer", weighted: "a learned mix of layers" };

function layerWords(layer) {
  if (!layer) return "";
  return LAYER_WORDS[layer] || (/^\d+$/.test(String(layer)) ? `layer ${layer}` : String(layer));
}

function trainedOn(head) {
  return (head.features || [])
    .map((f) => `${f.backbone || "a backbone"}'s features (${f.feature_set || "?"}, ${(f.fingerprint || "").slice(0, 12)})`)
    .join(" + ");
}

function headFlags(head) {
  // what the head's figures rest on, and what they do not say (in plain words)
  const flags = [];
  if ((head.features || []).some((f) => f.random_backbone === true)) {
    flags.push(["warning", "Trained on a random backbone: its scores measure the pipeline, not emotion."]);
  }
  for (const target of head.nearly_constant || []) {
    flags.push(["warning", `${target}: predicts nearly the same value for every clip, so its r means little.`]);
  }
  for (const target of head.negative || []) {
    if ((head.nearly_constant || []).includes(target)) continue;
    flags.push(["warning", `${target}: negative r (${fmt((head.val_pearson || {})[target], 2)}), worse than predicting one value for every clip.`]);
  }
  return flags.map(([kind, text]) => el("p", { class: kind, text }));
}

function scoreWords(head) {
  const clips = head.val_clips == null ? "an unrecorded number of" : head.val_clips;
  const interval = head.val_interval
    ? `; 95% interval ${fmt(head.val_interval[0], 2)} to ${fmt(head.val_interval[1], 2)}` : "";
  return `on ${clips} validation clips${interval}`;
}

function headRow(head, recommended) {
  const perTarget = el("details", {},
    el("summary", { text: fmt(head.val_pearson_mean) }),
    el("p", { class: "hint", text: scoreWords(head) }),
    el("table", { class: "targets" },
      el("tbody", {}, ...Object.entries(head.val_pearson || {}).map(([target, r]) =>
        el("tr", {}, el("th", { scope: "row", text: target }), el("td", { class: "num", text: fmt(r) }))))));
  const box = el("input", { type: "checkbox", name: "head", value: head.name, id: `head-${head.name}` });
  if (head.error) box.disabled = true;
  const random = (head.features || []).some((f) => f.random_backbone === true);
  const name = el("td", { "data-label": "Name" }, el("label", { for: box.id, text: head.name }),
    recommended ? el("span", { class: "badge good", text: "recommended" }) : null,
    head.preset_summary ? el("p", { class: "hint preset", text: `${head.preset}: ${head.preset_summary}` }) : null,
    ...headFlags(head));
  return el("tr", { "data-head": head.name, class: random ? "random" : "" },
    el("td", { "data-label": "Use" }, box),
    name,
    el("td", { "data-label": "Trained on", text: head.error ? `unreadable: ${head.error}` : trainedOn(head) }),
    el("td", { "data-label": "Reads", text: layerWords(head.layer) }),
    el("td", { class: "num", "data-label": "Validation score" }, head.error ? "" : perTarget),
    el("td", { class: "num", "data-label": "Training time", text: head.train_seconds == null ? "n/a" : seconds(head.train_seconds) }));
}

let headsShown = "";

async function loadHeads() {
  const listing = await json("/v1/heads");
  const { heads } = listing;
  const key = JSON.stringify(listing);
  if (key === headsShown) return; // unchanged: keep the ticks and open details
  headsShown = key;
  const body = $("heads").querySelector("tbody");
  const ticked = new Set([...body.querySelectorAll("input:checked")].map((b) => b.value));
  body.replaceChildren(...heads.map((h) => headRow(h, h.name === listing.recommended)));
  if (!heads.length) body.append(el("tr", {}, el("td", { colspan: "6", text: "No heads in the registry yet." })));
  for (const b of body.querySelectorAll("input[type=checkbox]")) b.checked = ticked.has(b.value);
  const first = body.querySelector("input[type=checkbox]:not(:disabled)");
  if (first && !body.querySelector("input:checked")) first.checked = true;
  $("heads-comparison").textContent = !heads.length ? ""
    : listing.recommended ? `Recommended: ${listing.recommended}, ${listing.comparison}.`
      : `No head is recommended: ${listing.comparison}.`;
}

// -- sources ----------------------------------------------------------------------------

async function browse(path) {
  const query = path ? `?path=${encodeURIComponent(path)}` : "";
  const listing = await json(`/v1/sources${query}`);
  folder = listing.path;
  $("folder-path").replaceChildren(folder ? pathText(folder) : "(choose a root)");
  const items = [];
  if (listing.parent !== undefined && listing.path) {
    items.push(el("li", {}, el("button", {
      type: "button", class: "link", text: "..  (up)", onclick: () => browse(listing.parent || ""),
    })));
  }
  for (const entry of listing.folders) {
    const button = el("button", { type: "button", class: "link", onclick: () => browse(entry.path) });
    button.append(pathText(`${entry.name}/`.replace(/\/+$/, "/")));
    items.push(el("li", {}, button));
  }
  $("folders").replaceChildren(...items);
  $("folder-note").textContent = listing.path
    ? `${listing.audio_files} audio file${listing.audio_files === 1 ? "" : "s"} in this folder itself; files in its subfolders are scored too.`
    : "Choose one of the roots the operator allows.";
}

async function loadLimits() {
  const info = await json("/v1/service");
  const mb = (bytes) => `${Math.round(bytes / 2 ** 20)} MiB`;
  $("limits").textContent =
    `Limits: ${mb(info.limits.max_file_bytes)} per file, ${mb(info.limits.max_request_bytes)} ` +
    `per upload, ${info.limits.max_files} files per upload.` +
    (info.keep_days ? ` Uploads and results are kept ${info.keep_days} day${info.keep_days === 1 ? "" : "s"}.` : "");
  $("files").dataset.maxFile = info.limits.max_file_bytes;
  $("files").dataset.maxFiles = info.limits.max_files;
}

const UPLOADABLE = /\.(wav|flac|ogg|mp3|mp4|mkv|webm|avi|mov|m4a|aac|opus|zip|tar|tgz|gz|csv)$/i;

function showChosen() {
  const files = [...$("files").files];
  const skipped = files.filter((f) => !UPLOADABLE.test(f.name)).map((f) => f.name);
  $("chosen-files").textContent = files.length
    ? `Chosen: ${files.map((f) => f.name).join(", ")}` +
      (skipped.length ? `. Will be skipped (not audio, video, CSV or an archive): ${skipped.join(", ")}` : "")
    : "";
  if (files.length) $("source-files").checked = true;
}

$("files").addEventListener("change", showChosen);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  $("files").files = event.dataTransfer.files;
  showChosen();
});

// -- submitting ------------------------------------------------------------------------

$("score-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("score-error");
  error.textContent = "";
  const heads = [...document.querySelectorAll("input[name=head]:checked")].map((b) => b.value);
  if (!heads.length) { error.textContent = "Tick at least one head."; return; }
  const button = $("score-submit");
  button.disabled = true;
  try {
    let source = folder;
    if ($("source-files").checked) {
      const files = [...$("files").files];
      if (!files.length) throw new Error("Choose or drop files first.");
      const tooBig = files.find((f) => f.size > Number($("files").dataset.maxFile));
      if (tooBig) throw new Error(`${tooBig.name} is over the per-file limit.`);
      if (files.length > Number($("files").dataset.maxFiles)) throw new Error("Too many files for one upload.");
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      button.textContent = "Uploading...";
      const upload = await json("/v1/uploads", { method: "POST", body: form });
      uploads.set(upload.id, upload);
      source = upload.id;
      $("files").value = ""; // sent: the control is cleared for the next files
      $("chosen-files").textContent = `Uploaded ${uploadWords(upload)}` +
        (upload.skipped.length ? `. Skipped (not audio, video, CSV or an archive): ${upload.skipped.join(", ")}` : "");
    } else if (!source) {
      throw new Error("Choose a folder (open a root, then the folder).");
    }
    await submitJob({ kind: "score", source, heads });
  } catch (err) {
    showError(err, error);
  } finally {
    button.disabled = false;
    button.textContent = "Start scoring";
  }
});

async function submitJob(body) {
  // POST /v1/jobs, then the jobs list shows it
  await json("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  await refreshJobs();
}

function showError(err, node) {
  if (err instanceof Unauthorized) askToken("The token was refused.");
  else node.textContent = err.message;
}

// -- extract and train --------------------------------------------------------------------

const PRESETS = ["compact", "fusion", "paper", "mean-linear"]; // models.options.PRESETS
$("train-preset").replaceChildren(...PRESETS.map((p) => el("option", { value: p, text: p })));

let storesShown = "";

async function loadStores() {
  const { stores } = await json("/v1/stores");
  const named = stores.filter((st) => st.kind !== "score" && !st.error);
  const key = JSON.stringify(named.map((st) => [st.name, st.clips]));
  if (key === storesShown) return; // unchanged: an open list or a choice stays as it is
  storesShown = key;
  const select = $("train-store");
  const chosen = select.value;
  select.replaceChildren(...named.map((st) => el("option", { value: st.name,
    text: `${st.name} (${st.clips} clips)` })));
  if (named.some((st) => st.name === chosen)) select.value = chosen;
}

async function submitFrom(form, errorId, body) {
  const error = $(errorId);
  error.textContent = "";
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await submitJob(body);
  } catch (err) {
    showError(err, error);
  } finally {
    button.disabled = false;
  }
}

$("extract-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!folder) { $("extract-error").textContent = "Choose a folder above (open a root, then the folder)."; return; }
  submitFrom(event.target, "extract-error", { kind: "extract", source: folder, store: $("extract-store").value.trim() })
    .then(() => guard(loadStores()));
});

$("train-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submitFrom(event.target, "train-error", { kind: "train", store: $("train-store").value,
    labels: $("train-labels").value.trim(), val_labels: $("train-val-labels").value.trim(),
    name: $("train-name").value.trim(), preset: $("train-preset").value });
});

// -- jobs --------------------------------------------------------------------------------
// A job's card is made once and then updated in place (only what changed is touched),
// so a selection in it, an open details or a button being clicked survives the polling.

const cards = new Map(); // job id -> its card's parts

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function pathText(path) {
  // a path breaks after its slashes only, never inside a name (nor at a hyphen in one)
  const span = el("span", { class: "path" });
  String(path).split("/").forEach((part, i, all) => {
    const text = part + (i < all.length - 1 ? "/" : "");
    if (text) span.append(el("span", { class: "seg", text }));
    if (i < all.length - 1) span.append(el("wbr"));
  });
  return span;
}

function nameText(name) {
  // a head's or store's name stays on one line (never broken at a hyphen in it)
  return el("span", { class: "name", text: name });
}

function namesText(names) {
  return names.flatMap((n, i) => (i ? [", ", nameText(n)] : [nameText(n)]));
}

function textWithPaths(text) {
  // words as they are; a path (a word with a slash) breaks after its slashes only
  return String(text).split(/(\s+)/).map((word) => (word.includes("/") ? pathText(word) : word));
}

const STAGES = { listing: "listing the files", extracting: "extracting features", predicting: "predicting",
  loading: "loading features", training: "training", queued: "waiting" };

function stateWords(job) {
  const p = job.progress || {};
  const total = p.clips_total || 0;
  if (job.state === "succeeded" && job.failures_count) {
    return [`succeeded, ${job.failures_count} of ${total} clip${total === 1 ? "" : "s"} failed`, "partial"];
  }
  if (job.state === "running") {
    return [`running: ${STAGES[p.stage] || p.stage || "starting"}`, "running"];
  }
  if (job.state === "cancelling") {
    return ["cancelling: stopping after the current batch", "running"];
  }
  if (job.state === "cancelled" && job.result && job.result.partial) {
    return [`cancelled: ${job.result.predicted} of ${total} clips finished and kept`, "cancelled"];
  }
  return [job.state, job.state];
}

function progressOf(job) {
  const p = job.progress || {};
  const total = p.clips_total || 0;
  const done = p.clips_done || 0;
  const started = job.started_at ? Date.parse(job.started_at) : null;
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  const elapsed = started ? (end - started) / 1000 : null;
  const left = !FINAL.includes(job.state) && done > 0 && total > done && elapsed
    ? (elapsed * (total - done)) / done : null;
  return { p, total, done, elapsed, left };
}

function countsText(job) {
  const { p, total, done, elapsed, left } = progressOf(job);
  if (job.kind === "train") {
    if (!p.epoch) {
      const before = job.state === "failed" ? "failed before its first epoch"
        : job.state === "cancelled" ? "cancelled before its first epoch"
          : FINAL.includes(job.state) ? "no epoch run" : `${STAGES[p.stage] || "starting"}`;
      return `${before}; elapsed ${seconds(elapsed)}`;
    }
    return `${p.head ? p.head + ": " : ""}epoch ${p.epoch} of ${p.epochs || "?"}; best validation ` +
      `mean Pearson ${fmt(p.best_val_pearson)}; elapsed ${seconds(elapsed)}`;
  }
  return `${done} of ${total} clips done (${p.clips_reused || 0} reused, ${p.clips_failed || 0} failed); ` +
    `${seconds(p.audio_seconds || 0)} of audio; elapsed ${seconds(elapsed)}` +
    (left != null ? `; about ${seconds(left)} left` : "");
}

function folderName(job) {
  const source = String(job.request.source || job.id).replace(/\/+$/, "");
  return source.slice(source.lastIndexOf("/") + 1) || job.id;
}

const uploads = new Map(); // upload id -> its description (GET /v1/uploads/{id})
const UPLOAD_ID = /^upload-[0-9a-f]+$/;

function uploadWords(upload) {
  const names = upload.names || [];
  const more = upload.files > names.length ? `, ... (${upload.files - names.length} more)` : "";
  return `${upload.files} file${upload.files === 1 ? "" : "s"}: ${names.join(", ")}${more}`;
}

function jobName(job) {
  const source = job.request && job.request.source;
  const upload = source && uploads.get(source);
  return upload ? uploadWords(upload) : folderName(job);
}

async function sourceWords(job, node) {
  // a folder as its path; an upload by its files (fetched once)
  const source = job.request.source || "";
  if (!UPLOAD_ID.test(source)) { node.replaceChildren(pathText(source)); return; }
  node.textContent = "uploaded files";
  try {
    if (!uploads.has(source)) uploads.set(source, await json(`/v1/uploads/${source}`));
    node.textContent = uploadWords(uploads.get(source));
  } catch (err) { node.textContent = `upload ${source} (removed)`; }
}

async function download(job, button) {
  try {
    const blob = await (await api(`/v1/jobs/${job.id}/predictions.csv`)).blob();
    const partial = job.result && job.result.partial ? "-partial" : "";
    const link = el("a", { href: URL.createObjectURL(blob), download: `${folderName(job)}-${job.id}${partial}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (err) {
    button.textContent = `Download failed: ${err.message}`;
  }
}

function failureList(job) {
  // the reasons are fetched when opened (GET /v1/jobs/{id}/failures, the first 100)
  const list = el("ul", {});
  const summary = el("summary", {});
  const details = el("details", { class: "failures" }, summary, list);
  details.addEventListener("toggle", async () => {
    if (!details.open || list.childElementCount) return;
    const page = await json(`/v1/jobs/${job.id}/failures?limit=100`);
    list.append(...page.failures.map((f) => el("li", {}, el("code", { text: f.clip_id }), `: ${f.reason}`)));
    if (page.total > page.failures.length) list.append(el("li", { text: `... and ${page.total - page.failures.length} more` }));
  });
  return { details, summary };
}

const INTENSITY_WORDS = "Each intensity runs from 0 (the emotion not shown) to 1 (shown at its " +
  "strongest), on the scale of the ratings the head learned from: 0.49 is about midway.";
const PAGE_ROWS = 25;
const jobsById = new Map(); // the jobs the page has listed (for comparisons)

function predictionsQuery(view) {
  const q = new URLSearchParams({ offset: view.offset, limit: PAGE_ROWS, sort: view.sort, order: view.order });
  if (view.head) q.set("head", view.head);
  if (view.clip) q.set("clip", view.clip);
  return q.toString();
}

function resultsTable(job) {
  // a finished score job's predictions: one head at a time (a switcher with several),
  // a page of rows from the service (filter by clip id, sort by any column), and each
  // target's distribution, optionally beside another job's
  const view = { head: null, offset: 0, sort: "clip_id", order: "asc", clip: "", other: "" };
  const body = el("div", { class: "predictions-view" });
  const details = el("details", { class: "results" }, el("summary", { text: "Predictions" }), body);
  const parts = {};
  const load = async () => {
    const page = await json(`/v1/jobs/${job.id}/predictions?${predictionsQuery(view)}`);
    view.head = page.head;
    if (!parts.table) build(page);
    fill(page);
  };
  const build = (page) => {
    parts.switcher = page.heads.length > 1 ? el("div", { class: "switcher", role: "tablist", "aria-label": "Head" },
      ...page.heads.map((h) => el("button", { type: "button", role: "tab", class: "tab", text: h,
        "aria-selected": String(h === page.head),
        onclick: () => { view.head = h; view.offset = 0; load(); } }))) : null;
    parts.filter = el("input", { type: "search", placeholder: "clip id contains", "aria-label": "Filter by clip id" });
    let timer = null;
    parts.filter.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { view.clip = parts.filter.value.trim(); view.offset = 0; load(); }, 250);
    });
    parts.sortBy = el("select", { "aria-label": "Sort by" },
      ...["clip_id", ...page.targets].map((c) => el("option", { value: c, text: c === "clip_id" ? "clip id" : c })));
    parts.order = el("select", { "aria-label": "Order" },
      el("option", { value: "asc", text: "lowest first" }), el("option", { value: "desc", text: "highest first" }));
    const sorted = () => { view.sort = parts.sortBy.value; view.order = parts.order.value; view.offset = 0; load(); };
    parts.sortBy.addEventListener("change", sorted);
    parts.order.addEventListener("change", sorted);
    parts.previous = el("button", { type: "button", class: "secondary", text: "Previous",
      onclick: () => { view.offset = Math.max(0, view.offset - PAGE_ROWS); load(); } });
    parts.next = el("button", { type: "button", class: "secondary", text: "Next",
      onclick: () => { view.offset += PAGE_ROWS; load(); } });
    parts.range = el("span", { class: "range" });
    parts.head = el("tr", {});
    parts.rows = el("tbody", {});
    parts.table = el("table", { class: "predictions" }, el("thead", {}, parts.head), parts.rows);
    parts.compare = el("select", { "aria-label": "Compare with another job" });
    parts.compare.addEventListener("focus", () => fillCompare(job, parts.compare));
    parts.compare.addEventListener("change", () => { view.other = parts.compare.value; drawDistributions(job, view, parts); });
    fillCompare(job, parts.compare);
    parts.distributions = el("div", { class: "distributions" });
    body.append(
      el("p", { class: "hint", text: INTENSITY_WORDS }),
      parts.switcher,
      el("div", { class: "controls" },
        el("label", {}, "Filter ", parts.filter),
        el("label", {}, "Sort by ", parts.sortBy, " ", parts.order)),
      el("div", { class: "table-wrap" }, parts.table),
      el("div", { class: "pager" }, parts.previous, parts.range, parts.next),
      el("h3", { text: "How the intensities spread over the job's clips" }),
      el("label", { class: "compare" }, "Beside another job: ", parts.compare),
      parts.distributions);
  };
  const fill = (page) => {
    if (parts.switcher) {
      for (const tab of parts.switcher.children) tab.setAttribute("aria-selected", String(tab.textContent === page.head));
    }
    parts.sortBy.value = page.sort;
    parts.order.value = page.order;
    const header = (name) => {
      const arrow = page.sort === name ? (page.order === "asc" ? " \u25b2" : " \u25bc") : "";
      return el("th", { scope: "col", class: name === "clip_id" ? "" : "num" },
        el("button", { type: "button", class: "link", title: "sort by this column", text: (name === "clip_id" ? "Clip" : name) + arrow,
          onclick: () => {
            view.order = view.sort === name && view.order === "asc" ? "desc" : "asc";
            view.sort = name; view.offset = 0; load();
          } }));
    };
    parts.head.replaceChildren(header("clip_id"), ...page.targets.map(header));
    parts.rows.replaceChildren(...page.rows.map((r) => {
      const row = el("tr", { "data-clip": r.clip_id, tabindex: "0", title: "open this clip" },
        el("th", { scope: "row", "data-label": "Clip", text: r.clip_id }),
        ...page.targets.map((t) => el("td", { class: "num", "data-label": t, text: fmt(r.values[t]) })));
      const open = () => openClip(job, r.clip_id, row);
      row.addEventListener("click", open);
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
      return row;
    }));
    if (!page.rows.length) parts.rows.append(el("tr", {}, el("td", { colspan: String(page.targets.length + 1), text: "No clip id contains that." })));
    const first = page.total ? page.offset + 1 : 0;
    parts.range.textContent = `clips ${first}-${page.offset + page.rows.length} of ${page.total}` +
      (page.total !== page.clips ? ` (of ${page.clips} in the job)` : "");
    parts.previous.disabled = page.offset === 0;
    parts.next.disabled = page.offset + page.rows.length >= page.total;
    parts.page = page;
    drawDistributions(job, view, parts);
  };
  details.addEventListener("toggle", () => {
    if (details.open && !parts.table) guard(load());
  });
  return details;
}

// -- one clip: its audio, its valence, arousal and dominance over time, its intensities --

const VAD_LOOKS = { valence: "v0", arousal: "v1", dominance: "v2" };
let openedClip = null; // { row, panel, url }

function closeClip() {
  if (!openedClip) return;
  openedClip.panel.remove();
  openedClip.row.classList.remove("opened");
  if (openedClip.url) URL.revokeObjectURL(openedClip.url);
  openedClip = null;
}

async function openClip(job, clipId, row) {
  const again = openedClip && openedClip.row === row;
  closeClip();
  if (again) return; // a second click closes it
  const started = performance.now();
  const cells = row.children.length;
  const panel = el("tr", { class: "clip-row" }, el("td", { colspan: String(cells) }));
  const box = el("div", { class: "clip", role: "region", "aria-label": `clip ${clipId}` }, el("p", { class: "hint", text: "Loading the clip..." }));
  panel.firstChild.append(box);
  row.after(panel);
  row.classList.add("opened");
  openedClip = { row, panel, url: null };
  const mine = openedClip;
  try {
    const clip = await json(`/v1/jobs/${job.id}/clip?clip_id=${encodeURIComponent(clipId)}`);
    const audio = el("audio", { controls: "", preload: "auto" });
    const parts = [el("h3", { text: clipId }), el("p", { class: "hint" }, pathText(clip.file),
      clip.duration_s != null ? `, ${fmt(clip.duration_s, 1)} s` : "")];
    if (clip.audio_playable) {
      if (token) { // an audio element sends no token: fetched with it, played from memory
        const blob = await (await api(clip.audio)).blob();
        if (openedClip !== mine) return;
        mine.url = URL.createObjectURL(blob);
        audio.src = mine.url;
      } else {
        audio.src = clip.audio; // streamed, with range requests
      }
      parts.push(audio);
    } else {
      parts.push(el("p", { class: "hint", text: "Its audio is in object storage: not played here." }));
    }
    parts.push(clip.frame_vad ? vadFigure(clip, audio)
      : el("p", { class: "hint", text: "Its frame-level valence, arousal and dominance are no longer stored." }));
    parts.push(intensityTable(clip));
    if (openedClip !== mine) return;
    box.replaceChildren(...parts);
    box.dataset.loadedMs = String(Math.round(performance.now() - started));
  } catch (err) {
    if (err instanceof Unauthorized) { askToken("The token was refused."); return; }
    box.replaceChildren(el("p", { class: "error", text: `The clip could not be opened: ${err.message}` }));
  }
}

function vadFigure(clip, audio) {
  // valence, arousal and dominance per moment (the backbone's frame-level outputs),
  // with a cursor following the audio as it plays
  const curves = clip.frame_vad;
  const w = 560, h = 150, pad = 26;
  const end = Math.max(curves.seconds[curves.seconds.length - 1] || 0, clip.duration_s || 0, 0.1);
  const labels = clip.vad_labels.filter((n) => curves[n] && curves[n].length);
  const values = labels.flatMap((n) => curves[n]);
  const lo = Math.min(0, ...values), hi = Math.max(1, ...values);
  const x = (t) => pad + (t / end) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  const svg = svgNode("svg", { viewBox: `0 0 ${w} ${h}`, class: "vad", role: "img",
    "aria-label": `valence, arousal and dominance over ${fmt(end, 1)} s` });
  for (const name of labels) {
    svg.append(svgNode("polyline", { class: `series ${VAD_LOOKS[name] || "v0"}`, "data-series": name,
      points: curves.seconds.map((t, i) => `${x(t).toFixed(1)},${y(curves[name][i]).toFixed(1)}`).join(" ") }));
  }
  const cursor = svgNode("line", { class: "cursor", x1: x(0), x2: x(0), y1: pad - 8, y2: h - pad });
  svg.append(cursor);
  for (const [text, tx, ty] of [[fmt(hi, 1), 2, pad], [fmt(lo, 1), 2, h - pad], ["0 s", pad, h - 6], [`${fmt(end, 1)} s`, w - pad - 24, h - 6]]) {
    const label = svgNode("text", { x: tx, y: ty });
    label.textContent = text;
    svg.append(label);
  }
  audio.addEventListener("timeupdate", () => {
    const at = x(Math.min(audio.currentTime, end)).toFixed(1);
    cursor.setAttribute("x1", at);
    cursor.setAttribute("x2", at);
  });
  const legend = el("p", { class: "legend" }, ...labels.map((n) => el("span", { class: `key ${VAD_LOOKS[n] || "v0"}`, text: n })));
  return el("figure", {}, svg, legend, el("figcaption", { text:
    "How the clip unfolds: the backbone's valence, arousal and dominance for every 20 ms (averaged where the clip is long); the line follows the audio as it plays." }));
}

function intensityTable(clip) {
  const heads = Object.keys(clip.predictions);
  if (!heads.length) return el("p", { class: "hint", text: "No intensities: this clip failed." });
  const targets = Object.keys(clip.predictions[heads[0]]);
  return el("div", { class: "table-wrap" }, el("table", { class: "intensities" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Head" }), ...targets.map((t) => el("th", { scope: "col", class: "num", text: t })))),
    el("tbody", {}, ...heads.map((h) => el("tr", {}, el("th", { scope: "row", "data-label": "Head", text: h }),
      ...targets.map((t) => el("td", { class: "num", "data-label": t, text: fmt(clip.predictions[h][t]) })))))));
}

function fillCompare(job, select) {
  const chosen = select.value;
  const others = [...jobsById.values()].filter((j) => j.id !== job.id && j.kind === "score" &&
    (j.state === "succeeded" || (j.result && j.result.partial)));
  select.replaceChildren(el("option", { value: "", text: "(none)" }),
    ...others.map((j) => el("option", { value: j.id, text: `${jobName(j)} (${j.id.slice(4, 12)})` })));
  select.value = others.some((j) => j.id === chosen) ? chosen : "";
}

async function drawDistributions(job, view, parts) {
  const page = parts.page;
  let other = null;
  if (view.other) {
    const theirs = jobsById.get(view.other);
    const head = theirs && theirs.request.heads.includes(page.head) ? page.head : "";
    try {
      other = await json(`/v1/jobs/${view.other}/predictions?limit=1${head ? `&head=${encodeURIComponent(head)}` : ""}`);
    } catch (err) { other = null; }
  }
  parts.distributions.replaceChildren(...page.targets.map((t) =>
    distributionFigure(t, page.distribution[t], other && other.distribution[t],
      other ? `${jobName(jobsById.get(view.other) || { id: view.other, request: {} })}, ${other.head}` : "")));
}

const SVG = "http://www.w3.org/2000/svg";

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function distributionFigure(target, mine, theirs, theirName) {
  // a histogram of this job's intensities (bins of 0.1) and a box plot (quartiles,
  // median, min-max whiskers) per job, on one 0-1 axis
  const w = 220, pad = 10, top = 6, barsH = 44, boxH = 12;
  const rows = theirs ? 2 : 1;
  const h = top + barsH + 8 + rows * (boxH + 6) + 14;
  const x = (v) => pad + v * (w - 2 * pad);
  const svg = svgNode("svg", { viewBox: `0 0 ${w} ${h}`, class: "dist", role: "img" });
  const most = Math.max(1, ...mine.histogram);
  mine.histogram.forEach((n, i) => {
    const bh = (n / most) * barsH;
    svg.append(svgNode("rect", { x: x(i / 10) + 1, y: top + barsH - bh, width: (w - 2 * pad) / 10 - 2, height: bh, class: "bar" }));
  });
  [[mine, "mine"], ...(theirs ? [[theirs, "theirs"]] : [])].forEach(([d, look], k) => {
    if (d.median == null) return;
    const y = top + barsH + 8 + k * (boxH + 6);
    svg.append(svgNode("line", { x1: x(d.min), x2: x(d.max), y1: y + boxH / 2, y2: y + boxH / 2, class: `whisker ${look}` }));
    svg.append(svgNode("rect", { x: x(d.q1), y, width: Math.max(1, x(d.q3) - x(d.q1)), height: boxH, class: `box ${look}` }));
    svg.append(svgNode("line", { x1: x(d.median), x2: x(d.median), y1: y, y2: y + boxH, class: `median ${look}` }));
  });
  for (const [text, tx] of [["0", x(0)], ["0.5", x(0.5) - 6], ["1", x(1) - 4]]) {
    const label = svgNode("text", { x: tx, y: h - 2 });
    label.textContent = text;
    svg.append(label);
  }
  const describe = (d) => d.median == null ? "no values"
    : `median ${fmt(d.median, 2)}, half between ${fmt(d.q1, 2)} and ${fmt(d.q3, 2)}`;
  svg.setAttribute("aria-label", `${target}: ${describe(mine)}${theirs ? `; ${theirName}: ${describe(theirs)}` : ""}`);
  return el("figure", { class: "dist" }, svg,
    el("figcaption", {}, el("strong", { text: target }), ` ${describe(mine)}`,
      theirs ? el("span", { class: "theirs", text: `; beside it ${theirName}: ${describe(theirs)}` }) : null));
}

function curve(job) {
  const points = (job.progress && job.progress.curve) || [];
  if (!points.length) return null;
  const w = 320, h = 120, pad = 28;
  const maxEpoch = Math.max(...points.map((q) => q.epoch), 2);
  const values = points.map((q) => q.val_pearson_mean).filter(Number.isFinite);
  const lo = Math.min(0, ...values), hi = Math.max(0.1, ...values);
  const x = (e) => pad + ((e - 1) / (maxEpoch - 1)) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "curve");
  svg.setAttribute("role", "img");
  const heads = [...new Set(points.map((q) => q.head))];
  heads.forEach((head, k) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.filter((q) => q.head === head && Number.isFinite(q.val_pearson_mean))
      .map((q) => `${x(q.epoch).toFixed(1)},${y(q.val_pearson_mean).toFixed(1)}`).join(" "));
    line.setAttribute("class", `series s${k % 4}`);
    svg.append(line);
  });
  for (const [text, tx, ty] of [[fmt(hi, 2), 2, pad], [fmt(lo, 2), 2, h - pad], ["epoch", w - pad - 20, h - 6]]) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", tx); label.setAttribute("y", ty); label.textContent = text;
    svg.append(label);
  }
  const best = job.result && job.result.best;
  svg.setAttribute("aria-label", `validation mean Pearson per epoch${best ? `; best ${fmt(best.val_pearson_mean)}` : ""}`);
  return el("figure", {}, svg, el("figcaption", {}, "Validation mean Pearson per epoch",
    ...(best ? ["; best: ", nameText(best.head), ` at ${fmt(best.val_pearson_mean)}`] : [])));
}

function actionsKey(job) {
  const partial = job.result && job.result.partial;
  const results = job.kind === "score" && (job.state === "succeeded" || (FINAL.includes(job.state) && partial));
  return `${FINAL.includes(job.state) ? "final" : "live"}|${job.cancel_requested}|${results}`;
}

function actionsOf(job) {
  const actions = [];
  if (!FINAL.includes(job.state)) {
    const button = el("button", { type: "button", class: "cancel",
      text: job.cancel_requested ? "Cancel requested: stopping after the current batch" : "Cancel" });
    button.disabled = job.cancel_requested;
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = "Cancelling...";
      try {
        await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
        button.textContent = "Cancel requested: stopping after the current batch";
      } catch (err) {
        button.disabled = false;
        button.textContent = `Cancel failed: ${err.message}`;
      }
      refreshJobs();
    });
    actions.push(button);
  }
  const partial = job.result && job.result.partial;
  if (job.kind === "score" && (job.state === "succeeded" || (FINAL.includes(job.state) && partial))) {
    const button = el("button", { type: "button", class: "download",
      text: partial ? `Download CSV (partial: ${job.result.predicted} clips)` : "Download CSV" });
    button.addEventListener("click", () => download(job, button));
    actions.push(button);
  }
  return actions;
}

function makeCard(job) {
  const source = el("span", { class: "source" });
  if (job.kind !== "train") sourceWords(job, source);
  const what = job.kind === "train"
    ? el("span", { class: "what" }, "train ", nameText(job.request.name), " on store ", nameText(job.request.store))
    : job.kind === "extract"
      ? el("span", { class: "what" }, "extract ", source, " into store ", nameText(job.request.store))
      : el("span", { class: "what" }, `${job.kind} `, source,
        ...(job.request.heads ? [" with ", ...namesText(job.request.heads)] : []),
        ...(job.request.store ? [" (store ", nameText(job.request.store), ")"] : []));
  const card = {
    root: el("li", { class: "job", "data-job": job.id }),
    state: el("span", { class: "state" }),
    bar: el("progress", { "aria-label": job.kind === "train" ? "epochs" : "clips done" }),
    counts: el("p", { class: "counts" }),
    extra: el("div", {}),
    actions: el("div", { class: "actions" }),
  };
  card.root.append(
    el("div", { class: "job-head" }, card.state, el("code", { class: "id", text: job.id })),
    what, el("div", { class: "progress" }, card.bar, card.counts), card.extra, card.actions);
  return card;
}

function updateCard(card, job) {
  const [words, look] = stateWords(job);
  card.root.className = `job ${look}`;
  if (card.root.dataset.state !== job.state) card.root.dataset.state = job.state;
  card.state.className = `state ${look}`;
  setText(card.state, words);
  const { p, total, done } = progressOf(job);
  const [max, value] = job.kind === "train" ? [p.epochs || 1, p.epoch || 0] : [total || 1, done];
  if (card.bar.getAttribute("max") !== String(max)) card.bar.setAttribute("max", String(max));
  if (card.bar.getAttribute("value") !== String(value)) card.bar.setAttribute("value", String(value));
  setText(card.counts, countsText(job));
  const error = job.error ? `${job.error.error}: ${job.error.detail}` : "";
  if (error && !card.error) card.error = card.extra.appendChild(el("p", { class: "error" }));
  if (card.error && card.error.dataset.text !== error) {
    card.error.dataset.text = error;
    card.error.replaceChildren(...textWithPaths(error));
  }
  if (job.failures_count && !card.failures) {
    card.failures = failureList(job);
    card.extra.append(card.failures.details);
  }
  if (card.failures) {
    setText(card.failures.summary, `${job.failures_count} failed clip${job.failures_count === 1 ? "" : "s"}`);
  }
  const points = ((job.progress || {}).curve || []).length;
  if (job.kind === "train" && points && card.points !== `${points}|${job.state}`) {
    card.points = `${points}|${job.state}`;
    const figure = curve(job);
    if (card.curve) card.curve.replaceWith(figure); else card.extra.prepend(figure);
    card.curve = figure;
  }
  const key = actionsKey(job);
  if (card.actionsKey !== key) {
    card.actionsKey = key;
    card.actions.replaceChildren(...actionsOf(job));
    if (key.endsWith("true") && !card.results) card.results = card.extra.appendChild(resultsTable(job));
  }
}

let jobsShown = 20; // the newest jobs listed; "Show older jobs" lists more

async function refreshJobs() {
  const { jobs, next } = await json(`/v1/jobs?limit=${jobsShown}`);
  const list = $("jobs");
  const shown = new Set(jobs.map((j) => j.id));
  for (const [id, card] of cards) {
    if (!shown.has(id)) { card.root.remove(); cards.delete(id); }
  }
  let trained = false, extracted = false;
  jobs.forEach((job, index) => {
    const before = jobsById.get(job.id);
    const ended = job.state === "succeeded" && before && before.state !== "succeeded";
    if (ended && job.kind === "train") trained = true;
    if (ended && job.kind === "extract") extracted = true;
    jobsById.set(job.id, job);
    let card = cards.get(job.id);
    if (!card) { card = makeCard(job); cards.set(job.id, card); }
    if (card.updated !== job.updated_at) { updateCard(card, job); card.updated = job.updated_at; }
    else if (!FINAL.includes(job.state)) setText(card.counts, countsText(job)); // the clock ticks
    if (list.children[index] !== card.root) list.insertBefore(card.root, list.children[index] || null);
  });
  const empty = list.querySelector(".empty");
  if (jobs.length && empty) empty.remove();
  if (!jobs.length && !empty) list.append(el("li", { class: "empty", text: "No jobs yet." }));
  $("older-jobs").hidden = !next;
  if (trained) await loadHeads(); // a train job just put heads in the registry
  if (extracted) await loadStores(); // an extract job just made or filled a store
}

$("older-jobs").addEventListener("click", () => { jobsShown += 20; guard(refreshJobs()); });

function stopPolling() {
  if (polling) clearInterval(polling);
  polling = null;
}

function guard(promise) {
  return promise.catch((err) => {
    if (err instanceof Unauthorized) askToken(token ? "The token was refused." : "");
    else $("score-error").textContent = err.message;
  });
}

async function start() {
  try {
    await loadHeads(); // the first call: 401 here means a token is needed
  } catch (err) {
    if (err instanceof Unauthorized) { askToken(token ? "The token was refused." : ""); return; }
    throw err;
  }
  $("token-panel").hidden = true;
  $("main").hidden = false;
  $("forget-token").hidden = !token;
  await guard(Promise.all([loadLimits(), browse(""), refreshJobs(), loadStores()]));
  stopPolling();
  let ticks = 0;
  polling = setInterval(() => {
    guard(refreshJobs());
    if (++ticks % 10 === 0) { guard(loadHeads()); guard(loadStores()); } // made elsewhere too
  }, POLL_MS);
}

start();
