#!/bin/bash
# Build, or reuse from its cache, the QEMU lab of agentlatd's real-kernel test tier.
#
#   usage (as root):  bash tests/vm/lab.sh
#
# The lab is a Debian kernel (booted with -kernel, modules unpacked), an out-of-tree
# netdevsim.ko built for it, QEMU 10 from bookworm-backports unpacked with dpkg -x (QEMU
# 7.2 has no igb model) and a base initramfs (static busybox + the virtio-pci, 9p and
# overlay modules; run_vm.sh appends /init to it at boot, so editing tests/vm/init never
# needs a rebuild).  Nothing is installed except the host tools below, and the host's apt
# sources are never modified: the archive is read through a private apt state dir.
#
# Layout under $AGENTLATD_VMLAB (default /var/tmp/agentlatd-vmlab):
#   apt/ debs/          private apt state and the download cache (shared by all labs)
#   k-<kernel ABI>/     one complete lab per kernel; .complete is written last
#   current -> k-...    the lab run_vm.sh boots by default (the last one lab.sh reported)
#   current-<suite>     the lab last resolved for AGENTLATD_VMLAB_SUITE
#   resolved-<suite>    when the kernel version was last resolved against the archive
#
# The kernel version is resolved at run time (Debian drops old kernels from its archive):
# the newest linux-image-*-amd64 in bookworm-backports (6.12 or newer: netdev netlink has
# the napi family; napi-set needs 6.13+), else the newest of bookworm (6.1).  A complete
# lab resolved less than AGENTLATD_VMLAB_MAX_AGE_DAYS (7) days ago is reused without
# asking the archive; if the archive cannot be reached, any complete lab is reused.
#
# Env: AGENTLATD_VMLAB            cache root
#      AGENTLATD_VMLAB_KV         pin a kernel ABI name (e.g. 6.1.0-41-amd64)
#      AGENTLATD_VMLAB_SUITE      backports (default: newest >= 6.12, else bookworm's)
#                                 | bookworm (bookworm's own 6.1 only)
#      AGENTLATD_VMLAB_REFRESH=1  resolve the kernel again now, even if a fresh lab exists
#      AGENTLATD_VMLAB_MAX_AGE_DAYS
# stdout: the build log, and as the last line LAB=<lab dir>
# exit:   0 ready; 77 cannot be built here (one line "skipped: <why>" on stderr);
#         2 usage error.
set -uo pipefail

ROOT=${AGENTLATD_VMLAB:-/var/tmp/agentlatd-vmlab}
MAX_AGE_DAYS=${AGENTLATD_VMLAB_MAX_AGE_DAYS:-7}
SUITE=${AGENTLATD_VMLAB_SUITE:-backports}
case $SUITE in backports|bookworm) ;; *) echo "AGENTLATD_VMLAB_SUITE: backports|bookworm" >&2; exit 2 ;; esac
LAB_FORMAT=1                     # bump when the lab layout changes: forces a rebuild
T0=$(date +%s)

exec 3>&1 4>&2      # progress and the skip reason go here, even while the build is logged
log() { echo "lab: $*" >&3; }
skip() { echo "skipped: $*" >&4; exit 77; }

[ "$(id -u)" = 0 ] || skip "tests/vm/lab.sh must run as root (apt, unshare -n, tap)"
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    skip "not a Debian host (no apt-get/dpkg)"
fi
mkdir -p "$ROOT" || skip "cannot create $ROOT"

# One builder at a time (two CI jobs on one host share the cache).
exec 9>"$ROOT/.lock"
flock 9

is_complete() { [ -f "$1/.complete" ] && [ "$(cat "$1/.complete")" = "format=$LAB_FORMAT" ]; }

finish() {  # $1 = lab dir: make it current and report it
    local l
    for l in current "current-$SUITE"; do  # current: what run_vm.sh boots by default
        ln -sfn "$(basename "$1")" "$ROOT/$l.new" && mv -T "$ROOT/$l.new" "$ROOT/$l"
    done
    # shellcheck disable=SC1091
    . "$1/lab.env"
    log "ready in $(( $(date +%s) - T0 )) s: kernel $KV ($KPKGVER), $QEMU_VERSION"
    echo "LAB=$1"
    exit 0
}

