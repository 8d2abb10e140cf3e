#!/bin/sh
# Writes the boot test's own additions to the Debian base as a newc cpio archive:
# the probe unit and script, the fstab line for the state disk (tests/boot/guest/),
# the kernel's virtio modules (virtio_pci and virtio_blk are modules in
# Debian's cloud kernel; udev loads them from here), and the real etcd behind
# the etcd stand-in: this machine's /usr/bin/etcd (Debian's etcd-server), at
# /usr/lib/imgbuild-boot-test/etcd.
#
#   tests/boot/scaffold.sh OUT.cpio KERNEL_RELEASE
#
# None of this is imgbuild's output: the overlay built by imgbuild goes after it.
set -eu
out=${1:?usage: scaffold.sh OUT.cpio KERNEL_RELEASE}
kver=${2:?usage: scaffold.sh OUT.cpio KERNEL_RELEASE}
here=$(cd "$(dirname "$0")" && pwd)
moddir=/lib/modules/$kver
[ -d "$moddir" ] || { echo "scaffold: $moddir not found (kernel modules of $kver)" >&2; exit 1; }

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -a "$here/guest/." "$tree/"
[ -x /usr/bin/etcd ] || { echo "scaffold: /usr/bin/etcd not found (apt-get install etcd-server)" >&2; exit 1; }
mkdir -p "$tree/usr/lib/imgbuild-boot-test"
cp /usr/bin/etcd "$tree/usr/lib/imgbuild-boot-test/etcd"
mkdir -p "$tree/usr/lib/modules/$kver"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    src=$(modinfo -k "$kver" -n "$m")
    case "$src" in
        /*) ;;
        *) echo "scaffold: module $m of $kver is built in or missing ($src)" >&2; exit 1 ;;
    esac
    rel=${src#"$moddir"/}
    mkdir -p "$tree/usr/lib/modules/$kver/$(dirname "$rel")"
    cp "$src" "$tree/usr/lib/modules/$kver/$rel"
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
    cp "$moddir/$f" "$tree/usr/lib/modules/$kver/"
done
depmod -b "$tree/usr" "$kver" 2>/dev/null || depmod -b "$tree" "$kver"

(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$out"
