// tap-emulator's page: the table of transactions (virtual scrolling: only the rows in view
// are in the document), filters, the detail view and the header. Plain JavaScript, no build
// step, nothing from the network. Every captured value is put in the page as text
// (textContent), never as markup, so a captured body cannot run in it.
"use strict";

const ROW_HEIGHT = 26;
const OVERSCAN_ROWS = 12;
const FILTER_DELAY_MS = 120;
const FILTER_NAMES = ["authority", "path", "status", "trace", "direction"];
const REDACTED_TEXT = "REDACTED (value removed by the emulator)";
const DIRECTIONS = { inbound: "in", outbound: "out" };
const MISSING_NOTES = {
  request: "no-request",
  request_headers: "no-request-headers",
  response: "no-response",
  sequence_gap: "gap",
};

const state = {
  rows: new Map(), // id -> row
  view: [], // the rows shown: filtered, newest first
  max: 0,
  mode: "live",
  version: 0,
  paused: false,
  dirty: false,
  loading: null, // a snapshot being fetched: events wait for it
  waiting: [], // events that came while it was
  selected: null,
  detailText: false,
  detail: null,
  filter: {},
};

// --- small helpers ------------------------------------------------------------------------

function $(id) {
  return document.getElementById(id);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function pad(number, width) {
  return String(number).padStart(width, "0");
}

function formatTime(row) {
  if (row.time === null || row.time === undefined) return "-";
  const moment = new Date(row.time * 1000);
  const text =
    `${pad(moment.getUTCHours(), 2)}:${pad(moment.getUTCMinutes(), 2)}:` +
    `${pad(moment.getUTCSeconds(), 2)}.${pad(moment.getUTCMilliseconds(), 3)}`;
  return text + (row.timeSource === "file_mtime" ? "~" : "");
}

function isoTime(row) {
  if (row.time === null || row.time === undefined) return "no time recorded";
  return new Date(row.time * 1000).toISOString();
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 1) return `${(seconds * 1000).toFixed(1)}ms`;
  return `${seconds.toFixed(2)}s`;
}

function formatBytes(size, truncated) {
  let text;
  if (size < 1024) text = `${size}`;
  else if (size < 1024 * 1024) text = `${(size / 1024).toFixed(1)}K`;
  else text = `${(size / 1024 / 1024).toFixed(1)}M`;
  return text + (truncated ? "+" : "");
}

function formatCount(value) {
  return Math.round(value).toLocaleString("en-US");
}

function noteOf(row) {
  const notes = row.missing.map((item) => MISSING_NOTES[item] || item);
  if (!row.final) notes.unshift("open");
  if (row.evicted) notes.push("evicted");
  if (row.redacted.length) notes.push("redacted:" + row.redacted.join(","));
  return notes.join(" ");
}

// --- filters: the same rules as tap_emulator/web/rows.py ---------------------------------

// Python's fnmatch, as a regular expression: * ? [seq] [!seq].
function globToRegExp(pattern) {
  let out = "";
  let i = 0;
  const n = pattern.length;
  while (i < n) {
    const c = pattern[i++];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      let j = i;
      if (j < n && pattern[j] === "!") j++;
      if (j < n && pattern[j] === "]") j++;
      while (j < n && pattern[j] !== "]") j++;
      if (j >= n) {
        out += "\\[";
      } else {
        let inside = pattern.slice(i, j).replace(/\\/g, "\\\\");
        i = j + 1;
        if (inside[0] === "!") inside = "^" + inside.slice(1);
        else if (inside[0] === "^" || inside[0] === "[") inside = "\\" + inside;
        out += "[" + inside + "]";
      }
    } else {
      out += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    }
  }
  return new RegExp("^(?:" + out + ")$", "s");
}

function textMatcher(wanted) {
  if (!wanted) return null;
  const lowered = wanted.toLowerCase();
  if (lowered.includes("*")) {
    const pattern = globToRegExp(lowered);
    return (value) => pattern.test((value || "").toLowerCase());
  }
  return (value) => (value || "").toLowerCase().includes(lowered);
}

function statusMatcher(text) {
  const parts = text
    .split(",")
    .map((part) => part.trim().toLowerCase())
    .filter(Boolean);
  if (!parts.length) return null;
  return (status) =>
    parts.some((part) => {
      if (part === "none") return status === null || status === undefined;
      if (status === null || status === undefined) return false;
      if (/^[1-5]xx$/.test(part)) return Math.floor(status / 100) === Number(part[0]);
      return String(status) === part;
    });
}

