"""The daemon's service side: systemd notify protocol and Prometheus metrics,
attached to a running Daemon through its hooks (agentlatd/hooks.py), which see a
read-only DaemonView of it, never the Daemon.

    svc = service.attach(daemon.hooks, daemon.view)   # before daemon.run(): commands/run.py

What each hook does (all run in the daemon's main thread):
  on_ready   READY=1 + STATUS= once the first tick sampled, planned and
             applied without an exception (a knob that fails is a result, not
             an exception: it does not hold READY back; a tick that could
             not sample or plan does, and systemd's TimeoutStartSec then
             fails the start instead of reporting a broken daemon as up)
  on_tick    metrics counters (rates, layout, apply/drift results, per-stage
             durations: additions, no rendering), STATUS= line
  on_loop    metrics views asked for by a scrape or the textfile writer
             (ViewBroker: the HTTP thread renders, the main thread only
             copies its state into a frozen View); WATCHDOG=1 when due.
             The ping is sent from the main loop, so it means the loop
             turns; a helper thread only wakes the loop
             (daemon.wake()) at the due time, so the cadence does not depend
             on the loop's own timeouts, and a stuck loop still misses pings
  on_reload  RELOADING=1 (+MONOTONIC_USEC), metrics reconfigured, READY=1
             again: systemd leaves the "reloading" state whether the new
             policy was taken or refused
  on_stop    STOPPING=1 before the rollback; HTTP server closed, textfile
             removed (no daemon, no agentlatd series: absent() alerts work)
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, MutableMapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from agentlatd.apply.engine import FAILED
from agentlatd.errors import PolicyError
from agentlatd.hooks import DaemonView, Hooks
from agentlatd.metrics import Exporter, Metrics, View, parse_listen
from agentlatd.sdnotify import Notifier
from agentlatd.tuner import TunerState

log = logging.getLogger("agentlatd.service")

# a ping is sent when it is due within this many seconds (the waker thread
# wakes the loop at the due time; the turn may run a hair early)
PING_SLACK = 0.02


class ViewBroker:
    """Hands the main thread's metrics View to the threads that render it.

    request() (HTTP or textfile thread) queues a Future, wakes the main loop
    and waits; serve() (main thread, each loop turn) builds ONE View for all
    the requests queued and answers them. The main thread's state is read
    only by the main thread, and nothing is built while nobody asks. A loop
    that does not answer within `timeout` gets the last View served (its
    agentlatd_last_tick_timestamp_seconds says how old), or None before any.
    """

    def __init__(self, wake: Callable[[], None], timeout: float = 5.0) -> None:
        self._q: queue.SimpleQueue[Future[View | None]] = queue.SimpleQueue()
        self._wake = wake
        self.timeout = timeout
        self.last: View | None = None
        self.served = 0
        self.closed = False

    def close(self) -> None:
        """At stop: answer whoever waits (None) so the exporter's threads end now."""
        self.closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait().set_result(None)

    def request(self) -> View | None:
        if self.closed:
            return None
        fut: Future[View | None] = Future()
        self._q.put(fut)
        if self.closed:  # close() ran between the check and the put
            self.close()
        self._wake()
        try:
            return fut.result(self.timeout)
        except FutureTimeout:
            log.warning("metrics: the main loop did not answer within %.0f s; serving the "
                        "last view", self.timeout)
            return self.last

    def serve(self, build: Callable[[], View]) -> None:
        futs: list[Future[View | None]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                futs.append(self._q.get_nowait())
        if not futs:
            return
        try:
            v = build()
        except Exception as e:  # a bug in a view must not stop the loop
            log.exception("metrics: building the view failed")
            for f in futs:
                f.set_exception(e)
            return
        self.last = v
        self.served += 1
        for f in futs:
            f.set_result(v)


class Service:
    def __init__(self, daemon: DaemonView, notifier: Notifier, metrics: Metrics,
                 exporter: Exporter, broker: ViewBroker) -> None:
        self.d = daemon
        self.notifier = notifier
        self.metrics = metrics
        self.exporter = exporter
        self.broker = broker
        self.ready_sent = False
        self._stop = threading.Event()
        self._waker: threading.Thread | None = None
        self._exporter_configured = False

    # -- hooks -----------------------------------------------------------
    def _configure_exporter(self, d: DaemonView) -> None:
        if not self._exporter_configured:
            self._exporter_configured = True
            self.exporter.configure(d.policy.metrics)

    def on_acquire(self, d: DaemonView) -> None:
        # bound before the first write, served (its thread started) after the
        # capabilities are dropped: on_ready -> configure()
        self.exporter.bind(d.policy.metrics)

    def on_release(self, d: DaemonView) -> None:
        self.exporter.unbind()

    def on_ready(self, d: DaemonView) -> None:
        self._configure_exporter(d)
        st = d.last_state
        if st is not None:
            self._observe(d, st)
        if st is not None and not st.error:
            self._ready(d)
        elif st is not None:
            log.warning("not reporting READY yet: %s", st.error)
            self.notifier.status(f"starting: {st.error}")
        if self.notifier.watchdog_interval is not None and self._waker is None:
            self.notifier.watchdog()
            self._waker = threading.Thread(target=self._wake_loop, name="agentlatd-watchdog",
                                           daemon=True)
            self._waker.start()

    def on_tick(self, d: DaemonView, st: TunerState) -> None:
        self._configure_exporter(d)
        self._observe(d, st)
        if not self.ready_sent and not st.error:
            self._ready(d)
        elif self.ready_sent:
            self.notifier.status(self.status_line(d, st))

    def on_loop(self, d: DaemonView) -> None:
        if self.metrics.ticks:
            self.broker.serve(lambda: self.metrics.view(d.agents(), d.policy, d.chain_row(),
                                                              d.slow_steps()))
        due = self.notifier.watchdog_due()
        if due is not None and due <= PING_SLACK:
            self.notifier.watchdog()

    def on_reload(self, d: DaemonView, ok: bool) -> None:
        self.notifier.reloading()
        self.metrics.observe_reload(ok)
        if ok:
            try:
                self.exporter.configure(d.policy.metrics)
            except PolicyError as e:  # the loader checks it first; belt and braces
                log.error("metrics: %s", e)
        st = d.last_state
        line = self.status_line(d, st) if st is not None else "running"
        if not ok:
            line = f"{line}; reload refused (see log)"
        if self.ready_sent:
            self.notifier.ready(line)
        else:
            self.notifier.status(line)

    def on_stop(self, d: DaemonView) -> None:
        self._stop.set()
        self.notifier.stopping("stopping: rolling back every change")
        self.broker.close()
        self.exporter.close()
        tf = d.policy.metrics.textfile
        if tf:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tf)
        if self._waker is not None:
            self._waker.join(timeout=2)

    # -- internals -------------------------------------------------------
    def _ready(self, d: DaemonView) -> None:
        st = d.last_state
        line = self.status_line(d, st) if st is not None else "running"
        self.ready_sent = True
        self.metrics.ready = True
        self.exporter.set_ready()
        self.notifier.ready(line)
        log.info("ready: %s", line)

    def _wake_loop(self) -> None:
        """Wake the main loop when a ping is due; the ping itself is on_loop's."""
        while not self._stop.is_set():
            due = self.notifier.watchdog_due()
            if due is None:
                return
            if due > 0 and self._stop.wait(due):
                return
            self.d.wake()
            # the loop pings within a turn; do not spin while it does
            self._stop.wait(min(0.05, (self.notifier.watchdog_interval or 1.0) / 4))

    def _observe(self, d: DaemonView, st: TunerState) -> None:
        m = self.metrics
        for t in st.timings:  # the tick's stage table
            m.observe_sampler(t.stage, t.seconds, t.ok)
        if st.report is not None:
            m.observe_apply(st.report)
        if st.drift:
            m.observe_drift(st.drift)
        snap = st.counters
        m.observe_tick(duration_s=st.duration_s, rates=st.rates, completion=st.layout.completion,
                       home=st.layout.home, online=st.layout.online,
                       hot_threshold=d.policy.heat.hot, active_changes=d.journal_entries(),
                       hot_cpus=d.hot_cpus(),
                       softirqs=snap.softirqs if snap is not None else None,
                       stat=snap.stat if snap is not None else None,
                       failed=bool(st.error), guard_undone=d.guard_undone(),
                       scan_worker=d.scan_worker(), fork_events=d.fork_events(),
                       forked=d.forked_processes())
        self.exporter.tick()

    def status_line(self, d: DaemonView, st: TunerState) -> str:
        """One line for `systemctl status`: agents, hot CPUs, changes."""
        n_agents = len(d.agents())
        hot = ",".join(str(c) for c in d.hot_cpus())
        held = d.journal_entries()
        failed = 0
        if st.report is not None:
            failed = sum(1 for r in st.report.results if r.status is FAILED)
        parts = [f"{n_agents} agent{'s' if n_agents != 1 else ''}",
                 f"hot CPUs: {hot or 'none'}",
                 f"{held} change{'s' if held != 1 else ''} held"
                 + (f", {failed} failed" if failed else ""),
                 f"home {st.layout.home.to_list() or 'none'}",
                 f"completion {st.layout.completion.to_list() or 'none'}"]
        if st.error:
            parts.append(f"error: {st.error}")
        return "; ".join(parts)

    def close(self) -> None:
        self._stop.set()
        self.exporter.close()
        self.notifier.close()


