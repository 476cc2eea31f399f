// anomalens operator page: send images to POST /predict?heatmap=1, show each verdict and keep a list.
// With the service's history (GET /history) the list survives a reload, every result carries the operator's
// feedback buttons (POST /feedback/{id}) and the drift test's state is shown (GET /health).
// Plain browser JavaScript, no library, nothing loaded from elsewhere. Text from files and from the server
// is only ever set with textContent (never parsed as HTML).
"use strict";

const MAX_HISTORY = 100;   // results kept in the list (older ones are dropped with their pictures)
const PARALLEL = 4;        // uploads in flight at once (the server batches them)

const $ = (id) => document.getElementById(id);
const state = { model: null, health: null, history: [], selected: null, queue: [], inFlight: 0,
                counts: { ok: 0, defect: 0, error: 0 }, historyLoaded: false };

// The operator's judgements: which verdict each one fits (a flagged part, a passed one) and its button's text.
const JUDGEMENTS = {
  false_alarm: { flagged: true, text: "False alarm" },
  confirmed_defect: { flagged: true, text: "Confirmed defect" },
  missed_defect: { flagged: false, text: "Missed defect" },
};

function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

function authHeaders() {
  const token = sessionStorage.getItem("anomalens-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------------------ service status + model
async function refreshHealth() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    state.health = await response.json();
    $("status").textContent = "online";
    $("status").className = "status online";
    $("token-box").hidden = !state.health.auth_required;
    showDrift(state.health.drift);
    if (!state.model) await loadModel();
    if (state.health.history && !state.historyLoaded) await loadStoredHistory();
    $("history-note").hidden = !!state.health.history;
    $("history-note").textContent = state.health.history ? "" :
      "This service keeps no history: results are lost when the page closes (start it with a state folder).";
  } catch (err) {
    $("status").textContent = "offline";
    $("status").className = "status offline";
  }
}

async function loadModel() {
  const response = await fetch("/model", { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) {
    $("model-info").textContent = (state.health ? state.health.detector : "model") + " · enter the access token";
    return;
  }
  if (!response.ok) return;
  const m = await response.json();
  state.model = m;
  const rule = m.decision || {};
  const size = m.input_size ? `${m.input_size.width}×${m.input_size.height}` : "";
  $("model-info").textContent =
    `${m.detector} (${m.runtime}${m.device && m.device !== "cpu" ? ", " + m.device : ""})` +
    (m.source ? ` · ${m.source}` : "") + ` · threshold ${fmt(rule.image_threshold)}` + (size ? ` · input ${size}` : "");
  if (m.limits) $("drop-hint").textContent =
    `PNG, JPEG, BMP, TIFF, WebP · up to ${(m.limits.max_upload_bytes / 1e6).toFixed(0)} MB each`;
}

function showDrift(drift) {
  const box = $("drift");
  if (!drift || drift.state === "no-reference") { box.hidden = true; return; }
  box.hidden = false;
  box.className = "drift" + (drift.state === "drift" ? " warn" : "");
  box.textContent = drift.state === "drift" ? "⚠ Drift: " + drift.message.replace(/^drift: /, "")
    : drift.state === "warming-up" ? `Drift check warming up: ${drift.count} of ${drift.min_count} normal-judged images`
    : `No drift: the last ${drift.count} normal-judged scores look like the training images' ` +
      `(KS ${fmt(drift.statistic, 3)}, p = ${fmt(drift.p_value, 2)})`;
  box.dataset.state = drift.state;
}

// ------------------------------------------------------------------------- the service's stored history
async function loadStoredHistory() {
  const response = await fetch(`/history?limit=${MAX_HISTORY}`, { headers: authHeaders(), cache: "no-store" });
  if (!response.ok) return;  // 401 until the token is entered: tried again at the next refresh
  state.historyLoaded = true;
  const page = await response.json();
  const shown = new Set(state.history.map((entry) => entry.id));
  for (const item of page.items) {
    if (shown.has(item.id)) continue;
    const entry = { name: item.image, url: "", status: item.anomalous ? "defect" : "ok", result: null, stored: item,
                    error: null, id: item.id, judgement: item.judgement, time: new Date(item.time) };
    addToHistory(entry, true);
    if (item.image_url) loadStoredImage(entry, item.image_url);
  }
}

async function loadStoredImage(entry, url) {
  // fetched with the token (an <img src> could not send it), shown from a blob URL
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) return;
    entry.url = URL.createObjectURL(await response.blob());
    renderHistoryItem(entry);
    if (state.selected === entry) $("original").src = entry.url;
  } catch (_) { /* the picture is optional */ }
}

