"""The daemon: `agentlatd run`. One process, two threads, one journal.

  main thread   a `selectors` loop: the registration socket (api/server.py),
                one pidfd per agent (readable when it exits), the process
                connector's forks and exits (agents/forks.py), the signal
                pipe, and the agent tick (agents/registry.py: new threads,
                heat moves, auto-registration, exclusive home CPUs, pm_qos)
  tuner thread  one tick (agentlatd/tick.py: sample -> plan) then apply and
                drift, every policy daemon.interval (agentlatd/tuner.py); it
                reads a frozen TickInput the main thread replaces whole and
                publishes a frozen TunerState (heat, CPU layout)

Why a thread for the device pipeline and not one loop: a knob write can be
slow (ethtool netlink on a busy NIC, a sysfs store that takes a driver lock)
and a tick that reads /proc/interrupts of a large host costs milliseconds. In
the tuner thread neither delays an answer on the socket. Both sides write
through ONE engine (one journal, so `agentlatd rollback` and a crash restore
restore everything), serialised by the engine's lock; the main loop never waits for it:
it takes it when free, else answers everything that needs no write and
retries on its next turn (a few ms). Only registrations wait, and only for
the engine. One failing knob is one failed result in the engine's report;
it never stops the tick.

Signals: SIGTERM/SIGINT roll back every change (engine.rollback(): device
knobs, task affinity/nice/ioprio, pm_qos) and exit 0; SIGHUP reloads the
policy file (a bad one is logged with its key path and the old one stays);
the tuner takes the new policy at its next tick, never inside one.
At start a journal left by a crashed run is restored (incomplete) or adopted
(complete) by the engine; the agent side then restores its own adopted
entries (task and pm_qos knobs: the processes must register again, and their
client libraries do so on reconnect), so it starts from a clean slate.

Hooks for the service layer (sd_notify, metrics): Daemon.hooks (agentlatd/hooks.py),
called from the main thread with a read-only DaemonView, never the Daemon;
Daemon.status() returns a dict (also the socket's "status" answer).

Heat source: Daemon(heat_source=f) makes the tuner call f() at every tick
and use the {cpu: heat} it returns in place of the measured heat of those
CPUs. Nothing in agentlatd passes one and nothing reads it from the
environment: tests do (tests/support/launch.py --heat-file), to drive "home
CPU turns hot" on a 2-CPU host without flooding a CPU with NET_RX softirqs.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from agentlatd import __version__, knobset, logging_setup
from agentlatd import policy as policy_mod
from agentlatd.agents import views as agent_views
from agentlatd.agents.applier import Applier
from agentlatd.agents.chain import ChainKeeper
from agentlatd.agents.chainrow import ChainRow
from agentlatd.agents.pidfdgate import AgentPidfds
from agentlatd.agents.registry import AgentManager
from agentlatd.agents.scanworker import WorkerScans
from agentlatd.agentwork import AgentWork
from agentlatd.api.server import Server
from agentlatd.apply.engine import Engine
from agentlatd.apply.journal import FLAG_YIELDED
from agentlatd.errors import KernelError, PolicyError
from agentlatd.handlers import Handlers
from agentlatd.hooks import Hooks
from agentlatd.lifecycle import (
    Listener,
    Pidfds,
    Wakeup,
    drop_caps,
    raise_nofile,
    recover_agents,
    rollback_all,
)
from agentlatd.model.agent_links import AgentLinks
from agentlatd.model.layout import NO_HOME_CPU
from agentlatd.netlink.procevents import ProcEvents
from agentlatd.plan.build import check_policy_cpus
from agentlatd.policy import Policy
from agentlatd.steps.slowsteps import SlowSteps
from agentlatd.steps.slowview import AgentSlow
from agentlatd.sysfs.pacing import PACER
from agentlatd.sysfs.root import Root
from agentlatd.tick import TickInput
from agentlatd.tuner import Tuner, TunerState
from agentlatd.wire import Op

log = logging.getLogger("agentlatd.daemon")

RETRY = 0.005  # seconds to the next turn when the engine lock was busy


# ---------------------------------------------------------------------------
# the daemon


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
        self.tune_devices = tune_devices
        self.hooks = Hooks()
        # the agents' pidfds prove their identity to the engine's task knobs, in
        # place of a proc/PID/stat read per knob read and write (agents/pidfdgate.py)
        self.witness = AgentPidfds()
        self.engine = Engine(self.root, self.state_dir, policy=policy,
                             knobs=knobset.witnessed(self.witness))
        self.applier = Applier(self.engine)
        self.manager = AgentManager(self.applier, policy, exclusive_scope_pid=exclusive_scope_pid,
                                    witness=self.witness)
        self.sel = selectors.DefaultSelector()
        self.pidfds = Pidfds(self.sel, self.manager.mark_dead)
        self.manager.close_pidfd = self.pidfds.close
        # completion chains: found by the tuner thread (with the irqbalance watch,
        # in a child process: agents/scanworker.py), placed in the main one
        self.scans = WorkerScans(self.root)
        self.chain = ChainKeeper(self.manager, self.scans)
        self.manager.set_chain(self.chain.decisions())
        self.waker = Wakeup()
        self.tuner = Tuner(self.root, self.engine, TickInput(policy, tune_devices=tune_devices),
                           scans=self.scans, heat_source=heat_source,
                           wake=self.waker.wake)
        self.view = _View(self)
        self.server: Server | None = None
        self.listener = Listener(self.socket_path, policy.daemon.socket_group, listen_socket)
        # the socket API's handlers and authorisation (agentlatd/handlers.py)
        self.handlers = Handlers(self.root, self.manager, self.chain,
                                 policy=lambda: self.policy, status=self.status,
                                 device_nodes=lambda: self._device_nodes)
        # the main loop's writes under the engine's lock (agentlatd/agentwork.py)
        self.work = AgentWork(self.manager, self.chain, self.handlers, self._publish_steps)
        self._seen_seq = 0
        self._next_tick = 0.0
        self.started = time.time()
        self.ready = False
        self.last_state: TunerState | None = None
        self._device_nodes: dict[str, int] = {}
        self._acquired = False
        self._writing = False  # start() got past acquire(): the host may be changed
        self._retry = False
        self._next_reap = 0.0
        # the always-on slowest-steps view (steps/slowsteps.py): its own thread,
        # fed the agents once per tick, started with the service and stopped first
        self.slow_steps = SlowSteps(self.root)
        self.hooks.on_ready.append(lambda _v: self.slow_steps.start())
        # its targets are fed at the end of each agent tick (_publish_steps)
        self.hooks.on_stop.append(lambda _v: self.slow_steps.stop())

    def wake(self) -> None:
        self.waker.wake()

    def request_stop(self) -> None:
        self.waker.stop = True
        self.waker.wake()

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
        self.listener.acquire()
        self._watch_forks()
        self._acquired = True
        for h in self.hooks.on_acquire:
            h(self.view)  # an error fails the start: nothing is written yet

    def _watch_forks(self) -> None:
        """Process events for the processes agents fork (agents/forks.py); without
        them (a pid or network namespace of its own, no CONFIG_PROC_EVENTS) the
        tick lists each agent's descendants. Never fails the start."""
        if not self.root.is_host:
            self.manager.forks.attach(None, "not the host's /proc")
            return
        try:
            src = ProcEvents()
        except KernelError as e:
            why = str(e)
            if e.errno in (errno.ECONNREFUSED, errno.EPROTONOSUPPORT):  # no connector here
                why += "; only the host's network namespace has the process connector"
            self.manager.forks.attach(None, why)
            log.info("no process events (%s): the agent tick lists the processes agents "
                     "fork instead", why)
            return
        self.manager.forks.attach(src)

    def _release(self) -> None:
        """Undo acquire() after a failed start (the socket file is removed if ours)."""
        with contextlib.suppress(Exception):
            self.manager.forks.close()
        if self.server is None:
            self.listener.release()
        for h in self.hooks.on_release:
            with contextlib.suppress(Exception):
                h(self.view)

    def start(self) -> None:
        raise_nofile()
        # the tuner thread parses in pure Python for milliseconds at a time: hand
        # the GIL to the socket loop after 0.5 ms, not the default 5 ms
        sys.setswitchinterval(0.0005)
        if not self._acquired:
            self.acquire()
        self._writing = True  # from here on a failed start must roll back
        recover_agents(self.engine, self.applier)
        st = self.tuner.step()
        if st.policy_error is not None:
            raise st.policy_error  # nothing was planned, so nothing was tuned
        self._take(st)
        sock = self.listener.sock
        assert sock is not None
        drop_caps(self.root)
        d = self.policy.daemon
        ops = self.handlers.table()
        ops[Op.SLOW_STEPS] = lambda _c, _env: self.slow_steps.rows()
        self.server = Server(self.sel, sock, ops, max_clients=d.max_clients,
                             uid_requests_per_s=d.uid_requests_per_s,
                             uid_request_burst=d.uid_request_burst,
                             uid_max_inflight=d.uid_max_inflight,
                             on_close=self.handlers.on_close, on_accept=self.handlers.on_accept,
                             path=self.socket_path)
        self.waker.install(self.sel)
        self.tuner.start()
        self._next_tick = time.monotonic()
        # what start built and imported lives as long as the daemon: out of the
        # cyclic collector's sight, so that a full collection scans the agents'
        # objects, not ~50,000 module objects (a 30-60 ms pause of the socket
        # loop with 1000 agents; bench/agents.py register p99). Collected first:
        # garbage frozen with them would never be freed
        gc.collect()
        gc.freeze()
        self.ready = True
        log.info("agentlatd %s serving %s (state %s, home CPUs %s, completion CPUs %s)",
                 __version__, self.socket_path, self.state_dir,
                 st.layout.home.to_list() or "none", st.layout.completion.to_list() or "none")
        _call(self.hooks.on_ready, self.view)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; then roll back. Returns the exit status."""
        # the agents' pidfds are opened, polled and closed by the thread that runs
        # the loop, which may not be the one that built the daemon
        self.witness.bind(self.manager.pidfd_of)
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
            while not self.waker.stop:
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
            timeout = 0.0 if self.server.busy or self.work.ticking or self.manager.dead \
                else max(0.0, min(self._next_tick - now, 1.0))
            wake = self.server.wakeup()  # a rate-limited connection to read again
            if wake is not None:
                timeout = min(timeout, max(0.0, wake - now))
            forks = self.manager.forks.wait_s(now)  # the process events' next batch
            if forks is not None:
                timeout = min(timeout, forks)
        if timeout > 0.0:
            PACER.waiting()
        events = self.sel.select(timeout)
        PACER.serving()  # until the next select that may block: background reads wait
        for key, mask in events:
            key.data(mask)
        if self.waker.stop:
            return
        if self.waker.hup:
            self.waker.hup = False
            self.reload()
        self.server.process()
        self.manager.forks.follow_due(time.monotonic(), self.manager.agents, self.manager.by_pid)
        st = self.tuner.state
        if st is not None and st.seq != self._seen_seq:
            self._take(st)
        now = time.monotonic()
        tick_due = now >= self._next_tick
        self._retry = False
        if tick_due or self.handlers.waiting or self.manager.dirty or self.manager.dead \
                or self.work.ticking or self.manager.forks.unsynced:
            with self._engine_lock() as got:
                if got:
                    if tick_due and not self.work.ticking:
                        self.work.begin_tick()
                        self._next_tick = now + max(0.05, self.policy.daemon.interval)
                    self.engine.policy = self.policy  # the lock is held: no tick is applying
                    # epoll is level-triggered: a select(0) here leaves what it
                    # sees for the next turn's select
                    self.work.run(self.server, lambda: bool(self.sel.select(0)))
                else:
                    self._retry = True
        new, self.manager.new_pidfds = self.manager.new_pidfds, []
        self.pidfds.watch(new)
        if now >= self._next_reap:
            self._next_reap = now + 10.0
            self.server.reap_idle(now)
        _call(self.hooks.on_loop, self.view)

    @contextlib.contextmanager
    def _engine_lock(self) -> Iterator[bool]:
        """The engine's lock for this turn's writes. Held by the tuner (its apply and
        drift check, milliseconds on a host with many queues): a request waiting for
        an answer waits for the lock, up to RETRY, and goes on the moment the tuner
        lets go (a retry after RETRY made every registration that met a tuner
        apply wait RETRY in full); the tick alone retries in the next turn. The
        tuner's reads do not give way meanwhile (sysfs/pacing.py): the loop waits
        for it."""
        with self.engine.hold(blocking=False) as got:
            if got or not self.handlers.waiting:
                yield got
                return
        PACER.waiting()
        with self.engine.hold(timeout=RETRY) as got:
            PACER.serving()
            yield got

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
            _call(self.hooks.on_tick, self.view, st)

    def _publish(self) -> None:
        """The tuner's next input, replaced whole (it reads it once per tick)."""
        self.tuner.set_input(TickInput(self.policy, self.manager.homes(), self.chain.published,
                                       self.tune_devices))

    def _publish_steps(self) -> Iterator[None]:
        """_publish() and the slow-steps view's targets, once per agent tick, a
        piece at a time (the main loop serves requests between pieces)."""
        homes = yield from self.manager.placer.homes_steps(self.manager.agents)
        self.tuner.set_input(TickInput(self.policy, homes, self.chain.published,
                                       self.tune_devices))
        yield from self.slow_steps.update_steps(self.manager.agents.values())

    def reload(self) -> bool:
        try:
            new = policy_mod.load(self.config_path) if self.config_path else policy_mod.default()
            machine = self.tuner.machine
            if machine is not None:
                check_policy_cpus(machine, new)
        except PolicyError as e:
            log.error("reload refused, the running policy stays in force: %s", e)
            _call(self.hooks.on_reload, self.view, False)
            return False
        if os.path.abspath(new.daemon.socket) != os.path.abspath(self.policy.daemon.socket):
            log.warning("daemon.socket changed in the policy: takes effect at the next start")
        self.policy = new  # the engine takes it under its lock (turn(), the tuner)
        self.manager.set_policy(new)
        if self.server is not None:
            self.server.admission.set_limits(new.daemon.uid_requests_per_s,
                                             new.daemon.uid_request_burst,
                                             new.daemon.uid_max_inflight)
        # between ticks: the tuner's running tick keeps the policy it started
        # with; a new policy makes its next tick rescan the machine
        self._publish()
        with contextlib.suppress(ValueError):  # the loader checked it
            logging_setup.set_level(new.daemon.log_level)
        log.info("policy reloaded from %s", new.source)
        _call(self.hooks.on_reload, self.view, True)
        return True

    def shutdown(self) -> bool:
        """Stop serving and roll back every change. True when everything is back."""
        _call(self.hooks.on_stop, self.view)
        if self.server is not None:
            self.server.accepting = False
        PACER.waiting()  # no more serving: the tuner's last tick runs unpaced
        self.tuner.join(10.0)
        ok = rollback_all(self.engine, self.manager, self.chain)
        with contextlib.suppress(Exception):
            self.manager.forks.close()
        if self.server is not None:
            self.server.close(unlink=self.listener.owned)
        with contextlib.suppress(Exception):
            self.sel.close()
        self.waker.close()
        self.engine.close()
        return ok

    # -- views -----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The socket's "status" answer (and `agentlatd status`'s daemon view)."""
        return _status(self)


