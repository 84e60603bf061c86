// The README's screenshots of the viewer: a plain world and a mining colony, each after a few
// seconds of running, with one NPC selected.
//
//   GAME_SERVER=target/release/examples/game_server node server/tests/browser/screenshots.mjs docs
//
// Writes DIR/viewer-plain.png and DIR/viewer-mining.png (960 x 600).
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { KEY, startServer, launch, figures, until, devRoutes } from "./lib.mjs";

const out = resolve(process.argv[2] || "docs");

async function shoot(name, args, prepare) {
  const server = await startServer(["--port", "0", "--storage", "memory", ...args]);
  const browser = await launch({ gl: true });
  try {
    const page = await browser.context.newPage();
    await page.setViewportSize({ width: 960, height: 600 });
    await devRoutes(page);
    await page.goto(`${server.base}/#key=${encodeURIComponent(KEY)}`);
    await until("points", async () => { const f = await figures(page); return f.state === "live" && f.count > 0; }, 60000);
    await prepare(page);
    // Let the legend, charts and record fill in.
    await new Promise((r) => setTimeout(r, 6000));
    const target = await page.evaluate(() => { const id = window.viewer.someId(); return window.viewer.screenOf(id); });
    if (target) await page.mouse.click(target.x, target.y);
    await new Promise((r) => setTimeout(r, 2500));
    await page.screenshot({ path: join(out, `viewer-${name}.png`) });
    console.log("wrote", join(out, `viewer-${name}.png`), JSON.stringify(await figures(page), (k, v) => (k === "legend" ? undefined : v)));
  } finally {
    await browser.close();
    await server.stop();
    server.cleanup();
  }
}

// The plain world: 20k wanderers on 768 x 768 blocks, all of it in view.
const dir = mkdtempSync(join(tmpdir(), "terrarium-shots-"));
writeFileSync(join(dir, "world.toml"), "[engine.world]\nmin = [0.0, 0.0, 0.0]\nmax = [768.0, 256.0, 768.0]\n");
await shoot("plain", ["--npcs", "20000", "--config", join(dir, "world.toml")], async () => {});
rmSync(dir, { recursive: true, force: true });
await shoot("mining", ["--npcs", "0", "--agents", "400"], async (page) => {
  await until("the map", async () => (await figures(page)).map !== null, 30000);
  await page.evaluate(() => window.viewer.fit());
});
