#!/bin/bash
# Builds the Debian 12 build image: a read-only squashfs root (minbase + build-essential,
# autoconf, automake, pkg-config, user build uid 1000) from the machine's own apt sources,
# the Debian cloud kernel (uncompressed vmlinux) and a busybox initramfs that mounts the
# squashfs under a tmpfs overlay and runs images/guest/init's stage 2 chrooted into it.
# Usage: images/debian-12-x86_64/build.sh OUTDIR   (env: BARN_CACHE, SOURCE_DATE_EPOCH)
. "$(dirname "$0")/../lib.sh"

[ $# = 1 ] || barn_die "usage: $0 OUTDIR"
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
WORK=$(mktemp -d /tmp/barn-debian.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PACKAGES=build-essential,autoconf,automake,pkg-config

barn_kernel "$OUT" "$WORK"
barn_initramfs_tree "$WORK/initramfs" "$KMODDIR" virtio_mmio virtio_blk squashfs overlay
: > "$WORK/initramfs/etc/barn-root"      # tells the init to wait for and mount the ROOT disk
barn_pack_cpio "$WORK/initramfs" "$OUT/initrd.img"

# No mirror argument: mmdebstrap takes the machine's apt sources. The user is written
# directly (useradd would stamp today's date into /etc/shadow).
t0=$(date +%s)
mmdebstrap --quiet --mode=unshare --variant=minbase --include="$PACKAGES" \
    --customize-hook='echo "build:x:1000:1000:build:/build:/bin/sh" >> "$1/etc/passwd"' \
    --customize-hook='echo "build:x:1000:" >> "$1/etc/group"' \
    --customize-hook='echo "build:*:19723:0:99999:7:::" >> "$1/etc/shadow"' \
    --customize-hook='echo "build:*::" >> "$1/etc/gshadow"' \
    --customize-hook='mkdir -p "$1/build" "$1/.barn" && chown 1000:1000 "$1/build"' \
    bookworm "$WORK/root.tar"
t1=$(date +%s)
rm -f "$OUT/root.squashfs"
sqfstar -quiet -comp zstd -all-root "$OUT/root.squashfs" < "$WORK/root.tar" >/dev/null
t2=$(date +%s)
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/root.squashfs"
barn_log "mmdebstrap $((t1 - t0)) s ($(stat -c %s "$WORK/root.tar") bytes), sqfstar $((t2 - t1)) s"

barn_image_toml "$OUT" debian-12-x86_64 root.squashfs 'root_disk = true' \
    "suite = \"bookworm\"" "packages = \"$PACKAGES\""
sha256sum "$OUT"/vmlinux "$OUT"/initrd.img "$OUT"/root.squashfs "$OUT"/image.toml
