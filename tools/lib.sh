# Shared shell helpers for the test and demo scripts. Source it; do not run it.

# Each finished or failed step as "SECONDS<TAB>NAME", for step_summary.
STEP_TIMES=()

# step NAME CMD...: run CMD, print how long it took; a failure names the step.
step() {
    local name=$1; shift
    local t0=$SECONDS
    printf '==> %s\n' "$name"
    if ! "$@"; then
        STEP_TIMES+=("$((SECONDS - t0))	$name (FAILED)")
        printf '==> %s FAILED after %ss\n' "$name" $((SECONDS - t0)) >&2
        return 1
    fi
    STEP_TIMES+=("$((SECONDS - t0))	$name")
    printf '==> %s done in %ss\n' "$name" $((SECONDS - t0))
}

# step_summary: the wall time of every step run so far, in order (a script's EXIT trap).
step_summary() {
    [ ${#STEP_TIMES[@]} -gt 0 ] || return 0
    local line
    printf '\nwall time per step:\n'
    for line in "${STEP_TIMES[@]}"; do
        printf '%6ss  %s\n' "${line%%	*}" "${line#*	}"
    done
}

# tool_present TOOL: a command on PATH, or an absolute path that exists.
tool_present() {
    case $1 in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

# need_packages SPEC...: make sure the Debian packages a step needs are installed and their
# tools are there, installing what is missing non-interactively. SPEC is PKG or
# PKG:TOOL[,TOOL...] (a command name, or an absolute path).
#
# Idempotent: touches no network when every package is installed and every tool found. A
# package counts as present only when its tools are found too: a machine may carry a tool's
# package in another version (a backport installed from a local file), which installing a
# neighbour can remove.
#
# When anything is missing, one apt call names every package of the spec list, so that apt
# keeps or replaces them together instead of dropping one to satisfy another. A named package
# that is installed in a version no configured source offers (and so can only be kept or
# removed) is named at its repository version, with a downgrade allowed for it alone, when
# apt's plan would otherwise fail or remove it. apt's plan is printed whenever it removes or
# downgrades anything; a plan that removes a package the spec list does not name is refused
# with that package named, and nothing is changed. After the install the tools are checked
# again and any still missing is named.
need_packages() {
    local spec pkg tools t
    local -a names=() want_tools=() missing=() listed
    for spec in "$@"; do
        pkg=${spec%%:*}
        names+=("$pkg")
        tools=
        [ "$spec" != "$pkg" ] && tools=${spec#*:}
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
        IFS=, read -r -a listed <<<"$tools"
        for t in "${listed[@]}"; do
            want_tools+=("$t")
            tool_present "$t" || { [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg"); }
        done
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing Debian packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}" >&2
        return 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { echo "error: apt-get update failed; check the machine's apt sources" >&2; return 1; }

    local -a args=("${names[@]}") opts=(-y -qq --no-install-recommends)
    local plan
    if ! plan=$(apt_plan "${args[@]}") || plan_removes_any "$plan" "${names[@]}"; then
        # Name the sourceless installed ones at their repository version.
        local p v changed=0
        args=()
        for p in "${names[@]}"; do
            v=$(sourceless_repo_version "$p")
            if [ -n "$v" ]; then
                args+=("$p=$v"); changed=1
            else
                args+=("$p")
            fi
        done
        if [ $changed -eq 1 ]; then
            opts+=(--allow-downgrades)
            plan=$(apt_plan "${args[@]}") || {
                echo "error: apt cannot install ${missing[*]} beside what is installed:" >&2
                printf '%s\n' "$plan" | grep -vE '^(Inst|Conf) ' >&2
                return 1
            }
        elif [ -z "$plan" ] || ! printf '%s\n' "$plan" | grep -q '^Inst '; then
            echo "error: apt cannot install ${missing[*]} beside what is installed:" >&2
            printf '%s\n' "$plan" >&2
            return 1
        fi
    fi
    local removed
    removed=$(printf '%s\n' "$plan" | sed -n 's/^Remv \([^ ]*\).*/\1/p' | tr '\n' ' ')
    local changes
    changes=$(plan_removals_and_downgrades "$plan")
    if [ -n "$changes" ]; then
        echo "apt's plan removes or downgrades packages (apt-get -s install ${args[*]}; $(grep -c '^Inst ' <<<"$plan") to install or change in all):"
        printf '%s\n' "$changes" | sed 's/^/    /'
    fi
    if [ -n "$removed" ]; then
        echo "error: installing ${missing[*]} would remove ${removed% } (not needed here); nothing was changed. Remove it yourself if that is fine, then run again" >&2
        return 1
    fi
    apt-get install "${opts[@]}" "${args[@]}" >/dev/null ||
        { echo "error: apt-get install ${args[*]} failed" >&2; return 1; }

    local gone=()
    for t in "${want_tools[@]}"; do
        tool_present "$t" || gone+=("$t")
    done
    if [ ${#gone[@]} -gt 0 ]; then
        echo "error: still missing after apt-get install ${args[*]}: ${gone[*]}" >&2
        return 1
    fi
}

# apt_plan ARG...: apt's simulated install of ARG, its Inst/Remv lines on stdout; fails with
# apt's message on stdout when apt finds no solution.
apt_plan() {
    local out
    if out=$(apt-get -s install --no-install-recommends "$@" 2>&1); then
        printf '%s\n' "$out" | grep -E '^(Inst|Remv) ' || true
    else
        printf '%s\n' "$out"
        return 1
    fi
}

# plan_removes_any PLAN PKG...: the plan removes one of PKG.
plan_removes_any() {
    local plan=$1 p; shift
    for p in "$@"; do
        printf '%s\n' "$plan" | grep -qE "^Remv $p(:[a-z0-9]+)? " && return 0
    done
    return 1
}

# plan_removals_and_downgrades PLAN: the plan's Remv lines, and its Inst lines that replace a
# newer installed version by an older one ("Inst P [OLD] (NEW …)").
plan_removals_and_downgrades() {
    local line old new
    while IFS= read -r line; do
        case $line in
            "Remv "*) printf '%s\n' "$line" ;;
            "Inst "*" ["*"] ("*)
                old=${line#*\[}; old=${old%%\]*}
                new=${line#*\] (}; new=${new%% *}
                dpkg --compare-versions "$new" lt "$old" && printf '%s\n' "$line"
                ;;
        esac
    done <<<"$1"
    return 0
}

# sourceless_repo_version PKG: when PKG is installed in a version that no configured source
# offers, the newest version a source does offer; else nothing.
sourceless_repo_version() {
    local installed offered
    installed=$(dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p')
    [ -n "$installed" ] || return 0
    offered=$(apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
    [ -n "$offered" ] || return 0
    printf '%s\n' "$offered" | grep -qxF "$installed" && return 0
    printf '%s\n' "$offered" | head -n1
}

# need_kubectl: kubectl on PATH for a benchmark that measures against it; when there is none
# (Debian 12's repositories have none), kubectl v1.20.2 built once from the API server's own
# Debian source (tests/kube/build-kube.sh kubectl) is put first on PATH.
need_kubectl() {
    command -v kubectl >/dev/null 2>&1 && return 0
    local top cache
    top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    "$top/tests/kube/build-kube.sh" kubectl || return 1
    cache=${KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/housekeeper/kube}
    PATH=$(cd "$cache/current/kubectl/bin" && pwd):$PATH
    export PATH
}

# need_cargo_tool BIN CRATE: install a cargo tool when its binary is missing.
need_cargo_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing cargo tool $2"
    cargo install --locked --quiet "$2"
}
