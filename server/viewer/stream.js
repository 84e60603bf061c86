// The viewer's stream worker: holds the WebSocket to /ws, reads its frames off the page's
// thread and keeps the NPCs of the subscribed area in typed arrays (a slot per NPC, removed by
// swapping the last slot in). After each frame it posts a copy of the arrays to the page.
// Position frames come as JSON text, or, when the server selected `terrarium.binary.v2` (or
// v1), as binary messages read through typed-array views (layout: the server's
// `protocol::BinaryFrame`). v2 frames also carry each NPC's role and status, from which the
// worker colours the points; with v1 or JSON frames those come from the page's poll of
// /api/world/npcs instead ({type:"kinds"}).
//
// Page -> worker: {type:"connect", url, protocols}, {type:"subscribe", min, max},
//                 {type:"colourBy", by: "role"|"status"},
//                 {type:"kinds", ids: Float64Array, words: Uint32Array}, {type:"close"}
// Worker -> page: {type:"open"|"hello"|"subscribed"|"error"|"closed", ...},
//                 {type:"frame", tick, reset, count, ids, pos, colour, counts, behind, binary, bytes}
//
// A role/status word (u32): bits 0-16 the role's code (0 miner, 1 builder, 2 guard, 3 trader,
// 4 scout, 0x10000 | n other:n), bits 24-31 the status (0 idle, 1 moving, 2 mining, 3 returning,
// 4 depositing, 5 fleeing, 6 dead). Colour indices: 0 not known yet; by role 1-5 the built-in
// roles, 6 any other; by status 1-7.
"use strict";

let ws = null;
let url = null;
let protocols = [];
let wanted = null; // the area to subscribe to once open
let closing = false;
let retry = 0;
let expectReset = false;
let helloHz = 10;
let tickHz = 20;
let lastTick = -1;

let cap = 1024;
let count = 0;
let ids = new Float64Array(cap);
let pos = new Float32Array(cap * 3);
let colour = new Uint8Array(cap);
let kind = new Uint32Array(cap); // role/status word per slot, UNKNOWN when not known
const UNKNOWN = 0xFFFFFFFF;
const slot = new Map(); // id -> slot
const kindOf = new Map(); // id -> word, from the page's poll (v1 and JSON frames only)
let colourBy = "role";
const COLOURS = 8; // colour indices 0..7

function colourOfWord(w) {
  if (w === UNKNOWN) return 0;
  if (colourBy === "status") return Math.min((w >>> 24) + 1, COLOURS - 1);
  const role = w & 0x1FFFF;
  return role < 5 ? role + 1 : 6;
}

function setKind(s, w) {
  kind[s] = w;
  colour[s] = colourOfWord(w);
}

function grow(n) {
  if (n <= cap) return;
  while (cap < n) cap *= 2;
  const i = new Float64Array(cap); i.set(ids.subarray(0, count)); ids = i;
  const p = new Float32Array(cap * 3); p.set(pos.subarray(0, count * 3)); pos = p;
  const c = new Uint8Array(cap); c.set(colour.subarray(0, count)); colour = c;
  const k = new Uint32Array(cap); k.set(kind.subarray(0, count)); kind = k;
}

function clear() {
  count = 0;
  slot.clear();
}

function put(e) {
  putAt(e[0], e[1], e[2], e[3]);
}

function putAt(id, x, y, z) {
  let s = slot.get(id);
  if (s === undefined) {
    grow(count + 1);
    s = count++;
    slot.set(id, s);
    ids[s] = id;
    const w = kindOf.get(id);
    setKind(s, w === undefined ? UNKNOWN : w);
  }
  pos[s * 3] = x;
  pos[s * 3 + 1] = y;
  pos[s * 3 + 2] = z;
}

function remove(id) {
  const s = slot.get(id);
  if (s === undefined) return;
  slot.delete(id);
  const last = --count;
  if (s !== last) {
    const moved = ids[last];
    ids[s] = moved;
    pos[s * 3] = pos[last * 3];
    pos[s * 3 + 1] = pos[last * 3 + 1];
    pos[s * 3 + 2] = pos[last * 3 + 2];
    colour[s] = colour[last];
    kind[s] = kind[last];
    slot.set(moved, s);
  }
}

function post(tick, reset, behind, binary, bytes) {
  const i = ids.slice(0, count);
  const p = pos.slice(0, count * 3);
  const c = colour.slice(0, count);
  const counts = new Array(COLOURS).fill(0);
  for (let k = 0; k < count; k++) counts[c[k]]++;
  self.postMessage({ type: "frame", tick, reset, behind, binary, bytes, count, ids: i, pos: p, colour: c, counts },
    [i.buffer, p.buffer, c.buffer]);
}