function compileFilter(filter) {
  const authority = textMatcher(filter.authority);
  const path = textMatcher(filter.path);
  const status = statusMatcher(filter.status || "");
  const trace = (filter.trace || "").toLowerCase();
  const direction = filter.direction || "";
  return (row) =>
    (!direction || row.direction === direction) &&
    (!authority || authority(row.authority)) &&
    (!path || path(row.path)) &&
    (!trace || row.traceIds.some((id) => id.includes(trace))) &&
    (!status || status(row.status));
}

function readFilter() {
  const filter = {};
  for (const name of FILTER_NAMES) {
    const value = $("f-" + name).value.trim();
    if (value) filter[name] = value;
  }
  return filter;
}

function filterQuery(filter) {
  const query = new URLSearchParams();
  for (const name of FILTER_NAMES) if (filter[name]) query.set(name, filter[name]);
  return query.toString();
}

function applyFilter() {
  state.filter = readFilter();
  const query = filterQuery(state.filter);
  const suffix = query ? "?" + query : "";
  $("download-har").href = "/api/export.har" + suffix;
  $("download-pcap").href = "/api/export.pcapng" + suffix;
  history.replaceState(null, "", location.pathname + suffix + location.hash);
  recompute(true);
}

function restoreFilter() {
  const query = new URLSearchParams(location.search);
  for (const name of FILTER_NAMES) {
    const value = query.get(name);
    if (value !== null) $("f-" + name).value = value;
  }
}

// --- the table ----------------------------------------------------------------------------

function newestFirst(a, b) {
  const at = a.time ?? -Infinity;
  const bt = b.time ?? -Infinity;
  if (at !== bt) return bt - at;
  return b.id - a.id;
}

function recompute(force) {
  if (state.paused && !force) return;
  const viewport = $("viewport");
  const anchorIndex = Math.floor(viewport.scrollTop / ROW_HEIGHT);
  const anchor = viewport.scrollTop > 0 ? state.view[anchorIndex] : undefined;
  const matches = compileFilter(state.filter);
  const view = [];
  for (const row of state.rows.values()) if (matches(row)) view.push(row);
  view.sort(newestFirst);
  state.view = view;
  state.dirty = false;
  $("spacer").style.height = `${view.length * ROW_HEIGHT}px`;
  if (anchor !== undefined) {
    // Keep what the reader is looking at in place while new rows arrive above it.
    const moved = view.indexOf(anchor);
    if (moved >= 0 && moved !== anchorIndex) viewport.scrollTop += (moved - anchorIndex) * ROW_HEIGHT;
  }
  renderCount();
  renderRows();
}

function renderCount() {
  const shown = state.view.length;
  const held = state.rows.size;
  const filtered = Object.keys(state.filter).length > 0;
  const paused = state.paused ? " (paused)" : "";
  $("count").textContent = filtered
    ? `showing ${formatCount(shown)} of ${formatCount(held)}${paused}`
    : `${formatCount(held)} transactions${paused}`;
  const empty = $("empty");
  empty.hidden = shown > 0;
  if (!shown) {
    empty.textContent = held
      ? "no transaction matches the filters"
      : state.mode === "live"
        ? "waiting for traffic: transactions appear here as their files are published"
        : "reading…";
  }
}

function makeRowNode() {
  const node = el("div", "row");
  node.setAttribute("role", "row");
  for (const name of ["time", "dir", "method", "authority", "path", "status", "duration", "req", "res", "trace", "note"]) {
    node.appendChild(el("span", "c-" + name));
  }
  node.addEventListener("click", () => openDetail(Number(node.dataset.id)));
  return node;
}

function fillRow(node, row) {
  const cells = node.children;
  node.dataset.id = String(row.id);
  node.className = "row" + (row.final ? "" : " open-tx") + (row.id === state.selected ? " selected" : "");
  cells[0].textContent = formatTime(row);
  cells[0].title = isoTime(row);
  cells[1].textContent = DIRECTIONS[row.direction] || "?";
  cells[1].title = row.direction;
  cells[2].textContent = row.method || "-";
  cells[3].textContent = row.authority === null ? "-" : row.authority || "''";
  cells[3].title = row.authority || "";
  cells[4].textContent = row.path || "-";
  cells[4].title = row.path || "";
  const status = row.status;
  cells[5].textContent = status === null ? "-" : String(status);
  cells[5].className = "c-status " + (status === null ? "status-none" : "status-" + Math.floor(status / 100));
  if (row.grpcStatus !== null) cells[5].title = `grpc-status ${row.grpcStatus}`;
  else cells[5].removeAttribute("title");
  cells[6].textContent = formatDuration(row.duration);
  cells[7].textContent = formatBytes(row.requestBytes, row.requestTruncated);
  cells[8].textContent = formatBytes(row.responseBytes, row.responseTruncated);
  cells[9].textContent = row.trace || "-";
  cells[9].title = row.traceIds.join(" ");
  const note = noteOf(row);
  cells[10].textContent = note;
  cells[10].title = note;
}

