// The Terrarium viewer: the page's side. It takes the API key (typed, or from `#key=…` in the
// address, which it removes from the address bar at once) into sessionStorage, reads the keyed
// HTTP API with the key in the x-api-key header, and lets stream.js (a worker) hold the
// WebSocket. It draws what the worker hands it, follows the visible area with the subscription,
// and polls /api/world, /api/world/npcs (agents and their goals; NPCs' role and status only when
// the stream's frames don't carry them), /api/world/map and /api/performance.
//
// For tests and measurements, `window.viewer` exposes read-only figures (see `figures()`).
import { Camera, GlRenderer, CanvasRenderer, parseHex } from "./render.js";

const KEY_STORE = "terrarium.key";
const $ = (id) => document.getElementById(id);

const ROLE_COLOURS = { miner: "#ebcb8b", builder: "#5e81ac", guard: "#bf616a", trader: "#a3be8c", scout: "#b48ead" };
const STATUS_COLOURS = {
  idle: "#8f9bb3", moving: "#88c0d0", mining: "#ebcb8b", returning: "#a3be8c",
  depositing: "#b48ead", fleeing: "#d08770", dead: "#4c566a",
};
const OTHER_COLOUR = "#d8dee9";
// Colour indices of the stream worker (stream.js): 0 not known yet, then these in order.
const ROLE_NAMES = ["miner", "builder", "guard", "trader", "scout", "other"];
const STATUS_NAMES = ["idle", "moving", "mining", "returning", "depositing", "fleeing", "dead"];
// The sub-protocol whose frames carry role and status.
const V2 = "terrarium.binary.v2";
const UNKNOWN_COLOUR = "#6b7385";
const BLOCK_COLOURS = {
  air: "#000000", stone: "#6d6f73", dirt: "#7a5a3a", grass: "#4f7a3a", water: "#2f5f8f", bedrock: "#2b2b2b",
  coal: "#202020", iron: "#c98f6b", gold: "#f1c232", diamond: "#5fe0e6", depot: "#e0e0e0",
};

// ---- state ----------------------------------------------------------------------------------
const app = {
  key: null,
  world: null, // /api/world
  camera: new Camera(),
  renderer: null,
  worker: null,
  frame: { count: 0, ids: new Float64Array(0), pos: new Float32Array(0), colour: new Uint8Array(0), tick: 0 },
  frames: 0,
  resets: 0,
  binaryFrames: true, // offer the binary position frames (`#frames=json`: don't)
  protocol: null, // the sub-protocol the server selected
  binaryFrameCount: 0, // frames that came as binary messages
  streamBytes: 0, // bytes of position frames received (binary, or JSON text)
  dirty: true,
  hello: null,
  subscription: null, // {min, max} last sent
  subscribed: null, // last confirmed by the server
  colourBy: "role",
  kinds: null, // /api/world/npcs
  kindsAt: 0, // when it was last asked for
  legendAt: 0,
  palette: [parseHex(UNKNOWN_COLOUR)],
  legend: [],
  agents: [],
  map: null,
  mapImage: null,
  selected: null, // {id, record, error, track: [[x, z], …] seen live, stored: [[tick, x, y, z], …] from the server}
  perf: [],
  perfLast: null,
  banners: new Map(),
  live: false,
  drawn: 0,
  fpsTimes: [],
  lastFrameAt: 0,
  timers: [],
  gen: 0,
};

// ---- the key --------------------------------------------------------------------------------
function takeKeyFromAddress() {
  const h = location.hash.startsWith("#") ? location.hash.slice(1) : "";
  if (!h) return;
  const params = new URLSearchParams(h);
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem(KEY_STORE, key);
    params.delete("key");
    const rest = params.toString();
    // Out of the address bar (and so out of the history and of anything copied from it).
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
}

