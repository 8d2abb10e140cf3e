#!/bin/sh
# Builds, or reuses from the cache, the minimal Debian userland that imgbuild's
# boot test boots a controller node on, and prints the path of its newc cpio
# archive (uncompressed; the test puts imgbuild's overlay after it).
#
#   tests/boot/rootfs.sh CACHE_ROOT
#
# The cache lives outside the clone, in CACHE_ROOT/<key>/, where <key> hashes the
# package list, suite and format below: change any of them and a new userland is
# built next to the old one. debootstrap uses the machine's configured Debian
# package source (apt's sources), the only network access of the boot test.
set -eu

SUITE=bookworm
# systemd as PID 1 with udev (so the state disk's device unit appears) and dbus;
# kmod loads the virtio modules; nginx, curl and python3 (for the API-server
# stand-in) as the issue asks. kubectl is not here: it comes with imgbuild's overlay.
PACKAGES=systemd,systemd-sysv,udev,dbus,kmod,nginx-light,curl,ca-certificates,python3
# Bump when what is derived from the debootstrap tree (base.cpio) changes.
FORMAT=1

cache_root=${1:?usage: rootfs.sh CACHE_ROOT}
key=$(printf 'format=%s\nsuite=%s\nvariant=minbase\narch=amd64\npackages=%s\n' \
    "$FORMAT" "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
dir=$cache_root/$key
mkdir -p "$dir"
exec 9>"$dir/lock"
flock 9

if [ -f "$dir/complete" ] && [ -f "$dir/base.cpio" ]; then
    echo "boot test rootfs: reusing cached $dir (packages: $PACKAGES)" >&2
    echo "$dir/base.cpio"
    exit 0
fi

mirror=
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        mirror=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' "$f")
        [ -n "$mirror" ] && break
    done
fi
if [ -z "$mirror" ]; then
    echo "boot test rootfs: no Debian package source found in /etc/apt/sources.list{,.d/}" >&2
    exit 1
fi

echo "boot test rootfs: debootstrap $SUITE from $mirror into $dir (first run only; takes minutes)" >&2
start=$(date +%s)
rm -rf "$dir/rootfs.tmp" "$dir/rootfs"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir/rootfs.tmp" "$mirror" \
        > "$dir/debootstrap.log" 2>&1; then
    echo "boot test rootfs: debootstrap failed; last lines of $dir/debootstrap.log:" >&2
    tail -n 30 "$dir/debootstrap.log" >&2
    exit 1
fi
mv "$dir/rootfs.tmp" "$dir/rootfs"
chroot "$dir/rootfs" dpkg-query -W -f '${Package} ${Version}\n' > "$dir/packages.txt"
echo "boot test rootfs: debootstrap took $(( $(date +%s) - start ))s" >&2

# The initramfs part: everything but documentation, locales and apt's caches, and
# without Debian's own enablement of nginx.service (imgbuild's overlay must enable
# it, and the test checks that it does).
(
    cd "$dir/rootfs"
    find . \( -path ./usr/share/doc -o -path ./usr/share/man -o -path ./usr/share/info \
             -o -path ./usr/share/locale -o -path ./var/cache/apt -o -path ./var/lib/apt/lists \
             -o -path ./etc/systemd/system/multi-user.target.wants/nginx.service \) -prune \
           -o -print | LC_ALL=C sort | cpio -o -H newc --quiet
) > "$dir/base.cpio.tmp"
mv "$dir/base.cpio.tmp" "$dir/base.cpio"
date -u +%FT%TZ > "$dir/complete"
echo "boot test rootfs: $(du -h "$dir/base.cpio" | cut -f1) base archive ready after $(( $(date +%s) - start ))s" >&2
echo "$dir/base.cpio"
