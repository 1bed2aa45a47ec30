// The viewer page: pick an event, register, listen to the assigned subscriber node,
// tap emoji into the ingest, and watch the crowd's windows arrive.
"use strict";

(function () {
  const { fetchJson, errorText, sleep, clock, duration, count, shortCount, median, el, setText } = window.EmoStream;
  const $ = (id) => document.getElementById(id);

  const STRIP_SLOTS = 12; // recent windows on the strip
  const KEPT_WINDOWS = 40; // windows remembered (late updates of older ones are ignored)
  const MAX_FLOATS = 90; // emoji floating at once; more would only cost frames
  const MAX_FLOATS_PER_UPDATE = 30;
  const PENDING_TAP_MS = 30000; // a tap not counted by then is reported and forgotten
  const DELAYS_KEPT = 20;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const CONNECT_TIMEOUT_MS = 5000;
  const EVENT_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const LIVE_EVENTS_REFRESH_MS = 15000;

  const state = {
    config: null,
    clockOffsetMs: 0, // server clock − this device's clock
    clientId: viewerId(),
    eventId: null,
    registration: null,
    socket: null,
    generation: 0, // bumped on every (re)join: stale connection attempts see it and stop
    openedAt: Infinity, // server time the current connection opened: records routed before it are replays
    attempt: 0,
    problem: "", // why the last connection attempt failed, shown while retrying
    windows: new Map(), // window_start → {aggregate, arrivedAt, live}: the newest record of each window
    latestWindow: null,
    floated: new Map(), // window_start → {emoji: scaled already floated}
    queue: [], // taps not yet sent
    sending: false,
    pending: [], // taps sent, waiting for the first aggregate counting them
    ownByWindow: new Map(), // window_start → {emoji: own taps accepted}
    delays: [], // the last DELAYS_KEPT tap → window delays, for the median
    tapsTimed: 0,
    tapsSent: 0,
    liveEvents: [], // [event, viewers] from the membership
    recentEvents: [],
    foreignUpdates: 0, // aggregates of another event: a routing bug if it ever grows
    replays: 0, // records sent again (history, since) or no newer than the window held: never timed nor floated
    floatsAlive: 0,
    floatsShown: 0, // emoji floated since the page opened (only live records float)
  };

  // ------------------------------------------------------------------ start

  async function start() {
    if (typeof window.io !== "function") {
      setConnection("offline", "The Socket.IO client did not load (on the server: run bin/setup)");
      return;
    }
    await loadConfig();
    buildButtons();
    buildWindowCounts();
    buildStrip();
    setText($("strip-note"), `${state.config.window_ms / 1000} s each`);
    setText($("stage-hint"), `Each floating emoji stands for up to ${state.config.scale_unit.toLocaleString("en")} taps`);
    $("event-form").addEventListener("submit", onEventSubmit);
    $("event-input").addEventListener("input", (typed) => typed.target.setCustomValidity(""));
    document.addEventListener("keydown", onKey);
    window.addEventListener("pagehide", () => unregister(state.registration));
    const fromUrl = new URLSearchParams(location.search).get("event");
    const initial = fromUrl && EVENT_ID_RE.test(fromUrl) ? fromUrl : state.config.default_event;
    rememberEvent(initial);
    join(initial);
    refreshLiveEvents();
  }

  async function loadConfig() {
    for (let attempt = 0; ; attempt++) {
      const sentAt = Date.now();
      try {
        const answer = await fetchJson("/config.json", {}, 5000);
        if (answer.ok) {
          const receivedAt = Date.now();
          state.config = answer.body;
          // NTP-style: the server stamped its time about halfway through the round trip.
          state.clockOffsetMs = answer.body.server_time - (sentAt + receivedAt) / 2;
          return;
        }
      } catch (_) {
        // the front door is restarting: retry below
      }
      setConnection("offline", "Cannot load the page settings; retrying");
      await sleep(backoffDelay(attempt));
    }
  }

  const serverNow = () => Date.now() + state.clockOffsetMs;

  function viewerId() {
    // One id per tab: two tabs are two viewers, a reload is the same one.
    try {
      let id = sessionStorage.getItem("emostream.clients.viewer");
      if (!id) {
        id = `web-${Math.random().toString(36).slice(2, 10)}`;
        sessionStorage.setItem("emostream.clients.viewer", id);
      }
      return id;
    } catch (_) {
      return `web-${Math.random().toString(36).slice(2, 10)}`;
    }
  }

  // ------------------------------------------------------------------ event picker

  function onEventSubmit(submit) {
    submit.preventDefault();
    const input = $("event-input");
    const eventId = input.value.trim();
    if (!EVENT_ID_RE.test(eventId)) {
      input.setCustomValidity("Use 1–64 letters, digits and _ . -");
      input.reportValidity();
      return;
    }
    input.setCustomValidity("");
    if (eventId === state.eventId && state.socket) return;
    rememberEvent(eventId);
    join(eventId);
  }

  function rememberEvent(eventId) {
    let recent = [];
    try {
      recent = JSON.parse(localStorage.getItem("emostream.events") || "[]");
    } catch (_) {
      recent = [];
    }
    recent = [eventId, state.config.default_event, ...recent].filter(
      (value, index, all) => EVENT_ID_RE.test(value) && all.indexOf(value) === index,
    );
    try {
      localStorage.setItem("emostream.events", JSON.stringify(recent.slice(0, 8)));
    } catch (_) {
      // private mode: suggestions just stay short
    }
    state.recentEvents = recent.slice(0, 8);
    showSuggestions();
  }

  /** Events that have viewers now (from the membership), then this browser's recent ones. */
  async function refreshLiveEvents() {
    try {
      const answer = await fetchJson("/subscribers", {}, 5000);
      if (answer.ok && answer.body && Array.isArray(answer.body.subscribers)) {
        const viewers = new Map();
        for (const node of answer.body.subscribers) {
          if (!node.alive) continue;
          for (const [event, n] of Object.entries(node.events || {})) {
            // The dashboard's synthetic viewer is not an audience.
            if (event !== state.config.probe_event) viewers.set(event, (viewers.get(event) || 0) + n);
          }
        }
        state.liveEvents = [...viewers.entries()].sort((a, b) => b[1] - a[1]);
        showSuggestions();
      }
    } catch (_) {
      // suggestions are a convenience: keep the old ones
    }
    setTimeout(refreshLiveEvents, LIVE_EVENTS_REFRESH_MS);
  }

  function showSuggestions() {
    const options = new Map();
    for (const [event, n] of state.liveEvents) options.set(event, `${n} watching`);
    for (const event of state.recentEvents) if (!options.has(event)) options.set(event, "watched recently");
    const list = $("event-suggestions");
    list.replaceChildren(
      ...[...options.entries()].slice(0, 20).map(([value, label]) => el("option", { value, label })),
    );
  }

  // ------------------------------------------------------------------ registration and connection

  function join(eventId) {
    const generation = ++state.generation;
    const previous = state.registration;
    closeSocket();
    if (previous) unregister(previous);
    state.eventId = eventId;
    state.registration = null;
    state.attempt = 0;
    state.problem = "";
    resetWindows();
    $("event-input").value = eventId;
    setText($("status-event"), eventId);
    setText($("stage-event"), eventId);
    setText($("status-cluster"), "–");
    setText($("status-node"), "–");
    document.title = `${eventId} · EmoStream`;
    const url = new URL(location.href);
    url.searchParams.set("event", eventId);
    history.replaceState(null, "", url);
    setConnection("connecting", "Connecting");
    connectLoop(generation);
  }

  async function connectLoop(generation) {
    while (generation === state.generation) {
      const registration = await register(generation);
      if (generation !== state.generation) return;
      if (registration) {
        showRegistration(registration);
        const socket = await openSocket(registration, generation);
        if (generation !== state.generation) {
          if (socket) socket.close();
          return;
        }
        if (socket) {
          state.socket = socket;
          state.attempt = 0;
          state.problem = "";
          setConnection("connected", "Connected");
          return;
        }
      }
      const wait = backoffDelay(state.attempt++);
      const why = state.problem ? `${state.problem}; retrying` : "Retrying";
      setConnection("reconnecting", `${why} in ${duration(wait)} (attempt ${state.attempt})`);
      await sleep(wait);
    }
  }

  /** Exponential backoff with jitter, so a node's viewers do not all come back at once. */
  function backoffDelay(attempt) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  async function register(generation) {
    let answer;
    try {
      answer = await fetchJson(
        "/register",
        {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ client_id: state.clientId, event_id: state.eventId }),
        },
        8000,
      );
    } catch (_) {
      answer = null;
    }
    if (generation !== state.generation) return null;
    if (!answer || !answer.ok) {
      state.problem = errorText(answer, "Registration is not reachable");
      return null;
    }
    const registration = answer.body;
    if (!registration || typeof registration.url !== "string" || typeof registration.token !== "string") {
      state.problem = "Registration answered without a node";
      return null;
    }
    state.registration = registration;
    sendTaps(); // taps made while registering
    return registration;
  }

  function showRegistration(registration) {
    setText($("status-cluster"), String(registration.cluster ?? "–"));
    setText($("status-node"), String(registration.subscriber ?? "–"));
    $("status-node").title = registration.url;
  }

  /**
   * The window_start of the oldest window this page may not hold final, or null when it holds none.
   * A window's count settles within settle_ms of its end: from the newest window held, ask again for
   * the windows that time covers, and one more (a late record of an older window can be written in
   * the processor's batch after the newest one's). Later corrections reach a connected page live.
   */
  function sinceWindow() {
    if (state.latestWindow === null) return null;
    const windowMs = state.config.window_ms;
    const lateness = Number(state.config.settle_ms) || 0;
    return state.latestWindow - (Math.ceil(lateness / windowMs) + 1) * windowMs;
  }

  /** Resolves to the connected socket, or null when the node refuses or does not answer. */
  function openSocket(registration, generation) {
    return new Promise((resolve) => {
      const socket = window.io(registration.url, {
        // Called on every connection attempt: a page coming back asks for the windows it may have
        // missed (the node sends them before the live ones).
        auth: (send) => {
          state.openedAt = serverNow();
          const since = sinceWindow();
          document.body.dataset.since = since === null ? "" : String(since);
          send(since === null ? { token: registration.token } : { token: registration.token, since });
        },
        reconnection: false, // this page re-registers instead: the node may be gone for good
        forceNew: true,
        timeout: CONNECT_TIMEOUT_MS,
        transports: ["websocket", "polling"],
        tryAllTransports: true,
      });
      let settled = false;
      const settle = (value) => {
        if (!settled) {
          settled = true;
          resolve(value);
        }
      };
      socket.on("connect", () => {
        state.openedAt = serverNow();
        settle(socket);
      });
      socket.on("connect_error", (error) => {
        socket.close();
        if (!settled) state.problem = `Node ${registration.subscriber} refused: ${error.message || "no answer"}`;
        settle(null);
      });
      socket.on("emoji_update", onUpdate);
      socket.on("disconnect", (reason) => {
        settle(null);
        if (generation === state.generation && state.socket === socket) onConnectionLost(reason);
      });
    });
  }

  function onConnectionLost(reason) {
    const lost = state.registration;
    state.socket = null;
    state.registration = null;
    if (lost) unregister(lost); // frees the slot if the node still counts it
    setText($("status-node"), `${lost ? lost.subscriber : "–"} (lost)`);
    state.problem = reason === "io server disconnect" ? "Node closed the connection" : "Node lost";
    setConnection("reconnecting", `${state.problem}; re-registering`);
    const generation = state.generation;
    const wait = backoffDelay(0);
    sleep(wait).then(() => {
      if (generation === state.generation && !state.socket) connectLoop(generation);
    });
  }

  function closeSocket() {
    if (state.socket) {
      const socket = state.socket;
      state.socket = null;
      socket.close();
    }
  }

  function unregister(registration) {
    if (!registration) return;
    try {
      fetch("/unregister", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ client_id: registration.client_id, token: registration.token }),
        keepalive: true,
      }).catch(() => {});
    } catch (_) {
      // best effort: the node frees the slot when the socket goes away anyway
    }
  }

  function setConnection(stateName, text) {
    const badge = $("status-connection");
    if (badge.dataset.state !== stateName) badge.dataset.state = stateName;
    setText($("status-connection-text"), text);
  }

  // ------------------------------------------------------------------ taps

  function buildButtons() {
    const bar = $("emoji-buttons");
    const buttons = state.config.emoji.map(({ emoji, name }, index) => {
      const key = index < 10 ? String((index + 1) % 10) : null;
      const button = el(
        "button",
        {
          type: "button",
          className: "emoji-button",
          "data-emoji": emoji,
          "aria-label": `Send ${name}`,
          "aria-keyshortcuts": key,
          title: key ? `Send ${name} (key ${key})` : `Send ${name}`,
        },
        [el("span", { className: "emoji-glyph", "aria-hidden": "true", text: emoji }), el("span", { className: "emoji-name", "aria-hidden": "true", text: name })],
      );
      button.addEventListener("click", () => tap(emoji, button));
      return button;
    });
    bar.replaceChildren(...buttons);
  }

  function onKey(event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
    if (!/^[0-9]$/.test(event.key)) return;
    const index = (Number(event.key) + 9) % 10; // 1 → first, 0 → tenth
    const button = $("emoji-buttons").children[index];
    if (!button) return;
    event.preventDefault();
    tap(button.dataset.emoji, button);
  }

  function tap(emoji, button) {
    if (!state.eventId) return;
    state.queue.push({ emoji, eventId: state.eventId, clickedAt: performance.now(), timestamp: Math.round(serverNow()) });
    button.classList.remove("pressed");
    void button.offsetWidth; // restart the press animation on rapid taps
    button.classList.add("pressed");
    sendTaps();
  }

  /** JSON, with the registration's send credential when the service handed one out. */
  function sendHeaders(registration) {
    const headers = { "Content-Type": "application/json" };
    if (typeof registration.send_token === "string" && registration.send_token) {
      headers.Authorization = `Bearer ${registration.send_token}`;
    }
    return headers;
  }

  /** One request at a time; taps made meanwhile go together as one POST /emojis. */
  async function sendTaps() {
    if (state.sending || !state.queue.length) return;
    // Taps go with the send credential of the current registration, which names one event:
    // until the page is registered they wait; taps of an event left meanwhile are dropped.
    const registration = state.registration;
    if (!registration) return;
    state.queue = state.queue.filter((t) => t.eventId === registration.event_id);
    if (!state.queue.length) return;
    state.sending = true;
    const batch = state.queue.splice(0, state.config.batch_max_events || 100);
    const events = batch.map((t) => ({
      user_id: registration.client_id,
      emoji_type: t.emoji,
      timestamp: t.timestamp,
      event_id: t.eventId,
    }));
    const single = events.length === 1;
    const sentAt = serverNow();
    let answer = null;
    try {
      answer = await fetchJson(
        `${state.config.ingest_url}${single ? "/emoji" : "/emojis"}`,
        {
          method: "POST",
          headers: sendHeaders(registration),
          body: JSON.stringify(single ? events[0] : events),
          mode: "cors",
        },
        8000,
      );
    } catch (_) {
      answer = null;
    }
    if (answer && answer.ok) {
      const stamped = Number(answer.body && answer.body.received_at);
      // Ingest stamps received_at, which windows are cut on. When it does not say, the stamp
      // lies somewhere in the round trip: the tap may belong to any window that overlaps it.
      const earliest = stamped > 0 ? stamped : Math.round(sentAt);
      const latest = stamped > 0 ? stamped : Math.round(serverNow());
      batch.forEach((t) => trackTap(t, earliest, latest));
      state.tapsSent += batch.length;
      const last = batch[batch.length - 1].emoji;
      setText($("tap-feedback"), `Sent ${last} · ${state.tapsSent} ${state.tapsSent === 1 ? "tap" : "taps"} so far`);
    } else if (answer && (answer.status === 429 || answer.status === 503)) {
      const retry = Number(answer.headers.get("Retry-After")) || 1;
      setText($("tap-feedback"), `${answer.status === 429 ? "Slow down" : "The ingest is busy"}: try again in ${retry} s`);
    } else if (answer) {
      setText($("tap-feedback"), `Not sent: ${errorText(answer, "the ingest refused it")}`);
    } else {
      setText($("tap-feedback"), "Not sent: the ingest is not reachable");
    }
    state.sending = false;
    if (state.queue.length) sendTaps();
  }

  function trackTap(t, earliest, latest) {
    if (t.eventId !== state.eventId) return;
    const windowMs = state.config.window_ms;
    const middle = Math.round((earliest + latest) / 2);
    const likely = middle - (middle % windowMs);
    const own = state.ownByWindow.get(likely) || {};
    own[t.emoji] = (own[t.emoji] || 0) + 1;
    state.ownByWindow.set(likely, own);
    const windows = new Set();
    for (let start = earliest - (earliest % windowMs); start <= latest; start += windowMs) windows.add(start);
    const pending = { emoji: t.emoji, clickedAt: t.clickedAt, earliest, windows, likely, ordinal: own[t.emoji] };
    for (const start of windows) {
      const seen = state.windows.get(start);
      if (seen && countsTap(seen.aggregate, pending)) {
        if (seen.live) recordDelay(seen.arrivedAt - t.clickedAt);
        return;
      }
    }
    state.pending.push(pending);
  }

  /**
   * Whether an aggregate counts a tap: a window the tap may be in, emitted after ingest took
   * the tap, with at least as many of that emoji as this viewer sent there. Exact while this
   * viewer is the only one sending that emoji in the window; in a busy crowd it can match a
   * batch early, so the delay shown is then a lower bound.
   */
  function countsTap(aggregate, pending) {
    if (!pending.windows.has(aggregate.window_start) || aggregate.emitted_at < pending.earliest) return false;
    const needed = aggregate.window_start === pending.likely ? pending.ordinal : 1;
    return ((aggregate.counts || {})[pending.emoji] || 0) >= needed;
  }

  /** Time the taps a record counts; a replay counts them too (they are done), but times none. */
  function matchTaps(aggregate, arrivedAt, live) {
    const now = performance.now();
    const waiting = [];
    let expired = 0;
    for (const pending of state.pending) {
      if (countsTap(aggregate, pending)) {
        if (live) recordDelay(arrivedAt - pending.clickedAt);
      } else if (now - pending.clickedAt > PENDING_TAP_MS) expired++;
      else waiting.push(pending);
    }
    state.pending = waiting;
    if (expired) setText($("tap-feedback"), `${expired} tap(s) not counted within ${PENDING_TAP_MS / 1000} s`);
  }

  function recordDelay(ms) {
    state.delays.push(Math.max(0, ms));
    if (state.delays.length > DELAYS_KEPT) state.delays.shift();
    state.tapsTimed++;
    $("delay-last").dataset.tapsTimed = String(state.tapsTimed);
    setText($("delay-last"), duration(ms));
    setText($("delay-median"), duration(median(state.delays)));
    setText($("delay-count"), String(state.delays.length));
  }

  // ------------------------------------------------------------------ aggregates

  function onUpdate(aggregate) {
    if (!aggregate || typeof aggregate.window_start !== "number") return;
    if (aggregate.event_id !== state.eventId) {
      state.foreignUpdates++;
      document.body.dataset.foreignUpdates = String(state.foreignUpdates);
      return;
    }
    const arrivedAt = performance.now();
    const start = aggregate.window_start;
    const previous = state.windows.get(start);
    // Records are cumulative per window: a repeat, or an older one arriving late, changes nothing.
    if (previous && !isNewer(aggregate, previous.aggregate)) {
      countReplay();
      return;
    }
    // The clients' replay rule (emostream/clients/probes.py): a newer record is live only if it was
    // routed (else emitted) after this connection opened; what the node sent from before is history.
    const stamp = Number(aggregate.routed_at ?? aggregate.emitted_at);
    const live = !(stamp < state.openedAt);
    if (!live) countReplay();
    state.windows.set(start, { aggregate, arrivedAt, live });
    if (state.windows.size > KEPT_WINDOWS) {
      const oldest = Math.min(...state.windows.keys());
      state.windows.delete(oldest);
      state.floated.delete(oldest);
      state.ownByWindow.delete(oldest);
    }
    if (state.latestWindow === null || start >= state.latestWindow) state.latestWindow = start;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    floatUp(aggregate, live);
    matchTaps(aggregate, arrivedAt, live);
    renderWindow();
    renderStrip();
  }

  /** Of two records of one window the higher total is its count, then the later emitted_at. */
  function isNewer(aggregate, held) {
    if (aggregate.total !== held.total) return aggregate.total > held.total;
    return (Number(aggregate.emitted_at) || 0) > (Number(held.emitted_at) || 0);
  }

  function countReplay() {
    state.replays++;
    document.body.dataset.replays = String(state.replays);
  }

  function resetWindows() {
    state.windows.clear();
    state.floated.clear();
    state.ownByWindow.clear();
    state.pending = [];
    state.queue = [];
    state.latestWindow = null;
    if (state.config) {
      renderWindow();
      renderStrip();
    }
  }

  // ------------------------------------------------------------------ floating emoji

  /**
   * Float as many of each emoji as its `scaled` grew by since this window's last update; a replay
   * only moves the mark, so windows sent again on a join or a reconnect do not float as if live.
   */
  function floatUp(aggregate, live) {
    const scaled = aggregate.scaled || {};
    const floated = state.floated.get(aggregate.window_start) || {};
    const wanted = [];
    for (const [emoji, value] of Object.entries(scaled)) {
      const fresh = Math.max(0, Number(value) - (floated[emoji] || 0));
      floated[emoji] = Math.max(floated[emoji] || 0, Number(value));
      for (let i = 0; i < fresh; i++) wanted.push(emoji);
    }
    state.floated.set(aggregate.window_start, floated);
    if (!live || !wanted.length) return;
    // A huge window floats a sample that keeps the proportions, not thousands of nodes.
    const room = Math.max(0, Math.min(MAX_FLOATS_PER_UPDATE, MAX_FLOATS - state.floatsAlive));
    const step = wanted.length > room ? wanted.length / room : 1;
    const layer = $("floats");
    for (let i = 0; i < wanted.length && i / step < room; i += step) {
      spawnFloat(layer, wanted[Math.floor(i)], (i / step) * 90);
    }
  }

  function spawnFloat(layer, emoji, delayMs) {
    const node = el("span", { className: "float", text: emoji });
    node.style.left = `${55 + Math.random() * 38}%`;
    node.style.animationDelay = `${Math.round(delayMs)}ms`;
    node.style.animationDuration = `${2600 + Math.round(Math.random() * 1400)}ms`;
    node.style.setProperty("--drift", `${Math.round((Math.random() - 0.5) * 80)}px`);
    node.style.setProperty("--size", `${(1.6 + Math.random() * 1.2).toFixed(2)}rem`);
    state.floatsAlive++;
    state.floatsShown++;
    document.body.dataset.floats = String(state.floatsShown);
    node.addEventListener("animationend", () => {
      node.remove();
      state.floatsAlive--;
    });
    layer.append(node);
  }

  // ------------------------------------------------------------------ window counts and strip

  function buildWindowCounts() {
    const list = $("window-counts");
    list.replaceChildren(
      ...state.config.emoji.map(({ emoji, name }) =>
        el("li", { className: "window-count", "data-emoji": emoji }, [
          el("span", { className: "wc-emoji", "aria-hidden": "true", text: emoji }),
          el("span", { className: "visually-hidden", text: `${name}: ` }),
          el("span", { className: "wc-count", text: "0" }),
          el("span", { className: "wc-bar", "aria-hidden": "true" }, [el("span", { className: "wc-fill" })]),
        ]),
      ),
    );
  }

  function renderWindow() {
    const entry = state.latestWindow === null ? null : state.windows.get(state.latestWindow);
    const aggregate = entry ? entry.aggregate : null;
    const counts = aggregate ? aggregate.counts || {} : {};
    const biggest = Math.max(1, ...Object.values(counts));
    const list = $("window-counts");
    list.dataset.windowStart = aggregate ? String(aggregate.window_start) : "";
    for (const item of list.children) {
      const n = counts[item.dataset.emoji] || 0;
      setText(item.querySelector(".wc-count"), count(n));
      item.querySelector(".wc-fill").style.transform = `scaleX(${n / biggest})`;
      item.classList.toggle("zero", n === 0);
    }
    setText($("stage-total"), count(aggregate ? aggregate.total : 0));
    setText(
      $("window-range"),
      aggregate
        ? `${clock(aggregate.window_start)}–${clock(aggregate.window_end)} · ${count(aggregate.total)} total`
        : "waiting for the first window",
    );
  }

  function buildStrip() {
    const slots = [];
    for (let i = 0; i < STRIP_SLOTS; i++) {
      slots.push(
        el("li", { className: "strip-slot empty" }, [
          el("span", { className: "strip-bar", "aria-hidden": "true" }, [el("span", { className: "strip-fill" })]),
          el("span", { className: "strip-total", "aria-hidden": "true", text: "" }),
          el("span", { className: "strip-top", "aria-hidden": "true", text: "" }),
          el("span", { className: "visually-hidden strip-label", text: "no window yet" }),
        ]),
      );
    }
    $("window-strip").replaceChildren(...slots);
  }

  function renderStrip() {
    const starts = [...state.windows.keys()].sort((a, b) => a - b).slice(-STRIP_SLOTS);
    const biggest = Math.max(1, ...starts.map((s) => state.windows.get(s).aggregate.total || 0));
    const slots = $("window-strip").children;
    const offset = STRIP_SLOTS - starts.length; // newest on the right, empty slots on the left
    for (let i = 0; i < STRIP_SLOTS; i++) {
      const slot = slots[i];
      const start = i >= offset ? starts[i - offset] : null;
      const aggregate = start === null ? null : state.windows.get(start).aggregate;
      slot.classList.toggle("empty", !aggregate);
      slot.classList.toggle("latest", aggregate !== null && start === state.latestWindow);
      slot.dataset.windowStart = aggregate ? String(start) : "";
      const total = aggregate ? aggregate.total || 0 : 0;
      slot.querySelector(".strip-fill").style.transform = `scaleY(${total / biggest})`;
      setText(slot.querySelector(".strip-total"), aggregate ? shortCount(total) : "");
      const ranked = aggregate ? Object.entries(aggregate.counts || {}).sort((a, b) => b[1] - a[1]) : [];
      setText(slot.querySelector(".strip-top"), ranked.length ? ranked[0][0] : "");
      const described = ranked.map(([emoji, n]) => `${emoji} ${n}`).join(", ");
      const label = aggregate ? `${clock(start)}: ${total} (${described})` : "no window yet";
      setText(slot.querySelector(".strip-label"), label);
      if (aggregate) slot.title = label;
      else slot.removeAttribute("title");
    }
  }

  start();
})();