class _View:
    """The DaemonView the service hooks get (agentlatd/hooks.py): reads only."""

    __slots__ = ("_d",)

    def __init__(self, d: Daemon) -> None:
        self._d = d

    @property
    def policy(self) -> Policy:
        return self._d.policy

    @property
    def last_state(self) -> TunerState | None:
        return self._d.last_state

    def wake(self) -> None:
        self._d.wake()

    def agents(self) -> Collection[Any]:
        return self._d.manager.agents.values()

    def chain_row(self) -> Callable[[Any], ChainRow] | None:
        return self._d.chain.view

    def slow_steps(self) -> tuple[AgentSlow, ...]:
        return self._d.slow_steps.snapshot()

    def hot_cpus(self) -> list[int]:
        return list(agent_views.status(self._d.manager).get("hot_cpus", []))

    def journal_entries(self) -> int:
        return len(self._d.engine.entries())

    def guard_undone(self) -> Mapping[str, int]:
        return dict(self._d.chain.guard.undone)

    def scan_worker(self) -> tuple[bool, int]:
        info = self._d.scans.info
        return info.pid is not None, info.failures

    def fork_events(self) -> tuple[bool, int]:
        forks = self._d.manager.forks
        return forks.source is not None, forks.lost

    def forked_processes(self) -> tuple[int, int]:
        forks = self._d.manager.forks
        return len(forks.owner), len(forks.journaled)


