# shellcheck shell=bash
# Shared helpers for barn image recipes (images/*/build.sh). Source it; needs bash.
#
# Inputs (environment):
#   SOURCE_DATE_EPOCH  every timestamp in the image (default: BARN_IMAGE_EPOCH below)
#   BARN_CACHE         where downloaded .debs are kept (default /tmp/barn-cache)
#   BARN_KERNEL_PKG    override the kernel package (default: what linux-image-cloud-amd64
#                      depends on in the machine's apt sources)
# Host tools: apt-get, apt-cache, dpkg-deb, lz4 (or zstd/xz/gzip), cpio,
# readelf, sha256sum; mmdebstrap + sqfstar for the Debian image.

set -euo pipefail
export LC_ALL=C TZ=UTC

BARN_IMAGE_EPOCH=1704067200           # 2024-01-01T00:00:00Z, fixed by the recipe
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$BARN_IMAGE_EPOCH}"
BARN_CACHE="${BARN_CACHE:-/tmp/barn-cache}"
BARN_IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

barn_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
barn_die() { barn_log "error: $*"; exit 1; }

# barn_kernel_pkg -> name of the concrete kernel package (e.g. linux-image-6.1.0-56-cloud-amd64)
barn_kernel_pkg() {
    if [ -n "${BARN_KERNEL_PKG:-}" ]; then echo "$BARN_KERNEL_PKG"; return; fi
    local p
    p=$(apt-cache depends --important linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    [ -n "$p" ] || barn_die "cannot resolve linux-image-cloud-amd64 with apt-cache"
    echo "$p"
}

# barn_fetch_deb PKG -> path of PKG's candidate .deb in $BARN_CACHE (downloaded if missing)
barn_fetch_deb() {
    local pkg=$1 ver arch f
    ver=$(apt-cache show --no-all-versions "$pkg" | awk '/^Version:/ { print $2; exit }')
    arch=$(apt-cache show --no-all-versions "$pkg" | awk '/^Architecture:/ { print $2; exit }')
    [ -n "$ver" ] || barn_die "apt has no candidate for $pkg"
    mkdir -p "$BARN_CACHE"
    f="$BARN_CACHE/${pkg}_${ver//:/%3a}_${arch}.deb"
    if [ ! -s "$f" ]; then
        barn_log "downloading $pkg=$ver"
        # apt-get download writes into the cwd; _apt cannot always write there: harmless warning
        (cd "$BARN_CACHE" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
        [ -s "$f" ] || barn_die "download of $pkg=$ver failed"
    fi
    echo "$f"
}

# barn_extract_vmlinux BZIMAGE OUT: the ELF payload of a bzImage, like the kernel's
# scripts/extract-vmlinux: try every compression magic offset until one decompresses to ELF.
barn_extract_vmlinux() {
    local bz=$1 out=$2 magic tool off
    for spec in 'lz4:\x02\x21\x4c\x18' 'zstd:\x28\xb5\x2f\xfd' 'xz:\xfd\x37\x7a\x58\x5a\x00' 'gzip:\x1f\x8b\x08'; do
        tool=${spec%%:*}; magic=${spec#*:}
        command -v "$tool" >/dev/null || continue
        for off in $(LC_ALL=C grep -obUaP "$magic" "$bz" | cut -d: -f1); do
            # trailing bytes after the payload make the tools exit non-zero: judge the result
            tail -c +$((off + 1)) "$bz" | "$tool" -dc > "$out" 2>/dev/null || true
            if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
               readelf -h "$out" >/dev/null 2>&1; then
                # the whole ELF must be there: section header table inside the file
                local shoff shnum shsz
                shoff=$(readelf -h "$out" | awk -F: '/Start of section headers/ { print $2+0 }')
                shnum=$(readelf -h "$out" | awk -F: '/Number of section headers/ { print $2+0 }')
                shsz=$(readelf -h "$out" | awk -F: '/Size of section headers/ { print $2+0 }')
                if [ $((shoff + shnum * shsz)) -le "$(stat -c %s "$out")" ]; then
                    barn_log "vmlinux: $tool payload at offset $off"
                    return 0
                fi
            fi
        done
    done
    rm -f "$out"
    barn_die "no ELF payload found in $bz"
}

# barn_module_order MODDIR NAME... -> module file paths (relative to MODDIR), one a line,
# dependencies first. Resolved from each module's own depends= field (.modinfo), never from
# a fixed list: the order changes between kernel builds.
barn_module_order() {
    local moddir=$1; shift
    declare -A file=() state=()
    local f n
    while IFS= read -r f; do
        n=${f##*/}; n=${n%.ko}; n=${n//-/_}
        file[$n]=$f
    done < <(cd "$moddir" && find . -name '*.ko' | sed 's|^\./||' | sort)
    _barn_visit() {
        local m=$1 d deps
        case "${state[$m]:-}" in done) return ;; active) barn_die "module dependency cycle at $m" ;; esac
        [ -n "${file[$m]:-}" ] || barn_die "module $m not found under $moddir (built in?)"
        state[$m]=active
        deps=$(tr '\0' '\n' < "$moddir/${file[$m]}" | sed -n 's/^depends=//p' | head -n1)
        for d in ${deps//,/ }; do _barn_visit "${d//-/_}"; done
        state[$m]=done
        echo "${file[$m]}"
    }
    for n in "$@"; do _barn_visit "${n//-/_}"; done
}

# barn_initramfs_tree DIR KMODDIR MODULE...: fills DIR with busybox, /init, the modules
# (flat, in /lib/modules) and /etc/barn-modules (their load order).
barn_initramfs_tree() {
    local dir=$1 kmoddir=$2; shift 2
    local bb a m deb
    # busybox from the busybox-static .deb the machine's apt picks (not the host's own
    # binary): the initramfs then depends only on package versions
    deb=$(barn_fetch_deb busybox-static)
    mkdir -p "$dir.bb"
    dpkg-deb -x "$deb" "$dir.bb"
    bb="$dir.bb/bin/busybox"
    [ -x "$bb" ] || barn_die "no bin/busybox in $deb"
    mkdir -p "$dir"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,root,build,.barn,newroot}
    chmod 1777 "$dir/tmp"; chmod 0700 "$dir/root"
    cp "$bb" "$dir/bin/busybox"
    rm -rf "$dir.bb"
    for a in $("$dir/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -s busybox "$dir/bin/$a"
    done
    ln -s ../bin "$dir/.barn/bin"   # the init's own tools live at /.barn/bin in every root
    install -m 0755 "$BARN_IMAGES_DIR/guest/init" "$dir/init"
    local order
    order=$(barn_module_order "$kmoddir" "$@")
    : > "$dir/etc/barn-modules"
    for m in $order; do
        install -m 0644 "$kmoddir/$m" "$dir/lib/modules/${m##*/}"
        echo "${m##*/}" | sed 's/\.ko$//' >> "$dir/etc/barn-modules"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000:build:/build:/bin/sh\n' > "$dir/etc/passwd"
    printf 'root:x:0:\nbuild:x:1000:\n' > "$dir/etc/group"
    printf 'barn\n' > "$dir/etc/hostname"
    # tmp, proc, ... are mount points; the device nodes come from devtmpfs
    printf '/bin/sh\n' > "$dir/etc/shells"
}

# barn_pack_cpio DIR OUT: reproducible newc archive (sorted, root-owned, mtimes clamped).
# Uncompressed on purpose: measured faster to boot under TCG than gzip (see README.md).
barn_pack_cpio() {
    local dir=$1 out=$2
    find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    (cd "$dir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null --reproducible -H newc -o -R 0:0 --quiet) > "$out"
    if [ "${BARN_INITRD_COMPRESS:-none}" = gzip ]; then
        gzip -9 -n < "$out" > "$out.gz" && mv "$out.gz" "$out"
    fi
    touch -d "@$SOURCE_DATE_EPOCH" "$out"
}

# barn_kernel OUTDIR WORKDIR -> sets KVER, KPKG, KPKGVER, KMODDIR; writes OUTDIR/vmlinux
barn_kernel() {
    local outdir=$1 work=$2 deb
    KPKG=$(barn_kernel_pkg)
    deb=$(barn_fetch_deb "$KPKG")
    KPKGVER=$(dpkg-deb -f "$deb" Version)
    mkdir -p "$work/kernel"
    dpkg-deb -x "$deb" "$work/kernel"
    KVER=$(ls "$work/kernel/lib/modules")
    [ "$(echo "$KVER" | wc -w)" = 1 ] || barn_die "expected one kernel in $deb"
    KMODDIR="$work/kernel/lib/modules/$KVER"
    barn_extract_vmlinux "$work/kernel/boot/vmlinuz-$KVER" "$outdir/vmlinux"
    touch -d "@$SOURCE_DATE_EPOCH" "$outdir/vmlinux"
}

# barn_image_toml OUTDIR NAME ROOTFILE(or empty) EXTRA...: writes OUTDIR/image.toml
barn_image_toml() {
    local outdir=$1 name=$2 root=$3; shift 3
    local f
    {
        echo "# barn image, written by images/$name/build.sh"
        echo "name = \"$name\""
        echo "arch = \"x86_64\""
        echo "kernel_version = \"$KVER\""
        echo "kernel_package = \"$KPKG=$KPKGVER\""
        echo "source_date_epoch = $SOURCE_DATE_EPOCH"
        echo "machine = \"microvm\""
        echo "cpu = \"Nehalem-v1\""
        for f in "$@"; do echo "$f"; done
        echo
        echo "[files]"
        echo "kernel = \"vmlinux\""
        echo "initrd = \"initrd.img\""
        [ -z "$root" ] || echo "root = \"$root\""
        echo
        echo "[sha256]"
        for f in vmlinux initrd.img $root; do
            echo "\"$f\" = \"$(sha256sum "$outdir/$f" | cut -d' ' -f1)\""
        done
    } > "$outdir/image.toml"
    touch -d "@$SOURCE_DATE_EPOCH" "$outdir/image.toml"
}
