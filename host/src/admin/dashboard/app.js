// The Portcullis dashboard: reads the admin listener's JSON endpoints and /metrics every 2 s
// and renders them. Everything from the gateway is written as text (textContent), never as
// markup. Read-only unless an admin token is given: then the token goes with every request and
// the reload button appears.
"use strict";

const POLL_MS = 2000;
const RATE_POINTS = 90; // 3 minutes of samples
const TOKEN_KEY = "portcullis-admin-token";

const state = { samples: [], series: [], previous: null, chart: null };

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class Unauthorized extends Error {}

async function get(path, text) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized(path);
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return text ? response.text() : response.json();
}

// `el("td", {class: "x"}, "text", child, …)`: an element with attributes and text or children.
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

// Prometheus / OpenMetrics text: [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const row of text.split("\n")) {
    if (!row || row.startsWith("#")) continue;
    const m = line.exec(row);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function sum(metrics, name, where) {
  return metrics
    .filter((m) => m.name === name && Object.entries(where).every(([k, v]) => m.labels[k] === v))
    .reduce((total, m) => total + m.value, 0);
}

function pill(text, kind) {
  return el("span", { class: "pill " + kind }, text);
}

function renderRoutes(routes) {
  fill(
    "routes",
    routes.map((r) => {
      const matches = [r.host || "any host", r.path_prefix ? r.path_prefix + " (prefix)" : r.path].join(" ");
      const chain = r.chain.length
        ? r.chain.map((s) => {
            const notes = [s.kind];
            if (s.mode === "shadow") notes.push("shadow");
            if (s.failure_policy === "fail-open") notes.push("fail-open");
            if (s.canary) notes.push(s.canary.percent + "% → " + s.canary.plugin + " by " + s.canary.key);
            return el("span", { class: "step", "data-plugin": s.plugin }, s.plugin, " ", el("small", {}, notes.join(", ")));
          })
        : [el("span", { class: "muted" }, "no plugins")];
      return el(
        "tr",
        { "data-route": r.id },
        el("td", {}, el("code", {}, r.id)),
        el("td", {}, el("code", {}, matches)),
        el("td", {}, r.methods.length ? r.methods.join(", ") : "all"),
        el("td", {}, r.upstream),
        el("td", {}, ...chain),
        el("td", {}, String(r.golden)),
      );
    }),
  );
}

function renderPlugins(plugins, status, metrics) {
  fill(
    "plugins",
    plugins.map((p) => {
      const s = (status.plugins || {})[p.id] || {};
      const count = sum(metrics, "portcullis_plugin_call_duration_seconds_count", { plugin: p.id });
      const seconds = sum(metrics, "portcullis_plugin_call_duration_seconds_sum", { plugin: p.id });
      const mean = count ? ((seconds / count) * 1e6).toFixed(1) + " µs" : "–";
      const decisions = {};
      for (const m of metrics) {
        if (m.name !== "portcullis_plugin_decisions_total" || m.labels.plugin !== p.id || !m.value) continue;
        const key = (m.labels.mode === "shadow" ? "shadow:" : "") + m.labels.decision;
        decisions[key] = (decisions[key] || 0) + m.value;
      }
      const made = Object.entries(decisions).map(([d, n]) => d + " " + n).join(" · ") || "–";
      const breaker = p.breaker === "closed" ? pill("closed", "ok") : pill(p.breaker, "bad");
      const failures = s.failures_since_load || 0;
      return el(
        "tr",
        { "data-plugin": p.id },
        el("td", {}, el("code", {}, p.id)),
        el("td", {}, p.kind),
        el("td", {}, p.contract),
        el("td", { title: p.sha256 }, el("code", {}, p.sha256.slice(0, 12) + "…")),
        el("td", {}, breaker),
        el("td", failures ? { class: "error" } : {}, String(failures)),
        el("td", {}, mean),
        el("td", {}, made),
      );
    }),
  );
}

function renderUpstreams(status) {
  const rows = [];
  for (const [name, upstream] of Object.entries(status.upstreams || {})) {
    for (const e of upstream.endpoints) {
      rows.push(
        el(
          "tr",
          { "data-upstream": name, "data-endpoint": e.address },
          el("td", {}, name),
          el("td", {}, el("code", {}, e.address)),
          el("td", {}, e.available ? pill("available", "ok") : pill(e.ejected_for_ms ? "ejected" : "unavailable", "bad")),
          el("td", {}, e.active),
          el("td", {}, String(e.outstanding)),
          el("td", {}, String(e.requests)),
          el("td", {}, (e.recent_error_rate * 100).toFixed(1) + " %"),
        ),
      );
    }
  }
  fill("upstreams", rows);
}

