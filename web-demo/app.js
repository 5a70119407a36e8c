// The page: buttons and text. The model itself runs in worker.js.
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
const BUNDLED = "models/tiny-bitnet-trained-i2s.gguf";

let busy = false; // a load or a generation is running
let loaded = false;
let messages = []; // the chat so far
let reply = null; // the element the current reply streams into
let replyText = "";

function setState(state) {
  document.body.dataset.state = state;
  busy = state === "loading" || state === "generating";
  $("generate").disabled = busy || !loaded;
  $("stop").disabled = state !== "generating";
  for (const id of ["load-bundled", "file", "url", "device", "clear", "mode"]) $(id).disabled = busy;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function note(text) {
  $("note").hidden = !text;
  $("note").textContent = text ?? "";
}

const mb = (n) => `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)} MB`;
const PHASES = { download: "Downloading", load: "Reading", upload: "Uploading to the GPU", ready: "Ready" };

function progress({ phase, loaded: done, total }) {
  $("progress-box").hidden = false;
  const frac = total ? done / total : 0;
  $("progress").value = total ? frac : undefined;
  if (!total) $("progress").removeAttribute("value");
  const amount = phase === "upload" ? `layer ${done} of ${total}` : total ? `${mb(done)} of ${mb(total)}` : mb(done);
  $("progress-text").textContent = `${PHASES[phase] ?? phase}: ${amount}`;
}

function load(source) {
  loaded = false;
  messages = [];
  note(null);
  status("Loading…");
  setState("loading");
  worker.postMessage({ type: "load", source, device: $("device").value, useCache: $("use-cache").checked });
}

function settings() {
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  return {
    temperature: num("temperature"),
    topK: num("top-k"),
    topP: num("top-p"),
    maxTokens: num("max-tokens"),
    seed: num("seed"),
  };
}

function line(cls, text) {
  const el = document.createElement("div");
  el.className = cls;
  el.textContent = text;
  $("output").append(el);
  return el;
}

function generate() {
  const prompt = $("prompt").value;
  if (!prompt.trim() || busy || !loaded) return;
  const mode = $("mode").value;
  replyText = "";
  if (mode === "chat") {
    messages.push({ role: "user", content: prompt });
    line("user", prompt);
    reply = line("assistant", "");
    $("prompt").value = "";
  } else {
    $("output").textContent = "";
    line("prompt", prompt).style.display = "inline";
    reply = document.createElement("span");
    $("output").append(reply);
  }
  $("stats").textContent = "";
  setState("generating");
  worker.postMessage({ type: "generate", mode, prompt, messages, options: settings() });
}

worker.onmessage = ({ data: msg }) => {
  switch (msg.type) {
    case "progress":
      progress(msg);
      break;
    case "loaded": {
      const i = msg.info;
      loaded = true;
      $("progress-box").hidden = true;
      status(
        `Ready: ${i.architecture}, ${i.layers} layers, ${i.weightType} weights, ${mb(i.bytes)}` +
          `${msg.fromCache ? " (from the browser's cache)" : ""} on ${i.backend}.`,
      );
      note([i.note, msg.cacheNote].filter(Boolean).join(" ") || null);
      $("prompt").focus();
      setState("ready");
      worker.postMessage({ type: "cache-list" });
      break;
    }
    case "token":
      replyText += msg.text;
      reply.textContent = replyText;
      $("output").scrollTop = $("output").scrollHeight;
      break;
    case "done": {
      const r = msg.result;
      if (messages.length && $("mode").value === "chat") messages.push({ role: "assistant", content: r.text });
      $("token-ids").textContent = JSON.stringify(r.tokens);
      $("stats").textContent =
        `${r.generatedTokens} tokens, ${r.tokensPerSecond.toFixed(1)} tokens/s` +
        ` · prompt ${r.promptTokens - r.cachedTokens} tokens at ${r.promptTokensPerSecond.toFixed(1)} tokens/s` +
        (r.cachedTokens ? ` (${r.cachedTokens} cached)` : "") +
        ` · ${r.stopReason.replace("_", " ")}`;
      setState("ready");
      break;
    }
    case "cache": {
      $("cache-list").replaceChildren(
        ...(msg.available ? msg.entries : []).map((e) => {
          const li = document.createElement("li");
          li.textContent = `${e.url.split("/").pop()}: ${mb(e.size)}, SHA-256 ${e.sha256.slice(0, 12)}…, saved ${e.savedAt}`;
          return li;
        }),
      );
      if (!msg.available) $("cache-list").textContent = "This browser has no OPFS: nothing is cached.";
      else if (!msg.entries.length) $("cache-list").textContent = "Nothing cached.";
      break;
    }
    case "error":
      $("progress-box").hidden = true;
      status(`Error: ${msg.message}`, true);
      if (msg.request === "load") loaded = false;
      if (msg.request === "generate" && messages.length && $("mode").value === "chat") messages.pop();
      setState(loaded ? "ready" : "error");
      break;
  }
};

$("load-bundled").onclick = () => load({ url: BUNDLED });
$("file").onchange = (e) => e.target.files[0] && load({ file: e.target.files[0] });
$("url-form").onsubmit = (e) => {
  e.preventDefault();
  if ($("url").value) load({ url: $("url").value });
};
$("prompt-form").onsubmit = (e) => {
  e.preventDefault();
  generate();
};
$("prompt").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey && $("mode").value === "chat") {
    e.preventDefault();
    generate();
  }
};
$("stop").onclick = () => worker.postMessage({ type: "stop" });
$("clear").onclick = () => {
  $("output").textContent = "";
  messages = [];
  worker.postMessage({ type: "reset" });
};
$("mode").onchange = () => $("clear").onclick();
$("cache-clear").onclick = () => worker.postMessage({ type: "cache-clear" });
worker.postMessage({ type: "cache-list" });

// What this browser offers, before anything is loaded.
(async () => {
  let text = "WebGPU is not available in this browser: models run on the CPU (WebAssembly), which is slower.";
  if (navigator.gpu) {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (adapter) {
        const info = adapter.info ?? {};
        const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "an adapter";
        text = adapter.info?.isFallbackAdapter
          ? `WebGPU: ${name}, a software fallback adapter (the CPU device may be faster here).`
          : `WebGPU: ${name}.`;
      } else {
        text = "WebGPU has no adapter here: models run on the CPU (WebAssembly), which is slower.";
      }
    } catch (e) {
      text = `WebGPU failed (${e.message}): models run on the CPU (WebAssembly).`;
    }
  }
  $("gpu-status").textContent = text;
})();
setState("idle");
