"""make_plan with agent links (plan/rps.py local_links, plan/build.py agent_link_notes), and the
IRQs agentlatd leaves in place (plan/irq_affinity.py fixed_irqs/fixed_irq_load) steering the
"auto" completion CPUs (plan/partition.py FIXED_MIN / FIXED_SHARE).

Machines: the recorded fixture trees (tests/fixtures/machines) through scan_machine, and small
synthetic ones (plan_synth.py) where a case needs one device or IRQ changed.
"""

from __future__ import annotations

import dataclasses
import pathlib

import plan_synth as synth
import pytest

from agentlatd import policy
from agentlatd.commands.plan import plan_to_json
from agentlatd.cpuset import CpuSet
from agentlatd.model.agent_links import NONE, AgentLink, AgentLinks
from agentlatd.model.machine import Device, Irq, Machine, Topology
from agentlatd.plan.build import make_plan
from agentlatd.plan.changes import Plan
from agentlatd.plan.irq_affinity import FIXED_NOTABLE, fixed_irq_load, fixed_irqs
from agentlatd.plan.partition import FIXED_MIN, FIXED_SHARE, Partition, partition
from agentlatd.policy import CpusPolicy, Policy
from agentlatd.sysfs.root import Root
from agentlatd.tick import scan_machine

S = CpuSet.parse_list
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "machines"


def pol(text: str = "") -> Policy:
    return policy.loads(text, "test.toml") if text else policy.default()


def rps(plan: Plan, dev: str) -> dict[str, CpuSet]:
    """rx queue -> the rps_cpus the plan wants, for device `dev`."""
    return {c.target_text.split("/", 1)[1]: CpuSet.parse_mask(c.desired)
            for c in plan.changes if c.knob == "net.rps_cpus" and c.target_text.startswith(dev + "/")}


def local(dev: str, cpus: str, *agents: str, pps: float | None = 800.0) -> AgentLinks:
    return AgentLinks(local={dev: AgentLink(dev, S(cpus), tuple(sorted(agents or ("agent-a",))), pps)})


def busy(dev: str, cpus: str, pps: float | None = 90000.0) -> AgentLinks:
    return AgentLinks(busy={dev: AgentLink(dev, S(cpus), ("agent-a",), pps)})


@pytest.fixture(scope="module")
def server() -> Machine:
    return scan_machine(Root(str(FIXTURES / "server-2s64t")))


@pytest.fixture(scope="module")
def this_host() -> Machine:
    return scan_machine(Root(str(FIXTURES / "this-host")))


@pytest.fixture(scope="module")
def server_base(server: Machine) -> Plan:
    return make_plan(server, pol())


def test_fixture_baseline_all_rx_queues_on_the_completion_cpus(server_base: Plan) -> None:
    q = rps(server_base, "ens1f0")
    assert len(q) == 16
    assert set(q.values()) == {server_base.completion_cpus} == {S("0,32")}
    assert server_base.agent_links == NONE


# -- local links -----------------------------------------------------------------------

def test_local_link_gets_rps_on_its_agents_home_cpus(server: Machine, server_base: Plan) -> None:
    links = local("ens1f0", "5,6", "agent-b", "agent-a")
    plan = make_plan(server, pol(), agent_links=links)
    q = rps(plan, "ens1f0")
    assert set(q) == set(rps(server_base, "ens1f0"))  # every rx queue
    assert set(q.values()) == {S("5,6")}
    assert dict(plan.agent_links.local) == dict(links.local)
    assert plan.agent_links.busy == {}
    change = next(c for c in plan.changes if c.knob == "net.rps_cpus")
    assert "agent-a, agent-b" in change.reason and "800 packets/s" in change.reason
    assert any(n.startswith("Agent link ens1f0") and "5-6" in n for n in plan.notes)
    # only RPS moves: IRQs, XPS and the partition are those of the plan without links
    others = [c for c in plan.changes if c.knob != "net.rps_cpus"]
    assert others == [c for c in server_base.changes if c.knob != "net.rps_cpus"]
    assert (plan.completion_cpus, plan.home_cpus) == (server_base.completion_cpus, server_base.home_cpus)


