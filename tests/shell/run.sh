#!/usr/bin/env bash
# Runs shell test scripts and counts each as passed, failed or skipped. A script skips by
# exiting with SKIP (77, as automake's test harness does) after saying why; under CI (any
# non-empty value) the scripts fail instead of skipping. Exits non-zero if any failed.
set -uo pipefail
SKIP=77
# However a script goes wrong, it ends by then: every wait in it has its own deadline
# (PATIENCE_S in lib.sh), and this one covers what has none. timeout(1) kills the script's
# whole process group, the servers and clients it started included.
SCRIPT_DEADLINE_S=${SCRIPT_DEADLINE_S:-120}
passed=0 failed=0 skipped=0
for t in "$@"; do
  case $(basename "$t") in lib.sh | run.sh) continue ;; esac
  timeout "$SCRIPT_DEADLINE_S" bash "$t"
  case $? in
    0) passed=$((passed + 1)) ;;
    124) failed=$((failed + 1)); echo "FAILED: $t (still running after ${SCRIPT_DEADLINE_S} s)" ;;
    "$SKIP") skipped=$((skipped + 1)); echo "SKIPPED: $t" ;;
    *) failed=$((failed + 1)); echo "FAILED: $t" ;;
  esac
done
echo "shell: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
