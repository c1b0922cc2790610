#!/usr/bin/env bash
# Benchmark of the x2nestos image writer (examples/write_image.rs) against `xz -dc | dd` and
# `coreos-installer install --image-file … --insecure` (installed by cargo if missing): the same images
# (single-block xz and multi-block xz from `xz -T2`) onto the same loop device over a file in
# a temp dir. Prints MB/s of uncompressed bytes, CPU seconds and peak RSS. Not a test.
#
#   tools/bench-writer.sh            # 1024 MiB image
#   SIZE_MIB=2048 tools/bench-writer.sh
#
# Needs root (loop devices). Never touches a real disk.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

SIZE_MIB=${SIZE_MIB:-1024}
PRESET=${PRESET:-6}
need_packages time xz-utils util-linux udev
[ "$(id -u)" -eq 0 ] || { echo "error: bench-writer.sh needs root for loop devices" >&2; exit 1; }

work=$(mktemp -d /var/tmp/bench-writer.XXXXXX)
loop=""
cleanup() {
    [ -n "$loop" ] && losetup --detach "$loop" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "build the writer (release)" cargo build --release --quiet --example write_image
writer=${CARGO_TARGET_DIR:-target}/release/examples/write_image

# A disk-like image: a GPT signature, ~60% real files from /usr (text, binaries, already
# compressed data), the rest zeros, as a filesystem image with free space looks.
make_image() {
    local raw=$work/disk.raw data_mib=$((SIZE_MIB * 6 / 10))
    truncate -s "${SIZE_MIB}M" "$raw"
    printf 'EFI PART' | dd of="$raw" bs=1 seek=512 conv=notrunc status=none
    { tar -cf - /usr/lib /usr/share /usr/bin 2>/dev/null || true; } | head -c "$((data_mib << 20))" |
        dd of="$raw" bs=1M seek=1 conv=notrunc status=none iflag=fullblock
}
step "make a ${SIZE_MIB} MiB raw image" make_image
step "xz -$PRESET single block" sh -c "xz -T1 -$PRESET -c '$work/disk.raw' > '$work/single.raw.xz'"
step "xz -$PRESET -T2 multi-block" sh -c "xz -T2 -$PRESET -c '$work/disk.raw' > '$work/multi.raw.xz'"
rm -f "$work/disk.raw"
for img in single multi; do
    printf '%s: %s bytes, %s\n' "$img" "$(stat -c %s "$work/$img.raw.xz")" \
        "$(xz --robot -l "$work/$img.raw.xz" | awk '$1=="totals"{print $3" block(s)"}')"
done

truncate -s "$((SIZE_MIB + 64))M" "$work/target.img"
loop=$(losetup --find --show --partscan "$work/target.img")
echo "target: $loop over $work/target.img"

coreos=$(command -v coreos-installer || true)
[ -n "$coreos" ] || coreos=$(ls ~/.cargo/bin/coreos-installer 2>/dev/null || true)
if [ -z "$coreos" ]; then
    step "coreos-installer (cargo install, several minutes)" cargo install --quiet --locked coreos-installer
    coreos=~/.cargo/bin/coreos-installer
fi

# coreos-installer wants what a real install host has: a disk whose partition table the kernel
# re-reads (so the loop device is made with -P), a udevd to settle, and blkid answering for
# every block device when it looks for duplicate "boot" filesystems after the write. It runs in
# a namespace of its own with a private /run/udev and a udevd in an empty network namespace (it
# receives no kernel events, so it changes nothing on this machine and settles at once), and a
# blkid that reports nothing for this machine's own disks, which a sandbox may forbid opening.
cat > "$work/coreos-ns.sh" <<'NS'
#!/bin/sh
mkdir -p /run/udev && mount -t tmpfs tmpfs /run/udev || exit 1
/lib/systemd/systemd-udevd --daemon 2>/dev/null || exit 1
shim=$(mktemp -d)
cat > "$shim/blkid" <<'SHIM'
#!/bin/sh
for a in "$@"; do case $a in /dev/vd*|/dev/sd*|/dev/nvme*|/dev/xvd*) exit 0 ;; esac; done
exec /usr/sbin/blkid "$@"
SHIM
chmod +x "$shim/blkid"
PATH=$shim:$PATH "$@"
rc=$?
udevadm control --exit 2>/dev/null
rm -rf "$shim"
exit $rc
NS
chmod +x "$work/coreos-ns.sh"

# run NAME CMD...: runs CMD under /usr/bin/time -v and prints one result row.
printf '\n%-28s %9s %9s %9s %10s\n' "run" "wall s" "MB/s" "CPU s" "peak RSS"
run() {
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches
    if ! /usr/bin/time -v -o "$work/time.txt" "$@" > "$work/out.txt" 2>&1; then
        printf '%-28s FAILED: %s\n' "$name" "$(tail -n 2 "$work/out.txt" | tr '\n' ' ')"
        return 0
    fi
    awk -v name="$name" -v bytes=$((SIZE_MIB << 20)) -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, t, ":"); wall = (n == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
        /User time/ { user = $2 } /System time/ { sys = $2 }
        /Maximum resident set size/ { rss = $2 }
        END { printf "%-28s %9.2f %9.1f %9.2f %7.1f MiB\n", name, wall, bytes / wall / 1e6, user + sys, rss / 1024 }
    ' "$work/time.txt"
}

for img in single multi; do
    file=$work/$img.raw.xz
    sum=$(sha256sum "$file" | cut -d' ' -f1)
    run "housekeeper ($img)" "$writer" "$file" "$loop" --sha256 "$sum"
    run "xz -dc | dd ($img)" sh -c "xz -dc '$file' | dd of='$loop' bs=4M conv=fsync status=none"
    run "xz -T2 -dc | dd ($img)" sh -c "xz -T2 -dc '$file' | dd of='$loop' bs=4M conv=fsync status=none"
    run "coreos-installer ($img)" unshare --mount --net --propagation private \
        "$work/coreos-ns.sh" "$coreos" install --image-file "$file" --insecure "$loop"
done