def attach(hooks: Hooks, daemon: DaemonView,
           environ: MutableMapping[str, str] | None = None) -> Service:
    """Hook systemd notification and metrics into a daemon (before daemon.run()).

    Raises PolicyError when policy [metrics] listen is malformed (the start
    fails with the key path, as for any policy error).
    """
    notifier = Notifier.from_env(environ, unset=True)
    broker = ViewBroker(daemon.wake)
    exporter = Exporter(broker.request, max_age=max(30.0, 3 * daemon.policy.daemon.interval))
    # validate now (a malformed listen fails the start with its key path), but
    # start the HTTP thread only once the daemon runs: capabilities are per
    # thread, and a thread started before caps.drop() in Daemon.start() would
    # keep the full set. A listen port below 1024 would need
    # CAP_NET_BIND_SERVICE, which the daemon drops: use a high port.
    parse_listen(daemon.policy.metrics.listen)
    svc = Service(daemon, notifier, Metrics(), exporter, broker)
    h = hooks
    h.on_acquire.append(svc.on_acquire)
    h.on_release.append(svc.on_release)
    h.on_ready.append(svc.on_ready)
    h.on_tick.append(svc.on_tick)
    h.on_loop.append(svc.on_loop)
    h.on_reload.append(svc.on_reload)
    h.on_stop.append(svc.on_stop)
    if notifier.enabled:
        log.debug("systemd notify socket %s; watchdog %s", notifier.address,
                  f"every {notifier.watchdog_interval} s" if notifier.watchdog_interval
                  else "off")
    return svc
