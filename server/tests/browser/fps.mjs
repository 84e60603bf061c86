// Frame rate of the viewer in headless Chromium with every NPC of a large world in view:
// starts game_server (use a release build), opens the viewer once per renderer, waits until the
// whole population streams in, then counts animation frames (each one draws every point) for
// --seconds. Prints one JSON line per renderer, and the load average.
//
//   cargo build --release -p terrarium-server --example game_server
//   GAME_SERVER=target/release/examples/game_server node server/tests/browser/fps.mjs --npcs 100000
//
// Flags: --npcs N (100000), --seconds S (10), --renderer webgl|canvas|both (both), --side B
// (1024: the world is B x B blocks, so one subscription covers it), --screenshot FILE (a PNG of
// the WebGL run's page), --storage KIND (none: the measurement is of drawing, not of storage),
// --frames binary|json (binary: the viewer's default, terrarium.binary.v2 with role/status, v1 from an older server; json: #frames=json).
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KEY, startServer, launch, figures, until, load, devRoutes } from "./lib.mjs";

const opt = { npcs: 100000, seconds: 10, renderer: "both", side: 1024, screenshot: null, storage: "none", frames: "binary" };
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, "");
  if (!(k in opt)) { console.error(`unknown flag --${k}`); process.exit(2); }
  opt[k] = typeof opt[k] === "number" ? Number(process.argv[i + 1]) : process.argv[i + 1];
}

const dir = mkdtempSync(join(tmpdir(), "terrarium-fps-"));
const config = join(dir, "world.toml");
writeFileSync(config, `[engine.world]\nmin = [0.0, 0.0, 0.0]\nmax = [${opt.side}.0, 256.0, ${opt.side}.0]\n`);
const server = await startServer(["--port", "0", "--npcs", String(opt.npcs), "--storage", opt.storage, "--config", config]);
const renderers = opt.renderer === "both" ? ["webgl", "canvas"] : [opt.renderer];
let failed = false;
try {
  for (const r of renderers) {
    const browser = await launch({ gl: r === "webgl" });
    try {
      const page = await browser.context.newPage();
      page.setDefaultTimeout(120000);
      await devRoutes(page);
      await page.goto(`${server.base}/#key=${encodeURIComponent(KEY)}&renderer=${r}` + (opt.frames === "json" ? "&frames=json" : ""));
      await until("the whole population in view", async () => {
        const f = await figures(page);
        return f.state === "live" && f.count >= opt.npcs * 0.99;
      }, 120000, 500);
      const f0 = await figures(page);
      // Count animation frames in the page for the whole period.
      const measured = await page.evaluate(async (seconds) => {
        const f0 = window.viewer.figures();
        let frames = 0;
        const t0 = performance.now();
        let worst = 0, last = t0;
        await new Promise((done) => {
          const step = (now) => {
            frames++;
            worst = Math.max(worst, now - last);
            last = now;
            if (now - t0 < seconds * 1000) requestAnimationFrame(step); else done();
          };
          requestAnimationFrame(step);
        });
        const f1 = window.viewer.figures();
        const s = (performance.now() - t0) / 1000;
        return { fps: frames / s, worst_frame_ms: worst, stream_frames_per_s: (f1.frames - f0.frames) / s, in_view: f1.count, drawn: f1.drawn,
          bytes_per_stream_frame: (f1.streamBytes - f0.streamBytes) / Math.max(1, f1.frames - f0.frames), protocol: f1.protocol };
      }, opt.seconds);
      const out = {
        renderer: f0.renderer, npcs: opt.npcs, in_view: measured.in_view, drawn: measured.drawn,
        fps: Number(measured.fps.toFixed(1)), worst_frame_ms: Number(measured.worst_frame_ms.toFixed(1)),
        stream_frames_per_s: Number(measured.stream_frames_per_s.toFixed(1)), protocol: measured.protocol,
        bytes_per_stream_frame: Math.round(measured.bytes_per_stream_frame), seconds: opt.seconds, load: load(),
      };
      console.log(JSON.stringify(out));
      if (opt.screenshot && r === renderers[0]) await page.screenshot({ path: opt.screenshot });
    } finally {
      await browser.close();
    }
  }
} catch (e) {
  console.error("fps measurement failed:", e, "\n" + server.stderr());
  failed = true;
} finally {
  await server.stop();
  server.cleanup();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
