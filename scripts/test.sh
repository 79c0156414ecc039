#!/usr/bin/env bash
# Provision, lint, type-check and run the default (not slow) test suite.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k pgserver -x  # extra arguments go to pytest
#
# Every step runs even if an earlier one failed (except provisioning), so one run
# shows all problems; the exit status is non-zero if any step failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv

names=()
results=()
failed=0

record() {  # record NAME STATUS [NOTE]
    names+=("$1")
    if [[ $2 == 0 ]]; then
        results+=("ok")
    else
        results+=("FAILED${3:+ ($3)}")
        failed=1
    fi
}

banner() { printf '\n==> %s\n' "$*"; }

banner "provision"
if ! bash scripts/provision.sh; then
    printf '\n[test] provisioning failed; nothing else was run\n' >&2
    exit 1
fi

banner "ruff check src tests"
rc=0
"$VENV/bin/ruff" check src tests || rc=$?
record "ruff" "$rc" "exit $rc"

banner "mypy"
rc=0
"$VENV/bin/mypy" || rc=$?
record "mypy" "$rc" "exit $rc"

banner "pytest -m 'not slow' $*"
rc=0
"$VENV/bin/pytest" -m "not slow" "$@" || rc=$?
if [[ $rc == 5 ]]; then
    printf '[test] pytest collected no tests (exit 5): check the -k/-m filters and test paths\n' >&2
    record "pytest" "$rc" "no tests collected"
else
    record "pytest" "$rc" "exit $rc"
fi

printf '\n==> summary\n'
for i in "${!names[@]}"; do
    printf '  %-8s %s\n' "${names[$i]}" "${results[$i]}"
done
if ((failed)); then
    printf 'RESULT: FAILED\n'
    exit 1
fi
printf 'RESULT: ok\n'
