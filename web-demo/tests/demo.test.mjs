// The web demo as a user meets it, in headless Chromium (Debian's
// /usr/bin/chromium with WebGPU on SwiftShader; playwright-core never
// downloads a browser). The page is served from web-demo/ on 127.0.0.1 by
// a tiny server that counts requests, so the test can tell a download from
// a cache hit. Run scripts/web-demo.sh first (it builds web-demo/pkg).
//
// Greedy tokens must equal the native CPU run of `bitnet-cli inference`
// with the same settings, on WebGPU and on the wasm CPU fallback.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { MODEL, ROOT, TIMEOUT, launch, native, serve, visit } from "./harness.mjs";

const ARTIFACTS = process.env.BITNET_ARTIFACTS ?? path.join(ROOT, "target", "web-demo-artifacts");
const PROMPT = "The";
const N = 24;

let server;
let base;
let requests;
let profile;

before(async () => {
  server = await serve();
  ({ base, requests } = server);
  profile = await mkdtemp(path.join(tmpdir(), "bitnet-chromium-"));
  await mkdir(ARTIFACTS, { recursive: true });
});

after(async () => {
  server?.close();
  if (profile) await rm(profile, { recursive: true, force: true });
});

const browser = (opts) => launch(profile, opts);
const run = (context, device, { screenshot } = {}) =>
  visit(context, base, device, { prompt: PROMPT, n: N, screenshot: screenshot && path.join(ARTIFACTS, screenshot) });

test("one click loads the bundled model on WebGPU and greedy tokens equal the native CPU run", { timeout: TIMEOUT * 2 }, async () => {
  const want = native(PROMPT, N);
  assert.ok(want.tokens.length >= 16, `native run made ${want.tokens.length} tokens`);
  const context = await browser();
  try {
    const r = await run(context, "webgpu", { screenshot: "web-demo-webgpu.png" });
    assert.match(r.status, /wgpu/, r.status);
    assert.doesNotMatch(r.status, /from the browser's cache/);
    assert.deepEqual(r.tokens, want.tokens, `page: ${r.text}\nnative: ${want.text}`);
    assert.equal(r.text, PROMPT + want.text);
    assert.equal(requests.get(`/${MODEL}`), 1);
  } finally {
    await context.close();
  }
});

test("a second visit loads the model from the OPFS cache, with no download", { timeout: TIMEOUT * 2 }, async () => {
  const before = requests.get(`/${MODEL}`) ?? 0;
  assert.equal(before, 1, "the first test downloads the model once");
  const context = await browser(); // the same profile: a returning visitor
  try {
    const r = await run(context, "webgpu", { screenshot: "web-demo-cached.png" });
    assert.match(r.status, /from the browser's cache/, r.status);
    assert.equal(requests.get(`/${MODEL}`), before, "the model was downloaded again");
    assert.deepEqual(r.tokens, native(PROMPT, N).tokens);
  } finally {
    await context.close();
  }
});

test("the CPU fallback (wasm) gives the native CPU's tokens", { timeout: TIMEOUT * 2 }, async () => {
  const context = await browser();
  try {
    const r = await run(context, "cpu", { screenshot: "web-demo-cpu.png" });
    assert.match(r.status, /on cpu/, r.status);
    assert.deepEqual(r.tokens, native(PROMPT, N).tokens, r.text);
  } finally {
    await context.close();
  }
});

test("the OpenAI-shaped client streams the same reply it returns whole", { timeout: TIMEOUT * 2 }, async () => {
  const context = await browser();
  try {
    const page = await context.newPage();
    await page.goto(base);
    const r = await page.evaluate(async (model) => {
      const { createEngine } = await import("./openai.js");
      const engine = await createEngine(model, { device: "cpu" });
      const request = { messages: [{ role: "user", content: "What is love?" }], max_tokens: 16, temperature: 0 };
      const whole = await engine.chat.completions.create(request);
      const chunks = [];
      for await (const c of await engine.chat.completions.create({ ...request, stream: true })) chunks.push(c);
      // An abort stops a stream early.
      const abort = new AbortController();
      let n = 0;
      let last = null;
      for await (const c of await engine.chat.completions.create({ ...request, max_tokens: 200, stream: true, signal: abort.signal })) {
        if (++n === 3) abort.abort();
        last = c;
      }
      // Leaving the loop early stops the generation: the engine is free
      // for the next request at once.
      for await (const c of await engine.chat.completions.create({ ...request, max_tokens: 200, stream: true })) {
        if (c.choices[0].delta.content) break;
      }
      const after = await engine.chat.completions.create(request);
      return { whole, chunks, aborted: last, abortedCount: n, after };
    }, MODEL);
    assert.equal(r.whole.object, "chat.completion");
    assert.equal(r.whole.choices[0].finish_reason, "length");
    assert.equal(r.whole.usage.completion_tokens, 16);
    assert.ok(r.whole.choices[0].message.content.length > 0);
    assert.equal(r.chunks[0].choices[0].delta.role, "assistant");
    const streamed = r.chunks.map((c) => c.choices[0].delta.content ?? "").join("");
    assert.equal(streamed, r.whole.choices[0].message.content);
    assert.equal(r.chunks.at(-1).choices[0].finish_reason, "length");
    assert.deepEqual(r.chunks.at(-1).usage, r.whole.usage);
    assert.equal(r.aborted.choices[0].finish_reason, "abort");
    assert.equal(r.after.choices[0].message.content, r.whole.choices[0].message.content);
    assert.ok(r.aborted.usage.completion_tokens < 200, JSON.stringify(r.aborted.usage));
  } finally {
    await context.close();
  }
});

test("the stop button ends a long generation", { timeout: TIMEOUT * 2 }, async () => {
  const context = await browser();
  try {
    const page = await context.newPage();
    await page.goto(base);
    await page.selectOption("#device", "cpu");
    await page.click("#load-bundled");
    await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: TIMEOUT });
    // Greedy from "The" loops without an end-of-text token: only Stop ends it.
    await page.selectOption("#mode", "complete");
    await page.fill("#temperature", "0");
    await page.fill("#max-tokens", "5000");
    await page.fill("#prompt", PROMPT);
    await page.click("#generate");
    await page.waitForFunction(() => document.getElementById("output").textContent.length > 40, null, { timeout: TIMEOUT });
    await page.click("#stop");
    await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: TIMEOUT });
    const stats = await page.textContent("#stats");
    assert.match(stats, /aborted/, stats);
    const ids = JSON.parse(await page.textContent("#token-ids"));
    assert.ok(ids.length > 0 && ids.length < 5000, `${ids.length} tokens`);
  } finally {
    await context.close();
  }
});

