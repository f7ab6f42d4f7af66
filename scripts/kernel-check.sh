#!/usr/bin/env bash
# Run tests under another Linux kernel: a Debian kernel package booted in
# qemu (software emulation, no KVM needed), with this machine's file system
# shared read-only over 9p, so the guest runs this checkout and its .venv
# as they are. Catches kernel differences the CI machine cannot show (it
# found that kernels before 6.4 return map update errors as 32-bit ints).
#
#   sudo scripts/kernel-check.sh [KERNEL_PACKAGE|FILE.deb] [PYTEST ARGS...]
#   sudo scripts/kernel-check.sh "" -m kernel_matrix tests     (what CI runs)
#   sudo scripts/kernel-check.sh linux-image-6.1.0-56-amd64 tests/test_replay.py
#   sudo scripts/kernel-check.sh bullseye/linux-image-amd64 tests/test_record.py
#
# KERNEL_PACKAGE defaults to the one linux-image-amd64 depends on (Debian
# 12: 6.1); SUITE/PACKAGE takes it from another Debian release, where
# linux-image-amd64 stands for the kernel it depends on. PYTEST ARGS
# default to the tests marked kernel_matrix. Needs scripts/setup.sh run first; installs qemu-system-x86 and busybox-static.
# Under emulation tests run ~5x slower: pick a few. EBPF_BOLT_STRICT_SKIPS
# is passed on to the guest. Exits with pytest's status in the guest, or 1
# when the guest gave none (it then prints the guest's last lines); the
# guest is stopped after KERNEL_CHECK_TIMEOUT seconds (default 2400).
# KERNEL_CHECK_APPEND adds to the guest kernel's command line, e.g.
# KERNEL_CHECK_APPEND=possible_cpus=192: 192 possible CPUs (2 online), so
# every per-CPU map is allocated 192 times, as on a big host.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "kernel-check: run as root (sudo)" >&2
    exit 3
fi
[ -x .venv/bin/python ] || { echo "kernel-check: run scripts/setup.sh first" >&2; exit 2; }