def _status(d: Daemon) -> dict[str, Any]:
    st = d.last_state
    rep = st.report if st is not None else None
    counts: dict[str, int] = {}
    if rep is not None:
        for r in rep.results:
            counts[r.status] = counts.get(r.status, 0) + 1
    out: dict[str, Any] = {
        "version": __version__, "pid": os.getpid(), "policy": d.policy.source,
        "socket": d.socket_path, "state_dir": d.state_dir,
        "uptime_s": round(time.time() - d.started, 3), "ready": d.ready,
        "tick": st.seq if st else 0,
        "agent_ticks": d.work.ticks,
        "tuner_tick_ms": round(st.duration_s * 1000, 3) if st else None,
        "tuner_error": st.error if st else "",
        "changes": counts,
        "planned_changes": len(st.plan.changes) if st and st.plan else 0,
        "drift": [x.to_json() for x in st.drift] if st else [],
        # planned changes the kernel refused for good, held back until a rescan
        "held": [{"knob": h.knob, "target": h.target, "errclass": h.errclass}
                 for h in st.held] if st else [],
        "journal_entries": len(d.engine.entries()),
        # knobs another writer changed and agentlatd left to it (daemon.drift = "yield")
        "yielded": [{"knob": e.knob, "target": e.target} for e in d.engine.entries()
                    if e.has(FLAG_YIELDED)],
        "agent_links": _links_json(st.plan.agent_links) if st and st.plan else [],
        "connections": len(d.server.conns) if d.server else 0,
        "requests": d.server.requests if d.server else 0,
    }
    out.update(agent_views.status(d.manager))
    out.update(d.chain.status())
    out["scan_worker"] = d.scans.info.to_json()
    out["forks"] = d.manager.forks.status()
    return out


def _links_json(links: AgentLinks) -> list[dict[str, Any]]:
    return [{"device": lk.device, "mode": mode, "home_cpus": lk.home_cpus.to_list(),
             "agents": list(lk.agents), "rx_pps": None if lk.rx_pps is None else round(lk.rx_pps, 1)}
            for mode, group in (("local", links.local), ("busy", links.busy))
            for lk in group.values()]

