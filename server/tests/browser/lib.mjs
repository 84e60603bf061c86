// What the viewer's browser test and measurements share: starting game_server, launching
// Debian's chromium headless through playwright-core, reading the viewer's figures.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir, loadavg } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/// A key as long as a real one must be (the server refuses short keys).
export const KEY = "viewer-test-key-0123456789abcdef0123456789";

/// The game_server binary: $GAME_SERVER, else the debug build in the workspace's target dir.
export function gameServerPath() {
  const p = process.env.GAME_SERVER || join(ROOT, "target/debug/examples/game_server");
  if (!existsSync(p)) throw new Error(`no game_server at ${p}: build it (cargo build -p terrarium-server --example game_server) or set GAME_SERVER`);
  return p;
}

/// The chromium executable: $CHROMIUM, else Debian's.
export function chromiumPath() {
  for (const p of [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (p && existsSync(p)) return p;
  }
  return null;
}

/// Starts game_server with `args`; resolves once it printed its address.
export async function startServer(args, { env = {}, dataDir = null, key = KEY } = {}) {
  const dir = dataDir || mkdtempSync(join(tmpdir(), "terrarium-viewer-"));
  const child = spawn(gameServerPath(), ["--data-dir", dir, ...args], {
    env: { ...process.env, TERRARIUM_SERVER__API_KEY: key, RUST_LOG: process.env.RUST_LOG || "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; if (stderr.length > 20000) stderr = stderr.slice(-20000); });
  const lines = createInterface({ input: child.stdout });
  const base = await new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error("game_server did not start in 60 s\n" + stderr)), 60000);
    lines.on("line", (l) => {
      const m = /^listening on (http:\/\/\S+)/.exec(l);
      if (m) { clearTimeout(t); ok(m[1]); }
    });
    child.on("exit", (code) => { clearTimeout(t); fail(new Error(`game_server exited (${code})\n${stderr}`)); });
  });
  return {
    base, dir, child,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      const done = new Promise((ok) => child.on("exit", (c) => ok(c)));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 30000);
      const code = await done;
      clearTimeout(t);
      return code;
    },
    cleanup() { if (!dataDir) rmSync(dir, { recursive: true, force: true }); },
  };
}

/// Headless chromium in a fresh profile. `gl`: let WebGL run on SwiftShader (software).
export async function launch({ gl = true } = {}) {
  const exe = chromiumPath();
  if (!exe) throw new Error("no chromium (apt-get install chromium)");
  const profile = mkdtempSync(join(tmpdir(), "terrarium-chromium-"));
  const args = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    // Headless pages are throttled when in the background; a measurement needs every frame.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
  ];
  if (gl) args.push("--enable-unsafe-swiftshader", "--use-angle=swiftshader");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: exe, headless: true, args, viewport: { width: 1280, height: 800 },
  });
  return {
    context,
    async close() { await context.close(); rmSync(profile, { recursive: true, force: true }); },
  };
}

/// The viewer's own figures (window.viewer.figures()).
export function figures(page) {
  return page.evaluate(() => window.viewer.figures());
}

/// Polls `f` until it returns a truthy value; fails with `what` after `ms`.
export async function until(what, f, ms = 20000, every = 100) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    last = await f();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/// GET a keyed route from node.
export async function getJson(base, path, key = KEY) {
  const res = await fetch(base + path, { headers: { "x-api-key": key } });
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

/// POST JSON to a keyed route from node; the answer's status.
export async function postJson(base, path, body, key = KEY) {
  const res = await fetch(base + path, {
    method: "POST",
    headers: { "x-api-key": key, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return res.status;
}

export function load() {
  return loadavg().map((v) => v.toFixed(2)).join(" ");
}

/// Non-transparent pixels of the points layer, a checksum of them and how many colours they
/// have (read in the page).
export function pointPixels(page) {
  return page.evaluate(() => {
    const src = document.getElementById("points-layer");
    const c = document.createElement("canvas");
    c.width = src.width; c.height = src.height;
    const g = c.getContext("2d");
    g.drawImage(src, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let lit = 0, sum = 0;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3]) { lit++; sum = (sum * 31 + i + d[i]) >>> 0; colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); }
    }
    return { lit, sum, colours: colours.size };
  });
}

/// With VIEWER_DIR set (to server/viewer), the page's own scripts and style are read from
/// there instead of the binary, so edits show without a rebuild. The worker (stream.js) is
/// always the binary's: a worker whose script Playwright fulfils can't open a WebSocket.
export async function devRoutes(page) {
  const dir = process.env.VIEWER_DIR;
  if (!dir) return;
  const { readFileSync } = await import("node:fs");
  await page.route(/\/viewer\/(app|render)\.js$|\/viewer\/style\.css$/, (route) => {
    const name = new URL(route.request().url()).pathname.split("/").pop();
    const type = name.endsWith(".css") ? "text/css" : "text/javascript";
    route.fulfill({ body: readFileSync(join(dir, name)), contentType: type });
  });
}
