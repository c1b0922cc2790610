#!/usr/bin/env bash
# Benchmark of the x2nestos image writer (examples/write_image.rs) on a disk image shaped like
# a metal image: a GPT disk whose ext4 file systems were made by `mkfs.ext4 -d` from real files
# (a copy of part of /usr), about half used. The image is compressed four ways — single-block
# xz, multi-block xz (`xz -T2`), zstd, gzip — and each is written onto the same loop device
# (over a file in a temp dir) by our writer, by `coreos-installer install --image-file …
# --insecure` (installed by cargo if missing) and by decompress-into-dd pipes; beside them the
# floors: decoding alone into /dev/null, and writing the raw image alone with dd.
#
# Every contender runs RUNS times, round-robin; the medians are printed, then the ratios with
# their goals. Before each run that writes, the device is filled with random bytes; after it,
# the whole device is hashed and must equal the raw image: a zero run left unwritten, or any
# other wrong byte, fails the benchmark loudly.
#
#   tools/bench-writer.sh                        # 2048 MiB image, 3 runs
#   SIZE_MIB=1024 RUNS=1 tools/bench-writer.sh   # quicker, rougher
#   BENCH_WRITER_CACHE=/var/tmp/bw tools/bench-writer.sh   # keep the images for the next run
#
# Needs root (loop devices). Never touches a real disk. Not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

SIZE_MIB=${SIZE_MIB:-2048}
DATA_MIB=${DATA_MIB:-$((SIZE_MIB / 2))}
PRESET=${PRESET:-6}
RUNS=${RUNS:-3}
need_packages time xz-utils zstd gzip util-linux udev e2fsprogs:mkfs.ext4 fdisk:sfdisk openssl
[ "$(id -u)" -eq 0 ] || { echo "error: bench-writer.sh needs root for loop devices" >&2; exit 1; }
printf 'load average at start: %s (%s cores)\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)"

work=$(mktemp -d /var/tmp/bench-writer.XXXXXX)
images=${BENCH_WRITER_CACHE:-$work}
mkdir -p "$images"
loop=""
cleanup() {
    [ -n "$loop" ] && losetup --detach "$loop" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "build the writer (release)" cargo build --release --quiet --example write_image
writer=${CARGO_TARGET_DIR:-target}/release/examples/write_image

# pick DIR MIB DEST: copies regular files of DIR, in name order, until MIB would be passed.
pick() {
    find "$1" -xdev -type f -printf '%s %p\0' 2>/dev/null | sort -z -k2 |
        awk -v max=$(($2 << 20)) 'BEGIN { RS = "\0"; ORS = "\0" }
            { size = $1; path = substr($0, index($0, " ") + 1)
              if (sum + size <= max) { sum += size; print path } }' |
        tar --null --no-recursion -T - -cf - 2>/dev/null | tar -xf - -C "$3"
}

# The image: a GPT with a "boot" ext4 (384 MiB, less on a small image; 100 MiB of
# /usr/share, less on a small image) and a "root" ext4 over the rest (the remaining files, from
# /usr/lib), each made by mkfs.ext4 -d in place.
make_image() {
    local raw=$images/disk.raw tree=$work/tree boot_mib=$((SIZE_MIB / 4 < 384 ? SIZE_MIB / 4 : 384))
    local boot_data=$((DATA_MIB / 10 < 100 ? DATA_MIB / 10 : 100))
    mkdir -p "$tree/boot" "$tree/root" || return 1
    pick /usr/share "$boot_data" "$tree/boot" || return 1
    pick /usr/lib $((DATA_MIB - boot_data)) "$tree/root" || return 1
    rm -f "$raw"
    truncate -s "${SIZE_MIB}M" "$raw" || return 1
    printf 'label: gpt\nstart=2048, size=%s, name=boot\nstart=%s, size=%s, name=root\n' \
        $((boot_mib * 2048)) $(((boot_mib + 1) * 2048)) $(((SIZE_MIB - boot_mib - 2) * 2048)) |
        sfdisk --quiet "$raw" || return 1
    mkfs.ext4 -q -F -L boot -d "$tree/boot" -E offset=$((1 << 20)) "$raw" "${boot_mib}M" || return 1
    mkfs.ext4 -q -F -L root -d "$tree/root" -E offset=$(((boot_mib + 1) << 20)) "$raw" \
        "$((SIZE_MIB - boot_mib - 2))M" || return 1
    rm -rf "$tree"
}
recipe="size=$SIZE_MIB data=$DATA_MIB preset=$PRESET v1"
if [ "$(cat "$images/recipe" 2>/dev/null)" != "$recipe" ]; then
    rm -f "$images"/{recipe,disk.raw,multi.xz,single.xz,disk.zst,disk.gz,*.sha256}
    step "make a ${SIZE_MIB} MiB GPT + ext4 image with ${DATA_MIB} MiB of files" make_image
    step "xz -$PRESET -T2 (multi-block)" sh -c "xz -T2 -$PRESET -c '$images/disk.raw' > '$images/multi.xz'"
    step "xz -$PRESET (single block)" sh -c "xz -T1 -$PRESET -c '$images/disk.raw' > '$images/single.xz'"
    step "zstd -3" sh -c "zstd -q -3 -c '$images/disk.raw' > '$images/disk.zst'"
    step "gzip -6" sh -c "gzip -6 -c '$images/disk.raw' > '$images/disk.gz'"
    openssl dgst -sha256 -r < "$images/disk.raw" | cut -d' ' -f1 > "$images/disk.sha256"
    echo "$recipe" > "$images/recipe"
fi
raw_sum=$(cat "$images/disk.sha256")
bytes=$((SIZE_MIB << 20))
printf 'image: %s MiB, %s MiB of it allocated (the rest never written: zeroes)\n' "$SIZE_MIB" \
    "$(du -m "$images/disk.raw" | cut -f1)"
for f in single.xz multi.xz disk.zst disk.gz; do
    [ -s "$images/$f.sha256" ] || sha256sum "$images/$f" | cut -d' ' -f1 > "$images/$f.sha256"
    extra=
    case $f in *.xz) extra=", $(xz --robot -l "$images/$f" | awk '$1=="totals"{print $3" block(s)"}')" ;; esac
    printf '  %-9s %s bytes%s\n' "$f" "$(stat -c %s "$images/$f")" "$extra"