def test_local_link_with_unknown_rate_says_so(server: Machine) -> None:
    plan = make_plan(server, pol(), agent_links=local("ens1f0", "7", pps=None))
    assert set(rps(plan, "ens1f0").values()) == {S("7")}
    assert all("rate unknown" in c.reason for c in plan.changes if c.knob == "net.rps_cpus")


def test_other_nics_stay_on_the_completion_cpus() -> None:
    topo = synth.topology(cores=8)
    eth0, i0 = synth.nic("eth0", 0, 40, 4, topo.possible)
    eth1, i1 = synth.nic("eth1", 0, 60, 2, topo.possible)
    m = synth.machine(topo, [eth0, eth1], i0 + i1)
    plan = make_plan(m, pol(), agent_links=local("eth1", "3,5"))
    assert plan.completion_cpus == S("0")
    assert rps(plan, "eth0") == {f"rx-{q}": S("0") for q in range(4)}
    assert rps(plan, "eth1") == {"rx-0": S("3,5"), "rx-1": S("3,5")}
    assert set(plan.agent_links.local) == {"eth1"}


def test_other_nic_in_scope_on_the_fixture_stays_on_completion(server: Machine) -> None:
    # docker0 is only in scope when devices.include names it
    p = pol('[devices]\ninclude = ["ens1f0", "docker0"]\n')
    plan = make_plan(server, p, agent_links=local("docker0", "9"))
    assert rps(plan, "docker0") == {"rx-0": S("9")}
    assert set(rps(plan, "ens1f0").values()) == {plan.completion_cpus}


@pytest.mark.parametrize("dev", ["lo", "docker0", "nvme0", "nosuch0"])
def test_link_on_a_device_out_of_scope_is_ignored(server: Machine, server_base: Plan, dev: str) -> None:
    plan = make_plan(server, pol(), agent_links=local(dev, "5"))
    assert plan.agent_links.local == {} and plan.agent_links.busy == {}
    assert plan.changes == server_base.changes
    assert plan.notes == server_base.notes


def test_busy_link_out_of_scope_gives_no_note(server: Machine, server_base: Plan) -> None:
    plan = make_plan(server, pol(), agent_links=busy("docker0", "5"))
    assert plan.notes == server_base.notes and plan.agent_links.busy == {}


def test_home_cpus_outside_the_home_set_are_dropped(server: Machine) -> None:
    plan = make_plan(server, pol(), agent_links=local("ens1f0", "0,5,32"))  # 0,32: completion CPUs
    assert set(rps(plan, "ens1f0").values()) == {S("5")}
    assert plan.agent_links.local["ens1f0"].home_cpus == S("5")
    assert plan.agent_links.local["ens1f0"].agents == ("agent-a",)
    # a CPU the machine does not have is no home CPU either
    plan = make_plan(server, pol(), agent_links=local("ens1f0", "6,200"))
    assert set(rps(plan, "ens1f0").values()) == {S("6")}


def test_link_with_no_home_cpu_left_is_dropped(server: Machine, server_base: Plan) -> None:
    plan = make_plan(server, pol(), agent_links=local("ens1f0", "0,32"))
    assert plan.agent_links.local == {}
    assert plan.changes == server_base.changes


@pytest.mark.parametrize("text", [
    "[tuning]\nrps_flow_cnt = 4096\nrps_sock_flow_entries = 32768\n",  # RFS steers flows itself
    '[tuning]\nagent_links = "completion"\n',
])
def test_rfs_or_completion_policy_ignores_links(server: Machine, text: str) -> None:
    p = pol(text)
    base = make_plan(server, p)
    plan = make_plan(server, p, agent_links=local("ens1f0", "5,6"))
    assert plan.agent_links == NONE
    assert set(rps(plan, "ens1f0").values()) == {plan.completion_cpus}
    assert plan.changes == base.changes and plan.notes == base.notes
    # nor is a busy link reported
    assert make_plan(server, p, agent_links=busy("ens1f0", "5")).notes == base.notes


def test_no_rps_ignores_links(server: Machine) -> None:
    plan = make_plan(server, pol("[tuning]\nrps = false\n"), agent_links=local("ens1f0", "5"))
    assert rps(plan, "ens1f0") == {} and plan.agent_links == NONE