async function judge(entry, judgement) {
  entry.feedbackError = null;
  try {
    const response = await fetch(`/feedback/${entry.id}`, {
      method: "POST", body: JSON.stringify({ judgement }),
      headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()) });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) entry.feedbackError = `${response.status}: ${body && body.detail ? body.detail : "refused"}`;
    else entry.judgement = body.judgement;
  } catch (err) {
    entry.feedbackError = "the service did not answer (" + err.message + ")";
  }
  renderHistoryItem(entry);
}

// ----------------------------------------------------------------------------------------- uploads
function addFiles(files) {
  for (const file of files) {
    const entry = { name: file.name || "image", url: URL.createObjectURL(file), file, status: "wait", result: null,
                    error: null };
    addToHistory(entry);
    state.queue.push(entry);
  }
  pump();
}

function pump() {
  while (state.inFlight < PARALLEL && state.queue.length) {
    const entry = state.queue.shift();
    state.inFlight += 1;
    send(entry).finally(() => { state.inFlight -= 1; entry.file = null; pump(); showPending(); });
  }
  showPending();
}

function showPending() {
  const n = state.inFlight + state.queue.length;
  $("pending").hidden = n === 0;
  $("pending").textContent = n ? `${n} in progress…` : "";
}

async function send(entry) {
  const url = "/predict?heatmap=1&name=" + encodeURIComponent(entry.name);
  const headers = Object.assign({ "Content-Type": entry.file.type || "application/octet-stream" }, authHeaders());
  try {
    let response = null;
    for (let attempt = 0; ; attempt += 1) {
      response = await fetch(url, { method: "POST", body: entry.file, headers });
      // busy (429: this browser has many requests in flight; 503: the service has): wait as told, retry
      if ((response.status !== 429 && response.status !== 503) || attempt >= 5) break;
      const wait = Math.min(10, Number(response.headers.get("Retry-After")) || 1);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
                                         : `HTTP ${response.status}`;
      if (response.status === 401) { $("token-box").hidden = false; $("token").focus(); }
      finish(entry, "error", null, `${response.status}: ${detail}`);
      return;
    }
    entry.id = body.history_id === undefined ? null : body.history_id;
    entry.judgement = null;
    finish(entry, body.anomalous ? "defect" : "ok", body, null);
  } catch (err) {
    finish(entry, "error", null, "the service did not answer (" + err.message + ")");
  }
}

function finish(entry, status, result, error) {
  entry.status = status;
  entry.result = result;
  entry.error = error;
  entry.time = new Date();
  state.counts[status] += 1;
  $("count-ok").textContent = state.counts.ok;
  $("count-defect").textContent = state.counts.defect;
  $("count-error").textContent = state.counts.error;
  renderHistoryItem(entry);
  select(entry);  // the newest finished result is the one on screen
}

// ----------------------------------------------------------------------------------------- history
function addToHistory(entry, atEnd = false) {
  if (atEnd) state.history.push(entry); else state.history.unshift(entry);
  const li = el("li");
  li.dataset.testid = "history-item";
  li.setAttribute("data-testid", "history-item");
  li.addEventListener("click", () => select(entry));
  entry.node = li;
  if (atEnd) $("history").append(li); else $("history").prepend(li);
  renderHistoryItem(entry);
  $("history-empty").hidden = true;
  while (state.history.length > MAX_HISTORY) {
    const old = state.history.pop();
    if (old.url) URL.revokeObjectURL(old.url);
    old.node.remove();
  }
}

