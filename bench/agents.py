"""Benchmarks of the agent side: registration round trip, step() overhead,
tick cost with many agents. Not a test: it prints figures.

    sudo .venv/bin/python bench/agents.py                  # defaults below
    sudo .venv/bin/python bench/agents.py --agents 1000 --json

What it runs: a real `agentlatd run` subprocess with a policy that steers no
device (devices.include matches nothing, every device knob off, interactive
home CPUs "shared": nothing but the benchmark's own processes is touched),
its state directory on /dev/shm (tmpfs, as /run is in production, so the
journal's fsyncs cost what they cost there), interval 1 s and log level
"info" (the defaults: each registration and unregistration logs a line, to a
file in the state's directory as a daemon outside systemd does).

  register_rtt   connect once, then for each of --samples fresh sleeping
                 processes: send "register" (pid=...) and wait for the answer.
                 The answer comes after every thread is pinned and the
                 originals are journaled. Measured with 0 and with --agents
                 other agents registered.
  reregister_rtt the same processes registered again (no write: already placed)
  unregister_rtt each of them unregistered (its originals restored, its
                 entries dropped from the journal), with 0 and (suffix
                 _N_agents) with --agents other agents registered;
                 unregister_cpu_N_agents: the daemon's CPU time as register_cpu
  ping_rtt       the socket and JSON round trip alone
  step_ns        `with client.step(i): pass` minus an empty loop, per step,
                 the step ring written (the default); step_ns_no_ring the
                 same Client with its ring switched off, in alternate rounds;
                 over --steps steps, in this process (a registered Client);
                 step_cpu_ns*: the same in this thread's CPU time (steadier on
                 a shared machine); --client-repo: the same with another
                 checkout's client in the same run (before/after)
  tick_ms        the daemon's agent-side tick (new threads, moves, exclusive
                 CPUs) with --agents agents, as its status reports it, and
                 the tuner tick (sample, rates, plan, apply, drift)
  register_cpu   the daemon main thread's CPU time during each first
                 register (/proc/PID/schedstat before the request and after
                 the answer, each read once the thread sleeps: the kernel
                 brings a running thread's schedstat up to date only at a
                 switch or a scheduler tick, and the work a registration does
                 after its answer, its log line, would be left out): what a
                 registration costs the daemon, whatever else the machine
                 runs (round trips on a shared box are mostly other
                 processes' time slices). Read its p50: a round that meets
                 the agent tick, which runs in slices without sleeping, counts
                 the tick's slices too
  floor_*        with --floor: the same rounds against bench/regfloor.py, a
                 minimal server that makes only a registration's system calls
                 (no checks, no engine), right after the daemon's round: what
                 this machine allows, and so how much of the round trip is
                 agentlatd's own work
Targets: register p99 <= 500 us; step overhead <= 2 us.

    --daemon-repo PATH   run the daemon from another checkout (before/after)
    --rt                 run the benchmark and its daemon SCHED_FIFO 10, so
                         other load on a shared machine does not preempt them
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "tests"))
from regfloor import floor_server  # noqa: E402 - bench/ is on sys.path (this script's)
from support.sleepers import Sleepers  # noqa: E402 - after tests/ is on sys.path

POLICY = """
[daemon]
interval = 1.0
log_level = "info"
irqbalance = "ignore"
[cpus]
completion = "0"
home = "1"
[devices]
include = ["agentlatd-bench-none-*"]
exclude = []
[classes.interactive]
exclusive = "shared"
[tuning]
irq_affinity = false
rps = false
rps_flow_cnt = 0
xps = false
coalesce = false
threaded_napi = false
"""



def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


class Conn:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.n = 0

    def rtt(self, op: str, **fields: Any) -> tuple[float, dict[str, Any]]:
        self.n += 1
        line = (json.dumps({"v": 1, "op": op, "id": self.n, **fields}) + "\n").encode()
        t0 = time.perf_counter_ns()
        self.s.sendall(line)
        ans = self.f.readline()
        dt = (time.perf_counter_ns() - t0) / 1000.0
        out: dict[str, Any] = json.loads(ans)
        return dt, out

    def close(self) -> None:
        self.f.close()
        self.s.close()


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_us": round(pct(xs, 0.5), 1), "p99_us": round(pct(xs, 0.99), 1),
            "max_us": round(max(xs), 1), "mean_us": round(statistics.fmean(xs), 1)}


def cpu_ns(pid: int) -> int:
    """CPU time of process `pid`'s main thread (the daemon's socket loop), ns."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def idle_cpu_ns(pid: int, wait_s: float = 0.05) -> int:
    """cpu_ns() once `pid`'s main thread sleeps (its schedstat then holds all it
    ran), waiting at most `wait_s` (an agent tick runs its slices without
    sleeping): then the value as it stands."""
    end = time.monotonic() + wait_s
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state != "R" or time.monotonic() > end:
            return cpu_ns(pid)


