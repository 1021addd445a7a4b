#!/usr/bin/env bash
# kselftest-style wrapper: run a rig job, print its KTAP v1 on stdout, exit as kselftest does.
#
#   kselftest/mlx4_rig.sh [replay|validate|matrix] [ARGS...]     (default: replay)
#
# Exit 0 pass, 1 the kernel under test failed, 4 (KSFT_SKIP) the rig could not run here
# (no QEMU, a kernel that cannot be had, bad arguments): a CI runner then reports a skip,
# not a kernel failure. The rig's own output goes to stderr; stdout is KTAP only.
# RIG overrides the rig command (default: rigw beside this script's checkout).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a rig <<< "${RIG:-$here/../rigw}"
job=${1:-replay}
[ $# -gt 0 ] && shift

ktap=$(mktemp)
out=$(mktemp -d)
trap 'rm -rf "$ktap" "$out"' EXIT

case "$job" in
replay | validate) "${rig[@]}" "$job" --out "$out/run" --ktap "$ktap" "$@" >&2 ;;
matrix) "${rig[@]}" matrix --out "$out/run" "$@" >&2 ;;
*)
	echo "mlx4_rig.sh: unknown job '$job' (replay, validate or matrix)" >&2
	exit 4
	;;
esac
status=$?
[ "$job" = matrix ] && [ -f "$out/run/matrix.ktap" ] && cp "$out/run/matrix.ktap" "$ktap"

if [ -s "$ktap" ]; then
	cat "$ktap"
else # the rig stopped before any result: one skipped test says so
	printf 'KTAP version 1\n1..1\nok 1 mlx4_rig_%s # SKIP the rig could not run (exit %s)\n' \
		"$job" "$status"
fi
case $status in
0) exit 0 ;;
1) exit 1 ;;
*) exit 4 ;;
esac
