#!/bin/bash
# System test of the INSTALLED agentlatd service under a real systemd (PID 1) in the QEMU
# guest of the real-kernel tier (issues 5 and 8).  One command, as root:
#
#   bash tests/vm/service/run_service_test.sh
#
# 1. the lab (tests/vm/lab.sh: kernel, QEMU 10, initramfs; built or reused);
# 2. agentlatd_<version>_all.deb built from this checkout with dpkg-buildpackage (cached by
#    the content of the packaged files), and python3-pyroute2 with its missing dependencies
#    fetched with `apt-get download` through a private apt state (the host's apt state and
#    sources are only read; nothing is installed on the host);
# 3. ONE guest booted with /lib/systemd/systemd as PID 1 on its overlay root
#    (VM_MODE=systemd tests/vm/run_vm.sh); in it, guest_service_test.py installs the .debs
#    with apt-get (offline), writes /etc/agentlatd.toml steering the guest's virtio-net,
#    e1000e, igb and nvme0, and checks: start -> READY/active, STATUS, watchdog armed and
#    kept fed, a multi-threaded agent pinned to its home CPU (agentlatd.client from the
#    package, then `agentlatd exec`), the NIC IRQs on the completion CPUs, `systemctl stop`
#    restores everything to the pre-start snapshot, `systemctl kill -s KILL` -> ExecStopPost
#    rollback restores, Restart=on-failure brings it back, stop restores again; then
#    irqbalance (Debian's .deb unpacked in the lab with dpkg -x, never run on the host)
#    as irqbalance.service without a usable socket: agentlatd bans in
#    /etc/default/irqbalance (CPUs and --banirq in IRQBALANCE_ARGS) and restarts it with
#    systemctl; stop and kill -9 give the file back byte for byte and restart it again.
#
# Exit: 0 every check passed; 1 a check failed; 77 "SKIPPED: why" (not root, not Debian,
#       no lab, no build tools, python3-pyroute2 not obtainable); 124/125 guest timed out
#       or crashed (console tail printed).
# Env:  AGENTLATD_SERVICE_DEB=path   use this .deb instead of building one
#       AGENTLATD_SERVICE_CACHE      cache dir (default /var/tmp/agentlatd-service-test)
#       AGENTLATD_VM_KEEP=1          keep the job dir (out.log, console.log, journal.txt)
#       AGENTLATD_SERVICE_ONLY_IRQBALANCE=1  run only phase 7 (irqbalance) after install/setup
#       VM_TIMEOUT (default 720 s), AGENTLATD_VMLAB*: see tests/vm/lab.sh and run_vm.sh
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(readlink -f "$HERE/../../..")
VMDIR=$REPO/tests/vm
CACHE=${AGENTLATD_SERVICE_CACHE:-/var/tmp/agentlatd-service-test}
export LC_ALL=C.UTF-8
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "== service test [$(elapsed) s]: $*"; }
skipped() {
    echo "############################################################" >&2
    echo "SKIPPED: $*" >&2
    echo "############################################################" >&2
    exit 77
}
die() { echo "service test: ERROR: $*" >&2; exit 1; }
newest() {  # the highest-versioned existing file matching the glob $1 ("" if none)
    local f
    # shellcheck disable=SC2086  # $1 is a glob on purpose
    for f in $1; do [ -e "$f" ] && echo "$f"; done | sort -V | tail -1
}

[ "$(id -u)" = 0 ] || skipped "needs root (QEMU lab, tap in a private netns, dpkg-buildpackage)"
if ! command -v apt-get >/dev/null || [ ! -r /etc/debian_version ]; then skipped "not a Debian host"; fi
[ -x /lib/systemd/systemd ] || skipped "no /lib/systemd/systemd on the host image (the guest boots it)"

# ---- 1. the lab -------------------------------------------------------------------------
say "lab"
LABERR=$(mktemp) LABOUT=$(mktemp)
bash "$VMDIR/lab.sh" 2>"$LABERR" >"$LABOUT"
LRC=$?
LAB=$(sed -n 's/^LAB=//p' "$LABOUT" | tail -1)
WHY=$(sed -n 's/^skipped: //p' "$LABERR" | head -1)
[ "$LRC" = 0 ] || { cat "$LABOUT" "$LABERR" >&2; }
rm -f "$LABERR" "$LABOUT"
[ "$LRC" = 77 ] && skipped "the QEMU lab cannot be built: ${WHY:-lab.sh exit 77}"
if [ "$LRC" != 0 ] || [ -z "$LAB" ]; then die "lab.sh failed (rc=$LRC)"; fi
# shellcheck disable=SC1091
. "$LAB/lab.env"
say "lab $LAB (guest kernel $KV)"

mkdir -p "$CACHE/debs" || die "cannot create $CACHE"
exec 9>"$CACHE/.lock"
flock 9   # two runs share the caches

