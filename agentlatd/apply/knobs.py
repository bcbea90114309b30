"""The knob registry: every tunable agentlatd writes, with read, write, verify.

style.md habits 5 and 9 (tuned's plugin decorators, node_exporter's
registerCollector). A Change from the plan names a knob by its registry name
("net.rps_cpus") and a target in the knob's own syntax ("eth0/rx-3"). The engine
(agentlatd.apply.engine) reads the current value, skips no-ops, journals the
original, writes, verifies and rolls back; it knows nothing about any one knob.

Kernel files, each written through Root (the only place paths meet a root):
  irq.affinity            proc/irq/N/smp_affinity_list   Documentation/core-api/irq/irq-affinity.rst
  net.rps_cpus            sys/class/net/D/queues/rx-N/rps_cpus       Documentation/networking/scaling.rst
  net.rps_flow_cnt        sys/class/net/D/queues/rx-N/rps_flow_cnt   (kernel rounds up to a power of 2)
  net.xps_cpus            sys/class/net/D/queues/tx-N/xps_cpus
  net.threaded            sys/class/net/D/threaded       Documentation/ABI/testing/sysfs-class-net
  net.napi_defer_hard_irqs  sys/class/net/D/napi_defer_hard_irqs  Documentation/networking/napi.rst
  net.gro_flush_timeout   sys/class/net/D/gro_flush_timeout
  sysctl                  proc/sys/<dotted name with / for .>    Documentation/admin-guide/sysctl/net.rst
  block.rq_affinity       sys/block/B/queue/rq_affinity  Documentation/ABI/stable/sysfs-block
and over generic netlink (the live kernel only, never a recorded tree):
  net.coalesce            ETHTOOL_MSG_COALESCE_GET/SET   Documentation/networking/ethtool-netlink.rst
  napi.config             netdev family napi-get/napi-set (6.13+), sysfs fallback
                          Documentation/netlink/specs/netdev.yaml

Other modules add knobs with `register()` (the agent engineer's task affinity,
pm_qos, nice, ioprio).
"""

from __future__ import annotations

import errno
import importlib
import re
import shlex
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from types import ModuleType
from typing import Any

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import NapiTarget, parse_target
from agentlatd.sysfs.root import HOST, Root

# A network device name as the kernel allows it (dev_valid_name(): at most
# IFNAMSIZ-1 = 15 bytes, no '/', no whitespace, not "." or "..").
_DEV = r"(?!\.\.?(?:/|$))[^/\s:]{1,15}"
_BLOCK = r"[A-Za-z0-9_.!-]{1,32}"