function api(path) {
  return fetch(path, { headers: { "x-api-key": app.key }, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
}

// A browser can't set headers on a WebSocket: the key travels in the sub-protocol offer
// (`terrarium.v1` plus `terrarium.key.<KEY>`; the server selects `terrarium.v1` and never echoes
// the key), never in the URL. `terrarium.binary.v2`, offered first, asks for compact binary
// position frames with each NPC's role and status; `terrarium.binary.v1` (the same without them)
// and `terrarium.v1` (JSON) are what an older server selects instead. `#frames=json` in the
// address leaves both binary ones out.
function wsProtocols(key, binary) {
  return [...(binary ? [V2, "terrarium.binary.v1"] : []), "terrarium.v1", "terrarium.key." + key];
}

// ---- banners --------------------------------------------------------------------------------
function banner(name, text, level = "warn") {
  if (text) app.banners.set(name, { text, level });
  else app.banners.delete(name);
  const box = $("banners");
  box.replaceChildren(...[...app.banners].map(([n, b]) => {
    const d = document.createElement("div");
    d.className = "banner " + b.level;
    d.dataset.banner = n;
    d.textContent = b.text;
    return d;
  }));
}

function connState(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

// ---- connecting -----------------------------------------------------------------------------
async function connect() {
  stop();
  // Two callers at once (two polls answered 401): only the last one goes on.
  const gen = ++app.gen;
  app.key = sessionStorage.getItem(KEY_STORE);
  if (!app.key) {
    connState("idle", "not connected: enter the API key");
    $("key").focus();
    return;
  }
  $("forget").hidden = false;
  connState("connecting", "connecting…");
  let res;
  try {
    res = await api("/api/world");
    if (gen !== app.gen) return;
  } catch (e) {
    if (gen !== app.gen) return;
    connState("error", "server unreachable");
    banner("conn", "cannot reach the server: " + e.message + " (retrying)", "error");
    app.timers.push(setTimeout(connect, 2000));
    return;
  }
  if (res.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    app.key = null;
    $("forget").hidden = true;
    connState("error", "wrong key");
    banner("conn", "The server refused this API key (401). Enter the right one.", "error");
    document.body.dataset.state = "error";
    $("key").value = "";
    $("key").focus();
    return;
  }
  if (!res.ok) {
    connState("error", "error " + res.status);
    banner("conn", "GET /api/world answered " + res.status + " (retrying)", "error");
    app.timers.push(setTimeout(connect, 2000));
    return;
  }
  banner("conn", null);
  app.world = await res.json();
  if (gen !== app.gen) return;
  // A colony's NPCs are all miners: their status says more than their role.
  if (!app.colourChosen) {
    app.colourBy = app.world.agents * 2 > app.world.npcs ? "status" : "role";
    $("colour-by").value = app.colourBy;
  }
  recolour();
  document.body.dataset.state = "connecting";
  showWorld();
  fit();
  startWorker();
  app.timers.push(setInterval(pollPerf, 1000));
  app.timers.push(setInterval(pollKinds, 1000));
  app.timers.push(setInterval(pollWorld, 5000));
  app.timers.push(setInterval(watchStream, 1000));
  app.timers.push(setInterval(loadTrack, 3000));
  pollPerf();
  if (app.world.voxel) {
    pollMap();
    app.timers.push(setInterval(pollMap, 10000));
  }
}

function stop() {
  for (const t of app.timers) { clearTimeout(t); clearInterval(t); }
  app.timers = [];
  if (app.worker) { app.worker.postMessage({ type: "close" }); app.worker.terminate(); app.worker = null; }
  app.live = false;
}

function startWorker() {
  const w = new Worker("/viewer/stream.js");
  app.worker = w;
  w.onmessage = (ev) => onWorker(ev.data);
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  w.postMessage({ type: "connect", url, protocols: wsProtocols(app.key, app.binaryFrames) });
  subscribeVisible(true);
}

function onWorker(m) {
  switch (m.type) {
    case "open":
      app.protocol = m.protocol;
      app.worker.postMessage({ type: "colourBy", by: app.colourBy });
      break;
    case "hello": {
      const again = app.hello !== null;
      app.hello = m;
      app.live = true;
      connState("live", "live · " + m.tick_hz + " ticks/s · " + m.ws_hz.toFixed(1) + " frames/s");
      document.body.dataset.state = "live";
      banner("stream", null);
      // The first fit could not know the largest area the server streams: fit again.
      if (!again && !app.moved) fit();
      if (again) {
        // A restarted server may have resumed a different world: read it again.
        pollWorld();
        pollKinds();
        app.subscription = null;
      }
      subscribeVisible(true);
      break;
    }
    case "subscribed":
      app.subscribed = { min: m.min, max: m.max };
      banner("stream-error", null);
      app.mapDirty = true;
      updateViewLine();
      // Agents (and, without v2 frames, colours) of the new area, soon after its reset arrives.
      clearTimeout(app.kindsTimer);
      app.kindsTimer = setTimeout(() => pollKinds(true), 300);
      break;
    case "frame":
      app.frame = m;
      app.frames++;
      app.streamBytes += m.bytes;
      if (m.binary) app.binaryFrameCount++;
      if (m.reset) app.resets++;
      app.lastFrameAt = performance.now();
      app.renderer.upload(m.count, m.pos, m.colour, app.palette);
      if (m.reset || performance.now() - app.legendAt > 500) showCounts();
      banner("quiet", null);
      if (m.behind) {
        banner("behind", "The stream fell behind: the server skipped frames and sent the area again.");
        clearTimeout(app.behindTimer);
        app.behindTimer = setTimeout(() => banner("behind", null), 5000);
      }
      trackSelected();
      app.dirty = true;
      break;
    case "error":
      banner("stream-error", "The server refused a message: " + m.error, "warn");
      break;
    case "closed":
      app.live = false;
      connState("closed", "disconnected");
      document.body.dataset.state = "reconnecting";
      banner("stream", "Stream closed (" + (m.code || "no code") + (m.reason ? ": " + m.reason : "") +
        "); reconnecting in " + (m.retryMs / 1000).toFixed(1) + " s…", "error");
      break;
    default:
      break;
  }
}

// A live stream that sends nothing for a while (NPCs that all stand still send nothing, so this
// only says what it knows).
function watchStream() {
  if (!app.live || !app.lastFrameAt) return;
  const quiet = (performance.now() - app.lastFrameAt) / 1000;
  if (quiet > 3) banner("quiet", "No stream frame for " + quiet.toFixed(0) + " s (nothing moving in view, or the server is busy).");
}

// ---- the view and the subscription --------------------------------------------------------
function worldRect() {
  const w = app.world;
  if (w.voxel) return { min: [0, 0], max: [w.voxel.size[0], w.voxel.size[2]] };
  return { min: [w.bounds.min[0], w.bounds.min[2]], max: [w.bounds.max[0], w.bounds.max[2]] };
}

function resize() {
  const stage = $("stage");
  const r = stage.getBoundingClientRect();
  const dpr = 1; // one canvas pixel per CSS pixel: the cost follows the window, not the screen
  for (const id of ["map-layer", "points-layer", "overlay-layer"]) {
    const c = $(id);
    c.width = Math.max(1, Math.floor(r.width * dpr));
    c.height = Math.max(1, Math.floor(r.height * dpr));
  }
  app.camera.w = $("points-layer").width;
  app.camera.h = $("points-layer").height;
  app.mapDirty = true;
  app.dirty = true;
}

function fit() {
  if (!app.world) return;
  const r = worldRect();
  let [w, h] = [r.max[0] - r.min[0], r.max[1] - r.min[1]];
  const maxArea = app.hello ? app.hello.max_area : Infinity;
  // A world larger than one subscription may cover: show as much as can stream, in its middle.
  if (w * h > maxArea) { const side = Math.sqrt(maxArea); w = Math.min(w, side); h = Math.min(h, side); }
  const cam = app.camera;
  cam.cx = (r.min[0] + r.max[0]) / 2;
  cam.cz = (r.min[1] + r.max[1]) / 2;
  cam.scale = Math.min(cam.w / w, cam.h / h) * 0.98;
  viewChanged();
}

function viewChanged() {
  app.dirty = true;
  app.mapDirty = true;
  clearTimeout(app.subTimer);
  app.subTimer = setTimeout(() => subscribeVisible(false), 120);
  updateViewLine();
}

// The visible area, a little wider, inside the world, and no larger than the server allows.
function wantedArea() {
  const v = app.camera.visible();
  const r = worldRect();
  const b = app.world.bounds;
  const pad = 0.05;
  const dx = (v.max[0] - v.min[0]) * pad, dz = (v.max[1] - v.min[1]) * pad;
  let min = [Math.max(b.min[0], v.min[0] - dx), Math.max(b.min[2], v.min[1] - dz)];
  let max = [Math.min(b.max[0], v.max[0] + dx), Math.min(b.max[2], v.max[1] + dz)];
  const maxArea = app.hello ? app.hello.max_area : Infinity;
  const area = (max[0] - min[0]) * (max[1] - min[1]);
  if (area > maxArea) {
    const k = Math.sqrt(maxArea / area) * 0.999;
    const [cx, cz] = [(min[0] + max[0]) / 2, (min[1] + max[1]) / 2];
    const [hw, hh] = [(max[0] - min[0]) * k / 2, (max[1] - min[1]) * k / 2];
    min = [cx - hw, cz - hh];
    max = [cx + hw, cz + hh];
  }
  const round = (x) => Math.round(x * 100) / 100;
  min = min.map(round); max = max.map(round);
  if (!(max[0] > min[0]) || !(max[1] > min[1])) return null;
  void r;
  return { min, max };
}

function subscribeVisible(force) {
  // Before the server's hello, the largest area it allows is unknown.
  if (!app.worker || !app.world || !app.hello) return;
  const a = wantedArea();
  if (!a) return;
  const s = app.subscription;
  if (!force && s && s.min[0] === a.min[0] && s.min[1] === a.min[1] && s.max[0] === a.max[0] && s.max[1] === a.max[1]) return;
  app.subscription = a;
  app.worker.postMessage({ type: "subscribe", min: a.min, max: a.max });
  updateViewLine();
}

function updateViewLine() {
  const s = app.subscribed;
  const f = (p) => "[" + p.map((v) => Math.round(v)).join(", ") + "]";
  $("view-line").textContent = (s ? "streaming " + f(s.min) + " – " + f(s.max) : "not subscribed") +
    " · " + app.frame.count + " NPCs in view · zoom " + app.camera.scale.toFixed(3) + " px/block";
}

// ---- polling --------------------------------------------------------------------------------
async function getJson(path) {
  const res = await api(path);
  if (res.status === 401) { connect(); throw new Error("401"); }
  if (!res.ok) throw new Error(path + ": " + res.status);
  return res.json();
}

async function pollWorld() {
  try {
    app.world = await getJson("/api/world");
    showWorld();
  } catch (e) { /* the stream's state says what is wrong */ }
}

// Every 2 s while NPCs' colours come from it (v1 or JSON frames), every 5 s when the frames
// carry them (v2: then only the agents and their goals are asked for, `npcs=false`); `now`:
// at once.
async function pollKinds(now) {
  const every = app.protocol === V2 ? 5000 : 2000;
  if (now !== true && performance.now() - app.kindsAt < every - 100) return;
  app.kindsAt = performance.now();
  const a = app.subscription;
  // With v2 frames the NPC list is not needed: agents only.
  const params = a ? [`min_x=${a.min[0]}`, `min_z=${a.min[1]}`, `max_x=${a.max[0]}`, `max_z=${a.max[1]}`] : [];
  if (app.protocol === V2) params.push("npcs=false");
  const q = params.length ? "?" + params.join("&") : "";
  try {
    app.kinds = await getJson("/api/world/npcs" + q);
    app.agents = app.kinds.agents;
    if (app.protocol !== V2) sendKinds(app.kinds);
  } catch (e) { /* next time */ }
}

// Role/status words (stream.js's layout) of the listed NPCs, for frames that lack them.
function sendKinds(k) {
  const roleCode = k.roles.map((name, i) => {
    if (i < 5) return i; // the built-in roles come first, in code order
    const n = /^other:(\d+)$/.exec(name);
    return n ? 0x10000 | Number(n[1]) : 0x10000;
  });
  const ids = new Float64Array(k.npcs.length);
  const words = new Uint32Array(k.npcs.length);
  for (let i = 0; i < k.npcs.length; i++) {
    const n = k.npcs[i];
    ids[i] = n[0];
    words[i] = (roleCode[n[1]] | (n[2] << 24)) >>> 0;
  }
  app.worker && app.worker.postMessage({ type: "kinds", ids, words });
}

async function pollMap() {
  try {
    const m = await getJson("/api/world/map?size=256");
    if (!app.map || m.edits !== app.map.edits) {
      app.map = m;
      app.mapImage = mapImage(m);
      app.mapDirty = true;
    }
  } catch (e) { /* next time */ }
}

// The palette for colouring by role or by status (the worker picks the index per NPC).
function recolour() {
  const names = app.colourBy === "role" ? ROLE_NAMES : STATUS_NAMES;
  const table = app.colourBy === "role" ? ROLE_COLOURS : STATUS_COLOURS;
  app.palette = [parseHex(UNKNOWN_COLOUR), ...names.map((n) => parseHex(table[n] || OTHER_COLOUR))];
  app.worker && app.worker.postMessage({ type: "colourBy", by: app.colourBy });
  showCounts();
  app.dirty = true;
}

// The legend, with the NPCs in view of each kind (counted by the worker per frame).
function showCounts() {
  app.legendAt = performance.now();
  const names = app.colourBy === "role" ? ROLE_NAMES : STATUS_NAMES;
  const table = app.colourBy === "role" ? ROLE_COLOURS : STATUS_COLOURS;
  const counts = app.frame.counts || [];
  app.legend = names.map((n, i) => ({ name: n, colour: table[n] || OTHER_COLOUR, count: counts[i + 1] || 0 }));
  showLegend();
}

function showLegend() {
  const li = (colour, text, cls = "") => {
    const e = document.createElement("li");
    const s = document.createElement("span");
    s.className = "swatch " + cls;
    s.style.background = colour;
    e.append(s, text);
    return e;
  };
  // Kinds nobody in the area has are left out (all of them, before the first count).
  const shown = app.legend.some((l) => l.count) ? app.legend.filter((l) => l.count) : app.legend;
  $("legend").replaceChildren(...shown.map((l) => {
    const e = li(l.colour, `${l.name} (${l.count})`);
    e.dataset.name = l.name;
    return e;
  }));
  const extra = [li(UNKNOWN_COLOUR, "not yet known")];
  if (app.world && app.world.depots.length) extra.push(li("#ffffff", "depot", "square"));
  if (app.agents.length) extra.push(li("rgba(235,203,139,.6)", "agent → goal", "square"));
  $("legend-extra").replaceChildren(...extra);
}

function showWorld() {
  const w = app.world;
  const rows = [["tick", w.tick], ["NPCs", w.npcs], ["agents", w.agents],
    ["bounds", `[${w.bounds.min.join(", ")}] – [${w.bounds.max.join(", ")}]`]];
  if (w.voxel) {
    rows.push(["voxel world", w.voxel.size.join(" × ") + ` (${w.voxel.edits} edits)`]);
    const stock = w.depots.reduce((acc, d) => { for (const [k, v] of Object.entries(d.stock)) acc[k] = (acc[k] || 0) + v; return acc; }, {});
    rows.push(["depots", w.depots.length + " · " + Object.entries(stock).map(([k, v]) => `${k} ${v}`).join(", ")]);
  }
  $("world-info").replaceChildren(table(rows));
  app.dirty = true;
}

function table(rows) {
  const t = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = t.insertRow();
    tr.insertCell().textContent = k;
    const td = tr.insertCell();
    td.textContent = String(v);
    td.dataset.key = k;
  }
  return t;
}

// ---- performance panel ----------------------------------------------------------------------
const CHARTS = [
  { key: "tps", label: "ticks/s", get: (p) => p.window_ticks_per_sec, fmt: (v) => v.toFixed(1) },
  { key: "p50", label: "tick p50 ms", get: (p) => p.tick_latency.p50_ms, fmt: (v) => v.toFixed(2) },
  { key: "p99", label: "tick p99 ms", get: (p) => p.tick_latency.p99_ms, fmt: (v) => v.toFixed(2) },
  { key: "npcs", label: "NPCs", get: (p) => p.npcs, fmt: (v) => String(v) },
  { key: "agents", label: "agents", get: (p) => p.agents, fmt: (v) => String(v) },
  { key: "queue", label: "write-behind rows", get: (p) => (p.write_behind ? p.write_behind.queue_rows : 0), fmt: (v) => String(v) },
  { key: "hit", label: "cache hit rate", get: (p) => (p.caches.length ? p.caches[0].hit_rate : 0), fmt: (v) => (v * 100).toFixed(1) + " %" },
];
const HISTORY = 300; // samples, one a second: the last five minutes

function buildPerf() {
  const box = $("perf");
  const nodes = [];
  for (const c of CHARTS) {
    const row = document.createElement("div");
    row.className = "chart";
    const label = document.createElement("div");
    const k = document.createElement("div"); k.className = "k"; k.textContent = c.label;
    const v = document.createElement("div"); v.className = "v"; v.id = "perf-" + c.key; v.textContent = "–";
    label.append(k, v);
    const cv = document.createElement("canvas");
    cv.width = 160; cv.height = 28; cv.id = "chart-" + c.key;
    row.append(label, cv);
    nodes.push(row);
  }
  const extra = document.createElement("div");
  extra.id = "perf-extra";
  nodes.push(extra);
  box.replaceChildren(...nodes);
}

async function pollPerf() {
  let p;
  try {
    p = await getJson("/api/performance");
  } catch (e) { return; }
  app.perfLast = p;
  app.perf.push(p);
  if (app.perf.length > HISTORY) app.perf.shift();
  for (const c of CHARTS) {
    $("perf-" + c.key).textContent = c.fmt(c.get(p));
    sparkline($("chart-" + c.key), app.perf.map(c.get));
  }
  const breakers = p.circuit_breakers.map((b) => `${b.name}: ${b.state}`).join(", ") || "none";
  const wb = p.write_behind;
  $("perf-extra").replaceChildren(table([
    ["breakers", breakers],
    ["storage", wb ? (wb.degraded ? "degraded" : "ok") + ` · ${wb.batches_written}/${wb.batches_submitted} batches` : "off"],
    ["dropped", wb ? wb.writes_dropped : 0],
    ["websockets", p.server ? `${p.server.ws_open} open · ${p.server.ws_frames_skipped} frames skipped` : "–"],
  ]));
  const degraded = wb && (wb.degraded || wb.breaker_open);
  const openBreaker = p.circuit_breakers.some((b) => b.state !== "closed");
  banner("storage", degraded || openBreaker
    ? "Storage is degraded" + (openBreaker ? " (circuit breaker " + p.circuit_breakers.filter((b) => b.state !== "closed").map((b) => b.state).join(", ") + ")" : "") +
      ": positions still stream; writes wait in the write-behind queue" + (wb && wb.outbox_batches ? " and the outbox" : "") + "."
    : null);
}

function sparkline(cv, values) {
  const g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  if (values.length < 2) return;
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
  g.strokeStyle = "#88c0d0";
  g.lineWidth = 1;
  g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (Math.max(values.length, 60) - 1)) * cv.width;
    const y = cv.height - 2 - ((v - lo) / (hi - lo)) * (cv.height - 4);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

// ---- selecting an NPC -----------------------------------------------------------------------
function pick(px, py) {
  const f = app.frame, cam = app.camera;
  const [wx, wz] = cam.toWorld(px, py);
  const reach = 8 / cam.scale;
  let best = -1, bestD = reach * reach;
  for (let k = 0; k < f.count; k++) {
    const dx = f.pos[k * 3] - wx, dz = f.pos[k * 3 + 2] - wz;
    const d = dx * dx + dz * dz;
    if (d < bestD) { bestD = d; best = k; }
  }
  if (best < 0) return null;
  return f.ids[best];
}

async function select(id) {
  if (id === null) { app.selected = null; showSelected(); return; }
  app.selected = { id, record: null, error: null, track: [], stored: [], trackError: null, clickedTick: app.frame.tick };
  trackSelected();
  showSelected();
  loadTrack();
  try {
    const res = await api("/api/npcs/" + id);
    if (!app.selected || app.selected.id !== id) return;
    if (res.ok) app.selected.record = await res.json();
    else app.selected.error = res.status === 404 ? "not stored yet (storage trails the world by a batch)" : "GET /api/npcs/" + id + " answered " + res.status;
  } catch (e) {
    app.selected.error = e.message;
  }
  showSelected();
}

// The selected NPC's stored track (the last minute, GET /api/npcs/{id}/track): what it did
// before the click; refreshed every few seconds while it stays selected.
async function loadTrack() {
  const s = app.selected;
  if (!s) return;
  try {
    const t = await getJson("/api/npcs/" + s.id + "/track?limit=1000");
    if (app.selected !== s) return;
    s.stored = t.points;
    s.trackError = null;
  } catch (e) {
    if (app.selected !== s) return;
    s.trackError = e.message;
  }
  showSelected();
}

function trackSelected() {
  const s = app.selected;
  if (!s) return;
  const f = app.frame;
  for (let k = 0; k < f.count; k++) {
    if (f.ids[k] === s.id) {
      const p = [f.pos[k * 3], f.pos[k * 3 + 2]];
      const last = s.track[s.track.length - 1];
      if (!last || last[0] !== p[0] || last[1] !== p[1]) s.track.push(p);
      if (s.track.length > 600) s.track.shift();
      s.now = [f.pos[k * 3], f.pos[k * 3 + 1], f.pos[k * 3 + 2]];
      return;
    }
  }
}

function showSelected() {
  const s = app.selected;
  const box = $("selected");
  if (!s) { box.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "Click a point." })); return; }
  const rows = [["id", s.id]];
  if (s.record) {
    const r = s.record;
    rows.push(["role", r.role], ["status", r.status], ["swarm", r.swarm], ["agent", r.agent],
      ["stored at", `${r.x.toFixed(1)}, ${r.y.toFixed(1)}, ${r.z.toFixed(1)}`], ["health", r.health],
      ["inventory", r.inventory.map(([k, n]) => `${k}×${n}`).join(", ") || "empty"], ["updated tick", r.updated_tick]);
  } else if (s.error) rows.push(["record", s.error]);
  else rows.push(["record", "loading…"]);
  const a = app.agents.find((x) => x[0] === s.id);
  if (a && app.kinds) rows.push(["doing", app.kinds.agent_states[a[1]]], ["goal", app.kinds.goals[a[2]] + (a[2] ? ` at ${a[3]}, ${a[4]}, ${a[5]}` : "")]);
  rows.push(["stored track", s.trackError ? s.trackError
    : s.stored.length ? `${s.stored.length} positions, ticks ${s.stored[0][0]}–${s.stored[s.stored.length - 1][0]}` : "none stored yet"]);
  rows.push(["track", s.track.length + " positions since selected"]);
  const t = table(rows);
  t.id = "selected-record";
  box.replaceChildren(t);
  box.dataset.id = String(s.id);
}

