#!/bin/bash
# Build the .deb from this checkout, lint it, install it into a fresh Debian 12
# (bookworm) chroot with `apt-get install ./agentlatd_*.deb`, and run the
# installed agentlatd there. Needs root (chroot, mounts) and Debian mirrors.
#
#   bash tests/package/build_and_install.sh          exit 0 pass, 1 fail, 77 skip
#
# Env: AGENTLATD_CHROOT_CACHE  cached chroot tarball
#                              (default /var/tmp/agentlatd-bookworm-minbase.tar.gz;
#                              rebuilt when missing or older than 7 days)
#      AGENTLATD_KEEP_DEB=DIR   copy the built .deb there
#      DEBIAN_MIRROR            (default http://deb.debian.org/debian)
#
# Why a chroot and not the CI machine itself: a minbase chroot has nothing but
# Debian's essential packages, so a Depends: line that forgets something
# (python3-pyroute2, adduser) fails here instead of working by accident on a
# machine that has it, and nothing is installed into the machine running
# the tests. debootstrap costs ~30 s uncached; the tarball cache makes reruns
# cost ~5 s.
#
# Safety: the chroot gets /proc and /sys mounted READ-ONLY: `agentlatd plan`
# reads the host but nothing in the chroot can write a kernel setting. The
# netlink check only reads (family lookup, coalesce GET on lo).
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.." || exit 1
REPO=$(pwd)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin  # Debian's python3, not a pyenv/venv one
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${AGENTLATD_CHROOT_CACHE:-/var/tmp/agentlatd-bookworm-minbase.tar.gz}

