// An OpenAI-shaped face for the engine, as web-llm offers one:
//
//   import { createEngine } from "./openai.js";
//   const engine = await createEngine("model.gguf", { onProgress });
//   const reply = await engine.chat.completions.create({ messages, max_tokens: 64 });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) {
//     out.textContent += chunk.choices[0]?.delta?.content ?? "";
//   }
//
// Request fields: messages, stream, max_tokens (or max_completion_tokens),
// temperature, top_p, seed, stop, presence_penalty, frequency_penalty, and
// signal (an AbortSignal). finish_reason is "stop", "length" or "abort".
// Expects the wasm package in ./pkg (scripts/web-demo.sh puts it there).
import init, { Engine } from "./pkg/bitnet_rt_wasm.js";

let ready = null;

/** Loads a model (URL, File, ArrayBuffer; options as `Engine.load`). */
export async function createEngine(source, options = {}) {
  ready ??= init();
  await ready;
  const engine = await Engine.load(source, options);
  const name = typeof source === "string" ? source.split("/").pop() : source?.name ?? "bitnet";
  return wrap(engine, name);
}

/** The OpenAI-shaped client of an `Engine` that is already loaded. */
export function wrap(engine, model = "bitnet") {
  return {
    engine,
    model,
    chat: { completions: { create: (request) => create(engine, model, request) } },
  };
}

function options(req) {
  const stop = req.stop ?? undefined;
  return {
    maxTokens: req.max_completion_tokens ?? req.max_tokens ?? undefined,
    temperature: req.temperature ?? undefined,
    topP: req.top_p ?? undefined,
    seed: req.seed ?? undefined,
    stop,
    presencePenalty: req.presence_penalty ?? undefined,
    frequencyPenalty: req.frequency_penalty ?? undefined,
    signal: req.signal ?? undefined,
  };
}

const usage = (r) => ({
  prompt_tokens: r.promptTokens,
  completion_tokens: r.generatedTokens,
  total_tokens: r.promptTokens + r.generatedTokens,
});

async function create(engine, model, req) {
  if (!Array.isArray(req?.messages)) throw new TypeError("messages must be an array of {role, content}");
  const id = `chatcmpl-${crypto.randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  if (!req.stream) {
    const r = await engine.chat(req.messages, options(req));
    return {
      id,
      object: "chat.completion",
      created,
      model,
      choices: [{ index: 0, message: { role: "assistant", content: r.text }, finish_reason: r.finishReason }],
      usage: usage(r),
    };
  }
  const chunk = (delta, finish_reason = null, extra = {}) => ({
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [{ index: 0, delta, finish_reason }],
    ...extra,
  });
  // Chunks wait in a queue until the caller's loop takes them. Leaving the
  // loop early (break, throw) stops the generation too.
  const stop = new AbortController();
  req.signal?.addEventListener("abort", () => stop.abort(), { once: true });
  if (req.signal?.aborted) stop.abort();
  const queue = [chunk({ role: "assistant", content: "" })];
  let wake = null;
  let finished = false;
  let failure = null;
  const push = (c) => {
    queue.push(c);
    wake?.();
  };
  const running = engine
    .chat(req.messages, { ...options(req), signal: stop.signal, onToken: ({ text }) => text && push(chunk({ content: text })) })
    .then((r) => push(chunk({}, r.finishReason, { usage: usage(r) })))
    .catch((e) => {
      failure = e;
    })
    .finally(() => {
      finished = true;
      wake?.();
    });
  return {
    async *[Symbol.asyncIterator]() {
      try {
        for (;;) {
          if (queue.length) yield queue.shift();
          else if (failure) throw failure;
          else if (finished) return;
          else await new Promise((resolve) => (wake = resolve));
        }
      } finally {
        if (!finished) {
          stop.abort();
          await running; // the engine is free again once this resolves
        }
      }
    },
  };
}
