#!/bin/bash
# Boots barn images under QEMU/TCG with small jobs and checks the guest/host contract.
# Usage: images/smoke.sh [tiny|fail|debian|bench [N]|all]   (default: all but bench)
#   BARN_TINY   built tiny image dir    (default /tmp/imgwork/tiny;   built if missing)
#   BARN_DEBIAN built debian image dir  (default /tmp/imgwork/debian; built if missing)
#   BARN_SMOKE  scratch dir             (default /tmp/imgwork/smoke)
set -euo pipefail
export LC_ALL=C TZ=UTC
HERE=$(cd "$(dirname "$0")" && pwd)
TINY=${BARN_TINY:-/tmp/imgwork/tiny}
DEBIAN=${BARN_DEBIAN:-/tmp/imgwork/debian}
S=${BARN_SMOKE:-/tmp/imgwork/smoke}
mkdir -p "$S"

# Host TSC frequency in kHz (the guest's TSC under TCG is the host's TSC).
tsc_khz() {
    local f=/sys/devices/system/cpu/cpu0/tsc_freq_khz mhz
    if [ -r $f ]; then cat $f; return; fi
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1)
    [ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -n1)
    [ -n "$mhz" ] || mhz=$(awk -F: '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
    awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}
TSC_KHZ=$(tsc_khz)

# make_input JOBDIR TAR: JOBDIR holds job/ and src/; deterministic GNU tar, one mtime,
# owner 1000:1000 (the guest chowns anyway).
make_input() {
    tar -C "$1" --sort=name --mtime="@$(cat "$1/job/epoch")" --owner=1000 --group=1000 \
        --numeric-owner --format=gnu -cf "$2" job src
}

# run_vm IMAGEDIR INPUT.tar OUTPUT.img LOG QUOTA [ROOT.squashfs]
run_vm() {
    local img=$1 input=$2 output=$3 log=$4 quota=$5 root=${6:-}
    rm -f "$output"; truncate -s "$quota" "$output"       # sparse zeros: the quota
    local drives=()
    if [ -n "$root" ]; then
        drives+=(-drive "file=$root,format=raw,if=none,id=root,readonly=on"
                 -device virtio-blk-device,drive=root,serial=barn-root)
    fi
    drives+=(-drive "file=$input,format=raw,if=none,id=in,readonly=on"
             -device virtio-blk-device,drive=in,serial=barn-input
             -drive "file=$output,format=raw,if=none,id=out"
             -device virtio-blk-device,drive=out,serial=barn-output)
    qemu-system-x86_64 -M microvm,x-option-roms=off -cpu Nehalem-v1 \
        -accel tcg,thread=multi,tb-size=128 -m 512M -smp 1 \
        -nodefaults -no-user-config -display none -no-reboot \
        -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
        -kernel "$img/vmlinux" -initrd "$img/initrd.img" \
        -append "console=ttyS0 panic=-1 tsc_early_khz=$TSC_KHZ quiet loglevel=0 i8042.noaux i8042.nokbd i8042.nopnp" \
        -chardev stdio,id=con,signal=off -serial chardev:con \
        "${drives[@]}" < /dev/null > "$log" 2>&1
}

# show OUTPUT.img: list and print status (the host would parse this as untrusted data)
show() {
    echo "--- output tar:"; tar -tvf "$1" | sed 's/^/  /'
    echo "--- status:"; tar -xOf "$1" status | sed 's/^/  /'
}

need_tiny() { [ -f "$TINY/image.toml" ] || "$HERE/tiny-x86_64/build.sh" "$TINY" >/dev/null; }
need_debian() { [ -f "$DEBIAN/image.toml" ] || "$HERE/debian-12-x86_64/build.sh" "$DEBIAN" >/dev/null; }

job_hello() {   # tiny: task writes out/hello.txt; an artifact glob that matches nothing
    local d=$S/job-hello; rm -rf "$d"; mkdir -p "$d/job/tasks" "$d/src"
    echo 1700000000 > "$d/job/epoch"
    printf 'GREETING=hello from barn\nWEIRD=a b $c "d"\n' > "$d/job/env"
    cat > "$d/job/tasks/01-hello" <<'T'
mkdir -p out
echo "$GREETING" > out/hello.txt
id; hostname; pwd; umask; env | sort
date -u -d "@$SOURCE_DATE_EPOCH"
ln -s /etc/passwd out/link-out
T
    cat > "$d/job/tasks/02-more" <<'T'
cat input.txt >> out/hello.txt
mkdir -p out/sub && echo sub > out/sub/f
T
    printf 'out/*.txt\nout\nnothing/*.so\n../etc/passwd\n' > "$d/job/artifacts"
    echo "input data" > "$d/src/input.txt"
    make_input "$d" "$S/hello.tar"
}