class Knob:
    """One kind of tunable. Subclasses override read/write; the rest has defaults.

    name:      registry name ("net.rps_cpus")
    help:      one line for a person
    context:   errno family for agentlatd.kernel.errnos.classify ("irq", "sysfs",
               "proc", "netlink", "process")
    live_only: acts on the live kernel itself (netlink, processes), so it is
               refused on a recorded tree (Root other than "/"): writing a
               fixture's "eth0" must never reach the host's eth0
    """

    name: str = ""
    help: str = ""
    context: str = "sysfs"
    live_only: bool = False
    # drift is written back whatever policy.daemon.drift says: the value lives in a
    # process that forgets it on restart (irqbalance.banned_cpus), not another writer
    reassert: bool = False

    def check_target(self, target: str) -> None:
        """Raise ValueError when `target` is not in this knob's syntax."""

    def device(self, target: str) -> str | None:
        """The network device `target` names, for knobs of a device (None otherwise).

        The engine journals that device's identity (apply/identity.py) with
        the original and never restores it onto another device of that name.
        """
        return None

    def read(self, root: Root, target: str) -> str:
        raise NotImplementedError

    def write(self, root: Root, target: str, value: str) -> None:
        raise NotImplementedError

    def write_for(self, root: Root, target: str, value: str, owner: int | None) -> None:
        """write() for Change.owner: knobs of objects a uid can own (task knobs)
        refuse targets `owner` may not control; the others have no owner."""
        self.write(root, target, value)

    def equal(self, a: str, b: str) -> bool:
        """Whether two values mean the same (the kernel prints "0003", we write "3")."""
        return a.split() == b.split()

    def verify(self, root: Root, target: str, desired: str) -> tuple[bool, str]:
        """Read back after a write: (the kernel kept `desired`, what it shows)."""
        actual = self.read(root, target)
        return self.equal(actual, desired), actual

    def original_of(self, current: str, desired: str) -> str:
        """The original to journal, from the value read before writing `desired`.

        Knobs whose value is a set of fields (coalescing) keep only the fields
        they will change: a restore must not write fields the device does not
        support (ethtool answers EOPNOTSUPP for those).
        """
        return current

    def merge_original(self, recorded: str, captured: str) -> str:
        """Fold a later original_of() into the journaled original (new fields only)."""
        return recorded

    def restore(self, root: Root, target: str, original: str, *, written: str | None,
                journaled: AbstractSet[tuple[str, str]]) -> str:
        """Write a journaled `original` back (rollback, recover, Engine.restore()).

        `written` is what agentlatd last wrote to `target` (the journal's
        "written"), `journaled` every (knob, target) the journal holds (the
        journal's own key view: ask it `in`; a walk of it is a walk of the
        whole journal, per entry restored). A knob
        whose write spreads to objects the journal never saw overrides this to
        undo them too (task.affinity: threads born pinned). Returns a note for
        the report ("" when there is nothing more to say).
        """
        self.write(root, target, original)
        return ""

    def restore_spread(self, root: Root, target: str, original: str, *, written: str | None,
                       journaled: AbstractSet[tuple[str, str]]) -> str:
        """The part of restore() beyond `target` itself, for an entry whose own
        value is back already (the object set it back): the objects the write
        spread to may still show agentlatd's value. A note, as restore()."""
        return ""

    def restore_inherited(self, root: Root, target: str, original: str, *, written: str,
                          journaled: AbstractSet[tuple[str, str]]) -> int:
        """Restore an entry journaled with FLAG_INHERITED: `target` never had
        agentlatd's write, it inherited `written` (a process an agent forked).
        Only what still shows `written` gets `original`; how many objects did.
        ValueError for a knob nothing inherits."""
        raise ValueError(f"{self.name}: no object inherits it")

    def shell(self, target: str, value: str) -> str:
        """A command a person could paste to write `value` on the live host."""
        raise NotImplementedError

    def refusal(self, root: Root, target: str, value: str) -> str | None:
        """Why the kernel will refuse to write `value`, when reads alone can tell
        (`apply --dry-run` then says unsupported, not "would change"); None = unknown."""
        return None


REGISTRY: dict[str, Knob] = {}


def register(knob: Knob, *, replace: bool = False) -> Knob:
    """Add `knob` to the registry (public: other modules add their knobs)."""
    if not knob.name:
        raise ValueError("a knob needs a name")
    if knob.name in REGISTRY and not replace:
        raise ValueError(f"knob {str(knob.name)!r} is already registered")
    REGISTRY[knob.name] = knob
    return knob


