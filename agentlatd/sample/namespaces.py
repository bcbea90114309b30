"""Whether a network namespace still exists, from what holds it (proc(5), namespaces(7)).

A namespace lives while something refers to it (namespaces(7), "The /proc/
[pid]/ns/ directory" and "Namespace lifetime"): a task in it, an open fd on an
nsfs file, or a bind mount of one (`ip netns add` mounts it on
/run/netns/NAME). Its identity is the link text "net:[INODE]" of
proc/PID/ns/net. Kernel files:

  proc/PID/task/TID/ns/net  "net:[4026531840]": the thread's namespace
  proc/PID/fd/N             the same text for an fd opened on an nsfs file
  proc/PID/mountinfo        an nsfs bind mount: field 4 (root) is
                            "net:[INODE]", the filesystem type "nsfs"
                            (Documentation/filesystems/proc.rst 3.5)

Only what this process can see counts: a namespace held only from another
PID namespace is reported gone, and agentlatd could not enter it anyway.
"""

from __future__ import annotations

from agentlatd.sysfs.root import Root


def parse_nsfs_mounts(text: str) -> set[str]:
    """The namespace identities ("net:[N]") bind-mounted in one mountinfo text."""
    out: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0:1]
        if fstype == ["nsfs"]:
            out.add(fields[3])
    return out


def netns_in_use(root: Root, ident: str) -> bool:
    """Whether network namespace `ident` ("net:[N]") is held by anything visible here."""
    pids = [p for p in root.listdir("proc") if p.isdigit()]
    seen_mnt: set[str] = set()
    for pid in pids:
        if root.readlink(f"proc/{pid}/ns/net") == ident:
            return True
        for tid in root.listdir(f"proc/{pid}/task"):
            if tid != pid and root.readlink(f"proc/{pid}/task/{tid}/ns/net") == ident:
                return True
        for fd in root.listdir(f"proc/{pid}/fd"):
            if root.readlink(f"proc/{pid}/fd/{fd}") == ident:
                return True
        mnt = root.readlink(f"proc/{pid}/ns/mnt")
        if mnt and mnt not in seen_mnt:
            seen_mnt.add(mnt)
            if ident in parse_nsfs_mounts(root.read_optional(f"proc/{pid}/mountinfo")):
                return True
    return False
