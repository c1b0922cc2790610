# Shared shell helpers for the test and demo scripts. Source it; do not run it.

# step NAME CMD...: run CMD, print how long it took; a failure names the step.
step() {
    local name=$1; shift
    local t0=$SECONDS
    printf '==> %s\n' "$name"
    if ! "$@"; then
        printf '==> %s FAILED after %ss\n' "$name" $((SECONDS - t0)) >&2
        return 1
    fi
    printf '==> %s done in %ss\n' "$name" $((SECONDS - t0))
}

# need_packages PKG...: install the Debian packages that are missing, non-interactively.
# Idempotent: does nothing (and touches no network) when all are present.
need_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing Debian packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}" >&2
        return 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        # apt's resolver can give up on a whole list ("held broken packages") that it
        # installs fine one package at a time.
        for p in "${missing[@]}"; do
            apt-get install -y -qq --no-install-recommends "$p" >/dev/null ||
                { echo "error: apt-get install $p failed" >&2; return 1; }
        done
    fi
}

# need_cargo_tool BIN CRATE: install a cargo tool when its binary is missing.
need_cargo_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing cargo tool $2"
    cargo install --locked --quiet "$2"
}
