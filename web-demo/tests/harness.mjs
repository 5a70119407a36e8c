// What the browser test and the browser benchmark share: a static server for
// web-demo/ that counts requests, Chromium launched as the toolchain notes
// say (Debian's /usr/bin/chromium, WebGPU on SwiftShader), the native CLI
// run, and a user's visit to the page.
import http from "node:http";
import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const DEMO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = path.resolve(DEMO, "..");
export const MODEL = "models/tiny-bitnet-trained-i2s.gguf";
export const CLI = process.env.BITNET_CLI ?? path.join(ROOT, "target", "debug", "bitnet-cli");
export const BROWSER = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const TIMEOUT = 180_000;

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };

/** Serves web-demo/ on 127.0.0.1: `{ base, requests (path -> count), close }`. */
export async function serve() {
  const requests = new Map();
  const server = http.createServer(async (req, res) => {
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
    } catch {
      return res.writeHead(400).end("bad path");
    }
    if (rel === "/") rel = "/index.html";
    requests.set(rel, (requests.get(rel) ?? 0) + 1);
    const file = path.join(DEMO, path.normalize(rel));
    if (!file.startsWith(DEMO + path.sep)) return res.writeHead(403).end();
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": TYPES[path.extname(file)] ?? "application/octet-stream",
        "content-length": body.length,
        "cache-control": "no-store",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return { base: `http://127.0.0.1:${server.address().port}/`, requests, close: () => server.close() };
}

/** Headless Chromium on the profile folder `profile` (WebGPU on unless told). */
export function launch(profile, { webgpu = true } = {}) {
  return chromium.launchPersistentContext(profile, {
    executablePath: BROWSER,
    headless: true,
    args: [...(webgpu ? ["--enable-unsafe-webgpu"] : []), "--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"],
  });
}

/** `bitnet-cli inference --json` on the bundled model, greedy, on the CPU. */
export function native(prompt, n, cli = CLI) {
  const args = ["inference", "-m", path.join(ROOT, MODEL), "-p", prompt, "-n", String(n), "--temp", "0", "--device", "cpu", "--json"];
  return JSON.parse(execFileSync(cli, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }));
}

/**
 * A visit: load the bundled model with one click on `device`, continue
 * `prompt` greedily for `n` tokens. Returns `{ page, status, tokens, text,
 * stats, logs }`; throws (with the page's status and console) on failure.
 */
export async function visit(context, base, device, { prompt = "The", n = 24, screenshot } = {}) {
  const page = await context.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e}`));
  const fail = async (what) => {
    throw new Error(`${what}\nstatus: ${await page.textContent("#status")}\nnote: ${await page.textContent("#note")}\n${logs.join("\n")}`);
  };
  await page.goto(base);
  await page.selectOption("#device", device);
  await page.click("#load-bundled");
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
  if ((await page.evaluate(() => document.body.dataset.state)) !== "ready") await fail("loading failed");
  const status = await page.textContent("#status");

  await page.selectOption("#mode", "complete");
  await page.fill("#temperature", "0");
  await page.fill("#max-tokens", String(n));
  await page.fill("#prompt", prompt);
  await page.click("#generate");
  await page.waitForFunction(() => document.body.dataset.state !== "generating" && document.getElementById("token-ids").textContent !== "", null, { timeout: TIMEOUT });
  if ((await page.evaluate(() => document.body.dataset.state)) !== "ready") await fail("generation failed");
  const tokens = JSON.parse(await page.textContent("#token-ids"));
  const text = await page.textContent("#output");
  const stats = await page.textContent("#stats");
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  return { page, status, tokens, text, stats, logs };
}