# ---- 2a. agentlatd .deb -------------------------------------------------------------------
build_deb() {
    local need=() p
    for p in dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
             python3-argparse-manpage python3-shtab python3-pyroute2 \
             python3-build python3-installer python3-wheel; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing build tools: ${need[*]}"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
              apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/dev/null 2>&1 \
            || skipped "the package cannot be built: cannot install ${need[*]}"
    fi
    # the packaged files only (tests/, bench/ are not in the .deb): the cache key
    local files key out src
    # (tracked files deleted in the working tree are left out: others edit this checkout)
    files=$(cd "$REPO" && git ls-files -co --exclude-standard 2>/dev/null \
                | grep -Ev '^(tests|bench|\.ci)/' | while IFS= read -r f; do [ -e "$f" ] && echo "$f"; done) \
        || die "git ls-files failed in $REPO"
    key=$(cd "$REPO" && { echo "$files"; tr '\n' '\0' <<<"$files" | xargs -0 sha256sum 2>/dev/null; } \
          | sha256sum | cut -c1-16)
    out=$CACHE/build-$key
    DEB=$(newest "$out/agentlatd_*_all.deb")
    if [ -n "$DEB" ]; then say "reusing $DEB"; return; fi
    say "building the .deb (dpkg-buildpackage -us -uc -b)"
    rm -rf "$CACHE"/build-*     # one cached build is enough
    src=$out/src
    mkdir -p "$src"
    (cd "$REPO" && tr '\n' '\0' <<<"$files" | tar --null -T - -cf -) | tar -xf - -C "$src" \
        || die "cannot copy the checkout"
    # the same bound as tests/package/build_and_install.sh
    if ! (cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin timeout 300 dpkg-buildpackage -us -uc -b) \
            > "$out/build.log" 2>&1; then
        tail -30 "$out/build.log" >&2
        mv "$out" "$out.failed" 2>/dev/null
        die "dpkg-buildpackage failed (log above)"
    fi
    rm -rf "$src"
    DEB=$(newest "$out/agentlatd_*_all.deb")
    [ -n "$DEB" ] || die "dpkg-buildpackage made no agentlatd_*_all.deb"
}
if [ -n "${AGENTLATD_SERVICE_DEB:-}" ]; then
    DEB=$(readlink -f "$AGENTLATD_SERVICE_DEB")
    [ -f "$DEB" ] || die "AGENTLATD_SERVICE_DEB=$AGENTLATD_SERVICE_DEB: no such file"
else
    build_deb
fi
say "package $(basename "$DEB"): Depends $(dpkg-deb -f "$DEB" Depends)"

# ---- 2b. runtime dependencies the host image lacks (python3-pyroute2 ...) -----------------
# Resolved against the host's dpkg status (read only) with a private apt state: exactly the
# packages `apt-get install` in the guest (whose root is the host's /) would need.
APTD=$CACHE/apt
APTO=(-o "Dir::Etc::SourceList=$APTD/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$APTD/lists" -o "Dir::Cache=$APTD/cache"
      -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
      -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
deps_needed() {  # the packages apt would install for the .deb's Depends, one a line
    local sim
    sim=$(apt-get "${APTO[@]}" -s -q install --no-install-recommends "$DEB" 2>&1) \
        || die "apt cannot resolve the package's Depends from the archive: $(grep -m1 '^E:' <<<"$sim")"
    awk '$1 == "Inst" && $2 != "agentlatd" { print $2 }' <<<"$sim"
}
fetch_deps() {
    mkdir -p "$APTD/lists/partial" "$APTD/cache/archives/partial"
    local main=http://deb.debian.org/debian sec=http://deb.debian.org/debian-security
    local srcf=/etc/apt/sources.list.d/debian.sources kr=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ -f $srcf ]; then
        local m s
        m=$(awk '/^URIs:/{u=$2} /^Suites:/ && !/security/{print u; exit}' $srcf)
        s=$(awk '/^URIs:/{u=$2} /^Suites:.*security/{print u; exit}' $srcf)
        main=${m:-$main} sec=${s:-$sec}
    fi
    [ -f $kr ] || skipped "no $kr: cannot fetch python3-pyroute2"
    local codename
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null)
    codename=${codename:-bookworm}
    cat > "$APTD/sources.list" <<EOF
