"""`agentlatd trace`: the bucket scheme, the parsers and the report (pure), then
bpftrace, tracefs and schedstat against the real kernel on a process the test
starts (a thread that sleeps 1 ms in a loop: ~1000 wakeups/s to attribute).

Root and bpftrace are needed for the live tests (apt-get install bpftrace);
without them those tests skip and say why. tracefs is not mounted on the dev
hosts: the tracer mounts it in a private mount namespace, so the test also
checks that the host's mount table is unchanged afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agentlatd.cpuset import CpuSet
from agentlatd.sample import schedstat
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace import bpftrace, hist, tracefs
from agentlatd.tools.trace import report as trace_report

ROOT = os.geteuid() == 0
HAVE_BPFTRACE = shutil.which("bpftrace") is not None


# ---------------------------------------------------------------------------
# pure


@pytest.mark.parametrize("v,lower", [
    (0, 0), (99, 0), (100, 100), (9_999, 9_900), (10_000, 10_000), (10_999, 10_000),
    (99_999, 99_000), (100_000, 100_000), (123_456, 120_000), (1_234_567, 1_200_000),
    (12_345_678, 12_000_000), (999_999_999, 999_000_000), (1_000_000_000, hist.TOP),
    (5_000_000_000, hist.TOP), (-5, 0),
])
def test_bucket_lower(v: int, lower: int) -> None:
    assert hist.bucket_lower(v) == lower


def _eval_bucket_stmt(v: int) -> int:
    """Evaluate the bpftrace if/else chain bpftrace.py emits, as Python."""
    stmt = bpftrace._bucket_stmt("$d", "$b")
    py = stmt.replace("$d", "d").replace("$b", "b").replace("/", "//")
    # "if (c) { x; } else { ... }" -> nested conditional expressions
    env = {"d": v}
    while "if (" in py:
        m = re.match(r"if \((.+?)\) \{ b = (.+?); \} else \{ (.*) \}$", py)
        assert m, py
        if eval(m.group(1), {}, env):
            return int(eval(m.group(2), {}, env))
        py = m.group(3).strip()
    m2 = re.match(r"b = (\d+);", py)
    assert m2, py
    return int(m2.group(1))


@pytest.mark.parametrize("v", [0, 50, 150, 9_999, 10_000, 55_555, 100_000, 777_777, 1_000_000,
                               9_999_999, 10_000_000, 500_000_000, 999_999_999, 1_000_000_000, 7 * 10**9])
def test_program_buckets_match_python(v: int) -> None:
    """The BPF program and hist.bucket_lower bucket alike (report percentiles rely on it)."""
    assert _eval_bucket_stmt(v) == hist.bucket_lower(v)


def test_percentiles_nearest_rank() -> None:
    vals = list(range(1, 1001))
    s = hist.summarize(vals)
    assert (s.count, s.p50, s.p99, s.p999, s.max) == (1000, 500, 990, 999, 1000)
    assert hist.summarize([]).count == 0
    # from buckets: the midpoint of the bucket the rank falls in
    counts = {1_000: 98, 20_000: 1, 3_000_000: 1}
    b = hist.summarize_buckets(counts)
    assert b.p50 == 1_050 and b.p99 == 20_500 and b.p999 == 3_050_000
    cdf = hist.cdf_points(sorted(vals), points=50)
    assert cdf[-1] == (1000, 1.0) and all(a[1] < b_[1] for a, b_ in itertools.pairwise(cdf))


def test_parse_bpftrace_json() -> None:
    out = "\n".join([
        '{"type": "attached_probes", "data": {"probes": 14}}',
        "",
        '{"type": "map", "data": {"@irq": {"36,1,2100": 5, "36,1,15000": 1}}}',
        '{"type": "map", "data": {"@softirq_ns": {"3,0": 123456}}}',
        '{"type": "lost_events", "data": {"events": 7}}',
        "garbage that is not json",
    ])
    m = bpftrace.parse_output(out)
    assert m.attached == 14 and m.lost == 7
    assert m.get("irq") == {(36, 1, 2100): 5, (36, 1, 15000): 1}
    assert m.get("softirq_ns") == {(3, 0): 123456}


def test_program_filters_threads() -> None:
    p = bpftrace.program([4242, 4243], 2.5)
    assert "@agent[4242] = 1;" in p and "@agent[4243] = 1;" in p
    assert "interval:ms:2500" in p and "args->" in p and "args." not in p  # 0.17 syntax
    host = bpftrace.program([], 1.0)
    assert "@agent" not in host and "@wake[0, cpu, $b]" in host


TRACE_LINES = """\
# tracer: nop
#
          <idle>-0       [001] d.h1.  100.000010: irq_handler_entry: irq=36 name=virtio1-req.0
          <idle>-0       [001] d.h1.  100.000014: irq_handler_exit: irq=36 ret=handled
          <idle>-0       [001] ..s1.  100.000020: softirq_entry: vec=3 [action=NET_RX]
          <idle>-0       [001] ..s1.  100.000070: softirq_exit: vec=3 [action=NET_RX]
     ksoftirqd/0-15      [000] ..s..  100.000100: softirq_entry: vec=4 [action=BLOCK]
     ksoftirqd/0-15      [000] ..s..  100.000130: softirq_exit: vec=4 [action=BLOCK]
          <idle>-0       [001] d.s2.  100.000200: sched_waking: comm=agent pid=777 prio=120 target_cpu=001
          <idle>-0       [001] d..2.  100.000260: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 \
