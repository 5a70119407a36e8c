#!/usr/bin/env bash
# Installs what the tests need and runs them all. CI runs exactly this
# (.ci/run). Works on a fresh Debian/Ubuntu or macOS machine with a Rust
# toolchain (https://rustup.rs) and Python 3 with venv.
#
#   BITNET_FUZZ_SECONDS=N   also fuzz the GGUF reader for N seconds (needs the
#                           nightly toolchain; cargo-fuzz is installed if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found: apt-get install python3 python3-venv" >&2; exit 1; }

step "Python test dependencies (gguf, numpy, pytest) in target/pyenv"
if [ ! -x target/pyenv/bin/python ]; then
  mkdir -p target
  python3 -m venv target/pyenv || {
    echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'" >&2; exit 1; }
fi
target/pyenv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

step "Mesa's software Vulkan (lavapipe), so the wgpu tests have an adapter"
if ! { command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -q llvmpipe; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 vulkan-tools >/dev/null
  else
    echo "no lavapipe and not root on apt: the wgpu tests will skip (apt-get install mesa-vulkan-drivers)"
  fi
fi
if command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -q llvmpipe; then
  # With an adapter present, a wgpu test that finds none is a failure.
  export REQUIRE_GPU="${REQUIRE_GPU:-1}"
fi
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d); chmod 700 "$XDG_RUNTIME_DIR"; export XDG_RUNTIME_DIR
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -q --features bitnet-rt/wgpu -- -D warnings

step "cargo build (binaries and examples the Python tests run)"
cargo build --workspace --bins --examples -q

step "cargo test"
cargo test --workspace -q --features bitnet-rt/wgpu

step "the wgpu tests again on wgpu's GL backend"
WGPU_BACKEND=gl cargo test -q -p bitnet-rt --features wgpu --test wgpu

step "Python tests against the gguf package"
target/pyenv/bin/python -m pytest tests/python -q

# NEON kernels (aarch64): built for aarch64 and run under qemu-user, the
# kernel equivalence tests and greedy tokens at every level. Root on apt
# installs the cross linker and qemu; elsewhere this skips with a message.
step "aarch64 (NEON) kernels under qemu"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && ! { command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; }; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user >/dev/null
fi
if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null && command -v rustup >/dev/null; then
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    bash -c 'cargo clippy -q -p bitnet-rt --lib --target aarch64-unknown-linux-gnu -- -D warnings &&
             cargo test -q -p bitnet-rt --target aarch64-unknown-linux-gnu --lib kernels &&
             cargo test -q -p bitnet-rt --target aarch64-unknown-linux-gnu --test forward every_simd_level'
else
  echo "skipped: the NEON tests need aarch64-linux-gnu-gcc, qemu-aarch64 and rustup (apt-get install gcc-aarch64-linux-gnu qemu-user)"
fi

# The browser: the wasm package, its WebGPU parity tests in headless
# Chromium (SwiftShader), and the web demo driven end to end. Needs the
# wasm32 target, wasm-bindgen-cli (Cargo.lock's version), wasm-pack,
# Debian's chromium + chromedriver and Node; installed here when missing
# (root on apt for the browser). Without a browser these tests skip with a
# message, unless REQUIRE_BROWSER=1 (set when root on apt).
step "browser toolchain: wasm32 target, wasm-bindgen-cli, wasm-pack, Chromium, Node"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export REQUIRE_BROWSER="${REQUIRE_BROWSER:-1}"
  missing=""
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v chromedriver >/dev/null || missing="$missing chromium-driver"
  command -v npm >/dev/null || missing="$missing nodejs npm"
  if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
  fi
fi
browser=1
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v npm >/dev/null; then
  if [ "${REQUIRE_BROWSER:-}" = 1 ]; then
    echo "REQUIRE_BROWSER=1 but chromium, chromedriver or npm is missing" >&2; exit 1
  fi
  echo "skipped: the browser tests need chromium, chromedriver and npm (apt-get install chromium chromium-driver npm)"
  browser=0
fi
if [ "$browser" = 1 ]; then
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  wbg=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)
  # --locked first (the tools' own lockfiles); if the registry lacks a crate
  # version such a lockfile pins, the newest compatible versions instead.
  install_tool() {
    cargo install -q --locked "$@" || {
      echo "note: $1's lockfile pins a crate this registry lacks; installing without --locked"
      cargo install -q "$@"
    }
  }
  wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $wbg" \
    || install_tool wasm-bindgen-cli --version "$wbg"
  command -v wasm-pack >/dev/null || install_tool wasm-pack --version 0.15.1

  step "cargo clippy for wasm32 (the core with wgpu, the wasm package and its tests)"
  cargo clippy -q --target wasm32-unknown-unknown -p bitnet-rt --features wgpu --lib -- -D warnings
  cargo clippy -q --target wasm32-unknown-unknown -p bitnet-rt-wasm --all-targets -- -D warnings

  step "wasm-pack build --target web (no network needed)"
  wasm-pack --quiet build wasm --target web

  step "browser tests: kernel parity and the bundled model on WebGPU in headless Chromium"
  # REQUIRE_GPU is read when the test is compiled: no adapter is a failure.
  ( cd wasm && REQUIRE_GPU=1 WASM_BINDGEN_TEST_TIMEOUT=1200 \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
      cargo test --target wasm32-unknown-unknown --test web )

  step "web demo: build, then a user's visit in headless Chromium (Playwright)"
  scripts/web-demo.sh
  ( cd web-demo/tests && npm ci --no-audit --no-fund --silent && node --test )
  echo "screenshots: target/web-demo-artifacts/"
fi

if [ -n "${BITNET_FUZZ_SECONDS:-}" ]; then
  step "fuzz the GGUF reader for ${BITNET_FUZZ_SECONDS}s"
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz -q
  fuzz/run.sh "$BITNET_FUZZ_SECONDS"
fi

step "all tests passed"
