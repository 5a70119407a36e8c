#!/usr/bin/env bash
# Runs the GGUF reader fuzzer: `fuzz/run.sh [SECONDS]` (default 60).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Seeds: the malformed corpus, the metadata zoo and two small fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
cargo build -q -p bitnet-rt-cli -p bitnet-rt --examples --bins
mkdir -p fuzz/seeds fuzz/corpus/gguf_parse
cp tests/malformed/*.gguf fuzz/seeds/
./target/debug/examples/gguf_zoo fuzz/seeds/zoo.gguf
./target/debug/bitnet-cli gen-fixture -o fuzz/seeds/small_i2s.gguf --embd 128 --ff 128 --vocab 272 \
  --layers 1 --heads 2 --heads-kv 1 --embedding-type q8_0 2>/dev/null
./target/debug/bitnet-cli gen-fixture -o fuzz/seeds/small_tq1.gguf --type tq1_0 --embd 256 --ff 256 \
  --vocab 272 --layers 1 --heads 2 --heads-kv 1 --embedding-type q8_0 --alignment 64 2>/dev/null
cd fuzz
# -rss_limit_mb: the reader must never need much memory for small inputs.
cargo +nightly fuzz run gguf_parse corpus/gguf_parse seeds -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
