#!/usr/bin/env python3
"""Soak: a real daemon under agent churn and noise for N minutes.

    sudo .venv/bin/python bench/soak.py                  # 10 minutes, 200 agents
    sudo .venv/bin/python bench/soak.py --minutes 1      # a short check
    sudo .venv/bin/python bench/soak.py --minutes 30 --agents 400 --json out.json

What runs (everything the soak creates is removed at the end, in finally):
  - a network namespace of its own with a veth pair and lo up (IPv6 off);
  - `agentlatd run` inside it (ip netns exec), socket and state directory on
    /dev/shm, with a policy that steers only that veth pair's RPS/XPS (no IRQ,
    no sysctl, no host device) and keeps interactive home CPUs "shared" (no
    host task is ever moved);
  - --agents agents alive at any time, in churn: short-lived `sleep`
    processes and multi-threaded Python processes registered by pid (classes
    interactive/normal/background), real agentlatd.client.Client processes
    that register themselves and step, and a few witnesses that live through
    the whole run; every second each proxy agent gets a step report; agents
    leave by explicit unregister, by being killed, or by exiting on their own;
  - noise: a CPU hog with a bounded duty cycle (nice 19) and a UDP flood over
    the namespace's loopback at a bounded packet rate.

Checked at the end (exit status 1 when one fails):
  - no leaked registration: the daemon's agent list is empty after the churn
    stops (witnesses excepted until SIGTERM), its journal holds no task entry;
  - file descriptors: /proc/<daemon>/fd count at the end <= its count before
    any agent + one pidfd per witness + FD_SLACK (2);
  - memory: VmRSS at the end <= VmRSS after warm-up + --rss-bound-mib, and
    its growth rate under churn after warm-up <= --rss-slope-kib-min;
  - rollback: SIGTERM -> exit 0, journal removed, every sysfs value of the
    veths byte for byte as before, the witnesses' affinity/nice/ioprio back.
Samples (every 10 s: RSS, fds, agents, connections, journal entries, tick ms,
register round trip) go to --json when given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
FD_SLACK = 2

POLICY = """
[daemon]
interval = 0.5
log_level = "info"
socket_group = "nogroup"
irqbalance = "ignore"
max_clients = 4096

[cpus]
completion = "{completion}"
home = "{home}"

[devices]
include = ["{include}"]
exclude = []

[tuning]
irq_affinity = false
rps = true
rps_flow_cnt = 0
xps = true
coalesce = false
threaded_napi = false

[classes.interactive]
exclusive = "shared"

[classes.background]
to_completion = true
nice = 10
ioprio = "be7"
"""

THREADED = "import threading,time,sys\n" \
    "[threading.Thread(target=time.sleep,args=(3600,),daemon=True).start() for _ in range(4)]\n" \
    "time.sleep(float(sys.argv[1]))\n"

CLIENT = r"""
import os, random, signal, sys, time
from agentlatd.client import Client
sock, aid, life = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = Client(aid, "interactive", socket=sock, flush_interval=0.5, retry_interval=0.5)
end = time.monotonic() + life
i = 0
while time.monotonic() < end:
    with c.step(i):
        sum(range(200))
    i += 1
    time.sleep(0.002)
if random.random() < 0.5:
    c.unregister()
"""

HOG = r"""
import os, sys, time
os.nice(19)
busy, idle, end = float(sys.argv[1]), float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    t = time.monotonic() + busy
    while time.monotonic() < t:
        pass
    time.sleep(idle)
"""

UDP = r"""
import socket, sys, time
rate, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 0)); rx.setblocking(False)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
addr, n, t0 = rx.getsockname(), 0, time.monotonic()
while time.monotonic() < end:
    tx.sendto(b"x" * 200, addr); n += 1
    try:
        while True: rx.recv(2048)
    except BlockingIOError:
        pass
    ahead = n / rate - (time.monotonic() - t0)
    if ahead > 0: time.sleep(ahead)
print(n)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