deb [signed-by=$kr] $main $codename main
deb [signed-by=$kr] $main $codename-updates main
deb [signed-by=$kr] $sec $codename-security main
EOF
    # lists younger than a week are reused without the network
    if [ -z "$(find "$APTD/lists" -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null | head -1)" ]; then
        say "apt-get update (private state $APTD)"
        if ! apt-get "${APTO[@]}" update -q > "$APTD/update.log" 2>&1 \
                || grep -qE '^(W|E): (Failed|Some index)' "$APTD/update.log"; then
            if [ -n "$(find "$APTD/lists" -maxdepth 1 -name '*_Packages*' | head -1)" ]; then
                say "WARNING: apt-get update failed; using the older lists"
            else
                skipped "cannot read the Debian archive for python3-pyroute2 ($(grep -m1 -E '^(W|E):' "$APTD/update.log"))"
            fi
        fi
    fi
    local pkgs
    pkgs=$(deps_needed) || exit 1
    DEPDEBS=()
    local p f
    for p in $pkgs; do
        f=$(newest "$CACHE/debs/${p}_*.deb")
        if [ -z "$f" ]; then
            (cd "$CACHE/debs" && apt-get "${APTO[@]}" download -q "$p") > "$APTD/download.log" 2>&1 \
                || skipped "apt-get download $p failed: $(tail -1 "$APTD/download.log")"
            f=$(newest "$CACHE/debs/${p}_*.deb")
        fi
        [ -n "$f" ] || skipped "apt-get download $p gave no .deb"
        DEPDEBS+=("$f")
    done
}
fetch_deps
say "runtime dependencies from the archive: ${DEPDEBS[*]##*/}"

# ---- 2c. irqbalance for the guest (phase 7) -----------------------------------------------
# As tests/run.sh does: the Debian package unpacked with dpkg -x, NOT installed (its
# maintainer scripts would start irqbalance on this host, which must never move the host's
# IRQs). The guest runs it from this path through its read-only view of /.
IBDIR=${AGENTLATD_VMLAB:-/var/tmp/agentlatd-vmlab}/irqbalance
if [ ! -x "$IBDIR/root/usr/sbin/irqbalance" ]; then
    say "fetching irqbalance (apt-get download + dpkg -x into $IBDIR)"
    mkdir -p "$IBDIR" && chmod 755 "$IBDIR"
    if ! (cd "$IBDIR" && apt-get "${APTO[@]}" download -q irqbalance >/dev/null 2>&1 \
              && dpkg -x "$(newest "$IBDIR/irqbalance_*.deb")" "$IBDIR/root"); then
        say "WARNING: irqbalance could not be fetched; phase 7 fails its first check"
    fi
fi

# ---- 3. one guest, systemd as PID 1 ---------------------------------------------------------
JOB=$(mktemp -d /tmp/agentlatd-svcjob.XXXXXX) || die "mktemp"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() { [ "${AGENTLATD_VM_KEEP:-0}" = 1 ] || rm -rf "$JOB"; }
trap cleanup EXIT
mkdir -p "$JOB/debs"
cp "$DEB" "${DEPDEBS[@]}" "$JOB/debs/"
cp "$HERE/guest_service_test.py" "$HERE/agent.py" "$JOB/"
echo "$IBDIR/root" > "$JOB/irqbalance.root"
# only the irqbalance phase (7) after install and setup: a quicker loop while working on it
[ "${AGENTLATD_SERVICE_ONLY_IRQBALANCE:-0}" = 1 ] && touch "$JOB/only-irqbalance"
# Before systemd starts (chroot on the overlay root; every write lands in guest RAM):
# units this image enables that have nothing to do in the guest and only slow a TCG boot,
# and man-db's dpkg trigger (rebuilding the man index over 9p costs ~20 s of TCG; the
# trigger itself still runs and says "Not building database").
cat > "$JOB/systemd-setup.sh" <<'EOF'
set -e
for u in postgresql.service e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer \
         man-db.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "/etc/systemd/system/$u"
done
rm -f /var/lib/man-db/auto-update
EOF
cat > "$JOB/run.sh" <<'EOF'
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
cd /job || exit 2
exec /usr/bin/python3 -I /job/guest_service_test.py
EOF

say "booting the guest (kernel $KV, ${VM_SMP:-4} vCPUs, TCG, systemd as PID 1)"
VM_LAB=$LAB VM_MODE=systemd VM_STREAM=1 VM_TIMEOUT=${VM_TIMEOUT:-720} \
    bash "$VMDIR/run_vm.sh" "$JOB"
RC=$?
if [ "$RC" -ge 124 ] && [ "$RC" -le 125 ] || [ "$RC" = 255 ]; then
    echo "SERVICE TEST FAILED: the guest $([ "$RC" = 124 ] && echo timed out || echo crashed or init failed); console tail:" >&2
    tail -n 40 "$JOB/console.log" 2>/dev/null | sed 's/^/  console| /' >&2
    [ -f "$JOB/setup.log" ] && sed 's/^/  setup| /' "$JOB/setup.log" >&2
    AGENTLATD_VM_KEEP=1
fi
if [ "$RC" != 0 ]; then
    AGENTLATD_VM_KEEP=1
    echo "job dir kept: $JOB (out.log, console.log, journal.txt)" >&2
fi
say "rc=$RC, guest kernel $KV, wall $(elapsed) s"
exit "$RC"