// ---- drawing --------------------------------------------------------------------------------
function mapImage(m) {
  const [w, h] = m.size;
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const g = c.getContext("2d");
  const img = g.createImageData(w, h);
  const cols = m.blocks.map((n) => parseHex(BLOCK_COLOURS[n] || "#ff00ff"));
  const maxY = m.world[1];
  for (let i = 0; i < w * h; i++) {
    const top = cols[m.top[i]];
    const shade = m.height[i] < 0 ? 0.3 : 0.45 + 0.55 * (m.height[i] / maxY);
    let rgb = top.map((v) => v * shade);
    if (m.ore[i]) {
      // Ore under the surface tints its column, so veins show from above.
      const o = cols[m.ore[i]];
      rgb = rgb.map((v, j) => v * 0.45 + o[j] * 0.55);
    }
    img.data[i * 4] = rgb[0]; img.data[i * 4 + 1] = rgb[1]; img.data[i * 4 + 2] = rgb[2]; img.data[i * 4 + 3] = 255;
  }
  g.putImageData(img, 0, 0);
  return c;
}

function drawMap() {
  const cv = $("map-layer");
  const g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const cam = app.camera;
  if (app.world) {
    // The world's edge, so an empty area still shows where it is.
    const b = app.world.bounds;
    const [x0, y0] = cam.toScreen(b.min[0], b.min[2]);
    const [x1, y1] = cam.toScreen(b.max[0], b.max[2]);
    g.fillStyle = "#181b21";
    g.fillRect(x0, y0, x1 - x0, y1 - y0);
  }
  if (app.mapImage) {
    const m = app.map;
    const [x0, y0] = cam.toScreen(0, 0);
    g.imageSmoothingEnabled = false;
    g.drawImage(app.mapImage, x0, y0, m.size[0] * m.step * cam.scale, m.size[1] * m.step * cam.scale);
  }
  const s = app.subscribed;
  if (s) {
    const [x0, y0] = cam.toScreen(s.min[0], s.min[1]);
    const [x1, y1] = cam.toScreen(s.max[0], s.max[1]);
    g.strokeStyle = "rgba(136,192,208,.35)";
    g.setLineDash([4, 4]);
    g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    g.setLineDash([]);
  }
}

