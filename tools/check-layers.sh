#!/usr/bin/env bash
# The rooms of the library import downward only (docs/design.md, "Rooms and what each may
# import"). A room is a top-level module of src/ (src/X.rs or src/X/); each has a rank, and
# a room may name only rooms of a lower rank. An import of the same or a higher rank fails
# the check, so no two rooms can ever need each other.
#
#   tools/check-layers.sh          one line per offending import; exit 1 if there is one
#   tools/check-layers.sh --list   first the table room -> rooms it imports, then the check
#
# Read: `use crate::…` (also grouped, `use crate::{a::b, c}`, across lines) and every
# `crate::room::…` path in code; `//` comments and one-line string literals are not read.
# Paths that leave a room through `super::` are not followed: rooms name each other by
# `crate::`, as rustfmt writes it (no spaces around `::`).
# Exempt: src/lib.rs, src/bin/*, and the cfg(test) room `testing`, which anyone may import.
set -euo pipefail

# The ranks, one room a line. A new room is declared here and in docs/design.md.
RANKS='
sys        0
config     0
logging    0
image_ref  0
os         1
cluster    1
node       2
convert    2
ctl        2
cli        3
'
EXEMPT='testing'

list=0
case "${1:-}" in
    --list) list=1 ;;
    '') ;;
    *) echo "usage: $0 [--list]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
[ -f src/lib.rs ] || { echo "check-layers: no src/lib.rs below $(pwd)" >&2; exit 2; }

# The rooms as they are on disk.
rooms=$(for p in src/*.rs src/*/; do
    [ -e "$p" ] || continue
    r=${p#src/}; r=${r%/}; r=${r%.rs}
    case $r in lib | bin) continue ;; esac
    echo "$r"
done | sort -u)

# Every reference to a room, as FILE:LINE:ROOM_FROM:NAME (NAME: the first segment after
# `crate::`; whether it is a room is decided below).
refs() {
    local f
    find src -name '*.rs' ! -path 'src/bin/*' ! -path src/lib.rs | sort | while read -r f; do
        local from=${f#src/}; from=${from%%/*}; from=${from%.rs}
        awk -v from="$from" '
        function ident(s, p) {
            if (match(substr(s, p), /^[A-Za-z_][A-Za-z0-9_]*/)) return substr(s, p, RLENGTH)
            return ""
        }
        function hit(name) {
            if (name != "" && name != "self" && name != "super" && name != "crate")
                print FILENAME ":" FNR ":" from ":" name
        }
        {
            s = $0
            # Blank out what is not code: escaped backslashes and quotes, the char literal
            # of a quote, string literals (one line), then a line comment.
            gsub(/\\\\/, "", s); gsub(/\\"/, "", s); gsub(/\047"\047/, "", s)
            gsub(/"[^"]*"/, "\"\"", s)
            c = index(s, "//"); if (c) s = substr(s, 1, c - 1)
            pos = 1; n = length(s)
            while (pos <= n) {
                if (!ingroup) {
                    i = index(substr(s, pos), "crate::")
                    if (!i) break
                    at = pos + i - 1
                    pos = at + 7
                    if (at > 1 && substr(s, at - 1, 1) ~ /[A-Za-z0-9_]/) continue
                    while (pos <= n && substr(s, pos, 1) ~ /[ \t]/) pos++
                    if (substr(s, pos, 1) == "{") { ingroup = 1; depth = 1; expect = 1; pos++; continue }
                    name = ident(s, pos); hit(name); pos += length(name)
                    continue
                }
                ch = substr(s, pos, 1)
                if (ch == "{") { depth++; pos++ }
                else if (ch == "}") { depth--; if (depth == 0) ingroup = 0; pos++ }
                else if (ch == ",") { if (depth == 1) expect = 1; pos++ }
                else if (ch ~ /[A-Za-z_]/) {
                    name = ident(s, pos)
                    if (depth == 1 && expect) { hit(name); expect = 0 }
                    pos += length(name)
                }
                else pos++
            }
        }
        ' "$f"
    done
}

refs | awk -F: -v ranks="$RANKS" -v rooms="$rooms" -v exempt="$EXEMPT" -v list="$list" '
BEGIN {
    nr = split(ranks, l, "\n")
    for (i = 1; i <= nr; i++) if (split(l[i], w, " ") == 2) rank[w[1]] = w[2]
    nroom = split(rooms, room, "\n")
    for (i = 1; i <= nroom; i++) isroom[room[i]] = 1
    ne = split(exempt, e, " "); for (i = 1; i <= ne; i++) free[e[i]] = 1
}
{
    file = $1; line = $2; a = $3; b = $4
    if (!(b in isroom) || a == b || (a in free) || (b in free)) next
    edge[a, b] = 1
    if (!(a in rank) || !(b in rank)) next
    if (rank[a] < rank[b]) how = "upward"; else if (rank[a] == rank[b]) how = "sideways"; else next
    bad[++nbad] = sprintf("%s:%s: room %s imports room %s (rank %s -> %s): %s", file, line, a, b, rank[a], rank[b], how)
}
END {
    if (list) {
        for (i = 1; i <= nroom; i++) {
            r = room[i]
            if (r == "") continue
            to = ""
            for (j = 1; j <= nroom; j++) if ((r SUBSEP room[j]) in edge) to = to " " room[j]
            printf "%-10s %-7s ->%s\n", r, (r in free) ? "exempt" : (r in rank) ? "rank " rank[r] : "no rank", (to == "") ? " (none)" : to
        }
        print ""
    }
    for (i = 1; i <= nroom; i++) {
        r = room[i]
        if (r != "" && !(r in rank) && !(r in free)) {
            print "room " r " has no rank: declare it in tools/check-layers.sh and docs/design.md"
            nbad++
        }
    }
    for (i = 1; i <= nbad; i++) if (i in bad) print bad[i]
    if (nbad) { printf "check-layers: %d problem(s)\n", nbad; exit 1 }
    print "check-layers: every room imports downward only"
}
'
