#!/bin/bash
# The engine's real-IRQ tests (tests/apply/test_engine_vm.py) in one throw-away QEMU guest:
# NIC MSI-X IRQ affinity apply/rollback, kernel-managed NVMe queues (EIO on 6.1, EPERM on
# 6.12), drift on a real IRQ, coalescing on igb/e1000e/virtio-net/netdevsim, kill -9 at
# every write point. As root, from anywhere:
#
#   bash tests/apply/run_vm_engine.sh [PYTEST ARGS...]
#
# Uses tests/vm/lab.sh (built or reused) and tests/vm/run_vm.sh. Exit: pytest's status;
# 77 = the lab cannot be built here (skipped); 124/125 = guest timed out / crashed.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(readlink -f "$HERE/../..")
PY=${AGENTLATD_VM_PYTHON:-$REPO/.venv/bin/python}
LABOUT=$(mktemp)
bash "$REPO/tests/vm/lab.sh" >"$LABOUT" || { rc=$?; rm -f "$LABOUT"; echo "lab.sh: rc=$rc"; exit "$rc"; }
LAB=$(sed -n 's/^LAB=//p' "$LABOUT" | tail -1)
rm -f "$LABOUT"
[ -n "$LAB" ] || { echo "run_vm_engine: lab.sh printed no LAB=" >&2; exit 2; }
JOB=$(mktemp -d /tmp/agentlatd-vmengine.XXXXXX) || exit 2
trap '[ "${AGENTLATD_VM_KEEP:-0}" = 1 ] || rm -rf "$JOB"' EXIT
{
    printf 'export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1\n'
    printf 'cd %q || exit 2\n' "$REPO"
    echo 'echo "guest kernel: $(uname -r) ($(nproc) CPUs)"'
    printf 'exec %q -m pytest -p no:cacheprovider -m vm tests/apply/test_engine_vm.py -v -s' "$PY"
    [ $# -eq 0 ] || printf ' %q' "$@"
    printf '\n'
} >"$JOB/run.sh"
VM_LAB=$LAB VM_STREAM=1 VM_TIMEOUT=${VM_TIMEOUT:-480} VM_HOST_PYTHON=$PY \
    bash "$REPO/tests/vm/run_vm.sh" "$JOB"
