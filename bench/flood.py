"""Benchmark: one peer uid floods the socket; how long do the others wait?

    sudo .venv/bin/python bench/flood.py                        # this checkout
    sudo .venv/bin/python bench/flood.py --compare /work/main   # and another, side by side

What it runs: a real `agentlatd run` (state directory and socket on /dev/shm,
a policy that steers no device, interactive home CPUs "shared": nothing but
the benchmark's own processes is touched), then for --seconds seconds, at once:

  flood    uid 65534 (nobody), --conns connections (16: the per-uid connection
           limit with this policy's max_clients = 128, max(16, 128 / 8)),
           each pipelining --op requests as fast as the socket takes them
           (one sender and one reader thread per connection, --procs
           processes); counted: answers, and of those rate_limited.
  polite   uid 60001, group nogroup: one connection sending ping every 10 ms
           (ping_rtt), and every 100 ms a fresh connection: connect + ping
           (fresh_rtt; a connect or answer taking over 5 s is a failure), then
           register its own process and unregister it (register_rtt).

Reported: the polite client's p50/p99/max, failures, the daemon's CPU share
over the window (/proc/PID/stat utime+stime), flood answers per second.
Target: polite ping p99 < 50 ms while one uid floods.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from agents import POLICY as AGENTS_POLICY  # noqa: E402 - bench/ is on sys.path
from agents import pct as agents_pct  # noqa: E402
from agents import stop_daemon  # noqa: E402

FLOOD_UID = 65534
POLITE_UID = 60001
NOGROUP = 65534

# bench/agents.py's policy (steers no device), the socket open to the polite uid's
# group, and max_clients 128: the per-uid connection limit is max(16, 128 / 8)
POLICY = AGENTS_POLICY.replace('irqbalance = "ignore"\n',
                               'irqbalance = "ignore"\nsocket_group = "nogroup"\nmax_clients = 128\n')


def pct(xs: list[float], q: float) -> float:
    return agents_pct(xs, q) if xs else float("nan")


def summary_ms(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_ms": round(pct(xs, 0.5), 2), "p99_ms": round(pct(xs, 0.99), 2),
            "max_ms": round(max(xs), 2) if xs else float("nan")}


def become(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime (fields 14, 15)


# -- the flooding uid -----------------------------------------------------------


def flood_proc(sock_path: str, conns: int, op: str, until: float, out_fd: int) -> None:
    become(FLOOD_UID, NOGROUP)
    counts = {"sent": 0, "answers": 0, "rate_limited": 0, "refused": 0}
    lock = threading.Lock()
    line = (json.dumps({"v": 1, "op": op, "id": 1}) + "\n").encode()
    batch = line * 256

    def one() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(5.0)
            s.connect(sock_path)
        except OSError:
            with lock:
                counts["refused"] += 1
            return
        s.settimeout(0.5)

        def reader() -> None:
            while time.monotonic() < until + 1:
                try:
                    data = s.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                n, r = data.count(b"\n"), data.count(b'"rate_limited"')
                with lock:
                    counts["answers"] += n
                    counts["rate_limited"] += r

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        while time.monotonic() < until:
            try:
                s.sendall(batch)
            except TimeoutError:
                continue
            except OSError:
                break
            with lock:
                counts["sent"] += 256
        t.join(2.0)
        s.close()

    ts = [threading.Thread(target=one, daemon=True) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(until - time.monotonic() + 5)
    os.write(out_fd, json.dumps(counts).encode())
    os._exit(0)


# -- the polite uid ---------------------------------------------------------------


class Conn:
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.n = 0

    def rtt(self, op: str, **fields: Any) -> tuple[float, dict[str, Any]]:
        self.n += 1
        msg = (json.dumps({"v": 1, "op": op, "id": self.n, **fields}) + "\n").encode()
        t0 = time.perf_counter()
        self.s.sendall(msg)
        ans = self.f.readline()
        dt = (time.perf_counter() - t0) * 1000.0
        return dt, json.loads(ans) if ans else {}

    def close(self) -> None:
        self.f.close()
        self.s.close()


def polite_proc(sock_path: str, start: float, until: float, out_fd: int) -> None:
    become(POLITE_UID, NOGROUP)
    res: dict[str, Any] = {"ping": [], "fresh": [], "register": [], "failures": [],
                           "rate_limited": 0}
    while time.monotonic() < start:
        time.sleep(0.005)
    try:
        c = Conn(sock_path)
    except OSError as e:
        res["failures"].append(f"connect: {e}")
        os.write(out_fd, json.dumps(res).encode())
        os._exit(0)
    next_fresh = time.monotonic()
    while time.monotonic() < until:
        try:
            dt, ans = c.rtt("ping")
            res["ping"].append(dt)
            if not ans.get("ok"):
                res["rate_limited"] += 1
        except OSError as e:
            res["failures"].append(f"ping: {e}")
            with contextlib.suppress(OSError):
                c = Conn(sock_path)
        now = time.monotonic()
        if now >= next_fresh:
            next_fresh = now + 0.1
            t0 = time.perf_counter()
            try:
                f = Conn(sock_path)
                _, ans = f.rtt("ping")
                res["fresh"].append((time.perf_counter() - t0) * 1000.0)
                dt, ans = f.rtt("register", agent_id=f"polite{os.getpid()}", pid=os.getpid())
                if ans.get("ok"):
                    res["register"].append(dt)
                    f.rtt("unregister", pid=os.getpid())
                else:
                    res["failures"].append(f"register: {ans.get('error')}")
                f.close()
            except OSError as e:
                res["failures"].append(f"fresh connection: {e}")
        time.sleep(0.01)
    c.close()
    os.write(out_fd, json.dumps(res).encode())
    os._exit(0)


# -- one run ---------------------------------------------------------------------


def run_one(repo: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-flood-", dir=base))
    os.chmod(d, 0o755)
    (d / "p.toml").write_text(POLICY)
    sock = str(d / "s.sock")
    env = dict(os.environ, PYTHONPATH=str(repo))
    with open(d / "log", "wb") as logf:
        dm = subprocess.Popen([sys.executable, "-m", "agentlatd", "run", "--config",
                               str(d / "p.toml"), "--state-dir", str(d / "state"),
                               "--socket", sock], env=env, cwd=str(repo),
                              stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {"daemon": str(repo)}
    kids: list[tuple[int, int]] = []
    try:
        end = time.monotonic() + 30
        while True:
            try:
                Conn(sock, 1.0).close()
                break
            except OSError:
                if time.monotonic() > end or dm.poll() is not None:
                    raise SystemExit((d / "log").read_text()) from None
                time.sleep(0.05)
        start = time.monotonic() + 1.0  # the flood is running when the polite client starts
        until = start + args.seconds
        per = [args.conns // args.procs + (1 if i < args.conns % args.procs else 0)
               for i in range(args.procs)]
        for n in per:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                flood_proc(sock, n, args.op, until, w)
            os.close(w)
            kids.append((pid, r))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            polite_proc(sock, start, until, w)
        os.close(w)
        polite = (pid, r)
        while time.monotonic() < start:
            time.sleep(0.01)
        t0, c0 = time.monotonic(), cpu_ticks(dm.pid)
        while time.monotonic() < until:
            time.sleep(0.05)
        t1, c1 = time.monotonic(), cpu_ticks(dm.pid)
        out["daemon_cpu_pct"] = round(100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0), 1)

        def collect(pid: int, fd: int) -> dict[str, Any]:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            os.close(fd)
            os.waitpid(pid, 0)
            got: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
            return got

        pol = collect(*polite)
        fl = [collect(pid, fd) for pid, fd in kids]
        kids = []
        out["polite_ping"] = summary_ms(pol.get("ping", []))
        out["polite_fresh_connect_ping"] = summary_ms(pol.get("fresh", []))
        out["polite_register"] = summary_ms(pol.get("register", []))
        out["polite_failures"] = len(pol.get("failures", []))
        out["polite_failure_examples"] = pol.get("failures", [])[:3]
        out["polite_rate_limited"] = pol.get("rate_limited", 0)
        secs = args.seconds
        out["flood_answers_per_s"] = round(sum(f.get("answers", 0) for f in fl) / secs)
        out["flood_rate_limited_per_s"] = round(sum(f.get("rate_limited", 0) for f in fl) / secs)
        out["flood_connections_refused"] = sum(f.get("refused", 0) for f in fl)
        out["daemon_alive"] = dm.poll() is None
    finally:
        for pid, fd in kids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
        out["daemon_rc"] = stop_daemon(dm)
        shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--conns", type=int, default=16, help="flooding connections (one uid)")
    ap.add_argument("--procs", type=int, default=2, help="processes they are spread over")
    ap.add_argument("--op", default="status", help="the op the flood pipelines")
    ap.add_argument("--compare", type=pathlib.Path, action="append", default=[],
                    help="another checkout whose daemon runs the same benchmark first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/flood.py: run as root (it runs the daemon and switches uids)",
              file=sys.stderr)
        return 2
    runs = [run_one(p.resolve(), args) for p in args.compare] + [run_one(REPO, args)]
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    keys = [k for k in runs[-1] if k != "polite_failure_examples"]
    w = max(len(k) for k in keys)
    for k in keys:
        print(f"{k:{w}}  " + "  |  ".join(str(r.get(k)) for r in runs))
    for r in runs:
        if r.get("polite_failure_examples"):
            print(f"{r['daemon']}: e.g. {r['polite_failure_examples']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
