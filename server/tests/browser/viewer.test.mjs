// End-to-end test of the viewer in headless Chromium: game_server with 10k NPCs, the page
// opened, the key typed; points drawn and moving, a click shows the API's record, zooming
// changes the subscription, the performance panel agrees with /api/performance, a wrong key
// is refused, a key in the fragment is taken out of the address, and the viewer reconnects to
// a restarted server and shows the resumed world. Positions stream as binary frames
// (terrarium.binary.v2, with each NPC's role and status: an NPC whose role changes is redrawn
// in its new colour with the /api/world/npcs poll blocked) on the first page and as JSON on the
// second (#frames=json).
// Screenshot: target/viewer-artifacts/.
//
//   node server/tests/browser/viewer.test.mjs     (GAME_SERVER=path/to/game_server to pick a build)
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { KEY, ROOT, startServer, launch, figures, until, getJson, postJson, pointPixels, load, devRoutes } from "./lib.mjs";

const started = Date.now();
const artifacts = join(ROOT, "target/viewer-artifacts");
mkdirSync(artifacts, { recursive: true });
const log = (...a) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)} s]`, ...a);

let server = null;
let browser = null;
const leaked = []; // URLs that carried the key
let page = null;

async function main() {
  server = await startServer(["--port", "0", "--npcs", "10000", "--tick-hz", "20", "--checkpoint-every", "200"]);
  log("game_server at", server.base);
  browser = await launch({ gl: true });
  page = await browser.context.newPage();
  await devRoutes(page);
  page.on("request", (r) => { if (r.url().includes(KEY)) leaked.push(r.url()); });
  page.on("pageerror", (e) => log("page error:", e.message));
  const listPolls = []; // /api/world/npcs requests: [when, url]
  page.on("request", (r) => { if (r.url().includes("/api/world/npcs")) listPolls.push([Date.now(), r.url()]); });

  // --- a wrong key is refused, and not kept --------------------------------------------------
  await page.goto(server.base + "/");
  await page.fill("#key", "not-the-key-not-the-key-not-the-key-0000");
  await page.click("#connect");
  await until("the wrong key's error", async () => (await figures(page)).state === "error");
  const f0 = await figures(page);
  assert.ok(f0.banners.includes("conn"), "a banner says the key was refused");
  assert.match(await page.textContent("#banners"), /refused this API key/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("terrarium.key")), null, "a refused key is not kept");
  log("wrong key: refused");

  // --- the right key: points drawn -------------------------------------------------------------
  await page.fill("#key", KEY);
  await page.click("#connect");
  const f1 = await until("points in view", async () => {
    const f = await figures(page);
    return f.state === "live" && f.count > 50 && f.drawn === f.count ? f : null;
  });
  const px1 = await until("lit pixels", async () => { const p = await pointPixels(page); return p.lit > 50 ? p : null; });
  // The points came in binary frames (the viewer offers terrarium.binary.v2 first and the
  // server selected it); the JSON path is checked on the second page below (#frames=json).
  assert.equal(f1.protocol, "terrarium.binary.v2", "the server selected the binary frames with role and status");
  assert.ok(f1.binaryFrames > 0 && f1.binaryFrames === f1.frames, `every position frame was binary (${f1.binaryFrames} of ${f1.frames})`);
  assert.ok(f1.streamBytes > 0 && f1.streamBytes < f1.frames * (24 + 16 * 10000 + 8 * 10000), "binary frames are at most 16 bytes an NPC plus gone ids and role/status entries");
  log(`live: ${f1.count} NPCs in view, ${px1.lit} lit pixels, renderer ${f1.renderer}, ${f1.binaryFrames} binary frames, ${(f1.streamBytes / f1.frames / 1024).toFixed(1)} KiB a frame`);

  // --- coloured by role, with a legend that counts them ----------------------------------------
  const legend = await until("the legend", async () => {
    const f = await figures(page);
    return f.legend.filter((l) => l.count > 0).length >= 3 ? f.legend : null;
  });
  const pxc = await until("points in several colours", async () => { const p = await pointPixels(page); return p.colours >= 3 ? p : null; });
  assert.ok((await page.textContent("#legend")).includes("miner"), "the legend names the roles");
  log(`legend: ${legend.map((l) => `${l.name} ${l.count}`).join(", ")}; ${pxc.colours} colours drawn`);

  // --- the colours come from the frames: with the /api/world/npcs poll blocked, an NPC whose
  // role changes (an order) is redrawn in its new role's colour ------------------------------
  let blocked = 0;
  await page.route("**/api/world/npcs*", (route) => { blocked++; return route.abort(); });
  const who = await page.evaluate(() => window.viewer.someId());
  const was = await page.evaluate((id) => window.viewer.colourOf(id), who);
  assert.ok(was >= 1 && was <= 5, `NPC ${who} is coloured by its role (index ${was})`);
  // Colour indices by role: 1 miner, 2 builder, 3 guard, 4 trader, 5 scout.
  const [role, want] = was === 5 ? ["guard", 3] : ["scout", 5];
  assert.equal(await postJson(server.base, `/api/npcs/${who}/orders`, { order: "set_role", role }), 202);
  const recoloured = Date.now();
  await until(`NPC ${who} drawn as a ${role}`, async () => (await page.evaluate((id) => window.viewer.colourOf(id), who)) === want, 5000);
  await page.unroute("**/api/world/npcs*");
  log(`colours from frames: NPC ${who} ${was} -> ${want} (${role}) in ${Date.now() - recoloured} ms, ${blocked} polls of /api/world/npcs blocked meanwhile`);
  // The frames come from the world; the API's record from storage, which trails it by a batch
  // (the registry is scanned every 500 ms of simulated time). The NPC clicked below is often
  // this one: wait until its new role is stored, or the page may fetch the old record and the
  // API the new one (seen once under load, 3 December).
  await until(`NPC ${who}'s new role stored`, async () => (await getJson(server.base, "/api/npcs/" + who)).role === role, 10000, 200);

  // --- they move between two frames ----------------------------------------------------------
  const sample = () => page.evaluate(() => {
    const id = window.viewer.someId();
    return { id, at: window.viewer.screenOf(id), frames: window.viewer.figures().frames };
  });
  const before = await page.evaluate(() => {
    const f = window.viewer.figures();
    return { frames: f.frames, tick: f.tick };
  });
  const p0 = await page.evaluate(() => window.viewer.positions(300));
  await until("two more frames", async () => (await figures(page)).frames >= before.frames + 2);
  const p1 = await page.evaluate(() => window.viewer.positions(300));
  let moved = 0, same = 0;
  for (const [id, x, z] of p0) {
    const q = p1.find((e) => e[0] === id);
    if (!q) continue;
    if (q[1] !== x || q[2] !== z) moved++; else same++;
  }
  assert.ok(moved > 0, `some NPCs moved between two frames (moved ${moved}, still ${same})`);
  const px2 = await pointPixels(page);
  assert.notEqual(px2.sum, px1.sum, "the drawn pixels changed");
  assert.ok((await figures(page)).tick > before.tick, "the frame's tick advanced");
  log(`moving: ${moved} of ${moved + same} sampled NPCs moved`);

  // --- click an NPC: the record the API returns ------------------------------------------------
  // Storage trails the world by a batch: wait until an NPC near the middle is stored.
  const target = await sample();
  assert.ok(target.at, "an NPC is on screen");
  await page.mouse.click(target.at.x, target.at.y);
  const sel = await until("the clicked NPC's record", async () => {
    const f = await figures(page);
    return f.selected && f.selected.record ? f.selected : null;
  });
  const api = await getJson(server.base, "/api/npcs/" + sel.id);
  for (const k of ["id", "role", "swarm", "agent", "health"]) assert.deepEqual(sel.record[k], api[k], `record field ${k}`);
  const shown = await page.textContent("#selected-record");
  assert.ok(shown.includes(api.role) && shown.includes(String(api.id)), "the panel shows the record");
  log(`click: NPC ${sel.id} (${api.role}, ${api.status}) shown as the API returns it`);

  // --- and its recent track, from the server's storage (not only what the page saw) ------------
  const withTrack = await until("the stored track", async () => {
    const s = (await figures(page)).selected;
    return s && s.stored > 1 ? s : null;
  });
  const track = await getJson(server.base, `/api/npcs/${sel.id}/track?limit=1000`);
  assert.ok(track.points.length > 1, "the API has a track");
  assert.deepEqual(withTrack.storedFirst, track.points[0], "the viewer draws the track the API returns");
  assert.ok(withTrack.storedFirst[0] < sel.clickedTick, `the track goes back before the click (tick ${withTrack.storedFirst[0]} < ${sel.clickedTick})`);
  assert.match(await page.textContent("#selected-record"), /stored track\s*\d+ positions, ticks \d+/);
  log(`track: ${withTrack.stored} stored positions from tick ${withTrack.storedFirst[0]} (clicked at ${sel.clickedTick})`);

  // --- zooming changes the subscription --------------------------------------------------------
  const sub0 = (await figures(page)).subscribed;
  const zoomedAt = Date.now();
  await page.click("#zoom-in");
  const sub1 = await until("a new subscription", async () => {
    const s = (await figures(page)).subscribed;
    return s && JSON.stringify(s) !== JSON.stringify(sub0) ? s : null;
  });
  const area = (s) => (s.max[0] - s.min[0]) * (s.max[1] - s.min[1]);
  assert.ok(area(sub1) < area(sub0) * 0.5, `zooming in shrinks the area (${area(sub0)} -> ${area(sub1)})`);
  await until("the smaller area streamed", async () => { const f = await figures(page); return f.count > 0 && f.count < f1.count; });
  log(`zoom: subscription ${JSON.stringify(sub0)} -> ${JSON.stringify(sub1)}`);
  // With v2 frames the viewer asks /api/world/npcs for the agents only (a new area asks at once).
  const sinceZoom = await until("a poll for the new area", async () => {
    const p = listPolls.filter(([at]) => at >= zoomedAt);
    return p.length ? p : null;
  });
  assert.ok(sinceZoom.every(([, u]) => u.includes("npcs=false")), `agents only: ${sinceZoom.map(([, u]) => u).join(" ")}`);
  await page.click("#zoom-out");
  await until("the wider area streamed again", async () => (await figures(page)).count >= f1.count * 0.8);

  // --- the performance panel shows the tick rate /api/performance gives ------------------------
  await until("a few performance samples", async () => {
    const f = await figures(page);
    return f.perf && f.perf.window_ticks_per_sec > 0;
  });
  const perf = await getJson(server.base, "/api/performance");
  const shownTps = parseFloat(await page.textContent("#perf-tps"));
  assert.ok(Math.abs(shownTps - perf.window_ticks_per_sec) <= 1.0,
    `panel ticks/s ${shownTps} vs /api/performance ${perf.window_ticks_per_sec}`);
  log(`performance: panel ${shownTps} ticks/s, API ${perf.window_ticks_per_sec}`);

  await page.screenshot({ path: join(artifacts, "viewer-e2e.png") });

  // --- storage degraded: the banner says so, and positions still stream -----------------------
  // The Rust test (server/tests/game_server/viewer.rs, with_storage_down_…) kills a database
  // and checks these fields of /api/performance; here they are set on the page's copy.
  await page.route("**/api/performance", async (route) => {
    const res = await route.fetch();
    const p = await res.json();
    p.write_behind = { ...(p.write_behind || {}), degraded: true, breaker_open: true, outbox_batches: 3 };
    p.circuit_breakers = [{ name: "storage.embedded.writes", state: "open" }, ...(p.circuit_breakers || []).slice(1)];
    await route.fulfill({ response: res, json: p });
  });
  await until("the storage banner", async () => (await figures(page)).banners.includes("storage"));
  const storageText = await page.textContent('[data-banner="storage"]');
  assert.match(storageText, /Storage is degraded \(circuit breaker open\): positions still stream; writes wait in the write-behind queue and the outbox\./);
  const framesDegraded = (await figures(page)).frames;
  await until("frames while storage is degraded", async () => (await figures(page)).frames >= framesDegraded + 2);
  await page.screenshot({ path: join(artifacts, "viewer-storage-degraded.png") });
  await page.unroute("**/api/performance");
  await until("the storage banner gone", async () => !(await figures(page)).banners.includes("storage"));
  log(`storage banner: "${storageText}"; frames went on`);

  // --- a key in the fragment: taken, kept for the tab, out of the address ----------------------
  const page2 = await browser.context.newPage();
  await devRoutes(page2);
  page2.on("request", (r) => { if (r.url().includes(KEY)) leaked.push(r.url()); });
  // The other renderer too: this page forces WebGL (the first one chose the canvas when
  // WebGL was software). And JSON frames, as a client that does not offer the binary ones.
  const other = f1.renderer === "webgl" ? "canvas" : "webgl";
  await page2.goto(server.base + "/#key=" + encodeURIComponent(KEY) + "&renderer=" + other + "&frames=json");
  await until("live from the fragment's key", async () => (await figures(page2)).state === "live");
  assert.equal(await page2.evaluate(() => location.hash), "#renderer=" + other + "&frames=json", "the key left the address bar");
  const f2 = await until("points drawn by the other renderer", async () => {
    const f = await figures(page2);
    return f.count > 0 && f.drawn === f.count ? f : null;
  });
  assert.equal(f2.renderer, other);
  assert.equal(f2.protocol, "terrarium.v1", "without the offer, JSON frames");
  assert.ok(f2.frames > 0 && f2.binaryFrames === 0, "JSON frames drew these points");
  const px = await until("its lit pixels", async () => { const p = await pointPixels(page2); return p.lit > 50 ? p : null; });
  // JSON frames carry no role or status: the colours come from the /api/world/npcs poll.
  await until("colours from the poll", async () => (await figures(page2)).legend.filter((l) => l.count > 0).length >= 3);
  log(`${other}: ${f2.count} NPCs, ${px.lit} lit pixels`);
  assert.equal(await page2.evaluate(() => sessionStorage.getItem("terrarium.key")), KEY);
  await page2.close();
  assert.deepEqual(leaked, [], "no request URL carried the key");
  log("fragment key: taken and removed from the address");

  // --- a restarted server: the viewer reconnects and shows the resumed world -------------------
  const tickBefore = (await figures(page)).tick;
  const port = new URL(server.base).port;
  const dir = server.dir;
  const code = await server.stop();
  assert.equal(code, 0, "game_server stopped cleanly");
  await until("the viewer to notice", async () => (await figures(page)).state === "reconnecting", 10000);
  server = await startServer(["--port", port, "--npcs", "10000", "--tick-hz", "20"], { dataDir: dir });
  const framesAtRestart = (await figures(page)).frames;
  const f3 = await until("live again with the resumed world", async () => {
    const f = await figures(page);
    return f.state === "live" && f.frames > framesAtRestart + 1 && f.count > 0 ? f : null;
  }, 30000);
  const world = await getJson(server.base, "/api/world");
  assert.ok(f3.tick >= tickBefore - 200, `the resumed world goes on from about tick ${tickBefore} (now ${f3.tick})`);
  assert.equal(world.npcs, 10000);
  log(`restart: reconnected, tick ${tickBefore} -> ${f3.tick}`);
  await server.stop();
  server.cleanup();
  server = null;
}

try {
  await main();
  console.log(`viewer browser test: ok in ${((Date.now() - started) / 1000).toFixed(1)} s (load ${load()})`);
} catch (e) {
  console.error("viewer browser test FAILED:", e);
  if (page) await page.screenshot({ path: join(artifacts, "viewer-e2e-failure.png") }).catch(() => {});
  if (server) console.error("game_server stderr:\n" + server.stderr());
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  if (server) { await server.stop().catch(() => {}); server.cleanup(); }
}
