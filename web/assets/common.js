// Small functions shared by the viewer page and the dashboard (no framework, no build step).
"use strict";

window.EmoStream = (function () {
  /** fetch() with a time limit; resolves to {ok, status, body, headers} and never throws on HTTP errors. */
  async function fetchJson(url, options = {}, timeoutMs = 5000) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetch(url, { ...options, signal: controller.signal });
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null; // a non-JSON answer (a proxy's error page, say) still has a status
      }
      return { ok: response.ok, status: response.status, body, headers: response.headers };
    } finally {
      clearTimeout(timer);
    }
  }

  /** The message of a JSON error answer, or a readable fallback. */
  function errorText(answer, fallback) {
    if (answer && answer.body && typeof answer.body.error === "string") return answer.body.error;
    return answer ? `${fallback} (HTTP ${answer.status})` : fallback;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function pad(n, width = 2) {
    return String(n).padStart(width, "0");
  }

  /** 21:04:06 in local time. */
  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** A duration: "840 ms" below a second, "1.24 s" above. */
  function duration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "–";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  /** Compact counts: 950, 12.3k, 4.1M. */
  function count(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const abs = Math.abs(n);
    if (abs >= 1e6) return `${(n / 1e6).toFixed(abs >= 1e7 ? 0 : 1)}M`;
    if (abs >= 1e4) return `${(n / 1e3).toFixed(abs >= 1e5 ? 0 : 1)}k`;
    if (abs >= 100 || Number.isInteger(n)) return String(Math.round(n));
    return n.toFixed(abs >= 10 ? 1 : 2);
  }

  /** Very compact counts for narrow places: 950, 2.1k, 12k, 4.1M. */
  function shortCount(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const abs = Math.abs(n);
    if (abs >= 1e6) return `${(n / 1e6).toFixed(abs >= 1e7 ? 0 : 1)}M`;
    if (abs >= 1e3) return `${(n / 1e3).toFixed(abs >= 1e4 ? 0 : 1)}k`;
    return String(Math.round(n));
  }

  function median(values) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    const middle = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  }

  /** document.createElement with attributes and children; text children are text nodes. */
  function el(tag, attributes = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of [].concat(children)) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Set text only when it changed: no needless reflow, no repeated screen-reader announcements. */
  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }

  const prefersReducedMotion = () =>
    window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  return { fetchJson, errorText, sleep, clock, duration, count, shortCount, median, el, setText, prefersReducedMotion };
})();