done

# The target is exactly the image's size, so hashing the whole device checks every byte.
truncate -s "${SIZE_MIB}M" "$work/target.img"
loop=$(losetup --find --show --partscan "$work/target.img")
echo "target: $loop over $work/target.img"

coreos=$(command -v coreos-installer || true)
[ -n "$coreos" ] || coreos=$(ls ~/.cargo/bin/coreos-installer 2>/dev/null || true)
if [ -z "$coreos" ]; then
    # Its zstd-sys links the system libzstd found through pkg-config.
    need_packages pkg-config libzstd-dev libssl-dev
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

# fill: random bytes over the whole device (a fresh key each time), flushed.
fill() {
    # openssl dies of SIGPIPE when dd has had enough: that is the normal end.
    { openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$RANDOM$RANDOM$SECONDS" < /dev/zero 2>/dev/null || true; } |
        dd of="$loop" bs=4M count=$((SIZE_MIB / 4)) iflag=fullblock conv=fsync status=none
    blockdev --rereadpt "$loop" 2>/dev/null || true
}

failed=0
results=$work/results.txt
: > "$results"
# run NAME WRITES CMD...: runs CMD under /usr/bin/time -v; WRITES=1 fills the device first and
# checks it after. Appends "NAME wall cpu rss_kib" to the results.
run() {
    local name=$1 writes=$2; shift 2
    [ "$writes" = 1 ] && fill
    sync; echo 3 > /proc/sys/vm/drop_caches
    if ! /usr/bin/time -v -o "$work/time.txt" "$@" > "$work/out.txt" 2>&1; then
        printf '%-34s FAILED: %s\n' "$name" "$(tail -n 3 "$work/out.txt" | tr '\n' ' ')"
        failed=1
        return 0
    fi
    if [ "$writes" = 1 ]; then
        local sum
        sum=$(openssl dgst -sha256 -r < "$loop" | cut -d' ' -f1)
        if [ "$sum" != "$raw_sum" ]; then
            printf '!!! %s: the device does not hold the image afterwards (sha256 %s, image %s)\n' \
                "$name" "$sum" "$raw_sum"
            failed=1
        fi
    fi
    awk -v name="$name" -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, t, ":"); wall = (n == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
        /User time/ { user = $2 } /System time/ { sys = $2 }
        /Maximum resident set size/ { rss = $2 }
        END { printf "%s\t%.2f\t%.2f\t%d\n", name, wall, user + sys, rss }
    ' "$work/time.txt" | tee -a "$results" | awk -F'\t' '{ printf "  %-34s %7.2f s\n", $1, $2 }'
}

ours() { run "housekeeper ($1)" 1 "$writer" "$images/$2" "$loop" --sha256 "$(cat "$images/$2.sha256")"; }
coreos() {
    run "coreos-installer ($1)" 1 unshare --mount --net --propagation private \
        "$work/coreos-ns.sh" "$coreos" install --image-file "$images/$2" --insecure "$loop"
}
pipe() { run "$1" 1 sh -c "$2 '$images/$3' | dd of='$loop' bs=4M conv=fsync status=none"; }
decode() { run "$1" 0 sh -c "$2 '$images/$3' > /dev/null"; }

for round in $(seq "$RUNS"); do
    echo "round $round of $RUNS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    run "write-only: dd raw image" 1 dd if="$images/disk.raw" of="$loop" bs=4M conv=fsync status=none
    for img in multi single; do
        ours "$img xz" "$img.xz"
        coreos "$img xz" "$img.xz"
        pipe "xz -dc | dd ($img)" "xz -dc" "$img.xz"
        pipe "xz -T2 -dc | dd ($img)" "xz -T2 -dc" "$img.xz"
        decode "decode-only: xz -T2 -dc ($img)" "xz -T2 -dc" "$img.xz"
    done
    ours zstd disk.zst
    coreos zstd disk.zst
    pipe "zstd -dc | dd" "zstd -dc" disk.zst
    decode "decode-only: zstd -dc" "zstd -dc" disk.zst
    ours gzip disk.gz
    coreos gzip disk.gz
    pipe "gzip -dc | dd" "gzip -dc" disk.gz
    decode "decode-only: gzip -dc" "gzip -dc" disk.gz
done
printf 'load average at end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"

# Medians (wall, CPU) and the highest peak RSS per contender, in first-run order.
medians=$work/medians.txt
awk -F'\t' '
    !($1 in n) { order[++count] = $1 }
    { n[$1]++; wall[$1, n[$1]] = $2; cpu[$1, n[$1]] = $3; if ($4 > rss[$1]) rss[$1] = $4 }
    function median(a, name, k,   i, j, t, v) {
        for (i = 1; i <= k; i++) v[i] = a[name, i]
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
    }
    END { for (i = 1; i <= count; i++) { c = order[i]
        printf "%s\t%.2f\t%.2f\t%.1f\t%d\n", c, median(wall, c, n[c]), median(cpu, c, n[c]), rss[c] / 1024, n[c] } }
' "$results" > "$medians"
printf '\n%-34s %8s %8s %8s %10s %5s\n' "median of runs" "wall s" "MB/s" "CPU s" "peak RSS" "runs"
awk -F'\t' -v bytes="$bytes" '{ printf "%-34s %8.2f %8.1f %8.2f %6.1f MiB %5d\n", $1, $2, bytes / $2 / 1e6, $3, $4, $5 }' "$medians"

wall() { awk -F'\t' -v name="$1" '$1 == name { print $2 }' "$medians"; }
# ratio LABEL NUM DEN GOAL OP: prints NUM/DEN beside the goal (OP is >= or <=).
ratio() {
    local label=$1 num=$2 den=$3 goal=$4 op=$5
    if [ -z "$num" ] || [ -z "$den" ]; then
        printf '%-58s %s\n' "$label" "missing (a run failed)"
        return
    fi
    awk -v l="$label" -v a="$num" -v b="$den" -v g="$goal" -v op="$op" 'BEGIN {
        r = a / b; met = (op == ">=") ? (r >= g) : (r <= g)
        printf "%-58s %6.2f  (goal %s %.2f: %s)\n", l, r, op, g, met ? "met" : "NOT MET" }'
}
floor() { # the slower of decoding alone and writing alone
    awk -v a="$(wall "$1")" -v b="$(wall "write-only: dd raw image")" 'BEGIN { if (a != "" && b != "") print (a > b) ? a : b }'
}
echo
ratio "multi-block xz: coreos-installer / ours" "$(wall "coreos-installer (multi xz)")" "$(wall "housekeeper (multi xz)")" 2.0 '>='
ratio "multi-block xz: (xz -T2 -dc | dd) / ours" "$(wall "xz -T2 -dc | dd (multi)")" "$(wall "housekeeper (multi xz)")" 0.95 '>='
ratio "single-block xz: coreos-installer / ours" "$(wall "coreos-installer (single xz)")" "$(wall "housekeeper (single xz)")" 1.25 '>='
ratio "zstd: coreos-installer / ours" "$(wall "coreos-installer (zstd)")" "$(wall "housekeeper (zstd)")" 2.0 '>='
ratio "gzip: coreos-installer / ours" "$(wall "coreos-installer (gzip)")" "$(wall "housekeeper (gzip)")" 1.0 '>='
ratio "multi-block xz: ours / floor" "$(wall "housekeeper (multi xz)")" "$(floor "decode-only: xz -T2 -dc (multi)")" 1.10 '<='
ratio "single-block xz: ours / floor" "$(wall "housekeeper (single xz)")" "$(floor "decode-only: xz -T2 -dc (single)")" 1.10 '<='
ratio "zstd: ours / floor" "$(wall "housekeeper (zstd)")" "$(floor "decode-only: zstd -dc")" 1.10 '<='
ratio "gzip: ours / floor" "$(wall "housekeeper (gzip)")" "$(floor "decode-only: gzip -dc")" 1.10 '<='
peak=$(awk -F'\t' '$1 ~ /^housekeeper/ && $4 > m { m = $4 } END { print m }' "$medians")
ratio "housekeeper's peak RSS over all formats, MiB" "$peak" 1 128 '<='

if [ "$failed" -ne 0 ]; then
    echo "error: a run failed or left the device different from the image (see above)" >&2
    exit 1
fi