function label(status) {
  return { ok: "OK", defect: "DEFECT", error: "ERROR", wait: "…" }[status];
}

function renderHistoryItem(entry) {
  const li = entry.node;
  li.replaceChildren();
  const img = el("img");
  if (entry.url) img.src = entry.url;
  img.alt = "";
  const text = el("div");
  text.append(el("div", "name", entry.name));
  let meta = "waiting…";
  const scored = entry.result || entry.stored;
  if (scored) meta = `score ${fmt(scored.score)} · ${entry.result ? entry.time.toLocaleTimeString() : entry.time.toLocaleString()}`;
  if (entry.error) meta = entry.error;
  text.append(el("div", "meta", meta));
  if (entry.id !== null && entry.id !== undefined && (entry.status === "ok" || entry.status === "defect")) {
    text.append(feedbackBar(entry));
  }
  const chip = el("span", "chip " + entry.status, label(entry.status));
  chip.setAttribute("data-testid", "history-verdict");
  li.append(img, text, chip);
  li.classList.toggle("selected", state.selected === entry);
}

function feedbackBar(entry) {
  const bar = el("div", "feedback");
  bar.setAttribute("data-testid", "feedback");
  const flagged = entry.status === "defect";
  for (const [judgement, info] of Object.entries(JUDGEMENTS)) {
    if (info.flagged !== flagged) continue;
    const active = entry.judgement === judgement;
    const button = el("button", active ? "active" : "", info.text);
    button.type = "button";
    button.title = active ? "click again to clear this judgement" : "tell the model: " + info.text.toLowerCase();
    button.setAttribute("data-testid", "feedback-" + judgement);
    button.setAttribute("aria-pressed", active ? "true" : "false");
    button.addEventListener("click", (event) => { event.stopPropagation(); judge(entry, active ? null : judgement); });
    bar.append(button);
  }
  if (entry.judgement) {
    const said = el("span", "judgement", "✓ " + JUDGEMENTS[entry.judgement].text);
    said.setAttribute("data-testid", "judgement");
    bar.append(said);
  }
  if (entry.feedbackError) bar.append(el("span", "meta", entry.feedbackError));
  return bar;
}

