"""A synthetic host tree for the tick benchmark and the counter tests.

Writes proc/ and sys/ under a directory, laid out as the kernel does (formats
as in tests/fixtures/make_machines.py and the parsers' docstrings):

  proc/interrupts                 kernel/irq/proc.c show_interrupts(): "%*d:" then
                                  " %10u" per ONLINE cpu, chip, hwirq-handler, actions;
                                  arch rows NMI LOC RES CAL TLB, one-column ERR MIS
  proc/stat                       cpu lines per ONLINE cpu, intr (nr_irqs entries), softirq
  proc/softirqs                   one column per POSSIBLE cpu
  sys/kernel/irq/N/*              per_cpu_count per POSSIBLE cpu, chip_name, hwirq, ...
  proc/irq/N/*                    affinity files (optional: with_proc_irq=True)
  sys/devices/system/cpu/{possible,online}

SynthHost.tick() moves the counters the way a busy host does: every CPU's
times, TIMER/SCHED/RCU softirqs on every CPU; a chosen share of the device
IRQs fire on their effective CPU (now and then a second CPU, as after an
affinity change), with NET_RX/BLOCK softirqs to match. Only what changed is
rewritten. Deterministic for a seed (random.Random(seed)).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

SOFTIRQS = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU")
ARCH_ROWS = (
    ("NMI", "Non-maskable interrupts"),
    ("LOC", "Local timer interrupts"),
    ("RES", "Rescheduling interrupts"),
    ("CAL", "Function call interrupts"),
    ("TLB", "TLB shootdowns"),
)


def cpulist(cpus: list[int]) -> str:
    out: list[str] = []
    i = 0
    s = sorted(cpus)
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def cpumask(cpus: list[int], nr: int) -> str:
    v = 0
    for c in cpus:
        v |= 1 << c
    nwords = max(1, (nr + 31) // 32)
    return ",".join(f"{(v >> (32 * i)) & 0xFFFFFFFF:08x}" for i in reversed(range(nwords)))


@dataclass
class SynthIrq:
    irq: int
    chip: str
    hwirq: int
    action: str
    eff_cpu: int
    counts: list[int]
    kind: str  # "net" | "nvme" | "other"


@dataclass
class SynthHost:
    base: str
    ncpu: int = 256
    nirq: int = 2000
    seed: int = 1
    first_irq: int = 24
    nr_irqs: int = 4096
    offline: frozenset[int] = frozenset()
    with_sys_irq: bool = True
    with_proc_irq: bool = False
    rng: random.Random = field(init=False)
    irqs: list[SynthIrq] = field(init=False)
    arch: dict[str, list[int]] = field(init=False)
    softirqs: dict[str, list[int]] = field(init=False)
    times: list[list[int]] = field(init=False)  # per cpu: 10 fields
    lines: list[str] = field(init=False)  # rendered /proc/interrupts row per IRQ
    ticks: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        r = self.rng
        n = self.ncpu
        self.irqs = []
        for k in range(self.nirq):
            irq = self.first_irq + k
            if k % 2 == 0:
                q = k // 2
                pci = f"0000:{0x3b + q // 512:02x}:00.0"
                kind, chip, hw = "net", f"IR-PCI-MSIX-{pci}", q % 512
                action = f"mlx5_comp{q % 512}@pci:{pci}"
            elif k % 2 == 1 and k < self.nirq - 8:
                q = k // 2
                kind, chip, hw = "nvme", "IR-PCI-MSI", 524288 + q
                action = f"nvme{q // 256}q{q % 256 + 1}"
            else:
                kind, chip, hw, action = "other", "IR-IO-APIC", k, f"acpi{k}"
            eff = (k // 2) % n
            while eff in self.offline:
                eff = (eff + 1) % n
            counts = [0] * n
            counts[eff] = r.randrange(10**5, 10**9)
            if r.random() < 0.3:  # history on a CPU it was on before
                counts[r.randrange(n)] += r.randrange(1, 10**6)
            self.irqs.append(SynthIrq(irq, chip, hw, action, eff, counts, kind))
        self.arch = {name: [r.randrange(10**6, 10**9) for _ in range(n)] for name, _ in ARCH_ROWS}
        self.softirqs = {v: [r.randrange(10**4, 10**9) for _ in range(n)] for v in SOFTIRQS}
        self.times = [[r.randrange(10**5, 10**7) for _ in range(10)] for _ in range(n)]
        for t in self.times:
            t[8] = t[9] = 0  # no guests
        self.lines = [self._row(q) for q in self.irqs]

    # -- rendering -----------------------------------------------------------
    @property
    def online(self) -> list[int]:
        return [c for c in range(self.ncpu) if c not in self.offline]

    def path(self, rel: str) -> str:
        return os.path.join(self.base, rel)

    def _write(self, rel: str, text: str) -> None:
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)

    def _prec(self) -> int:
        return max(3, len(str(self.nr_irqs)))

    def _row(self, q: SynthIrq) -> str:
        on = self.online
        cnt = "".join(f" {q.counts[c]:10d}" for c in on)
        return f"{q.irq:{self._prec()}d}:{cnt} {q.chip:>8s} {q.hwirq:3d}-edge      {q.action}"

    def interrupts_text(self) -> str:
        on = self.online
        prec = self._prec()
        hdr = " " * (prec + 2) + "".join(f"CPU{c:<8d}" for c in on).rstrip()
        arch = [
            f"{name:>{prec}s}:" + "".join(f" {self.arch[name][c]:10d}" for c in on) + f"   {desc}"
            for name, desc in ARCH_ROWS
        ]
        tail = [f"{'ERR':>{prec}s}: {0:10d}", f"{'MIS':>{prec}s}: {0:10d}"]
        return "\n".join([hdr, *self.lines, *arch, *tail]) + "\n"

    def stat_text(self) -> str:
        agg = [sum(t[i] for t in self.times) for i in range(10)]
        out = ["cpu  " + " ".join(map(str, agg))]
        out += [f"cpu{c} " + " ".join(map(str, self.times[c])) for c in self.online]
        intr = [0] * self.nr_irqs
        for q in self.irqs:
            intr[q.irq] = sum(q.counts)
        total = sum(intr) + sum(sum(v) for v in self.arch.values())
        out.append(f"intr {total} " + " ".join(map(str, intr)))
        out += ["ctxt 123456789", "btime 1700000000", "processes 4242", "procs_running 3", "procs_blocked 0"]
        sums = [sum(self.softirqs[v]) for v in SOFTIRQS]
        out.append(f"softirq {sum(sums)} " + " ".join(map(str, sums)))
        return "\n".join(out) + "\n"

    def softirqs_text(self) -> str:
        hdr = " " * 20 + "".join(f"CPU{c:<8d}" for c in range(self.ncpu))
        rows = [f"{v:>12s}:" + "".join(f" {x:10d}" for x in self.softirqs[v]) for v in SOFTIRQS]
        return "\n".join([hdr, *rows]) + "\n"

    def write_all(self) -> None:
        self._write("sys/devices/system/cpu/possible", f"0-{self.ncpu - 1}\n")
        self._write("sys/devices/system/cpu/online", cpulist(self.online) + "\n")
        self._write("proc/interrupts", self.interrupts_text())
        self._write("proc/stat", self.stat_text())
        self._write("proc/softirqs", self.softirqs_text())
        for q in self.irqs:
            if self.with_sys_irq:
                d = f"sys/kernel/irq/{q.irq}"
                self._write(f"{d}/per_cpu_count", ",".join(map(str, q.counts)) + "\n")
                self._write(f"{d}/chip_name", q.chip + "\n")
                self._write(f"{d}/hwirq", f"{q.hwirq}\n")
                self._write(f"{d}/name", "edge\n")
                self._write(f"{d}/type", "edge\n")
                self._write(f"{d}/actions", q.action + "\n")
                self._write(f"{d}/wakeup", "disabled\n")
            if self.with_proc_irq:
                d = f"proc/irq/{q.irq}"
                aff = self.online
                self._write(f"{d}/smp_affinity_list", cpulist(aff) + "\n")
                self._write(f"{d}/smp_affinity", cpumask(aff, self.ncpu) + "\n")
                self._write(f"{d}/effective_affinity_list", f"{q.eff_cpu}\n")
                self._write(f"{d}/effective_affinity", cpumask([q.eff_cpu], self.ncpu) + "\n")
                self._write(f"{d}/affinity_hint", cpumask([], self.ncpu) + "\n")
                self._write(f"{d}/node", "-1\n" if q.kind == "other" else f"{q.eff_cpu * 2 // self.ncpu}\n")

    def rewrite(self) -> None:
        """Rewrite the three /proc files from the current counts."""
        self._write("proc/interrupts", self.interrupts_text())
        self._write("proc/stat", self.stat_text())
        self._write("proc/softirqs", self.softirqs_text())

    def free_irq(self, irq: int) -> None:
        """The driver freed `irq`: its row, its sys/proc directories and its intr count go."""
        i = next(k for k, q in enumerate(self.irqs) if q.irq == irq)
        del self.irqs[i]
        del self.lines[i]
        for d in (f"sys/kernel/irq/{irq}", f"proc/irq/{irq}"):
            p = self.path(d)
            if os.path.isdir(p):
                for f in os.listdir(p):
                    os.unlink(os.path.join(p, f))
                os.rmdir(p)
        self.rewrite()

    # -- activity ------------------------------------------------------------
    def tick(self, share: float = 0.1) -> list[int]:
        """Advance one tick: `share` of the IRQs fire. Returns the IRQs that fired."""
        r = self.rng
        self.ticks += 1
        k = max(0, min(len(self.irqs), round(share * len(self.irqs))))
        fired = r.sample(range(len(self.irqs)), k)
        for i in fired:
            q = self.irqs[i]
            n = r.randrange(1, 5000)
            q.counts[q.eff_cpu] += n
            if r.random() < 0.05:  # a second CPU: an affinity change caught mid-tick
                c2 = r.choice(self.online)
                q.counts[c2] += 1
            vec = "NET_RX" if q.kind == "net" else "BLOCK" if q.kind == "nvme" else "TASKLET"
            self.softirqs[vec][q.eff_cpu] += max(1, n // 2)
            self.lines[i] = self._row(q)
            if self.with_sys_irq:
                self._write(f"sys/kernel/irq/{q.irq}/per_cpu_count", ",".join(map(str, q.counts)) + "\n")
        for c in self.online:
            t = self.times[c]
            t[0] += r.randrange(0, 40)  # user
            t[2] += r.randrange(0, 10)  # system
            t[3] += r.randrange(40, 100)  # idle
            t[5] += r.randrange(0, 3)  # irq
            t[6] += r.randrange(0, 5)  # softirq
            for v in ("TIMER", "SCHED", "RCU"):
                self.softirqs[v][c] += r.randrange(1, 1000)
            for name in ("LOC", "RES", "CAL"):
                self.arch[name][c] += r.randrange(1, 1000)
        self.rewrite()
        return [self.irqs[i].irq for i in fired]