def get(name: str) -> Knob:
    """The knob named `name`; KeyError with the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no knob named {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def names() -> list[str]:
    return sorted(REGISTRY)


def netns_scoped(knob: str, target: str) -> bool:
    """Whether (knob, target) names an object of the network namespace it was written in.

    Devices are per namespace (net.* and napi.config by name or ifindex there),
    and so are the net.* sysctls (net/sysctl_net.c registers them per netns);
    IRQs, block queues, CPUs and tasks belong to no network namespace.
    """
    if knob == KnobName.SYSCTL:
        return target.startswith("net.")
    return knob.startswith("net.") or knob == KnobName.NAPI_CONFIG


# ---------------------------------------------------------------------------
# value comparison


def cpulist_equal(a: str, b: str) -> bool:
    if a == b:  # the common case (a value read back as written): no parse
        return True
    try:
        return CpuSet.parse_list(a) == CpuSet.parse_list(b)
    except CpuSetError:
        return a.strip() == b.strip()


def mask_equal(a: str, b: str) -> bool:
    try:
        return CpuSet.parse_mask(a) == CpuSet.parse_mask(b)
    except CpuSetError:
        return a.strip() == b.strip()


def int_equal(a: str, b: str) -> bool:
    try:
        return int(a.strip(), 0) == int(b.strip(), 0)
    except ValueError:
        return a.strip() == b.strip()


def parse_fields(text: str) -> dict[str, str]:
    """"rx-usecs=20,adaptive-rx=off" -> {"rx-usecs": "20", "adaptive-rx": "off"}."""
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"expected key=value in {text!r}, got {part!r}")
        out[k.strip()] = v.strip()
    return out


def format_fields(fields: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in fields.items())


_BOOL = {"on": "1", "off": "0", "true": "1", "false": "0", "enabled": "1", "disabled": "0",
         "yes": "1", "no": "0"}


def _norm(v: str) -> str:
    v = v.strip().lower()
    return _BOOL.get(v, v)


def fields_subset_equal(actual: str, desired: str) -> bool:
    """Every field named in `desired` has that value in `actual` (on == 1)."""
    try:
        a, d = parse_fields(actual), parse_fields(desired)
    except ValueError:
        return actual.strip() == desired.strip()
    return all(k in a and _norm(a[k]) == _norm(v) for k, v in d.items())


# ---------------------------------------------------------------------------
# file knobs (sysfs / procfs through Root)


def _echo(path: str, value: str) -> str:
    return f"echo {shlex.quote(value)} > {shlex.quote(HOST.path(path))}"


class FileKnob(Knob):
    """A knob that is one pseudo-file; `path(target)` names it relative to the root."""

    def __init__(self, name: str, help: str, context: str, pattern: str,
                 path: Callable[[re.Match[str]], str],
                 equal: Callable[[str, str], bool] | None = None,
                 value_re: str | None = None, net_device: bool = False) -> None:
        self.name = name
        self._net_device = net_device  # the pattern's first group is a network device
        self.help = help
        self.context = context
        self._pattern = re.compile(pattern)
        self._path = path
        self._equal = equal
        self._value_re = re.compile(value_re) if value_re else None

    def path(self, target: str) -> str:
        m = self._pattern.fullmatch(target)
        if m is None:
            raise ValueError(f"{self.name}: bad target {target!r}")
        return self._path(m)

    def check_target(self, target: str) -> None:
        self.path(target)

    def device(self, target: str) -> str | None:
        if not self._net_device:
            return None
        m = self._pattern.fullmatch(target)
        return m[1] if m is not None else None

    def check_value(self, value: str) -> None:
        if self._value_re is not None and not self._value_re.fullmatch(value.strip()):
            raise ValueError(f"{self.name}: bad value {value!r}")

    def read(self, root: Root, target: str) -> str:
        return root.read_value(self.path(target), self.context)

    def write(self, root: Root, target: str, value: str) -> None:
        self.check_value(value)
        # with the newline, as `echo v > file` writes it: every sysfs/procfs
        # store() accepts it, and a recorded tree gets back its exact bytes
        path = self.path(target)
        try:
            root.write_value(path, value.strip() + "\n", self.context)
        except KernelError as e:
            # the same error, naming the value as the plan gave it (no "\n")
            raise KernelError(e.op, e.path, e.errno, self.context, value.strip()) from e

    def equal(self, a: str, b: str) -> bool:
        if self._equal is not None:
            return self._equal(a, b)
        return super().equal(a, b)

    def shell(self, target: str, value: str) -> str:
        return _echo(self.path(target), value.strip())


class ThreadedNapiKnob(FileKnob):
    """sys/class/net/D/threaded, which a device without NAPI instances refuses."""

    def refusal(self, root: Root, target: str, value: str) -> str | None:
        # net/core/net-sysfs.c modify_napi_threaded(): list_empty(&dev->napi_list)
        # -> -EOPNOTSUPP (a veth without GRO/XDP). The NAPI list comes from netdev
        # netlink napi-get, which is this process's namespace, so only on the live host;
        # and only for a device that is up, since a down one lists none either way.
        if value.strip() == "0" or not root.is_host:
            return None
        dev = self.path(target).split("/")[3]
        try:
            flags = int(root.read_value(f"sys/class/net/{dev}/flags"), 16)
            ifindex = int(root.read_value(f"sys/class/net/{dev}/ifindex"))
            if not flags & 0x1:  # IFF_UP
                return None
            if _netlink_module("netdev").napi_list(ifindex, queues=False):
                return None
        except Exception:  # no netdev family, no such device: not knowable, try the write
            return None
        return (f"{dev} has no NAPI instance (netdev napi-get lists none while it is up): "
                "the kernel refuses threaded NAPI with EOPNOTSUPP (net-sysfs.c "
                "modify_napi_threaded)")


_CPULIST_RE = r"[0-9,:/-]*"
_MASK_RE = r"[0-9a-fA-F,]+"
_INT_RE = r"-?[0-9]+"


class IrqAffinityKnob(FileKnob):
    """proc/irq/N/smp_affinity_list, verified against effective_affinity_list.

    The kernel may keep a narrower effective set than requested (x86 vector
    allocation targets one CPU of the mask): that is fine when effective is a
    subset of desired. Without interrupt remapping x86 moves the vector only at
    the IRQ's next interrupt (the pending move of kernel/irq/migration.c), so an
    idle IRQ shows the old effective CPU for a while. Seen in the VM tier on
    6.12: 15 of 18 NIC IRQs kept their old effective CPU right after the write;
    with intel-iommu intremap=on all 18 moved at once. verify() reports that as
    "clamped" with both values; drift detection and rollback compare
    smp_affinity_list only, so a pending move is never mistaken for drift.
    """

    def __init__(self) -> None:
        super().__init__(
            KnobName.IRQ_AFFINITY, "IRQ affinity (cpulist)", "irq", r"(\d{1,7})",
            lambda m: f"proc/irq/{m[1]}/smp_affinity_list", cpulist_equal, _CPULIST_RE)

    def verify(self, root: Root, target: str, desired: str) -> tuple[bool, str]:
        actual = self.read(root, target)
        if not cpulist_equal(actual, desired):
            return False, actual
        eff_path = self.path(target).replace("smp_affinity_list", "effective_affinity_list")
        if not root.exists(eff_path):
            return True, actual
        eff_text = root.read_value(eff_path, "irq")
        try:
            eff = CpuSet.parse_list(eff_text)
            ok = eff <= CpuSet.parse_list(desired)
        except CpuSetError:
            ok = False
        if ok:
            return True, actual
        return False, f"{actual} (effective {eff_text or 'none'})"


def _sysctl_path(m: re.Match[str]) -> str:
    return "proc/sys/" + m[0].replace(".", "/")


class SysctlKnob(FileKnob):
    def __init__(self) -> None:
        super().__init__(
            KnobName.SYSCTL, "a sysctl under proc/sys (target: dotted name)", "proc",
            r"[a-z][a-z0-9_]*(?:\.[A-Za-z0-9_-]+)+", _sysctl_path, None, r"[0-9a-zA-Z \t_.:,-]*")

    def shell(self, target: str, value: str) -> str:
        return f"sysctl -w {shlex.quote(f'{target}={value.strip()}')}"


for _k in (
    IrqAffinityKnob(),
    FileKnob(KnobName.NET_RPS_CPUS, "RPS CPUs of an rx queue (hex mask)", "sysfs",
             rf"({_DEV})/(rx-\d+)", lambda m: f"sys/class/net/{m[1]}/queues/{m[2]}/rps_cpus",
             mask_equal, _MASK_RE, net_device=True),
    FileKnob(KnobName.NET_RPS_FLOW_CNT, "RFS flow table size of an rx queue", "sysfs",
             rf"({_DEV})/(rx-\d+)", lambda m: f"sys/class/net/{m[1]}/queues/{m[2]}/rps_flow_cnt",
             int_equal, r"[0-9]+", net_device=True),
    FileKnob(KnobName.NET_XPS_CPUS, "XPS CPUs of a tx queue (hex mask)", "sysfs",
             rf"({_DEV})/(tx-\d+)", lambda m: f"sys/class/net/{m[1]}/queues/{m[2]}/xps_cpus",
             mask_equal, _MASK_RE, net_device=True),
    ThreadedNapiKnob(KnobName.NET_THREADED, "threaded NAPI of a device (0/1)", "sysfs",
             rf"({_DEV})", lambda m: f"sys/class/net/{m[1]}/threaded", int_equal, _INT_RE,
             net_device=True),
    FileKnob(KnobName.NET_NAPI_DEFER_HARD_IRQS, "NAPI polls before re-arming the IRQ", "sysfs",
             rf"({_DEV})", lambda m: f"sys/class/net/{m[1]}/napi_defer_hard_irqs",
             int_equal, _INT_RE, net_device=True),
    FileKnob(KnobName.NET_GRO_FLUSH_TIMEOUT, "GRO flush timeout (ns) of a device", "sysfs",
             rf"({_DEV})", lambda m: f"sys/class/net/{m[1]}/gro_flush_timeout",
             int_equal, _INT_RE, net_device=True),
    FileKnob(KnobName.BLOCK_RQ_AFFINITY, "blk-mq completion CPU policy (0/1/2)", "sysfs",
             rf"({_BLOCK})", lambda m: f"sys/block/{m[1]}/queue/rq_affinity", int_equal, _INT_RE),
    SysctlKnob(),
):
    register(_k)


# ---------------------------------------------------------------------------
# netlink knobs (live kernel only)


def _live(root: Root, knob: Knob, target: str) -> None:
    if not root.is_host:
        # a recorded tree's "eth0" is not this kernel's eth0: never reach it
        raise KernelError("netlink", f"{target} (recorded tree {root.base}: "
                          f"{knob.name} acts on the live kernel only)",
                          errno.EOPNOTSUPP, knob.context)


def _netlink_module(name: str) -> ModuleType:
    """agentlatd.netlink.<name>, imported on first use: it imports pyroute2 (~50 ms, and
    ~3 s under an emulated CPU), which a daemon whose policy sets no coalescing or NAPI
    knob never needs."""
    return importlib.import_module(f"agentlatd.netlink.{name}")


class FieldsKnob(Knob):
    """A knob whose value is a "key=value,key=value" set of fields (coalescing,
    per-NAPI config): a change names only the fields it sets, so equality,
    verification and the journaled original cover exactly those fields."""

    def equal(self, a: str, b: str) -> bool:
        return fields_subset_equal(a, b)

    def verify(self, root: Root, target: str, desired: str) -> tuple[bool, str]:
        actual = self.read(root, target)
        return fields_subset_equal(actual, desired), _project(actual, desired)

    def original_of(self, current: str, desired: str) -> str:
        return _project(current, desired)

    def merge_original(self, recorded: str, captured: str) -> str:
        rec = parse_fields(recorded)
        for k, v in parse_fields(captured).items():
            rec.setdefault(k, v)
        return format_fields(rec)


class CoalesceKnob(FieldsKnob):
    """NIC interrupt coalescing of device D over ethtool netlink (agentlatd.netlink.ethtool).

    Value: that client's canonical form "rx-usecs=20,adaptive-rx=off". A desired
    value names only the fields to change (COALESCE_SET merges them into the
    current settings); equality and the journaled original cover exactly those
    fields, so a restore never names a field the driver does not support.
    EOPNOTSUPP (veth: no ->get_coalesce) is ErrClass.UNSUPPORTED, not fatal.
    The netlink socket lives in the caller's network namespace.
    """

    name = KnobName.NET_COALESCE
    help = "NIC interrupt coalescing (ethtool -C)"
    context = "netlink"
    live_only = True

    def check_target(self, target: str) -> None:
        if not re.fullmatch(_DEV, target):
            raise ValueError(f"{self.name}: bad target {target!r}")

    def device(self, target: str) -> str | None:
        return target if re.fullmatch(_DEV, target) else None

    def read(self, root: Root, target: str) -> str:
        _live(root, self, target)
        return str(_netlink_module("ethtool").get_coalesce(target))

    def write(self, root: Root, target: str, value: str) -> None:
        _live(root, self, target)
        mod = _netlink_module("ethtool")
        fields = mod.parse_coalesce(value).values()  # ValueError before anything is sent
        mod.set_coalesce(target, **fields)

    def shell(self, target: str, value: str) -> str:
        args = " ".join(f"{shlex.quote(k)} {shlex.quote(v)}" for k, v in parse_fields(value).items())
        return f"ethtool -C {shlex.quote(target)} {args}"


def _project(actual: str, desired: str) -> str:
    """The fields of `actual` that `desired` names, in desired's order."""
    try:
        a, d = parse_fields(actual), parse_fields(desired)
    except ValueError:
        return actual
    return format_fields({k: a[k] for k in d if k in a})


