#!/bin/bash
# run-avx512.sh - run an x86_64 Linux executable on an emulated CPU with
# AVX-512 (F/CD/BW/DQ/VL/VNNI/VBMI/...) using bochs 2.7 (cpu model tigerlake),
# a small custom Linux 6.1 kernel and a throw-away initramfs.
#
# usage: run-avx512.sh [options] EXE [ARGS...]
#   -t SECS      wall-clock timeout for the whole run (default 900; env BOCHS_TIMEOUT)
#   -m MEGS      guest RAM in MiB (default 1024, max 2048; env BOCHS_MEGS)
#   -c MODEL     bochs cpu model (default tigerlake; also corei7_icelake_u, corei7_skylake_x)
#   -i IPS       bochs "ips" (emulated instructions per emulated second, default 50000000;
#                only affects how fast guest clocks run, not real speed)
#   -e NAME=VAL  extra environment variable for the program (repeatable)
#   -f SRC[:DST] copy host file/dir SRC into the guest (default DST: /harness/cwd/<basename>,
#                which is the program's working directory); repeatable
#   -b           also put busybox (static) into the guest as /bin/busybox and /bin/sh
#   -n           do not strip debug info from EXE (default: strip --strip-debug a copy,
#                which keeps symbols but makes the initramfs - and the boot - smaller)
#   -k           keep the run directory (prints its path on stderr)
#   -v           verbose: copy kernel/status console to stderr after the run
#   -q           quiet: do not print the "[bochs] ..." timing line on stderr
#
# Environment passed through when set on the host: RUST_BACKTRACE RUST_TEST_THREADS RUST_LOG
#   RUST_MIN_STACK RUST_TEST_NOCAPTURE plus any names listed in $BOCHS_PASS_ENV.
# Usable as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/tools/avx512-emulator/run-avx512.sh cargo test
# Program stdout -> guest ttyS0 -> bochs com1 -> printed on our stdout
# Program stderr -> guest ttyS1 -> bochs com2 -> printed on our stderr (after stdout)
# Exit status: the program's exit status (128+N if killed by signal N, e.g. 132 = SIGILL),
#   124 on timeout, 125 on harness failure.
set -u -o pipefail

BASE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# What build-kernel.sh built, and the per-run directories.
WORK="${AVX512_EMU_DIR:-$BASE/../../target/avx512-emulator}"
KERNEL="${BOCHS_KERNEL:-$WORK/kernel/bzImage-bochs}"
INIT="$WORK/build/init"
TIMEOUT="${BOCHS_TIMEOUT:-900}"
MEGS="${BOCHS_MEGS:-1024}"
MODEL="${BOCHS_MODEL:-tigerlake}"
IPS="${BOCHS_IPS:-50000000}"
KEEP=0; VERBOSE=0; QUIET=0; STRIP=1; BUSYBOX=0
ENVS=(); FILES=()

die() { echo "run-avx512: $*" >&2; exit 125; }

while getopts ":t:m:c:i:e:f:bnkvqh" opt; do
  case "$opt" in
    t) TIMEOUT="$OPTARG" ;;
    m) MEGS="$OPTARG" ;;
    c) MODEL="$OPTARG" ;;
    i) IPS="$OPTARG" ;;
    e) ENVS+=("$OPTARG") ;;
    f) FILES+=("$OPTARG") ;;
    b) BUSYBOX=1 ;;
    n) STRIP=0 ;;
    k) KEEP=1 ;;
    v) VERBOSE=1 ;;
    q) QUIET=1 ;;
    h) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
    :) die "option -$OPTARG needs an argument" ;;
    *) die "unknown option -$OPTARG (see -h)" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || die "usage: $0 [options] EXE [ARGS...]  (-h for help)"
EXE="$1"; shift
[ -f "$EXE" ] || EXE="$(command -v "$EXE" 2>/dev/null || true)"
[ -n "$EXE" ] && [ -f "$EXE" ] || die "executable not found: $1"
[ -f "$KERNEL" ] || die "kernel not found: $KERNEL (run $BASE/build-kernel.sh; see $BASE/README.md)"
[ -x "$INIT" ] || die "init not built: $INIT (run $BASE/build-kernel.sh)"
case "$MEGS" in ""|*[!0-9]*) die "-m: not a number: $MEGS" ;; esac
[ "$MEGS" -le 2048 ] || die "-m: bochs 2.7 allows at most 2048 MiB of guest RAM"
command -v bochs-bin >/dev/null || die "bochs-bin missing (apt-get install bochs bochsbios vgabios)"
command -v xorriso >/dev/null || die "xorriso missing (apt-get install xorriso isolinux syslinux-common)"