function drawOverlay() {
  const cv = $("overlay-layer");
  const g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const cam = app.camera;
  // Agents' goals: a line from the agent to its goal, for agents in the area (at most 5000).
  if (app.agents.length && app.frame.count) {
    const where = new Map();
    const f = app.frame;
    if (app.agents.length <= 5000) {
      const want = new Set(app.agents.map((a) => a[0]));
      for (let k = 0; k < f.count; k++) if (want.has(f.ids[k])) where.set(f.ids[k], k);
    }
    g.strokeStyle = "rgba(235,203,139,.45)";
    g.beginPath();
    for (const a of app.agents) {
      if (!a[2]) continue;
      const k = where.get(a[0]);
      if (k === undefined) continue;
      const [x0, y0] = cam.toScreen(f.pos[k * 3], f.pos[k * 3 + 2]);
      const [x1, y1] = cam.toScreen(a[3] + 0.5, a[5] + 0.5);
      g.moveTo(x0, y0); g.lineTo(x1, y1);
    }
    g.stroke();
  }
  if (app.world && app.world.depots.length) {
    g.fillStyle = "#ffffff";
    g.strokeStyle = "#14171c";
    g.font = "11px system-ui, sans-serif";
    app.world.depots.forEach((d, i) => {
      const [x, y] = cam.toScreen(d.cell[0] + 0.5, d.cell[2] + 0.5);
      g.fillRect(x - 5, y - 5, 10, 10);
      g.strokeRect(x - 5, y - 5, 10, 10);
      g.fillText("depot " + i, x + 7, y + 4);
    });
  }
  const s = app.selected;
  if (s) {
    if (s.stored.length > 1) {
      g.strokeStyle = "#d08770";
      g.lineWidth = 1.5;
      g.beginPath();
      s.stored.forEach(([, x, , z], i) => { const [px, py] = cam.toScreen(x, z); if (i) g.lineTo(px, py); else g.moveTo(px, py); });
      g.stroke();
      g.lineWidth = 1;
    }
    if (s.track.length > 1) {
      g.strokeStyle = "#eceff4";
      g.lineWidth = 1.5;
      g.beginPath();
      s.track.forEach(([x, z], i) => { const [px, py] = cam.toScreen(x, z); if (i) g.lineTo(px, py); else g.moveTo(px, py); });
      g.stroke();
      g.lineWidth = 1;
    }
    if (s.now) {
      const [x, y] = cam.toScreen(s.now[0], s.now[2]);
      g.strokeStyle = "#ffffff";
      g.beginPath(); g.arc(x, y, 7, 0, Math.PI * 2); g.stroke();
    }
  }
}