function renderRows() {
  const viewport = $("viewport");
  const holder = $("rows");
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - OVERSCAN_ROWS);
  const count = Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN_ROWS;
  const shown = state.view.slice(first, first + count);
  while (holder.children.length < shown.length) holder.appendChild(makeRowNode());
  while (holder.children.length > shown.length) holder.lastChild.remove();
  shown.forEach((row, i) => fillRow(holder.children[i], row));
  holder.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
}

let frameAsked = false;
function scheduleRender() {
  state.dirty = true;
  if (frameAsked) return;
  frameAsked = true;
  requestAnimationFrame(() => {
    frameAsked = false;
    if (state.dirty) recompute(false);
  });
}

// --- data: the snapshot and the event stream ----------------------------------------------

function applyRows(message) {
  for (const row of message.rows) state.rows.set(row.id, row);
  for (const id of message.gone) state.rows.delete(id);
  if (message.version > state.version) state.version = message.version;
  if (state.detail && message.rows.some((row) => row.id === state.selected && row.final !== state.detail.final)) {
    openDetail(state.selected); // an open transaction gained pieces
  }
  scheduleRender();
}

async function loadTable() {
  const loading = (async () => {
    const response = await fetch("/api/transactions", { cache: "no-store" });
    if (!response.ok) throw new Error(`the table: ${response.status}`);
    const table = await response.json();
    state.rows = new Map(table.rows.map((row) => [row.id, row]));
    state.version = table.version;
    state.max = table.max;
  })();
  state.loading = loading;
  try {
    await loading;
  } catch (error) {
    setConnection(false, String(error.message || error));
  } finally {
    state.loading = null;
    const waiting = state.waiting;
    state.waiting = [];
    for (const message of waiting) if (message.version > state.version) applyRows(message);
    recompute(true);
  }
}

function onRows(event) {
  const message = JSON.parse(event.data);
  if (state.loading) state.waiting.push(message);
  else applyRows(message);
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("hello", (event) => {
    const hello = JSON.parse(event.data);
    state.mode = hello.mode;
    state.max = hello.max;
    $("title").textContent = hello.title;
    $("title").title = hello.title;
    document.title = `tap-emulator: ${hello.title}`;
    setConnection(true);
    loadTable();
  });
  source.addEventListener("rows", onRows);
  source.addEventListener("status", (event) => renderStatus(JSON.parse(event.data)));
  source.addEventListener("lagged", () => {
    // The page read too slowly: the server dropped what it had queued for it.
    setConnection(true, "caught up after falling behind");
    loadTable();
  });
  source.addEventListener("error", () => setConnection(false));
}

function setConnection(live, note) {
  const node = $("connection");
  node.className = "connection " + (live ? "live" : "down");
  node.textContent = note || (live ? (state.mode === "live" ? "live" : "offline copy") : "reconnecting…");
}

// --- the header -----------------------------------------------------------------------------

function renderStatus(status) {
  const health = $("health");
  const index = status.index || {};
  if (status.mode === "browse") {
    const reading = status.reading;
    health.className = "pill pill-offline";
    health.textContent = reading.done ? "offline" : "reading…";
    let text = `${formatCount(reading.files)} files, ${formatCount(reading.transactions)} transactions read`;
    text += reading.done ? ` in ${reading.seconds}s` : "";
    if (reading.unreadableFiles) text += `, ${formatCount(reading.unreadableFiles)} unreadable`;
    $("rates").textContent = text;
    $("rates").title = (reading.unreadable || []).join("\n");
  } else if (!status.totals) {
    health.className = "pill pill-unknown";
    health.textContent = "waiting for the emulator…";
  } else {
    health.className = "pill " + (status.ready ? "pill-ok" : "pill-bad");
    health.textContent = status.ready ? "ready" : `not ready: ${status.problem}`;
    health.title = status.ready ? "taps are accepted (/readyz)" : status.problem;
    const rates = status.rates;
    const gauges = status.gauges;
    const dropped = status.totals.droppedFiles + status.totals.droppedTransactions;
    $("rates").textContent =
      `${rates.files.toFixed(1)} files/s · ${rates.messages.toFixed(1)} msgs/s · ` +
      `${(rates.bytes / 1e6).toFixed(2)} MB/s · ${formatCount(gauges.openStreams)} streams · ` +
      `queue ${formatCount(gauges.queueItems)}/${formatCount(gauges.queueCapacityItems)}` +
      (dropped ? ` · ${formatCount(dropped)} dropped` : "");
    $("rates").title =
      `since start: ${formatCount(status.totals.messages)} messages, ${formatCount(status.totals.files)} files, ` +
      `${(status.totals.bytes / 1e6).toFixed(1)} MB, ${formatCount(status.totals.refusedStreams)} streams refused`;
  }
  renderIndexState(index);
}

