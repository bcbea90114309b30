#!/bin/bash
# THE command for agentlatd's real-kernel test tier (as root, from anywhere):
#
#   bash tests/vm/run_tier.sh [PYTEST ARGS...]      e.g.  -k netdevsim   -x
#
# Builds or reuses the QEMU lab (tests/vm/lab.sh), boots ONE guest (tests/vm/run_vm.sh) and
# runs `python -m pytest -m vm tests/vm/guest -v` in it with the host's interpreter (the
# guest sees the host's / read-only, so the repo's .venv works there unchanged).  Prints the
# guest kernel, pytest's output as it runs, and the wall time.
#
# Env: AGENTLATD_VM_PYTHON  interpreter (default: <repo>/.venv/bin/python, else python3)
#      AGENTLATD_VM_JUNIT   copy the guest's JUnit XML report to this path
#      AGENTLATD_VM_KEEP=1  keep the job dir (out.log, console.log) even on success
#      AGENTLATD_VMLAB, AGENTLATD_VMLAB_KV, AGENTLATD_VMLAB_REFRESH: see lab.sh
#      VM_TIMEOUT (default 480 s), VM_SMP, VM_MEM, VM_IOMMU: see run_vm.sh
# Exit: pytest's exit status; 77 = tier skipped (lab cannot be built here: "VM TIER
#       SKIPPED: <why>"); 124 guest timed out; 125 guest crashed; 2 setup error.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(readlink -f "$HERE/../..")
T0=$(date +%s.%N)
elapsed() { printf '%.1f' "$(echo "$(date +%s.%N) - $T0" | bc)"; }

skipped() {
    echo "############################################################" >&2
    echo "VM TIER SKIPPED: $*" >&2
    echo "############################################################" >&2
    exit 77
}

PY=${AGENTLATD_VM_PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
    else PY=$(command -v python3) || { echo "run_tier: no python3" >&2; exit 2; }; fi
fi
# not resolved through symlinks: a venv's python must stay the venv's path
case $PY in /*) ;; *) PY=$(command -v "$PY") ;; esac
"$PY" -c 'import pytest' 2>/dev/null \
    || { echo "run_tier: $PY cannot import pytest (pip install pytest into it)" >&2; exit 2; }

# ---- 1. the lab ----------------------------------------------------------------------
echo "== VM tier: lab"
LABERR=$(mktemp) LABOUT=$(mktemp)
bash "$HERE/lab.sh" 2>"$LABERR" | tee "$LABOUT" | grep --line-buffered -v '^LAB=' | sed 's/^/  /'
LRC=${PIPESTATUS[0]}
WHY=$(grep -m1 '^skipped: ' "$LABERR" | sed 's/^skipped: //')
grep -v '^skipped: ' "$LABERR" >&2
LAB=$(sed -n 's/^LAB=//p' "$LABOUT" | tail -1)
rm -f "$LABERR" "$LABOUT"
if [ "$LRC" -eq 77 ]; then skipped "${WHY:-lab.sh could not build the lab}"; fi
if [ "$LRC" -ne 0 ] || [ -z "$LAB" ]; then echo "run_tier: lab.sh failed (rc=$LRC)" >&2; exit 2; fi
# shellcheck disable=SC1091
. "$LAB/lab.env"
echo "   lab ready after $(elapsed) s: $LAB"

# ---- 2. one guest for the whole tier ---------------------------------------------------
JOB=$(mktemp -d /tmp/agentlatd-vmjob.XXXXXX) || exit 2
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() { [ "${AGENTLATD_VM_KEEP:-0}" = 1 ] || rm -rf "$JOB"; }
trap cleanup EXIT
JUNIT_ARG=
[ -n "${AGENTLATD_VM_JUNIT:-}" ] && JUNIT_ARG=--junitxml=/job/junit.xml
{
    printf 'export AGENTLATD_VM_EXPECT_KV=%q AGENTLATD_VM_SMP=%q\n' "$KV" "${VM_SMP:-4}"
    printf 'export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1\n'
    printf 'cd %q || exit 2\n' "$REPO"
    # shellcheck disable=SC2016  # expands in the guest
    echo 'echo "guest kernel: $(uname -r) ($(nproc) CPUs)"'
    printf 'exec %q -m pytest -p no:cacheprovider -m vm tests/vm/guest -v %s' "$PY" "$JUNIT_ARG"
    [ $# -eq 0 ] || printf ' %q' "$@"
    printf '\n'
} > "$JOB/run.sh"

echo "== VM tier: booting the guest (kernel $KV, ${VM_SMP:-4} vCPUs, TCG) and running pytest"
VM_KEEP_PATH=$REPO VM_LAB=$LAB VM_STREAM=1 VM_TIMEOUT=${VM_TIMEOUT:-480} VM_HOST_PYTHON=$PY \
    bash "$HERE/run_vm.sh" "$JOB"
RC=$?

if [ -n "${AGENTLATD_VM_JUNIT:-}" ] && [ -f "$JOB/junit.xml" ]; then
    cp "$JOB/junit.xml" "$AGENTLATD_VM_JUNIT"
fi
if [ "$RC" -ge 124 ] && [ "$RC" -le 125 ]; then
    echo "VM TIER FAILED: the guest $([ "$RC" = 124 ] && echo timed out || echo crashed); console tail:" >&2
    tail -n 40 "$JOB/console.log" 2>/dev/null | sed 's/^/  console| /' >&2
    AGENTLATD_VM_KEEP=1
    echo "job dir kept: $JOB" >&2
fi
echo "== VM tier: rc=$RC, kernel $KV, wall $(elapsed) s"
exit "$RC"
