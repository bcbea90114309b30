"""The state directory's lock: one agentlatd per state directory, never interleaved.

The Engine takes it at its first operation and holds it until close() (a
daemon for its lifetime); a second agentlatd on the same directory is refused
with a JournalError that names the holder's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from agentlatd import safepath
from agentlatd.apply import journal
from agentlatd.errors import JournalError


class StateLock:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._lock_fd: int | None = None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = None

    def take(self) -> None:
        if self._lock_fd is not None:
            return
        # every component checked and opened without following a planted
        # symlink (agentlatd/safepath.py): the journal replayed as root at the
        # next start must be one only root could have written
        try:
            dfd = safepath.open_dir(self.state_dir, create=0o755)
        except safepath.UnsafePath as e:
            raise JournalError(f"cannot use state directory {self.state_dir}: "
                               f"{e.about(self.state_dir)}") from None
        except OSError as e:
            raise JournalError(f"cannot use state directory {self.state_dir}: {e.strerror}") from e
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600,
                         dir_fd=dfd)
        except OSError as e:
            raise JournalError(f"cannot use state directory {self.state_dir}: {e.strerror}") from e
        finally:
            os.close(dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError(f"state directory {self.state_dir} is in use by another "
                                   f"agentlatd (pid {holder or '?'})") from None
            raise JournalError(f"cannot lock {self.state_dir}/lock: {e.strerror}") from e
        with contextlib.suppress(OSError):
            # the holder's pid is for the "in use by" message only: a full state
            # directory (ENOSPC on this write) must not stop a rollback, which
            # only removes the journal (tests/hostile/test_journal_damage.py)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        # a save interrupted by a crash leaves journal.json.tmp<pid> behind
        # (journal.json itself is the previous, consistent version)
        for name in os.listdir(self.state_dir):
            if name.startswith(journal.JOURNAL_NAME + ".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.state_dir, name))

