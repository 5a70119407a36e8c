#!/usr/bin/env bash
# Builds the browser demo (web-demo/pkg: the wasm package; web-demo/models:
# the bundled model) and, with --serve, serves it on http://127.0.0.1:8080.
#
#   scripts/web-demo.sh [--serve] [--port N]
#
# Needs the wasm32 target and wasm-bindgen-cli at the version in Cargo.lock;
# both are installed here when missing (rustup and cargo reach their
# registries; nothing else is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."

serve=0 port=8080
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=1 ;;
    --port) port="$2"; shift ;;
    *) echo "usage: scripts/web-demo.sh [--serve] [--port N]" >&2; exit 2 ;;
  esac
  shift
done

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown
wbg=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $wbg"; then
  echo "installing wasm-bindgen-cli $wbg (about 3 minutes, once)"
  cargo install -q wasm-bindgen-cli --version "$wbg" --locked
fi

cargo build -q --release --target wasm32-unknown-unknown -p bitnet-rt-wasm
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
wasm-bindgen --target web --out-dir web-demo/pkg \
  "$target_dir/wasm32-unknown-unknown/release/bitnet_rt_wasm.wasm"
mkdir -p web-demo/models
cp models/tiny-bitnet-trained-i2s.gguf web-demo/models/
echo "built web-demo/ ($(du -sh web-demo/pkg | cut -f1) of wasm package)"

if [ "$serve" = 1 ]; then
  echo "open http://127.0.0.1:$port/ (Chrome/Edge 113+ for WebGPU; other browsers use the CPU path)"
  exec python3 -m http.server "$port" --bind 127.0.0.1 --directory web-demo
fi