# ---- fast path: a complete lab, resolved recently, nothing asked of the network --------
if [ -n "${AGENTLATD_VMLAB_KV:-}" ]; then
    is_complete "$ROOT/k-$AGENTLATD_VMLAB_KV" && finish "$ROOT/k-$AGENTLATD_VMLAB_KV"
elif [ "${AGENTLATD_VMLAB_REFRESH:-0}" != 1 ] && [ -L "$ROOT/current-$SUITE" ] \
     && is_complete "$ROOT/current-$SUITE/" \
     && [ -n "$(find "$ROOT/resolved-$SUITE" -mtime -"$MAX_AGE_DAYS" 2>/dev/null)" ]; then
    finish "$(readlink -f "$ROOT/current-$SUITE")"
fi

# ---- 0. host tools -------------------------------------------------------------------
# cpio (initramfs), kmod (depmod/modprobe -d), gcc/make/libc6-dev/bc (netdevsim), xz/zstd
# (module decompression), qemu-system-x86 (7.2: only for the shared libraries QEMU 10
# links against); ethtool and iproute2 run inside the guest, which uses the host's binaries.
need=()
for p in cpio:cpio kmod:depmod gcc:gcc make:make libc6-dev: bc:bc xz-utils:xz zstd:zstd \
         qemu-system-x86: ethtool:ethtool iproute2:ip util-linux:unshare; do
    pkg=${p%%:*} bin=${p#*:}
    if [ -n "$bin" ]; then command -v "$bin" >/dev/null || need+=("$pkg")
    else dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing host tools: ${need[*]}"
    apt-get update -q >/dev/null || skip "apt-get update failed (no network?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade \
        "${need[@]}" >/dev/null || skip "apt-get install ${need[*]} failed"
fi

# ---- 1. private apt state: bookworm + updates + security + backports -----------------
mkdir -p "$ROOT/apt/lists/partial" "$ROOT/apt/cache/archives/partial" "$ROOT/debs"
MAIN=http://deb.debian.org/debian SEC=http://deb.debian.org/debian-security
SRCF=/etc/apt/sources.list.d/debian.sources
if [ -f $SRCF ]; then   # use the mirrors this host's apt already uses (deb822)
    m=$(awk '/^URIs:/{u=$2} /^Suites:/ && !/security/{print u; exit}' $SRCF)
    s=$(awk '/^URIs:/{u=$2} /^Suites:.*security/{print u; exit}' $SRCF)
    MAIN=${m:-$MAIN} SEC=${s:-$SEC}
fi
KR=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f $KR ] || skip "no $KR (debian-archive-keyring)"
cat > "$ROOT/apt/sources.list" <<EOF
deb [signed-by=$KR] $MAIN bookworm main
deb [signed-by=$KR] $MAIN bookworm-updates main
deb [signed-by=$KR] $SEC bookworm-security main
deb [signed-by=$KR] $MAIN bookworm-backports main
EOF
APTO=(-o "Dir::Etc::SourceList=$ROOT/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$ROOT/apt/lists" -o "Dir::Cache=$ROOT/apt/cache"
      -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
      -o Debug::NoLocking=1)
APT() { apt-get "${APTO[@]}" "$@"; }
APTC() { apt-cache "${APTO[@]}" "$@"; }

fallback() {  # archive unreachable or changed: reuse any complete lab, else skip
    local d
    d=$(readlink -f "$ROOT/current-$SUITE" 2>/dev/null)
    if [ -n "$d" ] && is_complete "$d"; then
        log "WARNING: $1; reusing the cached lab $d"
        finish "$d"
    fi
    while read -r d; do
        is_complete "$d" && { log "WARNING: $1; reusing the cached lab $d"; finish "$d"; }
    done < <(find "$ROOT" -mindepth 1 -maxdepth 1 -type d -name 'k-*' | sort -rV)
    skip "$1"
}

