"""Two VM-tier bugs, pinned at the plan stage.

- test_apply_fails_no_knob_here (tests/vm/guest): block.rq_affinity was planned
  for the NVMe multipath head (bio-based; no queue/rq_affinity on 6.12).
- test_napi_kthreads_are_pinned_to_completion_cpus: threaded NAPI was switched
  on, but the napi/<dev>-<id> kthreads were never pinned.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import plan_synth as synth

from agentlatd import policy
from agentlatd.cpuset import CpuSet
from agentlatd.model.machine import Machine, NapiThread
from agentlatd.plan.build import followup_knobs, make_plan
from agentlatd.plan.changes import Change, Plan
from agentlatd.sysfs.root import Root
from agentlatd.tick import scan_machine

S = CpuSet.parse_list
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "machines"
THREADED = "[tuning]\nthreaded_napi = true\n"


def by_knob(plan: Plan, knob: str) -> dict[str, Change]:
    return {c.target_text: c for c in plan.changes if c.knob == knob}


# -- rq_affinity and NVMe multipath ---------------------------------------------

def _multipath(head_rq: int | None) -> Machine:
    """server() with nvme0's namespace behind native multipath: the path disk
    nvme0c0n1 (request-based) and the head nvme0n1 (virtual, bio-based)."""
    m = synth.server()
    devs = []
    for d in m.devices:
        if d.name == "nvme0":
            d = dataclasses.replace(d, block_devices=("nvme0c0n1", "nvme0n1"))
        elif d.name == "nvme0n1":
            devs.append(dataclasses.replace(d, name="nvme0c0n1", rq_affinity=1))
            d = dataclasses.replace(d, virtual=True, rq_affinity=head_rq)
        devs.append(d)
    return dataclasses.replace(m, devices=tuple(sorted(devs, key=lambda d: d.name)))


def test_apply_fails_no_knob_here_rq_affinity_not_planned_without_the_file() -> None:
    m = synth.server()
    devs = tuple(dataclasses.replace(d, rq_affinity=None) if d.name == "nvme0n1" else d
                 for d in m.devices)
    plan = make_plan(dataclasses.replace(m, devices=devs), policy.default())
    assert "block.rq_affinity" not in {c.knob for c in plan.changes}


def test_multipath_rq_affinity_goes_to_the_path_disk_only() -> None:
    for head_rq in (None, 1):  # 6.12: no file; 6.1/6.8: a file that steers nothing
        plan = make_plan(_multipath(head_rq), policy.default())
        rq = by_knob(plan, "block.rq_affinity")
        assert set(rq) == {"nvme0c0n1"}, head_rq
        assert (rq["nvme0c0n1"].current, rq["nvme0c0n1"].desired) == ("1", "2")


def test_multipath_fixture_path_disk_is_the_controllers_namespace_with_hctx() -> None:
    m = scan_machine(Root(str(FIXTURES / "cloud-vm-small")))
    nvme0 = m.device("nvme0")
    assert set(nvme0.block_devices) == {"nvme0c0n1", "nvme0n1"}
    assert nvme0.hw_queue_cpus == m.device("nvme0c0n1").hw_queue_cpus
    assert len(nvme0.hw_queue_cpus) == 4
    head = m.device("nvme0n1")
    assert head.virtual and head.hw_queue_cpus == {}
    # the I/O queues are still recognised as managed, through the path disk's hctx
    assert all(i.managed for i in m.irqs if i.device == "nvme0" and i.queue != "admin")
    assert set(by_knob(make_plan(m, policy.default()), "block.rq_affinity")) == {"nvme0c0n1"}


# -- NAPI kthreads ------------------------------------------------------------------

def _with_napi(m: Machine, threads: tuple[NapiThread, ...]) -> Machine:
    devs = tuple(dataclasses.replace(d, threaded=1, napi_threads=threads)
                 if d.name == "ens1f0" else d for d in m.devices)
    return dataclasses.replace(m, devices=devs)


def test_napi_kthreads_are_pinned_to_completion_cpus_of_the_nics_node() -> None:
    everywhere = S("0-63")
    m = _with_napi(synth.server(), (NapiThread(900, 1234, 8193, everywhere),
                                    NapiThread(901, 1240, None, None)))
    plan = make_plan(m, policy.loads(THREADED, "t.toml"))
    task = by_knob(plan, "task.affinity")
    assert set(task) == {"900:1234:900", "901:1240:901"}
    node0 = plan.completion_cpus & S("0-15,32-47")
    assert node0 and all(S(c.desired) == node0 for c in task.values())
    assert task["900:1234:900"].current == "0-63" and task["901:1240:901"].current == ""
    assert "NAPI 8193" in task["900:1234:900"].reason
    # pinned after net.threaded, before the per-device batching
    order = [c.knob for c in plan.changes]
    assert order.index("task.affinity") > order.index("irq.affinity")
    # already there: nothing; threaded NAPI off: nothing
    done = _with_napi(synth.server(), (NapiThread(900, 1234, 8193, node0),))
    assert "task.affinity" not in {c.knob for c in
                                   make_plan(done, policy.loads(THREADED, "t.toml")).changes}
    off = policy.loads("[tuning]\nthreaded_napi = false\n", "t.toml")
    assert "task.affinity" not in {c.knob for c in make_plan(m, off).changes}


def test_followup_is_the_kthread_pinning_only() -> None:
    m = _with_napi(synth.server(), (NapiThread(900, 1234, 8193, S("0-63")),))
    pol = policy.loads(THREADED, "t.toml")
    knobs = followup_knobs(["irq.affinity", "net.threaded"])
    assert knobs == {"task.affinity"}
    more = [c for c in make_plan(m, pol).changes if c.knob in knobs]
    assert [c.knob for c in more] == ["task.affinity"]
    assert followup_knobs(["irq.affinity", "net.rps_cpus"]) == frozenset()
    # a ban written in irqbalance: the IRQs it may have moved until then are read again
    for ban in ("irqbalance.banned_cpus", "irqbalance.banned_irqs",
                "irqbalance.env_banned_cpus"):
        assert followup_knobs([ban, "net.rps_cpus"]) == {"irq.affinity"}


def _stat(pid: int, comm: str, flags: int, starttime: int) -> str:
    f = ["0"] * 50
    f[0], f[1], f[6], f[19] = "S", "2", str(flags), str(starttime)
    return f"{pid} ({comm}) {' '.join(f)}\n"


def test_build_machine_reads_napi_kthreads_of_a_threaded_nic(tmp_path: pathlib.Path) -> None:
    tree = tmp_path / "t"
    shutil.copytree(FIXTURES / "cloud-vm-small", tree, symlinks=True)
    (tree / "sys/class/net/eth0/threaded").write_text("1\n")
    kthread, user = 0x00200000, 0x00400100
    for pid, comm, flags, st in ((812, "napi/eth0-8193", kthread, 4410),
                                 (813, "napi/eth0-8194", kthread, 4411),
                                 (814, "napi/ens9-8195", kthread, 4412),  # no such NIC
                                 (5000, "napi/eth0-1", user, 9000)):  # not a kthread
        d = tree / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(_stat(pid, comm, flags, st))
        (d / "comm").write_text(comm + "\n")
        (d / "status").write_text(f"Name:\t{comm}\nCpus_allowed:\tf\nCpus_allowed_list:\t0-3\n")
    m = scan_machine(Root(str(tree)))
    eth0 = m.device("eth0")
    assert eth0.napi_threads == (NapiThread(812, 4410, 8193, S("0-3")),
                                 NapiThread(813, 4411, 8194, S("0-3")))
    plan = make_plan(m, policy.loads(THREADED, "t.toml"))
    task = by_knob(plan, "task.affinity")
    assert set(task) == {"812:4410:812", "813:4411:813"}
    assert all(S(c.desired) == plan.completion_cpus for c in task.values())
    # threaded = 0: the kthreads are not even looked for
    (tree / "sys/class/net/eth0/threaded").write_text("0\n")
    assert scan_machine(Root(str(tree))).device("eth0").napi_threads == ()


def test_napi_owner_of_a_comm_cut_at_15_characters() -> None:
    from agentlatd.sample.napi_threads import owner
    nics = ["enp175s0f0np0", "enp175s1f0np0", "eth0"]
    assert owner("napi/eth0-8193", nics) == ("eth0", 8193)
    assert owner("napi/enp175s0f0", nics) == ("enp175s0f0np0", None)
    assert owner("napi/enp175s0f0", [*nics, "enp175s0f0np1"]) is None  # ambiguous
    assert owner("napi/eth1-3", nics) is None
    assert owner("kworker/0:1", nics) is None


