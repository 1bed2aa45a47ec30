// The operator dashboard: one sample a second from /dashboard/data.json, drawn as small SVG charts.
// The server sends raw counters and histogram buckets; rates and quantiles are computed here
// from consecutive samples, so the server keeps no state.
"use strict";

(function () {
  const { fetchJson, clock, duration, count, el, setText } = window.EmoStream;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  const POLL_MS = 1000;
  const HISTORY = 120; // samples kept and drawn: two minutes at one a second
  const LOOKBACK = 3; // samples a rate spans: smooth enough, still live
  const LATENCY_LOOKBACK = 10; // the probe taps about once a second: quantiles need a few taps
  const CHART_W = HISTORY;
  const CHART_H = 40;

  const samples = [];

  // ------------------------------------------------------------------ arithmetic on samples

  function earlier(i, lookback = LOOKBACK) {
    return samples[Math.max(0, i - lookback)];
  }

  function rate(key, i) {
    const now = samples[i];
    const then = earlier(i);
    if (now === then) return null;
    const a = then.series.counters[key];
    const b = now.series.counters[key];
    const seconds = (now.time - then.time) / 1000;
    if (a == null || b == null || seconds <= 0 || b < a) return null; // b < a: the service restarted
    return (b - a) / seconds;
  }

  function gauge(key, i) {
    const value = samples[i].series.gauges[key];
    return value == null ? null : value;
  }

  /** Buckets observed between two cumulative histograms: [[le, n], ...] (le null is +Inf). */
  function bucketDelta(then, now) {
    if (!now) return null;
    const before = new Map((then ? then.buckets : []).map(([le, n]) => [le, n]));
    const delta = now.buckets.map(([le, n]) => [le, n - (before.get(le) || 0)]);
    if (delta.some(([, n]) => n < 0)) return null; // a restart reset the histogram
    return delta;
  }

  /** The q-quantile of an interval's buckets, interpolated inside its bucket as Prometheus does. */
  function quantile(delta, q) {
    if (!delta || !delta.length) return null;
    const total = delta[delta.length - 1][1];
    if (!(total > 0)) return null;
    const rank = q * total;
    let lowerBound = 0;
    let lowerCount = 0;
    for (const [le, cumulative] of delta) {
      if (cumulative >= rank) {
        if (le === null) return lowerBound; // beyond the last finite bucket: say its bound
        const inBucket = cumulative - lowerCount;
        return inBucket > 0 ? lowerBound + ((le - lowerBound) * (rank - lowerCount)) / inBucket : le;
      }
      if (le !== null) lowerBound = le;
      lowerCount = cumulative;
    }
    return lowerBound;
  }

  function histogramAt(key, i, lookback = LOOKBACK) {
    const now = samples[i].series.histograms[key];
    const thenSample = earlier(i, lookback);
    if (!now || thenSample === samples[i]) return null;
    const then = thenSample.series.histograms[key];
    const delta = bucketDelta(then, now);
    const observed = now.count - (then ? then.count : 0);
    const mean = observed > 0 ? (now.sum - (then ? then.sum : 0)) / observed : null;
    return { delta, observed, mean };
  }

  // ------------------------------------------------------------------ tiles

  const tiles = [
    {
      id: "tile-ingest",
      label: "Emoji into ingest",
      unit: "per second",
      value: (i) => rate("ingest_emoji", i),
      format: count,
      detail: (i) => {
        const rejected = rate("ingest_rejected", i);
        if (rejected) return `${count(rejected)} req/s refused`;
        return samples[i].probe && samples[i].probe.state !== "idle" ? "incl. the probe's 1/s" : "";
      },
    },
    {
      id: "tile-aggregates",
      label: "Aggregates out",
      unit: "per second",
      value: (i) => rate("processor_aggregates", i),
      format: count,
      detail: (i) => {
        const routed = rate("publisher_routed", i);
        return routed == null ? "" : `${count(routed)}/s to clusters`;
      },
    },
    {
      id: "tile-batch",
      label: "Processor batch",
      unit: "",
      value: (i) => {
        const h = histogramAt("processor_batch_seconds", i);
        if (h && h.mean != null) return h.mean * 1000;
        const last = gauge("processor_last_batch_seconds", i);
        return last == null ? null : last * 1000;
      },
      format: duration,
      detail: (i) => {
        const last = gauge("processor_last_batch_seconds", i);
        return last == null ? "" : `last ${duration(last * 1000)}`;
      },
    },
    {
      id: "tile-viewers",
      label: "Viewers connected",
      unit: "",
      value: (i) => gauge("viewers", i),
      format: count,
      detail: (i) => {
        const capacity = gauge("capacity", i);
        return capacity ? `of ${count(capacity)} seats` : "";
      },
    },
    {
      id: "tile-latency",
      label: "End-to-end latency",
      unit: "",
      value: (i) => {
        const h = histogramAt("latency_seconds", i, LATENCY_LOOKBACK);
        const p50 = h ? quantile(h.delta, 0.5) : null;
        return p50 == null ? null : p50 * 1000;
      },
      second: (i) => {
        const h = histogramAt("latency_seconds", i, LATENCY_LOOKBACK);
        const p95 = h ? quantile(h.delta, 0.95) : null;
        return p95 == null ? null : p95 * 1000;
      },
      format: duration,
      detail: (i) => {
        const h = histogramAt("latency_seconds", i, LATENCY_LOOKBACK);
        const p95 = h ? quantile(h.delta, 0.95) : null;
        return p95 == null ? "" : `p95 ${duration(p95 * 1000)}`;
      },
    },
    {
      id: "tile-nodes",
      label: "Subscriber nodes",
      unit: "live",
      value: (i) => gauge("nodes_live", i),
      format: count,
      chart: (i) => {
        const viewers = gauge("viewers", i);
        const capacity = gauge("capacity", i);
        return capacity ? (100 * (viewers || 0)) / capacity : null;
      },
      chartFormat: (v) => `${v.toFixed(v < 10 ? 1 : 0)} %`,
      chartName: "mean load",
      detail: (i) => {
        const viewers = gauge("viewers", i);
        const capacity = gauge("capacity", i);
        const total = gauge("nodes_total", i);
        const down = total != null && gauge("nodes_live", i) != null ? total - gauge("nodes_live", i) : 0;
        const load = capacity ? `load ${((100 * (viewers || 0)) / capacity).toFixed(1)} %` : "";
        return [down > 0 ? `${down} down` : "", load].filter(Boolean).join(" · ");
      },
    },
  ];

  function renderTile(tile) {
    const root = $(tile.id);
    const last = samples.length - 1;
    const current = tile.value(last);
    setText(root.querySelector(".tile-number"), current == null ? "–" : tile.format(current));
    setText(root.querySelector(".tile-detail"), tile.detail ? tile.detail(last) : "");
    const plotted = tile.chart || tile.value;
    const format = tile.chartFormat || tile.format;
    const first = samples.length - Math.min(HISTORY, samples.length);
    const series = [];
    const second = [];
    for (let i = first; i <= last; i++) {
      series.push(plotted(i));
      if (tile.second) second.push(tile.second(i));
    }
    const top = niceMax(Math.max(0, ...series.filter(isFiniteNumber), ...second.filter(isFiniteNumber)));
    drawChart(root.querySelector("svg"), [series, tile.second ? second : null], top);
    const seconds = Math.round((samples[last].time - samples[first].time) / 1000);
    const span = root.querySelector(".legend-span");
    if (span) setText(span, `${tile.chartName ? `${tile.chartName}, ` : ""}last ${seconds} s`);
    setText(root.querySelector(".legend-max"), top > 0 ? `scale ${format(top)}` : "");
    const peak = Math.max(...series.filter(isFiniteNumber));
    const latest = series[series.length - 1];
    root
      .querySelector("svg")
      .setAttribute(
        "aria-label",
        isFinite(peak)
          ? `${tile.label}${tile.chartName ? `, ${tile.chartName}` : ""} over the last ${seconds} s: now ${latest == null ? "no data" : format(latest)}, highest ${format(peak)}`
          : `${tile.label}: no data yet`,
      );
  }

  const isFiniteNumber = (v) => typeof v === "number" && isFinite(v);

  /** A round chart ceiling a little above the data, so lines do not touch the top. */
  function niceMax(value) {
    if (!(value > 0)) return 0;
    const raw = value * 1.15;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const steps = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    return magnitude * steps.find((step) => step * magnitude >= raw);
  }

  function drawChart(svg, lines, top) {
    svg.setAttribute("viewBox", `0 0 ${CHART_W} ${CHART_H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const parts = [svgNode("line", { class: "grid", x1: 0, x2: CHART_W, y1: CHART_H - 0.5, y2: CHART_H - 0.5 })];
    lines.forEach((values, index) => {
      if (!values) return;
      const x0 = CHART_W - values.length;
      const y = (v) => (top > 0 ? CHART_H - 1 - (v / top) * (CHART_H - 4) : CHART_H - 1);
      for (const run of runs(values)) {
        const points = run.map(([i, v]) => `${(x0 + i + 0.5).toFixed(1)},${y(v).toFixed(2)}`);
        if (index === 0 && run.length > 1) {
          const firstX = (x0 + run[0][0] + 0.5).toFixed(1);
          const lastX = (x0 + run[run.length - 1][0] + 0.5).toFixed(1);
          parts.push(svgNode("path", { class: "area", d: `M${firstX},${CHART_H} L${points.join(" L")} L${lastX},${CHART_H} Z` }));
        }
        if (run.length > 1) {
          parts.push(svgNode("polyline", { class: index === 0 ? "line" : "line second", points: points.join(" ") }));
        } else {
          const [cx, cy] = points[0].split(",");
          parts.push(svgNode("circle", { class: index === 0 ? "line" : "line second", cx, cy, r: 0.6 }));
        }
      }
    });
    svg.replaceChildren(...parts);
  }

  /** Consecutive runs of numbers, split at gaps (null), as [index, value] pairs. */
  function runs(values) {
    const out = [];
    let current = [];
    values.forEach((v, i) => {
      if (isFiniteNumber(v)) current.push([i, v]);
      else if (current.length) {
        out.push(current);
        current = [];
      }
    });
    if (current.length) out.push(current);
    return out;
  }

  function svgNode(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  // ------------------------------------------------------------------ services and clusters

  function renderServices(services) {
    const items = services.map((service) =>
      el("li", { className: "service", "data-up": String(service.up), "data-service": service.name, title: service.url }, [
        el("span", { className: "dot", "aria-hidden": "true" }),
        el("span", { className: "service-name", text: service.label }),
        // status is ok, starting or unavailable; error says why when the service gave no answer
        el("span", { className: "service-status", text: service.error ? `${service.status}: ${service.error}` : service.status }),
        el("span", { className: "visually-hidden", text: service.up ? " (up)" : " (down)" }),
      ]),
    );
    $("services").replaceChildren(...items);
  }

  function renderClusters(clusters, problem) {
    const root = $("clusters");
    if (!clusters.length) {
      root.replaceChildren(el("p", { className: "empty-note", text: problem ? `Membership unavailable: ${problem}` : "No subscriber nodes have announced themselves." }));
      setText($("clusters-note"), "");
      return;
    }
    const nodes = clusters.reduce((n, c) => n + c.nodes.length, 0);
    setText($("clusters-note"), `${clusters.length} ${clusters.length === 1 ? "cluster" : "clusters"} · ${nodes} nodes`);
    root.replaceChildren(
      ...clusters.map((cluster) => {
        // Viewers are the audience: the dashboard's own probe connection is left out.
        const audience = (node) => Math.max(0, node.connections - (node.probe_viewers || 0));
        const viewers = cluster.nodes.reduce((n, node) => n + (node.alive ? audience(node) : 0), 0);
        const rows = cluster.nodes.map((node) => {
          const load = node.load == null ? null : Math.min(1, node.load);
          const level = load == null ? "" : load >= 0.95 ? "full" : load >= 0.8 ? "high" : "";
          const fill = el("span", { className: `load-fill ${level}` });
          fill.style.transform = `scaleX(${load || 0})`;
          const events = Object.entries(node.events || {})
            .sort((a, b) => b[1] - a[1])
            .map(([event, n]) => `${event} ${count(n)}`)
            .join(", ");
          return el("tr", { "data-node": node.id }, [
            el("td", { className: "node-id", title: node.url || "", text: node.id }),
            el("td", { className: `node-status ${node.alive ? "" : "down"}`, text: node.status }),
            el("td", { className: "num", text: count(audience(node)) }),
            el("td", {}, [
              el("span", { className: "load-bar", role: "img", "aria-label": load == null ? "load unknown" : `load ${Math.round(load * 100)} % of ${count(node.capacity)}` }, [fill]),
            ]),
            el("td", { className: "node-events", title: events, text: events || "–" }),
          ]);
        });
        return el("section", { className: "panel cluster", "data-cluster": cluster.cluster }, [
          el("h3", { text: `Cluster ${cluster.cluster} · ${count(viewers)} ${viewers === 1 ? "viewer" : "viewers"}` }),
          el("table", { className: "nodes" }, [
            el("thead", {}, [
              el("tr", {}, [
                el("th", { scope: "col", text: "Node" }),
                el("th", { scope: "col", text: "Status" }),
                el("th", { scope: "col", className: "num", text: "Viewers" }),
                el("th", { scope: "col", text: "Load" }),
                el("th", { scope: "col", text: "Events" }),
              ]),
            ]),
            el("tbody", {}, rows),
          ]),
        ]);
      }),
    );
  }

  // ------------------------------------------------------------------ polling

  async function poll() {
    let answer = null;
    try {
      answer = await fetchJson("/dashboard/data.json", {}, 8000);
    } catch (_) {
      answer = null;
    }
    if (answer && answer.ok && answer.body) {
      samples.push(answer.body);
      if (samples.length > HISTORY + LOOKBACK) samples.shift();
      renderServices(answer.body.services || []);
      renderClusters(answer.body.clusters || [], answer.body.membership_error);
      tiles.forEach(renderTile);
      const probe = answer.body.probe;
      setText($("latency-note"), probe ? `probe: ${probe.state}` : "tap → viewer");
      const down = (answer.body.services || []).filter((s) => !s.up).length;
      setText($("updated"), `Updated ${clock(answer.body.time)}${down ? ` · ${down} service${down > 1 ? "s" : ""} down` : ""}`);
      document.body.dataset.samples = String(Number(document.body.dataset.samples || 0) + 1);
    } else {
      setText($("updated"), `No sample from the server (${answer ? `HTTP ${answer.status}` : "unreachable"}); retrying`);
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