log "updating the private package lists ($MAIN)"
if ! APT update -q >"$ROOT/apt/update.log" 2>&1 \
   || grep -qE '^(W|E): (Failed|Some index)' "$ROOT/apt/update.log"; then
    fallback "cannot read the Debian archive ($(grep -m1 -E '^(W|E):' "$ROOT/apt/update.log"))"
fi
touch "$ROOT/resolved-$SUITE"

# ---- 2. resolve the kernel -------------------------------------------------------------
# madison rows: "pkg | version | mirror suite/main amd64 Packages"
newest_in() {  # $1 = suite regex -> newest version of linux-image-amd64 there
    APTC madison linux-image-amd64 | awk -F' *[|] *' -v s="$1" '$3 ~ " "s"/" {print $2}' | sort -V | tail -1
}
abi_of() {     # linux-image-amd64 version -> kernel ABI name it depends on
    APTC show "linux-image-amd64=$1" 2>/dev/null \
        | sed -n 's/^Depends: \(linux-image-[^ ,]*-amd64\).*/\1/p' | head -1 | sed 's/^linux-image-//'
}
if [ -n "${AGENTLATD_VMLAB_KV:-}" ]; then
    KV=$AGENTLATD_VMLAB_KV
else
    KV=
    v=
    [ "$SUITE" = backports ] && v=$(newest_in 'bookworm-backports')
    if [ -n "$v" ]; then
        KV=$(abi_of "$v")
        # only 6.12 or newer from backports (older bpo kernels lack the netdev napi family)
        [ -n "$KV" ] && printf '6.12\n%s\n' "${KV%%-*}" | sort -CV || KV=
    fi
    if [ -z "$KV" ]; then
        v=$(newest_in 'bookworm(-security|-updates)?')
        [ -n "$v" ] && KV=$(abi_of "$v")
    fi
    [ -n "$KV" ] || fallback "no linux-image-*-amd64 found in bookworm-backports or bookworm"
fi
LAB=$ROOT/k-$KV
log "kernel: linux-image-$KV"
is_complete "$LAB" && finish "$LAB"

# ---- 3. download -----------------------------------------------------------------------
KPKGVER=$(APTC madison "linux-image-$KV" | awk -F' *[|] *' '{print $2}' | sort -V | tail -1)
[ -n "$KPKGVER" ] || fallback "linux-image-$KV is not in the archive"
KSERIES=$(echo "$KV" | cut -d. -f1-2)                     # 6.1 / 6.12
HDR_COMMON=$(APTC depends "linux-headers-$KV" | sed -n 's/.*Depends: \(linux-headers-.*-common\)$/\1/p' | head -1)
KBUILD=$(APTC depends "linux-headers-$KV" | sed -n 's/.*Depends: \(linux-kbuild-[^ ]*\)$/\1/p' | head -1)
if [ -z "$HDR_COMMON" ] || [ -z "$KBUILD" ]; then
    fallback "cannot resolve linux-headers-$KV dependencies"
fi
log "downloading kernel $KPKGVER, headers, linux-source-$KSERIES, busybox-static, QEMU 10"
(cd "$ROOT/debs" && APT download -q "linux-image-$KV" "linux-headers-$KV" "$HDR_COMMON" "$KBUILD" \
     "linux-source-$KSERIES=$KPKGVER" busybox-static \
     qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
     qemu-system-data/bookworm-backports seabios/bookworm-backports) >"$ROOT/debs/download.log" 2>&1 \
    || fallback "download failed: $(grep -m1 -E '^E:' "$ROOT/debs/download.log")"

# newest .deb of a package in the download cache
deb() { find "$ROOT/debs" -maxdepth 1 -name "${1}_*${2:-}*.deb" | sort -V | tail -1; }

# ---- 4. build into a temp dir; rename when complete ------------------------------------
T=$ROOT/k-$KV.tmp
rm -rf "$T"
if ! mkdir -p "$T" || ! cd "$T"; then skip "cannot write $T"; fi
step() { log "$1"; echo "== $1"; STEP=$1; }
# shellcheck disable=SC2317  # invoked by the ERR trap
fail() {
    trap - ERR; set +e
    exec 1>&3 2>&4
    tail -n 25 "$T/build.log" | sed 's/^/  | /' >&2
    rm -rf "$T"
    fallback "lab build failed at: $STEP"
}
trap fail ERR
set -E -e
exec >>"$T/build.log" 2>&1   # details to build.log; progress still goes to fd 3