mkdir -p "$WORK/runs"
RUN="$(mktemp -d "$WORK/runs/run.XXXXXX")" || die "mktemp failed"
BOCHS_PID=""
cleanup() {
  if [ -n "$BOCHS_PID" ] && kill -0 "$BOCHS_PID" 2>/dev/null; then kill "$BOCHS_PID" 2>/dev/null; wait "$BOCHS_PID" 2>/dev/null; fi
  if [ "$KEEP" = 1 ]; then echo "run-avx512: run directory kept: $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ROOT="$RUN/root"; ISO="$RUN/iso"
mkdir -p "$ROOT/harness/cwd" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" "$ISO/isolinux"
cp "$INIT" "$ROOT/init"
if [ "$STRIP" = 1 ] && command -v strip >/dev/null && strip --strip-debug -o "$ROOT/harness/exe" "$EXE" 2>/dev/null; then :
else cp -L "$EXE" "$ROOT/harness/exe"; fi
chmod 755 "$ROOT/harness/exe"
if [ "$BUSYBOX" = 1 ]; then
  [ -x /bin/busybox ] || die "-b needs busybox-static (apt-get install busybox-static)"
  mkdir -p "$ROOT/bin"; cp /bin/busybox "$ROOT/bin/busybox"; ln -s busybox "$ROOT/bin/sh"
fi

# shared libraries (incl. the ELF interpreter) at their host paths
copy_lib() {
  local f="$1"
  [ -e "$ROOT$f" ] && return 0
  mkdir -p "$ROOT$(dirname "$f")"
  cp -L "$f" "$ROOT$f"
}
if ldd_out="$(ldd "$EXE" 2>/dev/null)"; then
  while read -r line; do
    case "$line" in
      *"=> not found"*) die "missing shared library: $line" ;;
      *"=> /"*) p="${line#*=> }"; copy_lib "${p%% (*}" ;;
      /*) copy_lib "${line%% (*}" ;;
    esac
  done <<< "$ldd_out"
fi

for spec in ${FILES[@]+"${FILES[@]}"}; do
  src="${spec%%:*}"; dst="${spec#*:}"
  [ "$src" = "$spec" ] && dst="/harness/cwd/$(basename "$src")"
  [ -e "$src" ] || die "-f: no such file: $src"
  mkdir -p "$ROOT$(dirname "$dst")"
  cp -rL "$src" "$ROOT$dst"
done

# argv / environment, NUL separated (no quoting problems)
{ printf '%s\0' "$(basename "$EXE")"; for a in "$@"; do printf '%s\0' "$a"; done; } > "$ROOT/harness/argv"
for v in RUST_BACKTRACE RUST_TEST_THREADS RUST_LOG RUST_MIN_STACK RUST_TEST_NOCAPTURE ${BOCHS_PASS_ENV:-}; do
  [ -n "${!v+x}" ] && ENVS=("$v=${!v}" ${ENVS[@]+"${ENVS[@]}"})
done
{ for e in ${ENVS[@]+"${ENVS[@]}"}; do printf '%s\0' "$e"; done; } > "$ROOT/harness/env"

(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$ISO/initrd.img" \
  || die "cpio failed"
cp "$KERNEL" "$ISO/vmlinuz"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$ISO/isolinux/"
# Kernel command line workarounds for bochs 2.7 (all needed, see README):
#  clearcpuid=515,323,321: pku,xsaves,xsavec - bochs reports wrong CPUID.0xD sizes for
#    PKRU and for the compacted (XSAVES/XSAVEC) format; the kernel then disables XSAVE
#    altogether (=> no AVX/AVX-512 in user space). Plain XSAVE/XSAVEOPT is used instead.
#  clearcpuid=580: fsrm - bochs leaves MISC_ENABLE.fast_strings off, so the kernel clears
#    ERMS but keeps FSRM; Linux 6.1's memmove then mis-copies short buffers (kernel
#    stack overflow -> double fault early in boot).
#  tsc_early_khz=IPS/1000: bochs' TSC advances 1 per emulated instruction, but CPUID.15h
#    of the tigerlake model claims 2419.2 MHz; tell the kernel the truth so delays and
#    clocks match bochs' emulated time (ips instructions = 1 s).
TSC_KHZ=$(( IPS / 1000 ))
LOGLEVEL=4; [ "$VERBOSE" = 1 ] && LOGLEVEL=7
cat > "$ISO/isolinux/isolinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  APPEND initrd=/initrd.img console=ttyS2,115200 loglevel=$LOGLEVEL clearcpuid=515,323,321,580 tsc_early_khz=$TSC_KHZ tsc=reliable mitigations=off
EOF
xorriso -as mkisofs -quiet -o "$RUN/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$ISO" 2>"$RUN/xorriso.log" || { cat "$RUN/xorriso.log" >&2; die "xorriso failed"; }

cat > "$RUN/bochsrc" <<EOF
config_interface: textconfig
display_library: rfb, options="timeout=0"
romimage: file=/usr/share/bochs/BIOS-bochs-latest, options=fastboot
vgaromimage: file=/usr/share/vgabios/vgabios.bin
megs: $MEGS
cpu: model=$MODEL, count=1, ips=$IPS, reset_on_triple_fault=0
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path=$RUN/boot.iso, status=inserted
boot: cdrom
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev=$RUN/out.stdout
com2: enabled=1, mode=file, dev=$RUN/out.stderr
com3: enabled=1, mode=file, dev=$RUN/out.status
speaker: enabled=0
mouse: enabled=0
log: $RUN/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
EOF
# The Debian bochs-bin is built with the internal debugger: it stops at the first
# instruction and reads commands; "c" continues. stdin=/dev/null so it never waits.
printf 'c\n' > "$RUN/dbg.rc"
: > "$RUN/out.status"

T0=$(date +%s.%N)
# The only display library in Debian's bochs that needs no X/terminal is "rfb" (a VNC
# server on 0.0.0.0:5900+). Run bochs in a private network namespace when possible so
# that port is never reachable (and parallel runs cannot collide).
NETNS=(); unshare --net true 2>/dev/null && NETNS=(unshare --net)
(cd "$RUN" && exec ${NETNS[@]+"${NETNS[@]}"} bochs-bin -q -f "$RUN/bochsrc" -rc "$RUN/dbg.rc" < /dev/null > "$RUN/bochs.stdout" 2>&1) &
BOCHS_PID=$!

STATE=timeout; T_START=""; EXITSEEN_AT=""
END=$(( $(date +%s) + TIMEOUT ))
while :; do
  if [ -z "$T_START" ] && grep -q '^START' "$RUN/out.status" 2>/dev/null; then T_START=$(date +%s.%N); fi
  if grep -q '^EXIT=' "$RUN/out.status" 2>/dev/null; then
    STATE=done
    [ -z "$EXITSEEN_AT" ] && EXITSEEN_AT=$(date +%s)
    kill -0 "$BOCHS_PID" 2>/dev/null || break
    # init shuts bochs down itself; give it a few seconds, then kill it
    if [ $(( $(date +%s) - EXITSEEN_AT )) -ge 5 ]; then kill "$BOCHS_PID" 2>/dev/null; break; fi
  elif ! kill -0 "$BOCHS_PID" 2>/dev/null; then
    grep -q '^EXIT=' "$RUN/out.status" 2>/dev/null && { STATE=done; break; }
    STATE=died; break
  elif [ "$(date +%s)" -ge "$END" ]; then
    kill "$BOCHS_PID" 2>/dev/null; STATE=timeout; break
  fi
  sleep 0.2
done
wait "$BOCHS_PID" 2>/dev/null; BOCHS_PID=""
T1=$(date +%s.%N)

[ -f "$RUN/out.stdout" ] && cat "$RUN/out.stdout"
[ -f "$RUN/out.stderr" ] && cat "$RUN/out.stderr" >&2

if [ "$VERBOSE" = 1 ]; then
  echo "----- guest console (ttyS2) -----" >&2; tr -d '\r' < "$RUN/out.status" >&2
fi
CODE=125
case "$STATE" in
  done)
    CODE=$(grep -a '^EXIT=' "$RUN/out.status" | tail -1 | tr -dc '0-9')
    grep -a '^SIGNAL=' "$RUN/out.status" | sed 's/^/run-avx512: program killed by /' >&2
    ;;
  timeout)
    echo "run-avx512: TIMEOUT after ${TIMEOUT}s; last console lines:" >&2
    tail -n 15 "$RUN/out.status" | tr -d '\r' >&2; CODE=124 ;;
  died)
    echo "run-avx512: bochs exited before the program finished; console tail:" >&2
    tail -n 30 "$RUN/out.status" | tr -d '\r' >&2
    echo "--- bochs output tail:" >&2; tail -n 8 "$RUN/bochs.stdout" >&2; CODE=125 ;;
esac
if [ "$QUIET" != 1 ]; then
  boot="?"; prog="?"
  [ -n "$T_START" ] && boot=$(echo "$T_START - $T0" | bc) && prog=$(echo "$T1 - $T_START" | bc)
  gs=$(grep -a '^GUEST_SECONDS=' "$RUN/out.status" | tr -dc '0-9.')
  echo "[bochs] model=$MODEL state=$STATE exit=$CODE wall=$(echo "$T1 - $T0" | bc)s boot=${boot}s program+shutdown=${prog}s guest_clock=${gs:-?}s" >&2
fi
exit "$CODE"