// A binary position frame: a 24-byte header (kind u8: 1 reset, 2 delta; flags u8: bit 0 u64
// ids; u16 0; moved u32; gone u32; role/status entries u32 (v2; 0 in v1); tick u64), then the
// moved ids (u32 or u64), their x y z (f32), padding to the id width, the gone ids, and (v2)
// the ids with role/status entries and their words (u32). Little-endian throughout. A message
// whose counts don't match its length is dropped.
function onBinary(buf) {
  if (buf.byteLength < 24) return;
  const dv = new DataView(buf);
  const type = dv.getUint8(0), wide = dv.getUint8(1) === 1;
  const n = dv.getUint32(4, true), g = dv.getUint32(8, true), c = dv.getUint32(12, true);
  const tick = dv.getUint32(16, true) + dv.getUint32(20, true) * 4294967296;
  const w = wide ? 8 : 4;
  const posAt = 24 + n * w;
  const goneAt = Math.ceil((posAt + n * 12) / w) * w;
  const kindsAt = goneAt + g * w;
  const wordsAt = kindsAt + c * w;
  if ((type !== 1 && type !== 2) || wordsAt + c * 4 !== buf.byteLength) return;
  // Typed-array views need little-endian hosts (every browser's): fall back to the DataView.
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const idAt = wide
    ? (k, at) => dv.getUint32(at + k * 8, true) + dv.getUint32(at + k * 8 + 4, true) * 4294967296
    : le ? ((v) => (k) => v[k])(new Uint32Array(buf, 24, n)) : (k, at) => dv.getUint32(at + k * 4, true);
  const p = le ? new Float32Array(buf, posAt, n * 3) : null;
  const f = p ? (k) => p[k] : (k) => dv.getFloat32(posAt + k * 4, true);
  let behind;
  if (type === 1) {
    behind = !expectReset;
    expectReset = false;
    clear();
    grow(n);
  } else {
    behind = lastTick >= 0 && tick - lastTick > 3 * Math.max(1, tickHz / helloHz);
  }
  for (let k = 0; k < n; k++) putAt(idAt(k, 24), f(k * 3), f(k * 3 + 1), f(k * 3 + 2));
  const goneId = wide || !le ? (k) => idAt(k, goneAt) : ((v) => (k) => v[k])(new Uint32Array(buf, goneAt, g));
  for (let k = 0; k < g; k++) remove(goneId(k));
  // Role and status (v2): for every NPC of a reset, and those that entered or changed.
  if (c > 0) {
    const kindId = wide || !le ? (k) => idAt(k, kindsAt) : ((v) => (k) => v[k])(new Uint32Array(buf, kindsAt, c));
    const words = le ? new Uint32Array(buf, wordsAt, c) : null;
    for (let k = 0; k < c; k++) {
      const s = slot.get(kindId(k));
      if (s !== undefined) setKind(s, words ? words[k] : dv.getUint32(wordsAt + k * 4, true));
    }
  }
  lastTick = tick;
  post(tick, type === 1, behind, true, buf.byteLength);
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function onMessage(ev) {
  if (ev.data instanceof ArrayBuffer) { onBinary(ev.data); return; }
  let m;
  try { m = JSON.parse(ev.data); } catch (e) { return; }
  switch (m.type) {
    case "hello":
      helloHz = m.ws_hz; tickHz = m.tick_hz;
      self.postMessage(m);
      if (wanted) send({ type: "subscribe", min: wanted.min, max: wanted.max });
      break;
    case "subscribed":
      expectReset = true;
      self.postMessage(m);
      break;
    case "reset": {
      // A reset we did not ask for means the server skipped frames for us: we fell behind.
      const behind = !expectReset;
      expectReset = false;
      clear();
      const n = m.npcs;
      grow(n.length);
      for (let k = 0; k < n.length; k++) put(n[k]);
      lastTick = m.tick;
      post(m.tick, true, behind, false, ev.data.length);
      break;
    }
    case "delta": {
      const mv = m.moved, gone = m.gone;
      for (let k = 0; k < mv.length; k++) put(mv[k]);
      for (let k = 0; k < gone.length; k++) remove(gone[k]);
      // More than three frames' worth of ticks between two deltas: frames were merged late.
      const behind = lastTick >= 0 && m.tick - lastTick > 3 * Math.max(1, tickHz / helloHz);
      lastTick = m.tick;
      post(m.tick, false, behind, false, ev.data.length);
      break;
    }
    case "error":
      self.postMessage(m);
      break;
    default:
      break;
  }
}

function open() {
  closing = false;
  try {
    ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
  } catch (e) {
    self.postMessage({ type: "closed", code: 0, reason: String(e), retryMs: 1000 });
    return;
  }
  ws.onopen = () => { retry = 0; self.postMessage({ type: "open", protocol: ws.protocol }); };
  ws.onmessage = onMessage;
  ws.onclose = (ev) => {
    ws = null;
    if (closing) return;
    // Reconnect with a growing pause (a restarting server), at most 5 s.
    const wait = Math.min(5000, 250 * 2 ** Math.min(retry++, 5));
    self.postMessage({ type: "closed", code: ev.code, reason: ev.reason, retryMs: wait });
    setTimeout(() => { if (!closing) open(); }, wait);
  };
}

self.onmessage = (ev) => {
  const m = ev.data;
  switch (m.type) {
    case "connect":
      url = m.url; protocols = m.protocols || [];
      if (ws) { closing = true; ws.close(); }
      open();
      break;
    case "subscribe":
      wanted = { min: m.min, max: m.max };
      send({ type: "subscribe", min: m.min, max: m.max });
      break;
    case "kinds": {
      // From the poll, for frames without role/status (v1, JSON).
      const n = m.ids.length;
      kindOf.clear();
      for (let k = 0; k < n; k++) kindOf.set(m.ids[k], m.words[k]);
      for (let s = 0; s < count; s++) {
        const w = kindOf.get(ids[s]);
        if (w !== undefined) setKind(s, w);
      }
      break;
    }
    case "colourBy":
      colourBy = m.by;
      for (let s = 0; s < count; s++) colour[s] = colourOfWord(kind[s]);
      break;
    case "close":
      closing = true;
      if (ws) ws.close(1000, "viewer closed");
      break;
    default:
      break;
  }
};
