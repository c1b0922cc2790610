#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager for the kube-tests tier, once per machine.
#
# No package registry ships those binaries, but Debian bookworm's `kubernetes` *source*
# package is the whole upstream v1.20.2 tree with vendor/, and it builds with Debian's own
# Go 1.19. This script:
#   1. installs etcd-server (and openssl, for the test cluster's certificates) with apt-get;
#   2. fetches the source package through a private APT_CONFIG (the system's apt sources,
#      lists and caches are never touched);
#   3. unpacks a private Go toolchain with `apt-get download` + `dpkg -x` (nothing installed);
#   4. builds the two binaries with the tree's own `make` in GOPATH mode;
#   5. caches them outside the repository, keyed by the source tarball's sha256:
#        $KUBE_CACHE/<sha256>/bin/{kube-apiserver,kube-controller-manager}
#        $KUBE_CACHE/current -> <sha256>        (the pointer the tests read)
#
# Idempotent: with the binaries cached and the source already fetched it touches no network
# and finishes in about a second. Every step prints how long it took.
#
# The step functions run under `step`, i.e. inside `if`, where bash ignores `set -e`: every
# command that can fail there carries its own `|| return 1`.
#
# `build-kube.sh kubectl` builds kubectl (v1.20.2) from the same source instead, for
# tools/bench-cluster.sh's drain benchmark on a machine without one (Debian 12's repositories
# have none): $KUBE_CACHE/<sha256>/kubectl/bin/kubectl. The tests never need it.
#
# Environment: XDG_CACHE_HOME / HOME choose the cache (KUBE_CACHE overrides it);
# KUBE_DEB_VERSION pins the source package version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../tools/lib.sh"

KUBE_DEB_VERSION=${KUBE_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
KUBE_CACHE=${KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/housekeeper/kube}
# The packages of Debian bookworm that make the toolchain. golang-github-modern-go-reflect2-dev
# replaces the vendored reflect2 1.0.1, which makes the apiserver panic on every JSON write
# when built with Go >= 1.18.
TOOL_PACKAGES=(golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev)
WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
BINARIES=(kube-apiserver kube-controller-manager)
MODE=${1:-servers}
case $MODE in
    servers) ;;
    kubectl) WHAT=cmd/kubectl; BINARIES=(kubectl) ;;
    *) echo "usage: $0 [kubectl]" >&2; exit 2 ;;
esac

srcdir=$KUBE_CACHE/src/$KUBE_DEB_VERSION
aptdir=$KUBE_CACHE/apt
t_all=$SECONDS

# A private apt configuration: its own sources list (deb + deb-src of bookworm), its own
# lists and caches. Only Debian's archive is contacted; /etc/apt and /var/lib/apt are not
# written.
private_apt() {
    mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/sources.list.d"
    cat >"$aptdir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
SRC
    cat >"$aptdir/apt.conf" <<CONF
Dir::Etc::SourceList "$aptdir/sources.list";
Dir::Etc::SourceParts "$aptdir/sources.list.d";
Dir::State::Lists "$aptdir/lists";
Dir::Cache "$aptdir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
CONF
    export APT_CONFIG=$aptdir/apt.conf
    apt-get update -qq || { echo "error: apt-get update with the private config $aptdir/apt.conf failed" >&2; return 1; }
}

# The source package files (.dsc, tarballs) are kept in the cache, so a re-run needs no network.
fetch_source() {
    if [ -f "$srcdir/.complete" ]; then
        echo "source package $KUBE_DEB_VERSION already fetched in $srcdir"
        return 0
    fi
    private_apt || return 1
    mkdir -p "$srcdir.partial" || return 1
    (cd "$srcdir.partial" && apt-get source --download-only -qq "kubernetes=$KUBE_DEB_VERSION") || return 1
    (cd "$srcdir.partial" && apt-get download -qq "${TOOL_PACKAGES[@]}") || return 1
    touch "$srcdir.partial/.complete" && rm -rf "$srcdir" && mv "$srcdir.partial" "$srcdir"
}

# The checksum that names the cache entry: the upstream tarball(s) of the source package.
source_sha() {
    local orig
    orig=$(ls "$srcdir"/kubernetes_*.orig*.tar.* 2>/dev/null | sort)
    if [ -z "$orig" ]; then
        echo "error: no kubernetes_*.orig*.tar.* in $srcdir; delete it and re-run $0" >&2
        return 1
    fi
    # shellcheck disable=SC2086
    cat $orig | sha256sum | cut -d' ' -f1
}

