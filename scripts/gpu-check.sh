#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (see the device tool). The
# machine has no Rust toolchain and no network, so it runs in two steps:
#
#   scripts/gpu-check.sh prepare   # here: release CLI and the wgpu test
#                                  # binary, stripped, into .gpu/
#   scripts/gpu-check.sh           # there (with .gpu and .gl carried): the
#                                  # wgpu parity tests on the real GPU through
#                                  # Vulkan (REQUIRE_GPU=1), then a 2B4T-shaped
#                                  # model benchmarked on the GPU and the CPU,
#                                  # and where a token's time goes
#
# .gl holds the Vulkan/GL loader packages (the device README says how to get
# them); both folders are listed in .git/info/exclude. Everything the run
# finds goes to $OUT (default: target/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    set -e
    cargo build --release -q -p bitnet-rt-cli
    test=$(cargo test --release -q -p bitnet-rt --features wgpu --test wgpu --no-run \
        --message-format=json | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
    mkdir -p .gpu
    strip -o .gpu/bitnet-cli target/release/bitnet-cli
    strip -o .gpu/wgpu-test "$test"
    ls -la .gpu
    exit 0
fi

OUT="${OUT:-target/gpu-check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
# The test binary looks for the bundled model and goldens where it was built.
if [ ! -d /work/main/core ]; then mkdir -p /work && ln -sfn "$PWD" /work/main; fi
BIN=.gpu/bitnet-cli
export WGPU_BACKEND=vulkan

echo "== machine"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
grep -m1 "model name" /proc/cpuinfo; nproc
grep -m1 -o -w 'avx512_vnni\|avx512bw\|avxvnni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
$BIN devices | tee "$OUT/devices.txt"

echo "== device memory bandwidth (torch device-to-device copy, bytes read + written)"
timeout 60 python3 - <<'EOF' || true
import torch
n = 2 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
ts = []
for _ in range(10):
    s.record(); b.copy_(a); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
ts.sort(); print(f"copy 2 GiB: median {ts[5]:.3f} ms -> {2 * n / ts[5] / 1e6:.0f} GB/s (read+write)")
EOF

if [ -z "${NO_TESTS:-}" ]; then  # NO_TESTS=1: benchmarks only
echo "== parity tests (wgpu vs CPU) on the GPU"
# The whole output to a file (a failure's message must not be cut off).
REQUIRE_GPU=1 timeout 240 .gpu/wgpu-test --test-threads 4 >"$OUT/tests.txt" 2>&1
grep -E -A12 "panicked|^failures:|test result" "$OUT/tests.txt" | head -80
fi

echo "== 2B4T-shaped model"
M=/tmp/2b4t-i2s.gguf
time $BIN gen-fixture --preset 2b4t --type i2_s -o "$M"
RUST_LOG=bitnet=debug timeout 60 $BIN inference -m "$M" -p "Hello" -n 4 --device wgpu 2>&1 | grep -i "wgpu\|matvec\|dot" | head -10
echo "-- benchmark"
# QUICK=1: the GPU alone, no sweeps (for checking a change)
DEVICES=wgpu,cpu; [ -n "${QUICK:-}" ] && DEVICES=wgpu
timeout 240 $BIN benchmark -m "$M" -p 128,512 -n 128 -r 3 --device $DEVICES --compare \
    --output "$OUT/bench-2b4t.md" | tee "$OUT/bench-2b4t.txt"
echo "-- matvec: packed words per thread (default 32)"
for n in 16 64; do
    BITNET_WGPU_MATVEC_WORDS=$n timeout 60 $BIN benchmark -m "$M" -p 0 -n 128 -r 3 --device wgpu 2>&1 | grep "^wgpu" | sed "s/^/words $n: /"
done
if [ -z "${QUICK:-}" ]; then
echo "-- submitting every N dispatches (default 64; 4096: once per token)"
for n in 4096 32 64 128; do
    BITNET_WGPU_SUBMIT_EVERY=$n timeout 60 $BIN benchmark -m "$M" -p 0 -n 128 -r 3 --device wgpu 2>&1 | grep "^wgpu" | sed "s/^/every $n: /"
done
echo "-- TQ2_0"
M2=/tmp/2b4t-tq2.gguf
$BIN gen-fixture --preset 2b4t --type tq2_0 -o "$M2" >/dev/null
timeout 60 $BIN benchmark -m "$M2" -p 128 -n 128 -r 3 --device wgpu 2>&1 | grep "^wgpu"
echo "-- TQ1_0 (decode through the multi-token kernel)"
M3=/tmp/2b4t-tq1.gguf
$BIN gen-fixture --preset 2b4t --type tq1_0 -o "$M3" >/dev/null
timeout 60 $BIN benchmark -m "$M3" -p 128 -n 128 -r 3 --device wgpu 2>&1 | grep "^wgpu"
fi
echo "-- where a token goes (host split, then per-op device time)"
BITNET_WGPU_PROFILE=host timeout 60 $BIN benchmark -m "$M" -p 0 -n 64 -r 1 --device wgpu 2>&1 | grep -v "^|" | tee "$OUT/profile-host.txt"
BITNET_WGPU_PROFILE=gpu timeout 60 $BIN benchmark -m "$M" -p 128 -n 32 -r 1 --device wgpu 2>&1 | grep -v "^|" | head -60 | tee "$OUT/profile-gpu.txt"
echo "decode floor: bytes per token = the file's ternary weights (~0.52 GB) + the F16 head (0.66 GB)"
