#!/usr/bin/env bash
# Path: scripts/guest/build-guest-image.sh — builds Sluice's test guest: Debian 12's cloud kernel and an
# initramfs with busybox-static, the virtio modules, the migration agent (scripts/guest/agent.c) and
# scripts/guest/init. No root needed (cpio --owner root:root); apt-get download needs only apt's lists.
#
# Usage: scripts/guest/build-guest-image.sh OUTDIR
# Writes OUTDIR/vmlinuz, OUTDIR/initramfs.gz and OUTDIR/manifest (versions and sha256 of every input and
# output). Cached: when OUTDIR/manifest names the same inputs, nothing is rebuilt; the kernel package is
# kept in OUTDIR/cache so that a rebuild after an agent change downloads nothing.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "build-guest-image: $*"; }

# The virtio modules the guest loads, in dependency order (this kernel has virtio, virtio-pci and
# virtio_console as modules; ACPI CPU and memory hot-plug are built in: CONFIG_ACPI_HOTPLUG_CPU=y,
# CONFIG_ACPI_HOTPLUG_MEMORY=y, CONFIG_MEMORY_HOTPLUG=y). virtio_balloon is there for the device list.
modules=(
    kernel/drivers/virtio/virtio_ring.ko
    kernel/drivers/virtio/virtio.ko
    kernel/drivers/virtio/virtio_pci_legacy_dev.ko
    kernel/drivers/virtio/virtio_pci_modern_dev.ko
    kernel/drivers/virtio/virtio_pci.ko
    kernel/drivers/char/virtio_console.ko
    kernel/drivers/virtio/virtio_balloon.ko
)

# 1. Which kernel: the versioned package linux-image-cloud-amd64 depends on, at its candidate version.
kernel_package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9].*-cloud-amd64/ { print $2; exit }' || true)
if [ -z "$kernel_package" ]; then
    say "apt has no linux-image-cloud-amd64: running apt-get update"
    ${SUDO:-$([ "$(id -u)" = 0 ] || echo sudo)} apt-get update -qq
    kernel_package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9].*-cloud-amd64/ { print $2; exit }')
fi
kernel_version=$(apt-cache policy "$kernel_package" | awk '/Candidate:/ { print $2 }')
busybox_bin=/bin/busybox
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true)
if [ -z "$busybox_version" ] || readelf -l "$busybox_bin" 2>/dev/null | grep -q INTERP; then
    echo "build-guest-image: busybox-static is not installed (make deps installs it)" >&2
    exit 1
fi
gcc_version=$(gcc -dumpfullversion)

# 2. The cache key: every input by name and content.
inputs_key=$( {
    echo "kernel $kernel_package $kernel_version"
    echo "busybox $busybox_version $(sha256sum <"$busybox_bin" | cut -d' ' -f1)"
    echo "gcc $gcc_version"
    printf '%s\n' "${modules[@]}"
    cat "$here/agent.c" "$here/init" "$here/build-guest-image.sh" | sha256sum
} | sha256sum | cut -d' ' -f1)
if [ -f "$out/manifest" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.gz" ] \
    && grep -qx "inputs $inputs_key" "$out/manifest"; then
    say "up to date in $out (inputs $inputs_key)"
    exit 0
fi
say "building into $out (kernel $kernel_package $kernel_version, busybox $busybox_version)"

# 3. The kernel package, downloaded once per version.
mkdir -p "$out/cache"
deb="$out/cache/${kernel_package}_${kernel_version//:/%3a}_amd64.deb"
if [ ! -f "$deb" ]; then
    say "apt-get download $kernel_package=$kernel_version"
    (cd "$out/cache" && apt-get download -q "$kernel_package=$kernel_version" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    [ -f "$deb" ] || { echo "build-guest-image: apt-get download left no $deb" >&2; exit 1; }
fi
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$work/kernel"
release=$(ls "$work/kernel/lib/modules")
cp "$work/kernel/boot/vmlinuz-$release" "$work/vmlinuz"

# 4. The initramfs tree.
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc/sluice-agent,lib/modules}
cp "$busybox_bin" "$root/bin/busybox"
say "gcc -static -O2 agent.c"
gcc -static -O2 -Wall -Wextra -Werror -o "$root/sbin/sluice-agent" "$here/agent.c"
strip "$root/sbin/sluice-agent"
cp "$here/init" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox" "$root/sbin/sluice-agent"
: >"$root/lib/modules/load-order"
for module in "${modules[@]}"; do
    cp "$work/kernel/lib/modules/$release/$module" "$root/lib/modules/"
    basename "$module" >>"$root/lib/modules/load-order"
done
say "packing initramfs.gz (device nodes come from devtmpfs at boot)"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner root:root --quiet) \
    | gzip -9 -n >"$work/initramfs.gz"

# 5. Outputs and the manifest, moved in place last so that a half-built OUTDIR never looks complete.
mv "$work/vmlinuz" "$out/vmlinuz"
mv "$work/initramfs.gz" "$out/initramfs.gz"
{
    echo "inputs $inputs_key"
    echo "kernel-package $kernel_package $kernel_version"
    echo "kernel-release $release"
    echo "busybox-static $busybox_version"
    echo "gcc $gcc_version"
    echo "modules $(tr '\n' ' ' <"$root/lib/modules/load-order")"
    echo "sha256 vmlinuz $(sha256sum <"$out/vmlinuz" | cut -d' ' -f1)"
    echo "sha256 initramfs.gz $(sha256sum <"$out/initramfs.gz" | cut -d' ' -f1)"
    echo "sha256 sluice-agent $(sha256sum <"$root/sbin/sluice-agent" | cut -d' ' -f1)"
    echo "sha256 kernel-deb $(sha256sum <"$deb" | cut -d' ' -f1)"
} >"$out/manifest.tmp"
mv "$out/manifest.tmp" "$out/manifest"
say "done: $out/vmlinuz $out/initramfs.gz ($(du -k "$out/initramfs.gz" | cut -f1) KiB)"