function renderIndexState(index) {
  const node = $("index-state");
  const parts = [];
  if (index.lagging) {
    parts.push(
      `The table is ${index.behindSeconds.toFixed(1)} s behind the files: the emulator is busy, ` +
        "and the page gives its own work way.",
    );
  }
  if (index.skipped) {
    parts.push(
      `${formatCount(index.skipped)} published files were not read into the table while the ` +
        "emulator was busy: it shows a sample, and streamed transactions may show missing pieces. " +
        "Every file is on disk (tap-emulator list reads them all).",
    );
  }
  node.hidden = parts.length === 0;
  node.textContent = parts.join(" ");
}

// --- the detail view: what `tap-emulator show` prints, as a page ---------------------------

function headerTable(headers) {
  const table = el("table", "headers");
  for (const header of headers) {
    const line = table.insertRow();
    line.dataset.header = header.name;
    const name = line.insertCell();
    name.className = "name";
    name.textContent = header.name;
    const value = line.insertCell();
    if (header.redacted) value.appendChild(el("span", "redacted", REDACTED_TEXT));
    else value.textContent = header.value;
  }
  return table;
}

function quoted(text) {
  return '"' + text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
}

function rawFieldLines(fields, indent) {
  const lines = [];
  for (const item of fields) {
    if (item.fields) {
      lines.push(`${indent}${item.number} {`);
      lines.push(...rawFieldLines(item.fields, indent + "  "));
      lines.push(`${indent}}`);
    } else if (item.text !== null && item.text !== undefined) {
      lines.push(`${indent}${item.number}: ${quoted(item.text)}`);
    } else if (item.data_hex !== null && item.data_hex !== undefined) {
      lines.push(`${indent}${item.number}: 0x${item.data_hex} (bytes)`);
    } else if (item.wire_type === "varint") {
      lines.push(`${indent}${item.number}: ${item.number_value}`);
    } else {
      const digits = item.wire_type === "fixed64" ? 16 : 8;
      lines.push(`${indent}${item.number}: 0x${BigInt(item.number_value).toString(16).padStart(digits, "0")}`);
    }
  }
  return lines;
}

function grpcMessage(message) {
  const box = el("div", "grpc-message");
  let size = `${message.declared_bytes} bytes`;
  if (message.captured_bytes < message.declared_bytes) {
    size = `${message.declared_bytes} bytes announced, ${message.captured_bytes} captured`;
  }
  box.appendChild(el("div", "grpc-title", `[gRPC message ${message.index}: ${size}${message.type_name ? ", " + message.type_name : ""}]`));
  if (message.note) box.appendChild(el("div", "muted", `(${message.note})`));
  let lines = [];
  if (message.json !== null && message.json !== undefined) lines = message.json.split("\n");
  else if (message.fields) lines = rawFieldLines(message.fields, "");
  if (message.fields && !message.fields.length) lines = ["(empty message)"];
  lines = lines.concat(message.hex_lines || []);
  if (lines.length) box.appendChild(el("pre", null, lines.join("\n")));
  return box;
}

function bodyBlock(body) {
  const box = el("div", "body");
  if (body.kind === "none") return box;
  if (body.kind === "empty") {
    box.appendChild(el("div", "muted", "(no body)"));
    return box;
  }
  if (body.kind === "grpc") for (const message of body.grpc_messages) box.appendChild(grpcMessage(message));
  else if (body.text !== null && body.text !== undefined) box.appendChild(el("pre", "body-text", body.text));
  else box.appendChild(el("pre", "body-hex", body.hex_lines.join("\n")));
  const facts = el("div", "body-facts");
  const parts = [body.kind, `${body.size_bytes} bytes captured`];
  if (body.declared_bytes !== null && body.declared_bytes !== body.size_bytes) parts.push(`content-length ${body.declared_bytes}`);
  facts.append("[body: " + parts.join(", "));
  if (body.truncated) {
    facts.append(", ");
    facts.appendChild(el("span", "truncated", "TRUNCATED by the proxy"));
  }
  if (body.hidden_bytes) facts.append(`, ${body.hidden_bytes} more bytes not shown`);
  facts.append("]");
  box.appendChild(facts);
  return box;
}

