// Talkie studio page: talks to the API in docs/studio-api.md.
// State comes from GET /api/state and WebSocket snapshots; runner events patch it in between.
"use strict";

(function () {
  const t = (key, params) => window.I18N.t(key, params);
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- state
  let state = null;                 // the last snapshot, patched by events
  const live = {                    // what only this page knows
    itemClock: new Map(),           // key -> {t0, frame0, fps}
    finishedAt: [],                 // durations (s) of items finished during this page's life
  };
  let renderQueued = false;

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (name === "class") node.className = value;
        else if (name === "text") node.textContent = value;
        else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
        else node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svgIcon(paths, extraClass) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 20 20");
    svg.setAttribute("class", "icon" + (extraClass ? " " + extraClass : ""));
    svg.setAttribute("aria-hidden", "true");
    for (const d of paths) {
      const path = document.createElementNS(ns, "path");
      path.setAttribute("d", d);
      svg.append(path);
    }
    return svg;
  }
  const ICON_X = ["m5 5 10 10M15 5 5 15"];
  const ICON_DOWNLOAD = ["M10 3v9m0 0-3.5-3.5M10 12l3.5-3.5M4 14v2h12v-2"];
  const ICON_SKIP = ["M5 5l7 5-7 5zM15 5v10"];

  function formatBytes(bytes) {
    if (bytes === null || bytes === undefined) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = Number(bytes);
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit === 0 ? value.toFixed(0) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function formatClock(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const r = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
  }

  function formatSeconds(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds >= 90) return formatClock(seconds);
    return (seconds < 10 ? seconds.toFixed(1) : seconds.toFixed(0)) + " s";
  }

  function formatTime(iso) {
    const date = new Date(iso);
    if (isNaN(date)) return "";
    return date.toLocaleTimeString(window.I18N.language === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  }

  // Text that follows the language switch: I18N.apply re-reads data-i18n and data-i18n-params.
  function setText(node, key, params) {
    node.setAttribute("data-i18n", key);
    if (params) node.setAttribute("data-i18n-params", JSON.stringify(params));
    else node.removeAttribute("data-i18n-params");
    node.textContent = t(key, params);
  }

  function outputUrl(name) { return "/api/outputs/" + encodeURIComponent(name); }

  function toast(message, options) {
    const opts = options || {};
    const node = el("div", { class: "toast" + (opts.error ? " error" : ""), role: opts.error ? "alert" : "status" },
      el("div", null, message, opts.code ? el("span", { class: "code", text: opts.code }) : null));
    $("toasts").append(node);
    setTimeout(() => node.remove(), opts.error ? 8000 : 4000);
  }

  // ---------------------------------------------------------------- API
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "network", t("error.network"));
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || String(response.status), error.message || response.statusText);
    }
    return data;
  }

  function reportError(error) {
    if (error && error.status === 401) { showUnauthorized(); return; }
    const message = error && error.message ? error.message : String(error);
    toast(error && error.status === 0 ? message : t("error.generic", { message }), { error: true, code: error && error.code });
  }

  async function command(path, body) {
    try {
      return await api("POST", path, body);
    } catch (error) {
      reportError(error);
      return null;
    }
  }

  // ---------------------------------------------------------------- connection
  const connection = { socket: null, delay: 500, timer: null, countdown: null, retryAt: 0, everConnected: false, unauthorized: false };

  function setConnection(kind) {
    const pill = $("connection-state");
    pill.dataset.state = kind;
    const text = pill.querySelector(".conn-text");
    const key = { connecting: "conn.connecting", live: "conn.live", reconnecting: "conn.reconnecting", unauthorized: "conn.reconnecting" }[kind];
    text.dataset.i18n = key;
    text.textContent = t(key);
    const banner = $("reconnect-banner");
    banner.hidden = kind !== "reconnecting";
    if (kind === "reconnecting") updateReconnectCountdown();
    document.body.classList.toggle("offline", kind !== "live");
  }

  function updateReconnectCountdown() {
    const seconds = Math.max(0, Math.ceil((connection.retryAt - Date.now()) / 1000));
    const title = $("reconnect-title");
    if (seconds > 0) {
      title.removeAttribute("data-i18n");
      title.textContent = t("conn.reconnectingIn", { seconds });
    } else {
      title.dataset.i18n = "conn.reconnecting";
      title.textContent = t("conn.reconnecting");
    }
  }

  function wsUrl() {
    return (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws";
  }

  function connect() {
    clearTimeout(connection.timer);
    clearInterval(connection.countdown);
    connection.retryAt = 0;
    if (connection.socket) {
      connection.socket.onclose = null;
      try { connection.socket.close(); } catch (_) { /* ignore */ }
    }
    if (!connection.everConnected) setConnection("connecting");
    else setConnection("reconnecting");
    let socket;
    try {
      socket = new WebSocket(wsUrl());
    } catch (_) {
      scheduleReconnect();
      return;
    }
    connection.socket = socket;
    socket.onopen = () => {
      connection.delay = 500;
      const reconnected = connection.everConnected;
      connection.everConnected = true;
      setConnection("live");
      $("fatal-banner").hidden = true;
      if (reconnected) loadLog();  // events missed while away: the log file has them
    };
    socket.onmessage = (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch (_) { return; }
      if (data.type === "snapshot" && data.state) applySnapshot(data.state);
      else if (data.type === "event" && data.event) applyEvent(data.event);
    };
    socket.onclose = () => {
      if (connection.socket !== socket) return;
      connection.socket = null;
      scheduleReconnect();
    };
    socket.onerror = () => { /* a close follows */ };
  }

  function scheduleReconnect() {
    const delay = connection.delay + Math.floor(Math.random() * 250);
    connection.delay = Math.min(connection.delay * 2, 15000);
    connection.retryAt = Date.now() + delay;
    setConnection("reconnecting");
    clearInterval(connection.countdown);
    connection.countdown = setInterval(updateReconnectCountdown, 500);
    connection.timer = setTimeout(async () => {
      clearInterval(connection.countdown);
      // A refused upgrade looks like a plain close: ask the API whether the token is the problem.
      try {
        await api("GET", "/api/state");
      } catch (error) {
        if (error.status === 401) { showUnauthorized(); return; }
      }
      connect();
    }, delay);
  }

  function showUnauthorized() {
    connection.unauthorized = true;
    clearTimeout(connection.timer);
    clearInterval(connection.countdown);
    $("reconnect-banner").hidden = true;
    const pill = $("connection-state");
    pill.dataset.state = "unauthorized";
    const banner = $("fatal-banner");
    $("fatal-text").textContent = t("conn.unauthorized");
    banner.hidden = false;
  }

  // ---------------------------------------------------------------- snapshot and events
  function applySnapshot(next) {
    state = next;
    renderAll();
  }

  function itemByKey(key) {
    if (!state) return null;
    return state.items.find((item) => item.key === key) || null;
  }

  function recountSummary() {
    const summary = { total: state.items.length, succeeded: 0, failed: 0, pending: 0, running: 0 };
    for (const item of state.items) {
      if (item.status === "success") summary.succeeded += 1;
      else if (item.status === "failed") summary.failed += 1;
      else if (item.status === "running") summary.running += 1;
      else summary.pending += 1;
    }
    state.summary = summary;
  }

  function applyEvent(event) {
    appendLog(event, true);
    if (!state) return;
    const item = event.key ? itemByKey(event.key) : null;
    switch (event.event) {
      case "batch_started":
        state.running = true;
        $("backup-reminder").hidden = true;
        break;
      case "item_queued":
        // Joined this run's queue (retries and re-renders too): it is pending again.
        if (item && item.status !== "running") {
          item.status = "pending";
          item.progress = null;
          item.error = null;
          item.otherSettings = false;
        }
        break;
      case "item_started":
        if (item) {
          item.status = "running";
          item.attempts = event.attempt || item.attempts;
          item.progress = null;
          if (event.device) item.device = event.device;
        }
        live.itemClock.set(event.key, { t0: Date.now(), frame0: 0, fps: null });
        break;
      case "item_progress":
        if (item) {
          item.status = "running";
          item.progress = { frame: event.frame, frames: event.frames, unit: event.unit || "frames", stage: event.stage };
        }
        trackRate(event.key, event.frame);
        break;
      case "item_succeeded":
        if (item) {
          item.status = "success";
          item.output = event.output;
          item.outputUrl = outputUrl(event.output);
          item.renderSeconds = event.seconds;
          item.score = event.score === undefined ? null : event.score;
          item.error = null;
          item.progress = null;
          item.otherSettings = false;
        }
        if (typeof event.seconds === "number") live.finishedAt.push(event.seconds);
        live.itemClock.delete(event.key);
        break;
      case "item_failed":
        if (item) {
          item.status = event.will_retry ? "pending" : "failed";
          item.error = { kind: event.kind, message: event.message, willRetry: !!event.will_retry };
          item.progress = null;
        }
        live.itemClock.delete(event.key);
        break;
      case "item_stopped":
        if (item) { item.status = "pending"; item.progress = null; }
        live.itemClock.delete(event.key);
        break;
      case "batch_finished":
        state.running = false;
        state.pausing = false;
        live.itemClock.clear();
        showBackupReminder(event);
        break;
      default:
        break;
    }
    recountSummary();
    scheduleRender();
  }

  function trackRate(key, frame) {
    const now = Date.now();
    let clock = live.itemClock.get(key);
    if (!clock) { clock = { t0: now, frame0: frame, fps: null }; live.itemClock.set(key, clock); return; }
    const seconds = (now - clock.t0) / 1000;
    if (seconds > 0.3 && frame > clock.frame0) clock.fps = (frame - clock.frame0) / seconds;
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; renderBatch(); });
  }

  // ---------------------------------------------------------------- rendering
  function renderAll() {
    if (!state) return;
    renderAudio();
    renderTemplates();
    renderSettings();
    renderBatch();
  }

  function renderAudio() {
    const audio = state.audio;
    $("audio-empty").hidden = !!audio;
    $("audio-info").hidden = !audio;
    if (!audio) return;
    $("audio-name").textContent = audio.name;
    $("audio-name").title = audio.name;
    $("audio-size").textContent = formatBytes(audio.size);
    const player = $("audio-player");
    if (player.dataset.key !== audio.key) {
      player.dataset.key = audio.key;
      player.src = audio.url;
    }
  }

  function renderTemplates() {
    const list = $("templates");
    const videos = state.videos || [];
    $("videos-empty").hidden = videos.length > 0;
    $("videos-count").textContent = videos.length ? t("videos.count", { count: videos.length }) : "";
    const existing = new Map();
    for (const node of list.children) existing.set(node.dataset.key, node);
    const keep = new Set();
    videos.forEach((video, index) => {
      keep.add(video.key);
      let node = existing.get(video.key);
      if (!node) {
        node = buildTemplateCard(video);
      }
      updateTemplateCard(node, video);
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
    });
    for (const [key, node] of existing) if (!keep.has(key)) node.remove();
  }

  function buildTemplateCard(video) {
    const preview = el("video", { preload: "metadata", muted: true, playsinline: true, src: video.url + "#t=0.1", "aria-hidden": "true", tabindex: "-1" });
    preview.muted = true;
    const name = el("div", { class: "template-name" });
    const meta = el("div", { class: "template-meta" });
    const dup = el("span", { class: "dup", hidden: true });
    const remove = el("button", { type: "button", class: "btn-icon", "data-testid": "remove-video" }, svgIcon(ICON_X));
    remove.addEventListener("click", () => removeVideo(video.key));
    preview.addEventListener("loadedmetadata", () => {
      node.dataset.duration = preview.duration;
      updateTemplateCard(node, node._video);
    });
    const node = el("li", { class: "template", "data-testid": "template-card", "data-key": video.key },
      preview, remove, el("div", { class: "template-body" }, name, meta, dup));
    return node;
  }

  function updateTemplateCard(node, video) {
    node._video = video;
    const [first, ...others] = video.names;
    const name = node.querySelector(".template-name");
    name.textContent = first;
    name.title = video.names.join("\n");
    const duration = Number(node.dataset.duration);
    node.querySelector(".template-meta").textContent = formatBytes(video.size) + (isFinite(duration) && duration > 0 ? " · " + formatClock(duration) : "");
    const dup = node.querySelector(".dup");
    dup.hidden = others.length === 0;
    dup.textContent = others.length ? t("videos.alsoAs", { names: others.join(", ") }) : "";
    node.dataset.duplicate = others.length ? "true" : "false";
    const remove = node.querySelector(".btn-icon");
    remove.setAttribute("aria-label", t("videos.remove") + ": " + first);
    remove.title = t("videos.remove");
  }

  // ---- settings
  const settingsUi = { editing: false, saveTimer: null, engines: "" };

  function renderSettings() {
    const settings = state.settings || {};
    const running = !!state.running;
    $("settings-fieldset").disabled = running;
    $("settings-locked").hidden = !running;
    $("fingerprint").textContent = state.fingerprint || "";

    const select = $("engine-select");
    const engines = (state.engines || []).slice();
    if (settings.engine && !engines.includes(settings.engine)) engines.push(settings.engine);
    const signature = engines.join("\n");
    if (settingsUi.engines !== signature) {
      settingsUi.engines = signature;
      select.replaceChildren(...engines.map((engine) => el("option", { value: engine, text: engine })));
    }
    const focus = document.activeElement;
    const form = $("settings-form");
    const editing = form.contains(focus) && (focus.tagName === "INPUT" && focus.type === "text");
    if (document.activeElement !== select) select.value = settings.engine || "";
    if (!settingsUi.dragging) {
      $("denoise-range").value = settings.denoise ?? 0;
      $("tempo-range").value = settings.tempo ?? 1;
      updateRangeReadouts();
    }
    if (!editing) renderParams(settings.engineParams || {});

    const other = state.items.filter((item) => item.otherSettings).length;
    $("other-settings-note").hidden = other === 0;
    $("other-settings-text").textContent = t("settings.other", { count: other });
    $("other-settings-rerender").disabled = running;
  }

  function updateRangeReadouts() {
    $("denoise-value").textContent = Number($("denoise-range").value).toFixed(2);
    $("tempo-value").textContent = Number($("tempo-range").value).toFixed(2) + "×";
  }

  function paramText(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function parseParam(text) {
    const trimmed = text.trim();
    if (trimmed === "") return "";
    if (/^(true|false|null|-?\d+(\.\d+)?([eE][+-]?\d+)?)$/.test(trimmed) || /^[[{"]/.test(trimmed)) {
      try { return JSON.parse(trimmed); } catch (_) { return text; }
    }
    return text;
  }

  function renderParams(params) {
    const box = $("params");
    box.replaceChildren(...Object.entries(params).map(([key, value]) => paramRow(key, paramText(value))));
    $("params-empty").hidden = box.children.length > 0;
  }

  function paramRow(key, value) {
    const keyInput = el("input", { type: "text", value: key, spellcheck: "false", autocomplete: "off", "data-role": "key", "aria-label": t("settings.paramKey"), placeholder: t("settings.paramKey"), "data-i18n-attr": "aria-label:settings.paramKey;placeholder:settings.paramKey" });
    const valueInput = el("input", { type: "text", value, spellcheck: "false", autocomplete: "off", "data-role": "value", "aria-label": t("settings.paramValue"), placeholder: t("settings.paramValue"), "data-i18n-attr": "aria-label:settings.paramValue;placeholder:settings.paramValue" });
    const remove = el("button", { type: "button", class: "btn-icon danger", "aria-label": t("settings.removeParam"), title: t("settings.removeParam"), "data-i18n-attr": "aria-label:settings.removeParam;title:settings.removeParam" }, svgIcon(ICON_X));
    const row = el("div", { class: "param-row", "data-testid": "param-row" }, keyInput, el("span", { class: "eq", text: "=" }), valueInput, remove);
    remove.addEventListener("click", () => { row.remove(); $("params-empty").hidden = $("params").children.length > 0; saveParams(); });
    for (const input of [keyInput, valueInput]) {
      input.addEventListener("change", saveParams);
      input.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); input.blur(); } });
    }
    return row;
  }

  function collectParams() {
    const params = {};
    let valid = true;
    for (const row of $("params").querySelectorAll(".param-row")) {
      const keyInput = row.querySelector('[data-role="key"]');
      const valueInput = row.querySelector('[data-role="value"]');
      const key = keyInput.value.trim();
      keyInput.classList.toggle("invalid", key === "" && valueInput.value.trim() !== "");
      if (key === "") { if (valueInput.value.trim() !== "") valid = false; continue; }
      params[key] = parseParam(valueInput.value);
    }
    return valid ? params : null;
  }

  function saveParams() {
    const params = collectParams();
    if (params === null) return;
    saveSettings({ engineParams: params });
  }

  async function saveSettings(patch) {
    const status = $("settings-save-state");
    status.className = "save-state";
    status.textContent = t("settings.saving");
    try {
      const answer = await api("PUT", "/api/settings", patch);
      if (answer && state) {
        state.settings = answer.settings;
        state.fingerprint = answer.fingerprint;
        $("fingerprint").textContent = answer.fingerprint;
      }
      status.className = "save-state ok";
      status.textContent = t("settings.saved");
      clearTimeout(settingsUi.saveTimer);
      settingsUi.saveTimer = setTimeout(() => { status.textContent = ""; }, 2500);
    } catch (error) {
      status.textContent = "";
      reportError(error);
      if (state) renderSettings();
    }
  }

  // ---- batch: controls, overall progress, table, results
  function renderBatch() {
    if (!state) return;
    const summary = state.summary || { total: 0, succeeded: 0, failed: 0, pending: 0, running: 0 };
    const items = state.items || [];
    const running = !!state.running;
    const pausing = !!state.pausing;
    const hasAudio = !!state.audio;
    const hasVideos = (state.videos || []).length > 0;
    const pending = items.filter((item) => item.status === "pending").length;
    const done = summary.succeeded + summary.failed;
    const other = items.filter((item) => item.otherSettings).length;

    // run state pill
    const runState = $("run-state");
    runState.dataset.state = pausing ? "pausing" : running ? "running" : "idle";
    runState.textContent = pausing ? t("batch.pausingState") : running ? t("batch.running") : t("batch.idle");

    // controls
    const start = $("start");
    start.disabled = running || !hasAudio || !hasVideos || pending === 0;
    const resume = !running && pending > 0 && done > 0;
    $("start-label").dataset.i18n = resume ? "batch.resume" : "batch.start";
    $("start-label").textContent = t(resume ? "batch.resume" : "batch.start");
    $("pause").disabled = !running || pausing;
    $("pause-label").textContent = t(pausing ? "batch.pausing" : "batch.pause");
    $("pause-label").dataset.i18n = pausing ? "batch.pausing" : "batch.pause";
    $("stop").disabled = !running;
    $("retry-failed").disabled = running || summary.failed === 0;
    $("rerender").disabled = running || other === 0;
    $("clear-history").disabled = running;
    $("settings-fieldset").disabled = running;
    $("settings-locked").hidden = !running;
    $("other-settings-note").hidden = other === 0;
    $("other-settings-text").textContent = t("settings.other", { count: other });
    $("other-settings-rerender").disabled = running;

    // overall progress
    let fraction = 0;
    for (const item of items) {
      if (item.status === "running" && item.progress && item.progress.frames > 0) {
        fraction += Math.min(1, item.progress.frame / item.progress.frames);
      }
    }
    const total = summary.total || items.length;
    const exact = total > 0 ? (done + fraction) / total : 0;
    const percent = total > 0 && done === total ? 100 : Math.min(99, Math.floor(exact * 100));
    const bar = $("overall-progress");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-valuetext", percent + " %");
    bar.dataset.complete = percent === 100 ? "true" : "false";
    const fill = $("overall-fill");
    fill.style.width = (total > 0 ? exact * 100 : 0) + "%";
    fill.classList.toggle("complete", percent === 100 && summary.failed === 0);
    $("overall-percent").textContent = percent + " %";
    $("overall-text").textContent = total > 0
      ? t("batch.summary", { succeeded: summary.succeeded, failed: summary.failed, pending: summary.pending + summary.running })
      : "";
    $("overall-eta").textContent = running ? etaText(items) : "";

    // empty state
    const empty = $("batch-empty");
    let emptyKey = null;
    if (!hasAudio && !hasVideos) emptyKey = "batch.empty";
    else if (!hasAudio) emptyKey = "batch.needAudio";
    else if (!hasVideos) emptyKey = "batch.needVideos";
    empty.hidden = !emptyKey;
    if (emptyKey) empty.textContent = t(emptyKey);
    $("table-wrap").hidden = items.length === 0;

    renderItems(items);
    renderResults(items);
  }

  function etaText(items) {
    const remainingItems = items.filter((item) => item.status === "pending").length;
    const current = items.find((item) => item.status === "running");
    // Average render time: this page's observations first, then the batch's history.
    const observed = live.finishedAt.length ? live.finishedAt : items.filter((item) => item.status === "success" && typeof item.renderSeconds === "number").map((item) => item.renderSeconds);
    let average = observed.length ? observed.reduce((a, b) => a + b, 0) / observed.length : null;
    let currentLeft = 0;
    if (current) {
      const clock = live.itemClock.get(current.key);
      const progress = current.progress;
      if (clock && clock.fps && progress && progress.frames > 0) {
        currentLeft = (progress.frames - progress.frame) / clock.fps;
        if (average === null) average = (Date.now() - clock.t0) / 1000 + currentLeft;
      } else if (clock && average !== null) {
        currentLeft = Math.max(0, average - (Date.now() - clock.t0) / 1000);
      } else if (average === null) {
        return t("batch.etaUnknown");
      }
    }
    if (average === null) return remainingItems || current ? t("batch.etaUnknown") : "";
    const seconds = currentLeft + remainingItems * average;
    return t("batch.eta", { eta: formatClock(Math.max(1, seconds)) });
  }

  function renderItems(items) {
    const body = $("items");
    const existing = new Map();
    for (const row of body.children) existing.set(row.dataset.key, row);
    const keep = new Set();
    items.forEach((item, index) => {
      keep.add(item.key);
      let row = existing.get(item.key);
      if (!row) row = buildItemRow(item);
      updateItemRow(row, item, index);
      if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
    });
    for (const [key, row] of existing) if (!keep.has(key)) row.remove();
  }

  function buildItemRow(item) {
    const skip = el("button", { type: "button", class: "btn btn-small btn-ghost", "data-testid": "skip-item" }, svgIcon(ICON_SKIP), el("span", { class: "skip-label" }));
    skip.addEventListener("click", () => skipItem(item.key, skip));
    return el("tr", { "data-testid": "item-row", "data-key": item.key },
      el("td", { class: "col-index" }),
      el("td", { class: "item-names" }, el("div", { class: "item-name" }), el("div", { class: "item-aliases" }), el("span", { class: "tag tag-other", hidden: true })),
      el("td", null, el("span", { class: "status", "data-testid": "item-status" }), el("div", { class: "item-device", "data-testid": "item-device", hidden: true })),
      el("td", null, el("div", { class: "progress-cell" },
        el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "data-testid": "item-progress" }, el("div", { class: "bar-fill" })),
        el("span", { class: "progress-text" }))),
      el("td", { class: "num", "data-col": "attempts" }),
      el("td", { class: "num", "data-col": "duration" }),
      el("td", { class: "num", "data-col": "score" }),
      el("td", { "data-col": "error" }),
      el("td", { class: "col-actions" }, skip));
  }

  function updateItemRow(row, item, index) {
    row.dataset.status = item.status;
    const cells = row.children;
    cells[0].textContent = String(index + 1);
    const [first, ...others] = item.names || [];
    const name = row.querySelector(".item-name");
    name.textContent = first || item.key;
    name.title = (item.names || []).join("\n");
    const aliases = row.querySelector(".item-aliases");
    aliases.textContent = others.length ? "= " + others.join(", ") : "";
    aliases.hidden = others.length === 0;
    const tag = row.querySelector(".tag-other");
    tag.hidden = !item.otherSettings;
    tag.textContent = t("table.otherSettings");

    const status = row.querySelector(".status");
    status.className = "status status-" + item.status;
    status.textContent = t("status." + item.status);
    const device = row.querySelector(".item-device");
    device.textContent = item.device ? t("table.device", { device: item.device }) : "";
    device.hidden = !item.device || item.status === "pending";

    const bar = row.querySelector(".bar");
    const fill = bar.firstChild;
    let percent = 0;
    let text = "";
    if (item.status === "success") { percent = 100; }
    else if (item.progress && item.progress.frames > 0) {
      percent = Math.min(100, (item.progress.frame / item.progress.frames) * 100);
      text = item.progress.unit === "percent"
        ? t("table.percent", { percent: Math.round(percent), stage: item.progress.stage || "" }).trim()
        : t("table.frames", { frame: item.progress.frame, frames: item.progress.frames });
    }
    fill.style.width = percent + "%";
    fill.className = "bar-fill " + item.status;
    bar.setAttribute("aria-valuenow", String(Math.round(percent)));
    bar.setAttribute("aria-label", (first || "") + " " + Math.round(percent) + " %");
    const progressText = row.querySelector(".progress-text");
    progressText.textContent = text;
    progressText.hidden = !text;

    row.querySelector('[data-col="attempts"]').textContent = item.attempts ? String(item.attempts) : "—";
    row.querySelector('[data-col="duration"]').textContent = formatSeconds(item.renderSeconds);
    row.querySelector('[data-col="score"]').textContent = typeof item.score === "number" ? item.score.toFixed(2) : "—";
    const errorCell = row.querySelector('[data-col="error"]');
    errorCell.replaceChildren();
    if (item.error && item.error.message) {
      const retry = item.status !== "failed" && item.error.willRetry;
      errorCell.append(el("div", { class: "item-error" + (retry ? " retry" : ""), "data-testid": "item-error" },
        item.error.kind ? el("span", { class: "kind", text: t("error.kind." + item.error.kind) === "error.kind." + item.error.kind ? item.error.kind : t("error.kind." + item.error.kind) }) : null,
        item.error.message,
        retry ? " (" + t("table.willRetry") + ")" : null));
    }
    const skip = row.querySelector('[data-testid="skip-item"]');
    const skippable = item.status === "pending" || item.status === "running";
    skip.hidden = !skippable;
    skip.querySelector(".skip-label").textContent = t("table.skip");
    skip.title = t("table.skipTitle");
    skip.setAttribute("aria-label", t("table.skip") + ": " + (first || ""));
  }

  function renderResults(items) {
    const gallery = $("gallery");
    const results = items.filter((item) => item.status === "success" && (item.outputUrl || item.output));
    $("results-empty").hidden = results.length > 0;
    const download = $("download-all");
    download.setAttribute("aria-disabled", results.length ? "false" : "true");
    download.classList.toggle("is-disabled", results.length === 0);
    const existing = new Map();
    for (const node of gallery.children) existing.set(node.dataset.output, node);
    const keep = new Set();
    results.forEach((item, index) => {
      const url = item.outputUrl || outputUrl(item.output);
      keep.add(item.output);
      let node = existing.get(item.output);
      if (!node) {
        const video = el("video", { controls: true, preload: "metadata", playsinline: true, src: url, "data-testid": "result-video" });
        const link = el("a", { class: "btn btn-small", href: url, download: item.output, "data-testid": "result-download" }, svgIcon(ICON_DOWNLOAD), el("span", { class: "download-label" }));
        node = el("li", { class: "result", "data-output": item.output, "data-testid": "result" },
          video, el("div", { class: "result-body" }, el("div", { class: "result-text" }, el("div", { class: "result-name" }), el("div", { class: "result-meta" })), link));
      }
      const nameNode = node.querySelector(".result-name");
      nameNode.textContent = (item.names && item.names[0]) || item.output;
      nameNode.title = item.output;
      const meta = [];
      if (typeof item.score === "number") meta.push(t("results.score", { score: item.score.toFixed(2) }));
      if (typeof item.renderSeconds === "number") meta.push(formatSeconds(item.renderSeconds));
      if (item.otherSettings) meta.push(t("table.otherSettings"));
      node.querySelector(".result-meta").textContent = meta.join(" · ");
      node.querySelector(".download-label").textContent = t("results.download");
      node.querySelector("video").setAttribute("aria-label", nameNode.textContent);
      if (gallery.children[index] !== node) gallery.insertBefore(node, gallery.children[index] || null);
    });
    for (const [key, node] of existing) if (!keep.has(key)) node.remove();
  }

  // ---------------------------------------------------------------- log
  const logState = { entries: [], seen: new Map(), paused: false };
  const LOG_LIMIT = 1000;

  // The same event reaches the page twice when the log tail (GET /api/log) overlaps what the
  // socket delivered; its two copies may differ in the time's last millisecond.
  function eventIdentity(event) {
    return [event.event, event.key || "", event.frame ?? "", event.attempt ?? ""].join("|");
  }

  function eventMillis(event) {
    const millis = Date.parse(event.time);
    return isNaN(millis) ? 0 : millis;
  }

  function alreadyLogged(event) {
    const times = logState.seen.get(eventIdentity(event));
    if (!times) return false;
    const millis = eventMillis(event);
    return times.some((other) => Math.abs(other - millis) <= 50);
  }

  function rememberLogged(event, add) {
    const identity = eventIdentity(event);
    const times = logState.seen.get(identity) || [];
    const millis = eventMillis(event);
    if (add) times.push(millis);
    else if (times.indexOf(millis) >= 0) times.splice(times.indexOf(millis), 1);
    if (times.length) logState.seen.set(identity, times);
    else logState.seen.delete(identity);
  }

  function logText(event) {
    const item = event.key ? itemByKey(event.key) : null;
    const name = event.name || (item && item.names && item.names[0]) || (event.key ? event.key.slice(0, 12) : "");
    const params = Object.assign({}, event, { name });
    switch (event.event) {
      case "item_succeeded":
        params.seconds = typeof event.seconds === "number" ? event.seconds.toFixed(1) : event.seconds;
        params.score = typeof event.score === "number" ? t("log.item_succeeded.score", { score: event.score.toFixed(2) }) : "";
        return t("log.item_succeeded", params);
      case "item_failed":
        return t("log.item_failed", params) + (event.will_retry ? t("log.item_failed.retry") : "");
      case "item_started":
        return t("log.item_started", params) + (event.device ? t("log.item_started.device", params) : "");
      case "item_progress":
        if (event.unit === "percent") return t("log.item_progress.percent", Object.assign(params, { stage: event.stage || "" }));
        return t("log.item_progress", params);
      case "batch_finished":
        return t(event.interrupted ? "log.batch_finished.interrupted" : "log.batch_finished", params);
      default: {
        const key = "log." + event.event;
        const text = t(key, params);
        if (text !== key) return text;
        const rest = Object.assign({}, event);
        delete rest.time; delete rest.event;
        return JSON.stringify(rest);
      }
    }
  }

  function logClass(event) {
    switch (event.event) {
      case "item_succeeded": return "ok";
      case "item_failed": return event.will_retry ? "warn" : "bad";
      case "warning": return "warn";
      case "batch_started": case "batch_finished": return "milestone";
      default: return "";
    }
  }

  function logLine(event) {
    return el("li", { class: "log-line " + logClass(event), "data-testid": "log-line" },
      el("span", { class: "log-time", text: formatTime(event.time) }),
      el("span", { class: "log-event", text: event.event || "" }),
      el("span", { class: "log-text", text: logText(event) }));
  }

  function appendLog(event, scroll) {
    if (!event || event.event === "item_progress") return;  // the table shows frames
    if (alreadyLogged(event)) return;
    rememberLogged(event, true);
    logState.entries.push(event);
    const list = $("log-lines");
    list.append(logLine(event));
    while (logState.entries.length > LOG_LIMIT) {
      const dropped = logState.entries.shift();
      rememberLogged(dropped, false);
      list.firstChild && list.firstChild.remove();
    }
    $("log-empty").hidden = true;
    if (scroll) scrollLog();
  }

  function scrollLog() {
    if (logState.paused) return;
    const box = $("log");
    box.scrollTop = box.scrollHeight;
  }

  function rerenderLog() {
    $("log-lines").replaceChildren(...logState.entries.map(logLine));
    scrollLog();
  }

  async function loadLog() {
    try {
      const answer = await api("GET", "/api/log?lines=300");
      for (const line of (answer && answer.lines) || []) {
        let event;
        try { event = JSON.parse(line); } catch (_) { continue; }
        appendLog(event, false);
      }
      // Keep the order of time even when live events arrived before the tail.
      logState.entries.sort((a, b) => String(a.time).localeCompare(String(b.time)));
      rerenderLog();
      $("log-empty").hidden = logState.entries.length > 0;
    } catch (error) {
      if (error.status === 401) showUnauthorized();
    }
  }

  function toggleLogScroll() {
    logState.paused = !logState.paused;
    const button = $("log-scroll");
    button.setAttribute("aria-pressed", logState.paused ? "true" : "false");
    const label = $("log-scroll-label");
    label.dataset.i18n = logState.paused ? "log.resume" : "log.pause";
    label.textContent = t(label.dataset.i18n);
    if (!logState.paused) scrollLog();
  }

  // ---------------------------------------------------------------- backup
  let lastFinished = null;

  function showBackupReminder(event) {
    lastFinished = event;
    $("backup-reminder-text").textContent = t("backup.reminder", {
      succeeded: event.succeeded ?? 0, failed: event.failed ?? 0, pending: event.pending ?? 0,
    });
    $("backup-reminder").hidden = false;
  }

  async function downloadBackup() {
    try {
      const response = await fetch("/api/backup", { credentials: "same-origin" });
      if (!response.ok) {
        let message = t("backup.none");
        try { const data = await response.json(); if (response.status !== 404 && data.error) message = data.error.message; } catch (_) { /* ignore */ }
        if (response.status === 401) { showUnauthorized(); return; }
        toast(message, { error: response.status !== 404 });
        return;
      }
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
      const link = el("a", { href: url, download: `task_status-${stamp}.json` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (_) {
      toast(t("error.network"), { error: true });
    }
  }

  // ---------------------------------------------------------------- uploads
  const uploadQueue = [];
  let uploadsActive = 0;
  const UPLOAD_PARALLEL = 2;

  function isAudioFile(file) {
    return (file.type && file.type.startsWith("audio/")) || /\.(wav|mp3|m4a|aac|flac|ogg|oga|opus)$/i.test(file.name);
  }

  function isVideoFile(file) {
    return (file.type && file.type.startsWith("video/")) || /\.(mp4|mov|m4v|webm|mkv|avi)$/i.test(file.name);
  }

  function queueUploads(files, kind) {
    for (const file of files) {
      const entry = buildUploadEntry(file, kind);
      $(kind === "audio" ? "audio-uploads" : "video-uploads").append(entry.node);
      uploadQueue.push(entry);
    }
    pumpUploads();
  }

  function buildUploadEntry(file, kind) {
    const objectUrl = URL.createObjectURL(file);
    let thumb;
    let preview = null;
    if (kind === "audio") {
      thumb = el("span", { class: "upload-thumb audio", "aria-hidden": "true" });
      thumb.innerHTML = '<svg viewBox="0 0 24 24"><path d="M9 18V6l10-2v12M9 18a3 3 0 1 1-3-3 3 3 0 0 1 3 3zm10-2a3 3 0 1 1-3-3 3 3 0 0 1 3 3z"/></svg>';
      preview = el("audio", { class: "upload-preview", controls: true, preload: "metadata", src: objectUrl, "data-testid": "upload-preview" });
    } else {
      thumb = el("video", { class: "upload-thumb", preload: "metadata", muted: true, playsinline: true, src: objectUrl + "#t=0.1", "aria-hidden": "true", "data-testid": "upload-preview" });
      thumb.muted = true;
    }
    const state = el("span", { class: "upload-state" });
    setText(state, "upload.waiting");
    const fill = el("div", { class: "bar-fill" });
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0", "aria-label": file.name }, fill);
    const node = el("li", { class: "upload", "data-testid": "upload", "data-name": file.name },
      thumb, el("span", { class: "upload-name", text: file.name, title: file.name }), state, bar, preview);
    return { file, kind, node, state, fill, bar, objectUrl };
  }

  function pumpUploads() {
    while (uploadsActive < UPLOAD_PARALLEL && uploadQueue.length) {
      const entry = uploadQueue.shift();
      uploadsActive += 1;
      upload(entry).finally(() => { uploadsActive -= 1; pumpUploads(); });
    }
  }

  function upload(entry) {
    return new Promise((resolve) => {
      const path = (entry.kind === "audio" ? "/api/inputs/audio" : "/api/inputs/videos") + "?name=" + encodeURIComponent(entry.file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.withCredentials = true;
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      entry.node.dataset.state = "uploading";
      xhr.upload.onprogress = (event) => {
        if (!event.lengthComputable) return;
        const percent = Math.floor((event.loaded / event.total) * 100);
        entry.fill.style.width = percent + "%";
        entry.bar.setAttribute("aria-valuenow", String(percent));
        if (percent >= 100) setText(entry.state, "upload.hashing");
        else setText(entry.state, "upload.progress", { percent });
      };
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (_) { data = null; }
        if (xhr.status === 201 || xhr.status === 200) finishUpload(entry, data || {});
        else if (xhr.status === 401) { showUnauthorized(); failUpload(entry, t("conn.unauthorized")); }
        else if (xhr.status === 413) failUpload(entry, t("upload.tooLarge") + (data && data.error ? " — " + data.error.message : ""));
        else failUpload(entry, data && data.error ? data.error.message : xhr.status + " " + xhr.statusText);
        resolve();
      };
      xhr.onerror = () => { failUpload(entry, t("error.network")); resolve(); };
      xhr.onabort = () => { failUpload(entry, "aborted"); resolve(); };
      xhr.send(entry.file);
    });
  }

  function finishUpload(entry, answer) {
    entry.fill.style.width = "100%";
    entry.fill.className = "bar-fill success";
    entry.bar.setAttribute("aria-valuenow", "100");
    if (answer.duplicate) {
      const video = state && (state.videos || []).find((v) => v.key === answer.key);
      const original = video ? (video.names.find((n) => n !== answer.name) || video.names[0]) : answer.name;
      entry.node.classList.add("duplicate");
      entry.node.dataset.state = "duplicate";
      if (original) setText(entry.state, "upload.duplicateOf", { name: original });
      else setText(entry.state, "upload.duplicate");
      entry.bar.replaceWith(dismissButton(entry));
      return;  // stays until dismissed: the user should see it
    }
    entry.node.classList.add("done");
    entry.node.dataset.state = "done";
    setText(entry.state, "upload.done");
    // The batch lists it now (the snapshot follows the upload); the entry fades away.
    setTimeout(() => dropUploadEntry(entry), entry.kind === "audio" ? 2500 : 3500);
  }

  function failUpload(entry, message) {
    entry.node.classList.add("failed");
    entry.node.dataset.state = "failed";
    entry.fill.className = "bar-fill failed";
    setText(entry.state, "upload.failed", { message });
    entry.bar.replaceWith(dismissButton(entry));
  }

  function dismissButton(entry) {
    const close = el("button", { type: "button", class: "btn-icon", "aria-label": t("common.dismiss"), title: t("common.dismiss"), "data-i18n-attr": "aria-label:common.dismiss;title:common.dismiss" }, svgIcon(ICON_X));
    close.addEventListener("click", () => dropUploadEntry(entry));
    return close;
  }

  function dropUploadEntry(entry) {
    entry.node.remove();
    URL.revokeObjectURL(entry.objectUrl);
  }

  function setUpDropzone(zone, kind) {
    const input = zone.querySelector("input[type=file]");
    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      input.value = "";
      if (!files.length) return;
      queueUploads(kind === "audio" ? files.slice(0, 1) : files, kind);
    });
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragover"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      zone.classList.remove("dragover");
      document.body.classList.remove("dragging");
      const files = Array.from(event.dataTransfer.files || []);
      if (!files.length) return;
      if (kind === "audio") {
        const audio = files.find(isAudioFile) || files[0];
        queueUploads([audio], "audio");
        const videos = files.filter((file) => file !== audio && isVideoFile(file));
        if (videos.length) queueUploads(videos, "video");
      } else {
        const audio = files.filter(isAudioFile);
        if (audio.length) queueUploads(audio.slice(0, 1), "audio");
        queueUploads(files.filter((file) => !isAudioFile(file)), "video");
      }
    });
  }

  function setUpPageDrop() {
    let depth = 0;
    const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
    window.addEventListener("dragenter", (event) => { if (!hasFiles(event)) return; depth += 1; document.body.classList.add("dragging"); });
    window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (depth === 0) document.body.classList.remove("dragging"); });
    window.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      document.body.classList.remove("dragging");
      const files = Array.from(event.dataTransfer.files || []);
      const audio = files.filter(isAudioFile);
      const videos = files.filter((file) => !isAudioFile(file) && isVideoFile(file));
      if (audio.length) queueUploads(audio.slice(0, 1), "audio");
      if (videos.length) queueUploads(videos, "video");
    });
  }

  // ---------------------------------------------------------------- confirm dialog
  function confirmDialog(title, body, okLabel) {
    const dialog = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-body").textContent = body;
    $("confirm-ok").textContent = okLabel;
    return new Promise((resolve) => {
      const done = () => { dialog.removeEventListener("close", done); resolve(dialog.returnValue === "ok"); };
      dialog.returnValue = "cancel";
      dialog.addEventListener("close", done);
      if (typeof dialog.showModal === "function") dialog.showModal();
      else resolve(window.confirm(title + "\n\n" + body));
      const cancel = dialog.querySelector('[value="cancel"]');
      if (cancel) cancel.focus();
    });
  }

  // ---------------------------------------------------------------- actions
  async function removeVideo(key) {
    const video = state && state.videos.find((v) => v.key === key);
    const name = video ? video.names[0] : key;
    if (!(await confirmDialog(t("videos.removeTitle"), t("videos.removeBody", { name }), t("common.remove")))) return;
    try {
      await api("DELETE", "/api/inputs/videos/" + encodeURIComponent(key));
    } catch (error) {
      reportError(error);
    }
  }

  async function skipItem(key, button) {
    button.disabled = true;
    await command("/api/items/" + encodeURIComponent(key) + "/skip");
    button.disabled = false;
  }

  async function clearHistory() {
    if (!(await confirmDialog(t("batch.clearTitle"), t("batch.clearBody"), t("batch.clearConfirm")))) return;
    const answer = await command("/api/batch/reset", { confirm: true });
    if (answer) toast(t("batch.cleared", { count: answer.forgotten ?? 0 }));
  }

  async function runCommand(button, path) {
    button.disabled = true;
    const answer = await command(path);
    if (answer && state && /start|retry|rerender/.test(path)) {
      state.running = true;
    }
    if (state) renderBatch();
  }

  // ---------------------------------------------------------------- start
  function wire() {
    setUpDropzone($("audio-drop"), "audio");
    setUpDropzone($("video-drop"), "video");
    setUpPageDrop();

    $("start").addEventListener("click", () => runCommand($("start"), "/api/batch/start"));
    $("pause").addEventListener("click", () => runCommand($("pause"), "/api/batch/pause"));
    $("stop").addEventListener("click", () => runCommand($("stop"), "/api/batch/stop"));
    $("retry-failed").addEventListener("click", () => runCommand($("retry-failed"), "/api/batch/retry-failed"));
    $("rerender").addEventListener("click", () => runCommand($("rerender"), "/api/batch/rerender-other-settings"));
    $("other-settings-rerender").addEventListener("click", () => runCommand($("rerender"), "/api/batch/rerender-other-settings"));
    $("clear-history").addEventListener("click", clearHistory);

    $("engine-select").addEventListener("change", (event) => saveSettings({ engine: event.target.value }));
    for (const [id, field] of [["denoise-range", "denoise"], ["tempo-range", "tempo"]]) {
      const input = $(id);
      input.addEventListener("input", () => { settingsUi.dragging = true; updateRangeReadouts(); });
      input.addEventListener("change", () => {
        settingsUi.dragging = false;
        saveSettings({ [field]: Number(input.value) });
      });
    }
    $("add-param").addEventListener("click", () => {
      const row = paramRow("", "");
      $("params").append(row);
      $("params-empty").hidden = true;
      row.querySelector("input").focus();
    });
    $("settings-form").addEventListener("submit", (event) => event.preventDefault());

    $("log-scroll").addEventListener("click", toggleLogScroll);
    $("backup-button").addEventListener("click", downloadBackup);
    $("backup-reminder-download").addEventListener("click", downloadBackup);
    $("backup-reminder-close").addEventListener("click", () => { $("backup-reminder").hidden = true; });
    $("download-all").addEventListener("click", (event) => {
      if ($("download-all").getAttribute("aria-disabled") === "true") event.preventDefault();
    });
    $("reconnect-now").addEventListener("click", () => { connection.delay = 500; connect(); });
    $("lang-toggle").addEventListener("click", () => window.I18N.toggle());
    window.addEventListener("online", () => { if (!connection.socket && !connection.unauthorized) { connection.delay = 500; connect(); } });

    window.I18N.onChange(() => {
      if (state) renderAll();
      rerenderLog();
      if (lastFinished && !$("backup-reminder").hidden) showBackupReminder(lastFinished);
      if (connection.unauthorized) $("fatal-text").textContent = t("conn.unauthorized");
      if (!$("reconnect-banner").hidden) updateReconnectCountdown();
    });

    // ETA and elapsed times move even without events.
    setInterval(() => { if (state && state.running) scheduleRender(); }, 1000);
  }

  async function boot() {
    window.I18N.init();
    wire();
    try {
      applySnapshot(await api("GET", "/api/state"));
      // The token (first load) is in a cookie now: keep it out of the address bar and history.
      const url = new URL(location.href);
      if (url.searchParams.has("token")) {
        url.searchParams.delete("token");
        history.replaceState(null, "", url.pathname + url.search + url.hash);
      }
    } catch (error) {
      if (error.status === 401) { showUnauthorized(); return; }
      if (error.status === 0) {
        $("fatal-text").textContent = t("conn.unreachable");
        $("fatal-banner").hidden = false;
      }
    }
    await loadLog();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();

  // For tests and the curious: the page's current view of the batch.
  window.talkieStudio = { get state() { return state; }, get connection() { return connection.socket ? connection.socket.readyState : -1; } };
})();