def register_load(c: Conn, pids: list[int]) -> None:
    """Register each of `pids` as agent "load<pid>" over `c`, one at a time."""
    for pid in pids:
        _, ans = c.rtt("register", agent_id=f"load{pid}", pid=pid)
        assert ans["ok"], ans


def register_round(path: str, n: int, daemon_pid: int = 0,
                   cpu: list[float] | None = None, ucpu: list[float] | None = None
                   ) -> tuple[list[float], list[float], list[float]]:
    """Register, register again, unregister each of n fresh processes, one at a time.

    With `cpu`, the daemon main thread's CPU time (us) during each first
    register is appended to it (requests are sequential: that is what the
    registration cost the daemon, whatever else ran on the machine); with
    `ucpu`, the same for each unregister."""
    f = Sleepers(n)
    c = Conn(path)
    first, again, unreg = [], [], []
    try:
        for pid in f.pids:
            c0 = idle_cpu_ns(daemon_pid) if cpu is not None else 0
            dt, ans = c.rtt("register", agent_id=f"bench{pid}", pid=pid)
            if cpu is not None:
                cpu.append((idle_cpu_ns(daemon_pid) - c0) / 1000.0)
            assert ans["ok"], ans
            first.append(dt)
            dt, ans = c.rtt("register", agent_id=f"bench{pid}", pid=pid)
            assert ans["ok"], ans
            again.append(dt)
            c0 = idle_cpu_ns(daemon_pid) if ucpu is not None else 0
            dt, ans = c.rtt("unregister", pid=pid)
            if ucpu is not None:
                ucpu.append((idle_cpu_ns(daemon_pid) - c0) / 1000.0)
            assert ans["ok"], ans
            unreg.append(dt)
    finally:
        c.close()
        f.close()
    return first, again, unreg


def step_overhead(path: str, steps: int) -> dict[str, float]:
    """Per step, with the step ring and without, on ONE registered Client whose ring is
    switched off and on between rounds (alternating, so both share the machine's
    state). Not two Clients: the daemon keeps one registration per process, so two
    would displace each other, and each would spend part of the time unregistered,
    when step() takes its no-daemon path (no timing without a ring: nearly free).
    Wall time (the best of 6 rounds) and this thread's CPU time (time.thread_time_ns:
    what the step path itself costs, without the time slices other processes of a
    shared machine take from it)."""
    import time

    from agentlatd.client import Client
    c = Client("bench-steps", "normal", socket=path)
    assert c.enabled and c.ring is not None
    # the ring's hooks on the client (both spellings: --client-repo may be older)
    ring_on = {k: getattr(c, k) for k in ("_ring_words", "_ring_write") if hasattr(c, k)}
    ring_off = dict.fromkeys(ring_on)
    perf = time.perf_counter_ns
    cpu = time.thread_time_ns
    inf = float("inf")
    best = {"empty": [inf, inf], "ring": [inf, inf], "bare": [inf, inf]}

    def timed(name: str) -> None:
        for k, v in (ring_on if name == "ring" else ring_off).items():
            setattr(c, k, v)
        w0, c0 = perf(), cpu()
        if name == "empty":
            for _ in range(steps):
                pass
        else:
            for i in range(steps):
                with c.step(i):
                    pass
        w, cp = perf() - w0, cpu() - c0
        b = best[name]
        b[0], b[1] = min(b[0], w), min(b[1], cp)

    for r in range(6):
        timed("empty")
        for name in (("bare", "ring") if r % 2 else ("ring", "bare")):
            timed(name)
    for k, v in ring_on.items():
        setattr(c, k, v)
    reconnects = c.reconnects
    c.flush()
    c.unregister()

    def per(name: str, k: int) -> float:
        return round((best[name][k] - best["empty"][k]) / steps, 1)

    return {"steps": steps, "step_ns": per("ring", 0), "step_ns_no_ring": per("bare", 0),
            "step_cpu_ns": per("ring", 1), "step_cpu_ns_no_ring": per("bare", 1),
            "loop_ns": round(best["empty"][0] / steps, 1), "reconnects": reconnects}


