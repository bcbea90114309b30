"""The bench's run loop: set up, run the configurations interleaved, restore.

One run of one configuration:
  1. start the noise processes, the C agent (agent + tool-server threads), the
     Python agent and its tool server (the probe in serve mode); all wait;
  2. place them: RPS of the bench's veths; B pins; D starts `agentlatd run`
     and registers the three agent processes through the client;
  3. go: noise first, then the C agent for `seconds`, then the Python agent
     for `py_seconds` (the noise runs through both);
  4. collect per-step latencies, /proc/softirqs deltas per CPU over the C
     phase, per-thread run delay (schedstat), the noise's counts.
Everything the bench changes is its own: namespaces and veths (deleted at
the end, taking their RPS settings along), its own processes' affinities
(they exit), and, only through agentlatd in D, per-CPU PM QoS, which the
bench restores from its own copy too. All of it in finally blocks, which a
SIGTERM reaches as KeyboardInterrupt (commands/bench.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.model.build import build_machine
from agentlatd.plan.build import make_plan
from agentlatd.policy import DevicesPolicy, Policy
from agentlatd.sample import schedstat
from agentlatd.sample.machine import read_machine
from agentlatd.sample.softirqs import parse_softirqs, read_softirqs
from agentlatd.sample.stat import parse_stat, read_stat
from agentlatd.sample.tasks import descendants
from agentlatd.sysfs.root import Root
from agentlatd.tools.bench import attribution, netns
from agentlatd.tools.bench.configs import CONFIGS, Config, schedule
from agentlatd.tools.bench.daemon import BenchDaemon, DaemonUnavailable
from agentlatd.tools.bench.noise import Noise, NoiseResult, NoiseSpec
from agentlatd.tools.bench.probe import ProbeError, ProbeProc, build_probe
from agentlatd.tools.trace.hist import cdf_points, summarize

STAGES = ("step", "net", "disk", "timer")  # column order of the step files: net disk timer step
TOOL_PORT = 7777
PY_TOOL_PORT = 7778
SOFTIRQ_VECTORS = ("NET_RX", "NET_TX", "BLOCK", "TIMER", "SCHED")

Log = Callable[[str], None]


class BenchError(AgentlatdError):
    """The bench cannot run here (and why)."""


@dataclass(frozen=True, slots=True)
class Settings:
    runs: int = 10
    seconds: float = 4.0  # C agent phase per run
    py_seconds: float = 1.5  # Python agent phase per run
    think_ns: int = 20_000  # tool server think time (busy)
    timer_ns: int = 50_000  # timer wait per step
    file_mb: int = 64  # O_DIRECT read file
    configs: tuple[str, ...] = ("Q", "A", "B", "D")
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    quick: bool = False
    workdir_parent: str = "/var/tmp"
    exclusive_scope: str = "bench"  # D: "bench" (the bench's processes) or "host" (daemon default)
    attribute: str = "auto"  # the C agent's slow steps by cause: tracer backend, or "off"
    attribute_configs: tuple[str, ...] = ()  # the configurations given an attribution run (): all

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs, "seconds": self.seconds, "py_seconds": self.py_seconds,
            "think_ns": self.think_ns, "timer_ns": self.timer_ns, "file_mb": self.file_mb,
            "configs": list(self.configs), "quick": self.quick,
            "exclusive_scope": self.exclusive_scope, "attribute": self.attribute,
            "attribute_configs": list(self.attribute_configs),
            "noise": {"pps": self.noise.pps, "packet_size": self.noise.packet_size,
                      "hogs": self.noise.hogs, "writeback_mbps": self.noise.writeback_mbps,
                      "writeback_file_mb": self.noise.writeback_file_mb},
        }


# --quick runs no attribution unless asked (--attribute auto: then A and D only, the
# pair the report's "A -> D" line compares): one attribution run costs ~13 s on a
# loaded 2-CPU host (the tracer's attach and parse), the quick bench ~50 s in all
QUICK = Settings(runs=2, seconds=1.5, py_seconds=0.6, file_mb=16, quick=True, attribute="off",
                 attribute_configs=("A", "D"))


@dataclass(slots=True)
class Host:
    """What the bench learned about the machine before it started."""

    cpus: tuple[int, ...]
    agent_cpu: int
    completion_cpu: int
    kernel: str
    pm_qos: dict[int, str]  # cpu -> pm_qos_resume_latency_us as found
    split_why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cpus": list(self.cpus), "agent_cpu": self.agent_cpu,
                "completion_cpu": self.completion_cpu, "split_why": self.split_why,
                "kernel": self.kernel,
                "pm_qos_resume_latency_us": {str(c): v for c, v in self.pm_qos.items()}}


def _pm_qos_rel(cpu: int) -> str:
    return f"sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"


def inspect_host(root: Root) -> Host:
    """Preconditions and the CPU split the bench uses (B's by hand, A's RPS target)."""
    if os.geteuid() != 0:
        raise BenchError("the bench needs root: it creates network namespaces and veths "
                         "(run it with sudo).")
    for tool in ("ip", "gcc"):
        if shutil.which(tool) is None:
            raise BenchError(f"the bench needs `{tool}` (apt-get install "
                             f"{'iproute2' if tool == 'ip' else 'gcc'}).")
    online = CpuSet.parse_list(root.read_optional("sys/devices/system/cpu/online", ""))
    allowed = os.sched_getaffinity(0)
    cpus = tuple(sorted(c for c in online if c in allowed)) or tuple(sorted(allowed))
    if len(cpus) < 2:
        raise BenchError("the bench needs at least 2 CPUs (an agent CPU and a completion CPU).")
    pm = {c: root.read_optional(_pm_qos_rel(c)) for c in cpus}
    agent, completion, why = choose_split(root, cpus)
    return Host(cpus=cpus, agent_cpu=agent, completion_cpu=completion,
                kernel=os.uname().release, pm_qos=pm, split_why=why)


def choose_split(root: Root, cpus: tuple[int, ...]) -> tuple[int, int, str]:
    """(agent CPU, completion CPU) as agentlatd's planner splits this host with
    none of its devices in scope -- what D's daemon, which sees only the
    bench's veths, will choose, and what an SRE doing B by hand would choose
    knowing the same: the host's own IRQs (its disk, its NIC) are not the
    bench's to move, so the completion CPU is where they land and the agent
    CPU the one they leave quiet (plan/irq_affinity.py fixed_irqs)."""
    fallback = (cpus[-1], cpus[0], "no plan: last and first usable CPU")
    try:
        pol = replace(Policy(), devices=DevicesPolicy(include=("agentlatd-bench-no-device",)))
        plan = make_plan(build_machine(read_machine(root)), pol)
    except (AgentlatdError, OSError, ValueError) as e:
        return (*fallback[:2], f"{fallback[2]} ({e})")
    comp = [c for c in sorted(plan.completion_cpus) if c in cpus]
    order = plan.quiet_home_order or tuple(sorted(plan.home_cpus))
    home = [c for c in order if c in cpus and c not in comp]
    if not comp or not home:
        return fallback
    fixed = [n for n in plan.notes if n.startswith("Completion CPU(s)")]
    return home[0], comp[0], ("agentlatd's partition of this host"
                              + (f": {fixed[0]}" if fixed else " (lowest-numbered completion CPU)"))


def restore_pm_qos(root: Root, host: Host) -> list[str]:
    """Put back every per-CPU PM QoS value that differs from what the bench found."""
    notes: list[str] = []
    for cpu, orig in host.pm_qos.items():
        if not orig:
            continue
        rel = _pm_qos_rel(cpu)
        now = root.read_optional(rel)
        if now and now != orig:
            try:
                root.write_value(rel, orig)
                notes.append(f"restored cpu{cpu} pm_qos_resume_latency_us {now} -> {orig}")
            except KernelError as e:
                notes.append(f"could not restore cpu{cpu} pm_qos_resume_latency_us: {e}")
    return notes


def _softirqs(root: Root) -> dict[str, dict[int, int]]:
    s = parse_softirqs(read_softirqs(root))
    return {v: s.per_cpu(v) for v in SOFTIRQ_VECTORS}


def _softirq_delta(a: dict[str, dict[int, int]], b: dict[str, dict[int, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for v in SOFTIRQ_VECTORS:
        out[v] = {str(c): max(0, b[v].get(c, 0) - a[v].get(c, 0)) for c in sorted(b[v])}
    return out


def _cpu_times(root: Root) -> dict[int, tuple[int, int, int]]:
    """cpu -> (busy, softirq, total) USER_HZ ticks from proc/stat."""
    st = parse_stat(read_stat(root))
    out: dict[int, tuple[int, int, int]] = {}
    for cpu, t in st.cpus.items():
        total = t.total
        idle = t.idle + (t.iowait or 0)
        out[cpu] = (total - idle, t.softirq or 0, total)
    return out


def _cpu_shares(a: dict[int, tuple[int, int, int]], b: dict[int, tuple[int, int, int]]) -> dict[str, Any]:
    """Per CPU: share of time busy and share in softirq context over a phase."""
    busy: dict[str, float] = {}
    soft: dict[str, float] = {}
    for cpu in sorted(b):
        if cpu in a:
            dt = b[cpu][2] - a[cpu][2]
            busy[str(cpu)] = round((b[cpu][0] - a[cpu][0]) / dt, 3) if dt > 0 else 0.0
            soft[str(cpu)] = round((b[cpu][1] - a[cpu][1]) / dt, 3) if dt > 0 else 0.0
    return {"busy": busy, "softirq": soft}


def _mask(cpu: int) -> str:
    return CpuSet({cpu}).to_mask(cpu + 1)


def _tids(root: Root, pid: int) -> list[int]:
    return [int(t) for t in root.listdir(f"proc/{pid}/task") if t.isdigit()]


def _pin(root: Root, pid: int, cpu: int) -> None:
    """Pin every thread of one of the bench's own processes."""
    for tid in _tids(root, pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, {cpu})


