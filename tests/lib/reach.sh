# reach.sh — sourced by testlib.sh and tests/interop/p11kit_remote.sh.

# blocked_for_others PATH...: prints the first directory above one of PATH
# that other accounts cannot pass through (no o+x: a clone made in a
# `mktemp -d` directory, 0700), and fails; succeeds silently otherwise.  Tests
# that run the module or the tools as other accounts need them reachable.
blocked_for_others() {
    local p d
    for p in "$@"; do
        d=$(dirname "$(realpath "$p")")
        while [ "$d" != / ]; do
            if [ -z "$(find "$d" -maxdepth 0 -perm -o+x 2>/dev/null)" ]; then
                echo "$d"
                return 0
            fi
            d=$(dirname "$d")
        done
    done
    return 1
}
