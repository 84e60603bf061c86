// The viewer's stream worker: holds the WebSocket to /ws, reads its frames off the page's
// thread and keeps the NPCs of the subscribed area in typed arrays (a slot per NPC, removed by
// swapping the last slot in). After each frame it posts a copy of the arrays to the page.
// Position frames come as JSON text, or, when the server selected `terrarium.binary.v1`, as
// binary messages read through typed-array views (layout: the server's
// `protocol::BinaryFrame`).
//
// Page -> worker: {type:"connect", url, protocols}, {type:"subscribe", min, max},
//                 {type:"colours", ids: Float64Array, colour: Uint8Array}, {type:"close"}
// Worker -> page: {type:"open"|"hello"|"subscribed"|"error"|"closed", ...},
//                 {type:"frame", tick, reset, count, ids, pos, colour, behind, binary, bytes}
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
const slot = new Map(); // id -> slot
const colourOf = new Map(); // id -> colour index (from the page)

function grow(n) {
  if (n <= cap) return;
  while (cap < n) cap *= 2;
  const i = new Float64Array(cap); i.set(ids.subarray(0, count)); ids = i;
  const p = new Float32Array(cap * 3); p.set(pos.subarray(0, count * 3)); pos = p;
  const c = new Uint8Array(cap); c.set(colour.subarray(0, count)); colour = c;
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
    const c = colourOf.get(id);
    colour[s] = c === undefined ? 0 : c;
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
    slot.set(moved, s);
  }
}

function post(tick, reset, behind, binary, bytes) {
  const i = ids.slice(0, count);
  const p = pos.slice(0, count * 3);
  const c = colour.slice(0, count);
  self.postMessage({ type: "frame", tick, reset, behind, binary, bytes, count, ids: i, pos: p, colour: c },
    [i.buffer, p.buffer, c.buffer]);
}

// A binary position frame: a 24-byte header (kind u8: 1 reset, 2 delta; flags u8: bit 0 u64
// ids; u16 0; moved u32; gone u32; u32 0; tick u64), then the moved ids (u32 or u64), their
// x y z (f32), padding to the id width, the gone ids. Little-endian throughout. A message whose
// counts don't match its length is dropped.
function onBinary(buf) {
  if (buf.byteLength < 24) return;
  const dv = new DataView(buf);
  const kind = dv.getUint8(0), wide = dv.getUint8(1) === 1;
  const n = dv.getUint32(4, true), g = dv.getUint32(8, true);
  const tick = dv.getUint32(16, true) + dv.getUint32(20, true) * 4294967296;
  const w = wide ? 8 : 4;
  const posAt = 24 + n * w;
  const goneAt = Math.ceil((posAt + n * 12) / w) * w;
  if ((kind !== 1 && kind !== 2) || goneAt + g * w !== buf.byteLength) return;
  // Typed-array views need little-endian hosts (every browser's): fall back to the DataView.
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const idAt = wide
    ? (k, at) => dv.getUint32(at + k * 8, true) + dv.getUint32(at + k * 8 + 4, true) * 4294967296
    : le ? ((v) => (k) => v[k])(new Uint32Array(buf, 24, n)) : (k, at) => dv.getUint32(at + k * 4, true);
  const p = le ? new Float32Array(buf, posAt, n * 3) : null;
  const f = p ? (k) => p[k] : (k) => dv.getFloat32(posAt + k * 4, true);
  let behind;
  if (kind === 1) {
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
  lastTick = tick;
  post(tick, kind === 1, behind, true, buf.byteLength);
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
    case "colours": {
      const n = m.ids.length;
      colourOf.clear();
      for (let k = 0; k < n; k++) colourOf.set(m.ids[k], m.colour[k]);
      for (let s = 0; s < count; s++) {
        const c = colourOf.get(ids[s]);
        colour[s] = c === undefined ? 0 : c;
      }
      break;
    }
    case "close":
      closing = true;
      if (ws) ws.close(1000, "viewer closed");
      break;
    default:
      break;
  }
};