# apt-get, and once more after an update: a fresh machine may have no
# package lists, and old lists may name a kernel the mirror has dropped
apt_retry() {
    "$@" || { apt-get update -q >/dev/null && "$@"; }
}
if ! command -v qemu-system-x86_64 >/dev/null || [ ! -x /bin/busybox ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_retry apt-get install -y -q --no-install-recommends \
        qemu-system-x86 busybox-static >/dev/null
fi

PKG=${1:-}
shift || true
if [ -z "$PKG" ]; then
    apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -q >/dev/null
    PKG=$(apt-cache depends linux-image-amd64 | sed -n 's/ *Depends: //p' | head -1)
fi
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(-m kernel_matrix tests)

WORK=$(mktemp -d /var/tmp/kernel-check.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
if [ -f "$PKG" ]; then
    DEB=$(realpath "$PKG")
    cd "$WORK"
else
    cd "$WORK"
    # apt downloads as user _apt, into a directory that user may write
    mkdir deb
    chown _apt deb 2>/dev/null || true
    if [[ $PKG == */* ]]; then
        # SUITE/PACKAGE, e.g. bullseye/linux-image-amd64 (Debian 11: 5.10):
        # another release's archive, through apt options and lists of its own
        suite=${PKG%%/*} PKG=${PKG#*/}
        mkdir -p apt/lists/partial apt/archives/partial
        printf 'deb http://deb.debian.org/debian %s main\n' "$suite" > apt/sources.list
        printf 'deb http://deb.debian.org/debian-security %s-security main\n' \
            "$suite" >> apt/sources.list
        APT=(-o Dir::Etc::sourcelist="$WORK/apt/sources.list" -o Dir::Etc::sourceparts=-
             -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache="$WORK/apt")
        apt-get "${APT[@]}" update -q >/dev/null
        [ "$PKG" != linux-image-amd64 ] ||
            PKG=$(apt-cache "${APT[@]}" depends "$PKG" | sed -n 's/ *Depends: //p' | head -1)
        (cd deb && apt-get "${APT[@]}" download "$PKG" >/dev/null)
    else
        (cd deb && apt_retry apt-get download "$PKG" >/dev/null)
    fi
    DEB=$(ls "$WORK"/deb/*.deb)
fi
dpkg-deb -x "$DEB" kernel
VMLINUZ=$(ls kernel/boot/vmlinuz-*)
MODS=$(ls -d kernel/lib/modules/*)

# 9p over virtio, as modules in Debian's kernels; each module's own
# "depends=" names what must be loaded before it
mkdir -p initrd/bin initrd/mods initrd/proc initrd/sys initrd/dev \
    initrd/host initrd/hostro
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

# The guest's command, for the host's /bin/sh: pytest with the given
# arguments, each single-quoted so spaces survive, in the shared checkout.
# It travels in the initrd: nothing is written to the checkout.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
    echo "cd $(quote "$ROOT") || exit 2"
    echo "export HOME=/tmp PYTHONDONTWRITEBYTECODE=1"
    [ -z "${EBPF_BOLT_STRICT_SKIPS:-}" ] ||
        echo "export EBPF_BOLT_STRICT_SKIPS=$(quote "$EBPF_BOLT_STRICT_SKIPS")"
    printf 'exec .venv/bin/python -m pytest -p no:cacheprovider -q --color=no'
    for a in "${TESTS[@]}"; do printf ' %s' "$(quote "$a")"; done
    echo
} > initrd/run-tests

# The guest's root is the host's, read-only, with its own /proc, /sys and
# /dev, and writable tmpfs on /tmp (HOME, pytest's tmp_path) and /run. A
# checkout under /tmp or /run, which those tmpfs hide, is bound back from
# a second view of the host's root, /hostro.
cat > initrd/init <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in ${order[*]}; do insmod /mods/\$m.ko; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host
mount -o bind /host /hostro
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev; mount -t bpf bpf /host/sys/fs/bpf
mount -t tmpfs tmp /host/tmp; mount -t tmpfs run /host/run
if [ ! -d $(quote "/host$ROOT/.venv") ]; then
    mkdir -p $(quote "/host$ROOT")
    mount -o bind $(quote "/hostro$ROOT") $(quote "/host$ROOT")
fi
cp /run-tests /host/tmp/kernel-check-run-tests
echo "kernel-check: guest kernel \$(uname -r), \$(nproc) CPUs online, possible \$(cat /sys/devices/system/cpu/possible)"
chroot /host /bin/sh /tmp/kernel-check-run-tests
echo "kernel-check: pytest exit \$?"
poweroff -f
EOF
chmod +x initrd/init
(cd initrd && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)

echo "kernel-check: booting $PKG ($(basename "$VMLINUZ")) in qemu: ${TESTS[*]}"
start=$SECONDS
timeout "${KERNEL_CHECK_TIMEOUT:-2400}" \
    qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 3G -nographic -no-reboot \
    -kernel "$VMLINUZ" -initrd initrd.gz \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -append "console=ttyS0 edd=off panic=-1 quiet ${KERNEL_CHECK_APPEND:-}" </dev/null 2>&1 | tee guest.log \
    | tr -d '\r' | grep --line-buffered -v '^\s*$' | sed -u -n '/kernel-check:/,$p' || true
status=$(tr -d '\r' < guest.log | sed -n 's/.*kernel-check: pytest exit \([0-9]*\)$/\1/p' | tail -1)
if [ -z "$status" ]; then
    echo "kernel-check: the guest gave no pytest exit status after $((SECONDS - start)) s; its last lines:" >&2
    tail -n 30 guest.log >&2
    exit 1
fi
echo "kernel-check: $PKG: pytest exit $status after $((SECONDS - start)) s"
exit "$status"
