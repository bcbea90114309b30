"""The agent loop in Python: the path a Python agent takes.

Same step as the C probe's agent mode: a UDP request/reply to the tool server
(the probe in `serve` mode, in the tool namespace), a 4 KiB O_DIRECT read at a
random offset, a timer wait. Run inside the agent namespace:

    ip netns exec NS python -m agentlatd.tools.bench.pyagent --dst IP --port P \
        --bind IP --file F --seconds S --timer-ns N --out FILE

With --ring N (and no --socket) each step is written into a step ring, as
the Client does (agentlatd/tools/bench/causes.py reads it). With --socket
(configuration D) it registers itself with agentlatd.client.Client and
wraps each step in `with client.step()`: the
Python client path, timing overhead included.

Protocol as the probe's: "ready <pid>", wait for "go", then one line per step
to --out ("<net_ns> <disk_ns> <timer_ns> <total_ns>") and "steps N S lost L".
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

from agentlatd.client import Client
from agentlatd.steps.ring import RingWriter

BLOCK = 4096


@contextlib.contextmanager
def _no_step(step_id: object = None) -> Iterator[None]:
    yield


def _ring_step(capacity: int) -> Callable[[object], contextlib.AbstractContextManager[None]]:
    ring = RingWriter(capacity)
    tid = threading.get_native_id()
    clock = time.monotonic_ns

    @contextlib.contextmanager
    def step(step_id: object = None) -> Iterator[None]:
        t0 = clock()
        yield
        ring.write(step_id, tid, t0, clock())

    return step


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pyagent")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--timer-ns", type=int, default=50_000)
    p.add_argument("--out", required=True)
    p.add_argument("--socket", help="agentlatd socket: register with agentlatd.client.Client "
                                    "and time each step with client.step()")
    p.add_argument("--agent-id", default=f"bench-py-agent-{os.getpid()}")
    p.add_argument("--ring", type=int, default=0,
                   help="without --socket: write each step into a step ring of N records "
                        "(the ring the Client writes; agentlatd/steps/ring.py)")
    p.add_argument("--reads", type=int, default=1,
                   help="0: start without the disk read; SIGUSR2 toggles it (causes.py)")
    a = p.parse_args(argv)
    reads = [bool(a.reads)]

    def toggle_reads(_sig: int, _frame: object) -> None:
        reads[0] = not reads[0]

    signal.signal(signal.SIGUSR2, toggle_reads)
    client = None
    if a.socket:
        client = Client(a.agent_id, "interactive", socket=a.socket)
    step: Callable[[object], contextlib.AbstractContextManager[None]] = (
        client.step if client is not None else _no_step)
    if client is None and a.ring:
        step = _ring_step(a.ring)

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, 0))
    s.connect((a.dst, a.port))
    s.settimeout(1.0)
    fd = os.open(a.file, os.O_RDONLY | os.O_DIRECT)
    nblocks = os.lseek(fd, 0, os.SEEK_END) // BLOCK  # a block device's st_size is 0
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    rng = random.Random(os.getpid())
    timer_s = a.timer_ns / 1e9
    rec: list[tuple[int, int, int, int]] = []
    req = bytearray(64)

    print(f"ready {os.getpid()}", flush=True)
    if not sys.stdin.readline().startswith("go"):
        return 1
    clock = time.monotonic_ns
    t_start = clock()
    end = t_start + int(a.seconds * 1e9)
    lost = 0
    n = 0
    while n < a.steps and clock() < end:
        with step(n):
            t0 = clock()
            seq = n.to_bytes(8, "little")
            req[:8] = seq
            s.send(req)
            try:
                while True:  # skip a late reply to an earlier, timed-out step
                    rep = s.recv(2048)
                    if rep[:8] == seq:
                        break
            except TimeoutError:
                lost += 1
                continue
            t1 = clock()
            if reads[0]:
                os.preadv(fd, [buf], rng.randrange(nblocks) * BLOCK)
            t2 = clock()
            time.sleep(timer_s)
            t3 = clock()
        rec.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        n += 1
    secs = (clock() - t_start) / 1e9
    if client is not None:
        client.close()
    with open(a.out, "w") as f:
        f.write("".join(f"{r[0]} {r[1]} {r[2]} {r[3]}\n" for r in rec))
    print(f"steps {n} {secs:.6f} lost {lost}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
