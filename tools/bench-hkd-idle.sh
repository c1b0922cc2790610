#!/usr/bin/env bash
# Idle cost of the node agent: resident memory and CPU of `hkd run` doing nothing.
#
# hkd runs against a temporary OSTree sysroot (real `ostree`) with its own config (metrics on
# a free port) for DURATION seconds (default 60) after it is ready; it holds no bus
# connection while idle (logind is reached when a reboot is asked for). Printed: RSS and peak RSS (VmHWM), CPU seconds used while idle, and
# the context switches of all its threads while idle — the wake-ups: an agent without
# polling loops shows next to none. Goal: RSS ≤ 16 MiB. Not a test: it prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh
DURATION=${DURATION:-60}

need_packages ostree bc
cargo build --release --quiet --bin hkd
hkd=${CARGO_TARGET_DIR:-target}/release/hkd

work=$(mktemp -d)
cleanup() {
    [ -n "${hkd_pid:-}" ] && kill "$hkd_pid" 2>/dev/null || true
    # OSTree marks deployment directories immutable.
    find "$work" -maxdepth 6 -type d -path '*/deploy/*' -exec chattr -i {} + 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A sysroot with one deployment.
root=$work/root
mkdir -p "$root" "$work/tree/usr/lib/modules/6.1.0" "$work/tree/usr/etc"
echo kernel > "$work/tree/usr/lib/modules/6.1.0/vmlinuz"
echo initramfs > "$work/tree/usr/lib/modules/6.1.0/initramfs.img"
printf 'ID=testos\nVERSION_ID=1\n' > "$work/tree/usr/lib/os-release"
ostree admin init-fs "$root" >/dev/null
ostree admin os-init --sysroot="$root" testos >/dev/null
ostree --repo="$root/ostree/repo" commit --branch=testos/x86_64/v1 \
    --add-metadata-string=version=1 --tree=dir="$work/tree" >/dev/null
ostree admin deploy --sysroot="$root" --os=testos testos/x86_64/v1 >/dev/null 2>&1
mkdir -p "$root/proc/sys/kernel/random" "$root/etc/hkd/config.d"
cat /proc/sys/kernel/random/boot_id > "$root/proc/sys/kernel/random/boot_id"
printf '[metrics]\nlisten = "127.0.0.1:0"\n' > "$root/etc/hkd/config.d/50-bench.toml"

NOTIFY_SOCKET= "$hkd" --root "$root" --socket "$work/hkd.sock" run &
hkd_pid=$!
for _ in $(seq 100); do [ -S "$work/hkd.sock" ] && break; sleep 0.1; done
[ -S "$work/hkd.sock" ] || { echo "hkd did not start" >&2; exit 1; }
sleep 2

ticks() { awk '{print $14 + $15}' "/proc/$hkd_pid/stat"; }
switches() {
    cat /proc/"$hkd_pid"/task/*/status |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}'
}
hz=$(getconf CLK_TCK)
per_thread() {
    for t in /proc/"$hkd_pid"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")"
    done
}
per_thread > "$work/before"
t0=$(ticks); s0=$(switches)
sleep "$DURATION"
t1=$(ticks); s1=$(switches)
per_thread > "$work/after"
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$hkd_pid/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$hkd_pid/status")
threads=$(ls "/proc/$hkd_pid/task" | wc -l)

printf 'hkd idle for %ss (%s threads)\n' "$DURATION" "$threads"
printf '  RSS            %6.1f MiB   (goal <= 16 MiB)\n' "$(echo "$rss / 1024" | bc -l)"
printf '  peak RSS       %6.1f MiB\n' "$(echo "$hwm / 1024" | bc -l)"
printf '  CPU while idle %6.3f s\n' "$(echo "($t1 - $t0) / $hz" | bc -l)"
printf '  wake-ups       %6d context switches in %ss (all threads)\n' "$((s1 - s0))" "$DURATION"
paste "$work/before" "$work/after" | awk '{ if ($4 - $2 > 0) printf "    %-14s %d\n", $1, $4 - $2 }'