function pointSize() {
  return Math.max(2, Math.min(7, app.camera.scale * 0.8));
}

function loop(now) {
  requestAnimationFrame(loop);
  app.fpsTimes.push(now);
  while (app.fpsTimes.length && now - app.fpsTimes[0] > 1000) app.fpsTimes.shift();
  if (app.mapDirty) { drawMap(); app.mapDirty = false; }
  // Points are drawn every frame, whether or not anything moved: what a user sees while
  // panning, and what the frame-rate measurement counts.
  app.renderer.draw(app.camera, app.palette, pointSize());
  app.drawn = app.renderer.count;
  drawOverlay();
  if (app.dirty) { updateViewLine(); app.dirty = false; }
}

// ---- input ----------------------------------------------------------------------------------
function zoomAt(px, py, factor) {
  const cam = app.camera;
  app.moved = true;
  const [wx, wz] = cam.toWorld(px, py);
  cam.scale = Math.min(64, Math.max(0.02, cam.scale * factor));
  // Keep the point under the cursor where it was.
  cam.cx = wx - (px - cam.w / 2) / cam.scale;
  cam.cz = wz - (py - cam.h / 2) / cam.scale;
  viewChanged();
}

function setupInput() {
  const stage = $("overlay-layer");
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    drag = { x: e.offsetX, y: e.offsetY, cx: app.camera.cx, cz: app.camera.cz, moved: false };
    stage.setPointerCapture(e.pointerId);
  });
  stage.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (drag.moved) {
      app.moved = true;
      app.camera.cx = drag.cx - dx / app.camera.scale;
      app.camera.cz = drag.cz - dy / app.camera.scale;
      viewChanged();
    }
  });
  stage.addEventListener("pointerup", (e) => {
    if (drag && !drag.moved) select(pick(e.offsetX, e.offsetY));
    drag = null;
  });
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
  $("zoom-in").onclick = () => zoomAt(app.camera.w / 2, app.camera.h / 2, 2);
  $("zoom-out").onclick = () => zoomAt(app.camera.w / 2, app.camera.h / 2, 0.5);
  $("fit").onclick = fit;
  $("colour-by").onchange = (e) => { app.colourBy = e.target.value; app.colourChosen = true; recolour(); };
  $("key-form").onsubmit = (e) => {
    e.preventDefault();
    const k = $("key").value.trim();
    if (!k) return;
    sessionStorage.setItem(KEY_STORE, k);
    $("key").value = "";
    connect();
  };
  $("forget").onclick = () => {
    sessionStorage.removeItem(KEY_STORE);
    stop();
    $("forget").hidden = true;
    connState("idle", "not connected: enter the API key");
  };
  window.addEventListener("resize", () => { resize(); app.mapDirty = true; });
}

