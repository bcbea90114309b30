"""Devices -> queues -> IRQs, and which IRQs the kernel manages (pure).

Input: the sampled NICs (sample/net.py), NVMe controllers (sample/nvme.py),
disks (sample/block.py) and the numbered rows of /proc/interrupts with their
/proc/irq/N affinity. Output: model.machine.Device values and, per IRQ, its
owning device, queue label and managed flag with the reason.

Ownership, strongest evidence first:
1. MSI vectors: <pci fn>/msi_irqs/ lists the IRQ numbers a PCI function owns
   (Documentation/ABI/testing/sysfs-bus-pci); the device sitting on that
   function owns them. For virtio the function is one directory above the
   netdev's `device/` (.../0000:00:03.0/virtio2). A legacy INTx line (<pci
   fn>/irq) counts when the function has no MSI vectors.
2. Action names as drivers request them (/proc/interrupts last column):
     nvme0q0 / nvme0q3                 admin / I/O queue 3   (drivers/nvme/host/pci.c)
     mlx5_comp3@pci:0000:3b:00.0       comp-3; mlx5_async0@pci:... other (mlx5 eq.c)
     gve-ntfy-blk3@pci:0000:00:04.0    comp-3; gve-mgmnt@pci:... other  (gve_main.c)
     eth%d-ntfy-block.3                comp-3 of gve's first upstream versions: they
                                       requested IRQs before register_netdev(), so the name
                                       keeps the "eth%d" template; the device comes
                                       from the MSI list
     mana_q3@pci:7870:00:00.0          comp-3; mana_hwc@pci:... other (Azure MANA,
                                       gdma_main.c mana_gd_setup_irqs())
     hns3-0000:7d:00.0-TxRx-3          txrx-3 (HiSilicon Kunpeng, hns3_enet.c
                                       hns3_nic_init_irq(): driver, PCI function,
                                       TxRx/Rx/Tx, index); hclge-misc-0000:7d:00.0 other
     virtio2-input.0 / -output.0       rx-0 / tx-0 of the NIC on virtio2 (virtio_net)
     virtio2-config                    config; virtio1-req.0: q0 (virtio_blk)
     eth0-TxRx-3, iavf-eth0-TxRx-0,    txrx-3 / txrx-0 (ixgbe, i40e, iavf, ice;
     ice-eth0-TxRx-1, eth0-Tx-Rx-2     ena prints Tx-Rx)
     ens1f0-rx-2 / ens1f0-tx-2         rx-2 / tx-2 (igb, e1000e, bnxt)
     eth1                              other (the link/mailbox vector)
     iavf-0000:00:06.0:mbx             other of the function named in it
   A name decides the queue label; it decides the device only when no MSI
   list does or the two agree (a representor netdev shares its PF's function).
   When no name names a known device but the MSI list does, the most specific
   reading of the first name still gives the queue (the gve template above, or
   a NIC renamed after its IRQs were requested: the names keep the old name).
Queue labels: "rx-N", "tx-N", "txrx-N", "comp-N", "qN" (NVMe/virtio-blk I/O
queue N), "admin", "config", "other".

Kernel-managed affinity (Documentation/core-api/irq/irq-affinity.rst;
kernel/irq/manage.c irq_set_affinity checks irqd_affinity_is_managed and
fails with EIO) is detected WITHOUT writing, and the reason says why:
- an explicit marker: debugfs irq/irqs/N shows IRQD_AFFINITY_MANAGED, or a
  capture recorded proc/irq/N/smp_affinity as read-only;
- proc/irq/N/smp_affinity is read-only (0444): 6.12+ makes a managed IRQ's
  affinity files read-only;
- an NVMe I/O queue (nvmeXqN, N >= 1) of a controller driven by `nvme`: the
  driver allocates I/O vectors with PCI_IRQ_AFFINITY (managed), and the
  reason adds the blk-mq hctx whose cpu_list equals the IRQ's affinity; an
  nvmeXqN whose controller is unknown counts when its affinity equals an hctx
  cpu_list of some NVMe disk (the per-CPU/per-group layout);
- a virtio-blk request queue (virtio_blk passes a struct irq_affinity to
  virtio_find_vqs since 4.11: managed; seen read-only on 6.18).
The engine confirms on its first write (EIO / EPERM).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet
from agentlatd.model.machine import Device, NapiThread, NetQueue
from agentlatd.sample.block import BlockSample
from agentlatd.sample.napi_threads import NapiThreadSample
from agentlatd.sample.napi_threads import owner as napi_owner
from agentlatd.sample.net import NetDevSample, ParentDevice
from agentlatd.sample.nvme import NvmeSample

_PCI = r"[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"
_PCI_ANYWHERE = re.compile(_PCI)

# (regex, what the "dev" group names, queue label template); first match wins
_NAME_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^(?P<dev>nvme\d+)q(?P<n>\d+)$"), "nvme", "nvmeq"),
    (re.compile(r"^(?P<dev>virtio\d+)-input\.(?P<n>\d+)$"), "virtio", "rx-{n}"),
    (re.compile(r"^(?P<dev>virtio\d+)-output\.(?P<n>\d+)$"), "virtio", "tx-{n}"),
    (re.compile(r"^(?P<dev>virtio\d+)-req\.(?P<n>\d+)$"), "virtio", "q{n}"),
    (re.compile(r"^(?P<dev>virtio\d+)-config$"), "virtio", "config"),
    (re.compile(r"^(?P<dev>virtio\d+)-\S+$"), "virtio", "other"),
    (re.compile(rf"^\S*?_comp(?P<n>\d+)@pci:(?P<dev>{_PCI})$"), "pci", "comp-{n}"),
    (re.compile(rf"^\S*?-ntfy-blk(?P<n>\d+)@pci:(?P<dev>{_PCI})$"), "pci", "comp-{n}"),
    (re.compile(rf"^mana_q(?P<n>\d+)@pci:(?P<dev>{_PCI})$"), "pci", "comp-{n}"),
    (re.compile(rf"^hns3-(?P<dev>{_PCI})-TxRx-(?P<n>\d+)$"), "pci", "txrx-{n}"),
    (re.compile(rf"^hns3-(?P<dev>{_PCI})-Rx-(?P<n>\d+)$"), "pci", "rx-{n}"),
    (re.compile(rf"^hns3-(?P<dev>{_PCI})-Tx-(?P<n>\d+)$"), "pci", "tx-{n}"),
    (re.compile(r"^(?P<dev>\S+)-ntfy-block\.(?P<n>\d+)$"), "if", "comp-{n}"),
    (re.compile(rf"^\S*@pci:(?P<dev>{_PCI})$"), "pci", "other"),
    (re.compile(r"^(?P<dev>\S+)-(?:TxRx|Tx-Rx|txrx|fp|combined)-(?P<n>\d+)$"), "if", "txrx-{n}"),
    (re.compile(r"^(?P<dev>\S+)-(?:rx|Rx|RX)-(?P<n>\d+)$"), "if", "rx-{n}"),
    (re.compile(r"^(?P<dev>\S+)-(?:tx|Tx|TX)-(?P<n>\d+)$"), "if", "tx-{n}"),
    (re.compile(r"^(?P<dev>\S+)$"), "if", "other"),
)

NVME_IO_QUEUE = re.compile(r"^nvme\d+q([1-9]\d*)$")


@dataclass(frozen=True, slots=True)
class NameMatch:
    """What an action name says: which kind of key names the device, and the queue."""

    by: str  # "nvme" | "virtio" | "pci" | "if"
    key: str  # "nvme0" | "virtio2" | "0000:3b:00.0" | "iavf-eth0"
    queue: str


@dataclass(frozen=True, slots=True)
class IrqLine:
    """The per-IRQ input of this module (built by model/build.py)."""

    irq: int
    actions: tuple[str, ...]
    smp_affinity: CpuSet | None
    readonly: bool = False  # proc/irq/N/smp_affinity has no write bit
    marker: str = ""  # explicit managed marker ("debugfs ...", "capture ..."), "" = none


@dataclass(frozen=True, slots=True)
class IrqOwner:
    device: str | None
    queue: str | None
    managed: bool
    managed_reason: str


def name_matches(name: str) -> list[NameMatch]:
    """Every reading of one action name, most specific first (the last: a PCI address in it)."""
    name = name.strip()
    out: list[NameMatch] = []
    for rx, by, label in _NAME_RULES:
        m = rx.match(name)
        if m is None:
            continue
        d = m.groupdict()
        if label == "nvmeq":
            q = "admin" if int(d["n"]) == 0 else f"q{int(d['n'])}"
        else:
            q = label.format(n=int(d["n"])) if d.get("n") is not None else label
        out.append(NameMatch(by, d["dev"], q))
    m2 = _PCI_ANYWHERE.search(name)
    if m2 is not None and not any(c.by == "pci" for c in out):
        out.append(NameMatch("pci", m2.group(0), "other"))
    return out


def parse_action(name: str) -> NameMatch | None:
    """The most specific reading of an action name ("mlx5_comp3@pci:0000:3b:00.0" -> pci, comp-3)."""
    found = name_matches(name)
    return found[0] if found else None


# -- the device table --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Dev:
    name: str
    kind: str
    parent: ParentDevice | None
    claims_irqs: bool  # owns its parent's MSI vectors


def _table(nets: Sequence[NetDevSample], nvmes: Sequence[NvmeSample],
           blocks: Sequence[BlockSample]) -> list[_Dev]:
    nvme_paths = {c.path for c in nvmes}
    nvme_ns = {n for c in nvmes for n in c.namespaces}
    out = [_Dev(n.name, "net", n.parent, n.parent is not None) for n in nets]
    out += [_Dev(c.name, "nvme", c.parent, c.parent is not None) for c in nvmes]
    for b in blocks:
        # an NVMe namespace's IRQs are its controller's
        under_nvme = b.name in nvme_ns or (b.parent is not None and b.parent.path in nvme_paths)
        out.append(_Dev(b.name, "block", b.parent, b.parent is not None and not under_nvme))
    return out


def _irq_claims(table: Sequence[_Dev]) -> dict[int, list[_Dev]]:
    """IRQ -> the devices whose PCI function lists it (msi_irqs/, else INTx)."""
    out: dict[int, list[_Dev]] = {}
    for d in table:
        if not d.claims_irqs or d.parent is None:
            continue
        vectors = d.parent.msi_irqs or ((d.parent.intx_irq,) if d.parent.intx_irq else ())
        for v in vectors:
            out.setdefault(v, []).append(d)
    return out


def _resolve_name(m: NameMatch, table: Sequence[_Dev], claimants: Sequence[_Dev]) -> _Dev | None:
    if m.by == "nvme":
        return next((d for d in table if d.kind == "nvme" and d.name == m.key), None)
    if m.by == "virtio":
        return next((d for d in table if d.claims_irqs and d.parent is not None
                     and d.parent.bus_id == m.key), None)
    if m.by == "pci":
        on_fn = [d for d in table if d.claims_irqs and d.parent is not None and d.parent.pci == m.key]
        pick = [d for d in on_fn if d in claimants] or on_fn
        return pick[0] if pick else None
    # an interface name, maybe behind a driver prefix: "iavf-eth0" -> eth0
    nets = {d.name: d for d in table if d.kind == "net"}
    key = m.key
    while True:
        if key in nets:
            return nets[key]
        if "-" not in key:
            return None
        key = key.split("-", 1)[1]


def _same_function(a: _Dev, b: _Dev) -> bool:
    return (a.parent is not None and b.parent is not None and a.parent.pci is not None
            and a.parent.pci == b.parent.pci)


def assign(lines: Sequence[IrqLine], nets: Sequence[NetDevSample], nvmes: Sequence[NvmeSample],
           blocks: Sequence[BlockSample]) -> dict[int, IrqOwner]:
    """Owner, queue label and managed flag of every IRQ line."""
    table = _table(nets, nvmes, blocks)
    claims = _irq_claims(table)
    by_name = {d.name: d for d in table}
    drivers = {d.name: (d.parent.driver if d.parent else None) for d in table}
    hctx_of = _hctx_by_device(nvmes, blocks)
    all_nvme_hctx = [cpus for b in blocks if b.name.startswith("nvme") for cpus in b.hctx.values()]
    out: dict[int, IrqOwner] = {}
    for line in lines:
        claimants = claims.get(line.irq, [])
        named: _Dev | None = None
        match: NameMatch | None = None
        first = next((found[0] for a in line.actions if (found := name_matches(a))), None)
        for action in line.actions:
            for cand in name_matches(action):
                named = _resolve_name(cand, table, claimants)
                if named is not None:
                    match = cand
                    break
            if named is not None:
                break
        dev: _Dev | None
        if named is not None and (not claimants or named in claimants
                                  or any(_same_function(named, c) for c in claimants)):
            dev = named
            queue = match.queue if match is not None else "other"
        elif claimants:
            # several netdevs on one function (multi-port, representors): lowest name
            dev = sorted(claimants, key=lambda d: d.name)[0]
            # a name that named no known device still names the queue, unless it
            # names another PCI function than the one whose MSI list holds the IRQ
            queue = "other"
            if first is not None and named is None and (
                    first.by != "pci" or (dev.parent is not None and dev.parent.pci == first.key)):
                queue = first.queue
        else:
            dev, queue = None, None
        name = dev.name if dev is not None else None
        reason = managed_reason(
            line, name, by_name[name].kind if name else None, queue,
            drivers.get(name) if name else None, hctx_of.get(name, {}) if name else {},
            all_nvme_hctx)
        out[line.irq] = IrqOwner(name, queue if dev is not None else None, bool(reason), reason)
    return out


def _hctx_by_device(nvmes: Sequence[NvmeSample],
                    blocks: Sequence[BlockSample]) -> dict[str, Mapping[str, CpuSet]]:
    """device -> its blk-mq hctx cpu_lists (an NVMe controller: its first namespace's
    that has any: with native multipath the path disk nvmeXcYnZ's, never the bio-based head's)."""
    disks = {b.name: b for b in blocks}
    out: dict[str, Mapping[str, CpuSet]] = {b.name: b.hctx for b in blocks}
    for c in nvmes:
        for ns in c.namespaces:
            if ns in disks and disks[ns].hctx:
                out[c.name] = disks[ns].hctx
                break
    return out


def managed_reason(line: IrqLine, device: str | None, kind: str | None, queue: str | None,
                   driver: str | None, hctx: Mapping[str, CpuSet],
                   any_nvme_hctx: Sequence[CpuSet] = ()) -> str:
    """Why this IRQ's affinity is kernel-managed; "" when nothing says so."""
    why: list[str] = []
    if line.marker:
        why.append(line.marker)
    if line.readonly:
        why.append(f"proc/irq/{line.irq}/smp_affinity is read-only "
                   "(6.12+ makes a managed IRQ's affinity read-only)")
    aff = line.smp_affinity
    match_h = next((h for h, cpus in hctx.items() if aff and cpus == aff), None)
    layout = f", affinity {aff} = blk-mq hctx {match_h} cpu_list" if match_h is not None else ""
    io_q = any(NVME_IO_QUEUE.match(a.strip()) for a in line.actions)
    if io_q and kind == "nvme" and (driver == "nvme" or match_h is not None):
        via = "the nvme driver allocates I/O queue vectors with managed affinity " \
              "(PCI_IRQ_AFFINITY)" if driver == "nvme" else "per-CPU/per-group layout"
        why.append(f"nvme I/O queue {queue}: {via}{layout}")
    elif io_q and device is None and aff and any(aff == c for c in any_nvme_hctx):
        why.append(f"nvme I/O queue: affinity {aff} equals a blk-mq hctx cpu_list "
                   "(per-CPU/per-group layout)")
    elif kind == "block" and driver == "virtio_blk" and queue is not None \
            and re.fullmatch(r"q\d+", queue):
        why.append(f"virtio-blk request queue {queue}: virtio_blk asks for managed "
                   f"affinity (struct irq_affinity, 4.11+){layout}")
    return "; ".join(why)


