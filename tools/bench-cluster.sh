#!/usr/bin/env bash
# Cluster benchmarks against the real API server (benches/cluster/): figures beside their
# goals, not tests.
#
#   (a) a rollout of 60 Nodes, maxUnavailable 6, each node's own work fixed at 2 s: wall time
#       over the ideal 20 s (goal <= 1.10);
#   (b) from a node reporting Done to the next grant: median, p90, max (goal median <= 0.5 s);
#   (c) draining a Node with 100 pods: our Drainer against `kubectl drain` on the same server
#       and the same pods, recreated before each run (goal: ours not slower);
#   (a') and (b') the same rollout with reboot gates (a query and an alert filter) asked of a
#       real Prometheus before every plan (goal: within 10 % of (a) and (b));
#   (d) the coordinator's peak RSS (VmHWM) in a process of its own while it plans a rollout
#       over 2000 Nodes of a real node's size (goal <= 100 MiB).
#
# The API server is the kube-tests tier's (tests/support: etcd, kube-apiserver v1.20.2 and the
# disruption controller on 127.0.0.1, started for this run and stopped at its end;
# HOUSEKEEPER_TEST_KUBECONFIG points it at another cluster). In (a) and (b) the coordinator is
# the production code and the node agents are simulated: each watches its own Node and answers
# its grant with the phase annotations, Done 2 s after it saw the grant; no drain, no reboot.
#
# Usage: tools/bench-cluster.sh [rollout] [rollout-gated] [drain] [memory]     (none: all; about 3 minutes)
# The figures depend on the machine's load: the load average is printed beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

step "kube-apiserver, kube-controller-manager, etcd (tests/kube/build-kube.sh)" tests/kube/build-kube.sh >&2
# kubectl only for (c): from PATH, else built from the API server's Debian source (need_kubectl).
wanted=" ${*:-all} "
if [[ $wanted == *" rollout-gated "* || $wanted == *" all "* ]]; then
    step "prometheus for the gated rollout" need_packages prometheus:prometheus >&2
fi
if [[ $wanted == *" drain "* || $wanted == *" all "* ]]; then
    step "kubectl for (c)" need_kubectl >&2
fi
# Built once and run directly: a second cargo command could rebuild in a target directory that
# other builds share.
build() {
    cargo bench --quiet --features kube-tests --bench cluster --no-run --message-format=json-render-diagnostics |
        grep '"kind":\["bench"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' > "$exe_file"
}
exe_file=$(mktemp)
trap 'rm -f "$exe_file"' EXIT
step "build (release)" build >&2
exe=$(tail -n 1 "$exe_file")
[ -x "$exe" ] || { echo "error: cargo built no benchmark program" >&2; exit 1; }
"$exe" "${@:-all}"