def test_busy_link_gets_a_note_and_stays_on_completion(server: Machine, server_base: Plan) -> None:
    plan = make_plan(server, pol(), agent_links=busy("ens1f0", "5", 90000.0))
    assert set(rps(plan, "ens1f0").values()) == {plan.completion_cpus}
    assert plan.changes == server_base.changes
    assert plan.agent_links.local == {} and set(plan.agent_links.busy) == {"ens1f0"}
    (note,) = [n for n in plan.notes if n not in server_base.notes]
    assert "ens1f0" in note and "RFS" in note and "90000 packets/s" in note and "agent-a" in note
    assert "20000" in note  # the policy's max


def test_busy_link_without_a_rate_gets_no_note(server: Machine, server_base: Plan) -> None:
    plan = make_plan(server, pol(), agent_links=busy("ens1f0", "5", None))
    assert plan.notes == server_base.notes


def test_make_plan_with_links_is_deterministic(server: Machine) -> None:
    a = AgentLink("ens1f0", S("5,6"), ("agent-a",), 10.0)
    b = AgentLink("docker0", S("9"), ("agent-b",), 20.0)
    p = pol('[devices]\ninclude = ["ens1f0", "docker0"]\n')
    one = make_plan(server, p, agent_links=AgentLinks(local={"ens1f0": a, "docker0": b}))
    two = make_plan(server, p, agent_links=AgentLinks(local={"docker0": b, "ens1f0": a}))
    again = make_plan(server, p, agent_links=AgentLinks(local={"ens1f0": a, "docker0": b}))
    assert one == two == again
    assert one.notes == two.notes  # same order whatever the links' order
    js = [plan_to_json(x, policy_source="t", irqbalance_running=False) for x in (one, two, again)]
    assert js[0] == js[1] == js[2]


def test_this_host_fixture_link_on_eth0(this_host: Machine) -> None:
    plan = make_plan(this_host, pol(), agent_links=local("eth0", "0,1"))
    assert plan.home_cpus == S("0")
    assert rps(plan, "eth0") == {"rx-0": S("0")}  # CPU 1 (completion) dropped


# -- fixed IRQs: the fixture -------------------------------------------------------------

def test_this_host_completion_cpu_is_where_the_virtio_blk_irq_lands(this_host: Machine) -> None:
    blk = this_host.irq(36)  # virtio1-req.0 of vda: managed, one queue, mask 0-1, lands on 1
    assert blk.managed and blk.device == "vda"
    assert blk.smp_affinity == S("0-1") and blk.effective_affinity == S("1")
    devices = tuple(d for d in this_host.devices if d.name == "eth0")
    fixed = fixed_irqs(this_host, devices, steered=True)
    assert 36 in fixed
    eth0_irqs = set(this_host.device("eth0").irqs)
    assert eth0_irqs and not eth0_irqs & fixed  # the NIC's IRQs are steered: not fixed
    assert fixed_irq_load(this_host, fixed)[1] >= blk.total
    plan = make_plan(this_host, pol())
    assert plan.completion_cpus == S("1") and plan.home_cpus == S("0")
    assert any("Completion CPU(s) 1 chosen where IRQs" in n for n in plan.notes)


def test_this_host_completion_follows_the_disk_irq(this_host: Machine) -> None:
    # the same machine with the disk's IRQ landing on CPU 0: CPU 0 absorbs completions instead
    irqs = tuple(dataclasses.replace(i, effective_affinity=S("0"), per_cpu={0: i.total})
                 if i.irq == 36 else i for i in this_host.irqs)
    plan = make_plan(dataclasses.replace(this_host, irqs=irqs), pol())
    assert plan.completion_cpus == S("0") and plan.home_cpus == S("1")


def test_server_per_core_nvme_queues_are_not_fixed(server: Machine) -> None:
    nvme = set(server.device("nvme0").irqs)
    managed = {i.irq for i in server.irqs if i.managed}
    assert managed and managed <= nvme
    fixed = fixed_irqs(server, tuple(d for d in server.devices if d.name in ("ens1f0", "nvme0")), True)
    assert not managed & fixed


# -- fixed IRQs: synthetic machines --------------------------------------------------------

TOPO = synth.topology(cores=4, threads=2)  # cores {0,4} {1,5} {2,6} {3,7}