prev_state=R ==> next_comm=agent next_pid=777 next_prio=120
           agent-777     [001] .....  100.000300: sys_enter_epoll_wait: epfd: 0x3, events: 0x1, maxevents: 0x1
           agent-777     [001] .....  100.000900: sys_exit_epoll_wait: 0x1
           agent-777     [001] d..2.  100.001000: sched_switch: prev_comm=agent prev_pid=777 prev_prio=120 \
prev_state=R+ ==> next_comm=hog next_pid=888 next_prio=120
             hog-888     [001] d..2.  100.003000: sched_switch: prev_comm=hog prev_pid=888 prev_prio=120 \
prev_state=R ==> next_comm=agent next_pid=777 next_prio=120
"""


def test_parse_tracefs_text() -> None:
    m = tracefs.parse_trace(TRACE_LINES.splitlines(), tids=[777])
    assert m.get("irq") == {(36, 1, 4000): 1}
    assert m.get("softirq") == {(3, 1, 50_000): 1, (4, 0, 30_000): 1}
    assert m.get("ksoftirqd_ns") == {(4, 0): 30_000}
    # woken -> ran 60 us; preempted by the hog -> ran again 2 ms later
    assert m.get("wake") == {(777, 1, 60_000): 1, (777, 1, 2_000_000): 1}
    assert m.get("gate") == {(1, 777, 600_000): 1}


def test_tracefs_gate_lines_as_the_kernel_prints_them() -> None:
    """A syscalls event prints "sys_epoll_wait(epfd: 3, ...)" and "sys_epoll_wait -> 0x1"
    (kernel/trace/trace_syscalls.c; seen in a 6.18 instance's trace_pipe), not
    "sys_enter_epoll_wait:": the gate histogram of --method tracefs was always empty."""
    lines = [
        "           agent-777     [001] .....  100.000300: sys_epoll_wait(epfd: 3, events: 7ffd, "
        "maxevents: 1, timeout: ffffffff)",
        "           agent-777     [001] .....  100.000900: sys_epoll_wait -> 0x1",
        "           agent-777     [001] .....  100.000950: sys_exit: NR 232 = 1",
    ]
    m = tracefs.parse_trace(lines, tids=[777])
    assert m.get("gate") == {(1, 777, 600_000): 1}


def _synthetic_doc() -> dict[str, object]:
    maps = bpftrace.Maps(maps={
        "irq": {(36, 0, 2_000): 100, (36, 0, 30_000): 1, (41, 1, 5_000): 3},
        "softirq": {(3, 0, 20_000): 50, (3, 1, 400_000): 2, (4, 0, 10_000): 5},
        "softirq_ns": {(3, 0): 1_000_000, (3, 1): 800_000, (4, 0): 50_000},
        "ksoftirqd_ns": {(3, 1): 400_000},
        "wake": {(777, 1, 30_000): 500, (777, 1, 4_000_000): 1, (777, 0, 60_000): 5},
        "gate": {(1, 777, 100_000): 10, (3, 778, 50_000): 4},
        "blk": {(777, 1, 15_000): 3},
    })
    inp = trace_report.TraceInput(
        method="bpftrace", duration_s=2.0, maps=maps, home=CpuSet({1}), completion=CpuSet({0}),
        roles_source="test", threads={777: trace_report.Thread(777, 777, "agent", "planner")},
        run_delay=[schedstat.RunDelay(777, 5_000_000, 300_000, 100)], irq_names={36: "virtio1-req.0"})
    return trace_report.build(inp)


def test_report_section10_table() -> None:
    doc = _synthetic_doc()
    stages = {s["stage"]: s for s in doc["stages"]}  # type: ignore[union-attr]
    assert stages["irq"]["all"]["count"] == 104
    assert stages["irq"]["completion"]["count"] == 101 and stages["irq"]["home"]["count"] == 3
    assert stages["net_rx"]["home"]["p50"] == 405_000  # the NET_RX run on the home CPU
    assert stages["wake"]["home"]["count"] == 501 and stages["wake"]["completion"]["count"] == 5
    assert stages["gate"]["all"]["count"] == 10 and stages["recv"]["all"]["count"] == 4
    soft = [s for s in doc["softirqs"] if s["name"] == "NET_RX" and s["cpu"] == 1]  # type: ignore[union-attr]
    assert soft[0]["ksoftirqd_share"] == 0.5 and soft[0]["role"] == "home"
    text = trace_report.render(doc)
    assert "Latency budget (design note section 10)" in text
    assert "virtio1-req.0" in text and "wakeup-to-run" in text
    assert max(len(line) for line in text.splitlines()) <= 80, text


def test_schedstat_parsers() -> None:
    assert schedstat.parse_schedstat("0 2214929 1\n") == schedstat.SchedStat(0, 2214929, 1)
    assert schedstat.parse_schedstat("bad") is None
    # field n holds n (fields 4..52); a comm with spaces and ')' must not shift them
    stat = "42 (a) b) c) S " + " ".join(str(n) for n in range(4, 53))
    assert schedstat.parse_stat_cpu(stat) == 39
    assert schedstat.parse_stat_cpu("42 (x) S 1 2") is None
    a = {1: schedstat.SchedStat(10, 100, 1), 2: schedstat.SchedStat(5, 5, 5)}
    b = {1: schedstat.SchedStat(20, 400, 4), 2: schedstat.SchedStat(1, 1, 1), 3: schedstat.SchedStat(1, 1, 1)}
    d = schedstat.delta(a, b)
    assert [(x.tid, x.wait_ns, x.slices) for x in d] == [(1, 300, 3)]  # 2 went backwards, 3 is new


# ---------------------------------------------------------------------------
# live


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[str]]:
    """A process whose thread sleeps 1 ms in a loop for at most 60 s."""
    code = ("import time\nend = time.monotonic() + 60\n"
            "print('up', flush=True)\n"
            "while time.monotonic() < end:\n    time.sleep(0.001)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    try:
        yield p
    finally:
        p.kill()
        p.wait(timeout=10)


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentlatd", "trace", *args],
                          capture_output=True, text=True, timeout=timeout)


def _mounts() -> list[str]:
    """The host's tracefs mounts (other tests add and remove netns mounts meanwhile)."""
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" ", 4)[4] for line in f if "tracefs" in line or "tracing" in line)


