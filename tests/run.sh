#!/bin/bash
# The whole test suite, on a fresh Debian 12 machine, as root (README command 2:
# `$([ "$(id -u)" = 0 ] || echo sudo) bash tests/run.sh`), from a checkout anywhere (/tmp, /root, a path
# with spaces):
#   bash tests/run.sh            lint, types, then the host tier (apply, hostile, integration)
#                                then, in two lanes at once:
#                                  the real-kernel VM tier (tests/vm/run_tier.sh), streamed;
#                                  README command 1 verbatim in a fresh clone, the .deb
#                                  (build, lintian, install in a chroot), then that .deb
#                                  under systemd in a second guest (tests/vm/service/),
#                                  each lane, once its guest is done, then takes shards
#                                  of the pure tier (tests/unit, tests/plan, fixture-
#                                  tree/fuzz files and tests: PURE below) that the other
#                                  lane has not taken; printed when both lanes are done
#
# Why two lanes: each QEMU guest is single-threaded TCG, about one host core, and the
# CI machine has two; run one after the other the guests left a core idle for ~8 min.
# The host tier runs alone: its daemons and timing checks get the whole machine. The pure
# tier (parsers, planners, goldens, properties, kill -9 on fixture trees: no daemon, no
# namespace, no timing check) needs one core and no quiet; it fills the core a lane leaves
# idle once its guest is done. It runs as PURE_SHARDS pytest runs (--shard K/N, every N-th
# test: tests/conftest.py) taken first come, first served, so that whichever guest ends
# first (the service guest's 260-325 s or the VM tier's 380-420 s: it varies with the
# load) does not leave the other lane the whole pure tier to run alone at the end.
# Env: AGENTLATD_SKIP_VM=1 / AGENTLATD_SKIP_PACKAGE=1 skip those tiers (say so loudly);
#      AGENTLATD_SUITE_SERIAL=1 runs the side lane after the VM tier, not beside it;
#      PYTEST_ARGS="-k foo" narrows the host and pure tiers.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
T0=$(date +%s)

# 1. system packages the tests drive for real (netns/veth: iproute2; coalescing: ethtool;
#    netdevsim: kmod's modprobe; README command 1 check: git; the real Prometheus server
#    and promtool: prometheus, tests/integration/test_prometheus.py). Installed before the
#    host tier, and a failed install stops here: carrying on would surface minutes later as
#    unrelated test failures. apt waits up to 5 min for a dpkg lock another apt holds.
need=()
for p in iproute2:ip ethtool:ethtool gcc:gcc bpftrace:bpftrace kmod:modprobe git:git \
         prometheus:prometheus prometheus:promtool python3-venv:none; do
    pkg=${p%%:*} bin=${p##*:}
    if [ "$bin" = none ]; then dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    else PATH=$PATH:/usr/sbin:/sbin command -v "$bin" >/dev/null 2>&1 || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    echo "== installing ${need[*]}"
    APT=(apt-get -o DPkg::Lock::Timeout=300 -qq)
    if ! "${APT[@]}" update || ! DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y \
            --no-install-recommends "${need[@]}" >/dev/null; then
        echo "tests/run.sh: STOPPED: apt-get could not install ${need[*]} (see apt's message" \
             "above; run as root, check the mirror or a dpkg lock held for over 5 minutes)" >&2
        exit 2
    fi
    # the Debian package enables a prometheus.service; the tests run their own
    # server on a temporary port and storage, never the system one
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

# 1b. the VM lab (kernel, QEMU 10, initramfs), built or refreshed in the background while
#     the venv is made and ruff and mypy run (cold: 24-43 s plus downloads; cached: a
#     no-op). It is waited for before the host tier, whose timing checks get the machine
#     alone, and so is over before README command 1's apt-get in the side lane (on a fresh
#     machine lab.sh apt-get installs host tools). Whether it failed or skipped is
#     run_tier.sh's to act on (it calls lab.sh again: then a no-op).
LABPID= LABLOG=
if [ "${AGENTLATD_SKIP_VM:-0}" != 1 ] && [ -f tests/vm/lab.sh ]; then
    LABLOG=$(mktemp /tmp/agentlatd-run-lab.XXXXXX.log) || exit 1
    bash tests/vm/lab.sh > "$LABLOG" 2>&1 &
    LABPID=$!
fi

# 2. virtual environment with the project and its test tools
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import agentlatd, pytest, mypy' 2>/dev/null; then
    echo "== creating .venv"
    "$PY" -m venv .venv || exit 1
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev,bench]' || exit 1
else
    # an existing venv picks up dependencies added since it was made
    .venv/bin/pip install -q -e '.[dev,bench]' >/dev/null 2>&1 || true
fi
phase() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }

