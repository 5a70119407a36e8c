// The model runs here, off the page's thread. The page posts requests; this
// worker answers with progress, tokens and results (see app.js).
import init, { Engine } from "./pkg/bitnet_rt_wasm.js";
import * as cache from "./cache.js";

const ready = init();
let engine = null;
let abort = null;

const post = (msg) => self.postMessage(msg);

async function load({ source, device, useCache }) {
  engine?.free();
  engine = null;
  const options = { device, onProgress: (p) => post({ type: "progress", ...p }) };
  let result;
  if (source.file) {
    result = { engine: await Engine.load(source.file, options), fromCache: false };
  } else {
    const url = new URL(source.url, self.location.href).href;
    result = useCache
      ? await cache.load(url, Engine, options)
      : { engine: await Engine.load(url, options), fromCache: false };
  }
  engine = result.engine;
  post({ type: "loaded", info: engine.info(), fromCache: result.fromCache, cacheNote: result.cacheNote ?? null });
}

async function generate({ mode, prompt, messages, options }) {
  if (!engine) throw new Error("load a model first");
  if (abort) throw new Error("a generation is already running");
  const controller = new AbortController();
  abort = controller;
  const opts = { ...options, signal: controller.signal, onToken: (chunk) => post({ type: "token", text: chunk.text, tokens: [...chunk.tokens] }) };
  try {
    const r = mode === "chat" ? await engine.chat(messages, opts) : await engine.generate(prompt, opts);
    post({ type: "done", result: { ...r, tokens: [...r.tokens], seed: String(r.seed) } });
  } finally {
    if (abort === controller) abort = null;
  }
}

self.onmessage = async ({ data: msg }) => {
  try {
    await ready;
    switch (msg.type) {
      case "load":
        await load(msg);
        break;
      case "generate":
        await generate(msg);
        break;
      case "stop":
        abort?.abort();
        break;
      case "reset":
        engine?.reset();
        break;
      case "cache-list":
        post({ type: "cache", entries: await cache.list(), available: await cache.available() });
        break;
      case "cache-clear":
        await cache.clear();
        post({ type: "cache", entries: await cache.list(), available: await cache.available() });
        break;
      default:
        throw new Error(`unknown request ${msg.type}`);
    }
  } catch (e) {
    post({ type: "error", request: msg.type, message: String(e?.message ?? e) });
  }
};
