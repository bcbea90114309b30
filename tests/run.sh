#!/bin/bash
# The whole test suite, on a fresh Debian 12 machine, as root:
#   bash tests/run.sh            host tier (lint, types, unit, plan, apply, integration)
#                                then the .deb (build, lintian, install in a chroot)
#                                then the real-kernel VM tier (tests/vm/run_tier.sh)
# Env: AGENTLATD_SKIP_VM=1 / AGENTLATD_SKIP_PACKAGE=1 skip those tiers (say so loudly);
#      PYTEST_ARGS="-k foo" narrows the host tier.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
T0=$(date +%s)

# 1. system packages the tests drive for real (netns/veth: iproute2; coalescing: ethtool;
#    the real Prometheus server and promtool: prometheus, tests/integration/test_prometheus.py)
need=()
for p in iproute2:ip ethtool:ethtool gcc:gcc bpftrace:bpftrace python3-venv:none \
         prometheus:prometheus prometheus:promtool; do
    pkg=${p%%:*} bin=${p##*:}
    if [ "$bin" = none ]; then dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    else command -v "$bin" >/dev/null 2>&1 || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    echo "== installing ${need[*]}"
    # the lock timeout: an unattended-upgrades run must not fail the suite
    apt-get -o DPkg::Lock::Timeout=120 update -qq
    arc=$?
    if [ $arc -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
            --no-install-recommends "${need[@]}" >/dev/null
        arc=$?
    fi
    if [ $arc -ne 0 ]; then
        echo "PACKAGE STEP FAILED: apt-get exited $arc installing ${need[*]}" >&2
        pkg_failed=1
    fi
    # the Debian package enables a prometheus.service; the tests run their own
    # server on a temporary port and storage, never the system one
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

# 2. virtual environment with the project and its test tools
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import agentlatd, pytest, mypy' 2>/dev/null; then
    echo "== creating .venv"
    "$PY" -m venv .venv || exit 1
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev,bench]' || exit 1
fi
.venv/bin/pip install -q -e '.[dev,bench]' >/dev/null 2>&1 || true

rc=0
if [ "${pkg_failed:-0}" = 1 ]; then rc=1; fi
echo "== ruff"
.venv/bin/ruff check agentlatd tests bench || rc=1
echo "== mypy"
.venv/bin/mypy || rc=1
echo "== pytest (host tier)"
# shellcheck disable=SC2086
.venv/bin/python -m pytest -q ${PYTEST_ARGS:-} tests
prc=$?
[ $prc -eq 0 ] || rc=1

echo "== package (.deb build, lintian, install into a bookworm chroot)"
if [ "${AGENTLATD_SKIP_PACKAGE:-0}" = 1 ]; then echo "PACKAGE TEST SKIPPED: AGENTLATD_SKIP_PACKAGE=1"
else
    bash tests/package/build_and_install.sh
    pkrc=$?
    if [ $pkrc -eq 77 ]; then echo "PACKAGE TEST SKIPPED (see reason above)"
    elif [ $pkrc -ne 0 ]; then rc=1; fi
fi

echo "== VM tier (real kernel, real MSI-X IRQs)"
# irqbalance for the guest's cooperation test (tests/vm/guest/test_agentlatd_7_irqbalance.py):
# the Debian package unpacked into the lab cache with dpkg -x, NOT installed: its
# maintainer scripts would start irqbalance on this host, and it must never move the
# host's own IRQs. The guest sees the cache through its read-only view of /.
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
if [ "${AGENTLATD_SKIP_VM:-0}" = 1 ]; then
    echo "VM TIER SKIPPED: AGENTLATD_SKIP_VM=1"
elif [ -x tests/vm/run_tier.sh ]; then
    bash tests/vm/run_tier.sh
    vrc=$?
    if [ $vrc -eq 77 ]; then echo "VM TIER SKIPPED (see reason above)"
    elif [ $vrc -ne 0 ]; then rc=1; fi
else
    echo "VM TIER SKIPPED: tests/vm/run_tier.sh not present"
fi
echo "== the installed .deb under a real systemd (PID 1) in the QEMU guest"
if [ "${AGENTLATD_SKIP_VM:-0}" = 1 ]; then
    echo "SERVICE VM TEST SKIPPED: AGENTLATD_SKIP_VM=1"
else
    bash tests/vm/service/run_service_test.sh
    src=$?
    if [ $src -eq 77 ]; then echo "SERVICE VM TEST SKIPPED (see reason above)"
    elif [ $src -ne 0 ]; then rc=1; fi
fi
echo "== total $(( $(date +%s) - T0 )) s, rc=$rc"
exit $rc
