"""The IO boundary: the only place that turns a kernel path into a file path.

Every reader and writer in agentlatd names kernel files relative to a Root
("proc/interrupts", "sys/class/net/eth0/queues/rx-0/rps_cpus"). Root("/") is
the live host; Root("tests/fixtures/machines/x") replays a recorded tree, so
`agentlatd plan --root DIR` runs exactly the daemon's tick offline
(prometheus/procfs --path.procfs, node_exporter fixtures).

Three primitives for pseudo-files (style.md habit 3):
  read_text   read the whole file in a loop; never trust st_size (sysfs and
              procfs report 4096 or 0)
  read_value  one small value, stripped
  write_value one os.write() on an unbuffered fd, so the errno comes from that
              call (irqbalance issue #301: buffered writes report late or never)
OSError is translated here, once, into KernelError with an ErrClass.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator

from agentlatd.errors import KernelError
from agentlatd.sysfs.pacing import give_way

_CHUNK = 1 << 16
_SMALL = 8192  # > PAGE_SIZE: one read() holds any sysfs attribute


class Root:
    """A filesystem root holding proc/ and sys/ laid out as on a real host."""

    __slots__ = ("_prefix", "base")

    def __init__(self, base: str = "/") -> None:
        self.base = os.path.abspath(base)
        # what path() puts before a kernel path: os.path.join's result, made once
        # (path() runs for every file the daemon reads, thousands per tick)
        self._prefix = self.base if self.base.endswith("/") else self.base + "/"

    @property
    def is_host(self) -> bool:
        """True for the live host's own root."""
        return self.base == "/"

    def __repr__(self) -> str:
        return f"Root({self.base!r})"

    def path(self, rel: str) -> str:
        """The file path of kernel path `rel` ("proc/stat") under this root."""
        rel = rel.lstrip("/")
        if ".." in rel and ".." in rel.split("/"):
            # nothing client-supplied may walk out of the root
            raise ValueError(f"kernel path may not contain '..': {rel!r}")
        return self._prefix + rel

    # -- reading ---------------------------------------------------------
    def read_bytes(self, rel: str, context: str | None = None) -> bytes:
        give_way()  # sysfs/pacing.py: a background thread waits for the main loop
        p = self.path(rel)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError("read", rel, e.errno or 0, context) from e
        try:
            chunks = []
            while True:
                b = os.read(fd, _CHUNK)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)
        except OSError as e:
            raise KernelError("read", rel, e.errno or 0, context) from e
        finally:
            os.close(fd)

    def read_many(self, rel_dir: str, names: Iterable[str]) -> list[bytes | None]:
        """Small files `rel_dir/name` for each name, None for one that is absent or unreadable.

        For ticks that read hundreds of sysfs attributes (sample/counters.py
        reads /sys/kernel/irq/N/per_cpu_count for every IRQ that fired): the
        directory is opened once and each file with openat(), and one read()
        of _SMALL bytes suffices for a file shorter than that (a sysfs show()
        returns its whole value, at most PAGE_SIZE, on the first read; a
        short read of a regular file is its end). Longer files are read on.
        """
        give_way()
        d = self.path(rel_dir)
        out: list[bytes | None] = []
        try:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return [None for _ in names]
        try:
            for name in names:
                if name.startswith("/") or ".." in name.split("/"):
                    raise ValueError(f"kernel path may not leave {rel_dir!r}: {name!r}")
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    out.append(None)
                    continue
                try:
                    b = os.read(fd, _SMALL)
                    if len(b) == _SMALL:
                        chunks = [b]
                        while b:
                            b = os.read(fd, _CHUNK)
                            chunks.append(b)
                        b = b"".join(chunks)
                    out.append(b)
                except OSError:
                    out.append(None)
                finally:
                    os.close(fd)
        finally:
            os.close(dfd)
        return out

    def read_text(self, rel: str, context: str | None = None) -> str:
        """The whole file as text."""
        return self.read_bytes(rel, context).decode("utf-8", "replace")

    def read_value(self, rel: str, context: str | None = None) -> str:
        """One small value, whitespace stripped."""
        return self.read_text(rel, context).strip()

    def read_optional(self, rel: str, default: str = "") -> str:
        """read_value, or `default` when the file is absent or unreadable.

        For files whose absence is meaningful (sys/devices/system/cpu/isolated
        is missing on kernels without the feature: absent means empty).
        """
        try:
            return self.read_value(rel)
        except KernelError:
            return default

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def mode(self, rel: str) -> int | None:
        """Permission bits of `rel` (None when absent).

        Since 6.12 the kernel makes a managed IRQ's /proc/irq/N/smp_affinity*
        files 0444 (seen in the VM tier): a mode read detects it without a write.
        """
        try:
            return os.lstat(self.path(rel)).st_mode & 0o7777
        except OSError:
            return None

    def isdir(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Sorted entries of directory `rel`; [] when it does not exist."""
        give_way()
        try:
            return sorted(os.listdir(self.path(rel)))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            return []
        except OSError as e:
            raise KernelError("list", rel, e.errno or 0) from e

    def subdirs(self, rel: str) -> list[str]:
        """Sorted names of the directories in `rel` ([] when absent), from the
        directory entries' types (scandir): no stat() of each file, which
        matters for cgroup trees of thousands of directories."""
        give_way()
        try:
            with os.scandir(self.path(rel)) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    def readlink(self, rel: str) -> str:
        """The raw target of symlink `rel` ("" when it is not a link)."""
        give_way()
        try:
            return os.readlink(self.path(rel))
        except OSError:
            return ""

    def realpath(self, rel: str) -> str:
        """`rel` with symlinks resolved, as a kernel path relative to this root.

        Symlinks in sysfs are relative ("../../devices/pci0000:00/..."), so they
        resolve inside a recorded tree exactly as on the host.
        """
        real = os.path.realpath(self.path(rel))
        base = self.base.rstrip("/") + "/"
        if self.base == "/":
            return real.lstrip("/")
        if real.startswith(base):
            return real[len(base):]
        return real.lstrip("/")

    def glob(self, pattern: str) -> list[str]:
        """Kernel paths matching `pattern` ('*' within one component), sorted."""
        parts = pattern.strip("/").split("/")
        found = [""]
        for part in parts:
            nxt: list[str] = []
            for d in found:
                if any(ch in part for ch in "*?["):
                    for name in self.listdir(d) if d else sorted(os.listdir(self.base)):
                        if fnmatch.fnmatchcase(name, part):
                            nxt.append(f"{d}/{name}" if d else name)
                else:
                    cand = f"{d}/{part}" if d else part
                    if self.exists(cand):
                        nxt.append(cand)
            found = nxt
        return sorted(found)

    def walk_files(self, rel: str) -> Iterator[str]:
        """Every file below `rel` without following symlinks (for capture of small trees)."""
        top = self.path(rel)
        base_len = len(self.base.rstrip("/")) + 1
        for dirpath, _dirs, files in os.walk(top, followlinks=False):
            for f in files:
                yield os.path.join(dirpath, f)[base_len:]

    # -- writing ---------------------------------------------------------
    def write_value(self, rel: str, value: str, context: str | None = None) -> None:
        """Write `value` with a single os.write; raise KernelError with the kernel's errno."""
        p = self.path(rel)
        data = value.encode()
        try:
            # O_TRUNC as `echo v > file` does: procfs/sysfs ignore it, and a
            # recorded tree's plain file must not keep a longer old value's tail
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError("write", rel, e.errno or 0, context, value) from e
        try:
            n = os.write(fd, data)
            if n != len(data):
                # sysfs/procfs store() consume the whole buffer or fail; a short
                # write is an I/O error we must not paper over
                raise KernelError("write", rel, 5, context, value)
        except OSError as e:
            raise KernelError("write", rel, e.errno or 0, context, value) from e
        finally:
            os.close(fd)


HOST = Root("/")
