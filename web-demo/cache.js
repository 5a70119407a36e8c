// The model cache: the Origin Private File System (OPFS), written chunk by
// chunk as a download arrives (no second copy in memory), with a small JSON
// record per model holding its URL, size and SHA-256. A cached model is used
// only if its size matches, and the engine checks its SHA-256 as it loads it:
// a damaged or truncated copy is thrown away and downloaded again.
// Runs in the worker (synchronous access handles exist only there).

const DIR = "bitnet-models";

async function root() {
  if (!navigator.storage?.getDirectory) return null;
  try {
    const top = await navigator.storage.getDirectory();
    return await top.getDirectoryHandle(DIR, { create: true });
  } catch {
    return null;
  }
}

/** Whether this browser can cache models (OPFS). */
export async function available() {
  return (await root()) !== null;
}

async function keyOf(url) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(url));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const name = (url.split(/[?#]/)[0].split("/").pop() || "model").replace(/[^A-Za-z0-9._-]/g, "_");
  return `${hex.slice(0, 16)}-${name}`;
}

async function readMeta(dir, key) {
  try {
    const file = await (await dir.getFileHandle(`${key}.json`)).getFile();
    return JSON.parse(await file.text());
  } catch {
    return null;
  }
}

async function writeMeta(dir, key, meta) {
  const handle = await (await dir.getFileHandle(`${key}.json`, { create: true })).createSyncAccessHandle();
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(meta));
    handle.truncate(0);
    handle.write(bytes, { at: 0 });
    handle.flush();
  } finally {
    handle.close();
  }
}

async function remove(dir, key) {
  for (const name of [`${key}.json`, `${key}.gguf`]) {
    await dir.removeEntry(name).catch(() => {});
  }
}

/**
 * Loads `url` with `Engine.load`, from the cache when it holds a good copy,
 * else downloading it and caching it on the way. Resolves to
 * `{ engine, fromCache, cacheNote }`.
 */
export async function load(url, Engine, options) {
  const dir = await root();
  if (!dir) {
    const engine = await Engine.load(url, options);
    return { engine, fromCache: false, cacheNote: "this browser has no OPFS: the model is not cached" };
  }
  const key = await keyOf(url);
  const meta = await readMeta(dir, key);
  if (meta) {
    try {
      const file = await (await dir.getFileHandle(`${key}.gguf`)).getFile();
      if (file.size === meta.size) {
        const engine = await Engine.load(file, { ...options, size: meta.size, sha256: meta.sha256 });
        return { engine, fromCache: true };
      }
      console.warn(`cached ${url} is ${file.size} bytes, expected ${meta.size}: downloading again`);
    } catch (e) {
      // Only a damaged copy is thrown away; any other failure (no WebGPU,
      // out of memory) would fail the same way after a new download.
      if (e?.name !== "BitNetFileError" && e?.name !== "NotFoundError") throw e;
      console.warn(`cached ${url} is unusable (${e.message ?? e}): downloading again`);
    }
    await remove(dir, key);
  }

  let handle;
  try {
    handle = await (await dir.getFileHandle(`${key}.gguf`, { create: true })).createSyncAccessHandle();
  } catch (e) {
    // Another tab is writing it, for example: load without caching.
    const engine = await Engine.load(url, options);
    return { engine, fromCache: false, cacheNote: `not cached: ${e.message ?? e}` };
  }
  let cacheNote = null;
  const onChunk = (chunk, offset) => {
    if (cacheNote) return;
    try {
      handle.write(chunk, { at: offset });
    } catch (e) {
      // Out of quota, for example: the model still loads, uncached.
      cacheNote = `not cached: ${e.message ?? e}`;
    }
  };
  let engine;
  try {
    handle.truncate(0);
    engine = await Engine.load(url, { ...options, onChunk });
    handle.flush();
  } catch (e) {
    handle.close();
    await remove(dir, key);
    throw e;
  }
  handle.close();
  if (cacheNote) {
    await remove(dir, key);
    return { engine, fromCache: false, cacheNote };
  }
  const info = engine.info();
  try {
    await writeMeta(dir, key, {
      url,
      size: info.bytes,
      sha256: info.sha256,
      savedAt: new Date().toISOString(),
    });
  } catch (e) {
    await remove(dir, key);
    return { engine, fromCache: false, cacheNote: `not cached: ${e.message ?? e}` };
  }
  return { engine, fromCache: false };
}

/** The cached models: `[{ url, size, sha256, savedAt }]`. */
export async function list() {
  const dir = await root();
  if (!dir) return [];
  const out = [];
  for await (const [name] of dir.entries()) {
    if (!name.endsWith(".json")) continue;
    const meta = await readMeta(dir, name.slice(0, -5));
    if (meta) out.push(meta);
  }
  return out;
}

/** Removes every cached model. */
export async function clear() {
  const top = await navigator.storage?.getDirectory?.();
  if (top) await top.removeEntry(DIR, { recursive: true }).catch(() => {});
}
