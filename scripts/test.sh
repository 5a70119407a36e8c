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

if [ -n "${BITNET_FUZZ_SECONDS:-}" ]; then
  step "fuzz the GGUF reader for ${BITNET_FUZZ_SECONDS}s"
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz -q
  fuzz/run.sh "$BITNET_FUZZ_SECONDS"
fi

step "all tests passed"
