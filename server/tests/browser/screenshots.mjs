// The README's screenshots of the viewer: a plain world and a mining colony, each after a few
// seconds of running, with one NPC selected.
//
//   GAME_SERVER=target/release/examples/game_server node server/tests/browser/screenshots.mjs docs
//
// Writes DIR/viewer-plain.png and DIR/viewer-mining.png (960 x 600).
import { join, resolve } from "node:path";
import { KEY, startServer, launch, figures, until } from "./lib.mjs";

const out = resolve(process.argv[2] || "docs");

async function shoot(name, args, prepare) {
  const server = await startServer(["--port", "0", "--storage", "memory", ...args]);
  const browser = await launch({ gl: true });
  try {
    const page = await browser.context.newPage();
    await page.setViewportSize({ width: 960, height: 600 });
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

await shoot("plain", ["--npcs", "20000"], async (page) => {
  await page.evaluate(() => window.viewer.zoomAt(480 - 150, 300, 2.5));
});
await shoot("mining", ["--npcs", "0", "--agents", "400"], async (page) => {
  await until("the map", async () => (await figures(page)).map !== null, 30000);
  await page.evaluate(() => window.viewer.fit());
});