job_fail() {    # tiny: second task fails, third never runs
    local d=$S/job-fail; rm -rf "$d"; mkdir -p "$d/job/tasks" "$d/src"
    echo 1700000000 > "$d/job/epoch"
    printf 'echo one > one.txt\n' > "$d/job/tasks/01-ok"
    printf 'echo about to fail >&2\nfalse\necho not reached\n' > "$d/job/tasks/02-fails"
    printf 'echo never > never.txt\n' > "$d/job/tasks/03-never"
    printf '*.txt\n' > "$d/job/artifacts"
    make_input "$d" "$S/fail.tar"
}

job_noop() {
    local d=$S/job-noop; rm -rf "$d"; mkdir -p "$d/job/tasks" "$d/src"
    echo 1700000000 > "$d/job/epoch"
    printf 'true\n' > "$d/job/tasks/01-noop"
    make_input "$d" "$S/noop.tar"
}

job_gcc() {     # debian: gcc -O2 + make
    local d=$S/job-gcc; rm -rf "$d"; mkdir -p "$d/job/tasks" "$d/src"
    echo 1700000000 > "$d/job/epoch"
    cat > "$d/src/hello.c" <<'C'
#include <stdio.h>
int main(void) { printf("hello, barn\n"); return 0; }
C
    printf 'CFLAGS = -O2\nhello: hello.c\n\t$(CC) $(CFLAGS) -o $@ $<\n' > "$d/src/Makefile"
    printf 'id; df -h /build /tmp | tail -n2\ngcc --version | head -n1\nmake\n./hello > hello.out\n' > "$d/job/tasks/10-build"
    printf 'hello\nhello.out\n' > "$d/job/artifacts"
    make_input "$d" "$S/gcc.tar"
}

timed() {  # timed NAME cmd...: prints wall seconds
    local t0 t1; t0=$(date +%s%N); "$@"; t1=$(date +%s%N)
    echo "$1 wall $(( (t1 - t0) / 1000000 )) ms"
}

case ${1:-all} in
    tiny | all)
        need_tiny; job_hello
        t0=$(date +%s%N); run_vm "$TINY" "$S/hello.tar" "$S/hello.out" "$S/hello.log" 1M; t1=$(date +%s%N)
        echo "=== tiny hello: $(( (t1 - t0) / 1000000 )) ms"; cat "$S/hello.log"; show "$S/hello.out"
        ;;&
    fail | all)
        need_tiny; job_fail
        t0=$(date +%s%N); run_vm "$TINY" "$S/fail.tar" "$S/fail.out" "$S/fail.log" 1M; t1=$(date +%s%N)
        echo "=== tiny fail: $(( (t1 - t0) / 1000000 )) ms"; cat "$S/fail.log"; show "$S/fail.out"
        # overflow: a quota too small for the artifacts
        job_hello; mkdir -p "$S/job-hello/src/out"; dd if=/dev/urandom of="$S/job-hello/src/out/big.bin" bs=1k count=64 2>/dev/null
        make_input "$S/job-hello" "$S/big.tar"
        run_vm "$TINY" "$S/big.tar" "$S/big.out" "$S/big.log" 32K
        echo "=== tiny overflow (32K quota, 64K artifact):"; grep '^barn:' "$S/big.log"; show "$S/big.out"
        ;;&
    debian | all)
        need_debian; job_gcc
        t0=$(date +%s%N)
        run_vm "$DEBIAN" "$S/gcc.tar" "$S/gcc.out" "$S/gcc.log" 16M "$DEBIAN/root.squashfs"
        t1=$(date +%s%N)
        echo "=== debian gcc: $(( (t1 - t0) / 1000000 )) ms"; cat "$S/gcc.log"; show "$S/gcc.out"
        ;;
    bench)
        need_tiny; job_noop; n=${2:-10}; : > "$S/bench.txt"
        for i in $(seq "$n"); do
            t0=$(date +%s%N); run_vm "$TINY" "$S/noop.tar" "$S/noop.out" "$S/noop.log" 1M; t1=$(date +%s%N)
            tar -xOf "$S/noop.out" status | grep -q '^result ok' || { echo "run $i failed"; cat "$S/noop.log"; }
            echo "$(( (t1 - t0) / 1000000 )) $(sed -n 's/^barn: init ms //p' "$S/noop.log") $(sed -n 's/^barn: poweroff ms //p' "$S/noop.log")" >> "$S/bench.txt"
        done
        echo "no-op tiny job, $n runs: wall ms / guest uptime at init / at poweroff (median min max)"
        for c in 1 2 3; do
            cut -d' ' -f$c "$S/bench.txt" | sort -n | awk '{ a[NR] = $1 } END { printf "  %s: median %d min %d max %d\n", c, a[int((NR + 1) / 2)], a[1], a[NR] }' c="$(echo wall init poweroff | cut -d' ' -f$c)"
        done
        ;;
    tiny | fail) ;;
    *) echo "usage: $0 [tiny|fail|debian|bench [N]|all]" >&2; exit 2 ;;
esac
