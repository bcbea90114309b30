"""make_plan on synthetic Machines: every knob, the policy switches, device scope."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
from typing import Any

import plan_synth as synth
import pytest

from agentlatd import policy
from agentlatd.commands.plan import compress_targets, plan_to_json, render_text
from agentlatd.cpuset import CpuSet
from agentlatd.kernel.irqbalance_proto import split_env_value
from agentlatd.model.machine import Machine, Rates
from agentlatd.plan.build import _handed_over, make_plan
from agentlatd.plan.changes import Change, Plan

S = CpuSet.parse_list
REPO = pathlib.Path(__file__).resolve().parents[2]


def pol(text: str = "") -> policy.Policy:
    return policy.loads(text, "test.toml") if text else policy.default()


# RFS is off in the shipped policy (it steers an agent's own flows onto its home
# CPU); these tests turn it on to check the RFS knobs
RFS = "[tuning]\nrps_flow_cnt = 4096\nrps_sock_flow_entries = 32768\n"


@pytest.fixture(scope="module")
def server_rfs_plan(server: Machine) -> Plan:
    return make_plan(server, pol(RFS))


def test_rfs_is_off_by_default(server_plan: Plan) -> None:
    assert not {"net.rps_flow_cnt", "sysctl"} & knobs(server_plan)


def by_knob(plan: Plan, knob: str) -> dict[str, Change]:
    return {c.target_text: c for c in plan.changes if c.knob == knob}


def knobs(plan: Plan) -> set[str]:
    return {c.knob for c in plan.changes}


@pytest.fixture(scope="module")
def server() -> Machine:
    return synth.server()


@pytest.fixture(scope="module")
def server_plan(server: Machine) -> Plan:
    return make_plan(server, pol())


# -- IRQ affinity -------------------------------------------------------------

def test_nic_queue_irqs_go_round_robin_to_the_nodes_completion_cpus(server_plan: Plan) -> None:
    irq = by_knob(server_plan, "irq.affinity")
    # 75 = async (non-queue), 76..91 = TxRx-0..15, completion CPUs 0,32
    assert irq["75"].desired == "0,32"
    assert [irq[str(76 + q)].desired for q in range(4)] == ["0", "32", "0", "32"]
    assert irq["76"].current == "0-63"
    assert "ens1f0" in irq["76"].reason and "round-robin" in irq["76"].reason


def test_one_queue_per_cpu_when_there_are_enough_cpus() -> None:
    topo = synth.topology(cores=8)
    eth, irqs = synth.nic("eth0", 0, 40, 4, topo.possible)
    plan = make_plan(synth.machine(topo, [eth], irqs),
                     pol("[cpus]\ncompletion = \"4-7\"\n"))
    irq = by_knob(plan, "irq.affinity")
    assert [irq[str(41 + q)].desired for q in range(4)] == ["4", "5", "6", "7"]
    assert irq["40"].desired == "4-7"


def test_queues_go_to_other_cores_before_siblings() -> None:
    # adjacent SMT numbering: cores {0,1} {2,3} {4,5} {6,7}; completion = cores 0 and 1
    topo = synth.topology(cores=4, threads=2, enumeration="adjacent")
    eth, irqs = synth.nic("eth0", 0, 40, 4, topo.possible)
    plan = make_plan(synth.machine(topo, [eth], irqs), pol("[cpus]\ncompletion_per_node = 4\n"))
    assert plan.completion_cpus == S("0-3")
    irq = by_knob(plan, "irq.affinity")
    assert [irq[str(41 + q)].desired for q in range(4)] == ["0", "2", "1", "3"]
    xps = by_knob(plan, "net.xps_cpus")
    assert [xps[f"eth0/tx-{q}"].desired for q in range(4)] == ["01", "04", "02", "08"]


def test_nvme_admin_queue_is_steered_and_managed_queues_never(server: Machine,
                                                              server_plan: Plan) -> None:
    irq = by_knob(server_plan, "irq.affinity")
    assert irq["100"].desired == "0,32" and "admin queue" in irq["100"].reason
    managed = {str(i.irq) for i in server.irqs if i.managed}
    assert len(managed) == 64
    assert not managed & irq.keys()


def test_managed_irqs_give_advice_and_a_note(server_plan: Plan) -> None:
    assert any("isolcpus=managed_irq,1-31,33-63" in a for a in server_plan.advice)
    assert any("irqaffinity=0,32" in a for a in server_plan.advice)
    assert any("kernel-managed" in n and "nvme0" in n for n in server_plan.notes)


def test_managed_irq_advice_counts_queues_the_kernel_could_move() -> None:
    topo = synth.topology(cores=4, threads=2)  # cores {0,4} {1,5} {2,6} {3,7}
    nv, irqs = synth.nvme("nvme0", 0, 100, topo)
    # a per-core layout: queue k serves both threads of core k
    irqs = [dataclasses.replace(i, smp_affinity=S(f"{k - 1},{k + 3}"))
            if i.managed and k <= 4 else i for k, i in enumerate(irqs)]
    irqs = [i for k, i in enumerate(irqs) if k <= 4]
    plan = make_plan(synth.machine(topo, nv, irqs), pol("[cpus]\nsmt_isolation = false\n"))
    # completion {0}: queue 1 = {0,4} mixes completion and home CPUs; the others don't
    assert any("1 of the 4 managed IRQs" in a for a in plan.advice), plan.advice


def test_no_op_irq_changes_are_skipped() -> None:
    topo = synth.topology(cores=4)
    eth, irqs = synth.nic("eth0", 0, 40, 2, topo.possible)
    irqs = [dataclasses.replace(irqs[0], smp_affinity=S("0")),
            dataclasses.replace(irqs[1], smp_affinity=S("0")), irqs[2]]
    plan = make_plan(synth.machine(topo, [eth], irqs), pol())
    irq = by_knob(plan, "irq.affinity")
    assert set(irq) == {"42"}  # 40 (async) and 41 (queue 0) already on cpu 0; 42 too -> "0"


def test_vector_full_cpu_takes_no_irq_that_must_move() -> None:
    """ENOSPC at an earlier apply on completion CPU 4 (vector_full): the queue IRQs
    dealt to it go to the other completion CPU, 5, with a note; the async IRQ's mask
    4-5 stays (the kernel allocates its vector on 5)."""
    topo = synth.topology(cores=8)
    eth, irqs = synth.nic("eth0", 0, 40, 4, topo.possible)
    m = synth.machine(topo, [eth], irqs)
    two = pol("[cpus]\ncompletion = \"4-5\"\n")
    assert [by_knob(make_plan(m, two), "irq.affinity")[str(41 + q)].desired
            for q in range(4)] == ["4", "5", "4", "5"]
    plan = make_plan(m, two, vector_full=S("4"))
    irq = by_knob(plan, "irq.affinity")
    assert [irq[str(41 + q)].desired for q in range(4)] == ["5", "5", "5", "5"]
    assert irq["40"].desired == "4-5"
    assert "no interrupt vector left (ENOSPC)" in irq["41"].reason
    assert "ENOSPC" not in irq["42"].reason
    assert any(n.startswith("eth0: completion CPU(s) 4 have no interrupt vector left")
               and "IRQ(s) 41, 43 go to the other completion CPU(s) 5" in n for n in plan.notes)


def test_vector_full_on_every_completion_cpu_leaves_irqs_where_they_are() -> None:
    """Every completion CPU of the device is full: no IRQ change is planned (each write
    would fail with ENOSPC again), a note names the IRQs left in place, and an IRQ
    already in place keeps its vector and stays planned as such (no change)."""
    topo = synth.topology(cores=8)
    eth, irqs = synth.nic("eth0", 0, 40, 2, topo.possible)
    irqs = [dataclasses.replace(irqs[1], smp_affinity=S("4")) if k == 1 else i
            for k, i in enumerate(irqs)]
    m = synth.machine(topo, [eth], irqs)
    plan = make_plan(m, pol("[cpus]\ncompletion = \"4-5\"\n"), vector_full=S("4-5"))
    assert not by_knob(plan, "irq.affinity")
    assert any(n == "eth0: every completion CPU (4-5) has no interrupt vector left (ENOSPC "
               "at an earlier apply): IRQ(s) 40, 42 stay where they are until the next rescan."
               for n in plan.notes), plan.notes
    assert plan.completion_cpus == S("4-5")  # the partition is not what changes


def test_quiet_home_order_puts_cpus_with_busy_managed_queues_last() -> None:
    topo = synth.topology(cores=6)
    nv, irqs = synth.nvme("nvme0", 0, 100, topo, per_cpu_counts={1: 900, 2: 50, 4: 5})
    m = synth.machine(topo, nv, irqs)
    plan = make_plan(m, pol())
    assert plan.home_cpus == S("1-5")
    assert plan.quiet_home_order == (3, 5, 4, 2, 1)
    # live rates, when given, win over the counts since boot
    rates = Rates(interval_s=1.0, irq_per_cpu={}, irq_rate={102: {2: 1000.0}},
                  softirq_rate={}, irq_time_share={}, steal_share={}, heat={})
    assert make_plan(m, pol(), rates=rates).quiet_home_order == (1, 3, 4, 5, 2)


def test_irqbalance_refuse_leaves_irqs_alone_and_says_so(server: Machine) -> None:
    plan = make_plan(server, pol('[daemon]\nirqbalance = "refuse"\n'), irqbalance_running=True)
    assert "irq.affinity" not in knobs(plan)
    assert "irqbalance.banned_cpus" not in knobs(plan)
    assert "net.rps_cpus" in knobs(plan)
    assert any("irqbalance is running" in n for n in plan.notes)


def test_regression_irqbalance_running_left_home_cpus_unprotected(server: Machine) -> None:
    # the bug pinned: with irqbalance running (the distributions' default), refusing
    # to steer leaves irqbalance placing IRQs on the home CPUs. The default
    # cooperates: the home CPUs (plus irqbalance's own ban) are banned in it, and
    # IRQs stay irqbalance's (no irq.affinity change to fight over)
    plan = make_plan(server, pol(), irqbalance_running=True,
                     irqbalance_banned=CpuSet({63}))
    assert "irq.affinity" not in knobs(plan)
    (ban,) = [c for c in plan.changes if c.knob == "irqbalance.banned_cpus"]
    assert ban.target_text == "irqbalance"
    assert CpuSet.parse_list(ban.desired) == plan.home_cpus | CpuSet({63})
    assert not CpuSet.parse_list(ban.desired) & plan.completion_cpus - CpuSet({63})
    assert "net.rps_cpus" in knobs(plan)
    assert any("cooperate" in n for n in plan.notes)
    # not running: nothing to ban, IRQs steered as usual
    quiet = make_plan(server, pol())
    assert "irqbalance.banned_cpus" not in knobs(quiet) and "irq.affinity" in knobs(quiet)


def test_irqbalance_without_socket_bans_in_its_environment_file(server: Machine) -> None:
    # the running irqbalance has no usable socket: the same ban goes to the
    # environment file the daemon found (apply/irqbalance_env.py), not the socket
    plan = make_plan(server, pol(), irqbalance_running=True, irqbalance_banned=CpuSet({63}),
                     irqbalance_env="/etc/sysconfig/irqbalance")
    assert "irqbalance.banned_cpus" not in knobs(plan) and "irq.affinity" not in knobs(plan)
    (ban,) = [c for c in plan.changes if c.knob == "irqbalance.env_banned_cpus"]
    assert ban.target_text == "/etc/sysconfig/irqbalance"
    assert CpuSet.parse_list(ban.desired) == plan.home_cpus | CpuSet({63})
    assert "restart" in ban.reason


def test_irqbalance_socket_hands_steered_irqs_over_before_steering_them(server: Machine) -> None:
    # irqbalance's banned IRQs are known (its socket answered "setup"): agentlatd
    # steers the IRQs of devices in scope as without irqbalance and bans exactly
    # those, beside irqbalance's own --banirq, before writing any affinity
    plan = make_plan(server, pol(), irqbalance_running=True, irqbalance_banned=CpuSet(),
                     irqbalance_banned_irqs=(5,))
    steered = [c for c in plan.changes if c.knob == "irq.affinity"]
    assert steered
    (ban,) = [c for c in plan.changes if c.knob == "irqbalance.banned_irqs"]
    assert ban.target_text == "irqbalance"
    assert [int(i) for i in ban.desired.split()] == sorted({5, *(int(c.target_text) for c in steered)})
    order = [c.knob for c in plan.changes]
    assert order.index("irqbalance.banned_irqs") < order.index("irq.affinity")
    assert "irqbalance.banned_cpus" in order
    # through an environment file whose IRQBALANCE_ARGS cannot reach irqbalance
    # (its banned IRQs unknown: None) there is no IRQ ban: IRQs stay irqbalance's
    env = make_plan(server, pol(), irqbalance_running=True, irqbalance_banned=CpuSet(),
                    irqbalance_banned_irqs=None, irqbalance_env="/etc/default/irqbalance")
    assert not {"irq.affinity", "irqbalance.banned_irqs"} & knobs(env)
    (only,) = [c for c in env.changes if c.knob == "irqbalance.env_banned_cpus"]
    assert split_env_value(only.desired) == (env.home_cpus.to_list(), None)


def test_regression_irqbalance_env_file_mode_never_handed_irqs_over(server: Machine) -> None:
    # the bug pinned: without irqbalance's socket (the environment-file fallback)
    # agentlatd steered no IRQ at all, leaving every NIC queue IRQ to irqbalance,
    # although IRQBALANCE_ARGS can ban them (--banirq) as "settings ban irqs" does.
    # Now the one environment-file change bans the home CPUs AND the IRQs agentlatd
    # places (beside the administrator's own --banirq 5), ordered before any affinity
    plan = make_plan(server, pol(), irqbalance_running=True, irqbalance_banned=CpuSet({63}),
                     irqbalance_banned_irqs=(5,), irqbalance_env="/etc/default/irqbalance")
    steered = [c for c in plan.changes if c.knob == "irq.affinity"]
    assert steered
    assert "irqbalance.banned_irqs" not in knobs(plan)  # no socket: nothing sent there
    (ban,) = [c for c in plan.changes if c.knob == "irqbalance.env_banned_cpus"]
    assert ban.target_text == "/etc/default/irqbalance"
    parts = split_env_value(ban.desired)
    assert parts is not None
    cpus, irqs = parts
    assert CpuSet.parse_list(cpus) == plan.home_cpus | CpuSet({63})
    assert irqs == tuple(sorted({5, *(int(c.target_text) for c in steered)}))
    order = [c.knob for c in plan.changes]
    assert order.index("irqbalance.env_banned_cpus") < order.index("irq.affinity")
    assert "--banirq" in ban.reason and "restart" in ban.reason


def test_irqbalance_irq_ban_fits_its_socket_buffer() -> None:
    steered = tuple(range(1000, 1200))
    changes = tuple(Change.parse("irq.affinity", str(n), "", "1", "t") for n in steered[::2])
    notes: list[str] = []
    out = _handed_over(steered, changes, (7,), notes)
    ban, kept = out[0], out[1:]
    assert len("settings ban irqs " + ban.desired) <= 499
    banned = [int(i) for i in ban.desired.split()]
    assert banned[0] == 7 and 1000 in banned and len(banned) < 1 + len(steered)
    assert kept and {int(c.target_text) for c in kept} <= set(banned)
    assert "left to it" in notes[0]


def test_regression_irqbalance_irq_ban_shrank_once_irqs_were_in_place(server: Machine) -> None:
    # before: only the IRQs whose affinity still had to change were banned, so once
    # agentlatd had placed them the next plan banned fewer and irqbalance took them
    # back (seen in the VM tier: 1 of 21 NIC IRQs banned). Every IRQ agentlatd places
    # is handed over, in place or not
    first = make_plan(server, pol(), irqbalance_running=True, irqbalance_banned=CpuSet(),
                      irqbalance_banned_irqs=())
    placed = dataclasses.replace(server, irqs=tuple(
        dataclasses.replace(i, smp_affinity=CpuSet.parse_list(c.desired))
        if (c := next((c for c in first.changes if c.knob == "irq.affinity"
                       and c.target_text == str(i.irq)), None)) else i for i in server.irqs))
    again = make_plan(placed, pol(), irqbalance_running=True, irqbalance_banned=CpuSet(),
                      irqbalance_banned_irqs=())
    assert "irq.affinity" not in knobs(again)
    ban = {c.knob: c.desired for c in first.changes}["irqbalance.banned_irqs"]
    assert {c.knob: c.desired for c in again.changes}["irqbalance.banned_irqs"] == ban


def test_irqbalance_ignore_steers_anyway_and_warns(server: Machine) -> None:
    plan = make_plan(server, pol('[daemon]\nirqbalance = "ignore"\n'), irqbalance_running=True)
    assert "irq.affinity" in knobs(plan)
    assert any("drift" in n for n in plan.notes)


# -- RPS / XPS / sysctl ---------------------------------------------------------

def test_rps_masks_are_the_nodes_completion_cpus_nr_cpu_ids_wide(server_rfs_plan: Plan) -> None:
    rps = by_knob(server_rfs_plan, "net.rps_cpus")
    assert set(rps) == {f"ens1f0/rx-{q}" for q in range(16)}
    assert rps["ens1f0/rx-0"].current == "00000000,00000000"
    assert rps["ens1f0/rx-0"].desired == "00000001,00000001"
    flow = by_knob(server_rfs_plan, "net.rps_flow_cnt")
    assert flow["ens1f0/rx-3"].desired == "4096" and flow["ens1f0/rx-3"].current == "0"


def test_xps_maps_tx_queue_i_to_completion_cpu_i_mod_n(server_plan: Plan) -> None:
    xps = by_knob(server_plan, "net.xps_cpus")
    assert xps["ens1f0/tx-0"].desired == "00000000,00000001"
    assert xps["ens1f0/tx-1"].desired == "00000001,00000000"
    assert xps["ens1f0/tx-2"].desired == "00000000,00000001"


def test_rps_sock_flow_entries_only_with_rfs(server: Machine, server_rfs_plan: Plan) -> None:
    sysctl = by_knob(server_rfs_plan, "sysctl")
    assert sysctl["net.core.rps_sock_flow_entries"].desired == "32768"
    assert sysctl["net.core.rps_sock_flow_entries"].current == ""
    assert set(sysctl) == {"net.core.rps_sock_flow_entries"}  # budgets unset by default
    plan = make_plan(server, pol("[tuning]\nrps_flow_cnt = 0\n"))
    assert "sysctl" not in knobs(plan) and "net.rps_flow_cnt" not in knobs(plan)
    assert "net.rps_cpus" in knobs(plan)
    assert not any("RFS" in n for n in plan.notes)


def test_netdev_budgets_only_when_the_policy_sets_them(server: Machine) -> None:
    plan = make_plan(server, pol("[tuning]\nnetdev_budget_usecs = 1000\nnetdev_budget = 300\n"))
    sysctl = by_knob(plan, "sysctl")
    assert sysctl["net.core.netdev_budget_usecs"].desired == "1000"
    assert sysctl["net.core.netdev_budget"].desired == "300"


def test_virtual_nic_gets_queue_knobs_only() -> None:
    topo = synth.topology(cores=4)
    m = synth.machine(topo, [synth.veth("veth0")])
    # a host-wide default leaves virtual NICs alone: they belong to containers, tc, VPNs
    assert knobs(make_plan(m, pol(RFS))) == set()
    plan = make_plan(m, pol(RFS + '[devices]\ninclude = ["veth*"]\n'))
    assert knobs(plan) == {"net.rps_cpus", "net.rps_flow_cnt", "sysctl"}
    assert by_knob(plan, "net.rps_cpus")["veth0/rx-0"].desired == "1"  # nr_cpu_ids 4: one digit


# -- coalescing, NAPI, block -----------------------------------------------------

def test_coalesce_is_a_share_of_the_tightest_budget(server_plan: Plan) -> None:
    co = by_knob(server_plan, "net.coalesce")
    assert co["ens1f0"].desired == "rx-usecs=20"  # 200 us * 0.1
    assert co["ens1f0"].current == ""


@pytest.mark.parametrize(("text", "want"), [
    ("[classes.interactive]\nbudget_us = 10\n", "rx-usecs=8"),  # floor: coalesce_min_usecs
    ("[classes.interactive]\nbudget_us = 10\n[tuning]\ncoalesce_budget_share = 0.0\n"
     "coalesce_min_usecs = 1\n", "rx-usecs=1"),  # never 0: coalescing stays on
    ("[tuning]\ncoalesce_budget_share = 0.5\n", "rx-usecs=100"),
])
def test_coalesce_never_disables_coalescing(server: Machine, text: str, want: str) -> None:
    assert by_knob(make_plan(server, pol(text)), "net.coalesce")["ens1f0"].desired == want


def test_no_budget_no_coalescing(server: Machine) -> None:
    text = "".join(f"[classes.{c}]\nbudget_us = 0\n" for c in ("interactive", "normal"))
    plan = make_plan(server, pol(text))
    assert "net.coalesce" not in knobs(plan)
    assert any("No latency class has a budget" in n for n in plan.notes)


def test_napi_knobs_follow_the_policy(server: Machine) -> None:
    assert not knobs(make_plan(server, pol())) & {"net.threaded", "net.napi_defer_hard_irqs",
                                                  "net.gro_flush_timeout"}
    plan = make_plan(server, pol("[tuning]\nthreaded_napi = true\nnapi_defer_hard_irqs = 2\n"
                                 "gro_flush_timeout = 20000\n"))
    assert by_knob(plan, "net.threaded")["ens1f0"].desired == "1"
    assert by_knob(plan, "net.napi_defer_hard_irqs")["ens1f0"].desired == "2"
    assert by_knob(plan, "net.gro_flush_timeout")["ens1f0"] == Change.parse(
        "net.gro_flush_timeout", "ens1f0", "0", "20000",
        "ens1f0 flushes GRO after 20000 ns (tuning.gro_flush_timeout)")


def test_napi_knobs_on_a_virtual_nic_only_when_include_names_it() -> None:
    topo = synth.topology(cores=4)
    m = synth.machine(topo, [synth.veth("veth0", threaded=0), synth.veth("docker0", threaded=0)])
    text = "[tuning]\nthreaded_napi = true\nnapi_defer_hard_irqs = 2\n"
    assert not knobs(make_plan(m, pol(text))) & {"net.threaded", "net.napi_defer_hard_irqs"}
    named = make_plan(m, pol(text + '[devices]\ninclude = ["veth*"]\n'))
    assert set(by_knob(named, "net.threaded")) == {"veth0"}
    assert set(by_knob(named, "net.napi_defer_hard_irqs")) == {"veth0"}


def test_rq_affinity_for_the_namespaces_of_nvme_in_scope(server: Machine) -> None:
    plan = make_plan(server, pol())
    assert by_knob(plan, "block.rq_affinity")["nvme0n1"].desired == "2"
    assert by_knob(plan, "block.rq_affinity")["nvme0n1"].current == "1"
    no = policy.loads("", "t")
    no = dataclasses.replace(no, tuning=dataclasses.replace(no.tuning, rq_affinity=None))
    assert "block.rq_affinity" not in knobs(make_plan(server, no))


# -- policy switches and device scope ---------------------------------------------

@pytest.mark.parametrize(("key", "gone"), [
    ("irq_affinity", {"irq.affinity"}),
    ("rps", {"net.rps_cpus", "net.rps_flow_cnt", "sysctl"}),
    ("xps", {"net.xps_cpus"}),
    ("coalesce", {"net.coalesce"}),
])
def test_tuning_switches(server: Machine, server_rfs_plan: Plan, key: str, gone: set[str]) -> None:
    plan = make_plan(server, pol(f"{RFS}{key} = false\n"))
    assert knobs(server_rfs_plan) - knobs(plan) == gone


def test_include_limits_to_exactly_the_named_devices(server: Machine) -> None:
    plan = make_plan(server, pol('[devices]\ninclude = ["ens*"]\n'))
    assert not any(c.target_text.startswith("nvme") for c in plan.changes)
    assert by_knob(plan, "irq.affinity").keys() == {str(n) for n in range(75, 92)}
    assert any("not named by devices.include" in n and "nvme0" in n for n in plan.notes)


def test_block_devices_follow_their_controller(server: Machine) -> None:
    plan = make_plan(server, pol('[devices]\ninclude = ["nvme0"]\n'))
    assert set(by_knob(plan, "block.rq_affinity")) == {"nvme0n1"}
    assert "net.rps_cpus" not in knobs(plan)
    plan = make_plan(server, pol('[devices]\nexclude = ["nvme0"]\n'))
    assert "block.rq_affinity" not in knobs(plan)
    assert by_knob(plan, "irq.affinity").keys() == {str(n) for n in range(75, 92)}


def test_drivers_filter(server: Machine) -> None:
    plan = make_plan(server, pol('[devices]\ndrivers = ["nvme"]\n'))
    assert {c.knob for c in plan.changes} == {"irq.affinity", "block.rq_affinity"}


def test_completion_cpus_follow_the_devices_in_scope() -> None:
    topo = synth.topology(sockets=2, cores=4)
    eth0, i0 = synth.nic("eth0", 0, 40, 2, topo.possible)
    eth1, i1 = synth.nic("eth1", 1, 50, 2, topo.possible)
    m = synth.machine(topo, [eth0, eth1], i0 + i1)
    assert make_plan(m, pol()).completion_cpus == S("0,4")
    assert make_plan(m, pol('[devices]\ninclude = ["eth1"]\n')).completion_cpus == S("4")


def test_single_cpu_host_plans_no_steering_but_keeps_device_knobs() -> None:
    topo = synth.topology(cores=1)
    eth, irqs = synth.nic("eth0", 0, 40, 1, topo.possible)
    plan = make_plan(synth.machine(topo, [eth], irqs), pol())
    assert plan.completion_cpus == CpuSet() and plan.home_cpus == S("0")
    assert knobs(plan) == {"net.coalesce"}
    assert plan.advice == ()


# -- determinism, purity, output ------------------------------------------------

def test_plan_is_deterministic_whatever_the_input_order(server: Machine) -> None:
    shuffled = dataclasses.replace(server, irqs=tuple(reversed(server.irqs)),
                                   devices=tuple(reversed(server.devices)))
    a, b = make_plan(server, pol()), make_plan(shuffled, pol())
    assert a == b
    assert plan_to_json(a, policy_source="x", irqbalance_running=False) == plan_to_json(
        b, policy_source="x", irqbalance_running=False)


def test_changes_have_reasons_and_unique_keys(server_plan: Plan) -> None:
    assert all(c.reason and c.desired for c in server_plan.changes)
    keys = [c.key for c in server_plan.changes]
    assert len(keys) == len(set(keys))
    assert all(r.reason for r in server_plan.roles)


FORBIDDEN = {"os", "io", "socket", "subprocess", "pathlib", "shutil", "tempfile",
             "agentlatd.sysfs", "agentlatd.sysfs.root", "agentlatd.apply"}


@pytest.mark.parametrize("path", sorted((REPO / "agentlatd/plan").glob("*.py")),
                         ids=lambda p: p.name)
def test_plan_modules_are_pure(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("open", "exec", "eval"), f"{path.name}: {node.func.id}()"
            continue
        else:
            continue
        for n in names:
            assert not any(n == f or n.startswith(f + ".") for f in FORBIDDEN), \
                f"{path.name} imports {n}"


def test_text_output_fits_80_columns(server_plan: Plan) -> None:
    text = render_text(server_plan, policy_source="<embedded default>")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "completion 0,32" in text and "irq.affinity 76,78,80,82,84,86,88,90" in text


@pytest.mark.parametrize(("targets", "want"), [
    (["eth0/rx-0", "eth0/rx-1", "eth0/rx-3"], "eth0/rx-[0-1,3]"),
    (["76", "78"], "76,78"),
    (["eth0"], "eth0"),
    (["net.core.rps_sock_flow_entries"], "net.core.rps_sock_flow_entries"),
])
def test_compress_targets(targets: list[str], want: str) -> None:
    assert compress_targets(targets) == want


def test_json_document_has_the_contract_keys(server_plan: Plan) -> None:
    doc: dict[str, Any] = plan_to_json(server_plan, policy_source="p", irqbalance_running=False)
    assert doc["completion_cpus"] == "0,32" and doc["home_cpus"] == "1-31,33-63"
    assert set(doc["changes"][0]) == {"knob", "target", "current", "desired", "before", "after",
                                      "reason"}
    assert {"roles", "advice", "notes", "quiet_home_order"} <= doc.keys()