rc=0
phase "ruff"
.venv/bin/ruff check agentlatd tests bench || rc=1
phase "mypy"
.venv/bin/mypy || rc=1
# the pure tier: run in the two lanes once their guests are done (below), not here.
# Parsers, planners, goldens and properties, the engine and the journal on fixture-tree
# copies (kill -9 at every write point included), the protocol, journal-damage and policy
# fuzzers, CPU hotplug between two in-process samples of a fixture tree: no daemon, no
# namespace, no timing check. Whole files, and single tests (node ids, `path::test`) of
# files whose other tests need the host tier: the host tier deselects those.
PURE=(tests/unit tests/plan tests/apply/test_knobs_fixture.py tests/apply/test_journal.py
      tests/hostile/test_fuzz_protocol.py
      tests/apply/test_crash.py::test_kill_9_at_every_write_point_on_a_fixture_tree
      tests/apply/test_crash.py::test_kill_9_during_rollback_then_rollback_again
      tests/hostile/test_journal_damage.py::test_any_damage_gives_a_journal_error_or_a_salvage_never_a_crash
      tests/hostile/test_kernel_faults.py::test_cpu_offline_between_ticks
      tests/hostile/test_policy_values.py::test_mutated_policies_are_an_error_or_a_plan_within_every_knobs_range)
NOT_HOST=()
for p in "${PURE[@]}"; do
    case $p in *::*) NOT_HOST+=("--deselect=$p") ;; *) NOT_HOST+=("--ignore=$p") ;; esac
done
# four shards of ~35 s each on a quiet 2-core host: the lane whose guest ends last waits
# about one shard for the other, not the whole tier; more shards each pay ~4 s of
# collection again, which eats what their finer split saves
PURE_SHARDS=4
# pytest's 5 = nothing collected: only an error when the run was not narrowed (PYTEST_ARGS)
pytest_failed() { [ "$1" -ne 0 ] && { [ "$1" -ne 5 ] || [ -z "${PYTEST_ARGS:-}" ]; }; }
if [ -n "$LABPID" ]; then
    phase "VM lab (built beside the venv, ruff and mypy)"
    wait "$LABPID"
    grep -v '^LAB=' "$LABLOG" | sed 's/^/  /'
    rm -f "$LABLOG"
fi
phase "pytest (host tier; the pure tier ${PURE[*]} runs in the two lanes after their guests)"
# shellcheck disable=SC2086
.venv/bin/python -m pytest -q ${PYTEST_ARGS:-} tests "${NOT_HOST[@]}"
prc=$?
pytest_failed $prc && rc=1

# irqbalance for the guest's cooperation test (tests/vm/guest/test_agentlatd_7_irqbalance.py):
# the Debian package unpacked into the lab cache with dpkg -x, NOT installed: its
# maintainer scripts would start irqbalance on this host, and it must never move the
# host's own IRQs. The guest sees the cache through its read-only view of /. Fetched before
# the side lane starts: its README command 1 runs apt-get update on the host.
IBDIR=${AGENTLATD_VMLAB:-/var/tmp/agentlatd-vmlab}/irqbalance
if [ "${AGENTLATD_SKIP_VM:-0}" != 1 ] && [ ! -x "$IBDIR/root/usr/sbin/irqbalance" ]; then
    mkdir -p "$IBDIR" && chmod 755 "$IBDIR"
    (cd "$IBDIR" && apt-get -o DPkg::Lock::Timeout=300 download irqbalance >/dev/null)
    irc=$?
    if [ $irc -eq 0 ]; then
        dpkg -x "$IBDIR"/irqbalance_*.deb "$IBDIR/root"
        irc=$?
    fi
    if [ $irc -ne 0 ]; then
        echo "PACKAGE STEP FAILED: irqbalance download/unpack exited $irc" >&2
        rc=1
    fi
fi

# ---- the pure tier's shards: each lane runs those the other has not taken ---------------
# A shard is taken by creating its directory (mkdir is atomic); its output and exit status
# land there and are printed and judged once both lanes are done.
PUREQ=$(mktemp -d /tmp/agentlatd-run-pure.XXXXXX) || exit 1
# shellcheck disable=SC2064  # expand now
trap "rm -rf '$PUREQ'" EXIT
pure_shards() {  # $1: the lane's name, for the report
    local k r t0
    for ((k = 0; k < PURE_SHARDS; k++)); do
        mkdir "$PUREQ/$k" 2>/dev/null || continue
        t0=$(date +%s)
        # shellcheck disable=SC2086
        .venv/bin/python -m pytest -q -p no:cacheprovider --shard "$k/$PURE_SHARDS" \
            ${PYTEST_ARGS:-} "${PURE[@]}" > "$PUREQ/$k/log" 2>&1
        r=$?
        echo "$r $(( $(date +%s) - t0 )) $1" > "$PUREQ/$k/rc"
    done
}