test("without WebGPU the page says so and runs on the CPU", { timeout: TIMEOUT * 2 }, async () => {
  const context = await browser({ webgpu: false });
  try {
    const r = await run(context, "auto", { screenshot: "web-demo-no-webgpu.png" });
    assert.match(await r.page.textContent("#gpu-status"), /not available|no adapter/i);
    assert.match(await r.page.textContent("#note"), /WebGPU is not available here/);
    assert.match(r.status, /on cpu/, r.status);
    assert.deepEqual(r.tokens, native(PROMPT, N).tokens);
  } finally {
    await context.close();
  }
});

test("a damaged cached copy is thrown away and downloaded again; Clear empties the cache", { timeout: TIMEOUT * 2 }, async () => {
  const context = await browser();
  try {
    const page = await context.newPage();
    await page.goto(base);
    // Flip one byte of the cached model, as a disk error would.
    const damaged = await page.evaluate(async () => {
      const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle("bitnet-models");
      for await (const [name, handle] of dir.entries()) {
        if (!name.endsWith(".gguf")) continue;
        const file = await handle.getFile();
        const bytes = new Uint8Array(await file.arrayBuffer());
        bytes[bytes.length - 100] ^= 0xff;
        const w = await handle.createWritable();
        await w.write(bytes);
        await w.close();
        return name;
      }
      return null;
    });
    assert.ok(damaged, "the earlier tests left a cached model");
    const before = requests.get(`/${MODEL}`);
    await page.close();
    const r = await run(context, "cpu");
    assert.doesNotMatch(r.status, /from the browser's cache/, r.status);
    assert.equal(requests.get(`/${MODEL}`), before + 1, "the damaged copy was used");
    assert.deepEqual(r.tokens, native(PROMPT, N).tokens);

    await r.page.click("#cache-box summary");
    await r.page.waitForFunction(() => document.getElementById("cache-list").textContent.includes("tiny-bitnet-trained-i2s.gguf"));
    await r.page.click("#cache-clear");
    await r.page.waitForFunction(() => document.getElementById("cache-list").textContent === "Nothing cached.");
  } finally {
    await context.close();
  }
});

test("a GGUF picked from the computer loads and generates", { timeout: TIMEOUT * 2 }, async () => {
  const context = await browser();
  try {
    const page = await context.newPage();
    await page.goto(base);
    await page.selectOption("#device", "cpu");
    await page.setInputFiles("#file", path.join(ROOT, MODEL));
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    assert.match(await page.textContent("#status"), /^Ready: bitnet-b1\.58/);
    await page.fill("#temperature", "0");
    await page.fill("#max-tokens", String(N));
    await page.fill("#prompt", PROMPT);
    await page.click("#generate");
    await page.waitForFunction(() => document.body.dataset.state === "ready" && document.getElementById("token-ids").textContent !== "", null, { timeout: TIMEOUT });
    assert.deepEqual(JSON.parse(await page.textContent("#token-ids")), native(PROMPT, N).tokens);
  } finally {
    await context.close();
  }
});
