"""The daemon: `agentlatd run`. One process, two threads, one journal.

  main thread   a `selectors` loop: the registration socket (api/server.py),
                one pidfd per agent (readable when it exits), the signal
                pipe, and the agent tick (agents/registry.py: new threads,
                heat moves, auto-registration, exclusive home CPUs, pm_qos)
  tuner thread  sample -> rates -> plan -> apply every policy daemon.interval
                (sample/counters.py, model/rates.py, model/build.py,
                plan/build.py, apply/engine.py), then drift; it publishes
                the heat and the CPU layout for the main thread to use

Why a thread for the device pipeline and not one loop: a knob write can be
slow (ethtool netlink on a busy NIC, a sysfs store that takes a driver lock)
and a tick that reads /proc/interrupts of a large host costs milliseconds. In
the tuner thread neither delays an answer on the socket. Both sides write
through ONE engine (one journal, so `agentlatd rollback` and a crash restore
restore everything), serialised by a lock; the main loop never waits for it:
it takes it when free, else answers everything that needs no write and
retries on its next turn (a few ms). Only registrations wait, and only for
the engine. One failing knob is one failed result in the engine's report;
it never stops the tick.

Signals: SIGTERM/SIGINT roll back every change (engine.rollback(): device
knobs, task affinity/nice/ioprio, pm_qos) and exit 0; SIGHUP reloads the
policy file (a bad one is logged with its key path and the old one stays).
At start a journal left by a crashed run is restored (incomplete) or adopted
(complete) by the engine; the agent side then restores its own adopted
entries (task and pm_qos knobs: the processes must register again, and their
client libraries do so on reconnect), so it starts from a clean slate.

Hooks for the service layer (sd_notify, metrics): Daemon.hooks holds lists of
callbacks, all called from the main thread:
  on_acquire(daemon)               at start, before the first write: take what can
                                   fail (the metrics listener); raising fails the start
  on_release(daemon)               the start failed after on_acquire
  on_ready(daemon)                 after the first tuner tick and the socket
  on_tick(daemon, TunerState)      after each tuner tick the main loop picks up
  on_loop(daemon)                  every loop turn (at most 1 s apart): watchdog
  on_reload(daemon, ok: bool)      after SIGHUP
  on_stop(daemon)                  before the rollback
and Daemon.status() returns a dict (also the socket's "status" answer).

Heat source: Daemon(heat_source=f) makes the tuner call f() at every tick
and use the {cpu: heat} it returns in place of the measured heat of those
CPUs. Nothing in agentlatd passes one and nothing reads it from the
environment: tests do (tests/support/launch.py --heat-file), to drive "home
CPU turns hot" on a 2-CPU host without flooding a CPU with NET_RX softirqs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentlatd import __version__
from agentlatd import policy as policy_mod
from agentlatd.agents.applier import AGENT_KNOBS, Applier
from agentlatd.agents.chain import ChainKeeper, ChainScanner
from agentlatd.agents.links import LinkTracker
from agentlatd.agents.refusal import AgentRefused, Refusal
from agentlatd.agents.registry import AgentManager, parse_cpus
from agentlatd.api import protocol
from agentlatd.api.server import Server, bind_socket
from agentlatd.apply.engine import ApplyReport, Drift, Engine
from agentlatd.apply.journal import FLAG_YIELDED
from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import AgentlatdError, KernelError, PolicyError
from agentlatd.handlers import Handlers
from agentlatd.model.agent_links import NONE, AgentHome, AgentLinks, discount_heat, own_softirq_rate
from agentlatd.model.layout import NO_HOME_CPU, CpuLayout
from agentlatd.model.machine import Machine, Rates
from agentlatd.plan.changes import INCLUDE_MATCHES_NOTHING, Plan, human_value
from agentlatd.policy import Policy
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.daemon")

MACHINE_TTL = 60.0  # seconds between full rebuilds of the Machine (plus on discontinuities)
RETRY = 0.005  # seconds to the next turn when the engine lock was busy
# the agent tick runs in slices of about this long (seconds) with requests
# served between them: a registration waits for one slice, not a whole tick
TICK_SLICE_S = 0.0003


# ---------------------------------------------------------------------------
# the tuner (helper thread)


@dataclass(frozen=True, slots=True)
class TunerState:
    """What one tuner tick produced (published to the main thread)."""

    seq: int
    t: float  # time.monotonic() at its end
    duration_s: float
    layout: CpuLayout
    heat: Mapping[int, float]
    rates: Rates | None = None
    plan: Plan | None = None
    report: ApplyReport | None = None
    drift: tuple[Drift, ...] = ()
    machine: Machine | None = None
    error: str = ""
    # (stage, seconds, ok) of this tick's stages: "counters", "plan", "apply"
    # (per-sampler duration/success metrics, agentlatd/metrics.py)
    timings: tuple[tuple[str, float, bool], ...] = ()
    # the tick's kernel counters (sample/counters.py CounterSnapshot, frozen):
    # the metrics export their cumulative softirq counts and irq times as counters
    counters: Any = None


def fallback_layout(root: Root, pol: Policy) -> CpuLayout:
    """CPU roles without the model/plan stages (their modules failed or are missing)."""
    try:
        online = CpuSet.parse_list(root.read_value("sys/devices/system/cpu/online"))
    except (KernelError, CpuSetError):
        online = CpuSet(range(os.cpu_count() or 1))
    if len(online) <= 1:
        return CpuLayout(home=online, completion=CpuSet(), online=online)
    comp = CpuSet() if pol.cpus.completion == "auto" else CpuSet.parse_list(pol.cpus.completion)
    comp = comp & online
    home = CpuSet() if pol.cpus.home == "auto" else CpuSet.parse_list(pol.cpus.home) & online
    if not comp and not home:
        comp = CpuSet({min(online)})
    home = (home or (online - comp)) - comp
    return CpuLayout(home=home, completion=comp, quiet_order=tuple(sorted(home)), online=online)


def layout_of(machine: Machine, plan: Plan) -> CpuLayout:
    topo = machine.topology
    return CpuLayout(
        home=plan.home_cpus, completion=plan.completion_cpus,
        quiet_order=plan.quiet_home_order or tuple(sorted(plan.home_cpus)),
        siblings={c.cpu: c.smt_siblings | {c.cpu} for c in topo.cpus},
        node_of={c.cpu: c.node for c in topo.cpus}, online=topo.online)


class Tuner:
    """sample -> rates -> plan -> apply, each tick (see the module docstring)."""

    def __init__(self, daemon: Daemon,
                 heat_source: Callable[[], Mapping[int, float]] | None = None) -> None:
        self.d = daemon
        self.heat_source = heat_source  # the module docstring's heat source
        self.seq = 0
        self.prev: Any = None  # the previous CounterSnapshot
        self.machine: Machine | None = None
        self.machine_t = 0.0
        self.rebuild = True
        self.state: TunerState | None = None  # the last published state (one reference swap)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.failures = 0
        self.links = LinkTracker()
        self.yields: list[tuple[float, tuple[str, str]]] = []  # (time, knob key) of recent yields
        # the policy does not fit this machine (plan/build.py check_policy_cpus):
        # set by the last tick, refused at start and on reload
        self.policy_error: PolicyError | None = None

    def step(self) -> TunerState:
        t0 = time.monotonic()
        pol = self.d.policy
        root = self.d.root
        rates: Rates | None = None
        plan: Plan | None = None
        report: ApplyReport | None = None
        drift: tuple[Drift, ...] = ()
        errors: list[str] = []
        timings: list[tuple[str, float, bool]] = []

        def timed(stage: str, since: float, n_errors: int) -> None:
            timings.append((stage, time.monotonic() - since, len(errors) == n_errors))

        ts, ne = time.monotonic(), len(errors)
        hotplug = False
        snap: Any = None
        rescanned = False
        try:
            from agentlatd.model.rates import compute_rates
            from agentlatd.sample.counters import read_counters
            snap = read_counters(root, None, self.prev)
            if self.prev is not None:
                rates = compute_rates(self.prev, snap, pol.heat)
                if any(d.kind in ("cpu_hotplug", "irq_set_changed") for d in rates.discontinuities):
                    self.rebuild = True
                hotplug = any(d.kind == "cpu_hotplug" for d in rates.discontinuities)
            self.prev = snap
        except Exception as e:  # a sampler failure must not stop the daemon
            errors.append(f"sampling failed: {e}")
            log.warning("sampling failed: %s", e, exc_info=not isinstance(e, AgentlatdError))
        timed("counters", ts, ne)
        ts, ne = time.monotonic(), len(errors)
        try:
            from agentlatd.model.build import build_machine
            from agentlatd.plan.build import make_plan, needs_followup
            if self.rebuild or self.machine is None or t0 - self.machine_t > MACHINE_TTL:
                self.machine = build_machine(root)
                self.machine_t = t0
                self.rebuild = False
                rescanned = True
            from agentlatd.apply import irqbalance
            try:
                links = self.links.update(root, self.d.agent_homes, pol)
            except Exception as e:  # agent links are an optimisation: plan without them
                links = NONE
                errors.append(f"agent link sampling failed: {e}")
                log.warning("agent link sampling failed: %s", e, exc_info=not isinstance(e, AgentlatdError))
            ib_pids = irqbalance.running(root)
            plan = make_plan(self.machine, pol, rates=rates, irqbalance_running=bool(ib_pids),
                             agent_links=links,
                             irqbalance_banned=self._irqbalance_base(ib_pids, pol))
            self.policy_error = None
        except PolicyError as e:  # nothing is planned, so nothing is written
            self.policy_error = e
            errors.append(f"planning failed: {e}")
            log.error("the policy does not fit this machine, nothing is tuned: %s", e)
            plan = None
        except Exception as e:
            errors.append(f"planning failed: {e}")
            log.warning("planning failed: %s", e, exc_info=not isinstance(e, AgentlatdError))
            plan = None
        timed("plan", ts, ne)
        if plan is not None:
            for n in plan.notes:  # the repeat filter says a persisting one once per window
                if n.startswith(INCLUDE_MATCHES_NOTHING):
                    log.warning("%s", n.removeprefix("WARNING: "))
        layout = (layout_of(self.machine, plan) if plan is not None and self.machine is not None
                  else fallback_layout(root, pol))
        if plan is not None and self.d.tune_devices:
            ts, ne = time.monotonic(), len(errors)
            try:
                with self.d.applier.hold():
                    if rescanned:  # knobs the kernel refused get one more try per rescan
                        self.d.engine.forget_refusals()
                    drift = self._drift(hotplug, t0)
                    report = self.d.engine.apply(plan.changes)
                if any(r.errclass == "gone" for r in report.results):
                    # a device or IRQ vanished (hot-unplug, a veth deleted): rescan
                    # at the next tick, not after MACHINE_TTL of failing writes
                    # (tests/hostile: test_device_removed_under_a_running_daemon)
                    self.rebuild = True
                if needs_followup(r.knob for r in report.results
                                  if r.status in ("changed", "clamped")):
                    # threaded = 1 just started the napi/<dev>-<id> kthreads: rescan
                    # so the next tick pins them (plan/napi.py plan_napi_threads)
                    self.rebuild = True
            except Exception as e:
                errors.append(f"apply failed: {e}")
                log.error("apply failed: %s", e, exc_info=not isinstance(e, AgentlatdError))
            timed("apply", ts, ne)
        ts, ne = time.monotonic(), len(errors)
        try:
            self.d.chain_scanner.update(root, self.d.chain.published, rules=pol.chain)
        except Exception as e:  # discovery failing must not stop the tick
            errors.append(f"chain discovery failed: {e}")
            log.warning("chain discovery failed: %s", e, exc_info=not isinstance(e, AgentlatdError))
        timed("chain", ts, ne)
        heat = dict(rates.heat) if rates is not None else {}
        if rates is not None and plan is not None and plan.agent_links.local:
            # an agent's own replies processed on its home CPU are not heat to move it for
            heat = discount_heat(heat, rates.softirq_rate.get("NET_RX", {}),
                                 own_softirq_rate(plan.agent_links), pol.heat)
        if self.heat_source is not None:
            heat.update(self.heat_source())
        if errors:
            self.failures += 1
        self.seq += 1
        st = TunerState(seq=self.seq, t=time.monotonic(), duration_s=time.monotonic() - t0,
                        layout=layout, heat=heat, rates=rates, plan=plan, report=report,
                        drift=drift, machine=self.machine, error="; ".join(errors),
                        timings=tuple(timings), counters=snap)
        self.state = st
        self.d.wake()
        return st

    def _drift(self, hotplug: bool, now: float) -> tuple[Drift, ...]:
        """Drift, BEFORE this tick's apply: a value another writer set since the
        last tick is judged against what agentlatd wrote (yield or reassert),
        not silently overwritten by a plan built on a rescanned Machine.

        CPU hotplug: the kernel migrates IRQs off a CPU going down and drivers
        re-spread their queues' IRQ affinity and XPS both ways (virtio_net's
        cpuhp callbacks) -- not another writer. On the tick that sees the
        hotplug, drift is not checked, and entries yielded in the ticks just
        before it (the driver's rewrite can come before the CPU masks change)
        are managed again; the rebuilt plan then re-steers them, and apply
        adopts those the driver already put where the new plan wants them.
        Seen in the VM tier (tests/vm/guest/test_agentlatd_6_hotplug_drift.py).
        Called with the engine lock held.
        """
        eng = self.d.engine
        grace = max(2.0, 3 * self.d.policy.daemon.interval)
        self.yields = [(t, k) for t, k in self.yields if now - t <= grace]
        if hotplug:
            n = eng.unyield(k for _, k in self.yields)
            if n:
                log.info("CPU hotplug: %d knob(s) yielded just before it are managed again "
                         "(the kernel's and drivers' own rewrite, not another writer)", n)
            self.yields = []
            return ()
        # drift is about device knobs another writer (irqbalance, an admin)
        # changes; with only agent entries journaled it would read every agent
        # thread under the lock for nothing
        if not any(e.knob not in AGENT_KNOBS for e in eng.entries()):
            return ()
        out = tuple(eng.check_drift())
        for d in out:  # another writer changed a knob: say so, not only in metrics
            log.warning("drift: %s %s is %s, agentlatd wrote %s: %s (daemon.drift = %s)",
                        d.knob, d.target, human_value(d.knob, d.actual),
                        human_value(d.knob, d.expected), d.action, self.d.policy.daemon.drift)
        self.yields += [(now, (d.knob, d.target)) for d in out if d.action == "yielded"]
        return out

    def _irqbalance_base(self, pids: tuple[int, ...], pol: Policy) -> CpuSet | None:
        """What irqbalance banned before agentlatd (daemon.irqbalance = "cooperate"):
        the journaled original of the ban, else the running irqbalance's ban now."""
        if not pids or pol.daemon.irqbalance != "cooperate" or not self.d.tune_devices:
            return None
        from agentlatd.apply import irqbalance_ban
        for e in self.d.engine.entries():
            if (e.knob, e.target) == (irqbalance_ban.NAME, irqbalance_ban.TARGET):
                return parse_cpus(e.original) or CpuSet()
        return irqbalance_ban.current_ban(self.d.root, pids)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="agentlatd-tuner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(max(0.05, self.d.policy.daemon.interval)):
            try:
                self.step()
            except Exception:  # pragma: no cover - step() catches its own
                log.exception("tuner tick failed")

    def join(self, timeout: float = 10.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)


# ---------------------------------------------------------------------------
# the daemon


@dataclass(slots=True)
class Hooks:
    on_ready: list[Callable[[Daemon], None]] = field(default_factory=list)
    on_tick: list[Callable[[Daemon, TunerState], None]] = field(default_factory=list)
    on_loop: list[Callable[[Daemon], None]] = field(default_factory=list)
    on_reload: list[Callable[[Daemon, bool], None]] = field(default_factory=list)
    on_stop: list[Callable[[Daemon], None]] = field(default_factory=list)
    # at start, before the first write; an exception fails the start
    on_acquire: list[Callable[[Daemon], None]] = field(default_factory=list)
    on_release: list[Callable[[Daemon], None]] = field(default_factory=list)  # start failed


def _call(hooks: list[Any], *args: Any) -> None:
    for h in hooks:
        try:
            h(*args)
        except Exception:
            log.exception("hook %r failed", h)


class Daemon:
    def __init__(self, policy: Policy, *, config_path: str | None = None, root: str = "/",
                 state_dir: str | None = None, socket_path: str | None = None,
                 exclusive_scope_pid: int | None = None, tune_devices: bool = True,
                 listen_socket: socket.socket | None = None,
                 heat_source: Callable[[], Mapping[int, float]] | None = None) -> None:
        self.policy = policy
        self.config_path = config_path
        self.root = Root(root)
        self.state_dir = os.path.abspath(state_dir or policy.daemon.state_dir)
        self.socket_path = os.path.abspath(socket_path or policy.daemon.socket)
        self.exclusive_scope_pid = exclusive_scope_pid
        self.tune_devices = tune_devices
        self.hooks = Hooks()
        self.engine = Engine(self.root, self.state_dir, policy=policy)
        self.applier = Applier(self.engine)
        self.manager = AgentManager(self.applier, policy, exclusive_scope_pid=exclusive_scope_pid)
        self.manager.close_pidfd = self._close_pidfd
        # completion chains: found in the tuner thread, placed in the main one
        self.chain_scanner = ChainScanner()
        self.chain = ChainKeeper(self.manager, self.chain_scanner)
        self.manager.set_chain(self.chain.decisions())
        self.tuner = Tuner(self, heat_source)
        # the socket API's handlers and authorisation (agentlatd/handlers.py)
        self.handlers = Handlers(self.root, self.manager, self.chain,
                                 policy=lambda: self.policy, status=self.status,
                                 device_nodes=lambda: self._device_nodes)
        self.sel = selectors.DefaultSelector()
        self.server: Server | None = None
        self._listen = listen_socket
        self._stop = False
        self._hup = False
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._seen_seq = 0
        self._next_tick = 0.0
        self.started = time.time()
        self.ready = False
        self.last_state: TunerState | None = None
        self._device_nodes: dict[str, int] = {}
        self._socket_owned = True  # False: the listening socket was passed in
        self._sock: socket.socket | None = None  # acquire()d, not yet served
        self._writing = False  # start() got past acquire(): the host may be changed
        self._pidfds: set[int] = set()
        self._retry = False
        self._next_reap = 0.0
        self._tick_job: Iterator[None] | None = None  # the agent tick under way
        # the pinned agents, for the tuner's agent links (agents/links.py): a
        # tuple replaced whole by the main thread, read by the tuner thread
        self.agent_homes: tuple[AgentHome, ...] = ()

    # -- plumbing --------------------------------------------------------
    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"w")

    def _drain(self, _mask: int) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._rfd, 4096):
                pass

    def _signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True
        self.wake()

    def request_stop(self) -> None:
        self._stop = True
        self.wake()

    # -- start -----------------------------------------------------------
    def acquire(self) -> None:
        """Take everything a start can fail on, before the first write to the host.

        The state directory (checked, locked, its journal loaded and trusted),
        the registration socket (bound and listening) and the hooks' own
        resources (on_acquire: the metrics listener). A failure here raises an
        AgentlatdError naming the path, and leaves the host as it was: nothing
        has been written yet (tests/hostile/test_trust_start.py).
        """
        self.engine.acquire()
        sock = self._listen
        if sock is None:
            try:
                from agentlatd.sdnotify import inherited_socket
                sock = inherited_socket(self.socket_path)
            except ImportError:
                sock = None
        if sock is None:
            sock = bind_socket(self.socket_path, mode=0o660, group=self.policy.daemon.socket_group)
        else:
            sock.setblocking(False)
            # passed by systemd (agentlatd.socket) or the caller: its file is
            # theirs, left in place at exit so the socket keeps accepting
            self._socket_owned = False
        self._sock = sock
        for h in self.hooks.on_acquire:
            h(self)  # an error fails the start: nothing is written yet

    def _release(self) -> None:
        """Undo acquire() after a failed start (the socket file is removed if ours)."""
        if self.server is None and self._sock is not None:
            self._sock.close()
            if self._socket_owned:
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
        self._sock = None
        for h in self.hooks.on_release:
            with contextlib.suppress(Exception):
                h(self)

    def start(self) -> None:
        _raise_nofile()
        # the tuner thread parses in pure Python for milliseconds at a time: hand
        # the GIL to the socket loop after 0.5 ms, not the default 5 ms
        sys.setswitchinterval(0.0005)
        if self._sock is None:
            self.acquire()
        self._writing = True  # from here on a failed start must roll back
        rec = self.engine.recover()
        if rec.action != "none":
            log.info("journal: %s", rec.message)
        with self.applier.hold():
            left = [(k, t) for k, t, _ in self.applier.entries(AGENT_KNOBS)]
            if left:
                res = self.applier.restore(left)
                log.info("restored %d agent-side change(s) of the previous run (%d not)",
                         sum(1 for r in res if r.status in ("restored", "unchanged", "gone")),
                         sum(1 for r in res if r.status not in ("restored", "unchanged", "gone")))
        st = self.tuner.step()
        if self.tuner.policy_error is not None:
            raise self.tuner.policy_error  # nothing was planned, so nothing was tuned
        self._take(st)
        sock = self._sock
        assert sock is not None
        self._drop_caps()
        self.server = Server(self.sel, sock, self.handlers.table(),
                             max_clients=self.policy.daemon.max_clients,
                             uid_requests_per_s=self.policy.daemon.uid_requests_per_s,
                             uid_request_burst=self.policy.daemon.uid_request_burst,
                             uid_max_inflight=self.policy.daemon.uid_max_inflight,
                             on_close=self.handlers.on_close,
                             on_accept=self.handlers.on_accept,
                             path=self.socket_path)
        self.sel.register(self._rfd, selectors.EVENT_READ, self._drain)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        self.tuner.start()
        self._next_tick = time.monotonic()
        self.ready = True
        log.info("agentlatd %s serving %s (state %s, home CPUs %s, completion CPUs %s)",
                 __version__, self.socket_path, self.state_dir,
                 st.layout.home.to_list() or "none", st.layout.completion.to_list() or "none")
        _call(self.hooks.on_ready, self)

    def _drop_caps(self) -> None:
        """Keep CAP_NET_ADMIN, CAP_SYS_NICE, CAP_SYS_PTRACE only (agentlatd/caps.py).

        After the socket is bound and chowned, before the tuner thread starts
        (capabilities are per thread). Only on the live root: a run on a
        recorded tree (tests, --root) writes files, not the kernel.
        """
        if not self.root.is_host:
            return
        from agentlatd import caps
        try:
            caps.drop()
        except OSError as e:  # e.g. a seccomp filter refusing prctl: serve on, say so
            log.warning("cannot drop capabilities: %s", e)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; then roll back. Returns the exit status."""
        try:
            self.start()
        except BaseException:
            self.tuner.join(1.0)
            if self._writing:
                # the host may be tuned already: a failed start leaves nothing changed
                with contextlib.suppress(Exception):
                    self.shutdown()
            self._release()
            self.engine.close()
            raise
        try:
            while not self._stop:
                self.turn()
        finally:
            ok = self.shutdown()
        return 0 if ok else 1

    # -- one loop turn ---------------------------------------------------
    def turn(self) -> None:
        assert self.server is not None
        now = time.monotonic()
        if self._retry:
            timeout = RETRY  # the engine lock was busy: try again soon, never spin
        else:
            timeout = 0.0 if self.server.busy or self._tick_job is not None \
                else max(0.0, min(self._next_tick - now, 1.0))
            wake = self.server.wakeup()  # a rate-limited connection to read again
            if wake is not None:
                timeout = min(timeout, max(0.0, wake - now))
        for key, mask in self.sel.select(timeout):
            cb = key.data
            cb(mask)
        if self._stop:
            return
        if self._hup:
            self._hup = False
            self.reload()
        self.server.process()
        st = self.tuner.state
        if st is not None and st.seq != self._seen_seq:
            self._take(st)
        now = time.monotonic()
        tick_due = now >= self._next_tick
        self._retry = False
        if tick_due or self.handlers.waiting or self.manager.dirty or self.manager.dead \
                or self._tick_job is not None:
            with self.applier.hold(blocking=False) as got:
                if got:
                    if tick_due and self._tick_job is None:
                        self._tick_job = self._agent_tick()
                        self._next_tick = now + max(0.05, self.policy.daemon.interval)
                    self._locked_work(tick_due)
                else:
                    self._retry = True
        self._register_pidfds()
        if now >= self._next_reap:
            self._next_reap = now + 10.0
            self.server.reap_idle(now)
        _call(self.hooks.on_loop, self)

    def _take(self, st: TunerState) -> None:
        self._seen_seq = st.seq
        self.last_state = st
        if st.layout != self.manager.layout and not st.layout.home and st.layout.online:
            # degraded mode (etc/agentlatd.toml [cpus]): agents register but run unpinned
            log.warning("%s", NO_HOME_CPU)
        self.manager.set_layout(st.layout)
        self.manager.set_heat(st.heat)
        if st.machine is not None:
            self._device_nodes = {d.name: d.numa_node for d in st.machine.devices
                                  if d.numa_node is not None}
        if self.ready:
            _call(self.hooks.on_tick, self, st)

    def _locked_work(self, tick_due: bool) -> None:
        """Everything that writes: unregisters, placements, the tick (lock held)."""
        # Each phase is guarded: a journal that cannot be written (ENOSPC on the
        # state directory) or a bug in one phase is answered and logged, and the
        # loop serves on; nothing is written without its original journaled.
        waiting = self.handlers.take_waiting()
        assert self.server is not None
        for w in waiting:
            if w.op == "unregister":
                try:
                    self.handlers.finish_unregister(self.server, w)
                except Exception as e:
                    self._failed("unregister", e)
                    self.server.fail(w.conn, w.req_id, protocol.UNAVAILABLE,
                                     f"agentlatd could not restore the process's originals: {e}")
        outcome: dict[ProcId, AgentRefused | None] = {}
        try:
            self.manager.reap()
            outcome = self.manager.place_pending()
        except Exception as e:  # place_pending answers journal errors itself; a bug here
            self._failed("placement", e)
            outcome = {w.proc: AgentRefused(Refusal.INTERNAL, "agentlatd failed to place the "
                                            "agent; the daemon log has the details")
                       for w in waiting if w.op == "register"}
        for w in waiting:
            if w.op == "register":
                self.handlers.answer_register(self.server, w, outcome.get(w.proc))
        if self._tick_job is None:
            try:
                self.manager.reconcile_cpus(full=False)
            except Exception as e:
                self._failed("agent tick", e)
            return
        # a slice of the agent tick; requests are served between slices
        end = time.perf_counter() + TICK_SLICE_S
        try:
            while True:
                next(self._tick_job)
                if time.perf_counter() >= end:
                    return
        except StopIteration:
            self._tick_job = None

    def _agent_tick(self) -> Iterator[None]:
        """The agent side's tick as a generator of bounded pieces (lock held while
        each runs): the registry's upkeep, then the chain keeper's."""
        try:
            yield from self.manager.tick_steps()
        except Exception as e:
            self._failed("agent tick", e)
        try:
            yield from self.chain.tick_steps()
            # the keeper's decisions (members protected, exclusivity allowed or
            # undone) reach the registry here, once per tick, as one value
            self.manager.set_chain(self.chain.decisions())
            yield
            self.manager.reconcile_cpus(full=False)
            yield
        except Exception as e:
            self._failed("chain tick", e)
        # once per tick, not per registration: O(agents), and the tuner reads
        # it once per tick anyway
        self.agent_homes = self.manager.homes()

    def _failed(self, what: str, e: BaseException) -> None:
        if isinstance(e, AgentlatdError):
            log.error("%s failed: %s", what, e)
        else:
            log.exception("%s failed", what)

    def _register_pidfds(self) -> None:
        new, self.manager.new_pidfds = self.manager.new_pidfds, []
        for a in new:
            if a.pidfd is not None and a.pidfd not in self._pidfds:
                p = a.proc
                try:
                    self.sel.register(a.pidfd, selectors.EVENT_READ,
                                      lambda _m, p=p, fd=a.pidfd: self._on_exit(p, fd))
                except (ValueError, KeyError, OSError):
                    continue
                self._pidfds.add(a.pidfd)

    def _on_exit(self, p: ProcId, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.sel.unregister(fd)
        self._pidfds.discard(fd)
        self.manager.mark_dead(p)

    def _close_pidfd(self, fd: int) -> None:
        if fd in self._pidfds:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(fd)
            self._pidfds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- reload / stop ---------------------------------------------------
    def reload(self) -> bool:
        try:
            new = policy_mod.load(self.config_path) if self.config_path else policy_mod.default()
            machine = self.tuner.machine
            if machine is not None:
                from agentlatd.plan.build import check_policy_cpus
                check_policy_cpus(machine, new)
        except PolicyError as e:
            log.error("reload refused, the running policy stays in force: %s", e)
            _call(self.hooks.on_reload, self, False)
            return False
        if os.path.abspath(new.daemon.socket) != os.path.abspath(self.policy.daemon.socket):
            log.warning("daemon.socket changed in the policy: takes effect at the next start")
        self.policy = new
        self.engine.policy = new
        self.manager.set_policy(new)
        if self.server is not None:
            self.server.rate = new.daemon.uid_requests_per_s
            self.server.burst = float(new.daemon.uid_request_burst)
            self.server.max_inflight = new.daemon.uid_max_inflight
        self.tuner.rebuild = True
        with contextlib.suppress(Exception):
            from agentlatd import logging_setup
            logging_setup.set_level(new.daemon.log_level)
        log.info("policy reloaded from %s", new.source)
        _call(self.hooks.on_reload, self, True)
        return True

    def shutdown(self) -> bool:
        """Stop serving and roll back every change. True when everything is back."""
        _call(self.hooks.on_stop, self)
        if self.server is not None:
            self.server.accepting = False
        self.tuner.join(10.0)
        ok = True
        with self.applier.hold():
            try:
                with contextlib.suppress(Exception):
                    self.chain.release_all()
                self.manager.release_all()
                rep = self.engine.rollback()
                ok = rep.ok
                n = sum(1 for r in rep.results if r.status == "restored")
                if ok:
                    log.info("rolled back: %d original(s) restored", n)
                else:
                    log.error("rollback incomplete: %s", "; ".join(rep.notes) or
                              "; ".join(r.message for r in rep.results
                                        if r.status not in ("restored", "unchanged", "gone",
                                                            "managed"))[:500])
            except AgentlatdError as e:
                log.error("rollback failed: %s", e)
                ok = False
        if self.server is not None:
            self.server.close(unlink=self._socket_owned)
        with contextlib.suppress(Exception):
            self.sel.close()
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.engine.close()
        return ok

    # -- views -----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.last_state
        rep = st.report if st is not None else None
        counts: dict[str, int] = {}
        if rep is not None:
            for r in rep.results:
                counts[r.status] = counts.get(r.status, 0) + 1
        out: dict[str, Any] = {
            "version": __version__, "pid": os.getpid(), "policy": self.policy.source,
            "socket": self.socket_path, "state_dir": self.state_dir,
            "uptime_s": round(time.time() - self.started, 3), "ready": self.ready,
            "tick": st.seq if st else 0,
            "tuner_tick_ms": round(st.duration_s * 1000, 3) if st else None,
            "tuner_error": st.error if st else "",
            "changes": counts,
            "planned_changes": len(st.plan.changes) if st and st.plan else 0,
            "drift": [d.to_json() for d in st.drift] if st else [],
            "journal_entries": len(self.engine.entries()),
            # knobs another writer changed and agentlatd left to it (daemon.drift = "yield")
            "yielded": [{"knob": e.knob, "target": e.target} for e in self.engine.entries()
                        if e.has(FLAG_YIELDED)],
            "agent_links": _links_json(st.plan.agent_links) if st and st.plan else [],
            "connections": len(self.server.conns) if self.server else 0,
            "requests": self.server.requests if self.server else 0,
        }
        out.update(self.manager.status())
        out.update(self.chain.status())
        return out


def _links_json(links: AgentLinks) -> list[dict[str, Any]]:
    return [{"device": lk.device, "mode": mode, "home_cpus": lk.home_cpus.to_list(),
             "agents": list(lk.agents), "rx_pps": None if lk.rx_pps is None else round(lk.rx_pps, 1)}
            for mode, group in (("local", links.local), ("busy", links.busy))
            for lk in group.values()]


def _raise_nofile() -> None:
    """One pidfd per agent plus one fd per client: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else 1 << 20, hard))


def main(policy: Policy, *, config_path: str | None, root: str, state_dir: str | None,
         socket_path: str | None, exclusive_scope_pid: int | None = None,
         tune_devices: bool = True) -> int:
    try:
        d = Daemon(policy, config_path=config_path, root=root, state_dir=state_dir,
                   socket_path=socket_path, exclusive_scope_pid=exclusive_scope_pid,
                   tune_devices=tune_devices)
        from agentlatd import service  # sd_notify + metrics through d.hooks
        service.attach(d)
        return d.run()
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            print(f"agentlatd run: {e} (run as root?)", file=sys.stderr)
            return 1
        raise