// ---- figures for tests and measurements -----------------------------------------------------
function figures() {
  return {
    state: document.body.dataset.state || "idle",
    renderer: app.renderer.kind,
    fps: app.fpsTimes.length,
    frames: app.frames,
    resets: app.resets,
    protocol: app.protocol,
    binaryFrames: app.binaryFrameCount,
    streamBytes: app.streamBytes,
    tick: app.frame.tick,
    count: app.frame.count,
    drawn: app.drawn,
    subscription: app.subscription,
    subscribed: app.subscribed,
    camera: { cx: app.camera.cx, cz: app.camera.cz, scale: app.camera.scale, w: app.camera.w, h: app.camera.h },
    legend: app.legend,
    selected: app.selected ? { id: app.selected.id, record: app.selected.record, error: app.selected.error, track: app.selected.track.length,
      stored: app.selected.stored.length, clickedTick: app.selected.clickedTick, storedFirst: app.selected.stored[0] || null, trackError: app.selected.trackError } : null,
    perf: app.perfLast ? { window_ticks_per_sec: app.perfLast.window_ticks_per_sec, shown: $("perf-tps").textContent } : null,
    banners: [...app.banners.keys()],
    map: app.map ? { size: app.map.size, edits: app.map.edits } : null,
    agents: app.agents.length,
  };
}