step "unpacking"
mkdir -p kpkg bbpkg hdr src qemu10
dpkg -x "$(deb "linux-image-$KV" "$KPKGVER")" kpkg
dpkg -x "$(deb busybox-static)" bbpkg
for p in "linux-headers-$KV" "$HDR_COMMON" "$KBUILD"; do dpkg -x "$(deb "$p")" hdr; done
dpkg -x "$(deb "linux-source-$KSERIES" "$KPKGVER")" src
for p in qemu-system-x86 qemu-system-common qemu-system-data seabios; do
    dpkg -x "$(deb "$p" bpo12)" qemu10
done
[ -f "kpkg/boot/vmlinuz-$KV" ]
# 6.12 ships modules as .ko.xz: decompress so busybox insmod/modprobe can load them
find kpkg -name '*.ko.xz' -print0 | xargs -0 -r -n200 xz -d
find kpkg -name '*.ko.zst' -print0 | xargs -0 -r -n50 zstd -q -d --rm

step "checking QEMU 10"
export QEMU_MODULE_DIR=$T/qemu10/usr/lib/x86_64-linux-gnu/qemu
QEMU_VERSION=$(qemu10/usr/bin/qemu-system-x86_64 --version | head -1)
qemu10/usr/bin/qemu-system-x86_64 -L qemu10/usr/share/qemu -audio none -device igb,help \
    | grep -q 'igb options'

# netdevsim is not enabled in Debian's kernels: build it out of tree from linux-source
# against the matching headers (BTF generation off: no pahole needed)
step "building netdevsim"
sed -i "s#^include /usr/src/#include $T/hdr/usr/src/#" "hdr/usr/src/linux-headers-$KV/Makefile"
tar -xJf "src/usr/src/linux-source-$KSERIES.tar.xz" -C src "linux-source-$KSERIES/drivers/net/netdevsim"
cp -r "src/linux-source-$KSERIES/drivers/net/netdevsim" nsim
make -C "hdr/usr/src/linux-headers-$KV" M="$T/nsim" CONFIG_NETDEVSIM=m \
    CONFIG_DEBUG_INFO_BTF_MODULES= modules -j"$(nproc)"
mkdir -p "kpkg/lib/modules/$KV/updates"
strip --strip-debug -o "kpkg/lib/modules/$KV/updates/netdevsim.ko" nsim/netdevsim.ko
depmod -b kpkg "$KV"

step "building the base initramfs"
mkdir -p initramfs/{bin,dev,proc,sys,mods,host,job,newroot,rw,lib/modules}
cp bbpkg/bin/busybox initramfs/bin/
for m in virtio_pci 9pnet_virtio 9p overlay; do
    modprobe -d kpkg -S "$KV" --show-depends $m | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r f; do
    cp "$f" initramfs/mods/ && basename "$f" >> initramfs/mods/order
done
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -1) > base.cpio.gz
truncate -s 64M nvme.img              # sparse backing file of the emulated NVMe disk

step "cleaning up"
rm -rf hdr src nsim initramfs
kver_ge() { printf '%s\n%s\n' "$1" "${KV%%-*}" | sort -CV; }
cat > lab.env <<EOF
# written by tests/vm/lab.sh
KV='$KV'
KPKGVER='$KPKGVER'
KSERIES='$KSERIES'
QEMU_VERSION='$QEMU_VERSION'
# netdev netlink napi-get (6.9+) / napi-set (6.13+)
NAPI_GET=$(kver_ge 6.9 && echo 1 || echo 0)
NAPI_SET=$(kver_ge 6.13 && echo 1 || echo 0)
BUILT='$(date -u +%FT%TZ) in $(( $(date +%s) - T0 )) s'
EOF
echo "format=$LAB_FORMAT" > .complete
trap - ERR
set +e
cd "$ROOT" && rm -rf "$LAB" && mv "$T" "$LAB"
exec 1>&3 2>&4
finish "$LAB"
