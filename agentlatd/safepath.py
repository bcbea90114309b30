"""Directories a root daemon may trust: the state directory and the socket's directory.

A path is trusted when nobody but root (or the uid agentlatd runs as) can
change what it names, from "/" down to its last component. That is sshd's
StrictModes rule (auth.c secure_path(): every component owned by root or the
user, none group- or world-writable) with systemd's exception for sticky
directories (fs-util.c chase() with CHASE_SAFE): /tmp, /dev/shm and /run/user
are world-writable, but their sticky bit stops another uid from renaming or
removing a directory root created in them.

The walk is openat-style: each component is opened relative to the fd of the
one before it with O_NOFOLLOW|O_DIRECTORY, so the checked directory is the
opened one. A symlink on the way is followed only when a trusted uid owns it
(the directory it sits in was checked already; /var/run -> /run on Debian);
the last component is never a symlink. Once a directory passes, its path can
be used as is: only root could replace any component of it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import stat

from agentlatd.errors import AgentlatdError

MAX_SYMLINKS = 40  # the kernel's own limit (fs/namei.c MAXSYMLINKS)


class UnsafePath(AgentlatdError):
    """A directory agentlatd must not trust (one sentence naming it and the fix)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def about(self, asked: str) -> str:
        """The sentence for a caller that names `asked` itself: the component
        only when it is another one (a parent, a symlink on the way)."""
        return self.problem if os.path.abspath(asked) == self.path else str(self)


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _check_dir(path: str, st: os.stat_result, *, leaf: bool, sticky_leaf_ok: bool) -> None:
    if st.st_uid not in trusted_uids():
        raise UnsafePath(path, f"owned by uid {st.st_uid}, not root: that user could replace "
                               f"what agentlatd writes there; fix: chown root {path}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if sticky and (not leaf or sticky_leaf_ok):
            return  # others may add entries, never rename or remove root's
        who = "group- and world" if st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_IWGRP \
            else "world" if st.st_mode & stat.S_IWOTH else "group"
        raise UnsafePath(path, f"{who}-writable (mode {stat.S_IMODE(st.st_mode):04o}): another "
                               f"user could swap its entries; fix: chmod go-w {path}")


def open_dir(path: str, *, create: int | None = None, sticky_leaf_ok: bool = False) -> int:
    """An O_RDONLY fd of directory `path`, after checking every component.

    `create`: mode for the components that do not exist (made as this uid);
    None: a missing component is an error. `sticky_leaf_ok`: the directory
    itself may be a world-writable sticky one (a socket's directory: /tmp).
    Raises UnsafePath for an untrusted component, OSError for the rest (the
    caller names the path).
    """
    if "\0" in path:
        raise UnsafePath(repr(path), "contains a NUL byte")
    path = os.path.abspath(path)
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_dir("/", os.fstat(fd), leaf=path == "/", sticky_leaf_ok=sticky_leaf_ok)
        todo = [c for c in path.split("/") if c]
        here = "/"
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                # only reachable through a symlink's target: restart from its absolute form
                here = os.path.dirname(here)
                nfd = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                os.close(fd)
                fd = nfd
                continue
            leaf = not todo
            cur = os.path.join(here, name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if create is None:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, create, dir_fd=fd)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if leaf:
                    raise UnsafePath(cur, "is a symbolic link; agentlatd does not follow one "
                                          "here (another user may have planted it): give the "
                                          "real directory")
                if st.st_uid not in trusted_uids():
                    raise UnsafePath(cur, f"is a symbolic link owned by uid {st.st_uid}, not "
                                          "root; refusing to follow it")
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise UnsafePath(path, "too many levels of symbolic links")
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    nfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    os.close(fd)
                    fd = nfd
                    here = "/"
                todo = [c for c in target.split("/") if c] + todo
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePath(cur, "is not a directory")
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nfd
            here = cur
            # the opened directory, not the name looked up before: no window between
            _check_dir(cur, os.fstat(fd), leaf=leaf, sticky_leaf_ok=sticky_leaf_ok)
        return fd
    except BaseException:
        os.close(fd)
        raise