def status_of(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            out[k] = v.strip()
    return out


def rss_kib(pid: int) -> int:
    return int(status_of(pid)["VmRSS"].split()[0])


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def ioprio(pid: int) -> str:
    from agentlatd.sample.tasks import get_ioprio
    return get_ioprio(pid)


class Api:
    """One persistent connection to the daemon (root: may act on any pid)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""
        self.n = 0

    def _conn(self) -> socket.socket:
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(self.path)
            self.sock, self.buf = s, b""
        return self.sock

    def many(self, reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pipelined requests; the answers in order."""
        if not reqs:
            return []
        s = self._conn()
        data = b""
        for r in reqs:
            self.n += 1
            data += json.dumps({"v": 1, "id": self.n, **r}).encode() + b"\n"
        try:
            s.sendall(data)
            out = []
            while len(out) < len(reqs):
                while b"\n" not in self.buf:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        raise ConnectionResetError("daemon closed the connection")
                    self.buf += chunk
                line, _, self.buf = self.buf.partition(b"\n")
                out.append(json.loads(line))
            return out
        except OSError:
            self.close()
            raise

    def one(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.many([{"op": op, **fields}])[0]

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class Agent:
    def __init__(self, kind: str, proc: subprocess.Popen[bytes], aid: str, klass: str,
                 life: float) -> None:
        self.kind = kind  # "sleep" | "threads" | "client" | "witness"
        self.proc = proc
        self.aid = aid
        self.klass = klass
        self.born = time.monotonic()
        self.dies = self.born + life
        self.registered = kind == "client"  # clients register themselves


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="churn duration (default 10)")
    ap.add_argument("--agents", type=int, default=200, help="agents alive at once (default 200)")
    ap.add_argument("--clients", type=int, default=12,
                    help="of which real agentlatd.client processes (default 12)")
    ap.add_argument("--churn", type=float, default=8.0,
                    help="agents replaced per second (default 8)")
    ap.add_argument("--rss-bound-mib", type=float, default=32.0,
                    help="allowed VmRSS growth after warm-up (default 32 MiB)")
    ap.add_argument("--rss-slope-kib-min", type=float, default=100.0,
                    help="allowed VmRSS growth rate under churn after warm-up, KiB/min "
                         "(default 100; checked with >= 6 samples)")
    ap.add_argument("--hog-duty", type=float, default=0.3, help="CPU hog duty cycle (0..1)")
    ap.add_argument("--udp-rate", type=int, default=2000, help="loopback UDP packets/s")
    ap.add_argument("--json", metavar="FILE", help="write samples and the verdict here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (network namespace, other processes' affinity)", file=sys.stderr)
        return 2
    if not {0, 1} <= os.sched_getaffinity(0):
        print("soak: needs CPUs 0 and 1", file=sys.stderr)
        return 2
    rnd = random.Random(args.seed)
    tag = secrets.token_hex(3)
    ns = f"soak-{tag}"
    devs = (f"sa{tag}", f"sb{tag}")
    work = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-soak-",
                                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen[Any]] = []
    agents: dict[int, Agent] = {}
    witnesses: list[subprocess.Popen[bytes]] = []
    daemon: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"args": vars(args), "samples": [], "checks": {}}
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    sockp = str(work / "agentlatd.sock")
    counts = {"registered": 0, "register_refused": 0, "unregistered": 0, "killed": 0,
              "exited": 0, "steps": 0, "clients": 0}
    reg_rtt: list[float] = []
    try:
        # -- the namespace and its devices ------------------------------------------
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "add", devs[0], "type", "veth", "peer", "name", devs[1])
        for d in (*devs, "lo"):
            sh("ip", "-n", ns, "link", "set", d, "up")
        snap_cmd = ["ip", "netns", "exec", ns, sys.executable,
                    str(REPO / "tests/apply/sysfs_snapshot.py"), *devs]
        before = json.loads(sh(*snap_cmd).stdout)

        # -- the daemon ------------------------------------------------------------
        (work / "agentlatd.toml").write_text(POLICY.format(completion="0", home="1",
                                                           include=f"s[ab]{tag}"))
        logf = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed at the end
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "agentlatd", "run", "--config",
             str(work / "agentlatd.toml"), "--state-dir", str(work / "state"), "--socket",
             sockp], stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(work))
        api = Api(sockp)
        end = time.monotonic() + 30
        while True:
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited: {(work / 'daemon.log').read_text()[-2000:]}")
            try:
                if api.one("ping")["ok"]:
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                raise SystemExit("daemon did not answer within 30 s")
            time.sleep(0.1)
        dpid = daemon.pid  # ip netns exec execs: this is the daemon
        log(f"daemon pid {dpid} in netns {ns}; VmRSS {rss_kib(dpid)} KiB, {fds(dpid)} fds")
        fds_start = fds(dpid)

        # -- noise -------------------------------------------------------------------
        total_s = args.minutes * 60 + 60
        busy = 0.02 * args.hog_duty / max(0.01, 1 - args.hog_duty)
        procs.append(subprocess.Popen([sys.executable, "-c", HOG, str(busy), "0.02",
                                       str(total_s)]))
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", UDP,
                                       str(args.udp_rate), str(total_s)],
                                      stdout=subprocess.PIPE))

        # -- witnesses: registered through the whole run, restored only by the rollback
        for _ in range(3):
            witnesses.append(subprocess.Popen([sys.executable, "-c", THREADED, "36000"]))
        time.sleep(0.3)
        w_orig = {w.pid: (os.sched_getaffinity(w.pid), os.getpriority(os.PRIO_PROCESS, w.pid),
                          ioprio(w.pid)) for w in witnesses}
        for w, klass in zip(witnesses, ("interactive", "background", "normal"), strict=True):
            a = api.one("register", agent_id=f"witness-{klass}", pid=w.pid, latency_class=klass)
            assert a["ok"], a

        def spawn(kind: str) -> None:
            life = rnd.uniform(2.0, 20.0)
            klass = rnd.choices(["interactive", "normal", "background"], [6, 2, 2])[0]
            if kind == "client":
                aid = f"client-{counts['clients']}"
                counts["clients"] += 1
                p = subprocess.Popen([sys.executable, "-c", CLIENT, sockp, aid, str(life)],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                klass = "interactive"
            elif kind == "threads":
                p = subprocess.Popen([sys.executable, "-c", THREADED, str(life)])
                aid = f"thr-{p.pid}"
            else:
                p = subprocess.Popen(["sleep", f"{life:.2f}"])
                aid = f"sleep-{p.pid}"
            agents[p.pid] = Agent(kind, p, aid, klass, life)

        def register_new() -> None:
            todo = [a for a in agents.values() if not a.registered]
            if not todo:
                return
            t0 = time.monotonic()
            answers = api.many([{"op": "register", "agent_id": a.aid, "pid": a.proc.pid,
                                 "latency_class": a.klass} for a in todo])
            reg_rtt.append((time.monotonic() - t0) / len(todo))
            for a, ans in zip(todo, answers, strict=True):
                a.registered = True
                if ans["ok"]:
                    counts["registered"] += 1
                else:
                    counts["register_refused"] += 1  # exited before its registration
                    if ans["error"]["code"] != "no_such_process":
                        raise SystemExit(f"unexpected refusal: {ans}")

        def retire(a: Agent, how: str) -> None:
            if how == "unregister" and a.kind != "client":
                ans = api.one("unregister", pid=a.proc.pid)
                if ans["ok"]:
                    counts["unregistered"] += 1
            if a.proc.poll() is None:
                a.proc.kill()
                counts["killed"] += 1
            else:
                counts["exited"] += 1
            a.proc.wait()
            agents.pop(a.proc.pid, None)

        def fill() -> None:
            n_clients = sum(1 for a in agents.values() if a.kind == "client")
            while len(agents) < args.agents:
                if n_clients < args.clients:
                    spawn("client")
                    n_clients += 1
                else:
                    spawn("threads" if rnd.random() < 0.2 else "sleep")
            register_new()

        def sample(phase: str) -> dict[str, Any]:
            st = api.one("status")["result"]
            s = {"t": round(time.monotonic() - t_start, 1), "phase": phase,
                 "rss_kib": rss_kib(dpid), "fds": fds(dpid), "agents": st["agents"],
                 "connections": st["connections"], "journal_entries": st["journal_entries"],
                 "tick_ms": st.get("tuner_tick_ms", st.get("tick_ms")),
                 "agent_tick_ms": st.get("agent_tick_ms"),
                 "reg_rtt_ms": round(1000 * statistics.median(reg_rtt[-50:]), 3) if reg_rtt
                 else None}
            result["samples"].append(s)
            log(" ".join(f"{k}={v}" for k, v in s.items()))
            return s

        # -- churn ---------------------------------------------------------------------
        t_start = time.monotonic()
        t_end = t_start + args.minutes * 60
        warm_until = t_start + min(60.0, args.minutes * 60 * 0.2)
        warm: dict[str, Any] | None = None
        next_sample = t_start
        next_step = t_start
        budget = 0.0
        last = t_start
        fill()
        while time.monotonic() < t_end:
            now = time.monotonic()
            if daemon.poll() is not None:
                raise SystemExit(f"daemon died: {(work / 'daemon.log').read_text()[-3000:]}")
            # processes that ended on their own
            for a in [a for a in agents.values() if a.proc.poll() is not None]:
                retire(a, "exit")
            # churn: retire `churn` per second, by unregister or kill
            budget += (now - last) * args.churn
            last = now
            live = [a for a in agents.values() if a.kind != "client"]
            while budget >= 1 and live:
                budget -= 1
                a = live.pop(rnd.randrange(len(live)))
                retire(a, rnd.choice(["unregister", "kill"]))
            fill()
            if now >= next_step:  # every second: a step report for each proxy agent
                next_step = now + 1.0
                reqs = []
                for a in agents.values():
                    if a.kind in ("sleep", "threads") and a.registered:
                        k = rnd.randint(1, 20)
                        reqs.append({"op": "step", "pid": a.proc.pid, "count": k,
                                     "samples_ns": [rnd.randint(1000, 5_000_000)
                                                    for _ in range(k)]})
                for ans in api.many(reqs):
                    if ans["ok"]:
                        counts["steps"] += 1
                    elif ans["error"]["code"] != "not_registered":  # it just exited
                        raise SystemExit(f"unexpected step answer: {ans}")
            if now >= next_sample:
                next_sample = now + 10.0
                s = sample("churn")
                if warm is None and now >= warm_until:
                    warm = s
            time.sleep(0.05)
        if warm is None:
            warm = sample("churn")

        # -- drain: every churn agent leaves -----------------------------------------------
        log("churn over: retiring every agent")
        for a in list(agents.values()):
            retire(a, "kill")
        deadline = time.monotonic() + 30
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = api.one("agents")["result"]
            if sorted(r["agent_id"] for r in rows) == sorted(
                    f"witness-{k}" for k in ("interactive", "background", "normal")):
                break
            time.sleep(0.2)
        time.sleep(1.0)
        api.close()
        api = Api(sockp)
        final = sample("drained")
        # the snapshot AND its append log (journal.json alone misses every record
        # appended since the last compaction: removed entries looked leaked)
        sys.path.insert(0, str(REPO))
        from agentlatd.apply import journal_read
        jr = journal_read.read_json(str(work / "state" / "journal.json")) or {"entries": []}
        task_entries = [e for e in jr["entries"] if e["knob"].startswith(("task.", "cpu."))]
        witness_prefixes = tuple(f"{w.pid}:" for w in witnesses)
        leaked_entries = [e for e in task_entries if not e["target"].startswith(witness_prefixes)]
        checks = result["checks"]
        checks["no_leaked_registrations"] = {
            "ok": len(rows) == 3, "agents_left": [r["agent_id"] for r in rows]}
        checks["no_leaked_journal_entries"] = {
            "ok": not leaked_entries, "leaked": leaked_entries[:5],
            "device_entries": sum(1 for e in jr["entries"] if e not in task_entries)}
        # left open at the end: what it had before any agent, plus one pidfd per witness
        checks["fds"] = {"ok": final["fds"] <= fds_start + len(witnesses) + FD_SLACK and
                         final["connections"] <= 1,
                         "start": fds_start, "during": warm["fds"], "final": final["fds"],
                         "bound": fds_start + len(witnesses) + FD_SLACK}
        # growth rate under churn (least squares over the samples after warm-up): a
        # leak per registration shows here long before it reaches the bound above
        pts = [(s["t"], s["rss_kib"]) for s in result["samples"]
               if s["phase"] == "churn" and s["t"] >= warm["t"]]
        slope = None
        if len(pts) >= 6:
            mt = statistics.fmean(t for t, _ in pts)
            mr = statistics.fmean(r for _, r in pts)
            slope = 60 * sum((t - mt) * (r - mr) for t, r in pts) / sum((t - mt) ** 2
                                                                        for t, _ in pts)
        checks["memory"] = {"ok": final["rss_kib"] <= warm["rss_kib"] + args.rss_bound_mib * 1024
                            and (slope is None or slope <= args.rss_slope_kib_min),
                            "warm_kib": warm["rss_kib"], "final_kib": final["rss_kib"],
                            "max_kib": max(s["rss_kib"] for s in result["samples"]),
                            "bound_mib": args.rss_bound_mib,
                            "slope_kib_per_min": None if slope is None else round(slope, 1),
                            "slope_bound": args.rss_slope_kib_min}

        # -- rollback ------------------------------------------------------------------
        api.close()
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(60)
        logf.close()
        after = json.loads(sh(*snap_cmd).stdout)
        diff = sorted(f"{d}/{k}" for d in before for k in before[d].keys() | after[d].keys()
                      if before[d].get(k) != after[d].get(k))
        w_now = {w.pid: (os.sched_getaffinity(w.pid), os.getpriority(os.PRIO_PROCESS, w.pid),
                         ioprio(w.pid)) for w in witnesses}
        checks["rollback"] = {"ok": rc == 0 and not diff and w_now == w_orig and
                              not (work / "state" / "journal.json").exists(),
                              "exit": rc, "sysfs_diff": diff[:10],
                              "witnesses_restored": w_now == w_orig}
        result["counts"] = counts
        ok = all(c["ok"] for c in checks.values())
        result["ok"] = ok
        log(f"counts: {counts}")
        for name, c in checks.items():
            log(f"{'PASS' if c['ok'] else 'FAIL'} {name}: "
                + ", ".join(f"{k}={v}" for k, v in c.items() if k != "ok"))
        return 0 if ok else 1
    finally:
        for a in agents.values():
            with contextlib.suppress(OSError):
                a.proc.kill()
            with contextlib.suppress(Exception):
                a.proc.wait(5)
        for p in [*procs, *witnesses]:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
            with contextlib.suppress(Exception):
                p.communicate(timeout=5)
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        sh("ip", "netns", "del", ns, check=False)
        if args.json:
            with contextlib.suppress(OSError):
                (work / "daemon.log").replace(pathlib.Path(args.json).with_suffix(".daemon.log"))
            pathlib.Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