build() {
    local out=$1 work=$KUBE_CACHE/work
    rm -rf "$work" && mkdir -p "$work/toolchain" || return 1
    local p
    for p in "${TOOL_PACKAGES[@]}"; do
        dpkg -x "$(ls "$srcdir/${p}_"*.deb | head -n1)" "$work/toolchain" || return 1
    done
    local goroot=$work/toolchain/usr/lib/go-1.19
    [ -x "$goroot/bin/go" ] || { echo "error: no go binary in $goroot after unpacking ${TOOL_PACKAGES[*]}" >&2; return 1; }

    # dpkg-source applies Debian's patches (security fixes of the deb12u* updates). --no-check:
    # apt-get already verified the files against the archive's signed index.
    (cd "$work" && dpkg-source --no-check -x "$srcdir"/kubernetes_*.dsc tree >/dev/null) || return 1
    local tree=$work/tree

    local reflect2=$work/toolchain/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "$reflect2" ] || { echo "error: reflect2 sources missing from golang-github-modern-go-reflect2-dev" >&2; return 1; }
    rm -rf "$tree/vendor/github.com/modern-go/reflect2" &&
        cp -r "$reflect2" "$tree/vendor/github.com/modern-go/reflect2" || return 1

    # GOPATH mode: module mode fails on v1.20's go.mod, and plain `go build` misses the
    # generated code that the tree's make rules produce.
    mkdir -p "$tree/.go/src/k8s.io" && ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes" || return 1
    (
        cd "$tree/.go/src/k8s.io/kubernetes"
        export GOROOT=$goroot GOPATH=$tree/.go GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
            GOCACHE=$work/gocache GO111MODULE=off
        export PATH=$goroot/bin:$work/toolchain/usr/bin:$PATH
        make WHAT="$WHAT" GOLDFLAGS="-s -w"
    ) || { echo "error: make WHAT=\"$WHAT\" failed in $tree" >&2; return 1; }
    mkdir -p "$out.partial/bin" || return 1
    local b f
    for b in "${BINARIES[@]}"; do
        f=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n1)
        [ -n "$f" ] || { echo "error: make finished but $b is not under $tree/_output" >&2; return 1; }
        cp "$f" "$out.partial/bin/$b" || return 1
    done
    echo "$KUBE_DEB_VERSION" >"$out.partial/deb-version" &&
        rm -rf "$out" && mv "$out.partial" "$out" && rm -rf "$work"
}

# need_packages, retried while another apt/dpkg run holds the dpkg lock (CI and developers
# often install other tiers' packages at the same time).
need_packages_waiting() {
    local i
    for i in $(seq 1 30); do
        need_packages "$@" && return 0
        # (read /proc directly: procps may not be installed on a fresh machine)
        cat /proc/[0-9]*/comm 2>/dev/null | grep -qxE 'apt-get|apt|dpkg' || return 1
        echo "another apt-get/dpkg is running; retrying in 10s ($i/30)"
        sleep 10
    done
    return 1
}

main() {
    step "etcd-server, openssl, dpkg-dev, rsync (apt-get)" need_packages_waiting etcd-server:etcd \
        openssl:openssl dpkg-dev:dpkg-source rsync:rsync
    step "fetch kubernetes $KUBE_DEB_VERSION source and Go toolchain" fetch_source
    local sha out
    sha=$(source_sha)
    out=$KUBE_CACHE/$sha
    if [ "$MODE" = kubectl ]; then
        out=$KUBE_CACHE/$sha/kubectl
        [ -x "$out/bin/kubectl" ] || step "build kubectl (Go, a few minutes on 2 cores)" build "$out"
        echo "kubectl ready: $out/bin/kubectl"
        return 0
    fi
    if [ -x "$out/bin/kube-apiserver" ] && [ -x "$out/bin/kube-controller-manager" ]; then
        echo "==> binaries already built in $out"
    else
        step "build ${BINARIES[*]} (Go, about 6 minutes on 2 cores)" build "$out"
    fi
    ln -sfn "$sha" "$KUBE_CACHE/current"
    step "check binaries" "$out/bin/kube-apiserver" --version
    echo "kube binaries ready in $KUBE_CACHE/current/bin in $((SECONDS - t_all))s"
}

main "$@"