# -- Device values -------------------------------------------------------------
def napi_threads_by_device(threads: Sequence[NapiThreadSample],
                           nets: Sequence[str]) -> dict[str, tuple[NapiThread, ...]]:
    """NIC -> its napi/<dev>-<id> kthreads, by pid (a comm no NIC fits is dropped)."""
    out: dict[str, list[NapiThread]] = {}
    for t in sorted(threads, key=lambda t: t.pid):
        who = napi_owner(t.comm, nets)
        if who is not None:
            out.setdefault(who[0], []).append(NapiThread(t.pid, t.starttime, who[1], t.cpus))
    return {k: tuple(v) for k, v in out.items()}



def _irqs_of(owners: Mapping[int, IrqOwner], name: str) -> tuple[int, ...]:
    return tuple(sorted(n for n, o in owners.items() if o.device == name))


def _natural(s: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", s) if p)


def build_devices(nets: Sequence[NetDevSample], nvmes: Sequence[NvmeSample],
                  blocks: Sequence[BlockSample], owners: Mapping[int, IrqOwner],
                  napi_threads: Sequence[NapiThreadSample] = ()) -> tuple[Device, ...]:
    """Every NIC, NVMe controller and disk, sorted by name (natural order)."""
    out: list[Device] = []
    kthreads = napi_threads_by_device(napi_threads, [n.name for n in nets])
    for n in nets:
        p = n.parent
        out.append(Device(
            name=n.name, kind="net", driver=p.driver if p else None, pci=p.pci if p else None,
            numa_node=p.numa_node if p else None, irqs=_irqs_of(owners, n.name),
            queues=tuple(q.name for q in n.queues), virtual=n.virtual, ifindex=n.ifindex,
            net_queues=tuple(NetQueue(q.name, q.rps_cpus, q.rps_flow_cnt, q.xps_cpus)
                             for q in n.queues),
            threaded=n.threaded, napi_defer_hard_irqs=n.napi_defer_hard_irqs,
            gro_flush_timeout=n.gro_flush_timeout, napi_threads=kthreads.get(n.name, ()),
        ))
    hctx = _hctx_by_device(nvmes, blocks)
    for c in nvmes:
        p = c.parent
        irqs = _irqs_of(owners, c.name)
        labels: list[str] = []
        for i in irqs:
            q = owners[i].queue
            if q and q not in labels:
                labels.append(q)
        out.append(Device(
            name=c.name, kind="nvme", driver=p.driver if p else None, pci=p.pci if p else None,
            numa_node=p.numa_node if p else None, irqs=irqs, queues=tuple(labels),
            hw_queue_cpus=dict(hctx.get(c.name, {})), block_devices=c.namespaces,
        ))
    for b in blocks:
        p = b.parent
        out.append(Device(
            name=b.name, kind="block", driver=p.driver if p else None, pci=p.pci if p else None,
            numa_node=p.numa_node if p else None, irqs=_irqs_of(owners, b.name),
            queues=tuple(b.hctx), virtual=b.virtual, hw_queue_cpus=dict(b.hctx),
            rq_affinity=b.rq_affinity,
        ))
    return tuple(sorted(out, key=lambda d: (_natural(d.name), d.kind)))