say() { echo "== package: $*"; }
fail() { echo "FAIL package: $*" >&2; exit 1; }
skip() { echo "SKIP package: $*" >&2; exit 77; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || skip "needs root (chroot, mounts)"
command -v apt-get >/dev/null || skip "not a Debian system (no apt-get)"
[ -r /etc/debian_version ] || skip "not a Debian system"

T0=$(now)
# 1. build tools (Build-Depends of debian/control + lintian + debootstrap)
need=()
for p in dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
         python3-argparse-manpage python3-shtab python3-pyroute2 python3-build python3-installer python3-wheel lintian debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
        >/dev/null || fail "cannot install build tools: ${need[*]}"
fi
T_TOOLS=$(now)

WORK=$(mktemp -d /var/tmp/agentlatd-pkg.XXXXXX)
ROOT=$WORK/root
MOUNTS=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local m
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do
        m=${MOUNTS[$i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    # never rm -rf through a mount that is still there
    if ! grep -q " $WORK/" /proc/self/mounts; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# 2. build from a copy of the checkout's tracked + unignored files, so the
#    build neither sees .venv/ nor leaves build/ and .pybuild/ in the tree
say "building"
mkdir -p "$WORK/src"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" ls-files -co --exclude-standard -z \
        | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else
    tar -C "$REPO" --exclude=.venv --exclude=.git -cf - . | tar -xf - -C "$WORK/src"
fi
VERSION=$(cd "$WORK/src" && dpkg-parsechangelog -S Version)
PYVER=$(cd "$WORK/src" && python3 -c 'import re; print(re.search(r"__version__ = \"(.*)\"", open("agentlatd/__init__.py").read()).group(1))')
[ "$VERSION" = "$PYVER" ] || fail "debian/changelog version $VERSION != agentlatd.__version__ $PYVER"
# bounded: a setuptools package walk that follows the fixture trees' symlink
# loops once made this run forever (pyproject: namespaces = false)
(cd "$WORK/src" && timeout 300 dpkg-buildpackage -us -uc -b) > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "dpkg-buildpackage failed or took over 300 s (log above)"; }
DEB=$WORK/agentlatd_${VERSION}_all.deb
[ -f "$DEB" ] || fail "expected $DEB; got: $(ls "$WORK")"
T_BUILD=$(now)
say "built $(basename "$DEB") ($(stat -c %s "$DEB") bytes) in $(secs "$T_TOOLS" "$T_BUILD") s"
[ -n "${AGENTLATD_KEEP_DEB:-}" ] && cp "$DEB" "$AGENTLATD_KEEP_DEB/"

# contents: conffile, units, man page, no tests or build junk
dpkg-deb -f "$DEB" Depends | grep -q "python3-pyroute2" || fail "Depends lacks python3-pyroute2"
dpkg-deb -e "$DEB" "$WORK/control"
grep -qx /etc/agentlatd.toml "$WORK/control/conffiles" || fail "/etc/agentlatd.toml is not a conffile"
LIST=$(dpkg-deb -c "$DEB" | awk '{print $6}')
for f in ./usr/bin/agentlatd ./lib/systemd/system/agentlatd.service ./lib/systemd/system/agentlatd.socket \
         ./etc/agentlatd.toml ./usr/share/man/man8/agentlatd.8.gz ./usr/share/doc/agentlatd/service.md \
         ./usr/lib/python3/dist-packages/agentlatd/default.toml; do
    grep -qx "$f" <<<"$LIST" || fail "$f missing from the package"
done
# a man page per command (generated from the parser), the policy's, both completions
for f in $(cd "$WORK/src" && /usr/bin/python3 -c 'from agentlatd.cli import COMMANDS; print(*COMMANDS)'); do
    grep -qx "./usr/share/man/man8/agentlatd-$f.8.gz" <<<"$LIST" || fail "no man page for $f"
done
for f in ./usr/share/man/man5/agentlatd.toml.5.gz ./usr/share/bash-completion/completions/agentlatd \
         ./usr/share/zsh/vendor-completions/_agentlatd; do
    grep -qx "$f" <<<"$LIST" || fail "$f missing from the package"
done
if grep -E "/tests/|\.pybuild|/build/|__pycache__" <<<"$LIST"; then fail "junk in the package (above)"; fi
# every module of the source tree is in the package (a directory without
# __init__.py would be dropped silently with namespaces = false)
for f in $(cd "$WORK/src" && find agentlatd -name '*.py' -o -name '*.toml' | sort); do
    grep -qx "./usr/lib/python3/dist-packages/$f" <<<"$LIST" || fail "$f is not in the package"
done

# 3. lintian: clean except tags waived in debian/agentlatd.lintian-overrides
say "lintian"
lintian --fail-on error,warning --display-level '>=warning' "$WORK"/agentlatd_"${VERSION}"_*.changes \
    > "$WORK/lintian.log" 2>&1
lrc=$?
grep -v "running with root privileges" "$WORK/lintian.log" || true
[ $lrc -eq 0 ] || fail "lintian reported errors or warnings (above)"
T_LINT=$(now)

# 4. a fresh bookworm chroot (cached tarball)
fresh=0
if [ -f "$CACHE" ] && [ -n "$(find "$CACHE" -mtime -7 2>/dev/null)" ]; then
    say "chroot from cache $CACHE"
    { mkdir -p "$ROOT" && tar -xzf "$CACHE" -C "$ROOT"; } || fail "cannot unpack $CACHE"
else
    say "debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    fresh=1
fi
T_CHROOT=$(now)

mnt() { mount "$@" && MOUNTS+=("${!#}"); }
mnt -t proc -o ro,nosuid,nodev,noexec proc "$ROOT/proc" || fail "mount proc"
mnt -t sysfs -o ro,nosuid,nodev,noexec sysfs "$ROOT/sys" || fail "mount sysfs"
mnt -t tmpfs -o mode=755 tmpfs "$ROOT/run" || fail "mount /run"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# nothing starts services inside the chroot (policy-rc.d, invoke-rc.d(8))
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
                DEBIAN_FRONTEND=noninteractive "$@"; }

in_root apt-get update -qq > "$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; fail "apt-get update in chroot"; }
if [ $fresh = 1 ]; then
    # cache the chroot with fresh package lists, before our package is in it
    tmpc="$CACHE.tmp.$$"
    # (not apt's own caches: the .debs and pkgcache.bin are rebuilt on demand)
    if tar -C "$ROOT" --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
           --exclude='./var/cache/apt/*.bin' --exclude='./var/cache/apt/archives/*.deb' \
           -czf "$tmpc" . 2>/dev/null; then
        mv "$tmpc" "$CACHE" && say "cached chroot as $CACHE"
    else
        rm -f "$tmpc"
    fi
fi

# 5. install exactly as a user would
say "apt-get install ./$(basename "$DEB") in the chroot"
cp "$DEB" "$ROOT/tmp/"
T_I0=$(now)
in_root apt-get install -y -q --no-install-recommends "./tmp/$(basename "$DEB")" systemd \
    > "$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; fail "apt-get install failed"; }
# apt-get wants ./ relative to the cwd: chroot's cwd is /
T_INSTALL=$(now)
say "installed in $(secs "$T_I0" "$T_INSTALL") s"

# 6. the installed program
out=$(in_root agentlatd --version) || fail "agentlatd --version failed"
[ "$out" = "agentlatd $VERSION" ] || fail "agentlatd --version printed '$out', expected 'agentlatd $VERSION'"
say "$out"
in_root sh -c 'command -v agentlatd' | grep -qx /usr/bin/agentlatd || fail "agentlatd is not /usr/bin/agentlatd"
in_root python3 -c 'import agentlatd, sys; sys.exit(0 if agentlatd.__file__.startswith("/usr/lib/python3/dist-packages/") else 1)' \
    || fail "agentlatd imported from somewhere other than the package"

say "agentlatd plan (this host, read-only /proc and /sys)"
in_root agentlatd plan > "$WORK/plan.txt" 2> "$WORK/plan.err" || { cat "$WORK/plan.err"; fail "agentlatd plan failed"; }
grep -q "^Completion CPUs:" "$WORK/plan.txt" || { cat "$WORK/plan.txt"; fail "plan output lacks the CPU partition"; }
head -3 "$WORK/plan.txt"
in_root agentlatd plan --json > "$WORK/plan.json" || fail "agentlatd plan --json failed"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert "changes" in d and "home_cpus" in d' "$WORK/plan.json" \
    || fail "plan --json is not the plan document"
FIX=$(ls -d "$REPO"/tests/fixtures/machines/*/ 2>/dev/null | head -1)
if [ -n "$FIX" ]; then
    mkdir -p "$ROOT/tmp/fixture" && cp -a "$FIX." "$ROOT/tmp/fixture/"
    in_root agentlatd plan --root /tmp/fixture --json > "$WORK/plan-fixture.json" \
        || fail "agentlatd plan --root <fixture $(basename "$FIX")> failed"
    say "plan of fixture $(basename "$FIX"): $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["changes"]), "changes")' "$WORK/plan-fixture.json")"
fi

say "Debian's python3-pyroute2 with our generic netlink code (read-only calls)"
in_root dpkg-query -W -f='${Version}\n' python3-pyroute2
in_root python3 - <<'EOF' || fail "netlink code does not work with Debian's pyroute2"
import pyroute2
from agentlatd.kernel.errnos import ErrClass
from agentlatd.netlink import NetlinkError
from agentlatd.netlink.ethtool import get_coalesce
from agentlatd.netlink.netdev import netdev_support
print("pyroute2", pyroute2.__version__, "netdev:", netdev_support())
try:
    print("lo coalesce:", get_coalesce("lo"))
except NetlinkError as e:  # lo has no ->get_coalesce: the kernel's answer, decoded
    assert e.errclass is ErrClass.UNSUPPORTED, e
    print("lo coalesce: unsupported, as expected:", e)
EOF

say "the installed daemon: READY=1 over a notify socket, SIGTERM -> exit 0"
# a policy that steers nothing (no device matches; IRQs and sysctls off); the
# chroot's /proc and /sys are read-only anyway
cat > "$ROOT/tmp/none.toml" <<'EOF'
[daemon]
interval = 0.5
[devices]
include = ["agentlatd-package-test-none-*"]
[tuning]
irq_affinity = false
rps_flow_cnt = 0
EOF
in_root python3 - <<'EOF' || fail "the installed daemon did not start, report READY and stop cleanly"
import os, signal, socket, subprocess, sys
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.bind("/tmp/notify")
n.settimeout(60)
env = dict(os.environ, NOTIFY_SOCKET="/tmp/notify", WATCHDOG_USEC="2000000")
p = subprocess.Popen(["/usr/bin/agentlatd", "run", "--config", "/tmp/none.toml",
                      "--state-dir", "/run/agentlatd-test", "--socket", "/run/agentlatd-test/s.sock"],
                     env=env, stderr=subprocess.PIPE, text=True)
got = []
try:
    while not any("READY=1" in m for m in got) or not any("WATCHDOG=1" in m for m in got):
        got.append(n.recv(4096).decode())
finally:
    p.send_signal(signal.SIGTERM)
    rc = p.wait(30)
err = p.stderr.read()
print("notify:", " | ".join(m.replace("\n", " ") for m in got[:3]))
if rc != 0:
    sys.exit(f"exit status {rc}:\n{err}")
EOF

say "groups, conffile, units"
in_root getent group agentlatd >/dev/null || fail "group agentlatd not created"
in_root getent group agentlatd-admin >/dev/null || fail "group agentlatd-admin not created"
in_root dpkg-query -W -f='${Conffiles}\n' agentlatd | grep -q "/etc/agentlatd.toml" || fail "conffile not registered"
in_root systemd-analyze verify --man=no /lib/systemd/system/agentlatd.service /lib/systemd/system/agentlatd.socket \
    || fail "systemd-analyze verify of the installed units"
[ -e "$ROOT/etc/systemd/system/multi-user.target.wants/agentlatd.service" ] \
    && fail "the service was enabled at install (it must wait for the admin)"
in_root test -f /usr/share/man/man8/agentlatd.8.gz || fail "man page missing"

say "remove keeps the conffile; purge removes it"
in_root apt-get remove -y -q agentlatd > "$WORK/remove.log" 2>&1 || { cat "$WORK/remove.log"; fail "apt-get remove"; }
[ ! -e "$ROOT/usr/bin/agentlatd" ] || fail "/usr/bin/agentlatd left after remove"
[ -e "$ROOT/etc/agentlatd.toml" ] || fail "conffile removed by remove (only purge may)"
in_root apt-get purge -y -q agentlatd > "$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log"; fail "apt-get purge"; }
[ ! -e "$ROOT/etc/agentlatd.toml" ] || fail "conffile left after purge"
T_END=$(now)

say "timings: tools $(secs "$T0" "$T_TOOLS") s, build $(secs "$T_TOOLS" "$T_BUILD") s, lintian $(secs "$T_BUILD" "$T_LINT") s, chroot $(secs "$T_LINT" "$T_CHROOT") s ($([ $fresh = 1 ] && echo debootstrap || echo cached)), install $(secs "$T_I0" "$T_INSTALL") s, total $(secs "$T0" "$T_END") s"
echo "PASS package: agentlatd_${VERSION}_all.deb builds, lints clean, installs and runs on bookworm"
exit 0
