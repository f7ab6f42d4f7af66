#!/usr/bin/env bash
# Run tests under another Linux kernel: a Debian kernel package booted in
# qemu (software emulation, no KVM needed), with this machine's file system
# shared read-only over 9p, so the guest runs this checkout and its .venv
# as they are. Catches kernel differences the CI machine cannot show (it
# found that kernels before 6.4 return map update errors as 32-bit ints).
#
#   sudo scripts/kernel-check.sh [KERNEL_PACKAGE|FILE.deb] [PYTEST ARGS...]
#   sudo scripts/kernel-check.sh linux-image-6.1.0-56-amd64 tests/test_replay.py
#
# KERNEL_PACKAGE defaults to the one linux-image-amd64 depends on (Debian
# 12: 6.1). Needs scripts/setup.sh run first; installs qemu-system-x86 and
# busybox-static. Under emulation tests run ~5x slower: pick a few files.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "kernel-check: run as root (sudo)" >&2
    exit 3
fi
[ -x .venv/bin/python ] || { echo "kernel-check: run scripts/setup.sh first" >&2; exit 2; }
if ! command -v qemu-system-x86_64 >/dev/null || [ ! -x /bin/busybox ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        qemu-system-x86 busybox-static >/dev/null
fi

PKG=${1:-$(apt-cache depends linux-image-amd64 | sed -n 's/ *Depends: //p' | head -1)}
shift || true
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests/test_bpf_object.py tests/test_replay.py)

WORK=$(mktemp -d /var/tmp/kernel-check.XXXXXX)
chmod 755 "$WORK"   # apt downloads as user _apt
trap 'rm -rf "$WORK"' EXIT
if [ -f "$PKG" ]; then
    DEB=$(realpath "$PKG")
    cd "$WORK"
else
    cd "$WORK"
    apt-get download "$PKG" >/dev/null
    DEB=$(ls "$WORK"/*.deb)
fi
dpkg-deb -x "$DEB" kernel
VMLINUZ=$(ls kernel/boot/vmlinuz-*)
MODS=$(ls -d kernel/lib/modules/*)

# 9p over virtio, as modules in Debian's kernels; each module's own
# "depends=" names what must be loaded before it
mkdir -p initrd/bin initrd/mods initrd/proc initrd/sys initrd/dev initrd/host
cp /bin/busybox initrd/bin/
declare -A seen=()
order=()
add_module() {
    local file
    file=$(find "$MODS" -name "$1.ko" | head -1)
    [ -n "$file" ] || return 0           # built into this kernel
    [ -z "${seen[$1]:-}" ] || return 0
    seen[$1]=1
    local dep
    for dep in $(strings "$file" | sed -n 's/^depends=//p' | tr , ' '); do
        add_module "$dep"
    done
    cp "$file" initrd/mods/
    order+=("$1")
}
for m in virtio_pci 9pnet_virtio 9p; do add_module "$m"; done

# the guest's command: pytest on the given files, from the shared checkout
printf '%s\n' "${TESTS[@]}" > "$ROOT/.kernel-check-args"
trap 'rm -rf "$WORK" "$ROOT/.kernel-check-args"' EXIT
cat > initrd/init <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in ${order[*]}; do insmod /mods/\$m.ko; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev; mount -t bpf bpf /host/sys/fs/bpf
mount -t tmpfs tmp /host/tmp; mount -t tmpfs run /host/run
echo "kernel-check: guest kernel \$(uname -r), \$(nproc) CPUs"
chroot /host /bin/sh -c 'cd $ROOT && HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
    .venv/bin/python -m pytest -p no:cacheprovider -q --color=no \$(cat .kernel-check-args)'
echo "kernel-check: pytest exit \$?"
poweroff -f
EOF
chmod +x initrd/init
(cd initrd && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)

echo "kernel-check: booting $PKG ($(basename "$VMLINUZ")) in qemu: ${TESTS[*]}"
qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 3G -nographic -no-reboot \
    -kernel "$VMLINUZ" -initrd initrd.gz \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -append "console=ttyS0 edd=off panic=-1 quiet" 2>/dev/null | tee guest.log \
    | grep -v '^\s*$' | sed -n '/kernel-check:/,$p'
grep -q '^kernel-check: pytest exit 0' guest.log