def _affinity(root: Root, pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for tid in _tids(root, pid):
        with contextlib.suppress(ProcessLookupError):
            out[str(tid)] = CpuSet(os.sched_getaffinity(tid)).to_list()
    return out


def read_steps(path: str) -> dict[str, list[int]]:
    """A step file ("net disk timer step" per line) as columns."""
    cols: dict[str, list[int]] = {s: [] for s in STAGES}
    try:
        with open(path) as f:
            for line in f:
                t = line.split()
                if len(t) != 4:
                    continue
                cols["net"].append(int(t[0]))
                cols["disk"].append(int(t[1]))
                cols["timer"].append(int(t[2]))
                cols["step"].append(int(t[3]))
    except FileNotFoundError:
        pass
    return cols


def _stage_json(cols: dict[str, list[int]]) -> dict[str, dict[str, int | float]]:
    return {s: summarize(cols[s]).to_json() for s in STAGES}


@dataclass(slots=True)
class Pools:
    """Every step of every run, per configuration, for the CDFs."""

    c: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    py: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def add(self, which: str, cfg: str, cols: dict[str, list[int]]) -> None:
        pool = (self.c if which == "c" else self.py).setdefault(cfg, {s: [] for s in STAGES})
        for s in STAGES:
            pool[s].extend(cols[s])


class Lab:
    """What every run shares: the host's facts, the C probe, the O_DIRECT read file in a
    work directory, the namespaces and veths; built once, removed once."""

    def __init__(self, settings: Settings, *, log: Log, root: Root) -> None:
        self.s = settings
        self.log = log
        self.root = root
        self.host: Host | None = None
        self.net: netns.BenchNet | None = None
        self.workdir = ""
        self.probe = ""

    def setup(self) -> None:
        self.host = inspect_host(self.root)
        parent = self.s.workdir_parent if os.path.isdir(self.s.workdir_parent) else None
        self.workdir = tempfile.mkdtemp(prefix="agentlatd-bench-", dir=parent)
        t0 = time.monotonic()
        self.probe = build_probe(self.workdir)
        self.log(f"built the C probe in {time.monotonic() - t0:.1f} s; workdir {self.workdir}")
        self._make_read_file()
        self.net = netns.new_net()
        netns.setup(self.net)
        self.log(f"namespaces {', '.join(self.net.namespaces)}; veths "
                 f"{self.net.dev_agent}<->{self.net.dev_tool}, "
                 f"{self.net.dev_flood_rx}<->{self.net.dev_flood_tx}")

    def _make_read_file(self) -> None:
        """The O_DIRECT read file: written, synced, then evicted from the page cache."""
        path = os.path.join(self.workdir, "read.dat")
        chunk = os.urandom(1 << 20)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(self.s.file_mb):
                os.write(fd, chunk)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def teardown(self) -> list[str]:
        """Namespaces (their veths and RPS settings go along), PM QoS, the work directory."""
        notes: list[str] = []
        if self.net is not None:
            failed = netns.teardown(self.net)
            notes += [f"could not delete namespace {f}" for f in failed]
            self.net = None
        if self.host is not None:
            notes += restore_pm_qos(self.root, self.host)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""
        return notes

    # -- the processes' command lines ------------------------------------------
    def agent_argv(self, out: str, tool: str = "thread", ring: bool = False) -> list[str]:
        assert self.net is not None
        n = self.net
        return [self.probe, "agent", "--tool-ns", n.ns_path(n.ns_tool), "--agent-ns", n.ns_path(n.ns_agent),
                "--dst", n.tool_ip, "--bind", n.agent_ip, "--port", str(TOOL_PORT),
                "--file", os.path.join(self.workdir, "read.dat"), "--steps", "10000000",
                "--seconds", f"{self.s.seconds:.3f}", "--out", out,
                "--think-ns", str(self.s.think_ns), "--timer-ns", str(self.s.timer_ns),
                "--server", "1" if tool == "thread" else "0", "--pipe", "1" if tool == "pipe" else "0",
                "--ring", str(attribution.RING if ring else 0)]

    def serve_argv(self, seconds: float, port: int = PY_TOOL_PORT) -> list[str]:
        assert self.net is not None
        n = self.net
        return [self.probe, "serve", "--tool-ns", n.ns_path(n.ns_tool), "--dst", n.tool_ip,
                "--port", str(port), "--think-ns", str(self.s.think_ns),
                "--seconds", f"{seconds:.3f}"]

    def pyagent_argv(self, out: str, socket: str | None) -> list[str]:
        assert self.net is not None
        n = self.net
        argv = [*netns.ns_exec(n.ns_agent), sys.executable, "-m", "agentlatd.tools.bench.pyagent",
                "--dst", n.tool_ip, "--port", str(PY_TOOL_PORT), "--bind", n.agent_ip,
                "--file", os.path.join(self.workdir, "read.dat"), "--seconds", f"{self.s.py_seconds:.3f}",
                "--timer-ns", str(self.s.timer_ns), "--out", out]
        return argv + (["--socket", socket, "--agent-id", f"bench-py-agent-{time.monotonic_ns()}"]
                       if socket else [])


class Bench:
    """The runs: each configuration's rounds interleaved, then the attribution round,
    in a Lab; the processes, noise and daemon of the run under way."""

    def __init__(self, settings: Settings, *, log: Log, root: Root | None = None) -> None:
        self.s = settings
        self.log = log
        self.root = root or Root("/")
        self.lab = Lab(settings, log=log, root=self.root)
        self.procs: list[ProbeProc] = []
        self.noise: Noise | None = None
        self.daemon: BenchDaemon | None = None
        self.pools = Pools()
        self.notes: list[str] = []

    def teardown(self) -> list[str]:
        """The run under way (its notes into self.notes), then the Lab: the Lab's notes."""
        self.teardown_run()
        return self.lab.teardown()

    # -- one run -----------------------------------------------------------
    def run_one(self, cfg: Config, rnd: int, traced: bool = False) -> dict[str, Any]:
        """One run of `cfg`. `traced`: the attribution round (the slow-steps tracer on
        the C agent, its ring on): its latencies are not pooled with the others'."""
        lab = self.lab
        assert lab.net is not None and lab.host is not None
        host, n = lab.host, lab.net
        # the tool servers and the noise run from go until the Python agent ends: with
        # the attribution on, past the tracer's attach and its trace's parsing too
        total_s = self.s.seconds + self.s.py_seconds + 1.5 + (
            attribution.SLACK_S if traced else 0)
        c_out = os.path.join(lab.workdir, "c-steps.txt")
        py_out = os.path.join(lab.workdir, "py-steps.txt")
        for f in (c_out, py_out):
            if os.path.exists(f):
                os.unlink(f)
        run: dict[str, Any] = {"config": cfg.key, "round": rnd}
        notes: list[str] = []

        # 1. the bench's own veths from the kernel default (rps_cpus 0), except
        # the flood's receiving side, set per configuration; written before
        # agentlatd starts in D, so that it finds (and steers) A's state
        rps_cpu = host.agent_cpu if cfg.flood_rps_on_agent_cpu else host.completion_cpu
        netns.sysfs_write(n.ns_agent, [(netns.rps_path(n.dev_agent), "0"),
                                       (netns.rps_path(n.dev_flood_rx), _mask(rps_cpu))])
        # then agentlatd (D), then the processes, all waiting for go
        if cfg.daemon:
            t0 = time.monotonic()
            self.daemon = BenchDaemon(n, lab.workdir, log=self.log, scope=self.s.exclusive_scope,
                                      agent_links=cfg.agent_links, chains=cfg.chains)
            run["agentlatd"] = {"start": self.daemon.start(), "start_s": round(time.monotonic() - t0, 3)}
        if cfg.noise:
            self.noise = Noise(lab.probe, n, self.s.noise, lab.workdir, total_s)
            self.noise.start()
        # the C agent's own tool server, when it is a separate process: started
        # first, so that the agent's connect() names a bound socket
        tool = (ProbeProc(lab.serve_argv(total_s, TOOL_PORT), name="c-tool-server")
                if cfg.tool == "process" else None)
        agent = ProbeProc(lab.agent_argv(c_out, cfg.tool, ring=traced), name="agent")
        serve = ProbeProc(lab.serve_argv(total_s), name="tool-server")
        pyag = ProbeProc(lab.pyagent_argv(py_out, self.daemon.socket if self.daemon else None),
                         name="py-agent")
        self.procs = ([tool] if tool is not None else []) + [agent, serve, pyag]
        for p in self.procs:
            p.start(timeout=15)
        # the pipe child (QC..DC) was forked by the agent before it said ready
        kids = descendants(self.root, agent.pid, 8)

        # 2. placement
        if cfg.pin:
            for pid in [p.pid for p in self.procs] + kids:
                _pin(self.root, pid, host.agent_cpu)
            if self.noise is not None:
                for np_ in self.noise.procs():
                    _pin(self.root, np_.pid, host.completion_cpu)
        if cfg.daemon:
            # D registers the Python agent's tool server too (as before chains);
            # DS/DC register only the agents: their tool servers must be found
            members = ([p.pid for p in self.procs if p is tool or p is serve] + kids
                       if cfg.chains else [])
            run["agentlatd"].update(self._register(agent, serve, pyag, register_serve=cfg.tool == "thread",
                                                   members=members))
        run["rps_cpus"] = netns.sysfs_read(n.ns_agent, [netns.rps_path(n.dev_agent),
                                                        netns.rps_path(n.dev_flood_rx)])
        run["affinity"] = {p.name: _affinity(self.root, p.pid) for p in self.procs}
        run["affinity"].update({f"pipe-child-{k}": _affinity(self.root, k) for k in kids})
        if self.noise is not None:
            run["affinity"].update({p.name: _affinity(self.root, p.pid) for p in self.noise.procs()})

        # 3. go: the slow-steps tracer first (it takes a second or two to attach),
        # so that it sees the agent's first step
        tracer = None
        if traced:
            tracer = attribution.StepTracer(self.root, agent.pid, self.s.seconds + 0.5, self.s.attribute,
                                            lab.workdir)
            if not tracer.start():
                run["slow_steps"] = tracer.finish()
                tracer = None
        ss0 = schedstat.sample_threads(self.root, agent.pid)
        if self.noise is not None:
            self.noise.go()
            time.sleep(0.1)  # let the flood reach its rate before the first step
        run["loadavg"] = os.getloadavg()
        sq0, ct0 = _softirqs(self.root), _cpu_times(self.root)
        serve.go()
        agent.go()
        res = agent.finish(timeout=self.s.seconds + 20)
        if tracer is not None:
            run["slow_steps"] = tracer.finish()
        sq1, ct1 = _softirqs(self.root), _cpu_times(self.root)
        run["cpu_share"] = _cpu_shares(ct0, ct1)
        ss1 = schedstat.sample_threads(self.root, agent.pid) or ss0
        run["agent_last_cpu"] = {str(k): v for k, v in schedstat.last_cpus(self.root, agent.pid).items()}
        pyag.go()
        pyres = pyag.finish(timeout=self.s.py_seconds + 20)
        serve.stop()
        if tool is not None:
            tool.stop()
        noise = self.noise.stop() if self.noise is not None else NoiseResult()
        self.noise = None
        self.procs = []
        if cfg.daemon and self.daemon is not None:
            run["agentlatd"]["warnings"] = self.daemon.warnings()
            notes += self.daemon.stop()
            for w in self.daemon.warnings():
                if f"agentlatd: {w}" not in self.notes:
                    self.notes.append(f"agentlatd: {w}")
            self.daemon = None

        # 4. results
        cols = read_steps(c_out)
        pycols = read_steps(py_out)
        if not traced:
            self.pools.add("c", cfg.key, cols)
            self.pools.add("py", cfg.key, pycols)
        run["c"] = {"result": res, "stages": _stage_json(cols)}
        run["python"] = {"result": pyres, "stages": _stage_json(pycols)}
        run["softirqs"] = _softirq_delta(sq0, sq1)
        run["run_delay"] = [{"tid": d.tid, "run_ns": d.run_ns, "wait_ns": d.wait_ns, "slices": d.slices,
                             "mean_wait_ns": round(d.mean_wait_ns, 1)}
                            for d in schedstat.delta(ss0, ss1)] if ss1 is not ss0 else []
        run["noise"] = noise.to_json() if cfg.noise else None
        run["notes"] = notes
        return run

    def _register(self, agent: ProbeProc, serve: ProbeProc, pyag: ProbeProc, *,
                  register_serve: bool = True, members: list[int] | None = None) -> dict[str, Any]:
        """Register the C agent (and in D the tool server) by pid (the Python
        agent registered itself through agentlatd.client.Client); wait until
        every thread of them and of the chain members agentlatd must find is
        pinned."""
        assert self.daemon is not None
        info: dict[str, Any] = {"registered": {}}
        for p in (agent, serve) if register_serve else (agent,):
            info["registered"][p.name] = self.daemon.register(p.pid, f"bench-{p.name}-{p.pid}")
        pids = [agent.pid, pyag.pid, *([serve.pid] if register_serve else []), *(members or [])]
        info["settle"] = self.daemon.settle(sorted(set(pids)), self.root)
        info["status"] = self.daemon.status()
        info["agents"] = self.daemon.agents()
        return info

    # -- the whole bench ---------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_start = time.time()
        doc: dict[str, Any] = {"schema": "agentlatd-bench/1", "started": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)), "settings": self.s.to_json()}
        keys = tuple(k for k in self.s.configs if k in CONFIGS)
        runs: list[dict[str, Any]] = []
        traced_runs: list[dict[str, Any]] = []
        try:
            self.lab.setup()
            assert self.lab.host is not None
            doc["host"] = self.lab.host.to_json()
            doc["host"]["loadavg_before"] = os.getloadavg()
            assert self.lab.net is not None
            n = self.lab.net
            doc["net"] = {"namespaces": list(n.namespaces), "agent_devices": list(n.agent_devices),
                          "tool_device": n.dev_tool, "flood_device": n.dev_flood_tx,
                          "agent_ip": n.agent_ip, "tool_ip": n.tool_ip, "sink_ip": n.sink_ip}
            plan = schedule(keys, self.s.runs)
            for i, (key, rnd) in enumerate(plan):
                cfg = CONFIGS[key]
                t0 = time.monotonic()
                try:
                    run = self.run_one(cfg, rnd)
                except (ProbeError, DaemonUnavailable) as e:
                    self.teardown_run()
                    run = {"config": key, "round": rnd, "error": str(e)}
                    self.notes.append(f"{key} round {rnd}: {e}")
                run["index"] = i
                run["wall_s"] = round(time.monotonic() - t0, 2)
                runs.append(run)
                self.log(_progress(run, i, len(plan)))
            # the attribution round: one more run per configuration with the slow-steps
            # tracer on (it costs the agent +30-40 % at p50, several x at p99:
            # docs/evaluation.md), kept apart from the rounds whose latencies are compared
            traced_keys = [k for k in keys
                           if not self.s.attribute_configs or k in self.s.attribute_configs] \
                if self.s.attribute != "off" else []
            for key in traced_keys:
                t0 = time.monotonic()
                try:
                    run = self.run_one(CONFIGS[key], -1, traced=True)
                except (ProbeError, DaemonUnavailable) as e:
                    self.teardown_run()
                    run = {"config": key, "round": -1, "error": str(e)}
                run["wall_s"] = round(time.monotonic() - t0, 2)
                traced_runs.append(run)
                ss = run.get("slow_steps", {})
                why = ss.get("error") or run.get("error")
                self.log(f"[attribution] {key}: " + (f"{ss.get('slow_steps', 0)} slow steps of "
                                                     f"{ss.get('steps_seen', 0)}, {ss.get('method')}"
                                                     if "summary" in ss else f"not attributed: {why}"))
            doc["host"]["loadavg_after"] = os.getloadavg()
        finally:
            self.notes += self.teardown()
        doc["duration_s"] = round(time.time() - t_start, 1)
        doc["configs"] = {k: {"title": CONFIGS[k].title, "description": CONFIGS[k].description}
                          for k in keys}
        doc["runs"] = runs
        doc["attribution_runs"] = traced_runs
        doc["cdf"] = {which: {k: {s: cdf_points(sorted(v[s])) for s in STAGES} for k, v in pool.items()}
                      for which, pool in (("c", self.pools.c), ("python", self.pools.py))}
        doc["notes"] = self.notes
        return doc

    def teardown_run(self) -> None:
        for p in self.procs:
            p.kill()
        self.procs = []
        if self.noise is not None:
            self.noise.kill()
            self.noise = None
        if self.daemon is not None:
            self.notes.extend(self.daemon.stop())
            self.daemon = None


def _progress(run: dict[str, Any], i: int, n: int) -> str:
    if "error" in run:
        return f"[{i + 1}/{n}] {run['config']}: error: {run['error']}"
    st = run["c"]["stages"]["step"]
    net = run["c"]["stages"]["net"]
    noise = run.get("noise") or {}
    return (f"[{i + 1}/{n}] {run['config']} r{run['round']}: step p50/p99/p999 "
            f"{st['p50'] / 1e3:.0f}/{st['p99'] / 1e3:.0f}/{st['p999'] / 1e3:.0f} us, "
            f"net {net['p50'] / 1e3:.0f}/{net['p99'] / 1e3:.0f}/{net['p999'] / 1e3:.0f} us"
            + (f", flood {noise.get('flood_pps', 0) / 1e3:.0f}k pps" if noise else ""))