def irq(n: int, *, device: str | None = None, smp: str = "0-7", eff: str | None = None,
        managed: bool = False, total: int = 0) -> Irq:
    on = S(eff) if eff is not None else None
    per = {min(on or S(smp)): total} if total else {}
    return Irq(irq=n, name=f"irq{n}", chip="IR-PCI-MSIX", hwirq=str(n), trigger="edge", device=device,
               queue=None, total=total, per_cpu=per, smp_affinity=S(smp), effective_affinity=on,
               affinity_hint=None, node=None, managed=managed,
               managed_reason="test" if managed else "")


def mach(irqs: list[Irq], devices: list[Device] | None = None, topo: Topology = TOPO) -> Machine:
    return synth.machine(topo, devices or [], irqs)


def nic(name: str, irqs: tuple[int, ...], kind: str = "net") -> Device:
    return Device(name=name, kind=kind, driver="x", pci=None, numa_node=0, irqs=irqs, queues=())


@pytest.mark.parametrize(("the_irq", "is_fixed"), [
    (irq(1, device="nvme0", smp="1,5", eff="1", managed=True), False),  # per-core managed queue
    (irq(2, device="nvme0", smp="2", eff="2", managed=True), False),  # per-CPU managed queue
    (irq(3, device="vda", smp="0-1,4-5", eff="1", managed=True), True),  # one queue for two cores
    (irq(4, device="vda", smp="0-7", eff="3", managed=True), True),  # one queue for all
    (irq(5, device="nvme0", smp="1,5", managed=True), False),  # no effective file: the mask
    (irq(6, device=None, smp="0-7", eff="0-7"), False),  # a per-CPU timer: lands everywhere
    (irq(7, device=None, smp="0-7", eff="2"), True),  # ACPI, a serial port: no known device
    (irq(8, device="eth9", smp="0-7", eff="6"), True),  # a device out of scope
    (irq(9, device="eth0", smp="0-7", eff="6"), False),  # the NIC in scope: steered
    (irq(10, device=None, smp="", eff=""), False),  # lands nowhere
])
def test_fixed_irqs(the_irq: Irq, is_fixed: bool) -> None:
    m = mach([the_irq], [nic("eth0", (9,)), nic("nvme0", (1, 2, 5), kind="nvme")])
    scope = tuple(m.devices)
    assert (the_irq.irq in fixed_irqs(m, scope, steered=True)) is is_fixed


def test_in_scope_irqs_are_fixed_when_not_steered() -> None:
    m = mach([irq(9, device="eth0", smp="0-7", eff="6"),
              irq(11, device="nvme0", smp="0-7", eff="5"),  # admin queue: not managed
              irq(1, device="nvme0", smp="1,5", eff="1", managed=True)],
             [nic("eth0", (9,)), nic("nvme0", (1, 11), kind="nvme")])
    scope = tuple(m.devices)
    assert fixed_irqs(m, scope, steered=True) == frozenset()
    assert fixed_irqs(m, scope, steered=False) == {9, 11}  # the managed per-core queue still is not


def test_block_device_irqs_are_fixed_even_in_scope() -> None:
    # only NIC and NVMe IRQs are steered (plan_irq_affinity); a virtio-blk disk's are not
    m = mach([irq(12, device="vda", smp="0-7", eff="4")], [nic("vda", (12,), kind="block")])
    assert fixed_irqs(m, tuple(m.devices), steered=True) == {12}


def test_fixed_irq_load_counts_totals_where_they_land_now() -> None:
    m = mach([irq(7, smp="0-7", eff="3", total=40000),
              irq(8, device="eth9", smp="0-7", eff="2,6", total=30000),
              irq(9, device="eth0", smp="0-7", eff="1", total=50000),  # not fixed: not counted
              irq(13, smp="0-7", eff="5", total=0)])
    m = dataclasses.replace(m, irqs=tuple(dataclasses.replace(i, per_cpu={0: i.total}) for i in m.irqs))
    assert fixed_irq_load(m, frozenset({7, 8, 13})) == {3: 40000.0, 2: 15000.0, 6: 15000.0}
    assert fixed_irq_load(m, frozenset()) == {}