function messageSection(message) {
  const section = el("section", "message " + message.side);
  const mark = message.side === "request" ? ">" : "<";
  const title = el("h3");
  title.appendChild(el("span", "side", mark));
  if (!message.recorded) {
    title.append(`(${message.side} not recorded)`);
    section.appendChild(title);
    return section;
  }
  title.append(message.start_line);
  section.appendChild(title);
  if (message.time) section.appendChild(el("div", "facts", `headers received ${message.time}`));
  section.appendChild(headerTable(message.headers));
  section.appendChild(bodyBlock(message.body));
  if (message.trailers.length) {
    section.appendChild(el("div", "facts", "trailers:"));
    section.appendChild(headerTable(message.trailers));
  }
  return section;
}

function renderDetail() {
  const holder = $("detail-body");
  holder.replaceChildren();
  const detail = state.detail;
  if (!detail) return;
  if (detail.error) {
    holder.appendChild(el("p", "muted", detail.error));
    return;
  }
  const view = detail.view;
  $("detail-title").textContent = view.title;
  $("detail-title").title = view.title;
  $("detail-text").classList.toggle("on", state.detailText);
  if (state.detailText) {
    holder.appendChild(el("pre", "text-view", detail.text));
    return;
  }
  const summary = view.summary;
  const facts = [`direction ${summary.direction}`];
  if (summary.duration_seconds !== null) facts.push(`${(summary.duration_seconds * 1000).toFixed(3)} ms to response headers`);
  const trace = summary.trace_id || summary.name_trace_id;
  if (trace) facts.push(`trace ${trace}`);
  if (summary.envoy_trace_id) facts.push(`envoy id ${summary.envoy_trace_id}`);
  if (summary.time) facts.push(summary.time + (summary.time_source === "file_mtime" ? " (file time)" : ""));
  holder.appendChild(el("div", "facts", facts.join("; ")));
  holder.appendChild(el("div", "facts", "files: " + summary.files.join(" ")));
  if (view.notes.length) {
    const notes = el("ul", "notes");
    for (const note of view.notes) notes.appendChild(el("li", null, note));
    holder.appendChild(notes);
  }
  holder.appendChild(messageSection(view.request));
  holder.appendChild(messageSection(view.response));
}

let detailAsked = 0;
async function openDetail(id) {
  state.selected = id;
  const asked = ++detailAsked;
  $("detail").hidden = false;
  $("main").classList.add("with-detail");
  if (!state.detail || state.detail.id !== id) {
    $("detail-title").textContent = "loading…";
    $("detail-body").replaceChildren();
  }
  renderRows();
  history.replaceState(null, "", location.pathname + location.search + "#tx=" + id);
  let detail;
  try {
    const response = await fetch(`/api/transactions/${id}`, { cache: "no-store" });
    const body = await response.json();
    detail = response.ok ? { id, view: body.view, text: body.text, final: body.view.summary.final } : { id, error: body.error };
  } catch (error) {
    detail = { id, error: `could not load it: ${error.message || error}` };
  }
  if (asked !== detailAsked) return; // another row was clicked meanwhile
  state.detail = detail;
  if (detail.error) $("detail-title").textContent = `transaction ${id}`;
  renderDetail();
}

function closeDetail() {
  state.selected = null;
  state.detail = null;
  $("detail").hidden = true;
  $("main").classList.remove("with-detail");
  history.replaceState(null, "", location.pathname + location.search);
  renderRows();
}

// --- start --------------------------------------------------------------------------------

function start() {
  restoreFilter();
  let delay = null;
  for (const name of FILTER_NAMES) {
    $("f-" + name).addEventListener("input", () => {
      clearTimeout(delay);
      delay = setTimeout(applyFilter, FILTER_DELAY_MS);
    });
  }
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("f-clear").addEventListener("click", () => {
    for (const name of FILTER_NAMES) $("f-" + name).value = "";
    applyFilter();
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").classList.toggle("on", state.paused);
    $("pause").textContent = state.paused ? "resume" : "pause";
    recompute(true);
  });
  $("viewport").addEventListener("scroll", () => renderRows(), { passive: true });
  window.addEventListener("resize", () => renderRows());
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-text").addEventListener("click", () => {
    state.detailText = !state.detailText;
    renderDetail();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("detail").hidden) closeDetail();
  });
  applyFilter();
  const wanted = /^#tx=(\d+)$/.exec(location.hash);
  if (wanted) openDetail(Number(wanted[1]));
  connect();
}

document.addEventListener("DOMContentLoaded", start);
