// hostwatch status page: polls status.json and draws it. Every value from the agent goes into the
// page as text (textContent, attribute values), never as markup: a log file's name or an error
// message cannot inject anything. Charts need uPlot (static/uPlot.min.js); without it, tables only.
"use strict";
(function () {
  const POLL_MS = 5000;
  const COLOURS = ["#2563eb", "#f59e0b", "#dc2626", "#7c3aed", "#059669", "#db2777", "#0891b2"];
  const hasCharts = typeof window.uPlot === "function";
  const plots = new Map(); // figure id -> {plot, key}
  let timer = null;

  // ---------------------------------------------------------------- formatting

  function bytes(v) {
    if (v === null || v === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let n = Math.abs(v);
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    const digits = i === 0 ? (Number.isInteger(n) ? 0 : 1) : n < 10 ? 2 : 1;
    return (v < 0 ? "-" : "") + n.toFixed(digits) + " " + units[i];
  }
  function rate(v) { return v === null || v === undefined ? "–" : bytes(v) + "/s"; }
  function num(v, digits) {
    if (v === null || v === undefined) return "–";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return Number(v).toFixed(digits === undefined ? (Number.isInteger(v) ? 0 : 1) : digits);
  }
  function pct(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(1) + " %"; }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }
  function ago(iso) {
    if (!iso) return "never";
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    return duration(Math.max(0, (Date.now() - t) / 1000)) + " ago";
  }
  function clock(iso) {
    const t = Date.parse(iso);
    return Number.isNaN(t) ? String(iso) : new Date(t).toLocaleTimeString();
  }

  // ---------------------------------------------------------------- DOM helpers (text only)

  function byId(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== null && text !== undefined) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function meter(value, max) {
    const m = document.createElement("meter");
    m.min = 0; m.max = max; m.low = max * 0.7; m.high = max * 0.9; m.optimum = 0;
    m.value = value || 0;
    return m;
  }
  // columns: [title, cell(row) -> string | Node, class(row) -> string, numeric]
  function table(id, columns, rows, empty) {
    const head = el("tr");
    for (const c of columns) head.append(el("th", c[0], c[3] ? "num" : ""));
    const body = [head];
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", empty, "empty");
      td.colSpan = columns.length;
      tr.append(td);
      body.push(tr);
    }
    for (const row of rows) {
      const tr = el("tr");
      for (const c of columns) {
        const value = c[1](row);
        const cls = [c[3] ? "num" : "", c[2] ? c[2](row) : ""].join(" ").trim();
        const td = el("td", null, cls);
        if (value instanceof Node) td.append(value); else td.textContent = value === null || value === undefined ? "" : String(value);
        tr.append(td);
      }
      body.push(tr);
    }
    byId(id).replaceChildren(...body);
  }

  // ---------------------------------------------------------------- charts

  function themeColour(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  function chart(figure, key, series, data, format, opts) {
    if (!hasCharts) return;
    const width = Math.max(280, figure.clientWidth);
    const existing = plots.get(figure.id);
    if (existing && existing.key === key) {
      existing.plot.setData(data);
      if (Math.abs(existing.plot.width - width) > 4) existing.plot.setSize({ width: width, height: 180 });
      return;
    }
    if (existing) existing.plot.destroy();
    const text = themeColour("--muted");
    const grid = themeColour("--line");
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    // from zero, with room above the highest value; an idle series (all zero) lies on the axis
    const fromZero = (u, min, max) => [0, max > 0 ? max * 1.1 : 1];
    const scales = { x: { time: true }, y: { range: (opts && opts.range) || fromZero } };
    if (opts && opts.right) scales[opts.right.scale] = { range: fromZero };
    const axes = [Object.assign({}, axis), Object.assign({}, axis, { size: 84, values: (u, vals) => vals.map(format) })];
    const uSeries = [{}].concat(series.map((s, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const entry = { label: s.label, stroke: colour, width: 1.5, value: (u, v) => (s.format || format)(v), spanGaps: false };
      if (s.scale) entry.scale = s.scale;
      if (i === 0 && opts && opts.fill) entry.fill = colour + "22";
      return entry;
    }));
    if (opts && opts.right) {
      // whole items: ticks at whole numbers only
      const incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7];
      axes.push(Object.assign({}, axis, { scale: opts.right.scale, side: 1, size: 60, incrs: incrs, grid: { show: false }, values: (u, vals) => vals.map(opts.right.format) }));
    }
    const plot = new window.uPlot(
      { width: width, height: 180, series: uSeries, axes: axes, scales: scales, cursor: { drag: { x: false, y: false } } },
      data,
      figure,
    );
    plots.set(figure.id, { plot: plot, key: key });
  }

  function hostCharts(doc) {
    const charts = doc.charts || {};
    const specs = {
      cpu: { format: (v) => v === null ? "–" : v.toFixed(0) + "%", range: [0, 100], fill: true, value: pct },
      memory: { format: bytes, fill: true },
      disk: { format: rate },
      network: { format: rate },
    };
    for (const name of Object.keys(specs)) {
      const c = charts[name];
      const figure = byId("chart-" + name);
      if (!c || !figure) continue;
      const spec = specs[name];
      const series = c.series.map((label) => ({ label: label, format: spec.value }));
      chart(figure, name + ":" + c.series.join(","), series, c.data, spec.format, spec);
    }
    const total = doc.host && doc.host.memory_total_bytes;
    byId("memory-total").textContent = total ? "of " + bytes(total) : "";
    if (hasCharts) return;
    // no chart library: the latest point of every chart, as a table
    const formats = { cpu: pct, memory: bytes, disk: rate, network: rate };
    const rows = Object.keys(formats).filter((name) => charts[name]).map((name) => {
      const c = charts[name];
      const parts = c.series.map((label, i) => {
        const values = c.data[i + 1] || [];
        return label + " " + formats[name](values.length ? values[values.length - 1] : null);
      });
      return { name: name, now: parts.join(" · ") };
    });
    table("host-now", [["", (r) => r.name], ["Now", (r) => r.now]], rows, "no data yet");
  }

  function outputCharts(outputs) {
    const holder = byId("output-charts");
    const figures = outputs.map((o) => {
      const id = "output-chart-" + o.name.replace(/[^A-Za-z0-9_-]/g, "_");
      let figure = byId(id);
      if (!figure) {
        figure = el("figure");
        figure.id = id;
        const caption = el("figcaption", o.name);
        caption.append(el("small", "items/s sent and dropped; queued items (right)"));
        figure.append(caption);
        holder.append(figure);
      }
      return figure;
    });
    const wanted = new Set(figures.map((f) => f.id));
    for (const figure of Array.from(holder.children)) {
      if (!wanted.has(figure.id)) {
        const p = plots.get(figure.id);
        if (p) { p.plot.destroy(); plots.delete(figure.id); }
        figure.remove();
      }
    }
    // drawn once every figure is in the grid, so that each is sized to its final column
    outputs.forEach((o, i) => {
      const d = o.history.data; // [t, sent, dropped, queued, fill]
      chart(figures[i], "output", [
        { label: "sent/s" },
        { label: "dropped/s" },
        { label: "queued", scale: "items", format: (v) => num(v, 0) },
      ], [d[0], d[1], d[2], d[3]], (v) => num(v), { right: { scale: "items", format: (v) => num(v, 0) } });
    });
  }

  // ---------------------------------------------------------------- tables

  function render(doc) {
    document.body.classList.remove("stale");
    byId("unreachable").hidden = true;
    byId("hostname").textContent = doc.hostname || "";
    document.title = "hostwatch · " + (doc.hostname || "status");
    const ready = doc.status === "ready";
    const state = byId("state");
    state.textContent = doc.status;
    state.className = "badge " + (ready ? "good" : "bad");
    const host = doc.host || {};
    const meta = ["version " + doc.version, "up " + duration(doc.uptime_seconds)];
    if (host.cpus) meta.push(host.cpus + " CPUs");
    if (host.load1 !== null && host.load1 !== undefined) meta.push("load " + host.load1.toFixed(2));
    meta.push("updated " + clock(doc.time));
    byId("meta").textContent = meta.join(" · ");
    byId("reasons").replaceChildren(...(doc.reasons || []).map((r) => el("li", r)));

    hostCharts(doc);
    table("filesystems", [
      ["Mount point", (f) => f.mountpoint, () => "path"],
      ["Device", (f) => f.device, () => "path"],
      ["Type", (f) => f.fstype],
      ["Size", (f) => bytes(f.size_bytes), null, true],
      ["Available", (f) => bytes(f.avail_bytes), null, true],
      ["Used", (f) => { const s = el("span"); s.append(meter(f.used_percent, 100), pct(f.used_percent)); return s; }, null, true],
    ], host.filesystems || [], "no file systems reported (is the disk collector configured?)");

    const outputs = doc.outputs || [];
    table("outputs", [
      ["Output", (o) => o.name],
      ["Type", (o) => o.type],
      ["Signals", (o) => (o.signals || []).join(", ")],
      ["Buffer", (o) => o.buffer],
      ["Sent/s", (o) => num(o.sent_per_second), null, true],
      ["Dropped/s", (o) => num(o.dropped_per_second), (o) => (o.dropped_per_second ? "error" : ""), true],
      ["Queued", (o) => num(o.queued_items, 0) + " (" + bytes(o.queued_bytes) + ")", null, true],
      ["Fill", (o) => { const s = el("span"); s.append(meter(o.buffer_fill_percent, 100), pct(o.buffer_fill_percent)); return s; }, null, true],
      ["Dropped", (o) => num(Object.values(o.dropped_items || {}).reduce((a, b) => a + b, 0), 0), null, true],
      ["Last success", (o) => ago(o.last_success), (o) => (o.consecutive_failures ? "warn" : "")],
      ["Last error", (o) => o.last_error || "", () => "error"],
    ], outputs, "no outputs configured: samples are served on /metrics only");
    outputCharts(outputs);

    table("log-files", [
      ["Collector", (f) => f.collector],
      ["File", (f) => (f.error ? f.error : f.path + (f.rotated ? " (rotated)" : "")), (f) => (f.error ? "error" : "path")],
      ["Size", (f) => bytes(f.size_bytes), null, true],
      ["Read up to", (f) => bytes(f.offset), null, true],
      ["Behind", (f) => bytes(f.behind_bytes), (f) => (f.behind_bytes > 0 ? "warn" : "good"), true],
    ], doc.log_files || [], "no log files tailed");

    table("collectors", [
      ["Collector", (c) => c.name],
      ["Runs", (c) => num(c.runs, 0), null, true],
      ["Errors", (c) => num(c.errors, 0), (c) => (c.errors ? "error" : ""), true],
      ["Last run", (c) => ago(c.last_run)],
      ["Duration", (c) => (c.last_duration_seconds === null || c.last_duration_seconds === undefined ? "–" : (c.last_duration_seconds * 1000).toFixed(1) + " ms"), null, true],
      ["Last error", (c) => c.last_error || "", () => "error"],
    ], doc.collectors || [], "no collectors configured");

    table("problems", [
      ["Time", (p) => clock(p.time)],
      ["Level", (p) => p.level, (p) => (p.level === "warning" ? "warn" : "error")],
      ["Source", (p) => p.source],
      ["Message", (p) => p.message, () => "path"],
    ], doc.problems || [], "none since the agent started");
  }

  // ---------------------------------------------------------------- polling

  async function refresh() {
    try {
      const response = await fetch("status.json", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (err) {
      document.body.classList.add("stale");
      const banner = byId("unreachable");
      banner.textContent = "Cannot reach the agent (" + err.message + "); retrying every " + POLL_MS / 1000 + " s. The data below is the last received.";
      banner.hidden = false;
      const state = byId("state");
      state.textContent = "unreachable";
      state.className = "badge unknown";
    }
  }

  function schedule() {
    if (timer !== null) clearInterval(timer);
    timer = null;
    if (document.hidden) return; // nobody looks: no requests
    refresh();
    timer = setInterval(refresh, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("no-charts").hidden = hasCharts;
    document.body.classList.toggle("no-charts", !hasCharts);
    schedule();
    document.addEventListener("visibilitychange", schedule);
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(refresh, 200);
    });
  });
})();
