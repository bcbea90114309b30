"""Real-kernel tier: tests that run inside the QEMU guest booted by tests/vm/run_tier.sh.

Every test in this directory gets the `vm` marker (write `pytestmark = pytest.mark.vm` too,
for readers) and is skipped, with the reason, anywhere but in the guest.  The guest is one
throw-away VM for the whole tier, so a test that changes kernel state (IRQ affinity, NIC
settings) restores it, through the fixtures below, for the tests after it.

To add tests: drop a test_*.py file here.  Guest layout (tests/vm/run_vm.sh):
4 vCPUs; NVMe (nvme0); virtio-net with 4 queues (MAC 52:54:00:00:00:10, peer 10.9.0.1 with a
UDP echo server on port 7); e1000e and igb on QEMU user networking (gateways 10.0.2.2 and
10.0.3.2 answer ping); the netdevsim module; the host's / read-only under a tmpfs overlay.
"""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import guestlib as g
import pytest

HERE = pathlib.Path(__file__).resolve().parent
# tests/vm/init sets both: the env var for the job, the hostname for the whole guest
IN_GUEST = os.environ.get("AGENTLATD_VM_GUEST") == "1" and socket.gethostname() == "agentlatd-vm"
NOT_IN_GUEST = "real-kernel test: runs only inside the QEMU guest; run it with `bash tests/vm/run_tier.sh`"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs only inside the QEMU guest (tests/vm/run_tier.sh)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = "QEMU guest" if IN_GUEST else "NOT the QEMU guest: vm tests will be skipped"
    return [f"agentlatd vm tier: {where}, kernel {os.uname().release}, {os.cpu_count()} CPUs"]


@pytest.hookimpl(tryfirst=True)  # before -m vm deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=NOT_IN_GUEST)
    for item in items:
        if not item.path.is_relative_to(HERE):
            continue
        if item.get_closest_marker("vm") is None:
            item.add_marker(pytest.mark.vm)
        if not IN_GUEST:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_nics() -> g.Nics:
    """All three NICs up with addresses (e1000e and igb request their IRQs only when up)."""
    names = {role: g.ifname_by_mac(mac) for role, mac in g.MACS.items()}
    missing = [role for role, n in names.items() if n is None]
    assert not missing, f"NICs missing in the guest: {missing} (have {os.listdir('/sys/class/net')})"
    nics = g.Nics(**names)  # type: ignore[arg-type]
    addrs = {nics.virtio: g.VIRTIO_GUEST_ADDR, nics.e1000e: g.SLIRP["e1000e"][0], nics.igb: g.SLIRP["igb"][0]}
    for ifname, addr in addrs.items():
        g.run("ip", "addr", "replace", addr, "dev", ifname)
        g.run("ip", "link", "set", ifname, "up")
    for ifname in addrs:
        g.wait_for(
            lambda i=ifname: pathlib.Path(f"/sys/class/net/{i}/operstate").read_text().strip() == "up",
            what=f"{ifname} operstate up",
        )
    return nics


@pytest.fixture
def steer_irq() -> Iterator[Callable[[int, str], None]]:
    """steer_irq(irq, cpulist): write /proc/irq/N/smp_affinity_list (one os.write; raises
    the kernel's OSError) and restore every IRQ it touched after the test."""
    saved: dict[int, str] = {}

    def steer(irq: int, cpus: str) -> None:
        saved.setdefault(irq, g.read_cpulist(irq))
        g.write_once(g.irq_path(irq, "smp_affinity_list"), f"{cpus}\n")

    yield steer
    for irq, cpus in saved.items():
        g.write_errno(g.irq_path(irq, "smp_affinity_list"), f"{cpus}\n")


@pytest.fixture
def netdevsim() -> Iterator[Callable[..., str]]:
    """netdevsim(ports=1, queues=4) -> ifname of a new netdevsim device's first port;
    every device made is deleted after the test."""
    made: list[int] = []
    bus = pathlib.Path("/sys/bus/netdevsim")

    def make(ports: int = 1, queues: int = 4) -> str:
        dev_id = 100 + len(made)
        while (bus / "devices" / f"netdevsim{dev_id}").exists():
            dev_id += 1
        g.write_once(bus / "new_device", f"{dev_id} {ports} {queues}")
        made.append(dev_id)
        net = bus / "devices" / f"netdevsim{dev_id}" / "net"
        g.wait_for(lambda: net.is_dir() and any(net.iterdir()), what=f"netdevsim{dev_id} netdev")
        return sorted(p.name for p in net.iterdir())[0]

    yield make
    for dev_id in made:
        g.write_errno(bus / "del_device", str(dev_id))


# --- agentlatd itself in the guest (test_agentlatd_*.py) ---------------------------------
@pytest.fixture(scope="session")
def agentlatd() -> g.Agentlatd:
    """Runs agentlatd (g.Agentlatd: run() = fresh interpreter, fork() = forked cli.main)."""
    return g.Agentlatd()


@dataclass
class Lab:
    """The devices an agentlatd policy in these tests names, and that policy."""

    nics: g.Nics
    nsim: str  # a netdevsim port (4 queues, up): NAPIs without IRQs, every coalescing field
    workdir: pathlib.Path

    @property
    def ifnames(self) -> list[str]:
        return [self.nics.virtio, self.nics.e1000e, self.nics.igb, self.nsim]

    def policy(self, name: str, extra: str = "") -> pathlib.Path:
        """A policy naming exactly the guest's NICs, the netdevsim port and nvme0:
        completion CPUs 0-1, home CPUs 2-3, threaded NAPI on; every other key default
        (daemon.irqbalance = "cooperate", the default, changes nothing where irqbalance
        does not run; test_agentlatd_7_irqbalance.py runs it)."""
        names = ", ".join(f'"{n}"' for n in [*self.ifnames, "nvme0"])
        path = self.workdir / name
        path.write_text(
            "[daemon]\ninterval = 1.0\n"
            f'[cpus]\ncompletion = "0-1"\nhome = "2-3"\n'
            f"[devices]\ninclude = [{names}]\n"
            "[tuning]\nthreaded_napi = true\n" + extra)
        return path


@pytest.fixture(scope="session")
def agentlatd_lab(guest_nics: g.Nics, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    bus = pathlib.Path("/sys/bus/netdevsim")
    dev_id = 200
    while (bus / "devices" / f"netdevsim{dev_id}").exists():
        dev_id += 1
    g.write_once(bus / "new_device", f"{dev_id} 1 4")
    try:
        net = bus / "devices" / f"netdevsim{dev_id}" / "net"
        g.wait_for(lambda: net.is_dir() and any(net.iterdir()), what=f"netdevsim{dev_id} netdev")
        nsim = sorted(p.name for p in net.iterdir())[0]
        g.run("ip", "link", "set", nsim, "up")  # NAPIs exist only while up
        yield Lab(guest_nics, nsim, tmp_path_factory.mktemp("agentlatd"))
    finally:
        g.write_errno(bus / "del_device", str(dev_id))
