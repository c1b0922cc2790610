#!/usr/bin/env bash
# The one command that runs every test tier (README: "Run all tests").
# On a fresh Debian 12 machine it installs what the tiers need, builds, and runs:
#   1. formatting and lints
#   2. unit tests and the component-free integration tests (plain `cargo test` runs these too)
#   3. integration tests against host tools: ignition-validate, loop devices (feature host-tests)
#   4. integration tests against a real kube-apiserver       (feature kube-tests;
#      a real Zincati against it: feature zincati-tests)
#   5. whole-machine scenarios under QEMU                    (feature vm-tests)
# Packages are named with the tools each step needs (PKG:TOOL, tools/lib.sh need_packages);
# at the end, pass or fail, the wall time of every step is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh
t_all=$SECONDS
trap 'step_summary; echo "total: $((SECONDS - t_all))s"' EXIT

step "host packages" need_packages build-essential:cc,make pkg-config:pkg-config git:git ca-certificates
step "the test scripts' own helpers: need_packages against real apt and dpkg (root)" tools/tests/need-packages.sh
step "cargo-nextest" need_cargo_tool cargo-nextest cargo-nextest
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets --all-features --quiet -- -D warnings
step "rooms import downward only (tools/check-layers.sh, docs/design.md)" tools/check-layers.sh
# The tiers' tests are gated by features that change nothing in the crate itself; every
# step builds with all of them, so the crate and its tests are compiled once (plain
# `cargo test` runs the same unit and component-free tests without the features).
# The component-free integration tests are the files in tests/ that Cargo.toml gates behind
# no feature; every gated one must be run by a tier below.
gated=$(awk '/^\[\[/{t=($0=="[[test]]"); n=""} t&&$1=="name"{gsub(/"/,"",$3); n=$3}
    t&&$1=="required-features"&&n!=""{print n}' Cargo.toml)
free=()
for f in tests/*.rs; do
    b=$(basename "$f" .rs)
    grep -qxF "$b" <<<"$gated" || free+=(--test "$b")
done
for b in $gated; do
    grep -q -- "--test $b\b" "$0" || { echo "error: test $b is gated by a feature but no tier of $0 runs it" >&2; exit 1; }
done
step "unit and component-free tests" cargo nextest run --no-fail-fast --all-features --lib --bins "${free[@]}"
# --- tier: host tools (host-tests) ---
step "host packages for x2nestos" need_packages ignition:ignition-validate mount:mount,losetup xz-utils:xz
step "host-tests: ignition-validate, loop devices (root)" cargo nextest run --no-fail-fast --all-features --test convert_host
step "host packages for x2nestos plan/convert/install" need_packages gpgv:gpgv gnupg:gpg fdisk:sfdisk e2fsprogs:mkfs.ext4,debugfs util-linux:lsblk,wipefs dracut:dracut xorriso:xorriso busybox-static:busybox
step "host-tests: x2nestos refusing every bad input, gpgv, a mirror (busybox httpd), install onto loop devices (root)" cargo nextest run --no-fail-fast --all-features --test convert_cli
step "host packages for the conversion initramfs and live ISOs (dracut's systemd module needs systemd)" need_packages cpio:cpio dracut:dracut,lsinitrd systemd:systemctl xorriso:xorriso
step "host-tests: overlay cpio read back by cpio/lsinitrd, the dracut module built by dracut" cargo nextest run --no-fail-fast --all-features --test convert_initramfs

step "host packages for the OSTree backend" need_packages ostree:ostree
step "host-tests: the OSTree backend and the node agent on temporary sysroots" cargo nextest run --no-fail-fast --all-features --test os_ostree --test node_agent

step "host packages for the rpm-ostree backend (dbus-daemon)" need_packages dbus:dbus-daemon
step "host-tests: the rpm-ostree backend and logind reboots against stand-ins on a private bus" cargo nextest run --no-fail-fast --all-features --test os_rpmostree --test node_reboot

# --- tier: real Kubernetes API server (kube-tests) ---
step "kube-apiserver, kube-controller-manager, etcd (tests/kube/build-kube.sh)" tests/kube/build-kube.sh
step "host packages for the FleetLock clients on temporary sysroots (tests/fleetlock.rs)" need_packages ostree:ostree
step "kube-tests against a real API server" cargo nextest run --no-fail-fast --all-features --test kube_api --test cluster_drain --test cluster_coordinator --test fleetlock --test cluster_trust --test hkctl --test hkctl_fresh
step "kube-tests: rollouts of real hkd agents over simulated hosts, with faults" cargo nextest run --no-fail-fast --all-features --test cluster_sim
step "host packages for the reboot gates' test (a real Prometheus)" need_packages prometheus:prometheus
step "kube-tests: reboot gates against a real Prometheus" cargo nextest run --no-fail-fast --all-features --test cluster_gates
step "host packages for hkctl's terminal test" need_packages tmux:tmux
step "kube-tests: hkctl status --watch under tmux" cargo nextest run --no-fail-fast --all-features --test hkctl_watch

# --- tier: a real Zincati against the FleetLock server (zincati-tests) ---
step "host packages for building and confining Zincati (glib, libostree; unshare, setpriv)" need_packages libglib2.0-dev libostree-dev pkg-config:pkg-config util-linux:unshare,setpriv
step "Zincati 0.0.32 (cargo install into ~/.cache/housekeeper/zincati; about 30 min on 2 cores the first time)" sh -c 'test -x "$HOME/.cache/housekeeper/zincati/bin/zincati" || cargo install --quiet zincati --version 0.0.32 --root "$HOME/.cache/housekeeper/zincati"'
step "zincati-tests: a real Zincati gives back its lock through the coordinator's FleetLock server" cargo nextest run --no-fail-fast --all-features --test zincati

# --- tier: QEMU machines (vm-tests) ---
# shellcheck disable=SC2046 # one package per word
step "vm-tests host packages" need_packages $(vm-tests/images/build.sh packages)
step "hkd for the test OS image" cargo build --quiet --all-features --bin hkd
step "VM images (vm-tests/images/build.sh)" env HKD_BIN=target/debug/hkd vm-tests/images/build.sh all
step "x2nestos for the conversion scenarios (release: the guest hashes and decompresses 1.2 GiB)" cargo build --quiet --release --bin x2nestos
step "vm-tests: QEMU scenarios" cargo nextest run --no-fail-fast --all-features --test vm

echo "all test tiers passed"
