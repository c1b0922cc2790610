#!/usr/bin/env bash
# The main job, played on QEMU machines with visible progress (README: "Run the main job").
#
# On a fresh Debian 12 machine (as root, with a Rust toolchain) it installs what it needs with
# apt-get, builds hkd, x2nestos and the VM images, then shows, each on real machines under
# emulation:
#   0. x2nestos converting a plain Debian 12 machine ("generic") into the NestOS-like test OS:
#      `x2nestos convert --image http://…/metal.raw.xz --sha256 … --disk /dev/vda --yes` in the
#      guest, kexec into the conversion initramfs, the image written, the reboot, Ignition
#      applying the carried identity; then SSH with the machine's original key, same host name,
#      hkd running, the install log read from the new disk,
#   1. a plain Debian 12 machine ("generic", the kind an admin converts) booting,
#   2. the NestOS-like test OS booting from its metal image, Ignition applying its config
#      on the first boot only,
#   3. an OSTree upgrade v1 -> v2 by hand: pull from the host's update server, deploy, reboot,
#      v2 booted with v1 kept for rollback,
#   4. hkd, as the node's systemd service, upgrading it v1 -> v2 on its own (stage, reboot
#      through logind, verify, health gate: done), then v2 -> v3, whose health check fails:
#      hkd rolls the node back to v2 by itself.
#   5. a cluster of two testos machines whose hkd follow a kube-apiserver on this host
#      (reached from the guests at https://10.0.2.2): `hkctl install` writes the nodes'
#      kubeconfig, `hkctl upgrade` starts the rollout, and the elected coordinator lets one
#      node after the other cordon, drain, reboot into v2, verify and uncordon.
#
# Every build uses tools/test-all.sh's feature set (--all-features), so after a test run in the
# same checkout the demo rebuilds nothing and the images are cached. At the end, pass or fail,
# the wall time of every step is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh
t_all=$SECONDS
trap 'step_summary; echo "total: $((SECONDS - t_all))s"' EXIT

command -v cargo >/dev/null 2>&1 ||
    { echo "error: cargo not found: install a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
# shellcheck disable=SC2046 # one package per word
step "host packages" need_packages build-essential pkg-config git $(vm-tests/images/build.sh packages)
step "build hkd (it goes into the test OS image)" cargo build --quiet --all-features --bin hkd
step "VM images (cached by their inputs)" env HKD_BIN=target/debug/hkd vm-tests/images/build.sh all
step "build x2nestos (release: the guest hashes and decompresses 1.2 GiB)" cargo build --quiet --release --bin x2nestos
step "kube-apiserver and etcd for the cluster act (built once from Debian's source, cached)" \
    tests/kube/build-kube.sh
step "build the VM scenarios" cargo test --quiet --all-features --test vm --no-run

scenario() {
    cargo test --quiet --all-features --test vm -- --exact --nocapture --test-threads=1 "$1"
}
step "0/4 x2nestos converts the generic Debian 12 machine into testos, carrying its identity" \
    scenario convert::generic_converts_to_testos_carrying_its_identity
step "1/4 boot the generic Debian 12 machine" scenario smoke::generic_boots_to_multi_user
step "2/4 boot testos from its metal image; Ignition on first boot only" \
    scenario smoke::testos_runs_ignition_on_first_boot_only
step "3/4 upgrade testos v1 -> v2 by hand, v1 kept for rollback" \
    scenario smoke::testos_upgrades_v1_to_v2_by_hand
step "4/4 hkd upgrades testos to v2, then rolls back a v3 that fails its health check" \
    scenario hkd::testos_hkd_upgrades_to_v2_then_rolls_back_a_failing_v3
cat <<'EOF'

5. The cluster. A kube-apiserver runs on this host; two testos machines boot with hkd set to
   follow it (the kubeconfig `hkctl install` wrote, given to each machine through Ignition).
   `hkctl upgrade` asks for v2 with at most one node out of service: one node after the
   other is granted, cordoned, drained, rebooted into v2, verified and uncordoned, and the
   Update ends Complete. No kubelet runs in the machines: the host stands in for it.
EOF
step "5. a cluster of two testos machines rolled to v2 one at a time by their hkd" \
    scenario cluster::testos_cluster_rolls_two_nodes_to_v2_one_at_a_time

echo "demo done; serial logs in target/tmp/vm-tests/"