@pytest.mark.skipif(not ROOT, reason="tracing needs root")
@pytest.mark.skipif(not HAVE_BPFTRACE, reason="bpftrace not installed (apt-get install bpftrace)")
def test_trace_bpftrace_pid(sleeper: subprocess.Popen[str]) -> None:
    before = _mounts()
    p = _cli("--pid", str(sleeper.pid), "--duration", "1.5", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["method"] == "bpftrace"
    assert _mounts() == before  # tracefs was mounted privately, if at all
    wake = [w for w in doc["wakeups"] if w["tid"] == sleeper.pid]
    n = sum(w["count"] for w in wake)
    assert n > 300, doc["wakeups"]  # ~1000 timer wakeups/s for 1.5 s
    for w in wake:
        assert 0 < w["p50"] <= w["p99"] <= w["p999"] <= w["max"]
    stages = {s["stage"]: s for s in doc["stages"]}
    assert stages["wake"]["all"]["count"] == n
    assert any(s["count"] for s in doc["softirqs"])  # the timer's own softirqs at least
    rd = [r for r in doc["run_delay"] if r["tid"] == sleeper.pid]
    assert rd and rd[0]["slices"] > 300


@pytest.mark.skipif(not ROOT, reason="tracing needs root")
def test_trace_tracefs_fallback(sleeper: subprocess.Popen[str]) -> None:
    before = _mounts()
    p = _cli("--pid", str(sleeper.pid), "--duration", "1", "--method", "tracefs", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["method"] == "tracefs", doc.get("unavailable")
    assert _mounts() == before
    assert doc["lost_events"] == 0
    assert [t["tid"] for t in doc["threads"]] == [sleeper.pid]
    # the private instance is gone (when tracefs is mounted on the host, it would show)
    for base in ("/sys/kernel/tracing/instances", "/sys/kernel/debug/tracing/instances"):
        if os.path.isdir(base):
            assert not [d for d in os.listdir(base) if d.startswith("agentlatd-")]


# Where the sleeper runs decides whether the ring buffer records its switch in:
# on the 6.18 guests this was written on, CPU 1's idle task emits nothing in
# task context (tracefs.py's module doc), and an unpinned sleeper landed there
# by chance (0, 161 or ~900 of ~900 wakeups). Pin it to each CPU (the first 4
# this test may use) so that every run meets every case.
PIN_CPUS = [None, *sorted(os.sched_getaffinity(0))[:4]]


@pytest.mark.skipif(not ROOT, reason="tracing needs root")
@pytest.mark.parametrize("cpu", PIN_CPUS, ids=lambda c: "unpinned" if c is None else f"cpu{c}")
def test_trace_tracefs_fallback_counts_every_wakeup(sleeper: subprocess.Popen[str], cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(sleeper.pid, {cpu})  # the test's own child, nothing else
    p = _cli("--pid", str(sleeper.pid), "--duration", "1", "--method", "tracefs", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["method"] == "tracefs", doc.get("unavailable")
    wake = [w for w in doc["wakeups"] if w["tid"] == sleeper.pid]
    assert sum(w["count"] for w in wake) > 200, doc["wakeups"]  # ~1000 timer wakeups in 1 s
    if cpu is not None:
        assert {w["cpu"] for w in wake} == {cpu}
    for w in wake:
        assert 0 < w["p50"] <= w["p99"] <= w["p999"] <= w["max"]


def test_parse_tracefs_switch_in_not_recorded() -> None:
    """A switch in from idle the ring buffer did not record: the thread's own next event ends the wakeup."""
    lines = """\
          <idle>-0       [001] d.h3.   50.000100: sched_waking: comm=py thon pid=777 prio=120 target_cpu=001
          py thon-777    [001] .....   50.000112: sys_exit: NR 230 = 0
          py thon-777    [001] d..2.   50.000150: sched_switch: prev_comm=py thon prev_pid=777 prev_prio=120 \
prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
          <idle>-0       [001] d.h3.   50.001100: sched_waking: comm=py thon pid=777 prio=120 target_cpu=001
          py thon-777    [001] d..2.   50.001180: sched_switch: prev_comm=py thon prev_pid=777 prev_prio=120 \
prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
          <idle>-0       [000] d..2.   50.002000: sched_waking: comm=py thon pid=777 prio=120 target_cpu=000
          <idle>-0       [000] d..2.   50.002030: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 \
prev_state=R ==> next_comm=py thon next_pid=777 next_prio=120
          py thon-777    [000] .....   50.002040: sys_exit: NR 230 = 0
"""
    m = tracefs.parse_trace(lines.splitlines(), tids=[777])
    # timed to its sys_exit (12 us); untimed (only its switch out shows it ran); timed to its switch in
    assert m.get("wake") == {(777, 1, 12_000): 1, (777, 0, 30_000): 1}
    assert m.get("wake_untimed") == {(777, 1): 1}


def test_trace_schedstat_only(sleeper: subprocess.Popen[str]) -> None:
    t0 = time.monotonic()
    p = _cli("--pid", str(sleeper.pid), "--duration", "0.5", "--method", "schedstat")
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 >= 0.5
    assert "Run delay per thread" in p.stdout and str(sleeper.pid) in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 80


@pytest.mark.skipif(bpftrace.tracefs_dir(Root("/")) is not None,
                    reason="tracefs is mounted here: the tracefs fallback would work")
def test_trace_unavailable_says_why() -> None:
    """No tracer and nothing to fall back on: one sentence naming the reasons, exit 1."""
    env = dict(os.environ, PATH="/nonexistent")  # neither bpftrace nor unshare
    p = subprocess.run([sys.executable, "-m", "agentlatd", "trace", "--duration", "0.2",
                        "--socket", "/nonexistent/agentlatd.sock"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1
    assert "tracing is unavailable" in p.stderr and "--pid" in p.stderr
    if ROOT:
        assert "bpftrace is not installed" in p.stderr
    else:
        assert "root" in p.stderr


@pytest.fixture
def loop_writer() -> Iterator[str]:
    """A loop device on a tmpfs file and a dd writing to it (O_DIRECT) on CPU 0 for at most
    20 s: block completions in task context (the loop worker), none of them for the sleeper."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup missing (util-linux)")
    img = f"/dev/shm/agentlatd-test-loop-{os.getpid()}.img"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", img], capture_output=True, text=True,
                         check=True).stdout.strip()
    sh = (f"end=$(($(date +%s)+20)); while [ $(date +%s) -lt $end ]; do "
          f"dd if=/dev/zero of={dev} bs=4k count=2000 oflag=direct 2>/dev/null; done")
    w = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", sh], start_new_session=True)
    try:
        yield dev
    finally:
        os.killpg(w.pid, 15)
        w.wait(timeout=10)
        subprocess.run(["losetup", "-d", dev], check=False)
        os.unlink(img)


@pytest.mark.skipif(not ROOT, reason="tracing needs root")
@pytest.mark.skipif(not HAVE_BPFTRACE, reason="bpftrace not installed (apt-get install bpftrace)")
def test_udp_only_agent_blamed_on_block_completion_in_task_context(
        sleeper: subprocess.Popen[str], loop_writer: str) -> None:
    """A thread that does no disk I/O has no block completion -> run stage, even while a
    loop device completes requests on its CPU in task context (where no irq/softirq exit
    follows the completion: it was remembered until the next one and the sleeper's timer
    wakeups were blamed on it, 0.3-57 ms after)."""
    os.sched_setaffinity(sleeper.pid, {0})
    p = _cli("--pid", str(sleeper.pid), "--duration", "2", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["method"] == "bpftrace"
    assert sum(w["count"] for w in doc["wakeups"]) > 300  # it was traced
    assert doc["block_to_run"] == []


# in the kernel most of the time (copying 4 MiB from /dev/zero): preempted there, its
# switch out reports TASK_REPORT_MAX; a user-space loop is switched out on its return
# to user mode by schedule() instead, and reports 0 (measured on 6.18, PREEMPT_DYNAMIC)
BUSY = ("import os, time\nos.sched_setaffinity(0, {%d})\nprint('up', flush=True)\n"
        "f = os.open('/dev/zero', os.O_RDONLY)\n"
        "end = time.monotonic() + 30\nwhile time.monotonic() < end: os.read(f, 1 << 22)\n")


@pytest.fixture
def two_spinners() -> Iterator[tuple[int, int]]:
    """Two busy loops sharing one CPU, 30 s at most, mostly in the kernel: neither ever
    sleeps, so every switch out is a preemption and every run after it a preempted-to-run
    delay."""
    cpu = 1 if (os.cpu_count() or 1) > 1 else 0
    ps = [subprocess.Popen([sys.executable, "-c", BUSY % cpu], stdout=subprocess.PIPE, text=True)
          for _ in range(2)]
    try:
        for p in ps:
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
        yield ps[0].pid, ps[1].pid
    finally:
        for p in ps:
            p.kill()
            p.wait(timeout=10)


@pytest.mark.skipif(not ROOT, reason="tracing needs root")
@pytest.mark.skipif(not HAVE_BPFTRACE, reason="bpftrace not installed (apt-get install bpftrace)")
def test_preempted_task_prev_state_task_report_max_counted_as_wakeup(
        two_spinners: tuple[int, int]) -> None:
    """A preempted task's sched_switch prev_state is TASK_REPORT_MAX (0x100), not 0: the
    program started a preempted-to-run wait only on 0, so a thread that never sleeps and
    shares its CPU with a hog showed no wakeup-to-run time at all (0 counted)."""
    spinner, _hog = two_spinners
    p = _cli("--pid", str(spinner), "--duration", "1.5", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["method"] == "bpftrace"
    wake = [w for w in doc["wakeups"] if w["tid"] == spinner]
    # it waits about half the window (the other spinner's slices): the waits counted must
    # add up to at least 30 % of it (before the fix: only the few switches out in
    # TASK_RUNNING, 7 of 218 in a bpftrace count of its prev_states)
    waited = sum(w["count"] * w["mean"] for w in wake)
    assert waited >= 0.3 * 1.5e9, doc["wakeups"]


def test_program_counts_preempted_switch_out() -> None:
    """The program text: prev_state TASK_REPORT_MAX ("R+") starts a runqueue wait like 0 ("R")."""
    prog = bpftrace.program((1234,), 1.0)
    assert "args->prev_state == 0x100" in prog and "args->prev_state == 0 " in prog
