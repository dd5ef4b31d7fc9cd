#!/usr/bin/env bash
# Runs shell test scripts and counts each as passed, failed or skipped. A script skips by
# exiting with SKIP (77, as automake's test harness does) after saying why; under CI (any
# non-empty value) the scripts fail instead of skipping. Exits non-zero if any failed.
set -uo pipefail
SKIP=77
passed=0 failed=0 skipped=0
for t in "$@"; do
  case $(basename "$t") in lib.sh | run.sh) continue ;; esac
  bash "$t"
  case $? in
    0) passed=$((passed + 1)) ;;
    "$SKIP") skipped=$((skipped + 1)); echo "SKIPPED: $t" ;;
    *) failed=$((failed + 1)); echo "FAILED: $t" ;;
  esac
done
echo "shell: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
