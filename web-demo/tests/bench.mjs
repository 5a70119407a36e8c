// The web demo's speed in headless Chromium, next to the native CLI on the
// same machine in the same run: the bundled model, a prompt, greedy tokens.
// Not a test; numbers go to docs/perf.md.
//
//   node bench.mjs [--n 64] [--runs 3] [--cli target/release/bitnet-cli]
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { ROOT, launch, native, serve, visit } from "./harness.mjs";

const { values: opts } = parseArgs({
  options: {
    n: { type: "string", default: "64" },
    runs: { type: "string", default: "3" },
    cli: { type: "string", default: path.join(ROOT, "target", "release", "bitnet-cli") },
  },
});
const n = Number(opts.n);
const runs = Number(opts.runs);
const prompt = "And it came to pass in those days, that there went out a decree from Caesar Augustus, that all the world should be taxed.";

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];

const nat = { pp: [], tg: [] };
for (let i = 0; i < runs; i++) {
  const r = native(prompt, n, opts.cli);
  nat.pp.push(r.prompt_tokens / (r.prompt_ms / 1e3));
  nat.tg.push((r.generated_tokens - 1) / (r.generation_ms / 1e3));
}
rows.push(["native CLI, CPU (" + path.relative(ROOT, opts.cli) + ")", median(nat.pp), median(nat.tg)]);

const server = await serve();
const profile = await mkdtemp(path.join(tmpdir(), "bitnet-bench-"));
const context = await launch(profile);
try {
  for (const device of ["cpu", "webgpu"]) {
    const pp = [];
    const tg = [];
    for (let i = 0; i < runs; i++) {
      const r = await visit(context, server.base, device, { prompt, n });
      const m = r.stats.match(/([\d.]+) tokens\/s · prompt (\d+) tokens at ([\d.]+) tokens\/s/);
      if (!m) throw new Error(`no stats in ${r.stats}`);
      tg.push(Number(m[1]));
      pp.push(Number(m[3]));
      if (i === 0 && device === "webgpu") console.error(r.status);
      await r.page.close();
    }
    rows.push([device === "cpu" ? "browser, wasm CPU (simd128)" : "browser, WebGPU (SwiftShader)", median(pp), median(tg)]);
  }
} finally {
  await context.close();
  server.close();
  await rm(profile, { recursive: true, force: true });
}

console.log(`bundled model, prompt ${native(prompt, 1, opts.cli).prompt_tokens} tokens, ${n} generated, median of ${runs}\n`);
console.log("| where | prompt tokens/s | generation tokens/s | generation vs native |");
console.log("|---|---:|---:|---:|");
for (const [name, pp, tg] of rows) {
  console.log(`| ${name} | ${pp.toFixed(1)} | ${tg.toFixed(1)} | ${(tg / rows[0][2]).toFixed(3)} |`);
}
