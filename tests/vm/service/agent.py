"""A multi-threaded agent for the service test (tests/vm/service/guest_service_test.py).

    /usr/bin/python3 -I agent.py OUT.json client      registers itself with agentlatd.client
    agentlatd exec -- /usr/bin/python3 -I agent.py OUT.json exec   registered by `agentlatd exec`

Runs with the system interpreter in isolated mode (-I: no PYTHONPATH, no user site, not
the script's directory first), so `import agentlatd` is the INSTALLED package in
/usr/lib/python3/dist-packages. Two worker threads start before the registration (the
daemon must pin threads that already exist) and two after it (they inherit the pinned
mask or are caught by the daemon's tick). Each worker times short steps with
client.step(). OUT.json gets pid, thread ids, the affinity before registering, the
registration answer and agentlatd.__file__; then the agent runs until its stdin closes
(the test holds the pipe) or 300 s pass.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

STOP = threading.Event()


def worker(client: object, tids: list[int]) -> None:
    tids.append(threading.get_native_id())
    step = getattr(client, "step", None)
    while not STOP.is_set():
        if step is not None:
            with step():
                sum(range(2000))
        STOP.wait(0.05)


def main() -> int:
    out, mode = sys.argv[1], sys.argv[2]
    before = sorted(os.sched_getaffinity(0))
    import agentlatd
    tids: list[int] = [threading.get_native_id()]
    early = [threading.Thread(target=worker, args=(None, tids), name=f"early{i}") for i in range(2)]
    for t in early:
        t.start()
    reg = None
    client: object = None
    if mode == "client":
        from agentlatd.client import Client
        c = Client("svc-agent-client", "interactive", flush_interval=0.5)
        reg = c.registration
        client = c
    late = [threading.Thread(target=worker, args=(client, tids), name=f"late{i}") for i in range(2)]
    for t in late:
        t.start()
    while len(tids) < 5:
        time.sleep(0.01)
    with open(out + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "tids": sorted(tids), "affinity_before": before,
                   "registration": reg, "agentlatd_file": agentlatd.__file__,
                   "python": sys.executable}, f)
    os.rename(out + ".tmp", out)
    t_end = time.monotonic() + 300
    # stdin closes when the test is done with us (or the test died)
    threading.Thread(target=lambda: (sys.stdin.read(), STOP.set()), daemon=True).start()
    while not STOP.is_set() and time.monotonic() < t_end:
        STOP.wait(0.2)
    STOP.set()
    for t in early + late:
        t.join(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
