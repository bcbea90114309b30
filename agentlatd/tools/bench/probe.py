"""The C probe (probe.c): compile it at run time and drive its processes.

Every probe mode prints "ready <pid>" once its sockets and threads exist,
waits for "go" on stdin, and prints one result line when it ends (its time
bound, its count bound, or SIGTERM). The harness starts all processes of a
run, places them (affinity, RPS, registration with agentlatd), then says go
to all of them at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from importlib import resources

from agentlatd.errors import AgentlatdError

CFLAGS = ("-O2", "-Wall", "-pthread")


class ProbeError(AgentlatdError):
    """The probe could not be built or one of its processes failed."""


def build_probe(workdir: str) -> str:
    """Compile probe.c into workdir/probe with the host's gcc; return the binary's path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise ProbeError("the bench compiles its C probe at run time and needs gcc "
                         "(apt-get install gcc).")
    src = os.path.join(workdir, "probe.c")
    with open(src, "w") as f:
        f.write(resources.files("agentlatd.tools.bench").joinpath("probe.c").read_text())
    out = os.path.join(workdir, "probe")
    p = subprocess.run([gcc, *CFLAGS, "-o", out, src], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise ProbeError(f"gcc could not build the probe: {p.stderr.strip()[-500:]}")
    return out


class ProbeProc:
    """One probe process: start -> ready -> go -> result."""

    def __init__(self, argv: list[str], *, name: str, nice: int = 0) -> None:
        self.name = name
        self.argv = argv
        self.proc: subprocess.Popen[str] | None = None
        self.pid = 0
        self.result = ""
        self._nice = nice

    def start(self, timeout: float = 10.0) -> int:
        """Start the process and wait for its "ready" line; returns its pid."""
        nice = self._nice
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        assert self.proc.stdout is not None
        line = _readline(self.proc, timeout)
        if not line.startswith("ready "):
            err = self._stderr()
            self.kill()
            raise ProbeError(f"probe {self.name} did not start: {err or line.strip() or 'no output'}")
        self.pid = int(line.split()[1])
        return self.pid

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float) -> str:
        """Wait for the result line (the process ends by its own bound)."""
        assert self.proc is not None
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ProbeError(f"probe {self.name} ran past its bound ({timeout:.0f} s)") from None
        if self.proc.returncode != 0:
            raise ProbeError(f"probe {self.name} failed ({self.proc.returncode}): {err.strip()[-300:]}")
        self.result = out.strip().splitlines()[-1] if out.strip() else ""
        return self.result

    def stop(self, timeout: float = 5.0) -> str:
        """SIGTERM (the probe prints its counts and exits), then SIGKILL."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            out, _err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return ""
        except ValueError:  # pipes already closed by finish()
            return self.result
        lines = (out or "").strip().splitlines()
        if lines and not self.result:
            self.result = lines[-1]
        return self.result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                self.proc.communicate(timeout=5)

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        if self.proc.poll() is None:
            return ""
        try:
            return self.proc.stderr.read().strip()[-300:]
        except ValueError:
            return ""


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or "" after `timeout` seconds or at EOF."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return ""
            if sel.select(left):
                return proc.stdout.readline()
            if proc.poll() is not None:
                return ""
    finally:
        sel.close()


def parse_counts(line: str) -> tuple[int, float]:
    """"sent 123 2.000001" -> (123, 2.000001); (0, 0.0) when absent or malformed."""
    toks = line.split()
    try:
        return int(toks[1]), float(toks[2])
    except (IndexError, ValueError):
        return 0, 0.0