function renderReloads(reloads) {
  fill(
    "reloads",
    reloads
      .slice()
      .reverse()
      .map((r) =>
        el(
          "tr",
          { "data-result": r.result },
          el("td", {}, new Date(r.time_ms).toLocaleString()),
          el("td", {}, typeof r.cause === "string" ? r.cause : JSON.stringify(r.cause)),
          el("td", {}, r.result === "ok" ? pill("ok", "ok") : pill(r.result, "bad")),
          el("td", {}, r.duration_ms.toFixed(1) + " ms"),
          el("td", { class: "error" }, [r.error || "", ...(r.warnings || [])].filter(Boolean).join("\n")),
        ),
      ),
  );
}

// Requests per second per route, from successive samples of portcullis_http_requests_total.
function renderRates(routes, metrics) {
  const now = Date.now() / 1000;
  const names = routes.map((r) => r.id);
  const totals = Object.fromEntries(names.map((id) => [id, sum(metrics, "portcullis_http_requests_total", { route: id })]));
  if (names.join("\n") !== state.series.join("\n")) {
    state.series = names;
    state.samples = [];
    state.previous = null;
    if (state.chart) state.chart.destroy();
    state.chart = null;
  }
  if (state.previous) {
    const dt = Math.max(now - state.previous.time, 0.001);
    state.samples.push([now, ...names.map((id) => Math.max(totals[id] - (state.previous.totals[id] || 0), 0) / dt)]);
    if (state.samples.length > RATE_POINTS) state.samples.shift();
  }
  state.previous = { time: now, totals };
  const columns = [state.samples.map((s) => s[0]), ...names.map((_, i) => state.samples.map((s) => s[i + 1]))];
  const target = document.getElementById("rates");
  if (typeof uPlot === "undefined") return;
  if (!state.chart) {
    const palette = ["#1570ef", "#dd2590", "#079455", "#dc6803", "#6938ef", "#0e9384", "#e04f16"];
    const options = {
      width: Math.max(target.clientWidth, 300),
      height: 220,
      scales: { y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
      series: [{}, ...names.map((id, i) => ({ label: id, stroke: palette[i % palette.length], width: 2 }))],
      axes: [{}, { label: "req/s" }],
    };
    state.chart = new uPlot(options, columns, target);
  } else {
    state.chart.setData(columns);
  }
}

async function refresh() {
  try {
    const [routes, plugins, status, reloads, exposition] = await Promise.all([
      get("/routes"),
      get("/plugins"),
      get("/status"),
      get("/reloads"),
      get("/metrics", true),
    ]);
    const metrics = parseMetrics(exposition);
    renderRoutes(routes.routes);
    renderPlugins(plugins.plugins, status, metrics);
    renderUpstreams(status);
    renderReloads(reloads.reloads);
    renderRates(routes.routes, metrics);
    const health = document.getElementById("health");
    const down = Object.values(status.upstreams || {}).some((u) => u.endpoints.every((e) => !e.available));
    health.textContent = down ? "an upstream has no available endpoint" : "serving";
    health.className = "pill " + (down ? "bad" : "ok");
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("message").hidden = true;
    document.getElementById("reload").hidden = !token();
    document.body.dataset.state = "ready";
  } catch (e) {
    const message = document.getElementById("message");
    message.hidden = false;
    if (e instanceof Unauthorized) {
      message.textContent = "This admin listener needs its token: enter it above.";
      document.body.dataset.state = "unauthorized";
    } else {
      message.textContent = "Could not read the gateway: " + e.message;
      document.body.dataset.state = "error";
    }
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  refresh();
});

document.getElementById("reload").addEventListener("click", async () => {
  const message = document.getElementById("message");
  const response = await fetch("/reload", { method: "POST", headers: { Authorization: "Bearer " + token() } });
  const body = await response.json().catch(() => ({}));
  message.hidden = false;
  message.textContent = response.ok ? "Reloaded." : "Reload refused: " + (body.errors || [body.detail || response.status]).join("; ");
  refresh();
});

refresh();
setInterval(refresh, POLL_MS);