def test_tiny_fixed_loads_are_ignored() -> None:
    big = 10**9
    small = int(FIXED_NOTABLE * big) - 1
    m = mach([irq(7, smp="0-7", eff="3", total=small), irq(9, device="eth0", eff="1", total=big)])
    assert fixed_irq_load(m, frozenset({7})) == {}
    # a little more than the bar counts (the bar is a share of every IRQ's count, fixed ones too)
    m2 = mach([irq(7, smp="0-7", eff="3", total=big // 50), irq(9, device="eth0", eff="1", total=big)])
    assert fixed_irq_load(m2, frozenset({7})) == {3: float(big // 50)}


# -- the partition prefers the cores fixed IRQs keep busy -----------------------------------------

def _split(topo: Topology, load: dict[int, float], **kw: object) -> Partition:
    eth, _ = synth.nic("eth0", 0, 40, 4, topo.possible)
    return partition(topo, [eth], dataclasses.replace(CpusPolicy(), **kw), load)  # type: ignore[arg-type]


def test_busy_cpu_is_taken_only_above_fixed_min() -> None:
    topo = synth.topology(cores=4)
    assert _split(topo, {}).completion == S("0")
    assert _split(topo, {2: FIXED_MIN - 1}).completion == S("0")
    p = _split(topo, {2: FIXED_MIN})
    assert p.completion == S("2")
    assert any("Completion CPU(s) 2 chosen where IRQs" in n for n in p.notes)


def test_busy_core_takes_both_threads_with_smt() -> None:
    p = _split(TOPO, {5: 2 * FIXED_MIN})
    assert p.completion == S("1,5") and not p.home & S("1,5")
    assert _split(TOPO, {5: 2 * FIXED_MIN}, smt_isolation=False).completion == S("5")


def test_a_cores_load_is_the_sum_of_its_threads() -> None:
    half = FIXED_MIN / 2 + 1
    assert _split(TOPO, {1: half, 5: half}).completion == S("1,5")
    assert _split(TOPO, {1: half, 6: half}).completion == S("0,4")  # two cores, each under


def test_the_note_follows_the_core_choice() -> None:
    half = FIXED_MIN / 2 + 1
    p = _split(TOPO, {1: half, 5: half})
    assert p.completion == S("1,5")
    assert any("chosen where IRQs" in n for n in p.notes)


def test_fixed_share_of_the_busiest() -> None:
    topo = synth.topology(cores=6)
    top = 10 * FIXED_MIN
    under = FIXED_SHARE * top - 1
    # two completion CPUs wanted: the busiest, then the lowest, since CPU 4 is under the share
    assert _split(topo, {3: top, 4: under}, completion_per_node=2).completion == S("0,3")
    assert _split(topo, {3: top, 4: FIXED_SHARE * top}, completion_per_node=2).completion == S("3-4")
    # one wanted: among busy CPUs the lowest-numbered; one under the share is not busy
    assert _split(topo, {1: FIXED_SHARE * top, 3: top}).completion == S("1")
    assert _split(topo, {1: FIXED_SHARE * top - 1, 3: top}).completion == S("3")


def test_make_plan_moves_completion_to_an_out_of_scope_devices_core() -> None:
    topo = synth.topology(cores=4, threads=2)
    eth, eirqs = synth.nic("eth0", 0, 40, 4, topo.possible)
    disk = irq(90, device="sda", smp="0-7", eff="6", total=5 * FIXED_MIN)
    base = make_plan(synth.machine(topo, [eth], eirqs), pol())
    assert base.completion_cpus == S("0,4")
    plan = make_plan(synth.machine(topo, [eth], [*eirqs, disk]), pol())
    assert plan.completion_cpus == S("2,6")
    assert not plan.home_cpus & S("2,6")
    assert set(rps(plan, "eth0").values()) == {S("2,6")}


def test_make_plan_unsteered_nic_irqs_count_as_fixed() -> None:
    topo = synth.topology(cores=4, threads=2)
    eth, eirqs = synth.nic("eth0", 0, 40, 4, topo.possible)
    hot = [dataclasses.replace(i, effective_affinity=S("3"), total=3 * FIXED_MIN,
                               per_cpu={3: 3 * FIXED_MIN}) for i in eirqs]
    m = synth.machine(topo, [eth], hot)
    assert make_plan(m, pol()).completion_cpus == S("0,4")  # steered: they will move
    assert make_plan(m, pol("[tuning]\nirq_affinity = false\n")).completion_cpus == S("3,7")
