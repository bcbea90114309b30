"""`agentlatd trace` attributes "block completion -> run" only to wakeups from the
context that completed the block request.

Real kernel, real devices the test makes: a loop device over a file (buffered, so its
worker completes requests in process context, as a polled queue or a threaded IRQ
does) written with O_DIRECT by one thread of the traced process, while another thread
of it only receives UDP on loopback. Root and bpftrace needed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="tracing and losetup need root"),
              pytest.mark.skipif(shutil.which("bpftrace") is None,
                                 reason="bpftrace not installed (apt-get install bpftrace)"),
              pytest.mark.skipif(shutil.which("losetup") is None, reason="no losetup")]

AGENT = r"""
import mmap, os, socket, sys, threading
loop, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
def writer():
    print("writer", threading.get_native_id(), flush=True)
    fd = os.open(loop, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 64 * 1024)  # page-aligned, as O_DIRECT wants
    while True:
        os.pwrite(fd, buf, 0)
threading.Thread(target=writer, daemon=True).start()
print("udp", threading.get_native_id(), flush=True)
while True:
    s.recvfrom(100)
"""


def test_trace_attributes_block_completions_to_a_udp_only_agent() -> None:
    with tempfile.TemporaryDirectory() as d:
        img = os.path.join(d, "img")
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        loop = subprocess.run(["losetup", "-f", "--show", img], capture_output=True, text=True,
                              check=True).stdout.strip()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        agent = subprocess.Popen([sys.executable, "-c", AGENT, loop, str(port)],
                                 stdout=subprocess.PIPE, text=True)
        stop = threading.Event()

        def send() -> None:  # ~1000 datagrams/s, bounded by the test's lifetime
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                while not stop.is_set():
                    s.sendto(b"x", ("127.0.0.1", port))
                    time.sleep(0.001)

        sender = threading.Thread(target=send, daemon=True)
        try:
            assert agent.stdout is not None
            tids = dict(agent.stdout.readline().split() for _ in range(2))
            udp, writer = int(tids["udp"]), int(tids["writer"])
            sender.start()
            p = subprocess.run([sys.executable, "-m", "agentlatd", "trace", "--pid", str(agent.pid),
                                "--duration", "3", "--method", "bpftrace", "--json"],
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            doc = json.loads(p.stdout)
        finally:
            stop.set()
            agent.kill()
            agent.wait()
            subprocess.run(["losetup", "-d", loop], check=False)
        woken = {w["tid"]: w["count"] for w in doc["wakeups"]}
        assert woken.get(udp, 0) > 300, doc["wakeups"]  # the UDP thread was traced
        blk = {}
        for r in doc["block_to_run"]:
            blk[r["tid"]] = blk.get(r["tid"], 0) + r["count"]
        assert udp not in blk, doc["block_to_run"]  # it does no block I/O at all
        assert blk.get(writer, 0) > 0, doc["block_to_run"]  # the writer's are still seen
