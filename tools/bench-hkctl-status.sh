#!/usr/bin/env bash
# `hkctl status` over 2000 Nodes (benches/hkctl_status.rs): its wall time beside the goal
# (under a second on this machine) and against `kubectl get nodes` on the same Nodes, measured
# in the same run. A figure, not a test.
#
# The API server is the kube-tests tier's (tests/support: etcd and kube-apiserver v1.20.2 on
# 127.0.0.1, started for this run and stopped at its end). The Nodes carry a status of a real
# node's size and the annotations of a rollout in its middle. Both programs are release
# builds / the installed kubectl, run as new processes with output to a pipe, alternately.
#
# Usage: tools/bench-hkctl-status.sh            (about a minute after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/lib.sh

step "kube-apiserver, kube-controller-manager, etcd (tests/kube/build-kube.sh)" tests/kube/build-kube.sh >&2
# The peer: kubectl from PATH, else built from the API server's Debian source (need_kubectl).
step "kubectl" need_kubectl >&2
step "build (release)" cargo bench --quiet --features kube-tests --bench hkctl_status --no-run >&2
cargo bench --quiet --features kube-tests --bench hkctl_status
