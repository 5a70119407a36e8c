#!/bin/bash
# Build the small guest kernel (kernel/bzImage-bochs) and the static /init used by
# run-avx512.sh. Needs Debian packages: linux-source-6.1 flex bison bc libelf-dev
# libssl-dev lz4 gcc make cpio; runtime: bochs bochsbios vgabios xorriso isolinux
# syslinux-common. Uses one core (JOBS=1) by default: ~7 min on a Zen 3 core.
set -euo pipefail
BASE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Outputs (kernel source tree, kernel, init) go here, outside the sources.
WORK="${AVX512_EMU_DIR:-$BASE/../../target/avx512-emulator}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
JOBS="${JOBS:-1}"
SRC="$WORK/ksrc/linux-source-6.1"
if [ ! -d "$SRC" ]; then
  mkdir -p "$WORK/ksrc"
  tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$WORK/ksrc"
fi
cd "$SRC"
make -s tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$BASE/bochs.fragment" >/dev/null
make -s olddefconfig
nice make -j"$JOBS" bzImage
mkdir -p "$WORK/kernel" "$WORK/build"
cp arch/x86/boot/bzImage "$WORK/kernel/bzImage-bochs"
cp .config "$WORK/kernel/config-bochs"
cp System.map "$WORK/kernel/System.map-bochs"
gcc -O2 -static -Wall -o "$WORK/build/init" "$BASE/init.c"
echo "built $WORK/kernel/bzImage-bochs and $WORK/build/init"