# ---- side lane: README command 1, the .deb, the .deb under systemd in a guest, pure shards --
# Run beside the VM tier; its output goes to a file, printed when both lanes are done.
# Its steps stay in this order: apt-get runs on the host (README command 1, build tools)
# are over before the service guest, which reads the host's apt state through 9p, boots;
# the pure shards come last, so that the two guests never share the machine with a third job.
side_lane() {
    local rc=0 r debdir deb t0
    echo "== README command 1, verbatim, in a fresh clone"
    bash tests/readme/check_command1.sh
    r=$?
    if [ $r -eq 77 ]; then echo "README COMMAND 1 CHECK SKIPPED (see reason above)"
    elif [ $r -ne 0 ]; then rc=1; fi

    echo "== package (.deb build, lintian, install into a bookworm chroot)"
    debdir=$(mktemp -d /tmp/agentlatd-run-deb.XXXXXX) || return 1
    if [ "${AGENTLATD_SKIP_PACKAGE:-0}" = 1 ]; then echo "PACKAGE TEST SKIPPED: AGENTLATD_SKIP_PACKAGE=1"
    else
        AGENTLATD_KEEP_DEB=$debdir bash tests/package/build_and_install.sh
        r=$?
        if [ $r -eq 77 ]; then echo "PACKAGE TEST SKIPPED (see reason above)"
        elif [ $r -ne 0 ]; then rc=1; fi
    fi

    echo "== the installed .deb under a real systemd (PID 1) in the QEMU guest"
    if [ "${AGENTLATD_SKIP_VM:-0}" = 1 ]; then
        echo "SERVICE VM TEST SKIPPED: AGENTLATD_SKIP_VM=1"
    else
        # the .deb the package test just built and checked (none: the service test builds one)
        deb=$(find "$debdir" -maxdepth 1 -name 'agentlatd_*_all.deb' | head -1)
        AGENTLATD_SERVICE_DEB=${AGENTLATD_SERVICE_DEB:-$deb} VM_TIMEOUT=${VM_TIMEOUT:-720} \
            bash tests/vm/service/run_service_test.sh
        r=$?
        if [ $r -eq 77 ]; then echo "SERVICE VM TEST SKIPPED (see reason above)"
        elif [ $r -ne 0 ]; then rc=1; fi
    fi
    rm -rf "$debdir"

    t0=$(date +%s)
    echo "== [$(( t0 - T0 )) s] pure tier shards not yet taken by the VM lane"
    pure_shards "side lane"
    echo "== [$(( $(date +%s) - T0 )) s] side lane: pure shards done"
    return $rc
}
SIDE=
if [ "${AGENTLATD_SUITE_SERIAL:-0}" != 1 ]; then
    SIDELOG=$(mktemp /tmp/agentlatd-run-side.XXXXXX.log) || exit 1
    # shellcheck disable=SC2064  # expand now
    trap "rm -rf '$SIDELOG' '$PUREQ'" EXIT
    phase "README command 1, package and service VM test start beside the VM tier" \
          "(their output follows the VM tier's)"
    side_lane > "$SIDELOG" 2>&1 &
    SIDE=$!
fi

# ---- VM lane (streamed) ------------------------------------------------------------------
phase "VM tier (real kernel, real MSI-X IRQs)"
if [ "${AGENTLATD_SKIP_VM:-0}" = 1 ]; then
    echo "VM TIER SKIPPED: AGENTLATD_SKIP_VM=1"
elif [ -x tests/vm/run_tier.sh ]; then
    # the limit allows for the second guest sharing the two cores (alone: ~5.5 min)
    VM_TIMEOUT=${VM_TIMEOUT:-720} bash tests/vm/run_tier.sh
    vrc=$?
    if [ $vrc -eq 77 ]; then echo "VM TIER SKIPPED (see reason above)"
    elif [ $vrc -ne 0 ]; then rc=1; fi
else
    echo "VM TIER SKIPPED: tests/vm/run_tier.sh not present"
fi
if [ -n "$SIDE" ]; then
    phase "VM tier done; pure tier shards not yet taken by the side lane"
    pure_shards "VM lane"
    phase "VM lane: pure shards done; waiting for the side lane"
    wait "$SIDE"
    src=$?
    phase "side lane (ran beside the VM tier), rc=$src:"
    cat "$SIDELOG"
else
    phase "side lane (AGENTLATD_SUITE_SERIAL=1: after the VM tier)"
    side_lane
    src=$?
fi
[ $src -eq 0 ] || rc=1
phase "pytest (pure tier: ${PURE[*]}; $PURE_SHARDS shards, run in the two lanes)"
for ((k = 0; k < PURE_SHARDS; k++)); do
    if [ ! -f "$PUREQ/$k/rc" ]; then
        echo "PURE TIER SHARD $k/$PURE_SHARDS DID NOT RUN" >&2
        rc=1
        continue
    fi
    read -r r secs lane < "$PUREQ/$k/rc"
    echo "== pure tier shard $k/$PURE_SHARDS ($lane, $secs s): rc=$r"
    cat "$PUREQ/$k/log"
    pytest_failed "$r" && rc=1
done
echo "== total $(( $(date +%s) - T0 )) s, rc=$rc"
exit $rc
