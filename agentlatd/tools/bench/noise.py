"""Completion noise for the bench: a bounded NET_RX flood, disk writeback, CPU hogs.

- flood: a paced UDP sender in the flood namespace to a sink in the agent
  namespace through the second veth pair; its NET_RX softirq runs on the CPU
  that fR's rx-0 rps_cpus names (the harness points it at the agent's CPU,
  the default placement, or at the completion CPU in B). Bounded:
  --pps for the run's seconds and at most max_packets.
- writeback: buffered writes into one fixed-size file in the bench's work
  directory (rewritten in place, never growing), with writeback started every
  4 MiB; the flusher's block completions land where vda's IRQ does.
- hogs: busy loops, one per hog, bounded in seconds.
Every process ends by its own time bound even if the harness dies; the
harness also SIGTERMs them in its finally block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from agentlatd.tools.bench.netns import BenchNet
from agentlatd.tools.bench.probe import ProbeProc, parse_counts

FLOOD_PORT = 9999


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    pps: int = 150_000  # flood packets per second (paced sender)
    packet_size: int = 64  # UDP payload bytes
    hogs: int = 1
    writeback_mbps: int = 16
    writeback_file_mb: int = 64


@dataclass(slots=True)
class NoiseResult:
    flood_sent: int = 0
    flood_received: int = 0
    seconds: float = 0.0
    hog_loops: int = 0
    written_bytes: int = 0

    @property
    def flood_pps(self) -> float:
        """Packets/s the sink received: the noise's own throughput."""
        return self.flood_received / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {
            "flood_sent": self.flood_sent,
            "flood_received": self.flood_received,
            "seconds": round(self.seconds, 3),
            "flood_pps": round(self.flood_pps, 1),
            "hog_loops": self.hog_loops,
            "hog_loops_per_s": round(self.hog_loops / self.seconds, 1) if self.seconds else 0.0,
            "writeback_mbps": round(self.written_bytes / 1048576 / self.seconds, 2) if self.seconds else 0.0,
        }


@dataclass(slots=True)
class Noise:
    """The noise processes of one run."""

    probe: str
    net: BenchNet
    spec: NoiseSpec
    workdir: str
    seconds: float
    sink: ProbeProc | None = None
    flood: ProbeProc | None = None
    hogs: list[ProbeProc] = field(default_factory=list)
    writer: ProbeProc | None = None

    def start(self) -> None:
        """Start every noise process (they wait for go)."""
        s = f"{self.seconds:.3f}"
        max_packets = int(self.spec.pps * self.seconds * 1.05) + 64
        self.sink = ProbeProc([self.probe, "sink", "--ns", self.net.ns_path(self.net.ns_agent),
                               "--bind", self.net.sink_ip, "--port", str(FLOOD_PORT),
                               "--seconds", f"{self.seconds + 0.5:.3f}"], name="sink")
        self.sink.start()
        self.flood = ProbeProc([self.probe, "flood", "--ns", self.net.ns_path(self.net.ns_flood),
                                "--dst", self.net.sink_ip, "--port", str(FLOOD_PORT),
                                "--pps", str(self.spec.pps), "--size", str(self.spec.packet_size),
                                "--max-packets", str(max_packets), "--seconds", s], name="flood")
        self.flood.start()
        for i in range(self.spec.hogs):
            h = ProbeProc([self.probe, "hog", "--seconds", s], name=f"hog{i}")
            h.start()
            self.hogs.append(h)
        if self.spec.writeback_mbps > 0:
            self.writer = ProbeProc([self.probe, "writeback", "--file", os.path.join(self.workdir, "wb.dat"),
                                     "--mbps", str(self.spec.writeback_mbps),
                                     "--file-mb", str(self.spec.writeback_file_mb), "--seconds", s],
                                    name="writeback")
            self.writer.start()

    def procs(self) -> list[ProbeProc]:
        out = [p for p in (self.sink, self.flood, self.writer) if p is not None]
        return out + self.hogs

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs()}

    def go(self) -> None:
        for p in self.procs():
            p.go()

    def stop(self) -> NoiseResult:
        """Stop everything and collect counts (the flood first, then the sink drains)."""
        r = NoiseResult()
        if self.flood is not None:
            r.flood_sent, r.seconds = parse_counts(self.flood.stop())
        for h in self.hogs:
            r.hog_loops += parse_counts(h.stop())[0]
        if self.writer is not None:
            r.written_bytes = parse_counts(self.writer.stop())[0]
        if self.sink is not None:
            r.flood_received = parse_counts(self.sink.stop())[0]
        return r

    def kill(self) -> None:
        for p in self.procs():
            p.kill()
