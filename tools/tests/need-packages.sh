#!/usr/bin/env bash
# need_packages (tools/lib.sh) against real apt and dpkg, without the network: small packages
# built here with dpkg-deb, served to apt from a file: repository through a private apt
# configuration (the machine's own sources and lists are not touched). What it reproduces: a
# tool's package installed in a version no source offers (as a backport installed from a local
# file is), which installing a neighbour that breaks with it would remove.
#
# Installs and purges packages named hk-needpkg-* on this machine; needs root.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tools/lib.sh

[ "$(id -u)" -eq 0 ] || { echo "error: run as root: the test installs and purges small packages" >&2; exit 1; }
for t in dpkg-deb apt-get sha256sum; do
    command -v "$t" >/dev/null || { echo "error: $t not found: apt-get install dpkg apt coreutils" >&2; exit 1; }
done

work=$(mktemp -d)
pkgs=(hk-needpkg-tool hk-needpkg-suite hk-needpkg-rival hk-needpkg-plain)
cleanup() {
    dpkg --purge "${pkgs[@]}" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_installed() { dpkg --purge "${pkgs[@]}" >/dev/null 2>&1 || true; }

# deb NAME VERSION [CONTROL-LINE...]: build NAME_VERSION.deb into $work/debs (repository) or
# $work/local (with LOCAL=1), shipping /usr/bin/NAME-bin.
deb() {
    local name=$1 version=$2; shift 2
    local d=$work/build/$name-$version out=$work/debs
    [ "${LOCAL:-0}" = 1 ] && out=$work/local
    mkdir -p "$d/DEBIAN" "$d/usr/bin" "$out"
    printf '#!/bin/sh\necho %s %s\n' "$name" "$version" >"$d/usr/bin/$name-bin"
    chmod 0755 "$d/usr/bin/$name-bin"
    {
        printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: test <test@localhost>\n' "$name" "$version"
        printf 'Priority: optional\nSection: misc\n'
        local l
        for l in "$@"; do printf '%s\n' "$l"; done
        printf 'Description: need_packages test package\n'
    } >"$d/DEBIAN/control"
    dpkg-deb --root-owner-group -b "$d" "$out/${name}_${version}_all.deb" >/dev/null
}

# The repository: tool 1.0, suite 1.0 (breaks tool >= 2), rival (conflicts with plain), plain.
deb hk-needpkg-tool 1.0
deb hk-needpkg-suite 1.0 'Breaks: hk-needpkg-tool (>= 2)'
deb hk-needpkg-rival 1.0 'Conflicts: hk-needpkg-plain'
deb hk-needpkg-plain 1.0
# Not in the repository: tool 2.0, installed from a local file.
LOCAL=1 deb hk-needpkg-tool 2.0

for f in "$work"/debs/*.deb; do
    dpkg-deb -f "$f"
    printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$(basename "$f")" "$(stat -c %s "$f")" \
        "$(sha256sum <"$f" | cut -d' ' -f1)"
done >"$work/debs/Packages"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/parts" "$work/apt/prefs"
echo "deb [trusted=yes] file:$work/debs ./" >"$work/apt/sources.list"
cat >"$work/apt/apt.conf" <<CONF
Dir::Etc::SourceList "$work/apt/sources.list";
Dir::Etc::SourceParts "$work/apt/parts";
Dir::Etc::PreferencesParts "$work/apt/prefs";
Dir::State::Lists "$work/apt/lists";
Dir::Cache "$work/apt/cache";
APT::Sandbox::User "root";
CONF
export APT_CONFIG=$work/apt/apt.conf

passed=0 failed=0
ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAILED: $1"; failed=$((failed + 1)); }
version_of() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p'; }

# 1. Nothing missing: no apt call at all (apt-get is made unusable to prove it).
cleanup_installed
dpkg -i "$work"/debs/hk-needpkg-plain_1.0_all.deb >/dev/null
out=$(PATH=$work/noapt:$PATH; mkdir -p "$work/noapt"; printf '#!/bin/sh\necho apt-get was called >&2; exit 99\n' >"$work/noapt/apt-get"
    chmod +x "$work/noapt/apt-get"; need_packages hk-needpkg-plain:hk-needpkg-plain-bin 2>&1); rc=$?
[ $rc -eq 0 ] && [ -z "$out" ] && ok "all present: nothing done" || bad "all present: rc=$rc, said: $out"

# 2. The bug: a newer, sourceless tool package installed; a neighbour that breaks with it is
#    asked for together with the tool's package. The tool's package is replaced by the
#    repository's version (plan printed), not removed, and its tool is there afterwards.
cleanup_installed
dpkg -i "$work"/local/hk-needpkg-tool_2.0_all.deb >/dev/null
out=$(need_packages hk-needpkg-suite:hk-needpkg-suite-bin hk-needpkg-tool:hk-needpkg-tool-bin 2>&1); rc=$?
if [ $rc -eq 0 ] && [ "$(version_of hk-needpkg-tool)" = 1.0 ] && [ "$(version_of hk-needpkg-suite)" = 1.0 ] &&
    command -v hk-needpkg-tool-bin >/dev/null && grep -q 'removes or downgrades' <<<"$out" &&
    grep -q '^    Inst hk-needpkg-tool \[2.0\] (1.0' <<<"$out"; then
    ok "sourceless newer package downgraded with the plan printed, tool kept"
else
    bad "sourceless newer package: rc=$rc tool=$(version_of hk-needpkg-tool) suite=$(version_of hk-needpkg-suite); said: $out"
fi

# 3. The same neighbour asked for without naming the tool's package: apt would remove it.
#    Refused with the package named; nothing changed.
cleanup_installed
dpkg -i "$work"/local/hk-needpkg-tool_2.0_all.deb >/dev/null
out=$(need_packages hk-needpkg-suite 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q 'would remove hk-needpkg-tool' <<<"$out" && grep -q '^    Remv hk-needpkg-tool' <<<"$out" &&
    [ "$(version_of hk-needpkg-tool)" = 2.0 ] && [ -z "$(version_of hk-needpkg-suite)" ]; then
    ok "a plan that removes an unnamed package refused, the package named, nothing changed"
else
    bad "unnamed removal: rc=$rc tool=$(version_of hk-needpkg-tool) suite=$(version_of hk-needpkg-suite); said: $out"
fi

# 4. A conflict with an installed package from the repository: refused, named, unchanged.
cleanup_installed
dpkg -i "$work"/debs/hk-needpkg-plain_1.0_all.deb >/dev/null
out=$(need_packages hk-needpkg-rival 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q 'would remove hk-needpkg-plain' <<<"$out" && [ "$(version_of hk-needpkg-plain)" = 1.0 ] &&
    [ -z "$(version_of hk-needpkg-rival)" ]; then
    ok "a conflicting package refused, the one it would remove named"
else
    bad "conflict: rc=$rc; said: $out"
fi

# 5. A package installed but its tool gone: present only with its tools; after the install the
#    tool still missing is named.
cleanup_installed
dpkg -i "$work"/debs/hk-needpkg-plain_1.0_all.deb >/dev/null
out=$(need_packages hk-needpkg-plain:hk-needpkg-no-such-tool 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q 'still missing after apt-get install.*: hk-needpkg-no-such-tool$' <<<"$out"; then
    ok "a tool still missing after the install named"
else
    bad "tool missing: rc=$rc; said: $out"
fi

# 6. A package no source has: apt's own reason, one error.
cleanup_installed
out=$(need_packages hk-needpkg-nowhere 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q 'error: apt cannot install hk-needpkg-nowhere' <<<"$out"; then
    ok "an unknown package refused with apt's reason"
else
    bad "unknown package: rc=$rc; said: $out"
fi

echo "need_packages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
