// The viewer's stream worker: holds the WebSocket to /ws, parses its JSON frames off the page's
// thread and keeps the NPCs of the subscribed area in typed arrays (a slot per NPC, removed by
// swapping the last slot in). After each frame it posts a copy of the arrays to the page.
//
// Page -> worker: {type:"connect", url, protocols}, {type:"subscribe", min, max},
//                 {type:"colours", ids: Float64Array, colour: Uint8Array}, {type:"close"}
// Worker -> page: {type:"open"|"hello"|"subscribed"|"error"|"closed", ...},
//                 {type:"frame", tick, reset, count, ids, pos, colour, behind}
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
  const id = e[0];
  let s = slot.get(id);
  if (s === undefined) {
    grow(count + 1);
    s = count++;
    slot.set(id, s);
    ids[s] = id;
    const c = colourOf.get(id);
    colour[s] = c === undefined ? 0 : c;
  }
  pos[s * 3] = e[1];
  pos[s * 3 + 1] = e[2];
  pos[s * 3 + 2] = e[3];
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

function post(tick, reset, behind) {
  const i = ids.slice(0, count);
  const p = pos.slice(0, count * 3);
  const c = colour.slice(0, count);
  self.postMessage({ type: "frame", tick, reset, behind, count, ids: i, pos: p, colour: c },
    [i.buffer, p.buffer, c.buffer]);
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function onMessage(ev) {
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
      post(m.tick, true, behind);
      break;
    }
    case "delta": {
      const mv = m.moved, gone = m.gone;
      for (let k = 0; k < mv.length; k++) put(mv[k]);
      for (let k = 0; k < gone.length; k++) remove(gone[k]);
      // More than three frames' worth of ticks between two deltas: frames were merged late.
      const behind = lastTick >= 0 && m.tick - lastTick > 3 * Math.max(1, tickHz / helloHz);
      lastTick = m.tick;
      post(m.tick, false, behind);
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