// Screen position of an NPC in view (for tests that click one), or null.
function screenOf(id) {
  const f = app.frame;
  for (let k = 0; k < f.count; k++) {
    if (f.ids[k] === id) {
      const r = $("overlay-layer").getBoundingClientRect();
      const [x, y] = app.camera.toScreen(f.pos[k * 3], f.pos[k * 3 + 2]);
      return { x: r.left + x, y: r.top + y };
    }
  }
  return null;
}

// The colour index an NPC is drawn with in the latest frame (0: not known yet; then by role
// ROLE_NAMES's order from 1, by status STATUS_NAMES's), or null when it is not in view.
function colourOf(id) {
  const f = app.frame;
  for (let k = 0; k < f.count; k++) if (f.ids[k] === id) return f.colour[k];
  return null;
}

// Some NPC near the middle of the view, for tests.
function someId() {
  const f = app.frame;
  const cam = app.camera;
  let best = null, bestD = Infinity;
  for (let k = 0; k < f.count; k++) {
    const [x, y] = cam.toScreen(f.pos[k * 3], f.pos[k * 3 + 2]);
    const d = Math.abs(x - cam.w / 2) + Math.abs(y - cam.h / 2);
    if (d < bestD) { bestD = d; best = f.ids[k]; }
  }
  return best;
}

