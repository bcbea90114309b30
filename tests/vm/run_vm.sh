#!/bin/bash
# Boot ONE throw-away agentlatd test guest and run a job in it.
#
#   usage: tests/vm/run_vm.sh JOBDIR [EXTRA QEMU ARGS...]
#
# JOBDIR must hold run.sh.  The guest (see tests/vm/init) runs `sh /job/run.sh` in a chroot
# on an overlay of the host's / (read-only) with cwd /job = JOBDIR, and writes JOBDIR/out.log
# (stdout+stderr) and JOBDIR/rc.  JOBDIR/console.log gets the serial console.
#
# The guest: 4 vCPUs, single-threaded TCG (there is no usable KVM here; multi-threaded TCG
# hung in 8 of 78 boots), q35, an NVMe disk (a snapshot of the lab's sparse image), a 4-queue
# virtio-net on a multi-queue tap, e1000e and igb (QEMU 10) on user-mode networking, and the
# netdevsim module.  QEMU runs under `unshare -n`: the tap lives in a fresh, private network
# namespace, where it is 10.9.0.1/24 (give the guest's virtio-net 10.9.0.2/24) with a UDP
# echo server on 10.9.0.1:7.  Nothing in the host's own netns (eth0 ...) is created or
# touched.
#
# Env: AGENTLATD_VMLAB  cache root (default /var/tmp/agentlatd-vmlab); VM_LAB  lab dir
#                       (default $AGENTLATD_VMLAB/current, made by tests/vm/lab.sh)
#      VM_SMP (4)  VM_MEM (2048, MiB)  VM_TIMEOUT (600 s)
#      VM_MODE     job (default) | systemd (systemd is PID 1, see tests/vm/init)
#      VM_APPEND   extra kernel command line
#      VM_KEEP_PATH a host directory (the checkout) that stays visible at its own path in the
#                  guest, also under /tmp, where the guest mounts a fresh tmpfs
#      VM_IOMMU=1  emulated intel-iommu with interrupt remapping (effective affinity moves
#                  at once instead of at the next interrupt)
#      VM_STREAM=1 copy out.log to stdout while the guest runs
#      VM_HOST_PYTHON  interpreter for the echo server (default: python3; empty: none)
# Exit: the job's exit status; 124 the guest timed out; 125 no status came back (guest
#       crashed or init failed: see JOBDIR/console.log); 77 no lab (run lab.sh first).
set -u
if [ $# -lt 1 ] || [ ! -f "$1/run.sh" ]; then
    echo "usage: $0 JOBDIR [EXTRA QEMU ARGS...]   (JOBDIR must contain run.sh)" >&2
    exit 2
fi
JOBDIR=$(readlink -f "$1"); shift
HERE=$(dirname "$(readlink -f "$0")")
ROOT=${AGENTLATD_VMLAB:-/var/tmp/agentlatd-vmlab}
LAB=$(readlink -f "${VM_LAB:-$ROOT/current}")
if [ ! -f "$LAB/.complete" ]; then
    echo "run_vm.sh: no complete lab at ${VM_LAB:-$ROOT/current} (run tests/vm/lab.sh)" >&2
    exit 77
fi
# shellcheck disable=SC1091
. "$LAB/lab.env"
SMP=${VM_SMP:-4}
MEM=${VM_MEM:-2048}
TIMEOUT=${VM_TIMEOUT:-600}
MODE=${VM_MODE:-job}
PY=${VM_HOST_PYTHON-$(command -v python3)}

QEMU=$LAB/qemu10/usr/bin/qemu-system-x86_64
# QEMU 10 is unpacked, not installed: its own modules and firmware; -audio none keeps it
# from dlopen()ing the installed QEMU 7.2's audio modules
export QEMU_MODULE_DIR=$LAB/qemu10/usr/lib/x86_64-linux-gnu/qemu

rm -f "$JOBDIR/rc" "$JOBDIR/out.log" "$JOBDIR/console.log" "$JOBDIR/.initrd.gz"
# the guest mounts a fresh tmpfs on /tmp: a checkout there is bound back over it (init)
if [ -n "${VM_KEEP_PATH:-}" ]; then
    readlink -f "$VM_KEEP_PATH" > "$JOBDIR/.keep_path"
else
    rm -f "$JOBDIR/.keep_path"
fi
# initrd = the lab's base cpio + this checkout's init (the kernel unpacks concatenated
# archives in order), so editing tests/vm/init needs no lab rebuild
INITD=$(mktemp -d) || exit 1
install -m 755 "$HERE/init" "$INITD/init"
{ cat "$LAB/base.cpio.gz"; (cd "$INITD" && echo init | cpio -o -H newc --quiet | gzip -1); } \
    > "$JOBDIR/.initrd.gz"
rm -rf "$INITD"

ROM=romfile=   # no option ROMs: -kernel boot needs no iPXE (and QEMU 10's are not unpacked)
# shellcheck disable=SC2054  # commas inside QEMU option values
QEMU_CMD=("$QEMU" -L "$LAB/qemu10/usr/share/qemu" -L "$LAB/qemu10/usr/share/seabios" -audio none
    -accel tcg,thread=single -cpu max,-x2apic
    -machine "q35${VM_IOMMU:+,kernel-irqchip=split}" -smp "$SMP" -m "$MEM"
    ${VM_IOMMU:+-device intel-iommu,intremap=on}
    -nodefaults -no-user-config -display none -no-reboot
    -serial "file:$JOBDIR/console.log"
    -kernel "$LAB/kpkg/boot/vmlinuz-$KV" -initrd "$JOBDIR/.initrd.gz"
    -append "console=ttyS0 panic=-1 quiet loglevel=4 agentlatd.lab=$LAB agentlatd.mode=$MODE ${VM_APPEND:-}"
    -fsdev local,id=fs0,path=/,readonly=on,security_model=none,multidevs=remap
    -device virtio-9p-pci,fsdev=fs0,mount_tag=hostroot
    -fsdev "local,id=fs1,path=$JOBDIR,security_model=none"
    -device virtio-9p-pci,fsdev=fs1,mount_tag=job
    -drive "file=$LAB/nvme.img,if=none,format=raw,id=nvm0,snapshot=on"
    -device nvme,serial=agentlatd0001,drive=nvm0
    -netdev "tap,id=vn0,ifname=vmtap0,script=no,downscript=no,vhost=off,queues=$SMP"
    -device "virtio-net-pci,netdev=vn0,mq=on,vectors=$((2 * SMP + 2)),mac=52:54:00:00:00:10,$ROM"
    -netdev user,id=un1,net=10.0.2.0/24
    -device "e1000e,netdev=un1,mac=52:54:00:00:00:11,$ROM"
    -netdev user,id=un2,net=10.0.3.0/24
    -device "igb,netdev=un2,mac=52:54:00:00:00:12,$ROM"
    "$@")

# Inside the private netns: the tap peer and a UDP echo server (real RX traffic on every
# virtio queue: tun sends a flow's replies on the queue the guest sent it from).
# shellcheck disable=SC2016
NETNS_SCRIPT='
    ip link set lo up
    ip tuntap add dev vmtap0 mode tap multi_queue || exit 1
    ip addr add 10.9.0.1/24 dev vmtap0
    ip link set vmtap0 up
    ECHO=
    if [ -n "$1" ]; then
        "$1" -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((\"10.9.0.1\", 7))
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
" & ECHO=$!
    fi
    shift
    "$@"; rc=$?
    [ -n "$ECHO" ] && kill "$ECHO"
    exit $rc'

T0=$(date +%s.%N)
# timeout runs in its own process group and kills all of it (qemu, echo server) at the end
timeout -k 5 "$TIMEOUT" unshare -n bash -c "$NETNS_SCRIPT" vmns "$PY" "${QEMU_CMD[@]}" \
    > "$JOBDIR/qemu.log" 2>&1 &
QPID=$!
trap 'kill -TERM $QPID 2>/dev/null' INT TERM HUP
if [ "${VM_STREAM:-0}" = 1 ]; then
    tail -n +1 -F --pid=$QPID "$JOBDIR/out.log" 2>/dev/null &
    TPID=$!
fi
wait $QPID
QRC=$?
[ -n "${TPID:-}" ] && wait "$TPID"
trap - INT TERM HUP
rm -f "$JOBDIR/.initrd.gz"
WALL=$(echo "$(date +%s.%N) - $T0" | bc)

if [ -f "$JOBDIR/rc" ]; then
    RC=$(cat "$JOBDIR/rc")
elif [ $QRC -eq 124 ] || [ $QRC -eq 137 ]; then
    echo "run_vm.sh: guest timed out after ${TIMEOUT}s; console: $JOBDIR/console.log" >&2
    RC=124
else
    echo "run_vm.sh: no exit status from the guest (qemu rc=$QRC); console: $JOBDIR/console.log" >&2
    sed 's/^/  qemu| /' "$JOBDIR/qemu.log" >&2
    RC=125
fi
printf 'run_vm.sh: guest (kernel %s, %s vCPUs, mode %s) rc=%s wall=%.1fs\n' \
    "$KV" "$SMP" "$MODE" "$RC" "$WALL" >&2
exit "$RC"