def step_overhead_of(repo: pathlib.Path, path: str, steps: int) -> dict[str, float]:
    """step_overhead() with the client of another checkout, in a child process (one
    interpreter cannot import two agentlatd packages)."""
    code = ("import pathlib, sys, json\nsys.path.insert(0, sys.argv[1])\n"
            + inspect.getsource(step_overhead)
            + "\nprint(json.dumps(step_overhead(sys.argv[2], int(sys.argv[3]))))\n")
    out = subprocess.run([sys.executable, "-c", code, str(repo.resolve()), path, str(steps)],
                         check=True, capture_output=True, text=True).stdout
    res: dict[str, float] = json.loads(out.splitlines()[-1])
    return res


def start_daemon(repo: pathlib.Path, d: pathlib.Path, cli: list[str],
                 extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`python CLI run` of checkout `repo` with policy d/p.toml, state and socket in `d`,
    its output in d/log; returned once it answers a ping. When it does not within 20 s:
    SystemExit with its log, and `d` removed (the callers start it before their
    try/finally, so a daemon that never started left its directory on /dev/shm)."""
    sock = str(d / "s.sock")
    env = dict(os.environ, PYTHONPATH=str(repo.resolve()))
    with open(d / "log", "wb") as logf:
        dm = subprocess.Popen([sys.executable, *cli, "run", "--config", str(d / "p.toml"),
                               "--state-dir", str(d / "state"), "--socket", sock,
                               *(extra or [])],
                              # cwd: `python -m` (or -c) puts it first on sys.path, ahead
                              # of PYTHONPATH, so from this checkout it would run this one
                              env=env, cwd=str(repo.resolve()), stdin=subprocess.DEVNULL,
                              stdout=logf, stderr=subprocess.STDOUT)
    end = time.monotonic() + 20
    while True:
        try:
            c = Conn(sock)
            c.rtt("ping")
            c.close()
            return dm, sock
        except OSError:
            if time.monotonic() > end or dm.poll() is not None:
                dm.kill()
                dm.wait()
                log = (d / "log").read_text()
                shutil.rmtree(d, ignore_errors=True)
                raise SystemExit(log) from None
            time.sleep(0.05)


def stop_daemon(dm: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (it rolls back), its exit status; SIGKILL past `timeout` seconds."""
    dm.send_signal(signal.SIGTERM)
    try:
        return dm.wait(timeout)
    except subprocess.TimeoutExpired:
        dm.kill()
        return dm.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000, help="agents registered for the "
                                                             "loaded figures (default 1000)")
    ap.add_argument("--samples", type=int, default=300, help="registrations timed per round")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--exclusive", action="store_true",
                    help="interactive home CPUs exclusive, with one agent registered "
                         "throughout (steady state) and --victims sleeping processes as "
                         "the only tasks that may be moved (agentlatd/tools/bench/scoped.py)")
    ap.add_argument("--victims", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--daemon-repo", type=pathlib.Path, default=REPO,
                    help="the checkout whose agentlatd the daemon runs (default: this one)")
    ap.add_argument("--rt", action="store_true", help="SCHED_FIFO priority 10 (see above)")
    ap.add_argument("--client-repo", type=pathlib.Path, action="append", default=[],
                    help="also time step() with this checkout's client, in the same run "
                         "(before/after; repeat it to alternate, e.g. main, this, main)")
    ap.add_argument("--steps-only", action="store_true",
                    help="only the step figures (no registration rounds, no --agents load)")
    ap.add_argument("--floor", action="store_true",
                    help="also time the same rounds against bench/regfloor.py, a minimal "
                         "server making only a registration's system calls, in the same run "
                         "(the floor this machine sets; floor_*)")
    args = ap.parse_args()
    if args.rt:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # the daemon inherits it
    if os.geteuid() != 0:
        print("bench/agents.py: run as root (it restores other processes' nice/affinity)",
              file=sys.stderr)
        return 2
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-bench-",
                                      dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    (d / "p.toml").write_text(POLICY.replace('exclusive = "shared"', 'exclusive = "exclusive"')
                              if args.exclusive else POLICY)
    victims = Sleepers(args.victims) if args.exclusive else None
    # the daemon moves only the victims off the exclusive CPU: agentlatd/tools/bench/scoped.py
    # injects that scope; a checkout older than it took a hidden run option instead
    cli = ["-m", "agentlatd"]
    extra: list[str] = []
    if victims and (args.daemon_repo / "agentlatd" / "tools" / "bench" / "scoped.py").exists():
        cli = ["-m", "agentlatd.tools.bench.scoped", str(victims.p.pid)]
    elif victims:
        extra = ["--exclusive-scope-pid", str(victims.p.pid)]
    dm, sock = start_daemon(args.daemon_repo, d, cli, extra)
    out: dict[str, Any] = {"host_cpus": os.cpu_count(), "kernel": os.uname().release,
                           "exclusive": args.exclusive, "daemon": str(args.daemon_repo),
                           "rt": args.rt}
    try:
        c = Conn(sock)
        anchor = None
        if victims is not None:
            anchor = Sleepers(1)
            _, ans = c.rtt("register", agent_id="anchor", pid=anchor.pids[0])
            assert ans["ok"] and ans["result"]["exclusive"], ans
            time.sleep(0.5)
            _, st = c.rtt("status")
            out["tasks_moved"] = st["result"]["tasks_moved"]
        if args.steps_only:
            c.close()
            out["step"] = step_overhead(sock, args.steps)
            for i, repo in enumerate(args.client_repo):
                out[f"step_{i}_{repo}"] = step_overhead_of(repo, sock, args.steps)
            out["step_again"] = step_overhead(sock, args.steps)
        else:
            pings = [c.rtt("ping")[0] for _ in range(2000)]
            c.close()
            out["ping_rtt"] = summary(pings[200:])
            cpu: list[float] = []
            first, again, unreg = register_round(sock, args.samples, dm.pid, cpu)
            out["register_cpu_0_agents"] = summary(cpu)
            out["register_rtt_0_agents"] = summary(first)
            out["reregister_rtt"] = summary(again)
            out["unregister_rtt"] = summary(unreg)

            load = Sleepers(args.agents)
            c = Conn(sock)
            t0 = time.monotonic()
            register_load(c, load.pids)
            out[f"register_{args.agents}_sequential_s"] = round(time.monotonic() - t0, 3)
            cpu = []
            ucpu: list[float] = []
            first, _, unreg = register_round(sock, args.samples, dm.pid, cpu, ucpu)
            out[f"register_cpu_{args.agents}_agents"] = summary(cpu)
            out[f"register_rtt_{args.agents}_agents"] = summary(first)
            out[f"unregister_cpu_{args.agents}_agents"] = summary(ucpu)
            out[f"unregister_rtt_{args.agents}_agents"] = summary(unreg)
            if args.floor:  # right after the daemon's round, under the same load
                with floor_server() as fpath:
                    fc = Conn(fpath)
                    fpings = [fc.rtt("ping")[0] for _ in range(2000)]
                    fc.close()  # the floor serves one connection at a time
                    ffirst, _, funreg = register_round(fpath, args.samples)
                out["floor_ping_rtt"] = summary(fpings[200:])
                out["floor_register_rtt"] = summary(ffirst)
                out["floor_unregister_rtt"] = summary(funreg)
            agent_ticks, tuner_ticks = [], []
            for _ in range(8):
                time.sleep(1.0)
                _, st = c.rtt("status")
                agent_ticks.append(st["result"]["agent_tick_ms"])
                tuner_ticks.append(st["result"].get("tuner_tick_ms") or 0.0)
            out[f"agent_tick_ms_{args.agents}_agents"] = {
                "p50": round(statistics.median(agent_ticks), 2), "max": round(max(agent_ticks), 2)}
            out[f"tuner_tick_ms_{args.agents}_agents"] = {
                "p50": round(statistics.median(tuner_ticks), 2), "max": round(max(tuner_ticks), 2)}
            out["journal_entries"] = st["result"]["journal_entries"]
            c.close()
            load.close()
            out["step"] = step_overhead(sock, args.steps)
            for i, repo in enumerate(args.client_repo):
                out[f"step_{i}_{repo}"] = step_overhead_of(repo, sock, args.steps)
            if anchor is not None:
                anchor.close()
    finally:
        dm.send_signal(signal.SIGTERM)
        out["daemon_rc"] = dm.wait(60)
        if victims is not None:
            victims.close()
        shutil.rmtree(d, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:34} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
