#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (see the device tool): builds,
# runs the wgpu parity tests on the real GPU through Vulkan (REQUIRE_GPU=1),
# then benchmarks a 2B4T-shaped model on the GPU and the CPU in one run.
# Everything it finds goes to $OUT (default: target/gpu-check).
#
#   OUT=/some/dir scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/gpu-check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

date -u; nvidia-smi || true
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverInfo|apiVersion"
cargo build --release -q -p bitnet-rt-cli || exit 1
BIN=target/release/bitnet-cli
$BIN devices | tee "$OUT/devices.txt"

echo "== parity tests (wgpu vs CPU) on the GPU"
WGPU_BACKEND=vulkan REQUIRE_GPU=1 cargo test --release -q -p bitnet-rt --features wgpu --test wgpu \
  2>&1 | tail -5 | tee "$OUT/tests.txt"

echo "== 2B4T-shaped model: benchmark"
M=target/2b4t-i2s.gguf
[ -f "$M" ] || $BIN gen-fixture --preset 2b4t --type i2_s -o "$M"
WGPU_BACKEND=vulkan timeout 300 $BIN benchmark -m "$M" -p 128 -n 64 -r 3 --device wgpu,cpu --compare \
  --output "$OUT/bench-2b4t.md" | tee "$OUT/bench-2b4t.txt"
echo "GPU memory bandwidth floor: 1.19 GB file per token; H100 SXM HBM3 3.35 TB/s -> about 2800 tokens/s"
