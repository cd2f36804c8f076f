#!/bin/bash
# Builds the smallest barn image: Debian cloud kernel (uncompressed vmlinux) + a
# busybox-static initramfs running images/guest/init. Tasks run with busybox only.
# Usage: images/tiny-x86_64/build.sh OUTDIR      (env: BARN_CACHE, SOURCE_DATE_EPOCH)
. "$(dirname "$0")/../lib.sh"

[ $# = 1 ] || barn_die "usage: $0 OUTDIR"
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
WORK=$(mktemp -d /tmp/barn-tiny.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

barn_kernel "$OUT" "$WORK"
barn_initramfs_tree "$WORK/initramfs" "$KMODDIR" virtio_mmio virtio_blk
barn_pack_cpio "$WORK/initramfs" "$OUT/initrd.img"
barn_image_toml "$OUT" tiny-x86_64 "" 'root_disk = false'
barn_log "built $(cat "$OUT/image.toml" | sed -n 's/^kernel_version = //p') into $OUT"
sha256sum "$OUT"/vmlinux "$OUT"/initrd.img "$OUT"/image.toml