// ---------------------------------------------------------------------------------- current result
function select(entry) {
  const previous = state.selected;
  state.selected = entry;
  if (previous && previous.node) previous.node.classList.remove("selected");
  if (entry.node) entry.node.classList.add("selected");
  $("placeholder").hidden = true;
  $("result").hidden = false;

  const verdict = $("verdict");
  verdict.textContent = label(entry.status);
  verdict.className = "verdict " + entry.status;
  $("result-name").textContent = entry.name;
  $("original").src = entry.url;
  for (const box of document.querySelectorAll("#original-frame .box")) box.remove();
  $("boxes-note").textContent = "";
  $("error-text").hidden = !entry.error;
  $("error-text").textContent = entry.error || "";

  const r = entry.result;
  $("gauge-block").hidden = !r && !entry.stored;
  $("heatmap-figure").hidden = !(r && r.heatmap_png);
  $("details").replaceChildren();
  $("result-sub").textContent = "";
  $("orientation-note").hidden = true;
  if (!r) {
    $("heatmap").removeAttribute("src");
    if (entry.stored) showStored(entry.stored);
    return;
  }

  $("result-sub").textContent = `${r.image_size.width}×${r.image_size.height} px · ${r.decision}`;
  // The service scores the pixels as stored; the page draws them so (style.css: image-orientation: none).
  const turned = r.exif_orientation && r.exif_orientation !== 1;
  $("orientation-note").hidden = !turned;
  $("orientation-note").textContent = turned ? `Shown as stored, as the model sees it: the file's EXIF ` +
    `orientation (${r.exif_orientation}) is not applied, so a viewer may show it turned.` : "";
  const ratio = r.normalized_score;
  showGauge(ratio, r.anomalous);
  const score = $("score-text");
  score.replaceChildren();
  score.append("score ", el("b", "", fmt(r.score)), " / threshold ", el("b", "", fmt(r.threshold)));
  if (ratio !== null) score.append(` · normalised ${fmt(ratio, 3)} (0.5 = threshold)`);
  if (r.rule === "area") score.append(` · verdict by defect area ≥ ${r.min_area} px`);

  if (r.heatmap_png) $("heatmap").src = "data:image/png;base64," + r.heatmap_png;
  else $("heatmap").removeAttribute("src");

  const regions = r.regions || [];
  const frame = $("original-frame");
  for (const g of regions.slice(0, 20)) {
    const box = el("div", "box");
    box.style.left = (100 * g.x / r.image_size.width) + "%";
    box.style.top = (100 * g.y / r.image_size.height) + "%";
    box.style.width = (100 * g.width / r.image_size.width) + "%";
    box.style.height = (100 * g.height / r.image_size.height) + "%";
    frame.append(box);
  }
  if (regions.length) $("boxes-note").textContent = " · defect regions boxed";

  const rows = [];
  if (r.regions !== null) {
    const total = r.regions_total || 0;
    rows.push(["Defect regions", total === 0 ? "none" : `${total}` +
      (regions.length ? ` · largest ${regions[0].area} px at (${regions[0].x}, ${regions[0].y}), ` +
        `${regions[0].width}×${regions[0].height}` : "")]);
    rows.push(["Defect area", fmt(100 * r.defect_area_fraction, 3) + " % of the image"]);
  }
  rows.push(["Pixel threshold", r.pixel_threshold === null ? "–" : fmt(r.pixel_threshold)]);
  const t = r.timing_ms || {};
  rows.push(["Time", `${fmt(t.total, 3)} ms (model ${fmt(t.model_batch, 3)} ms for a batch of ${t.batch_size})`]);
  for (const [name, value] of rows) $("details").append(el("dt", "", name), el("dd", "", value));
}

function showGauge(ratio, anomalous) {
  const fill = $("gauge-fill");
  // the normalised score is 0.5 at the threshold: the gauge's middle is the threshold line
  fill.style.width = (ratio === null ? (anomalous ? 75 : 25) : Math.max(0, Math.min(1, ratio)) * 100) + "%";
  fill.className = "gauge-fill" + (anomalous ? " defect" : "");
}

function showStored(item) {
  // a result from the service's history: its verdict and score (the heatmap is not stored)
  $("result-sub").textContent = `${new Date(item.time).toLocaleString()} · ${item.model_id}`;
  showGauge(item.normalized_score, item.anomalous);
  const score = $("score-text");
  score.replaceChildren();
  score.append("score ", el("b", "", fmt(item.score)), " / threshold ", el("b", "", fmt(item.threshold)));
  if (item.normalized_score !== null) score.append(` · normalised ${fmt(item.normalized_score, 3)} (0.5 = threshold)`);
  const regions = item.regions || [];
  const rows = [["Defect regions", regions.length ? `${regions.length} · largest ${regions[0].area} px` : "none"],
                ["History id", String(item.id)]];
  for (const [name, value] of rows) $("details").append(el("dt", "", name), el("dd", "", value));
}

// -------------------------------------------------------------------------------------------- wiring
function wire() {
  const drop = $("drop");
  const input = $("file-input");
  input.addEventListener("change", () => { addFiles(Array.from(input.files)); input.value = ""; });
  drop.addEventListener("click", (event) => { if (event.target === drop) input.click(); });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = Array.from(event.dataTransfer.files).filter((f) => !f.type || f.type.startsWith("image/"));
    addFiles(files);
  });
  // A file dropped anywhere else must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  const token = $("token");
  token.value = sessionStorage.getItem("anomalens-token") || "";
  token.addEventListener("change", () => {
    sessionStorage.setItem("anomalens-token", token.value.trim());
    state.model = null;
    loadModel();
    if (state.health && state.health.history && !state.historyLoaded) loadStoredHistory();
  });

  refreshHealth();
  setInterval(refreshHealth, 5000);
}

wire();
