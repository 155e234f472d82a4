#!/usr/bin/env bash
# ensure-packages.sh — make sure every Debian package in tools/debian-packages
# is installed, so that README's two commands work on a fresh Debian 12 with
# nothing but git.
#
# As root, what is missing is installed (apt-get update, then apt-get install
# of the missing packages only). As anyone else nothing is installed: one line
# names the command to run, and the exit status is 1. With everything present
# it prints nothing and costs one dpkg-query.
#
# Usage: tools/ensure-packages.sh [--check] [PACKAGE...]
#   --check: never install, only say; PACKAGEs: check these, not the whole list
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
list="$here/tools/debian-packages"
check_only=0
case ${1:-} in
--check)
    check_only=1
    shift
    ;;
-h | --help)
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
-*)
    echo "usage: $0 [--check] [PACKAGE...]" >&2
    exit 2
    ;;
esac

if [ $# -gt 0 ]; then
    wanted=("$@")
else
    mapfile -t wanted < <(grep -v -e '^#' -e '^[[:space:]]*$' "$list")
fi
if ! command -v dpkg-query >/dev/null; then
    echo "ensure-packages: not a Debian system (no dpkg-query): install the equivalents of $list by hand" >&2
    exit 0
fi
# One query for all of them; a package dpkg never heard of prints no line.
installed=" $(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${wanted[@]}" 2>/dev/null |
    awk '$1 == "ii" {printf "%s ", $2}' || true)"
missing=()
for p in "${wanted[@]}"; do
    [[ $installed == *" ${p%%:*} "* ]] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$check_only" = 1 ] || [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: as root run: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "ensure-packages: installing ${#missing[@]} missing Debian package(s): ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