// The first `n` NPCs of the latest frame as [id, x, z], for tests.
function positions(n) {
  const f = app.frame;
  const out = [];
  for (let k = 0; k < Math.min(n, f.count); k++) out.push([f.ids[k], f.pos[k * 3], f.pos[k * 3 + 2]]);
  return out;
}

// Whether WebGL runs on a GPU (probed on a canvas of its own, then released).
function gpuWebGl() {
  const gl = document.createElement("canvas").getContext("webgl");
  if (!gl) return false;
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  const lose = gl.getExtension("WEBGL_lose_context");
  if (lose) lose.loseContext();
  return !/swiftshader|llvmpipe|softpipe|software/i.test(name);
}

// ---- start ----------------------------------------------------------------------------------
function start() {
  takeKeyFromAddress();
  const params = new URLSearchParams(location.hash.slice(1));
  // "webgl" or "canvas" forces one; otherwise WebGL where a GPU draws it. A software WebGL
  // (SwiftShader, llvmpipe: headless browsers, machines without a GPU) draws 100k points
  // several times slower than the 2D canvas through typed arrays (BENCHMARKS.md).
  const want = params.get("renderer");
  app.binaryFrames = params.get("frames") !== "json";
  let cv = $("points-layer");
  if (want === "webgl" || (want !== "canvas" && gpuWebGl())) {
    try { app.renderer = new GlRenderer(cv); } catch (e) {
      // A canvas that handed out a WebGL context can't give a 2D one: use a fresh one.
      const fresh = cv.cloneNode(false);
      cv.replaceWith(fresh);
      cv = fresh;
    }
  }
  if (!app.renderer) app.renderer = new CanvasRenderer(cv);
  buildPerf();
  resize();
  setupInput();
  recolour();
  window.viewer = Object.freeze({ figures, screenOf, someId, positions, zoomAt, fit, colourOf });
  requestAnimationFrame(loop);
  connect();
}

start();