# napi.config: per-NAPI fields of the netdev family (napi-set), and the
# device-wide sysfs files that stand in for them (every NAPI of the device).
NAPI_FIELDS = ("defer-hard-irqs", "gro-flush-timeout", "irq-suspend-timeout", "threaded")
_NAPI_SYSFS = {"defer-hard-irqs": "napi_defer_hard_irqs",
               "gro-flush-timeout": "gro_flush_timeout",
               "threaded": "threaded"}


class NapiConfigKnob(FieldsKnob):
    """Per-NAPI config over the netdev generic netlink family, sysfs fallback.

    Targets: "D/irqN" = the NAPI of device D serviced by IRQ N; "D/queueN" = the
    IRQ-less NAPI serving rx (else tx) queue N (veth, netdevsim); "D/napiK" = the
    K-th NAPI of D in napi-get order. A NAPI is found by (ifindex, irq[, queue])
    at each call, never by a remembered id (style.md habit 10: ids change across
    link down/up; Documentation/networking/napi.rst).
    Value: "defer-hard-irqs=2,gro-flush-timeout=20000" (netdev.yaml names; ns;
    threaded = enabled/disabled).

    Feature detection (agentlatd.netlink.netdev.netdev_support()): napi-set
    with every requested attribute (6.13+; threaded 6.17+) writes per NAPI.
    Otherwise, and on a recorded tree, the device-wide sysfs files stand in:
    the same value for every NAPI of the device; irq-suspend-timeout has no
    sysfs file and is unsupported there. Reads take napi-get's values and fill
    what it does not report (pre-6.13) from the same sysfs files.
    """

    name = KnobName.NAPI_CONFIG
    help = "per-NAPI config (netdev napi-set), sysfs fallback"
    context = "netlink"

    def __init__(self) -> None:
        self._support: dict[str, Any] = {}

    def _split(self, target: str) -> tuple[str, str, int]:
        match parse_target(self.name, target):
            case NapiTarget(dev=dev, by=by, n=n):
                return dev, by, n
        raise AssertionError(f"{self.name} takes NAPI targets")  # pragma: no cover - KIND

    def check_target(self, target: str) -> None:
        self._split(target)

    def device(self, target: str) -> str | None:
        try:
            return self._split(target)[0]
        except ValueError:
            return None

    def _netdev(self, root: Root) -> tuple[ModuleType, Any] | None:
        """(the netdev client, its NetdevSupport) on the live kernel, else None."""
        if not root.is_host:
            return None
        try:
            mod = _netlink_module("netdev")
        except KernelError:
            return None
        ns = root.readlink("proc/self/ns/net")  # one answer per namespace
        if ns not in self._support:
            try:
                self._support[ns] = mod.netdev_support()
            except KernelError:
                self._support[ns] = None
        sup = self._support[ns]
        return (mod, sup) if sup is not None and sup.napi_get else None

    def _find(self, root: Root, mod: ModuleType, target: str) -> Any:
        dev, kind, n = self._split(target)
        ifindex = int(root.read_value(f"sys/class/net/{dev}/ifindex", "sysfs"))
        napis = mod.napi_list(ifindex)
        found: Any = None
        if kind == "napi":
            found = napis[n] if n < len(napis) else None
        else:
            key = mod.NapiKey(ifindex, n if kind == "irq" else None,
                              n if kind == "queue" else None)
            found = mod.select_napi(napis, key)
        if found is None:
            # a device that is down has no NAPIs (netif_napi_add at open)
            raise KernelError("netlink", f"netdev napi {target} (no such NAPI now)",
                              errno.ENOENT, "netlink")
        return found

    def read(self, root: Root, target: str) -> str:
        nd = self._netdev(root)
        sysfs = self._sysfs_fields(root, target)
        if nd is None:
            return format_fields(sysfs)
        napi = self._find(root, nd[0], target)
        out: dict[str, str] = {}
        for f in NAPI_FIELDS:
            v = getattr(napi, f.replace("-", "_"), None)
            if isinstance(v, bool):
                out[f] = "enabled" if v else "disabled"
            elif v is not None:
                out[f] = str(v)
            elif f in sysfs:
                out[f] = sysfs[f]
        return format_fields(out)

    def write(self, root: Root, target: str, value: str) -> None:
        fields = parse_fields(value)
        bad = [k for k in fields if k not in NAPI_FIELDS]
        if bad:
            raise ValueError(f"{self.name}: unknown field(s) {', '.join(bad)}; "
                             f"known: {', '.join(NAPI_FIELDS)}")
        kw: dict[str, int | bool] = {}
        for k, v in fields.items():
            if k == "threaded":
                kw["threaded"] = _norm(v) == "1"
            elif v.isdigit():
                kw[k.replace("-", "_")] = int(v)
            else:
                raise ValueError(f"{self.name}: {k} must be a non-negative integer, not {v!r}")
        nd = self._netdev(root)
        if nd is not None and nd[1].napi_set and set(kw) <= set(nd[1].napi_set_fields):
            mod = nd[0]
            napi = self._find(root, mod, target)
            mod.napi_set(napi.id, **kw)
            return
        self._sysfs_write(root, target, fields)

    def _sysfs_fields(self, root: Root, target: str) -> dict[str, str]:
        dev, _, _ = self._split(target)
        out: dict[str, str] = {}
        for f, fname in _NAPI_SYSFS.items():
            p = f"sys/class/net/{dev}/{fname}"
            if root.exists(p):
                v = root.read_optional(p)
                if f == "threaded" and v:
                    v = "disabled" if v == "0" else "enabled"
                if v:
                    out[f] = v
        return out

    def _sysfs_write(self, root: Root, target: str, fields: dict[str, str]) -> None:
        dev, _, _ = self._split(target)
        for f, v in fields.items():
            if f not in _NAPI_SYSFS:
                raise KernelError("write", f"napi {target} {f} (no netdev napi-set and no "
                                  "sysfs file)", errno.EOPNOTSUPP, "sysfs", v)
        for f, v in fields.items():
            root.write_value(f"sys/class/net/{dev}/{_NAPI_SYSFS[f]}", _norm(v) + "\n", "sysfs")

    def shell(self, target: str, value: str) -> str:
        dev, _, _ = self._split(target)
        fields = parse_fields(value)
        cmds = [_echo(f"sys/class/net/{dev}/{_NAPI_SYSFS[k]}", _norm(v))
                for k, v in fields.items() if k in _NAPI_SYSFS]
        rest = [k for k in fields if k not in _NAPI_SYSFS]
        # the per-NAPI form needs the NAPI id of the moment (ynl --family netdev
        # --do napi-set); the device-wide files set every NAPI of the device
        note = f"  # {target}: device-wide equivalent of netdev napi-set"
        if rest:
            note += f"; {', '.join(rest)} has no sysfs file"
        return "; ".join(cmds) + note if cmds else note.strip()


register(CoalesceKnob())
register(NapiConfigKnob())
